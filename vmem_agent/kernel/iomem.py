"""Pure parsing of /proc/iomem: which physical ranges belong to a virtio-mem device.

virtio-mem adds its memory as driver-managed resources named "System RAM (virtio_mem)"
below a parent resource named after the device (e.g. "virtio5"); boot RAM and ACPI
DIMMs are plain "System RAM". That name is the kernel's own statement of who owns a
range, so it tells hot-plugged virtio-mem memory apart from boot memory.
"""

from __future__ import annotations

from dataclasses import dataclass

VIRTIO_MEM_RESOURCE = "System RAM (virtio_mem)"


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


def virtio_mem_regions(resources: list[IomemResource]) -> list[tuple[int, int, str]]:
    """(start, end, group) for every virtio-mem range; group names the owning device."""
    return [
        (r.start, r.end, f"virtio-mem:{r.parent or 'unknown'}")
        for r in resources
        if r.name == VIRTIO_MEM_RESOURCE
    ]
