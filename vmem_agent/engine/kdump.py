"""Reload kdump once after memory changed, so the crash kernel's memory map is current.

A stale elfcorehdr makes a crash dump miss new memory or read unplugged memory. The
kernel keeps it current itself when `crash_hotplug` reads 1; otherwise one reload per
changing run (never per block: reload storms are a known pain) runs the distribution's
command as an argv list, with a timeout.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from dataclasses import dataclass
from typing import Callable, Sequence

RELOAD_TIMEOUT_S = 120.0
# crash_hotplug can read 0 while the kexec lock is held; look again once after this.
CRASH_HOTPLUG_RECHECK_DELAY_S = 1.0

# Tried in order; the first whose program exists is used.
KNOWN_RELOAD_COMMANDS: tuple[tuple[str, ...], ...] = (
    ("kdumpctl", "reload"),  # Fedora, RHEL, kdump-utils
    ("kdump-config", "reload"),  # Debian, Ubuntu kdump-tools
    ("systemctl", "try-restart", "kdump.service"),  # anything else with a kdump unit
)



@dataclass(frozen=True)
class KdumpConfig:
    mode: str = "auto"
    command: tuple[str, ...] | None = None  # None: detect from KNOWN_RELOAD_COMMANDS
    timeout: float = RELOAD_TIMEOUT_S
    recheck_delay: float = CRASH_HOTPLUG_RECHECK_DELAY_S


@dataclass(frozen=True)
class KdumpOutcome:
    action: str  # "reloaded", "skipped" or "failed"
    reason: str
    command: tuple[str, ...] | None = None
    returncode: int | None = None

    def to_json(self) -> dict:
        return {"action": self.action, "reason": self.reason, "command": list(self.command) if self.command else None,
                "returncode": self.returncode}


def detect_reload_command(which: Callable[[str], str | None] = shutil.which) -> tuple[str, ...] | None:
    for command in KNOWN_RELOAD_COMMANDS:
        if which(command[0]):
            return command
    return None


def reload_after_change(
    sysfs,
    config: KdumpConfig,
    run: Callable[..., subprocess.CompletedProcess] = subprocess.run,
    sleep: Callable[[float], None] = time.sleep,
    which: Callable[[str], str | None] = shutil.which,
    time_left: float | None = None,
) -> KdumpOutcome:
    """Decide whether a reload is needed after a change, and run it if so.

    `time_left` is what remains of the run's overall deadline: the reload (and the
    crash_hotplug re-check) never takes longer, whatever its own timeout.
    """
    timeout = config.timeout if time_left is None else min(config.timeout, time_left)
    if config.mode == "never":
        return KdumpOutcome("skipped", "kdump reload disabled (--kdump never)")
    loaded = sysfs.kexec_crash_loaded()
    crash_hotplug = sysfs.crash_hotplug()
    if crash_hotplug is False and loaded:
        sleep(max(0.0, min(config.recheck_delay, timeout)))
        crash_hotplug = sysfs.crash_hotplug()
    if crash_hotplug:
        return KdumpOutcome("skipped", "the kernel updates the crash image itself (crash_hotplug=1)")
    if config.mode == "auto" and not loaded:
        reason = "no crash kernel loaded" if loaded is False else "kexec_crash_loaded unknown"
        return KdumpOutcome("skipped", reason)
    command = config.command or detect_reload_command(which)
    if command is None:
        return KdumpOutcome("failed", "no kdump reload command found (kdumpctl, kdump-config, systemctl)")
    if timeout <= 0:
        return KdumpOutcome("failed", "not run: the overall deadline (--timeout) had expired", tuple(command))
    return _run_reload(command, timeout, run, bounded_by_deadline=timeout < config.timeout)


def _run_reload(command: Sequence[str], timeout: float, run, bounded_by_deadline: bool = False) -> KdumpOutcome:
    command = tuple(command)
    try:
        completed = run(list(command), capture_output=True, text=True, errors="replace", timeout=timeout)
    except subprocess.TimeoutExpired:
        why = " (what was left of the overall deadline, --timeout)" if bounded_by_deadline else ""
        return KdumpOutcome("failed", f"timed out after {timeout:.3g}s{why}", command)
    except OSError as exc:
        return KdumpOutcome("failed", f"cannot run: {exc.strerror}", command)
    if completed.returncode != 0:
        detail = (completed.stderr or completed.stdout or "").strip().splitlines()
        return KdumpOutcome(
            "failed", f"exit code {completed.returncode}" + (f": {detail[-1]}" if detail else ""), command,
            completed.returncode,
        )
    return KdumpOutcome("reloaded", "crash kernel reloaded", command, 0)
