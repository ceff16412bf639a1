"""Pure parsing of /proc/meminfo: the two figures the offline safety floor needs.

Only MemTotal and MemAvailable are used, and only they are checked: each must read
`<digits> kB`, at most once, as fs/proc/meminfo.c writes it. Other lines, whatever their
shape, are not ours to judge (the kernel adds fields over time).
"""

from __future__ import annotations

import re

from ..core.inputs import shown
from ..core.model import MemoryFigures

_KIB = 1024
_FIGURES = ("MemTotal", "MemAvailable")
_VALUE = re.compile(r"\s*([0-9]{1,17}) kB\s*", re.ASCII)  # 17 digits of kB stay below 2**64 bytes


def memory_figures(text: str) -> MemoryFigures | None:
    """MemTotal and MemAvailable, or None when either is missing (then nothing is offlined).

    ValueError names the figure when one is malformed, repeated, or MemTotal is 0.
    """
    values: dict[str, int] = {}
    for line in text.splitlines():
        name, colon, rest = line.partition(":")
        if not colon or name not in _FIGURES:
            continue
        match = _VALUE.fullmatch(rest)
        if match is None:
            raise ValueError(f"{name} reads {shown(rest.strip())}, expected a number of kB (e.g. 1948096 kB)")
        if name in values:
            raise ValueError(f"{name} appears more than once")
        values[name] = int(match[1]) * _KIB
    total, available = values.get("MemTotal"), values.get("MemAvailable")
    if total is None or available is None:
        return None
    if total == 0:
        raise ValueError("MemTotal reads 0 kB, expected the memory the kernel manages")
    return MemoryFigures(total_bytes=total, available_bytes=min(available, total))
