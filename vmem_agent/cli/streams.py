"""stdout and stderr as util-linux treats them: output errors end the command cleanly.

- stdout gone (EPIPE: `| head -1`, `| true`): end quietly with 128 + SIGPIPE, as a
  process killed by SIGPIPE shows in a shell; ENOSPC, EIO and the like: one line
  `vmem-agent: write error: ...` and exit 1. When blocks were already written, the exit
  code is the run's own instead: an output error never hides a change to the kernel.
- A failing stderr is ignored: there is nowhere left to report to.
- Control characters in anything printed (from tree files, or arguments) are escaped,
  so they never reach a terminal raw.
- A closed descriptor 1 or 2 is held by /dev/null first, so that no file the command
  opens later (the lock, a sysfs attribute) becomes its stdout.
"""

from __future__ import annotations

import errno
import io
import os
import signal
import sys

from ..core.inputs import escape_controls, one_line
from ..errors import EXIT_FAILURE

EXIT_BROKEN_PIPE = 128 + signal.SIGPIPE


class OutputError(BaseException):
    """Writing stdout failed. A BaseException, so that no `except Exception` on the way takes it for a bug.

    `result_code` is the exit code of writes to the kernel already made, which must survive.
    """

    def __init__(self, code: int):
        super().__init__(os.strerror(code))
        self.errno = code
        self.result_code: int | None = None


class _Guarded(io.RawIOBase):
    """The binary side of stdout or stderr; after its first error, writes are dropped (so that the
    flush at exit does not fail again)."""

    def __init__(self, binary, owner, raise_errors: bool, pending_error: int | None = None):
        super().__init__()
        self._binary = binary
        self._owner = owner  # the replaced text stream: collecting it would close `binary` under us
        self._raise_errors = raise_errors
        self._pending_error = pending_error  # the descriptor was closed at start: fail at the first write
        self._broken = False

    def writable(self) -> bool:
        return True

    def fileno(self) -> int:
        return self._binary.fileno()

    def isatty(self) -> bool:
        return self._pending_error is None and self._binary.isatty()

    def write(self, data) -> int:
        if self._broken:
            return len(data)
        try:
            if self._pending_error is not None:
                raise OSError(self._pending_error, os.strerror(self._pending_error))
            self._binary.write(data)
            self._binary.flush()
        except OSError as exc:
            self._broken = True
            if self._raise_errors:
                raise OutputError(exc.errno or errno.EIO) from None
        return len(data)


class _TerminalSafeText(io.TextIOWrapper):
    """Text output with control characters escaped (click and print() both call write())."""

    def write(self, text: str) -> int:
        super().write(escape_controls(text))
        return len(text)


def _stream(fd: int, original, raise_errors: bool) -> _TerminalSafeText:
    """A guarded text stream over `original`'s bytes, or over fd itself when Python found it closed."""
    binary = getattr(original, "buffer", None)
    pending = None
    if binary is None:
        pending = errno.EBADF
        null = os.open(os.devnull, os.O_WRONLY)
        if null != fd:
            os.dup2(null, fd)
            os.close(null)
        binary = open(fd, "wb", buffering=0, closefd=False)
    encoding = getattr(original, "encoding", None) or "utf-8"
    line_buffering = bool(getattr(original, "line_buffering", False)) or fd == 2
    return _TerminalSafeText(_Guarded(binary, original, raise_errors, pending), encoding=encoding, errors="backslashreplace",
                             line_buffering=line_buffering)


def install() -> None:
    """Put the guarded streams in place of sys.stdout and sys.stderr (at the start of the CLI)."""
    if isinstance(sys.stdout, _TerminalSafeText):
        return
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:
                stream.flush()
        except (OSError, ValueError):
            pass
    sys.stdout = _stream(1, sys.stdout, raise_errors=True)
    sys.stderr = _stream(2, sys.stderr, raise_errors=False)


def error_line(message: str) -> None:
    """Our one line on stderr: `vmem-agent: ...`, terminal-safe, never raising."""
    sys.stderr.write(f"vmem-agent: {one_line(message)}\n")
    sys.stderr.flush()


def output_error_exit_code(error: OutputError) -> int:
    """Report a stdout error as util-linux does, and the exit code that goes with it."""
    if error.errno != errno.EPIPE:
        error_line(f"write error: {os.strerror(error.errno)}")
    if error.result_code is not None:
        return error.result_code
    return EXIT_BROKEN_PIPE if error.errno == errno.EPIPE else EXIT_FAILURE
