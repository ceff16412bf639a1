"""The daemon's configuration: /etc/vmem-agent/config.toml, read with the stdlib's tomllib.

Every key is optional; an absent key takes the default listed in KEYS (the same defaults
the one-shot commands use). Unknown keys and bad values are errors that name the key,
so that a typo never silently falls back to a default. The file documented in
vmem-agent.toml(5) and installed with every key commented out is generated from KEYS.
"""

from __future__ import annotations

import difflib
import tomllib
from dataclasses import dataclass
from typing import Any, Callable

from ..core.inputs import check_command, seconds_problem, shown, split_command
from ..core.sizes import format_size, parse_size
from ..errors import ConfigError, UsageError
from ..limits import (
    KDUMP_MODES, MAX_MOVABLE_RATIO, MAX_SECONDS, OFFLINE_BLOCK_TIMEOUT_S, RESIZE_TIMEOUT_S, SHRINK_UNITS, ZONE_MODES,
)
from ..paths import read_regular_file

CONFIG_MAX_BYTES = 1 << 20
RECONCILE_INTERVAL_S = 60.0
SETTLE_S = 0.05
KERNEL_ONLINING_MODES = ("auto", "never")
EVENT_SOURCES = ("kernel", "udev")
LOG_LEVELS = ("debug", "info", "warning", "error")


@dataclass(frozen=True, slots=True)
class DaemonConfig:
    """The effective configuration (defaults filled in); sizes in bytes, times in seconds."""

    target_bytes: int | None = None
    zone: str = "auto"
    movable_ratio: int | None = None  # None: the kernel's auto_movable_ratio, else 301
    reserve_bytes: int | None = None  # None: max(256M, 5% of MemTotal)
    min_online_bytes: int = 0
    shrink_unit: str = "dimm"
    block_timeout: float = OFFLINE_BLOCK_TIMEOUT_S
    timeout: float = RESIZE_TIMEOUT_S
    reconcile_interval: float = RECONCILE_INTERVAL_S
    settle: float = SETTLE_S
    kernel_onlining: str = "auto"
    event_source: str = "kernel"
    uevent_buffer_bytes: int = 32 << 20
    kdump: str = "auto"
    kdump_command: tuple[str, ...] | None = None
    socket_group: str | None = None
    log_level: str = "info"
    path: str | None = None  # where it was read from (None: built-in defaults)


# -- value checkers: each returns the converted value or raises ValueError with what was expected


def _choice(options: tuple[str, ...]) -> Callable[[Any], str]:
    def check(value: Any) -> str:
        if not isinstance(value, str) or value not in options:
            raise ValueError(f"expected one of {', '.join(options)}")
        return value

    return check


def _size(value: Any) -> int:
    if not isinstance(value, str):
        raise ValueError('expected a size in quotes, e.g. "6G" or "512M"')
    try:
        return parse_size(value, allow_relative=False).bytes
    except UsageError as exc:
        raise ValueError(str(exc).removeprefix("invalid size ")) from None


def _positive_size(value: Any) -> int:
    size = _size(value)
    if size <= 0:
        raise ValueError("expected a size above 0")
    return size


def _seconds(minimum: float) -> Callable[[Any], float]:
    def check(value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or seconds_problem(value, minimum):
            raise ValueError(f"expected a number of seconds from {minimum:g} to {MAX_SECONDS:g}")
        return float(value)

    return check


def _percent(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_MOVABLE_RATIO:
        raise ValueError(f"expected a whole percentage from 0 to {MAX_MOVABLE_RATIO}, e.g. 301")
    return value


def _command(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        return split_command(value)
    if isinstance(value, list) and all(isinstance(part, str) for part in value):
        return check_command(value)
    raise ValueError('expected a command as a string ("kdumpctl reload") or a list of strings')


def _group_name(value: Any) -> str:
    if not isinstance(value, str) or not value or not value.isprintable() or len(value) > 64:
        raise ValueError("expected a group name")
    return value


@dataclass(frozen=True)
class Key:
    name: str
    field: str
    check: Callable[[Any], Any]
    default_text: str  # as written, commented out, in the installed config file
    help: str


KEYS: tuple[Key, ...] = (
    Key("target", "target_bytes", _positive_size, '"6G"',
        "Online memory to hold. Unset: no target, every hot-added block is onlined. "
        "`vmem-agent resize` overrides it until `resize --clear`."),
    Key("zone", "zone", _choice(ZONE_MODES), '"auto"',
        "auto: Movable while the kernel's auto-movable ratio rule allows, else Normal; movable/normal force the zone."),
    Key("movable_ratio", "movable_ratio", _percent, "301",
        "Movable memory allowed, in percent of boot kernel memory. Unset: the kernel's auto_movable_ratio, else 301."),
    Key("reserve", "reserve_bytes", _size, '"256M"',
        "MemAvailable that must remain after offlining. Unset: max(256M, 5% of MemTotal)."),
    Key("min_online", "min_online_bytes", _size, '"0"', "Never offline below this much online memory."),
    Key("shrink_unit", "shrink_unit", _choice(SHRINK_UNITS), '"dimm"',
        "dimm: shrink in whole DIMMs, what the host can eject (Movable DIMMs first); block: block by block, "
        "as before (the host may then be able to unplug nothing)."),
    Key("block_timeout", "block_timeout", _seconds(0.1), f"{OFFLINE_BLOCK_TIMEOUT_S:g}",
        "Seconds before an offline write that has not finished is interrupted."),
    Key("timeout", "timeout", _seconds(0.1), f"{RESIZE_TIMEOUT_S:g}", "Seconds one run (grow or shrink) may take in all."),
    Key("reconcile_interval", "reconcile_interval", _seconds(1.0), f"{RECONCILE_INTERVAL_S:g}",
        "Seconds between full rescans that catch drift and retry blocks that failed."),
    Key("settle", "settle", _seconds(0.0), f"{SETTLE_S:g}",
        "Seconds without a new uevent before a burst of hot-added blocks is planned and applied at once."),
    Key("kernel_onlining", "kernel_onlining", _choice(KERNEL_ONLINING_MODES), '"auto"',
        "auto: with no target, let the kernel online hot-added memory itself (auto_online_blocks and "
        "online_policy set to match the zone rule, restored at stop); never: the daemon writes every block."),
    Key("event_source", "event_source", _choice(EVENT_SOURCES), '"kernel"',
        "kernel: listen to the kernel's uevents directly (no dependency on udevd's queue); "
        "udev: listen to events after udevd processed them."),
    Key("uevent_buffer", "uevent_buffer_bytes", _positive_size, '"32M"',
        "Receive buffer for uevents: a burst bigger than it loses events, which costs a rescan (about 1K per event)."),
    Key("kdump", "kdump", _choice(KDUMP_MODES), '"auto"',
        "Reload kdump after memory changed: auto = only if a crash kernel is loaded and the kernel does not "
        "update it itself (crash_hotplug)."),
    Key("kdump_command", "kdump_command", _command, '"kdumpctl reload"',
        "Reload command (a string split like a shell would, or a list), run without a shell. "
        "Unset: kdumpctl reload, kdump-config reload or systemctl try-restart kdump.service, the first that exists."),
    Key("socket_group", "socket_group", _group_name, '"vmem"',
        "A group whose members may use the control socket besides root. Unset: root only."),
    Key("log_level", "log_level", _choice(LOG_LEVELS), '"info"', "debug, info, warning or error."),
)
_KEYS_BY_NAME = {key.name: key for key in KEYS}


def parse_config(document: dict[str, Any], path: str | None = None) -> DaemonConfig:
    """Check a parsed TOML document against KEYS; ConfigError names the first bad key."""
    where = f"{path}: " if path else ""
    values: dict[str, Any] = {}
    for name, value in document.items():
        key = _KEYS_BY_NAME.get(name)
        if key is None:
            close = difflib.get_close_matches(name, _KEYS_BY_NAME, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else f"; known keys: {', '.join(_KEYS_BY_NAME)}"
            raise ConfigError(f"{where}unknown key {shown(name)}{hint}")
        try:
            values[key.field] = key.check(value)
        except ValueError as exc:
            raise ConfigError(f"{where}key {name!r}: {exc}, not {shown(value)}") from None
    return DaemonConfig(path=path, **values)


def load_config(path: str, required: bool) -> DaemonConfig:
    """Read and check the config file; an absent file is the defaults unless `required`."""
    try:
        data = read_regular_file(path, CONFIG_MAX_BYTES + 1)
    except FileNotFoundError:
        if required:
            raise ConfigError(f"{path}: no such file") from None
        return DaemonConfig()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    if len(data) > CONFIG_MAX_BYTES:
        raise ConfigError(f"{path}: larger than {format_size(CONFIG_MAX_BYTES)}: not a vmem-agent config file")
    try:
        document = tomllib.loads(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None
    except RecursionError:
        raise ConfigError(f"{path}: invalid TOML: arrays or tables nested too deeply") from None
    return parse_config(document, path)


def render_default_config() -> str:
    """The installed config file: every key commented out at its default, with its help."""
    lines = [
        "# vmem-agent daemon configuration (see vmem-agent.toml(5)).",
        "# Every key is optional; the values shown commented out are the defaults or examples.",
        "",
    ]
    for key in KEYS:
        lines.append(f"# {key.help}")
        lines.append(f"#{key.name} = {key.default_text}")
        lines.append("")
    return "\n".join(lines)
