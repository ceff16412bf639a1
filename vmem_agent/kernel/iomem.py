"""Pure parsing of /proc/iomem: which physical ranges a memory driver manages.

Drivers that add memory themselves name its resources after themselves: virtio-mem adds
"System RAM (virtio_mem)" below a parent named after the device (e.g. "virtio5"), dax/kmem
"System RAM (kmem)" below the dax device (e.g. "dax0.0"); boot RAM and ACPI DIMMs are plain
"System RAM". That name is the kernel's own statement of who owns a range, so it tells
driver-managed memory apart from boot memory.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..core.inputs import shown
from ..core.model import ORIGIN_KMEM, ORIGIN_VIRTIO_MEM
from ..errors import TreeContentError

VIRTIO_MEM_RESOURCE = "System RAM (virtio_mem)"
_LINE = re.compile(r"(?P<indent> *)(?P<start>[0-9a-f]{1,16})-(?P<end>[0-9a-f]{1,16}) : (?P<name>.*)", re.ASCII)
# resource name -> (origin, group prefix)
DRIVER_RESOURCES = {
    VIRTIO_MEM_RESOURCE: (ORIGIN_VIRTIO_MEM, "virtio-mem"),
    "System RAM (kmem)": (ORIGIN_KMEM, "kmem"),
}


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


def driver_regions(resources: list[IomemResource]) -> list[tuple[int, int, str, str]]:
    """(start, end, origin, group) of every driver-managed range; group names the owning device."""
    regions = []
    for resource in resources:
        kind = DRIVER_RESOURCES.get(resource.name)
        if kind is not None:
            origin, prefix = kind
            regions.append((resource.start, resource.end, origin, f"{prefix}:{resource.parent or 'unknown'}"))
    return regions
