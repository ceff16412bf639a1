"""The one write that can block forever, done in a child process that can be signalled.

Since Linux 4.15 offlining retries page migration until a signal arrives, so the write
must happen in something we can interrupt: a forked child writes `offline` through the
gateway and reports the outcome or errno through a pipe. The pipe's read end is the
child's completion as a file descriptor, so an event loop can wait for it like any other.
"""

from __future__ import annotations

import errno
import os
import select
import signal
import time

from ..errors import OfflineTimeoutError, SysfsError, sysfs_error
from .sysfs import Sysfs

# After SIGTERM, how long an offline writer may take to leave the kernel before
# SIGKILL, and how long after SIGKILL before it is left behind.
WRITER_TERM_GRACE_S = 2.0
WRITER_KILL_GRACE_S = 5.0
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def die_with_parent(parent: int) -> None:
    """In a writer child: be sent SIGTERM if the agent dies, even by SIGKILL.

    A writer left behind would keep the block going-offline and the kernel's device
    hotplug lock held, and keep the agent's lock file locked through the inherited fd.
    """
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:  # the agent died before prctl took effect
        os._exit(1)


def _detach_from_output() -> None:
    """In an offline writer: let go of the agent's stdin, stdout and stderr.

    A writer stuck in the kernel can outlive the agent by hours; holding the agent's
    output pipes it would keep `$(vmem-agent ...)`, a journal stream or a test waiting
    for end of file. It reports through its own pipe only.
    """
    try:
        null = os.open(os.devnull, os.O_RDWR)
    except OSError:
        return
    for fd in (0, 1, 2):
        try:
            os.dup2(null, fd)
        except OSError:
            pass
    os.close(null)


class OfflineChild:
    """A running offline write of one block; `fd` becomes readable when it is done."""

    def __init__(self, sysfs: Sysfs, index: int):
        self.index = index
        self.state_path = os.path.join(sysfs.memory_dir, f"memory{index}", "state")
        read_end, write_end = os.pipe()
        parent = os.getpid()
        pid = os.fork()
        if pid == 0:  # child: only the write and a one-line report, no Python cleanup
            try:
                os.close(read_end)
                _detach_from_output()
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                signal.signal(signal.SIGINT, signal.SIG_DFL)
                die_with_parent(parent)
                try:
                    report = "ok " + sysfs.write_block_state(index, "offline")
                except SysfsError as exc:
                    report = f"error {exc.errno} {exc.path}"
                os.write(write_end, report.encode())
            finally:
                os._exit(0)
        os.close(write_end)
        self.pid = pid
        self.fd = read_end

    def result(self) -> str:
        """After `fd` is readable: CHANGED or ALREADY, or the gateway's typed exception."""
        try:
            report = os.read(self.fd, 4096).decode()
        finally:
            os.close(self.fd)
        os.waitpid(self.pid, 0)
        kind, _, rest = report.partition(" ")
        if kind == "ok":
            return rest
        if kind == "error":
            code, _, path = rest.partition(" ")
            raise sysfs_error(OSError(int(code), os.strerror(int(code))), path, self.index, "write 'offline'")
        raise SysfsError(self.state_path, errno.EIO, self.index, "offline (the writer died without a report)")

    def stop(self) -> bool:
        """SIGTERM, then SIGKILL; True if the child is still not gone (left to the kernel)."""
        try:
            for sig, grace in ((signal.SIGTERM, WRITER_TERM_GRACE_S), (signal.SIGKILL, WRITER_KILL_GRACE_S)):
                try:
                    os.kill(self.pid, sig)
                except ProcessLookupError:
                    return False
                end = time.monotonic() + grace
                while time.monotonic() < end:
                    done, _status = os.waitpid(self.pid, os.WNOHANG)
                    if done:
                        return False
                    time.sleep(0.02)
            return True
        finally:
            os.close(self.fd)


def offline_block(sysfs: Sysfs, index: int, timeout: float) -> str:
    """Offline a block in a child that is stopped if it is not done by `timeout`."""
    child = OfflineChild(sysfs, index)
    try:
        ready, _, _ = select.select([child.fd], [], [], timeout)
    except BaseException:
        child.stop()  # we were interrupted (SIGINT/SIGTERM): take the writer with us
        raise
    if not ready:
        stuck = child.stop()
        raise OfflineTimeoutError(child.state_path, index, timeout, child.pid if stuck else None)
    return child.result()
