"""Pure parsing of /proc/meminfo: the two figures the offline safety floor needs."""

from __future__ import annotations

from ..core.model import MemoryFigures

_KIB = 1024


def parse_meminfo(text: str) -> dict[str, int]:
    """`Name:   123 kB` lines -> {name: bytes}; lines of any other shape are ignored."""
    fields: dict[str, int] = {}
    for line in text.splitlines():
        name, colon, rest = line.partition(":")
        parts = rest.split()
        if not colon or not parts or not parts[0].isascii() or not parts[0].isdigit():
            continue
        scale = _KIB if parts[1:2] == ["kB"] else 1
        fields[name.strip()] = int(parts[0]) * scale
    return fields


def memory_figures(text: str) -> MemoryFigures | None:
    """MemTotal and MemAvailable, or None when either is missing (then nothing is offlined)."""
    fields = parse_meminfo(text)
    total, available = fields.get("MemTotal"), fields.get("MemAvailable")
    if total is None or available is None:
        return None
    return MemoryFigures(total_bytes=total, available_bytes=min(available, total))
