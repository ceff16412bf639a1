"""Pure parsing of the x86 boot E820 table: /sys/kernel/boot_params/data and setup_data.

The firmware's E820 map, as the kernel received it at boot, lists the RAM the machine
booted with. Hot-plugged memory (ACPI DIMMs, even cold-plugged ones, and virtio-mem) is
never in it, while /sys/firmware/memmap gains entries for DIMMs; so this is the
reliable "was present at boot" signal on x86 (docs/kernel-observations.md).

struct boot_params holds at most 128 entries. A boot loader or the EFI stub with more
passes the rest as a setup_data node of type SETUP_E820_EXT, which the kernel shows as
/sys/kernel/boot_params/setup_data/N/{type,data}: only both together are the whole map.
"""

from __future__ import annotations

import struct

# struct boot_params (arch/x86/include/uapi/asm/bootparam.h)
E820_ENTRIES_OFFSET = 0x1E8  # __u8 e820_entries
E820_TABLE_OFFSET = 0x2D0  # struct boot_e820_entry e820_table[128]
E820_MAX_ENTRIES = 128
E820_ENTRY = struct.Struct("<QQI")  # addr, size, type (packed: 20 bytes)
E820_TYPE_RAM = 1
SETUP_E820_EXT = 1  # setup_data type: more boot_e820_entry records, as many as fit its length


def boot_ram_ranges(boot_params: bytes) -> list[tuple[int, int]]:
    """(start, end inclusive) of every RAM entry of boot_params; empty when the data is not one."""
    if len(boot_params) < E820_TABLE_OFFSET + E820_ENTRY.size:
        return []
    count = min(boot_params[E820_ENTRIES_OFFSET], E820_MAX_ENTRIES)
    if len(boot_params) < E820_TABLE_OFFSET + count * E820_ENTRY.size:
        return []
    return _ram_entries(boot_params, E820_TABLE_OFFSET, count)


def extension_ram_ranges(setup_data: bytes) -> list[tuple[int, int]]:
    """RAM entries of a SETUP_E820_EXT node's data (a packed array of boot_e820_entry)."""
    return _ram_entries(setup_data, 0, len(setup_data) // E820_ENTRY.size)


def parse_setup_data_type(text: str) -> int | None:
    """The `type` file of a setup_data node (`0x1`), or None when it is not a number."""
    try:
        return int(text.strip(), 0)
    except ValueError:
        return None


def _ram_entries(data: bytes, offset: int, count: int) -> list[tuple[int, int]]:
    ranges = []
    for number in range(count):
        start, size, kind = E820_ENTRY.unpack_from(data, offset + number * E820_ENTRY.size)
        if kind == E820_TYPE_RAM and size:
            ranges.append((start, start + size - 1))
    return sorted(ranges)
