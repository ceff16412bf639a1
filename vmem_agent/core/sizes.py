"""Memory sizes: the one parser for sizes the user types, and the one formatter for messages.

Units are always binary, whatever the spelling: `6G`, `6GiB`, `6GB` and `6g` all mean
6 * 2**30 bytes. Memory blocks, DIMMs and lsmem/chmem all count in powers of two, and a
"6GB" that meant 6 * 10**9 bytes would never be a whole number of blocks.

A leading `+` or `-` makes a size relative to the memory online now (`+1G`, `-512M`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..errors import UsageError

if TYPE_CHECKING:
    from .model import MemoryState

_UNIT_SHIFTS = {"": 0, "K": 10, "M": 20, "G": 30, "T": 40, "P": 50, "E": 60}
_FORMAT_LETTERS = "BKMGTPE"
MAX_SIZE = 2**64 - 1  # what the kernel's u64 byte counters can hold
_MAX_INPUT_CHARS = 64  # long enough for any honest size; keeps int() away from huge digit strings
_SIZE_SYNTAX = re.compile(
    r"(?P<sign>[+-]?)(?P<whole>[0-9]*)(?:\.(?P<fraction>[0-9]+))?\s*(?P<unit>[KMGTPE]?)(?P<suffix>I?B)?",
    re.ASCII | re.IGNORECASE,
)
_SIZE_HELP = "expected a number with an optional binary unit K, M, G, T, P or E (KiB, MiB, ...), e.g. 6G, 512M, 1.5G, +1G, -512M"


@dataclass(frozen=True, slots=True)
class SizeRequest:
    """A parsed size: `bytes` is the magnitude, `sign` is 0 (absolute), +1 (grow by) or -1 (shrink by)."""

    text: str
    bytes: int
    sign: int = 0

    @property
    def relative(self) -> bool:
        return self.sign != 0

    def __str__(self) -> str:
        return self.text


@dataclass(frozen=True, slots=True)
class Target:
    """An online-memory target in whole blocks; `note` says why it differs from what was asked."""

    bytes: int
    requested: int
    rounded: bool
    note: str | None = None


def parse_size(text: str, allow_relative: bool = True) -> SizeRequest:
    """Parse what a user typed as a memory size; raise UsageError naming the input if it is not one.

    With a unit, a fraction is rounded up to a whole byte (`1.1G`); without one, the number
    must be a whole count of bytes (`1.5` is refused). Values must fit in 64 bits.
    """
    stripped = text.strip()
    match = _SIZE_SYNTAX.fullmatch(stripped) if len(stripped) <= _MAX_INPUT_CHARS else None
    if match is None or not (match["whole"] or match["fraction"]):
        raise UsageError(f"invalid size {text!r}: {_SIZE_HELP}")
    unit = match["unit"].upper()
    if match["suffix"] and match["suffix"].upper() == "IB" and not unit:
        raise UsageError(f"invalid size {text!r}: 'iB' needs a unit letter before it (KiB, MiB, GiB, ...)")
    sign = {"": 0, "+": 1, "-": -1}[match["sign"]]
    if sign and not allow_relative:
        raise UsageError(f"invalid size {text!r}: a relative size (+/-) is not allowed here")
    fraction = match["fraction"] or ""
    scaled = int((match["whole"] or "0") + fraction) << _UNIT_SHIFTS[unit]
    divisor = 10 ** len(fraction)
    if not unit and scaled % divisor:
        raise UsageError(f"invalid size {text!r}: a fraction of a byte; add a unit (K, M, G, ...)")
    size = -(-scaled // divisor)
    if size > MAX_SIZE:
        raise UsageError(f"invalid size {text!r}: larger than 64 bits ({format_size(MAX_SIZE)})")
    return SizeRequest(text=stripped, bytes=size, sign=sign)


def resolve_target(request: SizeRequest, current_online: int, block_size: int, total_present: int) -> Target:
    """Turn a size request into a block-aligned online target, or raise UsageError.

    A relative request applies to the memory online now. A size between two block
    multiples rounds UP: the agent never leaves the guest with less memory than asked.
    The target must be above zero and at most the memory of all present blocks.
    """
    if block_size <= 0:
        raise ValueError(f"block size must be positive, not {block_size}")
    requested = current_online + request.sign * request.bytes if request.relative else request.bytes
    asked = f"{request.text} (from {format_size(current_online, exact=True)} online)" if request.relative else request.text
    if requested <= 0:
        raise UsageError(f"target {asked} leaves no memory online: the target must be more than 0B")
    aligned = -(-requested // block_size) * block_size
    if aligned > total_present:
        raise UsageError(
            f"target {asked} is more than the {format_size(total_present, exact=True)} "
            "of memory present (online and offline blocks)"
        )
    if aligned == requested:
        return Target(bytes=aligned, requested=requested, rounded=False)
    note = (
        f"{asked} is not a multiple of the {format_size(block_size, exact=True)} block size: "
        f"using {format_size(aligned, exact=True)}"
    )
    return Target(bytes=aligned, requested=requested, rounded=True, note=note)


def format_size(size: int, exact: bool = False) -> str:
    """Human size in binary units as lsmem prints it: `0B`, `128M`, `1.5G`, `15.6G`.

    Like lsmem, one decimal at most, from the thousandths truncated then rounded half up
    (so a table here matches lsmem's). With `exact`, the largest unit that shows the value
    exactly with up to three decimals (`6.125G`, `6208M`), for messages about block rounding.
    """
    if size < 0:
        return "-" + format_size(-size, exact)
    exponent = min((size.bit_length() - 1) // 10, len(_FORMAT_LETTERS) - 1) if size else 0
    if exact:
        while exponent and (size * 1000) % (1 << (10 * exponent)):
            exponent -= 1
        unit = 1 << (10 * exponent)
        whole, thousandths = divmod(size * 1000 // unit, 1000)
        decimals = f".{thousandths:03d}".rstrip("0") if thousandths else ""
        return f"{whole}{decimals}{_FORMAT_LETTERS[exponent]}"
    unit = 1 << (10 * exponent)
    whole, remainder = divmod(size, unit)
    tenths = (remainder * 1000 // unit + 50) // 100
    if tenths == 10:
        whole, tenths = whole + 1, 0
    decimals = f".{tenths}" if tenths else ""
    return f"{whole}{decimals}{_FORMAT_LETTERS[exponent]}"


def resolve_resize_target(state: MemoryState, size_text: str) -> Target:
    """A resize's SIZE on this state: what the engine runs toward and the daemon stores.

    Relative sizes apply to `online_memory_bytes` (going-offline blocks still count)."""
    present = state.block_size * len(state.blocks)
    return resolve_target(parse_size(size_text), state.online_memory_bytes, state.block_size, present)
