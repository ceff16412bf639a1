"""Writer children: the daemon's kernel writes and kdump reloads run in forked children.

A write can block in the kernel (an offline that migrates forever, or any state write
queued behind the device-hotplug lock), so the event loop never writes itself: a child
runs the engine and sends its JSON result through a pipe, whose end-of-file is the
child's completion as a file descriptor in the loop's selector. SIGTERM to the child
unwinds the engine like Ctrl-C does on the command line (its offline writer is stopped,
nothing is left half-written); the child also gets SIGTERM if the daemon dies.
"""

from __future__ import annotations

import json
import logging
import os
import select
import signal
import time
from typing import Callable

from ..errors import Terminated, VmemError, raise_terminated
from ..kernel.offline_child import die_with_parent

log = logging.getLogger(__name__)

CHILD_STOP_GRACE_S = 1.5  # SIGTERM to SIGKILL: the daemon must be gone within 2 s of its own SIGTERM
CHILD_KILL_GRACE_S = 2.0


class WriterChild:
    """`task()` running in a forked child; `fd` is readable while its result comes in.

    The result is one JSON line. Its newline, not end-of-file, marks completion: an
    offline writer the child started may still hold the pipe open if the kernel keeps
    it stuck. A child that dies without a result is found by `reap()` on SIGCHLD.
    """

    def __init__(self, kind: str, task: Callable[[], dict], close_fds: list[int]):
        self.kind = kind
        self.started = time.monotonic()
        read_end, write_end = os.pipe()
        parent = os.getpid()
        pid = os.fork()
        if pid == 0:
            os.close(read_end)
            _run_child(task, write_end, close_fds, parent)  # never returns
        os.close(write_end)
        os.set_blocking(read_end, False)
        self.pid = pid
        self.fd = read_end
        self._received = bytearray()
        self._closed = False
        self.result: dict | None = None

    def on_readable(self) -> bool:
        """Take what the child wrote; True once it is done (result set, child reaped)."""
        try:
            chunk = os.read(self.fd, 1 << 20)
        except (BlockingIOError, InterruptedError):
            return False
        self._received += chunk
        if chunk and not self._received.endswith(b"\n"):
            return False
        _pid, status = os.waitpid(self.pid, 0)
        self._finish(status)
        return True

    def reap(self) -> bool:
        """On SIGCHLD: True if the child has ended (its result, or why there is none, is set)."""
        pid, status = os.waitpid(self.pid, os.WNOHANG)
        if pid == 0:
            return False
        while True:
            try:
                chunk = os.read(self.fd, 1 << 20)
            except (BlockingIOError, InterruptedError):
                break
            if not chunk:
                break
            self._received += chunk
        self._finish(status)
        return True

    def close(self) -> None:
        """Close the result pipe. The loop unregisters it from its selector first: an fd closed while
        still registered leaves its epoll entry behind whenever another child inherited the pipe,
        and that entry then fires for whatever reuses the fd number (a client lost its reply so)."""
        if not self._closed:
            self._closed = True
            os.close(self.fd)

    def _finish(self, status: int) -> None:
        try:
            self.result = json.loads(self._received)
        except ValueError:
            code = os.waitstatus_to_exitcode(status)
            how = f"killed by signal {-code}" if code < 0 else f"exit code {code}"
            self.result = {"ok": False, "error": f"the {self.kind} child ended without a result ({how})"}

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it is not gone within CHILD_STOP_GRACE_S; the result is read."""
        for signum, grace in ((signal.SIGTERM, CHILD_STOP_GRACE_S), (signal.SIGKILL, CHILD_KILL_GRACE_S)):
            try:
                os.kill(self.pid, signum)
            except ProcessLookupError:
                pass
            end = time.monotonic() + grace
            while (remaining := end - time.monotonic()) > 0:
                ready, _, _ = select.select([self.fd], [], [], min(remaining, 0.05))
                if (ready and self.on_readable()) or (not ready and self.reap()):
                    self.close()
                    return
            log.warning("%s child %d still running %gs after signal %d", self.kind, self.pid, grace, signum)
        self.close()  # left to the kernel (stuck in a write that ignores even SIGKILL)
        self.result = {"ok": False, "error": f"the {self.kind} child {self.pid} did not stop"}


def _run_child(task: Callable[[], dict], write_end: int, close_fds: list[int], parent: int) -> None:
    """In the child: no loop, no inherited sockets; one JSON document out; no Python cleanup."""
    code = 0
    try:
        signal.set_wakeup_fd(-1)
        for signum in (signal.SIGHUP, signal.SIGCHLD, signal.SIGINT):
            signal.signal(signum, signal.SIG_DFL)
        signal.signal(signal.SIGTERM, raise_terminated)
        die_with_parent(parent)
        for fd in close_fds:
            try:
                os.close(fd)
            except OSError:
                pass
        try:
            document = {"ok": True, "result": task()}
        except Terminated:
            document = {"ok": False, "error": "stopped: the daemon is stopping", "terminated": True}
        except VmemError as exc:
            document = {"ok": False, "error": str(exc), "exit_code": exc.exit_code, "type": type(exc).__name__}
        except Exception as exc:  # a bug: reported by the daemon as one line, logged with its type
            document = {"ok": False, "error": f"internal error: {type(exc).__name__}: {exc}"}
        data = json.dumps(document, separators=(",", ":")).encode() + b"\n"
        view = memoryview(data)
        while view:
            view = view[os.write(write_end, view):]
    except BaseException:
        code = 1
    finally:
        os._exit(code)

