"""Pure parsing of /proc/iomem: which physical ranges belong to a virtio-mem device.

virtio-mem adds its memory as driver-managed resources named "System RAM (virtio_mem)"
below a parent resource named after the device (e.g. "virtio5"); boot RAM and ACPI
DIMMs are plain "System RAM". That name is the kernel's own statement of who owns a
range, so it tells hot-plugged virtio-mem memory apart from boot memory.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..core.inputs import shown
from ..errors import TreeContentError

VIRTIO_MEM_RESOURCE = "System RAM (virtio_mem)"
_LINE = re.compile(r"(?P<indent> *)(?P<start>[0-9a-f]{1,16})-(?P<end>[0-9a-f]{1,16}) : (?P<name>.*)", re.ASCII)


@dataclass(frozen=True, slots=True)
class IomemResource:
    start: int
    end: int  # inclusive, as the kernel prints it
    name: str
    depth: int
    parent: str | None


def parse_iomem(text: str, path: str = "/proc/iomem") -> list[IomemResource]:
    """Parse `start-end : name` lines; nesting is two spaces of indent per level.

    TreeContentError names the first line that is not in the kernel's shape (kernel/resource.c
    writes every line as `%*s%0*llx-%0*llx : %s`); blank lines are skipped.
    """
    resources: list[IomemResource] = []
    stack: list[str] = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        match = _LINE.fullmatch(line)
        start, end = (int(match["start"], 16), int(match["end"], 16)) if match else (1, 0)
        if start > end:
            raise TreeContentError(path, f"line {number} reads {shown(line)}, expected 'start-end : name' "
                                         "with start <= end in hex")
        depth = len(match["indent"]) // 2
        name = match["name"].strip()
        del stack[depth:]
        parent = stack[-1] if stack else None
        resources.append(IomemResource(start, end, name, depth, parent))
        stack.append(name)
    return resources


def virtio_mem_regions(resources: list[IomemResource]) -> list[tuple[int, int, str]]:
    """(start, end, group) for every virtio-mem range; group names the owning device."""
    return [
        (r.start, r.end, f"virtio-mem:{r.parent or 'unknown'}")
        for r in resources
        if r.name == VIRTIO_MEM_RESOURCE
    ]
