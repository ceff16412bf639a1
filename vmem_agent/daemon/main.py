"""`vmem-agent daemon`: load the configuration, set up logging, run the loop."""

from __future__ import annotations

import logging
import os
import sys

from ..errors import EXIT_OK
from ..logformat import LineFormatter, set_log_level
from ..kernel.sysfs import Sysfs
from .config import KEYS, DaemonConfig, load_config

# sd-daemon(3) priority prefixes, which journald turns into the message's level.
_JOURNAL_PRIORITIES = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}


class _JournalFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        priority = _JOURNAL_PRIORITIES.get(record.levelno, 6)
        return "\n".join(f"<{priority}>{line}" for line in record.getMessage().splitlines() or [""])


def stderr_is_journal(environ=os.environ) -> bool:
    """True when stderr is the journal's stream (JOURNAL_STREAM names its device and inode)."""
    device, _, inode = environ.get("JOURNAL_STREAM", "").partition(":")
    try:
        status = os.fstat(sys.stderr.fileno())
    except (OSError, ValueError):
        return False
    return device.isdigit() and inode.isdigit() and (status.st_dev, status.st_ino) == (int(device), int(inode))


def setup_logging(level_name: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if stderr_is_journal():
        handler.setFormatter(_JournalFormatter())
    else:
        handler.setFormatter(LineFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.WARNING)
    set_log_level(level_name)


def describe_config(config: DaemonConfig) -> str:
    """The effective configuration, one `key = value` per line, for --check-config."""
    from ..core.sizes import format_size

    lines = [f"# {config.path or 'no config file: built-in defaults'}"]
    for key in KEYS:
        value = getattr(config, key.field)
        if value is None:
            shown = "(unset)"
        elif key.field.endswith("_bytes"):
            shown = f'"{format_size(value, exact=True)}"'
        elif isinstance(value, tuple):
            shown = repr(list(value))
        elif isinstance(value, str):
            shown = f'"{value}"'
        else:
            shown = f"{value:g}" if isinstance(value, float) else str(value)
        lines.append(f"{key.name} = {shown}")
    return "\n".join(lines)


def run_daemon(sysfs_root: str, config_path: str, config_required: bool, check_only: bool, verbose: int) -> int:
    config = load_config(config_path, config_required)
    if check_only:
        print(describe_config(config))
        return EXIT_OK
    level = "debug" if verbose else config.log_level
    setup_logging(level)

    from .loop import Daemon
    from .notify import Notifier

    def reload_config() -> DaemonConfig:
        return load_config(config_path, config_required)

    return Daemon(Sysfs(sysfs_root), config, reload_config, Notifier()).run()
