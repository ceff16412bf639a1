"""vmem-agent's own exceptions and exit codes.

OS errors are turned into these types in one place, the sysfs gateway, so that every
caller sees the block, the path and the errno, and the CLI can print one line.
"""

from __future__ import annotations

import errno as errno_codes
import os

# Exit codes in the style of chmem: 0 done, 1 failed, 64 partial; plus ours.
EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_UNSUPPORTED = 3
EXIT_BUSY = 4
EXIT_PARTIAL = 64
EXIT_CONFIG = 78  # sysexits' EX_CONFIG: the daemon's configuration is invalid (systemd: no restart)
# vmem-agent doctor: only warnings found; at least one error found.
EXIT_DOCTOR_WARNINGS = 10
EXIT_DOCTOR_ERRORS = 11


class VmemError(Exception):
    """Base class: a failure that the CLI reports as one line and an exit code."""

    exit_code = EXIT_FAILURE


class UsageError(VmemError):
    """The user asked for something malformed or impossible (bad size, unknown block)."""

    exit_code = EXIT_USAGE


class UnsupportedSystemError(VmemError):
    """The root has no memory-block sysfs: wrong root, or a kernel without memory hotplug."""

    exit_code = EXIT_UNSUPPORTED


class LockBusyError(VmemError):
    """Another vmem-agent writer holds the lock."""

    exit_code = EXIT_BUSY


class ConfigError(VmemError):
    """The daemon's configuration file is missing, unreadable or invalid."""

    exit_code = EXIT_CONFIG


class TreeContentError(VmemError):
    """A file under the root does not read as the kernel writes it: a broken tree, never the user's fault."""

    def __init__(self, path: str, problem: str):
        self.path = path
        self.problem = problem
        super().__init__(f"{path}: {problem}")


class SysfsError(VmemError):
    """An OS error on a sysfs attribute, with the block (if any), path and errno."""

    def __init__(self, path: str, errno: int, block: int | None = None, action: str = "access"):
        self.path = path
        self.errno = errno
        self.block = block
        self.action = action
        super().__init__(str(self))

    @property
    def errno_name(self) -> str:
        return errno_codes.errorcode.get(self.errno, str(self.errno))

    def __str__(self) -> str:
        subject = f"memory block {self.block}" if self.block is not None else self.path
        return f"{subject}: {self.action} failed: {os.strerror(self.errno)} ({self.errno_name}, {self.path})"


class BlockBusyError(SysfsError):
    """EBUSY/EAGAIN: the kernel could not migrate pages away; worth a retry."""


class InvalidRequestError(SysfsError):
    """EINVAL that is not "already in that state": holes, mixed zones, a zone not allowed."""


class WriteInterruptedError(SysfsError):
    """EINTR: the write was interrupted by a signal (our deadline for offlining)."""


class OfflineTimeoutError(WriteInterruptedError):
    """An offline write did not return by its deadline and its writer was signalled."""

    def __init__(self, path: str, block: int, timeout: float, writer_stuck_pid: int | None = None):
        self.timeout = timeout
        self.writer_stuck_pid = writer_stuck_pid
        super().__init__(path, errno_codes.EINTR, block, "offline")

    def __str__(self) -> str:
        text = f"memory block {self.block}: offline did not finish within {self.timeout:g}s; interrupted"
        if self.writer_stuck_pid is not None:
            text += f" (writer pid {self.writer_stuck_pid} is still stuck in the kernel)"
        return text


class BlockVanishedError(SysfsError):
    """ENOENT: the block was hot-removed while we looked at it."""


class PermissionDeniedError(SysfsError):
    """EPERM/EACCES: not root, or /sys is read-only (a container)."""


_ERRNO_TYPES: dict[int, type[SysfsError]] = {
    errno_codes.EBUSY: BlockBusyError,
    errno_codes.EAGAIN: BlockBusyError,
    errno_codes.EINVAL: InvalidRequestError,
    errno_codes.EINTR: WriteInterruptedError,
    errno_codes.ENOENT: BlockVanishedError,
    errno_codes.EPERM: PermissionDeniedError,
    errno_codes.EACCES: PermissionDeniedError,
    errno_codes.EROFS: PermissionDeniedError,
}


def sysfs_error(exc: OSError, path: str, block: int | None = None, action: str = "access") -> SysfsError:
    """Build the typed exception for an OSError raised on a sysfs path."""
    code = exc.errno if exc.errno is not None else errno_codes.EIO
    return _ERRNO_TYPES.get(code, SysfsError)(path, code, block, action)


class Terminated(BaseException):
    """SIGTERM (systemd stop), raised from the handler: unwinds like Ctrl-C, so that offline
    writers, children and locks are cleaned up on the way out."""


def raise_terminated(signum, frame):
    raise Terminated()
