"""The kernel side of memory hotplug, after drivers/base/memory.c and mm/memory_hotplug.c.

All state lives here behind one lock; the FUSE server and the static tree builder only render
it. A write that has to wait (an offline that hangs, or a write queued behind the device
hotplug lock) waits on a condition of that lock, so readers never block behind it.
"""

from __future__ import annotations

import errno
import os
import re
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from vmem_agent.core.zonerule import PAGE, ZoneCounters
from vmem_agent.kernel.e820 import E820_ENTRIES_OFFSET, E820_ENTRY, E820_TABLE_OFFSET, E820_TYPE_RAM

from .spec import (
    AUTO_ONLINE_VALUES, DYNAMIC_GROUP_KINDS, ONLINE_POLICIES, ONLINE_TYPES, Group, OfflineBehaviour, TreeSpec,
    check_block_placement, normalise_offline_behaviour,
)

E820_RESERVED = 2

POLL_SECONDS = 0.02
STATE_VALUES = ONLINE_TYPES + ('offline',)
UEVENT_ACTIONS = ('add', 'remove', 'change', 'move', 'online', 'offline', 'bind', 'unbind')
MEMORY_DEVPATH = '/devices/system/memory'
_BLOCK_ATTRIBUTE = re.compile(r'/sys/devices/system/memory/memory(\d+)/([^/]+)')
_UINT_MAX = 2**32 - 1
# The first MiB and the 32-bit PCI hole of a QEMU pc guest with SeaBIOS (Linux 6.1).
_LOW_MEGABYTE = (
    (0x00000000, 0x00000fff, 'Reserved', []),
    (0x00001000, 0x0009fbff, 'System RAM', []),
    (0x0009fc00, 0x0009ffff, 'Reserved', []),
    (0x000a0000, 0x000bffff, 'PCI Bus 0000:00', []),
    (0x000c0000, 0x000c05ff, 'Video ROM', []),
    (0x000f0000, 0x000fffff, 'Reserved', [(0x000f0000, 0x000fffff, 'System ROM', [])]),
)
_KERNEL_IMAGE = (
    (0x01000000, 0x01ffffff, 'Kernel code', []),
    (0x02000000, 0x025fffff, 'Kernel rodata', []),
    (0x02600000, 0x0287ffff, 'Kernel data', []),
    (0x02c00000, 0x02ffffff, 'Kernel bss', []),
)
_SEABIOS_RESERVED = 0x20000  # at the top of the RAM below the PCI hole
_PCI_HOLE_END = 0xfebfffff
_ABOVE_PCI_HOLE = (
    (0xfec00000, 0xfec003ff, 'IOAPIC 0', []),
    (0xfee00000, 0xfee00fff, 'Local APIC', []),
    (0xfffc0000, 0xffffffff, 'Reserved', []),
)


class FakeKernelError(Exception):
    """A control request the kernel would refuse, such as removing memory that is online."""


class Caller(Protocol):
    """The thread a sysfs write runs in, as the kernel sees it."""

    pid: int

    def interrupted(self) -> bool:
        """A signal broke the writer's wait (signal_pending() in offline_pages)."""

    def fatally_signalled(self) -> bool:
        """The writer is being killed (fatal_signal_pending())."""


def os_error(code: int) -> OSError:
    return OSError(code, os.strerror(code))


def sysfs_value(text: str) -> str:
    """The written word as sysfs_streq() compares it: one trailing newline does not count."""
    return text[:-1] if text.endswith('\n') else text


def kstrtobool(text: str) -> bool:
    """The kernel's kstrtobool(): only the first one or two characters decide."""
    first, second = text[:1], text[1:2]
    if first and first in 'yYtT1':
        return True
    if first and first in 'nNfF0':
        return False
    if first and first in 'oO' and second:
        if second in 'nN':
            return True
        if second in 'fF':
            return False
    raise os_error(errno.EINVAL)


def kstrtouint(text: str) -> int:
    """The kernel's kstrtouint(text, 0): optional '+', 0x for hex, a leading 0 for octal."""
    digits = sysfs_value(text).removeprefix('+')
    base = 10
    if digits[:2] in ('0x', '0X'):
        digits, base = digits[2:], 16
    elif digits.startswith('0') and len(digits) > 1:
        digits, base = digits[1:], 8
    allowed = {8: '01234567', 10: '0123456789', 16: '0123456789abcdefABCDEF'}[base]
    if not digits or any(character not in allowed for character in digits):
        raise os_error(errno.EINVAL)
    value = int(digits, base)
    if value > _UINT_MAX:
        raise os_error(errno.ERANGE)
    return value


@dataclass
class Block:
    index: int
    node: int
    state: str  # online, offline or going-offline
    zone: str | None  # set while the block is online or going offline
    boot: bool
    group: Group | None
    offline_behaviour: OfflineBehaviour


@dataclass
class _ZoneStats:
    """What zone selection looks at, cached until a block changes: zone spans, and per
    (node, group, Movable, early) the online blocks that the auto-movable rule counts."""

    spans: dict[tuple[int, str], tuple[int, int]] = field(default_factory=dict)  # (node, zone)
    online: Counter = field(default_factory=Counter)  # (node, group, movable, early) -> blocks
    groups: dict[Group, list] = field(default_factory=dict)  # group -> [node, present blocks]
    counters: dict[tuple[int, bool], ZoneCounters] = field(default_factory=dict)  # (ratio, numa aware)


class KernelModel:
    """Memory blocks, zone policy, /proc views, uevents and a log of every sysfs write."""

    CONTROL_METHODS = frozenset({
        'block', 'hot_add', 'hot_remove', 'release_waiters', 'set_crash', 'set_memory_used',
        'set_offline_behaviour', 'uevents', 'writes',
    })

    def __init__(self, spec: TreeSpec,
                 uevent_sink: Callable[[dict[str, str]], None] | None = None) -> None:
        """uevent_sink gets each uevent as it is logged, in order, with the lock held."""
        self.spec = spec
        self._uevent_sink = uevent_sink
        self.block_size = spec.block_size
        self.pages_per_block = spec.block_size // PAGE
        self.blocks = {
            block.index: Block(block.index, block.node, block.state, block.zone, block.boot,
                               block.group, block.offline)
            for block in spec.blocks
        }
        self.auto_online_blocks = spec.auto_online_blocks
        self.online_policy = spec.online_policy
        self.auto_movable_ratio = spec.auto_movable_ratio
        self.auto_movable_numa_aware = spec.auto_movable_numa_aware
        self.crash_hotplug = spec.crash_hotplug
        self.kexec_crash_loaded = spec.kexec_crash_loaded
        self.mem_used = spec.initial_mem_used_bytes
        self.lock = threading.Lock()
        self.changed = threading.Condition(self.lock)
        self._hotplug_lock_held = False
        self._released = False
        self._stats: _ZoneStats | None = None
        self._uevents: list[dict[str, str]] = []
        self._writes: list[dict] = []

    # --- reading -------------------------------------------------------------------------

    def present_indexes(self) -> list[int]:
        with self.lock:
            return sorted(self.blocks)

    def node_block_indexes(self, node: int) -> list[int]:
        with self.lock:
            return sorted(index for index, block in self.blocks.items() if block.node == node)

    def group_block_indexes(self, group: Group) -> list[int]:
        with self.lock:
            return sorted(index for index, block in self.blocks.items() if block.group == group)

    def dimm_slots(self) -> range:
        """The ACPI DIMM slots: as many as the spec says, and one for every DIMM present."""
        with self.lock:
            dimms = [block.group[1] for block in self.blocks.values()
                     if block.group is not None and block.group[0] == 'dimm']
        return range(max(self.spec.dimm_slots, max(dimms, default=-1) + 1))

    def block_placement(self, index: int) -> tuple[int, Group | None] | None:
        """The node and memory group of a present block, or None."""
        with self.lock:
            block = self.blocks.get(index)
            return None if block is None else (block.node, block.group)

    def state_text(self, index: int) -> str:
        with self.lock:
            return f'{self._present(index).state}\n'

    def online_text(self, index: int) -> str:
        with self.lock:
            return '0\n' if self._present(index).state == 'offline' else '1\n'

    def valid_zones_text(self, index: int) -> str:
        """valid_zones_show(): the zone of an online block, else the default zone first."""
        with self.lock:
            block = self._present(index)
            if block.state == 'online':
                return f'{block.zone}\n'
            default = self._zone_for(block, 'online')
            zones = [default] + [zone for zone in (self._zone_for(block, online_type)
                                                   for online_type in ONLINE_TYPES[1:])
                                 if zone != default]
            return ' '.join(zones) + '\n'

    def meminfo_text(self) -> str:
        """/proc/meminfo: MemTotal is the online memory less what the kernel reserved at boot,
        MemAvailable what the `used` knob leaves of it."""
        with self.lock:
            online = sum(1 for block in self.blocks.values() if block.state != 'offline')
            total = max(online * self.block_size - self.spec.reserved_bytes, 0)
            used = min(self.mem_used, total)
        available = total - used
        cached = available // 4
        buffers = available // 64
        slab_reclaimable = available // 64
        free = available - cached - buffers - slab_reclaimable
        anon = used * 3 // 4
        slab_unreclaimable = used - anon
        kib = [
            ('MemTotal', total), ('MemFree', free), ('MemAvailable', available),
            ('Buffers', buffers), ('Cached', cached), ('SwapCached', 0),
            ('Active', anon // 2 + cached // 2), ('Inactive', anon - anon // 2 + cached - cached // 2),
            ('Active(anon)', anon // 2), ('Inactive(anon)', anon - anon // 2),
            ('Active(file)', cached // 2), ('Inactive(file)', cached - cached // 2),
            ('Unevictable', 0), ('Mlocked', 0), ('SwapTotal', 0), ('SwapFree', 0),
            ('Zswap', 0), ('Zswapped', 0), ('Dirty', 0), ('Writeback', 0), ('AnonPages', anon),
            ('Mapped', cached // 8), ('Shmem', 0), ('KReclaimable', slab_reclaimable),
            ('Slab', slab_reclaimable + slab_unreclaimable), ('SReclaimable', slab_reclaimable),
            ('SUnreclaim', slab_unreclaimable), ('KernelStack', 0), ('PageTables', 0),
            ('SecPageTables', 0), ('NFS_Unstable', 0), ('Bounce', 0), ('WritebackTmp', 0),
            ('CommitLimit', total // 2), ('Committed_AS', used), ('VmallocTotal', 34359738367 * 1024),
            ('VmallocUsed', 0), ('VmallocChunk', 0), ('Percpu', 0), ('HardwareCorrupted', 0),
            ('AnonHugePages', 0), ('ShmemHugePages', 0), ('ShmemPmdMapped', 0),
            ('FileHugePages', 0), ('FilePmdMapped', 0),
        ]
        huge_pages = ('HugePages_Total', 'HugePages_Free', 'HugePages_Rsvd', 'HugePages_Surp')
        tail = [('Hugepagesize', 2 * 1024 * 1024), ('Hugetlb', 0), ('DirectMap4k', 0), ('DirectMap2M', total)]
        lines = [f'{name + ":":<16}{size // 1024:>8} kB' for name, size in kib]
        lines += [f'{name + ":":<16}{0:>8}' for name in huge_pages]
        lines += [f'{name + ":":<16}{size // 1024:>8} kB' for name, size in tail]
        return '\n'.join(lines) + '\n'

    def iomem_text(self) -> str:
        """/proc/iomem as root sees it: boot RAM and each DIMM as `System RAM`, virtio-mem
        memory as `System RAM (virtio_mem)` under its device region `virtioN`, dax/kmem memory
        as `System RAM (kmem)` under `daxN.0`."""
        with self.lock:
            owners = [(index, self._resource_owner(self.blocks[index])) for index in sorted(self.blocks)]
        runs: list[list] = []  # [first, last, owner]
        for index, owner in owners:
            if runs and runs[-1][1] == index - 1 and runs[-1][2] == owner:
                runs[-1][1] = index
            else:
                runs.append([index, index, owner])
        top: list[tuple[int, int, str, list]] = []
        virtio_children: dict[int, list] = {device: [] for device in self.spec.virtio_mem_regions}
        for first, last, owner in runs:
            start, end = first * self.block_size, (last + 1) * self.block_size - 1
            if owner == 'boot':
                top += _boot_ram_resources(start, end)
            elif owner[0] == 'virtio_mem':
                virtio_children[owner[1]].append((start, end, 'System RAM (virtio_mem)', []))
            elif owner[0] == 'kmem':  # dax/kmem claims the dax device's range: dax<n>.0 / System RAM (kmem)
                top.append((start, end, f'dax{owner[1]}.0', [(start, end, 'System RAM (kmem)', [])]))
            else:
                top.append((start, end, 'System RAM', []))
        for device, region in self.spec.virtio_mem_regions.items():
            top.append((region.start * self.block_size, region.stop * self.block_size - 1,
                        f'virtio{device}', virtio_children[device]))
        lines: list[str] = []
        _render_resources(sorted(top), 0, lines)
        return ''.join(lines)

    def boot_params_e820(self) -> tuple[bytes, bytes]:
        """The boot E820 table as struct boot_params (4096 bytes) and the SETUP_E820_EXT data
        for the entries that do not fit: the boot blocks as the firmware reported them."""
        boot = sorted(index for index, block in self.blocks.items() if block.boot)
        entries: list[tuple[int, int, int]] = []
        runs: list[list[int]] = []
        for index in boot:
            if runs and runs[-1][1] == index - 1:
                runs[-1][1] = index
            else:
                runs.append([index, index])
        for first, last in runs:
            start, end = first * self.block_size, (last + 1) * self.block_size - 1
            entries += [(low, high - low + 1, kind) for low, high, kind in _boot_e820_entries(start, end)]
        if any(first == 0 for first, _ in runs):
            entries.append((0xfffc0000, 0x40000, E820_RESERVED))
        entries.sort()
        table = entries[:self.spec.e820_table_entries]
        data = bytearray(4096)
        data[E820_ENTRIES_OFFSET] = len(table)
        for number, entry in enumerate(table):
            E820_ENTRY.pack_into(data, E820_TABLE_OFFSET + number * E820_ENTRY.size, *entry)
        extension = b''.join(E820_ENTRY.pack(*entry) for entry in entries[len(table):])
        return bytes(data), extension

    @staticmethod
    def _resource_owner(block: Block):
        """Which resource a block's memory sits in; blocks merge into one range per owner."""
        if block.boot:
            return 'boot'
        return block.group or ('hotplug', block.index)

    # --- sysfs writes (called from FUSE worker threads) --------------------------------------

    def write_state(self, index: int, text: str, caller: Caller) -> None:
        """state_store(): writing the state a block is already in is EINVAL."""
        online_type = sysfs_value(text)
        if online_type not in STATE_VALUES:
            raise os_error(errno.EINVAL)
        with self.lock:
            self._lock_device_hotplug(caller)
            try:
                block = self._present(index)
                if online_type == 'offline':
                    changed = self._device_offline(block, caller)
                else:
                    changed = self._device_online(block, online_type)
            finally:
                self._unlock_device_hotplug()
        if not changed:
            raise os_error(errno.EINVAL)

    def write_online(self, index: int, text: str, caller: Caller) -> None:
        """online_store(): 1/0 (kstrtobool); asking for the current state succeeds."""
        online = kstrtobool(text)
        with self.lock:
            self._lock_device_hotplug(caller)
            try:
                block = self._present(index)
                if online:
                    self._device_online(block, 'online')
                else:
                    self._device_offline(block, caller)
            finally:
                self._unlock_device_hotplug()

    def write_auto_online_blocks(self, text: str) -> None:
        value = sysfs_value(text)
        if value not in AUTO_ONLINE_VALUES:
            raise os_error(errno.EINVAL)
        with self.lock:
            self.auto_online_blocks = value

    def write_online_policy(self, text: str) -> None:
        value = sysfs_value(text)
        if value not in ONLINE_POLICIES:
            raise os_error(errno.EINVAL)
        with self.lock:
            self.online_policy = value

    def write_auto_movable_ratio(self, text: str) -> None:
        value = kstrtouint(text)
        with self.lock:
            self.auto_movable_ratio = value

    def write_auto_movable_numa_aware(self, text: str) -> None:
        value = kstrtobool(text)
        with self.lock:
            self.auto_movable_numa_aware = value

    def synthesize_uevent(self, index: int | None, text: str) -> None:
        """uevent_store(): `echo ACTION > uevent` replays an event (udevadm trigger does that).

        The memory subsystem's root device has no bus, so its events are filtered out.
        """
        action = sysfs_value(text)
        if action not in UEVENT_ACTIONS:
            raise os_error(errno.EINVAL)
        with self.lock:
            if index is not None:
                self._present(index)
                self._uevent(action, index, SYNTH_UUID='0')

    def record_write(self, path: str, data: bytes, error: int, pid: int, started: float) -> None:
        """Log one write(2) to the fake sysfs: errno 0 for success, monotonic start and end."""
        match = _BLOCK_ATTRIBUTE.fullmatch(path)
        with self.lock:
            self._writes.append({
                'path': path,
                'block': int(match[1]) if match else None,
                'attribute': path.rsplit('/', 1)[-1],
                'value': data.decode(errors='replace'),
                'errno': error,
                'pid': pid,
                'start': started,
                'end': time.monotonic(),
            })

    # --- control requests (from the test) ----------------------------------------------------

    def set_offline_behaviour(self, index: int, behaviour: OfflineBehaviour) -> None:
        """Takes effect at once, also on an offline that is hanging right now."""
        behaviour = normalise_offline_behaviour(behaviour)
        with self.lock:
            self._known(index).offline_behaviour = behaviour
            self.changed.notify_all()

    def hot_add(self, indexes, node: int = 0, group: Group | None = None,
                offline_behaviour: OfflineBehaviour = 'ok') -> None:
        """add_memory(): `add` uevents, then onlining if auto_online_blocks says so.

        A DIMM (or group-less memory) is added in one call, so all `add`s precede the
        `online`s; virtio-mem adds one memory block per call.
        """
        indexes = sorted(indexes)
        behaviour = normalise_offline_behaviour(offline_behaviour)
        if not indexes:
            raise FakeKernelError('hot_add needs at least one block')
        with self.lock:
            for index in indexes:
                if index in self.blocks:
                    raise FakeKernelError(f'block {index} is already present')
                check_block_placement(self.spec, index, node, group)
            per_call = [[index] for index in indexes] if group and group[0] == 'virtio_mem' else [indexes]
            for call in per_call:
                for index in call:
                    self.blocks[index] = Block(index, node, 'offline', None, False, group, behaviour)
                    self._stats = None
                    self._uevent('add', index)
                if self.auto_online_blocks != 'offline':
                    for index in call:
                        self._device_online(self.blocks[index], self.auto_online_blocks)

    def hot_remove(self, indexes, force_offline: bool = False) -> None:
        """remove_memory(): only offline blocks go, unless force_offline offlines them first
        the way virtio-mem's offline_and_remove_memory() does (offline, then remove uevents)."""
        with self.lock:
            blocks = [self._known(index) for index in sorted(indexes)]
            for block in blocks:
                if block.state == 'going-offline':
                    raise FakeKernelError(f'block {block.index} is being offlined')
                if block.state == 'online' and (not force_offline or block.zone == 'none'):
                    raise FakeKernelError(f'block {block.index} is online')
            for block in blocks:
                if block.state == 'online':
                    self._finish_offline(block)
            for block in blocks:
                del self.blocks[block.index]
                self._stats = None
                self._uevent('remove', block.index)

    def set_memory_used(self, used_bytes: int) -> None:
        """Memory in use; MemAvailable is what the online memory leaves of it."""
        if used_bytes < 0:
            raise FakeKernelError('used memory cannot be negative')
        with self.lock:
            self.mem_used = used_bytes

    def set_crash(self, loaded: bool | None = None, crash_hotplug: int | None = None) -> None:
        """Change kexec_crash_loaded and the value of crash_hotplug (None leaves one as is)."""
        with self.lock:
            if crash_hotplug is not None:
                if self.crash_hotplug is None:
                    raise FakeKernelError('this kernel has no crash_hotplug file (see TreeSpec)')
                if crash_hotplug not in (0, 1):
                    raise FakeKernelError('crash_hotplug is 0 or 1')
                self.crash_hotplug = crash_hotplug
            if loaded is not None:
                self.kexec_crash_loaded = bool(loaded)

    def uevents(self) -> list[dict[str, str]]:
        with self.lock:
            return [dict(event) for event in self._uevents]

    def writes(self) -> list[dict]:
        with self.lock:
            return [dict(record) for record in self._writes]

    def block(self, index: int) -> dict:
        with self.lock:
            block = self._known(index)
            return {
                'index': block.index, 'state': block.state, 'zone': block.zone, 'node': block.node,
                'boot': block.boot, 'group': block.group, 'offline_behaviour': block.offline_behaviour,
            }

    def release_waiters(self) -> None:
        """End every waiting write with EINTR, for shutting down."""
        with self.lock:
            self._released = True
            self.changed.notify_all()

    # --- the kernel's internals (self.lock held) ---------------------------------------------

    def _present(self, index: int) -> Block:
        """A block a sysfs file refers to; gone means ENODEV, as kernfs says to open files."""
        block = self.blocks.get(index)
        if block is None:
            raise os_error(errno.ENODEV)
        return block

    def _known(self, index: int) -> Block:
        block = self.blocks.get(index)
        if block is None:
            raise FakeKernelError(f'block {index} is not present')
        return block

    def _uevent(self, action: str, index: int, **extra: str) -> None:
        event = {
            'ACTION': action, 'DEVPATH': f'{MEMORY_DEVPATH}/memory{index}', 'SUBSYSTEM': 'memory',
            **extra, 'SEQNUM': str(len(self._uevents) + 1),
        }
        self._uevents.append(event)
        if self._uevent_sink is not None:
            self._uevent_sink(dict(event))

    def _lock_device_hotplug(self, caller: Caller) -> None:
        """lock_device_hotplug_sysfs(): the write restarts until the lock is free, whatever
        signal handlers run meanwhile; only a fatal signal ends the wait."""
        while self._hotplug_lock_held:
            if self._released or caller.fatally_signalled():
                raise os_error(errno.EINTR)
            self.changed.wait(POLL_SECONDS)
        self._hotplug_lock_held = True

    def _unlock_device_hotplug(self) -> None:
        self._hotplug_lock_held = False
        self.changed.notify_all()

    def _device_online(self, block: Block, online_type: str) -> bool:
        """Online an offline block; False if it was not offline (device_online() returns 1)."""
        if block.state != 'offline':
            return False
        block.zone = self._zone_for(block, online_type)
        block.state = 'online'
        self._stats = None
        self._uevent('online', block.index)
        return True

    def _device_offline(self, block: Block, caller: Caller) -> bool:
        """Offline an online block; False if it already was offline."""
        if block.state == 'offline':
            return False
        if block.zone == 'none':
            raise os_error(errno.EINVAL)
        block.state = 'going-offline'
        try:
            self._migrate_pages_away(block, caller)
        except OSError:
            block.state = 'online'
            raise
        self._finish_offline(block)
        return True

    def _finish_offline(self, block: Block) -> None:
        block.state = 'offline'
        block.zone = None
        self._stats = None
        self._uevent('offline', block.index)

    def _migrate_pages_away(self, block: Block, caller: Caller) -> None:
        """offline_pages() as the block's behaviour dictates; `hang` is its endless migration
        retry, which only a signal to the writer (or a new behaviour) ends."""
        while True:
            behaviour = block.offline_behaviour
            if behaviour == 'ok':
                return
            if behaviour in ('hang', 'stuck'):
                # `stuck` answers no signal: the FUSE request stays unanswered, and the kernel keeps
                # even a SIGKILLed writer waiting for it (D state), as a real offline can get stuck.
                if self._released or (behaviour == 'hang' and caller.interrupted()):
                    raise os_error(errno.EINTR)
                self.changed.wait(POLL_SECONDS)
                continue
            if isinstance(behaviour, int):
                raise os_error(behaviour)
            if behaviour != 'busy':
                block.offline_behaviour = normalise_offline_behaviour(('busy', behaviour[1] - 1))
            raise os_error(errno.EBUSY)

    def _zone_stats(self) -> _ZoneStats:
        if self._stats is None:
            stats = _ZoneStats()
            for block in self.blocks.values():
                if block.group is not None:
                    stats.groups.setdefault(block.group, [block.node, 0])[1] += 1
                if block.state == 'offline':
                    continue
                # A block across zones (x86 block 0: DMA and DMA32) widens both spans.
                for zone in ('DMA', 'DMA32') if block.zone == 'none' else (block.zone,):
                    first, last = stats.spans.get((block.node, zone), (block.index, block.index))
                    stats.spans[block.node, zone] = (min(first, block.index), max(last, block.index))
                movable = block.zone == 'Movable'
                stats.online[block.node, block.group, movable, block.boot and not movable] += 1
            self._stats = stats
        return self._stats

    def _zone_counters(self, stats: _ZoneStats) -> ZoneCounters:
        """The kernel's auto-movable statistics (vmem_agent.core.zonerule) for the present blocks."""
        key = (self.auto_movable_ratio, self.auto_movable_numa_aware)
        counters = stats.counters.get(key)
        if counters is None:
            counters = ZoneCounters(*key)
            for group, (node, present) in stats.groups.items():
                counters.add_group(group, group[0] in DYNAMIC_GROUP_KINDS, node, present * self.pages_per_block)
            for (node, group, movable, early), blocks in stats.online.items():
                counters.account(node, group, movable, early, blocks * self.pages_per_block)
            stats.counters[key] = counters
        return counters

    def _zone_for(self, block: Block, online_type: str) -> str:
        """zone_for_pfn_range(): the zone onlining with this type would pick."""
        stats = self._zone_stats()
        if online_type == 'online_kernel':
            return self._default_kernel_zone(stats, block)
        if online_type == 'online_movable':
            return 'Movable'
        if self.online_policy == 'auto-movable':
            return self._auto_movable_zone(stats, block)
        return self._default_zone(stats, block)

    @staticmethod
    def _intersects(stats: _ZoneStats, block: Block, zone: str) -> bool:
        span = stats.spans.get((block.node, zone))
        return span is not None and span[0] <= block.index <= span[1]

    def _default_kernel_zone(self, stats: _ZoneStats, block: Block) -> str:
        """default_kernel_zone_for_pfn(): a DMA zone the block lies in, else Normal."""
        for zone in ('DMA', 'DMA32'):
            if self._intersects(stats, block, zone):
                return zone
        return 'Normal'

    def _default_zone(self, stats: _ZoneStats, block: Block) -> str:
        """default_zone_for_pfn() (contig-zones): join the one zone whose span the block lies
        in; if it lies in both or neither, the kernel zone."""
        kernel_zone = self._default_kernel_zone(stats, block)
        in_kernel = self._intersects(stats, block, kernel_zone)
        in_movable = self._intersects(stats, block, 'Movable')
        if in_kernel != in_movable:
            return kernel_zone if in_kernel else 'Movable'
        return kernel_zone

    def _auto_movable_zone(self, stats: _ZoneStats, block: Block) -> str:
        """auto_movable_zone_for_pfn(): Movable while the ratio to early kernel memory allows it,
        with the kernel's memory groups (the one implementation in vmem_agent.core.zonerule);
        a virtio-mem unit is one memory block here."""
        decision = self._zone_counters(stats).decide(block.node, block.group, self.pages_per_block)
        return 'Movable' if decision.movable else self._default_kernel_zone(stats, block)


def _boot_e820_entries(start: int, end: int) -> list[tuple[int, int, int]]:
    """(start, end, E820 type) of boot RAM as SeaBIOS reports it: the range from address 0
    loses the EBDA and the BIOS area of its first MiB and the 128 KiB below the PCI hole."""
    if start or not 0x100000 + _SEABIOS_RESERVED < end < _PCI_HOLE_END:
        return [(start, end, E820_TYPE_RAM)]
    ram_end = end - _SEABIOS_RESERVED
    return [(0, 0x9fbff, E820_TYPE_RAM), (0x9fc00, 0x9ffff, E820_RESERVED), (0xf0000, 0xfffff, E820_RESERVED),
            (0x100000, ram_end, E820_TYPE_RAM), (ram_end + 1, end, E820_RESERVED)]


def _boot_ram_resources(start: int, end: int) -> list[tuple[int, int, str, list]]:
    """Boot RAM as e820 reports it. The range from address 0 loses the BIOS areas of its
    first MiB and the 128 KiB SeaBIOS keeps below the PCI hole, and holds the kernel image."""
    if start or not 0x100000 + _SEABIOS_RESERVED < end < _PCI_HOLE_END:
        return [(start, end, 'System RAM', [])]
    ram_end = end - _SEABIOS_RESERVED
    image = [resource for resource in _KERNEL_IMAGE if resource[1] <= ram_end]
    return [*_LOW_MEGABYTE, (0x100000, ram_end, 'System RAM', image),
            (ram_end + 1, end, 'Reserved', []), (end + 1, _PCI_HOLE_END, 'PCI Bus 0000:00', []),
            *_ABOVE_PCI_HOLE]


def _render_resources(resources: list, depth: int, lines: list[str]) -> None:
    for start, end, name, children in resources:
        lines.append(f'{"  " * depth}{start:08x}-{end:08x} : {name}\n')
        _render_resources(sorted(children), depth + 1, lines)
