"""Apply plans through the gateway: retries, deadlines, re-planning, one kdump reload.

Offlining can block forever in the kernel (it retries page migration until a signal
arrives), so every offline write runs in a forked child that is signalled at its
deadline; the agent itself never blocks in the kernel. A block that stays busy after
its retries is given up and the planner picks another candidate. A writer that does not
exit even after SIGKILL is reported with its pid: it holds the kernel's device hotplug
lock, so the run must stop writing (engine.runner).
"""

from __future__ import annotations

import errno
import os
import time
from dataclasses import dataclass, field
from typing import Callable

from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_exponential

from ..core.model import DeviceState
from ..core.policy import Note, Reason
from ..errors import EXIT_FAILURE, EXIT_OK, EXIT_PARTIAL, BlockBusyError, OfflineTimeoutError, SysfsError
from .kdump import KdumpOutcome
from ..kernel.offline_child import offline_block
from ..limits import OFFLINE_BLOCK_TIMEOUT_S

# EBUSY/EAGAIN: how often to try one block, and the backoff between tries.
BUSY_ATTEMPTS = 3
BUSY_BACKOFF_INITIAL_S = 0.1
BUSY_BACKOFF_MAX_S = 1.0
# A plan is re-made after each round; this bounds pathological kernels.
MAX_PLANNING_ROUNDS = 64

DONE = "done"
ALREADY = "already"
FAILED = "failed"
TIMED_OUT = "timed-out"
NOT_ATTEMPTED = "not-attempted"


@dataclass(frozen=True)
class BlockResult:
    """What happened to one block, for the report and the JSON output."""

    index: int
    start: int
    end: int
    operation: str  # what was written: online, online_movable, online_kernel, offline
    outcome: str  # DONE, ALREADY, FAILED, TIMED_OUT, NOT_ATTEMPTED
    attempts: int = 0
    seconds: float = 0.0
    errno: int | None = None
    message: str = ""
    zone: str | None = None  # zone after a successful online, from the run's final snapshot
    reason: Reason | None = None  # why the plan wrote this block
    unit: str | None = None  # the DIMM this write empties (or rolls back), when shrinking by DIMM
    rollback: bool = False  # an online that undoes this run's offline of a DIMM that could not be emptied
    stuck_pid: int | None = None  # a writer that did not exit after SIGKILL (stuck in the kernel)

    @property
    def changed(self) -> bool:
        return self.outcome == DONE

    def to_json(self) -> dict:
        return {
            "index": self.index,
            "start": self.start,
            "end": self.end,
            "operation": self.operation,
            "outcome": self.outcome,
            "attempts": self.attempts,
            "seconds": round(self.seconds, 3),
            "errno": errno.errorcode.get(self.errno) if self.errno else None,
            "message": self.message,
            "zone": self.zone,
            "reason": {"code": self.reason.code, **self.reason.facts_dict()} if self.reason else None,
            "unit": self.unit,
            "rollback": self.rollback,
            "stuck_pid": self.stuck_pid,
        }


@dataclass
class RunResult:
    """The outcome of a resize/online/offline run.

    `to_json()` is complete: cli.report renders a run from it alone (a daemon sends it
    over its socket, and its client prints it exactly as a direct run would).
    """

    target_bytes: int | None
    initial_online_bytes: int
    final_online_bytes: int = 0
    blocks: list[BlockResult] = field(default_factory=list)
    notes: list[Note] = field(default_factory=list)
    kdump: KdumpOutcome | None = None
    reached: bool = False
    dry_run: bool = False
    planned_shortfall_bytes: int = 0  # what the last plan could not cover (floor, ratio, candidates)
    devices: list[DeviceState] = field(default_factory=list)  # after the run (a dry run: as planned)
    stuck_writer: tuple[int, int] | None = None  # (block, pid): a writer the kernel would not let go

    def add_note(self, note: Note) -> None:
        if note not in self.notes:
            self.notes.append(note)

    @property
    def changed(self) -> bool:
        return any(result.changed for result in self.blocks)

    @property
    def exit_code(self) -> int:
        if self.reached:
            return EXIT_OK
        return EXIT_PARTIAL if self.changed else EXIT_FAILURE

    def to_json(self) -> dict:
        gap = self.target_bytes - self.final_online_bytes if self.target_bytes is not None else 0
        return {
            "target_bytes": self.target_bytes,
            "initial_online_bytes": self.initial_online_bytes,
            "final_online_bytes": self.final_online_bytes,
            "reached": self.reached,
            "dry_run": self.dry_run,
            "shortfall_bytes": max(0, gap),
            "excess_bytes": max(0, -gap),
            "blocks": [result.to_json() for result in self.blocks],
            "notes": [note.to_json() for note in self.notes],
            "kdump": self.kdump.to_json() if self.kdump else None,
            "devices": [device.to_json() for device in self.devices],
            "stuck_writer": {"block": self.stuck_writer[0], "pid": self.stuck_writer[1]} if self.stuck_writer else None,
            "changed": self.changed,
            "exit_code": self.exit_code,
        }


class Deadline:
    def __init__(self, seconds: float, clock: Callable[[], float] = time.monotonic):
        self._clock = clock
        self._end = clock() + seconds

    def remaining(self) -> float:
        return max(0.0, self._end - self._clock())

    @property
    def expired(self) -> bool:
        return self.remaining() <= 0


class BlockWriter:
    """Writes one block's state with retries on EBUSY, offlines under a deadline."""

    def __init__(self, sysfs, block_timeout: float = OFFLINE_BLOCK_TIMEOUT_S, busy_attempts: int = BUSY_ATTEMPTS):
        self.sysfs = sysfs
        self.block_timeout = block_timeout
        self.busy_attempts = busy_attempts

    def apply(self, index: int, start: int, end: int, operation: str, deadline: Deadline, **context) -> BlockResult:
        """Write `operation` to one block; `context` (reason, unit, rollback) is carried into the result."""
        began = time.monotonic()
        attempts = 0

        def attempt() -> str:
            nonlocal attempts
            attempts += 1
            if operation == "offline":
                return offline_block(self.sysfs, index, min(self.block_timeout, max(deadline.remaining(), 0.1)))
            return self.sysfs.write_block_state(index, operation)

        retrying = Retrying(
            stop=stop_after_attempt(self.busy_attempts),
            wait=wait_exponential(multiplier=BUSY_BACKOFF_INITIAL_S, max=BUSY_BACKOFF_MAX_S),
            retry=retry_if_exception_type(BlockBusyError),
            reraise=True,
        )
        base = dict(index=index, start=start, end=end, operation=operation, **context)
        try:
            outcome = retrying(attempt)
        except OfflineTimeoutError as timeout:
            message = f"not done within {timeout.timeout:g}s, interrupted"
            if timeout.writer_stuck_pid is not None:
                message += f"; writer pid {timeout.writer_stuck_pid} did not exit after SIGKILL"
            return BlockResult(**base, outcome=TIMED_OUT, attempts=attempts, seconds=time.monotonic() - began,
                               errno=timeout.errno, message=message, stuck_pid=timeout.writer_stuck_pid)
        except SysfsError as exc:
            message = f"{os.strerror(exc.errno)} ({exc.errno_name})"
            plain_action = f"write {operation!r}"
            if exc.action.startswith(plain_action + " ("):  # the gateway says why (e.g. online in another zone)
                message += exc.action[len(plain_action):]
            if isinstance(exc, BlockBusyError):
                message += f", gave up after {attempts} attempts"
            return BlockResult(**base, outcome=FAILED, attempts=attempts, seconds=time.monotonic() - began,
                               errno=exc.errno, message=message)
        return BlockResult(**base, outcome=DONE if outcome == "changed" else ALREADY, attempts=attempts,
                           seconds=time.monotonic() - began)
