"""Memory-block uevents from pyudev, drained in bounded batches, with lost events reported.

The monitor's socket goes into the daemon's selector. Events are only hints that
something changed: the daemon decides from a fresh snapshot, so a lost event (ENOBUFS
when a hot-add floods the netlink buffer, or a message that does not decode) costs a
rescan, never a block left offline.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
from dataclasses import dataclass, field

from ..kernel.sysfs import numbered

log = logging.getLogger(__name__)

DRAIN_LIMIT = 4096  # events taken per wake-up; the rest waits for the next turn of the loop


@dataclass
class Batch:
    """What one drain saw: counts per action, the blocks that changed state, and whether events were lost."""

    counts: dict[str, int] = field(default_factory=dict)
    state_changes: list[tuple[int, str]] = field(default_factory=list)  # (block, "online"/"offline")
    lost: bool = False

    @property
    def empty(self) -> bool:
        return not self.counts and not self.lost


class MemoryEvents:
    def __init__(self, source: str, buffer_bytes: int):
        import pyudev

        self.monitor = pyudev.Monitor.from_netlink(pyudev.Context(), source=source)
        self.monitor.filter_by("memory")
        try:
            self.monitor.set_receive_buffer_size(buffer_bytes)
        except OSError as exc:
            log.warning("uevents: cannot enlarge the receive buffer (%s): a big hot-add may cost a rescan", exc.strerror)
        self.monitor.start()
        # The same socket, to read (and so clear) its pending error: after an overflow
        # pyudev's poll() raises on POLLERR every time and never clears it itself.
        self._error_probe = socket.socket(fileno=os.dup(self.monitor.fileno()))
        self.received = 0
        self.losses = 0

    def fileno(self) -> int:
        return self.monitor.fileno()

    def drain(self) -> Batch:
        batch = Batch()
        for _ in range(DRAIN_LIMIT):
            try:
                device = self.monitor.poll(0)
            except OSError:
                batch.lost = True
                pending = self._error_probe.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if pending not in (0, errno.ENOBUFS):
                    log.warning("uevents: receive failed: %s", os.strerror(pending))
                continue
            except Exception as exc:  # a message pyudev could not decode: treat it as lost
                batch.lost = True
                log.warning("uevents: undecodable event: %s", exc)
                continue
            if device is None:
                break
            self.received += 1
            action = device.action or "change"
            batch.counts[action] = batch.counts.get(action, 0) + 1
            if action in ("online", "offline"):
                index = numbered(device.sys_name or "", "memory")
                if index is not None:
                    batch.state_changes.append((index, action))
        if batch.lost:
            self.losses += 1
        return batch
