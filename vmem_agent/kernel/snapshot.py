"""Build a frozen `MemoryState` from the kernel's files, through the gateway.

The hot loop makes two reads per block (`state`, `valid_zones`) with descriptor-relative
opens; nodes come from one listing per node directory, DIMM membership from the ACPI
devices' links, and the origin of each block is decided inside the scan (core.origins).

/sys/firmware/memmap is not read: it lists hot-added DIMMs as System RAM too (a
cold-plugged DIMM even comes first), so it adds nothing to the boot E820 table and the
ACPI links, which together already tell boot memory from DIMMs.
"""

from __future__ import annotations

from ..core.model import ORIGIN_DIMM, MemoryBlock, MemoryDevice, MemoryState
from ..core.origins import BOOT_ORIGIN, origin_classifier
from ..errors import BlockVanishedError, SysfsError, TreeContentError, UnsupportedSystemError
from .e820 import SETUP_E820_EXT, boot_ram_ranges, extension_ram_ranges, parse_setup_data_type
from .iomem import driver_regions, parse_iomem
from .sysfs import (
    ACPI_DEVICES_DIR, BOOT_PARAMS, BOOT_SETUP_DATA, MEMORY_DIR, NODE_DIR, PROC_FILE_LIMIT, PROC_IOMEM, ULONG_MAX, Sysfs,
    checked_flag, checked_number, checked_state, checked_zones, numbered, parse_int,
)

ACPI_MEMORY_DEVICE_PREFIX = "PNP0C80:"  # the ACPI memory device: one DIMM


def read_snapshot(sysfs: Sysfs, legacy: bool = False) -> MemoryState:
    """Read every block and the global attributes into one frozen `MemoryState`.

    `legacy` also reads `removable` and `phys_device`: two more files per block that
    modern kernels fill with constants, so plain scans skip them.
    """
    block_size = sysfs.block_size()
    indexes = sysfs.block_indexes()
    warnings: list[str] = []
    nodes_by_block, only_node = _node_map(sysfs)
    dimm_groups, devices = _acpi_memory_devices(sysfs)
    regions = _driver_regions(sysfs, warnings)
    devices.extend(MemoryDevice(group, origin, group.partition(":")[2]) for _, _, origin, group in regions)
    classify = origin_classifier(_boot_ram_ranges(sysfs), dimm_groups, regions, block_size)
    dir_fd = sysfs.open_dir(MEMORY_DIR)
    try:
        present = _optional_attributes(sysfs, dir_fd, indexes, legacy, warnings)
        blocks = _scan_blocks(sysfs, dir_fd, indexes, block_size, present, nodes_by_block, only_node, classify)
    finally:
        sysfs.close(dir_fd)
    if not blocks:
        raise UnsupportedSystemError(f"{sysfs.memory_dir}: no memory blocks found")
    return MemoryState(
        block_size=block_size,
        blocks=tuple(blocks),
        auto_online_blocks=sysfs.auto_online_blocks(),
        crash_hotplug=sysfs.crash_hotplug(),
        kexec_crash_loaded=sysfs.kexec_crash_loaded(),
        params=sysfs.kernel_params(),
        devices=tuple(dict.fromkeys(devices)),
        zones_supported="valid_zones" in present,
        nodes_supported=bool(nodes_by_block) or only_node is not None or "node" in present,
        warnings=tuple(warnings),
    )


def _optional_attributes(sysfs: Sysfs, dir_fd: int, indexes: list[int], legacy: bool, warnings: list[str]) -> set[str]:
    """Which optional per-block attributes exist, judged on the first block (as lsmem does)."""
    if not indexes:
        return set()
    names = set(sysfs.listdir_at(dir_fd, f"memory{indexes[0]}", block=indexes[0]))
    wanted = {"valid_zones": "zones unknown (kernel without CONFIG_MEMORY_HOTREMOVE?)"}
    if legacy:
        wanted.update(removable="removable unknown", phys_device="phys_device unknown")
    present = {name for name in wanted if name in names}
    for name, consequence in wanted.items():
        if name not in present:
            warnings.append(f"{sysfs.memory_dir}/memory{indexes[0]}/{name} is missing: {consequence}")
    if any(numbered(name, "node") is not None for name in names):
        present.add("node")
    return present


def _scan_blocks(sysfs: Sysfs, dir_fd, indexes, block_size, present, nodes_by_block, only_node, classify):
    """The hot loop: two reads per block, local names, no per-attribute objects.

    Only a handful of distinct `state` and `valid_zones` contents exist, so the raw
    bytes are decoded and split once each and looked up in a dict after that.
    """
    with_zones = "valid_zones" in present
    with_removable = "removable" in present
    with_phys_device = "phys_device" in present
    node_links = not nodes_by_block and only_node is None and "node" in present
    get_node = nodes_by_block.get
    decoded: dict[bytes, str] = {}
    split: dict[bytes, tuple[str, ...]] = {}
    read = sysfs.read_at
    new_tuple = tuple.__new__  # MemoryBlock without NamedTuple's _make/__new__ layers: the hot path
    blocks = []
    append = blocks.append
    for index in indexes:
        name = f"memory{index}/"
        try:
            raw_state = read(dir_fd, name + "state", index)
            state = decoded.get(raw_state)
            if state is None:
                state = decoded[raw_state] = checked_state(raw_state, f"{sysfs.memory_dir}/{name}state")
            zones = None
            if with_zones:
                raw_zones = read(dir_fd, name + "valid_zones", index)
                zones = split.get(raw_zones)
                if zones is None:
                    zones = split[raw_zones] = checked_zones(raw_zones, f"{sysfs.memory_dir}/{name}valid_zones")
            node = _node_from_links(sysfs, dir_fd, name, index) if node_links else get_node(index, only_node)
            phys_device = _number_at(sysfs, dir_fd, name + "phys_device", index) if with_phys_device else None
            removable = _flag_at(sysfs, dir_fd, name + "removable", index) if with_removable else None
        except BlockVanishedError as exc:
            if sysfs.exists(f"{MEMORY_DIR}/{name}"):  # the block is there, one of its files is not: no kernel's tree
                raise TreeContentError(exc.path, "is missing, while its memory block is present") from None
            continue  # hot-removed while we scanned: it is simply not present any more
        start = index * block_size
        origin, group = classify(index, start) if classify else BOOT_ORIGIN
        fields = (index, start, block_size, state, zones, node, phys_device, removable, origin, group)
        append(new_tuple(MemoryBlock, fields))
    return blocks


def _text_at(sysfs: Sysfs, dir_fd: int, name: str, block: int) -> str:
    return sysfs.read_at(dir_fd, name, block).decode("ascii", "replace").strip()


def _number_at(sysfs: Sysfs, dir_fd: int, name: str, block: int) -> int:
    return checked_number(_text_at(sysfs, dir_fd, name, block), f"{sysfs.memory_dir}/{name}", ULONG_MAX)


def _flag_at(sysfs: Sysfs, dir_fd: int, name: str, block: int) -> bool:
    return checked_flag(_text_at(sysfs, dir_fd, name, block), f"{sysfs.memory_dir}/{name}")


def _node_from_links(sysfs: Sysfs, dir_fd: int, name: str, block: int) -> int | None:
    for entry in sysfs.listdir_at(dir_fd, name, block):
        node = numbered(entry, "node")
        if node is not None:
            return node
    return None


def _node_map(sysfs: Sysfs) -> tuple[dict[int, int], int | None]:
    """Block -> node from /sys/devices/system/node/nodeX/memoryN, and the only node if one.

    One listdir per node instead of one per block; with a single node directory
    every block is on that node and nothing needs listing at all.
    """
    names = sysfs.listdir_optional(NODE_DIR)
    if names is None:
        return {}, None
    node_ids = [node for name in names if (node := numbered(name, "node")) is not None]
    if len(node_ids) == 1:
        return {}, node_ids[0]
    nodes: dict[int, int] = {}
    for node in node_ids:
        for entry in sysfs.listdir_optional(f"{NODE_DIR}/node{node}") or ():
            block = numbered(entry, "memory")
            if block is not None:
                nodes[block] = node
    return nodes, None


def _linked_block(sysfs: Sysfs, dir_fd: int, link: str) -> int | None:
    """N of the memoryN a sysfs link points at (None if it is not one, or gone)."""
    target = sysfs.readlink_at(dir_fd, link)
    return None if target is None else numbered(target[target.rfind("/") + 1 :], "memory")


def _acpi_memory_devices(sysfs: Sysfs) -> tuple[dict[int, str], list[MemoryDevice]]:
    """Block -> ACPI memory device (one DIMM), from the devices' physical_node links; the devices with blocks.

    The kernel binds a device's blocks in ascending order, numbering the links
    physical_node, physical_node1, ... So when the first and the last link span
    exactly as many blocks as there are links, the device is that run of blocks and
    the links between need no readlink: a 256-block DIMM costs two, not 256.
    """
    names = sysfs.listdir_optional(ACPI_DEVICES_DIR)
    if names is None:
        return {}, []
    groups: dict[int, str] = {}
    devices: list[MemoryDevice] = []
    for device in (name for name in names if name.startswith(ACPI_MEMORY_DEVICE_PREFIX)):
        device_fd = sysfs.open_dir_optional(f"{ACPI_DEVICES_DIR}/{device}")
        if device_fd is None:
            continue
        try:
            links = sorted(
                (int(name[13:] or 0), name)
                for name in sysfs.listdir_fd(device_fd)
                if name.startswith("physical_node") and (name[13:] == "" or (name[13:].isdecimal() and name[13:].isascii()))
            )
            first = _linked_block(sysfs, device_fd, links[0][1]) if links else None
            last = _linked_block(sysfs, device_fd, links[-1][1]) if links else None
            if first is not None and last is not None and last - first + 1 == len(links):
                members = range(first, last + 1)
            else:
                members = [block for _, name in links if (block := _linked_block(sysfs, device_fd, name)) is not None]
            uid = _uid(sysfs, device_fd) if members else None
        finally:
            sysfs.close(device_fd)
        group = f"acpi:{device}"
        for block in members:
            groups[block] = group
        if members:
            devices.append(MemoryDevice(group, ORIGIN_DIMM, device, uid, parse_int(uid, 0) if uid else None))
    return groups, devices


def _uid(sysfs: Sysfs, device_fd: int) -> str | None:
    """An ACPI device's _UID; QEMU's DIMM slots have "0x03" there, the slot number."""
    try:
        return sysfs.read_at(device_fd, "uid").decode("ascii", "replace").strip() or None
    except SysfsError:
        return None


def _boot_ram_ranges(sysfs: Sysfs) -> list[tuple[int, int]]:
    """RAM of the boot E820 table and its SETUP_E820_EXT continuation (x86; empty elsewhere or when unreadable)."""
    data = sysfs.read_bytes_optional(BOOT_PARAMS, limit=PROC_FILE_LIMIT)
    ranges = boot_ram_ranges(data) if data else []
    if not ranges:
        return []
    for name in sysfs.listdir_optional(BOOT_SETUP_DATA) or ():
        if not (name.isdecimal() and name.isascii()):
            continue
        kind = sysfs.read_optional(f"{BOOT_SETUP_DATA}/{name}/type")
        if kind is None or parse_setup_data_type(kind) != SETUP_E820_EXT:
            continue
        extension = sysfs.read_bytes_optional(f"{BOOT_SETUP_DATA}/{name}/data", limit=PROC_FILE_LIMIT)
        ranges.extend(extension_ram_ranges(extension or b""))
    return sorted(ranges)


def _driver_regions(sysfs: Sysfs, warnings: list[str]) -> list[tuple[int, int, str, str]]:
    """virtio-mem and dax/kmem ranges of /proc/iomem."""
    text = sysfs.read_optional(PROC_IOMEM, limit=PROC_FILE_LIMIT)
    if text is None:
        return []
    resources = parse_iomem(text, sysfs.path(PROC_IOMEM))
    if resources and all(r.start == 0 and r.end == 0 for r in resources):
        warnings.append(
            f"{sysfs.path(PROC_IOMEM)} shows no addresses (not root?): virtio-mem and kmem memory not identified"
        )
        return []
    return driver_regions(resources)
