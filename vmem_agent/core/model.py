"""Frozen snapshots of the kernel's memory blocks, and pure code over them.

Decision code (ranges, policy, planning) works on these values only, never on sysfs,
so it can be tested with plain constructors and property tests.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from itertools import groupby
from operator import itemgetter
from typing import Callable, Iterable, NamedTuple, Sequence

ONLINE = "online"
OFFLINE = "offline"
GOING_OFFLINE = "going-offline"

ZONE_NONE = "none"  # valid_zones of an online block that spans zones or nodes: cannot be offlined
ZONE_MOVABLE = "Movable"
ZONE_NORMAL = "Normal"

ORIGIN_BOOT = "boot"  # present at boot, not part of any hot-pluggable device
ORIGIN_DIMM = "dimm"  # an ACPI memory device (PNP0C80): one pc-dimm, all or nothing
ORIGIN_VIRTIO_MEM = "virtio-mem"  # driver-managed memory of a virtio-mem device
ORIGIN_KMEM = "kmem"  # dax/kmem: a device-dax range added as System RAM (kmem)
# Not in the boot memory map, but no known device claims it: origin unknown, so it is
# never offlined automatically (only when named with --force).
ORIGIN_HOTPLUG = "hotplug"

# What a DIMM's blocks add up to: an ACPI DIMM can be ejected only when all of it is offline.
DEVICE_ONLINE = "online"
DEVICE_PARTLY_OFFLINE = "partly-offline"
DEVICE_OFFLINE = "offline"


class MemoryBlock(NamedTuple):
    """One memoryN directory as read at one moment.

    A NamedTuple rather than a frozen dataclass: a scan builds tens of thousands of
    these, and a tuple is several times cheaper to construct while just as immutable.
    """

    index: int
    start: int
    size: int
    state: str
    # valid_zones split in kernel order: the current zone when online, the allowed zones
    # (default first) when offline, ("none",) when the block cannot be offlined;
    # None when the kernel has no valid_zones (zones unsupported).
    zones: tuple[str, ...] | None
    node: int | None = None
    phys_device: int | None = None
    removable: bool | None = None
    origin: str = ORIGIN_BOOT
    # The memory group the block belongs to (one DIMM, one virtio-mem device), or None.
    group: str | None = None

    @property
    def end(self) -> int:
        """Last byte address, inclusive, as lsmem prints it."""
        return self.start + self.size - 1

    @property
    def online(self) -> bool:
        return self.state == ONLINE

    @property
    def zone(self) -> str | None:
        """The zone of an online block (None when offline or unknown)."""
        if self.state != ONLINE or not self.zones:
            return None
        return self.zones[0]

    @property
    def hotplugged(self) -> bool:
        """Not boot memory: a device's, or of unknown origin."""
        return self.origin != ORIGIN_BOOT

    @property
    def online_memory(self) -> bool:
        """Online, or going offline: until the offline finishes the kernel still has the memory."""
        return self.state == ONLINE or self.state == GOING_OFFLINE


@dataclass(frozen=True, slots=True)
class KernelParams:
    """memory_hotplug module parameters; None where the kernel does not expose one."""

    online_policy: str | None = None
    auto_movable_ratio: int | None = None
    auto_movable_numa_aware: bool | None = None
    memmap_on_memory: bool | None = None


@dataclass(frozen=True, slots=True)
class MemoryFigures:
    """MemTotal and MemAvailable from /proc/meminfo, for the offline safety floor."""

    total_bytes: int
    available_bytes: int


@dataclass(frozen=True, slots=True)
class MemoryDevice:
    """A hot-pluggable memory device: the unit that one memory group of blocks belongs to."""

    group: str  # as MemoryBlock.group: acpi:PNP0C80:03, virtio-mem:virtio2, kmem:dax0.0
    kind: str  # ORIGIN_DIMM, ORIGIN_VIRTIO_MEM or ORIGIN_KMEM
    name: str  # the kernel's name: ACPI device PNP0C80:03, virtio device virtio2, dax device dax0.0
    # A DIMM's ACPI _UID ("0x03"); QEMU sets it to the DIMM's slot, which `slot` holds.
    uid: str | None = None
    slot: int | None = None


@dataclass(frozen=True, slots=True)
class MemoryState:
    """Everything the agent knows about the kernel's memory blocks at one moment."""

    block_size: int
    blocks: tuple[MemoryBlock, ...]
    auto_online_blocks: str | None = None
    crash_hotplug: bool | None = None
    kexec_crash_loaded: bool | None = None
    params: KernelParams = field(default_factory=KernelParams)
    devices: tuple[MemoryDevice, ...] = ()
    zones_supported: bool = True
    nodes_supported: bool = True
    warnings: tuple[str, ...] = ()

    @property
    def online_bytes(self) -> int:
        return self.block_size * sum(1 for b in self.blocks if b.state == ONLINE)

    @property
    def offline_bytes(self) -> int:
        """Everything not online, as lsmem counts it (going-offline included)."""
        return self.block_size * len(self.blocks) - self.online_bytes

    @property
    def online_memory_bytes(self) -> int:
        """What targets are measured against: online blocks and those still going offline.

        lsmem (and `online_bytes`) count a going-offline block as offline, but until its
        offline finishes the kernel still has its memory, and if the offline fails it stays.
        """
        return self.block_size * sum(1 for b in self.blocks if b.state == ONLINE or b.state == GOING_OFFLINE)

    def online_bytes_by_zone(self) -> dict[str, int]:
        counts = Counter(b.zone or "unknown" for b in self.blocks if b.state == ONLINE)
        return {zone: n * self.block_size for zone, n in sorted(counts.items())}

    def online_bytes_by_node(self) -> dict[int | None, int]:
        counts = Counter(b.node for b in self.blocks if b.state == ONLINE)
        return {node: n * self.block_size for node, n in sorted(counts.items(), key=lambda kv: (kv[0] is None, kv[0] or 0))}

    def block(self, index: int) -> MemoryBlock | None:
        for candidate in self.blocks:
            if candidate.index == index:
                return candidate
        return None

    def device(self, group: str) -> MemoryDevice:
        """The device of a memory group; one named after the group when the snapshot has none."""
        for device in self.devices:
            if device.group == group:
                return device
        kind, _, name = group.partition(":")
        return MemoryDevice(group, _KIND_OF_GROUP_PREFIX.get(kind, kind), name or group)


_KIND_OF_GROUP_PREFIX = {"acpi": ORIGIN_DIMM, "virtio-mem": ORIGIN_VIRTIO_MEM, "kmem": ORIGIN_KMEM}


@dataclass(frozen=True, slots=True)
class DeviceState:
    """One device's blocks as a snapshot (or a plan) leaves them: what a host-side tool needs to unplug it."""

    device: MemoryDevice
    first_block: int
    last_block: int
    start: int
    end: int  # inclusive
    present_bytes: int
    online_bytes: int  # going-offline blocks included: their memory is still online
    state: str  # DEVICE_ONLINE, DEVICE_PARTLY_OFFLINE or DEVICE_OFFLINE

    @property
    def offline_bytes(self) -> int:
        return self.present_bytes - self.online_bytes

    @property
    def ready_to_eject(self) -> bool:
        """A DIMM whose every block is offline: the host's unplug (ACPI eject) can take it at once."""
        return self.device.kind == ORIGIN_DIMM and self.state == DEVICE_OFFLINE

    def to_json(self) -> dict:
        """What a host-side tool needs to unplug the device (status and run results alike)."""
        device = self.device
        return {
            "group": device.group, "kind": device.kind, "name": device.name, "uid": device.uid, "slot": device.slot,
            "start": self.start, "end": self.end, "size": self.present_bytes,
            "first_block": self.first_block, "last_block": self.last_block,
            "online_bytes": self.online_bytes, "offline_bytes": self.offline_bytes,
            "state": self.state, "ready_to_eject": self.ready_to_eject,
        }


def device_states(state: MemoryState, planned: dict[int, str] | None = None) -> list[DeviceState]:
    """Every device with present blocks, in address order; `planned` overrides block states (a plan's effect).

    Blocks are grouped and their states counted run by run in C (groupby, Counter):
    status builds this for tens of thousands of blocks.
    """
    spans: dict[str, list] = {}  # group -> [first block, last block, present, online]
    for group, run in groupby(state.blocks, key=_GROUP):
        if group is None:
            continue
        blocks = list(run)
        if planned:
            states = Counter(planned.get(block.index, block.state) for block in blocks)
        else:
            states = Counter(map(_STATE, blocks))
        online = states[ONLINE] + states[GOING_OFFLINE]
        span = spans.get(group)
        if span is None:
            spans[group] = [blocks[0], blocks[-1], len(blocks), online]
        else:
            span[1] = blocks[-1]
            span[2] += len(blocks)
            span[3] += online
    result = []
    for group, (first, last, present, online) in spans.items():
        kind = DEVICE_ONLINE if online == present else (DEVICE_OFFLINE if not online else DEVICE_PARTLY_OFFLINE)
        result.append(DeviceState(state.device(group), first.index, last.index, first.start, last.end,
                                  present * state.block_size, online * state.block_size, kind))
    return sorted(result, key=lambda device: device.start)


_GROUP = itemgetter(9)  # MemoryBlock.group
_STATE = itemgetter(3)  # MemoryBlock.state


@dataclass(frozen=True, slots=True)
class BlockRange:
    """Contiguous blocks that look alike: one row of the status table."""

    first: MemoryBlock
    last: MemoryBlock
    count: int

    @property
    def start(self) -> int:
        return self.first.start

    @property
    def end(self) -> int:
        return self.last.end

    @property
    def size(self) -> int:
        return self.last.start + self.last.size - self.first.start

    @property
    def block_label(self) -> str:
        if self.count == 1:
            return str(self.first.index)
        return f"{self.first.index}-{self.last.index}"


def lsmem_key(block: MemoryBlock) -> tuple:
    """What lsmem compares to merge blocks when showing STATE, NODE and ZONES."""
    return (block.state, block.node, block.zones)


def origin_key(block: MemoryBlock) -> tuple:
    """lsmem's key plus where the memory came from (boot, which DIMM or virtio-mem device)."""
    return (block.state, block.node, block.zones, block.origin, block.group)


def group_ranges(
    blocks: Sequence[MemoryBlock], merge: bool = True, key: Callable[[MemoryBlock], tuple] = lsmem_key
) -> list[BlockRange]:
    """Merge neighbouring blocks whose `key` is equal (lsmem's rule by default).

    Blocks must be sorted by index; a gap in indexes always starts a new range.
    """
    ranges: list[BlockRange] = []
    first = last = None
    count = 0
    for block in blocks:
        if (
            merge
            and last is not None
            and block.index == last.index + 1
            and key(block) == key(last)
        ):
            last = block
            count += 1
            continue
        if first is not None:
            ranges.append(BlockRange(first, last, count))
        first = last = block
        count = 1
    if first is not None:
        ranges.append(BlockRange(first, last, count))
    return ranges


def merge_ranges(ranges: Iterable[tuple[int, int]]) -> tuple[tuple[int, int], ...]:
    """Inclusive (low, high) ranges, sorted and merged where they overlap or touch."""
    merged: list[tuple[int, int]] = []
    for low, high in sorted(ranges):
        if merged and low <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(merged[-1][1], high))
        else:
            merged.append((low, high))
    return tuple(merged)


def format_block_list(indexes: Iterable[int]) -> str:
    """`[1, 2, 3, 7]` -> `1-3,7`: how messages name many blocks at once."""
    parts: list[str] = []
    run_start = previous = None
    for index in sorted(indexes):
        if previous is not None and index == previous + 1:
            previous = index
            continue
        if run_start is not None:
            parts.append(str(run_start) if run_start == previous else f"{run_start}-{previous}")
        run_start = previous = index
    if run_start is not None:
        parts.append(str(run_start) if run_start == previous else f"{run_start}-{previous}")
    return ",".join(parts)
