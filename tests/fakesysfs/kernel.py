"""FakeKernel: a fake sysroot mounted over FUSE, served by a separate process."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import threading
import weakref
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from multiprocessing.connection import Connection
from pathlib import Path
from typing import TYPE_CHECKING

from .model import FakeKernelError
from .netlink import entered_network_namespace
from .spec import Group, OfflineBehaviour, TreeSpec

if TYPE_CHECKING:
    import pyudev

MOUNT_TIMEOUT_SECONDS = 10
CONTROL_TIMEOUT_SECONDS = 30
EXIT_TIMEOUT_SECONDS = 5
# The directory holding the top-level package, so that the server can import this one.
_IMPORT_ROOT = Path(__file__).resolve().parents[__package__.count('.') + 1]


class FakeKernel:
    """A fake Linux memory-hotplug kernel behind a FUSE-mounted sysroot at `root`.

    Any process, this one included, reads and writes root/sys/... and root/proc/... with
    plain system calls and gets what Linux would give: errnos, blocking offlines that a
    signal interrupts, uevents. The methods below play the hypervisor and inspect the
    kernel. The mount goes away on close(), at garbage collection or at interpreter exit,
    and the server unmounts by itself if this process dies.

    With netlink=True the server lives in a network namespace of its own (`netns_path`) and
    also multicasts every uevent there as udevd would, to udev monitors opened in that
    namespace (`udev_monitor()`, `entered_netns()`, `in_netns(argv)`); nothing it sends can
    reach the namespace of this process.
    """

    def __init__(self, spec: TreeSpec | None = None, netlink: bool = False) -> None:
        self.spec = spec if spec is not None else TreeSpec.vm()
        self.root = Path(tempfile.mkdtemp(prefix='fakesysfs-'))
        ours, theirs = socket.socketpair()
        environment = dict(os.environ, PYTHONPATH=os.pathsep.join(
            filter(None, [str(_IMPORT_ROOT), os.environ.get('PYTHONPATH')])))
        with theirs:
            self._server = subprocess.Popen(
                [sys.executable, '-m', f'{__package__}.server', str(theirs.fileno()), str(self.root),
                 *(['--netlink'] if netlink else [])],
                pass_fds=[theirs.fileno()], env=environment, stdin=subprocess.DEVNULL)
        self.server_pid = self._server.pid
        # The server's network namespace, as long as the server runs.
        self.netns_path = Path(f'/proc/{self.server_pid}/ns/net') if netlink else None
        self._connection = Connection(ours.detach())
        self._lock = threading.Lock()  # one request and its answer at a time
        self._finalizer = weakref.finalize(self, _tear_down, os.getpid(), self._lock, self._server,
                                           self._connection, self.root)
        try:
            self._connection.send(self.spec)
            if not self._connection.poll(MOUNT_TIMEOUT_SECONDS):
                raise FakeKernelError(f'the FUSE server did not mount {self.root} '
                                      f'within {MOUNT_TIMEOUT_SECONDS} s')
            status, detail = self._connection.recv()
            if status != 'ready':
                raise FakeKernelError(detail)
            # The inode of the server's uevent socket, to find it in /proc/PID/net/netlink.
            self.uevent_socket_inode: int | None = detail
        except EOFError:
            self.close()
            raise FakeKernelError('the FUSE server exited before mounting') from None
        except BaseException:
            self.close()
            raise

    def set_offline_behaviour(self, index: int, behaviour: OfflineBehaviour) -> None:
        """'ok', 'busy', ('busy', k), 'hang' or an errno; also ends a hang in progress."""
        self._call('set_offline_behaviour', index, behaviour)

    def hot_add(self, indexes: Iterable[int], node: int = 0, group: Group | None = None,
                offline_behaviour: OfflineBehaviour = 'ok') -> None:
        """Plug memory blocks in, as one DIMM or block by block for virtio-mem."""
        self._call('hot_add', list(indexes), node, group, offline_behaviour)

    def hot_remove(self, indexes: Iterable[int], force_offline: bool = False) -> None:
        """Unplug offline blocks; force_offline offlines online ones first, as virtio-mem does."""
        self._call('hot_remove', list(indexes), force_offline)

    def set_memory_used(self, used_bytes: int) -> None:
        """Set the memory in use, which MemAvailable in /proc/meminfo leaves out."""
        self._call('set_memory_used', used_bytes)

    def set_crash(self, loaded: bool | None = None, crash_hotplug: int | None = None) -> None:
        """Set kexec_crash_loaded and/or the value of crash_hotplug; None leaves it alone."""
        self._call('set_crash', loaded, crash_hotplug)

    def uevents(self) -> list[dict[str, str]]:
        """Every uevent so far, oldest first: ACTION, DEVPATH, SUBSYSTEM, SEQNUM."""
        return self._call('uevents')

    def writes(self) -> list[dict]:
        """Every write(2) so far, oldest first: path, block, attribute, value, errno (0 for
        success), pid (the writing thread), start and end (time.monotonic())."""
        return self._call('writes')

    def block(self, index: int) -> dict:
        """A present block: index, state, zone, node, boot, group, offline_behaviour."""
        return self._call('block', index)

    def in_netns(self, argv: Sequence[str | os.PathLike]) -> list[str]:
        """argv run in the kernel's network namespace, where its udev monitors get uevents."""
        return ['nsenter', f'--net={self._netns()}', '--', *map(str, argv)]

    @contextmanager
    def entered_netns(self) -> Iterator[None]:
        """The calling thread in the kernel's network namespace: sockets created meanwhile
        (a pyudev Monitor's) stay in there afterwards."""
        with entered_network_namespace(self._netns()):
            yield

    def udev_monitor(self, context: pyudev.Context | None = None) -> pyudev.Monitor:
        """A pyudev Monitor (source 'udev', not started) on a socket in the kernel's network
        namespace; filter, size and start it as usual."""
        import pyudev
        with self.entered_netns():
            return pyudev.Monitor.from_netlink(context if context is not None else pyudev.Context())

    def close(self) -> None:
        """End waiting writes with EINTR, stop the server and unmount; safe to call twice."""
        self._finalizer()

    def __enter__(self) -> FakeKernel:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def _netns(self) -> Path:
        if self.netns_path is None:
            raise FakeKernelError('this fake kernel sends no netlink uevents (FakeKernel(netlink=True))')
        if not self._finalizer.alive:
            raise FakeKernelError('the fake kernel is closed')
        return self.netns_path

    def _call(self, method: str, *args):
        with self._lock:
            if not self._finalizer.alive:
                raise FakeKernelError('the fake kernel is closed')
            self._connection.send((method, args))
            if not self._connection.poll(CONTROL_TIMEOUT_SECONDS):
                raise FakeKernelError(f'the FUSE server did not answer {method} '
                                      f'within {CONTROL_TIMEOUT_SECONDS} s')
            status, result = self._connection.recv()
        if status == 'error':
            raise result
        return result


def _tear_down(owner_pid: int, lock: threading.Lock, server: subprocess.Popen,
               connection: Connection, root: Path) -> None:
    """Stop the server and leave nothing mounted, whatever state the server is in; not in
    a forked child, whose exit must not take its parent's kernel away."""
    if os.getpid() != owner_pid:
        return
    with lock:
        try:
            connection.send(('shutdown', ()))
            if connection.poll(EXIT_TIMEOUT_SECONDS):
                connection.recv()
        except (OSError, EOFError):
            pass
        connection.close()
    try:
        server.wait(EXIT_TIMEOUT_SECONDS)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()
    for command in (['fusermount3', '-u', '-z', str(root)], ['umount', '-l', str(root)]):
        if not is_mounted(root):
            break
        try:
            subprocess.run(command, capture_output=True, check=False)
        except FileNotFoundError:
            continue
    try:
        root.rmdir()
    except OSError:
        pass


def is_mounted(path: Path) -> bool:
    """Whether something is mounted at path, dead FUSE mounts included (os.path.ismount
    says False for those, as it cannot stat them)."""
    with open('/proc/self/mountinfo') as mountinfo:
        return any(line.split()[4] == str(path) for line in mountinfo)
