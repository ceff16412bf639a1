"""The gateway's readers on small hand-made and deliberately broken trees (plain files)."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vmem_agent.core.model import MemoryDevice
from vmem_agent.errors import UnsupportedSystemError
from vmem_agent.kernel.sysfs import Sysfs

BLOCK = 128 << 20


def make_tree(root: Path, blocks: dict[int, dict[str, str]], block_size: int = BLOCK, extra: dict[str, str] | None = None,
              node_links: bool = True) -> Path:
    memory = root / "sys/devices/system/memory"
    memory.mkdir(parents=True)
    (memory / "block_size_bytes").write_text(f"{block_size:x}\n")
    for index, attributes in blocks.items():
        directory = memory / f"memory{index}"
        directory.mkdir()
        for name, value in attributes.items():
            (directory / name).write_text(value + "\n")
        if node_links:
            (directory / "node0").symlink_to("../../node/node0")
    for relative, value in (extra or {}).items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(value)
    return root


def full(state: str, zones: str) -> dict[str, str]:
    return {"state": state, "valid_zones": zones, "removable": "1", "phys_device": "0", "phys_index": "0"}


def test_blocks_sorted_numerically_and_non_blocks_ignored(tmp_path):
    root = make_tree(tmp_path, {i: full("online", "Normal") for i in (10, 9, 100, 2)})
    (root / "sys/devices/system/memory/memoryX").mkdir()
    (root / "sys/devices/system/memory/memory").mkdir()
    state = Sysfs(root).snapshot()
    assert [b.index for b in state.blocks] == [2, 9, 10, 100]
    assert state.blocks[0].start == 2 * BLOCK and state.blocks[0].end == 3 * BLOCK - 1


def test_legacy_attributes_are_read_only_when_asked(tmp_path):
    root = make_tree(tmp_path, {0: {**full("online", "Normal"), "phys_device": "3", "removable": "0"}})
    assert Sysfs(root).snapshot().blocks[0][6:8] == (None, None)
    block = Sysfs(root).snapshot(legacy=True).blocks[0]
    assert (block.phys_device, block.removable) == (3, False)


def test_zones_parsed_in_kernel_order(tmp_path):
    root = make_tree(tmp_path, {0: full("online", "none"), 1: full("offline", "Movable Normal"), 2: full("online", "DMA32")})
    blocks = Sysfs(root).snapshot().blocks
    assert blocks[0].zones == ("none",) and blocks[0].zone == "none"
    assert blocks[1].zones == ("Movable", "Normal") and blocks[1].zone is None
    assert blocks[2].zone == "DMA32"


@pytest.mark.parametrize(
    "missing,field,warning_part",
    [("valid_zones", "zones", "zones unknown"), ("removable", "removable", "removable unknown"),
     ("phys_device", "phys_device", "phys_device unknown")],
)
def test_missing_optional_attribute_degrades_with_one_warning(tmp_path, missing, field, warning_part):
    blocks = {i: {k: v for k, v in full("online", "Normal").items() if k != missing} for i in range(3)}
    state = Sysfs(make_tree(tmp_path, blocks)).snapshot(legacy=True)
    assert all(getattr(block, field) is None for block in state.blocks)
    assert len(state.warnings) == 1 and warning_part in state.warnings[0]
    if missing == "valid_zones":
        assert not state.zones_supported


def test_node_from_node_directories_wins_over_per_block_listing(tmp_path):
    root = make_tree(tmp_path, {0: full("online", "Normal"), 1: full("online", "Normal")}, node_links=False)
    for node, index in ((0, 0), (1, 1)):
        node_dir = root / f"sys/devices/system/node/node{node}"
        node_dir.mkdir(parents=True)
        (node_dir / f"memory{index}").symlink_to(f"../../memory/memory{index}")
    assert [b.node for b in Sysfs(root).snapshot().blocks] == [0, 1]


def test_no_node_information_gives_none(tmp_path):
    root = make_tree(tmp_path, {0: full("online", "Normal")}, node_links=False)
    state = Sysfs(root).snapshot()
    assert state.blocks[0].node is None and not state.nodes_supported


def test_global_attributes_and_params(tmp_path):
    params = "sys/module/memory_hotplug/parameters"
    root = make_tree(tmp_path, {0: full("online", "Normal")}, extra={
        "sys/devices/system/memory/auto_online_blocks": "offline\n",
        "sys/devices/system/memory/crash_hotplug": "1\n",
        "sys/kernel/kexec_crash_loaded": "0\n",
        f"{params}/online_policy": "auto-movable\n",
        f"{params}/auto_movable_ratio": "150\n",
        f"{params}/auto_movable_numa_aware": "N\n",
        f"{params}/memmap_on_memory": "Y\n",
    })
    state = Sysfs(root).snapshot()
    assert state.auto_online_blocks == "offline"
    assert state.crash_hotplug is True and state.kexec_crash_loaded is False
    assert state.params.online_policy == "auto-movable" and state.params.auto_movable_ratio == 150
    assert state.params.auto_movable_numa_aware is False and state.params.memmap_on_memory is True


def test_absent_global_attributes_are_unknown(tmp_path):
    state = Sysfs(make_tree(tmp_path, {0: full("online", "Normal")})).snapshot()
    assert state.crash_hotplug is None and state.kexec_crash_loaded is None and state.auto_online_blocks is None
    assert state.params.online_policy is None


def test_dimm_and_virtio_mem_origin(tmp_path):
    blocks = {i: full("online" if i < 2 else "offline", "Normal" if i < 2 else "Normal Movable") for i in range(6)}
    iomem = (
        "00000000-0000ffff : Reserved\n"
        "00001000-0fffffff : System RAM\n"
        "  01000000-01ffffff : Kernel code\n"
        "20000000-2fffffff : virtio7\n"
        "  20000000-27ffffff : System RAM (virtio_mem)\n"
    )
    root = make_tree(tmp_path, blocks, extra={"proc/iomem": iomem})
    acpi = root / "sys/bus/acpi/devices/PNP0C80:00"
    acpi.mkdir(parents=True)
    (acpi / "physical_node").symlink_to("../../../../devices/system/memory/memory2")
    (acpi / "physical_node1").symlink_to("../../../../devices/system/memory/memory3")
    origins = [(b.origin, b.group) for b in Sysfs(root).snapshot().blocks]
    assert origins == [
        ("boot", None), ("boot", None), ("dimm", "acpi:PNP0C80:00"), ("dimm", "acpi:PNP0C80:00"),
        ("virtio-mem", "virtio-mem:virtio7"), ("boot", None),
    ]


def test_iomem_without_addresses_warns(tmp_path):
    iomem = "00000000-00000000 : System RAM\n00000000-00000000 : virtio7\n  00000000-00000000 : System RAM (virtio_mem)\n"
    state = Sysfs(make_tree(tmp_path, {0: full("online", "Normal")}, extra={"proc/iomem": iomem})).snapshot()
    assert any("not root" in warning for warning in state.warnings)


@pytest.mark.parametrize(
    "setup,message",
    [
        (lambda root: None, "does not exist"),
        (lambda root: root.mkdir(), "no such directory"),
        (lambda root: (root / "sys/devices/system/memory").mkdir(parents=True), "block_size_bytes: missing"),
        (lambda root: make_tree(root, {}), "no memory blocks"),
        (lambda root: (make_tree(root, {0: full("online", "Normal")}) / "sys/devices/system/memory/block_size_bytes").write_text("zz\n"),
         "unreadable block size"),
    ],
)
def test_unsupported_roots_raise_one_clear_error(tmp_path, setup, message):
    root = tmp_path / "root"
    setup(root)
    with pytest.raises(UnsupportedSystemError, match=message):
        Sysfs(root).snapshot()


def test_write_never_creates_files(tmp_path):
    root = make_tree(tmp_path, {0: full("online", "Normal")})
    with pytest.raises(Exception) as caught:
        Sysfs(root).write_block_state(7, "offline")
    assert getattr(caught.value, "errno", None) == 2 and caught.value.block == 7
    assert not (root / "sys/devices/system/memory/memory7").exists()


def boot_params_with(entries: list[tuple[int, int, int]]) -> bytes:
    """A 4 KiB struct boot_params whose E820 table holds (addr, size, type) entries."""
    from vmem_agent.kernel.e820 import E820_ENTRIES_OFFSET, E820_ENTRY, E820_TABLE_OFFSET

    data = bytearray(4096)
    data[E820_ENTRIES_OFFSET] = len(entries)
    for number, entry in enumerate(entries):
        E820_ENTRY.pack_into(data, E820_TABLE_OFFSET + number * E820_ENTRY.size, *entry)
    return bytes(data)


def write_boot_params(root: Path, entries) -> Path:
    """root/sys/kernel/boot_params with a boot E820 table of `entries` (addr, size, type); the directory."""
    kernel = root / "sys/kernel/boot_params"
    kernel.mkdir(parents=True)
    (kernel / "data").write_bytes(boot_params_with(entries))
    return kernel


def test_e820_ram_ranges_are_parsed():
    from vmem_agent.kernel.e820 import boot_ram_ranges

    data = boot_params_with([(0x100000, 0x7FF00000, 1), (0, 0x9FC00, 1), (0xFEFFC000, 0x4000, 2)])
    assert boot_ram_ranges(data) == [(0, 0x9FBFF), (0x100000, 0x7FFFFFFF)]
    assert boot_ram_ranges(b"short") == []


def test_boot_e820_decides_boot_memory_over_other_signals(tmp_path):
    blocks = {i: full("online", "Normal") for i in range(4)}
    # Blocks 0-1 are boot RAM; block 2 is claimed by a DIMM but also in E820 (boot wins);
    # block 3 is in neither: hot-plugged by something we do not know.
    root = make_tree(tmp_path, blocks)
    kernel = root / "sys/kernel/boot_params"
    kernel.mkdir(parents=True)
    (kernel / "data").write_bytes(boot_params_with([(0, 3 * BLOCK, 1)]))
    acpi = root / "sys/bus/acpi/devices/PNP0C80:00"
    acpi.mkdir(parents=True)
    (acpi / "physical_node").symlink_to("../../../../devices/system/memory/memory2")
    origins = [(b.origin, b.group) for b in Sysfs(root).snapshot().blocks]
    assert origins == [("boot", None), ("boot", None), ("boot", None), ("hotplug", None)]


def test_boot_e820_continues_in_setup_data(tmp_path):
    """More than 128 boot E820 entries: the rest are a SETUP_E820_EXT node (type 0x1) of
    /sys/kernel/boot_params/setup_data; other setup_data types (here 0x9, an RNG seed) are not."""
    from vmem_agent.kernel.e820 import E820_ENTRY

    root = make_tree(tmp_path, {i: full("online", "Normal") for i in range(4)})
    kernel = write_boot_params(root, [(0, BLOCK, 1)])
    extension = kernel / "setup_data/0"
    extension.mkdir(parents=True)
    (extension / "type").write_text("0x1\n")
    (extension / "data").write_bytes(E820_ENTRY.pack(2 * BLOCK, BLOCK, 1) + E820_ENTRY.pack(3 * BLOCK, BLOCK, 2))
    seed = kernel / "setup_data/1"
    seed.mkdir()
    (seed / "type").write_text("0x9\n")
    (seed / "data").write_bytes(E820_ENTRY.pack(BLOCK, BLOCK, 1))  # as if RAM: must be ignored
    origins = [b.origin for b in Sysfs(root).snapshot().blocks]
    assert origins == ["boot", "hotplug", "boot", "hotplug"]


def test_kmem_memory_is_its_own_origin_and_devices_carry_the_dimm_slot(tmp_path):
    blocks = {i: full("online", "Movable") for i in range(4)}
    iomem = (f"{0:08x}-{BLOCK - 1:08x} : System RAM\n"
             f"{2 * BLOCK:08x}-{4 * BLOCK - 1:08x} : dax0.0\n"
             f"  {2 * BLOCK:08x}-{4 * BLOCK - 1:08x} : System RAM (kmem)\n")
    root = make_tree(tmp_path, blocks, extra={"proc/iomem": iomem})
    write_boot_params(root, [(0, BLOCK, 1)])
    acpi = root / "sys/bus/acpi/devices/PNP0C80:03"
    acpi.mkdir(parents=True)
    (acpi / "uid").write_text("0x03\n")
    (acpi / "physical_node").symlink_to("../../../../devices/system/memory/memory1")
    state = Sysfs(root).snapshot()
    assert [(b.origin, b.group) for b in state.blocks] == [
        ("boot", None), ("dimm", "acpi:PNP0C80:03"), ("kmem", "kmem:dax0.0"), ("kmem", "kmem:dax0.0")]
    assert state.device("acpi:PNP0C80:03") == MemoryDevice("acpi:PNP0C80:03", "dimm", "PNP0C80:03", "0x03", 3)
    assert state.device("kmem:dax0.0") == MemoryDevice("kmem:dax0.0", "kmem", "dax0.0")


@pytest.mark.parametrize(
    "targets,expected",
    [
        ([2, 3, 4], {2, 3, 4}),  # one run: only the first and last links need reading
        ([2, 5], {2, 5}),  # not a run: every link is read
        ([2, 4, 3], {2, 3, 4}),  # links out of address order still name the right blocks
    ],
)
def test_dimm_membership_from_acpi_links(tmp_path, targets, expected):
    root = make_tree(tmp_path, {i: full("offline", "Normal Movable") for i in range(8)})
    acpi = root / "sys/bus/acpi/devices/PNP0C80:03"
    acpi.mkdir(parents=True)
    for number, block in enumerate(targets):
        name = "physical_node" if number == 0 else f"physical_node{number}"
        (acpi / name).symlink_to(f"../../../../devices/system/memory/memory{block}")
    dimm = {b.index for b in Sysfs(root).snapshot().blocks if b.group == "acpi:PNP0C80:03"}
    assert dimm == expected


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 40), st.integers(0, 12)), min_size=1, max_size=8), st.integers(0, 50))
def test_boot_classification_is_any_overlap_with_boot_ram(entries, index):
    """The classifier bisects merged ranges; it must say what a plain overlap test says."""
    from vmem_agent.core.origins import origin_classifier

    ram = [(start * 64, start * 64 + length * 64 + 63) for start, length in entries]  # byte ranges, 64-byte grain
    classify = origin_classifier(ram, {}, [], 128)
    start = index * 128
    expected = any(low <= start + 127 and start <= high for low, high in ram)
    assert (classify(index, start)[0] == "boot") == expected
