"""One writer at a time: an flock on a file in the runtime dir, per sysfs root.

Two agents (or an agent and an operator) interleaving online/offline writes would each
plan on a snapshot the other is changing. The lock is per root (vmem_agent.paths), so
tests on separate fake trees do not contend, while every writer of the real `/` shares
/run/vmem-agent/lock with the daemon.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
import time

from ..errors import LockBusyError, VmemError

LOCK_POLL_INTERVAL_S = 0.1
HOLDER_TEXT_LIMIT = 256  # the lock file holds "PID" or "PID what it is"


class WriterLock:
    """Context manager holding an exclusive flock; `wait` seconds to wait (0: fail at once)."""

    def __init__(self, path: str, wait: float = 0.0):
        self.path = path
        self.wait = wait
        self._fd: int | None = None

    def __enter__(self) -> "WriterLock":
        try:
            os.makedirs(os.path.dirname(self.path) or ".", mode=0o755, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK, 0o644)
        except OSError as exc:
            raise VmemError(f"cannot open lock file {self.path}: {os.strerror(exc.errno)}") from None
        if not stat.S_ISREG(os.fstat(fd).st_mode):  # /dev/null, a FIFO, a tty: no lock, and no pid in it
            os.close(fd)
            raise VmemError(f"lock file {self.path} is not a regular file")
        deadline = time.monotonic() + self.wait
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EWOULDBLOCK, errno.EACCES):
                    os.close(fd)
                    raise VmemError(f"cannot lock {self.path}: {os.strerror(exc.errno)}") from None
                if time.monotonic() >= deadline:
                    holder = self._holder(fd)
                    os.close(fd)
                    raise LockBusyError(
                        f"busy: another vmem-agent writer{holder} holds {self.path}"
                        + (f" (waited {self.wait:g}s)" if self.wait else "; use --wait SECONDS to wait for it")
                    ) from None
                time.sleep(LOCK_POLL_INTERVAL_S)
        try:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
        except OSError as exc:
            os.close(fd)
            raise VmemError(f"cannot write lock file {self.path}: {os.strerror(exc.errno)}") from None
        self._fd = fd
        return self

    def name_holder(self, pid: int, what: str) -> None:
        """Record that process `pid` holds the lock too (an offline writer stuck in the kernel).

        Forked writers share the lock's open file, so a writer that outlives the agent
        keeps the lock held; a later run's busy message must name it, not its dead parent.
        """
        if self._fd is None:
            return
        try:
            os.ftruncate(self._fd, 0)
            os.pwrite(self._fd, f"{pid} {what}\n".encode(), 0)
        except OSError:
            pass

    @staticmethod
    def _holder(fd: int) -> str:
        try:
            text = os.pread(fd, HOLDER_TEXT_LIMIT, 0).decode(errors="replace").strip()
        except OSError:
            return ""
        pid, _, what = text.partition(" ")
        if not pid.isdigit():
            return ""
        return f" (pid {pid}: {what})" if what else f" (pid {pid})"

    def __exit__(self, *exc_info) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing drops the flock
            self._fd = None
