"""What a fake machine looks like: its memory blocks and the kernel settings that shape them."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, Union

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB
PAGE_SIZE = 4096

ZONES = ('DMA', 'DMA32', 'Normal', 'Movable', 'none')
GROUP_KINDS = ('dimm', 'virtio_mem', 'kmem')
DYNAMIC_GROUP_KINDS = ('virtio_mem',)
ONLINE_TYPES = ('online', 'online_kernel', 'online_movable')
AUTO_ONLINE_VALUES = ('offline',) + ONLINE_TYPES
ONLINE_POLICIES = ('contig-zones', 'auto-movable')

# ('dimm', n): ACPI DIMM n, a static memory group (all Movable or all kernel).
# ('virtio_mem', n): virtio-mem device n, a dynamic memory group.
# ('kmem', n): device-dax dax{n}.0 onlined by dax/kmem, a static memory group.
Group = tuple[str, int]
# 'ok', 'busy' (EBUSY every time), ('busy', k) (EBUSY k times, then ok), 'hang' (until the
# writer gets a signal), 'stuck' (not even SIGKILL ends it: the writer stays in D state until
# the behaviour changes) or an errno the offline fails with.
OfflineBehaviour = Union[Literal['ok', 'busy', 'hang', 'stuck'], tuple[Literal['busy'], int], int]

# QEMU's pc machine keeps RAM below 3.5 GiB; beyond that it puts 3 GiB below the PCI hole and
# the rest from 4 GiB up. Its hotplug region starts after that, aligned to 1 GiB.
_QEMU_LOWMEM_LIMIT = 3 * GiB + GiB // 2
_QEMU_LOWMEM_SPLIT = 3 * GiB
_FOUR_GIB = 4 * GiB
_DMA_END = 16 * MiB


def normalise_offline_behaviour(behaviour: OfflineBehaviour) -> OfflineBehaviour:
    """Check an offline behaviour; ('busy', 0) means no failures left, which is 'ok'."""
    if behaviour in ('ok', 'busy', 'hang', 'stuck'):
        return behaviour
    if isinstance(behaviour, tuple) and len(behaviour) == 2 and behaviour[0] == 'busy':
        count = behaviour[1]
        if isinstance(count, int) and count >= 0:
            return ('busy', count) if count else 'ok'
    if isinstance(behaviour, int) and not isinstance(behaviour, bool) and behaviour > 0:
        return behaviour
    raise ValueError(f'offline behaviour must be ok, busy, (busy, k), hang, stuck or an errno: {behaviour!r}')


def check_group(group: Group | None) -> None:
    if group is None:
        return
    if not (isinstance(group, tuple) and len(group) == 2 and group[0] in GROUP_KINDS
            and isinstance(group[1], int) and group[1] >= 0):
        raise ValueError(f'group must be None, (dimm, n), (virtio_mem, n) or (kmem, n): {group!r}')


@dataclass(frozen=True)
class BlockSpec:
    """One memory block present at start; an online block without a zone is in Normal."""

    index: int
    node: int = 0
    state: Literal['online', 'offline'] = 'online'
    zone: str | None = None
    boot: bool = True
    group: Group | None = None
    offline: OfflineBehaviour = 'ok'

    def __post_init__(self) -> None:
        if self.index < 0:
            raise ValueError(f'block index must be >= 0: {self.index}')
        if self.state == 'online':
            object.__setattr__(self, 'zone', self.zone or 'Normal')
            if self.zone not in ZONES:
                raise ValueError(f'block {self.index}: zone must be one of {ZONES}: {self.zone!r}')
        elif self.state == 'offline':
            if self.zone is not None:
                raise ValueError(f'block {self.index}: an offline block has no zone')
        else:
            raise ValueError(f'block {self.index}: state must be online or offline: {self.state!r}')
        check_group(self.group)
        if self.boot and self.group is not None:
            raise ValueError(f'block {self.index}: boot memory belongs to no memory group')
        object.__setattr__(self, 'offline', normalise_offline_behaviour(self.offline))


@dataclass(frozen=True)
class TreeSpec:
    """A machine: its blocks, NUMA nodes, virtio-mem device regions and hotplug settings."""

    blocks: Sequence[BlockSpec] = ()
    block_size: int = 128 * MiB
    nodes: int = 1
    # virtio-mem device number N (named virtioN in /proc/iomem) -> the block indexes its
    # device region spans; by default from its first to its last block in `blocks`.
    virtio_mem_regions: Mapping[int, range] = field(default_factory=dict)
    auto_online_blocks: str = 'offline'
    online_policy: str = 'contig-zones'
    auto_movable_ratio: int = 301
    auto_movable_numa_aware: bool = True
    memmap_on_memory: bool = False
    crash_hotplug: int | None = None  # None: the kernel has no crash_hotplug file
    kexec_crash_loaded: bool = False
    mem_used_bytes: int | None = None  # None: a quarter of the memory online at start
    # Memory the kernel keeps for itself, which MemTotal leaves out; None: a sixteenth of the
    # memory online at start (a 2 GiB QEMU guest shows a MemTotal of about 1.86 GiB).
    kernel_reserved_bytes: int | None = None
    # ACPI DIMM slots (QEMU -m ...,slots=N): each is a PNP0C80 device, empty or not.
    dimm_slots: int = 0
    # x86's boot E820 table in /sys/kernel/boot_params (False: a machine without one); entries
    # beyond e820_table_entries (struct boot_params holds 128) go to a SETUP_E820_EXT node.
    boot_e820: bool = True
    e820_table_entries: int = 128

    def __post_init__(self) -> None:
        blocks = tuple(sorted(self.blocks, key=lambda block: block.index))
        object.__setattr__(self, 'blocks', blocks)
        regions = dict(self.virtio_mem_regions)
        for block in blocks:
            if block.group is not None and block.group[0] == 'virtio_mem' and block.group[1] not in regions:
                device_blocks = [other.index for other in blocks if other.group == block.group]
                regions[block.group[1]] = range(device_blocks[0], device_blocks[-1] + 1)
        object.__setattr__(self, 'virtio_mem_regions', regions)
        if self.block_size < PAGE_SIZE or self.block_size & (self.block_size - 1):
            raise ValueError(f'block_size must be a power of two >= {PAGE_SIZE}: {self.block_size}')
        if self.nodes < 1:
            raise ValueError('a machine has at least one node')
        indexes = [block.index for block in blocks]
        if len(set(indexes)) != len(indexes):
            raise ValueError('block indexes must be unique')
        for block in blocks:
            check_block_placement(self, block.index, block.node, block.group)
        if self.auto_online_blocks not in AUTO_ONLINE_VALUES:
            raise ValueError(f'auto_online_blocks must be one of {AUTO_ONLINE_VALUES}')
        if self.online_policy not in ONLINE_POLICIES:
            raise ValueError(f'online_policy must be one of {ONLINE_POLICIES}')
        if self.auto_movable_ratio < 0:
            raise ValueError('auto_movable_ratio must be >= 0')
        if self.crash_hotplug not in (None, 0, 1):
            raise ValueError('crash_hotplug must be None, 0 or 1')
        for name in ('mem_used_bytes', 'kernel_reserved_bytes'):
            if (getattr(self, name) or 0) < 0:
                raise ValueError(f'{name} must be >= 0')
        if self.dimm_slots < 0:
            raise ValueError('dimm_slots must be >= 0')
        if not 0 <= self.e820_table_entries <= 128:
            raise ValueError('e820_table_entries must be 0 to 128')

    @property
    def initial_mem_used_bytes(self) -> int:
        if self.mem_used_bytes is not None:
            return self.mem_used_bytes
        return self._initially_online_bytes() // 4

    @property
    def reserved_bytes(self) -> int:
        if self.kernel_reserved_bytes is not None:
            return self.kernel_reserved_bytes
        return self._initially_online_bytes() // 16

    def _initially_online_bytes(self) -> int:
        return sum(self.block_size for block in self.blocks if block.state == 'online')

    @classmethod
    def vm(
        cls,
        boot_gib: float = 2,
        dimm_gib: Sequence[float] = (),
        virtio_mem_gib: float = 0,
        virtio_mem_plugged_gib: float = 0,
        hotplug_zone: str | None = None,
        nodes: int = 1,
        dimm_slots: int = 8,
        block_size: int = 128 * MiB,
        **settings,
    ) -> TreeSpec:
        """A QEMU x86 pc guest with its boot RAM split around the PCI hole like QEMU does.

        DIMMs (one ('dimm', i) group each, on node i % nodes) and then one virtio-mem device
        (group ('virtio_mem', 0), of which the first virtio_mem_plugged_gib are plugged) follow
        in QEMU's hotplug region. Hot-plugged memory present at start is offline, or online in
        hotplug_zone. Boot blocks are split evenly over the nodes; their kernel-zone blocks
        fail offlining with EBUSY, like kernel memory usually does. The machine has
        dimm_slots ACPI DIMM slots (at least one per DIMM).
        """
        def blocks_in(gib: float, what: str) -> int:
            size = round(gib * GiB)
            if size % block_size:
                raise ValueError(f'{what} ({gib} GiB) is not a multiple of the block size')
            return size // block_size

        boot_bytes = blocks_in(boot_gib, 'boot memory') * block_size
        below_4g = boot_bytes if boot_bytes < _QEMU_LOWMEM_LIMIT else _QEMU_LOWMEM_SPLIT
        above_4g = boot_bytes - below_4g
        boot_indexes = [*range(below_4g // block_size),
                        *range(_FOUR_GIB // block_size, (_FOUR_GIB + above_4g) // block_size)]
        blocks = []
        for position, index in enumerate(boot_indexes):
            zone = _boot_zone(index * block_size, block_size)
            blocks.append(BlockSpec(
                index, node=position * nodes // len(boot_indexes), zone=zone,
                offline='ok' if zone == 'Movable' else 'busy'))

        hotplug_state = 'offline' if hotplug_zone is None else 'online'
        next_index = _align_up(_FOUR_GIB + above_4g, GiB) // block_size
        for dimm, gib in enumerate(dimm_gib):
            count = blocks_in(gib, f'DIMM {dimm}')
            blocks += [BlockSpec(index, node=dimm % nodes, state=hotplug_state, zone=hotplug_zone,
                                 boot=False, group=('dimm', dimm))
                       for index in range(next_index, next_index + count)]
            next_index += count
        regions = {}
        if virtio_mem_gib:
            region = range(next_index, next_index + blocks_in(virtio_mem_gib, 'virtio-mem region'))
            plugged = blocks_in(virtio_mem_plugged_gib, 'plugged virtio-mem memory')
            if plugged > len(region):
                raise ValueError('more virtio-mem memory plugged than the device region holds')
            regions[0] = region
            blocks += [BlockSpec(index, state=hotplug_state, zone=hotplug_zone, boot=False,
                                 group=('virtio_mem', 0))
                       for index in region[:plugged]]
        return cls(blocks=blocks, block_size=block_size, nodes=nodes, virtio_mem_regions=regions,
                   dimm_slots=max(dimm_slots, len(dimm_gib)), **settings)


def check_block_placement(spec: TreeSpec, index: int, node: int, group: Group | None) -> None:
    """Reject a block on a node the machine lacks or outside its virtio-mem device region."""
    if not 0 <= node < spec.nodes:
        raise ValueError(f'block {index}: node {node} does not exist ({spec.nodes} nodes)')
    check_group(group)
    if group is not None and group[0] == 'virtio_mem':
        region = spec.virtio_mem_regions.get(group[1])
        if region is None or index not in region:
            raise ValueError(f'block {index}: outside the region of virtio-mem device {group[1]}')


def _boot_zone(start: int, size: int) -> str:
    """x86_64 zones: DMA below 16 MiB, DMA32 below 4 GiB, Normal above; a block across a
    zone boundary reads `none`."""
    end = start + size
    if end <= _DMA_END:
        return 'DMA'
    if start < _DMA_END:
        return 'none'
    if end <= _FOUR_GIB:
        return 'DMA32'
    return 'Normal' if start >= _FOUR_GIB else 'none'


def _align_up(value: int, alignment: int) -> int:
    return -(-value // alignment) * alignment

