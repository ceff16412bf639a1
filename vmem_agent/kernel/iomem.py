"""Pure parsing of /proc/iomem: which physical ranges a memory driver manages.

Drivers that add memory themselves name its resources after themselves: virtio-mem adds
"System RAM (virtio_mem)" below a parent named after the device (e.g. "virtio5"), dax/kmem
"System RAM (kmem)" below the dax device (e.g. "dax0.0"); boot RAM and ACPI DIMMs are plain
"System RAM". That name is the kernel's own statement of who owns a range, so it tells
driver-managed memory apart from boot memory.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..core.model import ORIGIN_KMEM, ORIGIN_VIRTIO_MEM

VIRTIO_MEM_RESOURCE = "System RAM (virtio_mem)"
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


def parse_iomem(text: str) -> list[IomemResource]:
    """Parse `start-end : name` lines; nesting is two spaces of indent per level."""
    resources: list[IomemResource] = []
    stack: list[str] = []
    for line in text.splitlines():
        stripped = line.lstrip(" ")
        if not stripped or " : " not in stripped:
            continue
        depth = (len(line) - len(stripped)) // 2
        span, name = stripped.split(" : ", 1)
        start_text, _, end_text = span.partition("-")
        try:
            start, end = int(start_text, 16), int(end_text, 16)
        except ValueError:
            continue
        del stack[depth:]
        parent = stack[-1] if stack else None
        resources.append(IomemResource(start, end, name.strip(), depth, parent))
        stack.append(name.strip())
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
