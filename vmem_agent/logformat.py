"""Log records in the style of the CLI's errors, for the commands and the daemon (not imported by --help)."""

from __future__ import annotations

import logging

from .core.inputs import one_line


def set_log_level(name: str) -> None:
    """The level of our own loggers (`vmem_agent.*`), by name: debug, info, warning, error."""
    logging.getLogger("vmem_agent").setLevel(getattr(logging, name.upper()))


class LineFormatter(logging.Formatter):
    """Log records in the same style as our errors: `vmem-agent: warning: ...`, one terminal-safe line
    (a traceback, with -vv only, follows it)."""

    def format(self, record: logging.LogRecord) -> str:
        line = f"vmem-agent: {record.levelname.lower()}: {one_line(record.getMessage())}"
        return f"{line}\n{self.formatException(record.exc_info)}" if record.exc_info else line
