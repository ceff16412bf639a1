"""Where a memory block came from, decided from the kernel's signals. Pure: no I/O.

The signals are read by kernel.snapshot: RAM of the boot E820 table (with its
SETUP_E820_EXT continuation), the blocks that each ACPI memory device (one DIMM) links
to, and the driver-managed ranges of /proc/iomem (`System RAM (virtio_mem)`, `System
RAM (kmem)`).

Only a positive signal makes a block hot-plugged memory of a known kind. A block outside
the boot memory map that no device claims is `hotplug` (origin unknown); it is never
offlined automatically, because nothing says a host can take it back.
"""

from __future__ import annotations

from bisect import bisect_right
from typing import Callable

from .model import ORIGIN_BOOT, ORIGIN_DIMM, ORIGIN_HOTPLUG, merge_ranges

BOOT_ORIGIN = (ORIGIN_BOOT, None)

Classifier = Callable[[int, int], tuple[str, "str | None"]]
# (start, end inclusive, origin, group) of a driver-managed range.
DriverRegion = tuple[int, int, str, str]


def origin_classifier(
    boot_ram: list[tuple[int, int]],
    dimm_groups: dict[int, str],
    driver_regions: list[DriverRegion],
    block_size: int,
) -> Classifier | None:
    """A function (index, start) -> (origin, group), or None when no signal exists at all.

    Boot RAM (the boot E820 table) wins over every other signal: when signals disagree,
    calling a block boot memory only means it is never offlined. Without an E820 table
    (other architectures, or not readable), a block no device claims is taken as boot.
    """
    if not (boot_ram or dimm_groups or driver_regions):
        return None
    unclaimed = (ORIGIN_HOTPLUG, None) if boot_ram else BOOT_ORIGIN
    merged = merge_ranges(boot_ram)  # bisected below: a scan asks per block
    starts = [low for low, _high in merged]
    ends = [high for _low, high in merged]
    last_byte = block_size - 1

    def classify(index: int, start: int) -> tuple[str, str | None]:
        # The last boot range starting at or before the block's end: boot if it reaches the block.
        position = bisect_right(starts, start + last_byte) - 1
        if position >= 0 and ends[position] >= start:
            return BOOT_ORIGIN
        group = dimm_groups.get(index)
        if group is not None:
            return ORIGIN_DIMM, group
        for region_start, region_end, origin, region_group in driver_regions:
            if region_start <= start <= region_end:
                return origin, region_group
        return unclaimed

    return classify
