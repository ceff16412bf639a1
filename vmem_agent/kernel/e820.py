"""Pure parsing of the x86 boot E820 table in /sys/kernel/boot_params/data.

The firmware's E820 map, as the kernel received it at boot, lists the RAM the machine
booted with. Hot-plugged memory (ACPI DIMMs, even cold-plugged ones, and virtio-mem) is
never in it, while /sys/firmware/memmap gains entries for DIMMs; so this is the
reliable "was present at boot" signal on x86 (docs/kernel-observations.md).
"""

from __future__ import annotations

import struct

# struct boot_params (arch/x86/include/uapi/asm/bootparam.h)
E820_ENTRIES_OFFSET = 0x1E8  # __u8 e820_entries
E820_TABLE_OFFSET = 0x2D0  # struct boot_e820_entry e820_table[128]
E820_MAX_ENTRIES = 128
E820_ENTRY = struct.Struct("<QQI")  # addr, size, type (packed: 20 bytes)
E820_TYPE_RAM = 1


def boot_ram_ranges(boot_params: bytes) -> list[tuple[int, int]]:
    """(start, end inclusive) of every RAM entry; empty when the data is not a boot_params."""
    if len(boot_params) < E820_TABLE_OFFSET + E820_ENTRY.size:
        return []
    count = min(boot_params[E820_ENTRIES_OFFSET], E820_MAX_ENTRIES)
    if len(boot_params) < E820_TABLE_OFFSET + count * E820_ENTRY.size:
        return []
    ranges = []
    for number in range(count):
        start, size, kind = E820_ENTRY.unpack_from(boot_params, E820_TABLE_OFFSET + number * E820_ENTRY.size)
        if kind == E820_TYPE_RAM and size:
            ranges.append((start, start + size - 1))
    return sorted(ranges)
