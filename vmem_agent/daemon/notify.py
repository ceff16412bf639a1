"""sd_notify(3) in the stdlib: one datagram per state change to $NOTIFY_SOCKET.

systemd's protocol is newline-separated VAR=value pairs in a single datagram on an
AF_UNIX socket; a leading `@` names a socket in the abstract namespace. Without
NOTIFY_SOCKET (not started by systemd) every call is a no-op, so the daemon runs the
same in a terminal. The watchdog interval comes from WATCHDOG_USEC (when WATCHDOG_PID,
if set, is us), and the daemon pings at half of it from its event loop.
"""

from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger(__name__)


class Notifier:
    def __init__(self, environ=os.environ):
        address = environ.get("NOTIFY_SOCKET") or None
        if address and address.startswith("@"):
            address = "\0" + address[1:]
        self._address = address
        self._socket: socket.socket | None = None
        self.watchdog_interval = _watchdog_interval(environ)

    @property
    def enabled(self) -> bool:
        return self._address is not None

    def send(self, **fields: str) -> None:
        """Send READY=1, STATUS=..., etc.; a failure is logged, never raised (systemd may be gone)."""
        if self._address is None:
            return
        message = "\n".join(f"{name}={_one_line(value)}" for name, value in fields.items())
        try:
            if self._socket is None:
                self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._socket.sendto(message.encode("utf-8", "replace"), self._address)
        except OSError as exc:
            log.debug("sd_notify %s failed: %s", message, exc)

    def ready(self, status: str) -> None:
        self.send(READY="1", STATUS=status)

    def status(self, status: str) -> None:
        self.send(STATUS=status)

    def reloading(self) -> None:
        self.send(RELOADING="1", MONOTONIC_USEC=str(int(_monotonic_usec())))

    def stopping(self) -> None:
        self.send(STOPPING="1")

    def watchdog(self) -> None:
        self.send(WATCHDOG="1")


def _watchdog_interval(environ) -> float | None:
    """Seconds between WATCHDOG=1 pings (half of WatchdogSec=), or None without a watchdog."""
    usec = environ.get("WATCHDOG_USEC", "")
    pid = environ.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    if pid and (not pid.isdigit() or int(pid) != os.getpid()):
        return None
    return int(usec) / 2e6


def _monotonic_usec() -> float:
    import time

    return time.clock_gettime(time.CLOCK_MONOTONIC) * 1e6


def _one_line(value: str) -> str:
    return " ".join(str(value).split())
