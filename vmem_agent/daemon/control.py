"""The control socket's server: non-blocking connections served from the daemon's event loop.

Nothing a client does can stall the loop: reads and writes are non-blocking and
buffered per connection, a request has READ_TIMEOUT_S to arrive whole and a reply
WRITE_TIMEOUT_S to be taken, requests over 64 KiB are refused, and at most MAX_CLIENTS
connections are open at once. The peer is checked with SO_PEERCRED before anything is
read: root, the daemon's own user, or a member of the configured group.
"""

from __future__ import annotations

import errno
import logging
import os
import selectors
import socket
import stat
import struct
from typing import Callable

from ..errors import EXIT_FAILURE, EXIT_USAGE, VmemError
from .protocol import (
    MAX_REQUEST_BYTES, PERMISSION_DENIED, TIMEOUT, TOO_LARGE, TOO_MANY_CLIENTS, ProtocolError, Request, error_reply,
    parse_request,
)

log = logging.getLogger(__name__)

MAX_CLIENTS = 32
READ_TIMEOUT_S = 2.0
WRITE_TIMEOUT_S = 10.0
ACCEPTS_PER_WAKE = 64
_PEERCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid


class ControlSocketError(VmemError):
    """The control socket cannot be created (another daemon runs, or the directory is not writable)."""


class Connection:
    """One client: the request being read, or the reply being written, or waiting for a job."""

    def __init__(self, sock: socket.socket, pid: int, uid: int, deadline: float | None):
        self.sock = sock
        self.pid = pid
        self.uid = uid
        self.inbox = bytearray()
        self.outbox = b""
        self.deadline = deadline  # None while the reply waits for a job
        self.watched = False  # registered in the selector
        self.closed = False

    def __repr__(self) -> str:
        return f"client pid {self.pid} uid {self.uid}"


class ControlServer:
    def __init__(self, selector: selectors.BaseSelector, path: str, group_gid: int | None,
                 handle: Callable[[Connection, Request], bytes | None], clock: Callable[[], float]):
        self.selector = selector
        self.path = path
        self.group_gid = group_gid
        self.handle = handle
        self.clock = clock
        self.connections: set[Connection] = set()
        self.listener = self._listen()
        selector.register(self.listener, selectors.EVENT_READ, self._accept)

    def _listen(self) -> socket.socket:
        os.makedirs(os.path.dirname(self.path), mode=0o755, exist_ok=True)
        self._remove_stale_socket()
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK)
        old_umask = os.umask(0o177)
        try:
            listener.bind(self.path)
        except OSError as exc:
            listener.close()
            raise ControlSocketError(f"cannot create the control socket {self.path}: {exc.strerror}") from None
        finally:
            os.umask(old_umask)
        if self.group_gid is not None:
            os.chown(self.path, -1, self.group_gid)
            os.chmod(self.path, 0o660)
        listener.listen(MAX_CLIENTS)
        return listener

    def _remove_stale_socket(self) -> None:
        try:
            mode = os.lstat(self.path).st_mode
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(mode):
            raise ControlSocketError(f"{self.path} exists and is not a socket")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            probe.settimeout(1.0)
            probe.connect(self.path)
        except OSError:
            os.unlink(self.path)  # nobody listens: left by a daemon that was killed
            return
        finally:
            probe.close()
        raise ControlSocketError(f"another vmem-agent daemon is running (it answers on {self.path})")

    # -- the loop's callbacks ----------------------------------------------------------------

    def _accept(self, _mask: int) -> None:
        for _ in range(ACCEPTS_PER_WAKE):
            try:
                sock, _address = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # EMFILE and friends: the loop must go on
                log.warning("control socket: accept failed: %s", exc.strerror)
                return
            sock.setblocking(False)
            pid, uid, gid = _PEERCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size))
            connection = Connection(sock, pid, uid, self.clock() + READ_TIMEOUT_S)
            if len(self.connections) >= MAX_CLIENTS:
                log.warning("control socket: %r refused: %d clients already", connection, MAX_CLIENTS)
                self._refuse(connection, TOO_MANY_CLIENTS, f"more than {MAX_CLIENTS} clients at once")
                continue
            if not self._authorised(pid, uid, gid):
                log.warning("control socket: %r refused: not root or in the socket group", connection)
                self._refuse(connection, PERMISSION_DENIED, "only root or the configured socket_group may use the daemon")
                continue
            self.connections.add(connection)
            self._watch(connection, selectors.EVENT_READ, self._readable)

    def _refuse(self, connection: Connection, code: str, message: str) -> None:
        try:
            connection.sock.send(error_reply(code, message, EXIT_FAILURE))
        except OSError:
            pass
        connection.sock.close()

    def _readable(self, connection: Connection) -> None:
        try:
            chunk = connection.sock.recv(MAX_REQUEST_BYTES + 1 - len(connection.inbox))
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._close(connection)
            return
        if not chunk:
            self._close(connection)  # the client went away before sending a whole request
            return
        connection.inbox += chunk
        end = connection.inbox.find(b"\n")
        if end < 0:
            if len(connection.inbox) > MAX_REQUEST_BYTES:
                log.warning("control socket: %r sent more than %d bytes without a newline", connection, MAX_REQUEST_BYTES)
                self.reply(connection, error_reply(TOO_LARGE, f"request larger than {MAX_REQUEST_BYTES} bytes", EXIT_USAGE))
            return
        # Whole: nothing more is read until the reply is sent. A client that half-closes
        # (shutdown SHUT_WR) still gets its reply; one that went away makes the send fail.
        self.selector.unregister(connection.sock)
        connection.watched = False
        try:
            request = parse_request(bytes(connection.inbox[:end]))
        except ProtocolError as exc:
            log.warning("control socket: %r: %s: %s", connection, exc.code, exc.message)
            self.reply(connection, error_reply(exc.code, exc.message, EXIT_USAGE))
            return
        log.debug("control socket: %r: %s", connection, request)
        connection.deadline = None
        answer = self.handle(connection, request)
        if answer is not None:
            self.reply(connection, answer)

    def reply(self, connection: Connection, data: bytes) -> None:
        if connection.closed:
            return
        connection.outbox = data
        connection.deadline = self.clock() + WRITE_TIMEOUT_S
        self._watch(connection, selectors.EVENT_WRITE, self._writable)
        self._writable(connection)

    def _watch(self, connection: Connection, events: int, callback) -> None:
        handler = lambda mask, c=connection: callback(c)  # noqa: E731
        if connection.watched:
            self.selector.modify(connection.sock, events, handler)
        else:
            self.selector.register(connection.sock, events, handler)
            connection.watched = True

    def _writable(self, connection: Connection) -> None:
        try:
            sent = connection.sock.send(connection.outbox)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._close(connection)
            return
        connection.outbox = connection.outbox[sent:]
        if not connection.outbox:
            self._linger(connection)

    def _linger(self, connection: Connection) -> None:
        """Reply sent: close our side, and wait for the client's EOF (discarding anything it still
        sends) before closing, so that unread input never turns into a reset that eats the reply."""
        try:
            connection.sock.shutdown(socket.SHUT_WR)
        except OSError:
            self._close(connection)
            return
        self._watch(connection, selectors.EVENT_READ, self._discard)

    def _discard(self, connection: Connection) -> None:
        try:
            chunk = connection.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            chunk = b""
        if not chunk:
            self._close(connection)

    # -- housekeeping ------------------------------------------------------------------------

    def next_deadline(self) -> float | None:
        deadlines = [c.deadline for c in self.connections if c.deadline is not None]
        return min(deadlines, default=None)

    def expire(self, now: float) -> None:
        for connection in [c for c in self.connections if c.deadline is not None and c.deadline <= now]:
            log.warning("control socket: %r dropped: too slow", connection)
            if not connection.outbox:
                try:
                    connection.sock.send(error_reply(TIMEOUT, f"no complete request within {READ_TIMEOUT_S:g}s", EXIT_USAGE))
                except OSError:
                    pass
            self._close(connection)

    def _close(self, connection: Connection) -> None:
        if connection.closed:
            return
        connection.closed = True
        self.connections.discard(connection)
        if connection.watched:
            self.selector.unregister(connection.sock)
        connection.sock.close()

    def close(self, farewell: bytes | None = None) -> None:
        for connection in list(self.connections):
            if farewell is not None and connection.deadline is None:
                try:
                    connection.sock.send(farewell)
                except OSError:
                    pass
            self._close(connection)
        self.selector.unregister(self.listener)
        self.listener.close()
        try:
            os.unlink(self.path)
        except OSError as exc:
            if exc.errno != errno.ENOENT:
                log.warning("cannot remove %s: %s", self.path, exc.strerror)

    def fds(self) -> list[int]:
        """Every descriptor of the server, for writer children to close."""
        return [self.listener.fileno(), *(c.sock.fileno() for c in self.connections)]

    def _authorised(self, pid: int, uid: int, gid: int) -> bool:
        if uid in (0, os.geteuid()):
            return True
        if self.group_gid is None:
            return False
        return gid == self.group_gid or self.group_gid in _supplementary_groups(pid)


def _supplementary_groups(pid: int) -> set[int]:
    """The peer's supplementary groups from /proc/PID/status (empty if it is gone)."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as handle:
            for line in handle:
                if line.startswith("Groups:"):
                    return {int(word) for word in line.split()[1:] if word.isdigit()}
    except OSError:
        pass
    return set()
