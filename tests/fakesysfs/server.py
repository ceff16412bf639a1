"""The FUSE server process: serves a KernelModel as a sysroot and obeys a control connection.

Run by FakeKernel as `python -m tests.fakesysfs.server CONTROL_FD MOUNTPOINT [--netlink]`. The
spec arrives over the control connection; `('ready', uevent_socket_inode)` goes back once the
kernel has sent FUSE INIT (the inode is None without --netlink). With --netlink the whole process
moves into a network namespace of its own first, where it multicasts every uevent to udev
monitors (netlink.py).
Requests are `(method, args)` for a KernelModel control method, answered with
`('ok', result)` or `('error', exception)`. On `shutdown`, or when the test process goes away,
waiting writes end with EINTR and the server unmounts and exits.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import signal
import stat
import sys
import threading
import time
from multiprocessing.connection import Connection

import mfusepy

from .model import KernelModel, os_error
from .netlink import UdevNetlinkEmitter
from .tree import Dir, File, resolve, sysroot

SYSFS_FILE_SIZE = 4096  # what stat says about every sysfs attribute
_SIGKILL_BIT = 1 << (signal.SIGKILL - 1)
_WRITE_DRAIN_SECONDS = 2.0

# mfusepy has no wrapper for fuse_interrupted(); its handle is the library its loop runs on.
_fuse_interrupted = mfusepy._libfuse.fuse_interrupted
_fuse_interrupted.restype = ctypes.c_int
_fuse_interrupted.argtypes = []


class FuseCaller:
    """The thread whose write(2) a FUSE worker thread is serving.

    The kernel sends FUSE_INTERRUPT when a signal that thread does not block wakes it, the
    same test as signal_pending() in offline_pages(); libfuse records it for
    fuse_interrupted(). A fatal signal (the kernel queues SIGKILL for it) shows in
    /proc/TID/status, which also tells when the caller is gone.
    """

    def __init__(self) -> None:
        self.pid = mfusepy.fuse_get_context()[2]

    def interrupted(self) -> bool:
        return bool(_fuse_interrupted()) or self.fatally_signalled()

    def fatally_signalled(self) -> bool:
        if self.pid <= 0:  # a caller outside our pid namespace: nothing to look at
            return False
        try:
            with open(f'/proc/{self.pid}/status') as status:
                pending = next(line for line in status if line.startswith('SigPnd:'))
        except (FileNotFoundError, ProcessLookupError, StopIteration):
            return True
        return bool(int(pending.split()[1], 16) & _SIGKILL_BIT)


class SysfsOperations(mfusepy.Operations):
    """Sysfs semantics over the tree: attribute sizes of 4096, EACCES for opening a read-only
    attribute for writing or creating a file, EPERM for changing the directory structure."""

    use_ns = True

    def __init__(self, model: KernelModel, mounted: threading.Event) -> None:
        self.model = model
        self.root = sysroot(model)
        self.mounted = mounted
        self.mount_time_ns = time.time_ns()
        self.writes_in_progress = 0
        self._writes_lock = threading.Lock()

    def init(self, path: str) -> None:
        self.mounted.set()

    def getattr(self, path: str, fh: int | None = None) -> dict:
        node = resolve(self.root, path)
        times = {'st_atime': self.mount_time_ns, 'st_mtime': self.mount_time_ns,
                 'st_ctime': self.mount_time_ns, 'st_uid': 0, 'st_gid': 0}
        if isinstance(node, Dir):
            return {'st_mode': stat.S_IFDIR | 0o755, 'st_nlink': 2, 'st_size': 0, **times}
        if isinstance(node, File):
            return {'st_mode': stat.S_IFREG | node.mode, 'st_nlink': 1, 'st_size': SYSFS_FILE_SIZE,
                    **times}
        return {'st_mode': stat.S_IFLNK | 0o777, 'st_nlink': 1, 'st_size': len(node.target), **times}

    def readdir(self, path: str, fh: int) -> list[str]:
        node = resolve(self.root, path)
        if not isinstance(node, Dir):
            raise os_error(errno.ENOTDIR)
        return ['.', '..', *node.entries()]

    def readlink(self, path: str) -> str:
        node = resolve(self.root, path)
        if isinstance(node, Dir | File):
            raise os_error(errno.EINVAL)
        return node.target

    def open(self, path: str, flags: int) -> int:
        node = resolve(self.root, path)
        if flags & os.O_ACCMODE != os.O_RDONLY and not (isinstance(node, File) and node.write):
            raise os_error(errno.EACCES)
        return 0

    def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
        node = self._opened_file(path)
        content = node.read()
        return (content.encode() if isinstance(content, str) else content)[offset:offset + size]

    def write(self, path: str, data: bytes, offset: int, fh: int) -> int:
        """One store() call per write(2), whatever the offset, as sysfs does."""
        node = self._opened_file(path)
        caller = FuseCaller()
        started = time.monotonic()
        error = 0
        with self._writes_lock:
            self.writes_in_progress += 1
        try:
            node.write(data.decode(errors='surrogateescape'), caller)
        except OSError as failure:
            error = failure.errno
            raise
        finally:
            self.model.record_write(path, data, error, caller.pid, started)
            with self._writes_lock:
                self.writes_in_progress -= 1
        return len(data)

    def truncate(self, path: str, length: int, fh: int | None = None) -> int:
        """Accepted and ignored, as kernfs does: `echo online > state` opens with O_TRUNC."""
        return 0

    def create(self, path: str, mode: int, fi=None) -> int:
        raise os_error(errno.EACCES)

    def mknod(self, path: str, mode: int, dev: int) -> int:
        raise os_error(errno.EPERM)

    def mkdir(self, path: str, mode: int) -> int:
        raise os_error(errno.EPERM)

    def unlink(self, path: str) -> int:
        raise os_error(errno.EPERM)

    def rmdir(self, path: str) -> int:
        raise os_error(errno.EPERM)

    def symlink(self, target: str, source: str) -> int:
        raise os_error(errno.EPERM)

    def link(self, target: str, source: str) -> int:
        raise os_error(errno.EPERM)

    def rename(self, old: str, new: str) -> int:
        raise os_error(errno.EPERM)

    def _opened_file(self, path: str) -> File:
        """The file behind an open descriptor; ENODEV once its block was removed (kernfs)."""
        try:
            node = resolve(self.root, path)
        except OSError:
            raise os_error(errno.ENODEV) from None
        if not isinstance(node, File):
            raise os_error(errno.EISDIR)
        return node


def serve_control(connection: Connection, model: KernelModel, operations: SysfsOperations,
                  emitter: UdevNetlinkEmitter | None) -> None:
    operations.mounted.wait()
    connection.send(('ready', None if emitter is None else emitter.socket_inode))
    while True:
        try:
            method, args = connection.recv()
        except (EOFError, OSError):
            break
        if method == 'shutdown':
            connection.send(('ok', None))
            break
        try:
            if method not in KernelModel.CONTROL_METHODS:
                raise AttributeError(f'no control method {method!r}')
            reply = ('ok', getattr(model, method)(*args))
        except Exception as error:  # sent back to the test, which raises it
            reply = ('error', error)
        connection.send(reply)
    model.release_waiters()
    _wait_for_writes(operations)
    # libfuse's SIGTERM handler ends the loop the main thread waits in; fuse_main() unmounts.
    signal.pthread_kill(threading.main_thread().ident, signal.SIGTERM)


def _wait_for_writes(operations: SysfsOperations) -> None:
    """Let released writes answer before libfuse cancels its worker threads."""
    deadline = time.monotonic() + _WRITE_DRAIN_SECONDS
    while operations.writes_in_progress and time.monotonic() < deadline:
        time.sleep(0.005)


def main(argv: list[str]) -> None:
    control_fd, mountpoint, options = int(argv[1]), argv[2], argv[3:]
    logging.getLogger('mfusepy').setLevel(logging.ERROR)
    connection = Connection(control_fd)
    emitter = None
    if '--netlink' in options:
        # Before any thread exists, so that every thread is in the new network namespace.
        try:
            emitter = UdevNetlinkEmitter()
        except (OSError, RuntimeError) as error:
            connection.send(('failed', f'no private network namespace for uevents: {error}'))
            return
    model = KernelModel(connection.recv(), uevent_sink=None if emitter is None else emitter.send)
    mounted = threading.Event()
    operations = SysfsOperations(model, mounted)
    threading.Thread(target=serve_control, args=(connection, model, operations, emitter),
                     daemon=True, name='fakesysfs-control').start()
    try:
        # Several threads, so that a hanging write does not hold up every other request;
        # direct_io and zero cache timeouts, so that every read and lookup sees the model now.
        mfusepy.FUSE(operations, mountpoint, foreground=True, nothreads=False, direct_io=True,
                     attr_timeout=0, entry_timeout=0, negative_timeout=0,
                     fsname='fakesysfs', subtype='fakesysfs')
    except Exception as error:
        if not mounted.is_set():
            connection.send(('failed', f'mounting {mountpoint} failed: {error!r}'))
        raise


if __name__ == '__main__':
    main(sys.argv)
