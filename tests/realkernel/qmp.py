"""Small stdlib QMP (QEMU Machine Protocol) client over a unix socket.

    with QMPClient.connect("/path/qmp.sock") as q:
        q.execute("query-status")
        dimm = q.hotadd_dimm("512M")            # -> "dimm0"
        q.set_virtio_mem_size("vmem0", "1G")
        q.memory_size_summary()                 # {'base-memory': ..., 'plugged-memory': ...}

Errors returned by QEMU raise :class:`QMPError`.  Asynchronous events are
collected in ``events`` (see :meth:`wait_event`).
"""

from __future__ import annotations

import itertools
import json
import re
import socket
import threading
import time
from typing import Any, Callable

_SIZE_RE = re.compile(r"^\s*(\d+)\s*([KMGT]?)(i?B)?\s*$", re.I)
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_size(size: int | str) -> int:
    """``512M`` / ``1G`` / ``1GiB`` / ``4096`` -> bytes (binary units)."""
    if isinstance(size, int):
        return size
    m = _SIZE_RE.match(size)
    if not m:
        raise ValueError(f"bad size {size!r}")
    return int(m.group(1)) * _UNITS[m.group(2).upper()]


class QMPError(RuntimeError):
    """QEMU answered a command with an error."""

    def __init__(self, command: str, error: dict):
        self.command = command
        self.error_class = error.get("class", "")
        self.desc = error.get("desc", "")
        super().__init__(f"QMP {command}: {self.error_class}: {self.desc}")


class QMPConnectionError(RuntimeError):
    pass


class QMPClient:
    def __init__(self, sock: socket.socket):
        self._sock = sock
        self._buf = b""
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self.events: list[dict] = []
        self.greeting: dict | None = None
        self._dimm_ids = itertools.count(0)

    # ------------------------------------------------------------------ setup
    @classmethod
    def connect(cls, path: str, timeout: float = 30.0,
                alive: Callable[[], bool] | None = None) -> "QMPClient":
        """Connect (retrying until the socket exists), read the greeting and
        negotiate capabilities.  ``alive`` lets the caller abort early when
        the QEMU process died."""
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while True:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                s.settimeout(max(0.1, deadline - time.monotonic()))
                s.connect(path)
                break
            except OSError as e:
                s.close()
                last = e
            if alive is not None and not alive():
                raise QMPConnectionError(f"QEMU exited before QMP socket {path} was up")
            if time.monotonic() > deadline:
                raise QMPConnectionError(f"cannot connect to QMP {path}: {last}")
            time.sleep(0.02)
        c = cls(s)
        c.greeting = c._read_msg(deadline - time.monotonic())
        if "QMP" not in c.greeting:
            raise QMPConnectionError(f"unexpected QMP greeting {c.greeting!r}")
        c.execute("qmp_capabilities")
        return c

    def close(self) -> None:
        try:
            self._sock.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # --------------------------------------------------------------- protocol
    def _read_msg(self, timeout: float) -> dict:
        deadline = time.monotonic() + max(timeout, 0.01)
        while b"\n" not in self._buf:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("QMP read timed out")
            self._sock.settimeout(remaining)
            try:
                chunk = self._sock.recv(65536)
            except socket.timeout:
                raise TimeoutError("QMP read timed out") from None
            if not chunk:
                raise QMPConnectionError("QMP connection closed")
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return json.loads(line)

    def execute(self, command: str, arguments: dict | None = None, *,
                timeout: float = 30.0) -> Any:
        """Run ``command``; return its ``return`` value or raise QMPError."""
        with self._lock:
            msg_id = next(self._ids)
            msg: dict[str, Any] = {"execute": command, "id": msg_id}
            if arguments:
                msg["arguments"] = arguments
            self._sock.sendall(json.dumps(msg).encode() + b"\n")
            deadline = time.monotonic() + timeout
            while True:
                resp = self._read_msg(deadline - time.monotonic())
                if "event" in resp:
                    self.events.append(resp)
                    continue
                if resp.get("id") != msg_id:
                    continue  # stale reply (e.g. of a timed-out command)
                if "error" in resp:
                    raise QMPError(command, resp["error"])
                return resp.get("return")

    def poll_events(self, timeout: float = 0.0) -> None:
        """Read pending events from the socket into ``events``."""
        with self._lock:
            deadline = time.monotonic() + timeout
            while True:
                try:
                    msg = self._read_msg(max(0.001, deadline - time.monotonic()))
                except TimeoutError:
                    return
                if "event" in msg:
                    self.events.append(msg)

    def wait_event(self, name: str, timeout: float = 30.0,
                   match: Callable[[dict], bool] | None = None,
                   consume: bool = True) -> dict:
        """Wait for event ``name`` (optionally satisfying ``match(event)``)."""
        deadline = time.monotonic() + timeout
        while True:
            for i, ev in enumerate(self.events):
                if ev.get("event") == name and (match is None or match(ev)):
                    if consume:
                        del self.events[i]
                    return ev
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"QMP event {name} not seen within {timeout}s")
            self.poll_events(min(remaining, 0.5))

    # ------------------------------------------------------------ memory ops
    def hotadd_dimm(self, size: int | str, *, dimm_id: str | None = None,
                    node: int | None = None, backend: str = "memory-backend-ram") -> str:
        """Hot-add a pc-dimm of ``size``; returns the device id (``dimmN``).
        The backing object is ``mem-<device id>``."""
        if dimm_id is None:
            existing = {d.get("data", {}).get("id") for d in self.memory_devices()}
            while True:
                dimm_id = f"dimm{next(self._dimm_ids)}"
                if dimm_id not in existing:
                    break
        mem_id = f"mem-{dimm_id}"
        self.execute("object-add", {"qom-type": backend, "id": mem_id,
                                    "size": parse_size(size)})
        args: dict[str, Any] = {"driver": "pc-dimm", "id": dimm_id, "memdev": mem_id}
        if node is not None:
            args["node"] = node
        try:
            self.execute("device_add", args)
        except QMPError:
            self.execute("object-del", {"id": mem_id})
            raise
        return dimm_id

    def unplug_dimm(self, dimm_id: str, *, timeout: float = 30.0,
                    delete_backend: bool = True) -> None:
        """Request unplug of a pc-dimm (ACPI eject: the guest must have
        offlined all its blocks) and wait for DEVICE_DELETED.  Raises
        TimeoutError when the guest does not release it."""
        self.execute("device_del", {"id": dimm_id})
        self.wait_event("DEVICE_DELETED", timeout,
                        match=lambda e: e.get("data", {}).get("device") == dimm_id)
        if delete_backend:
            self.execute("object-del", {"id": f"mem-{dimm_id}"})

    def set_virtio_mem_size(self, dev_id: str, requested: int | str) -> None:
        """Set ``requested-size`` of a virtio-mem-pci device."""
        self.execute("qom-set", {"path": f"/machine/peripheral/{dev_id}",
                                 "property": "requested-size",
                                 "value": parse_size(requested)})

    def virtio_mem_size(self, dev_id: str) -> int:
        """Currently plugged size of a virtio-mem device (what the guest did)."""
        return self.execute("qom-get", {"path": f"/machine/peripheral/{dev_id}",
                                        "property": "size"})

    def memory_size_summary(self) -> dict:
        return self.execute("query-memory-size-summary")

    def memory_devices(self) -> list[dict]:
        return self.execute("query-memory-devices")

    def quit(self) -> None:
        try:
            self.execute("quit", timeout=5)
        except (QMPConnectionError, OSError, TimeoutError):
            pass
