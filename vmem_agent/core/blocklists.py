"""Block lists as users type them (`12`, `12-20`, `3,5-7`), and what `online`/`offline` take. Pure.

Only ASCII digits are digits (str.isdigit() and int() also take `４` and `٤`), nothing is
deleted (`0 4` is an error, not block 4), and a list costs work in proportion to the
blocks that exist, never to the numbers typed: ranges are intersected with the present
blocks instead of being expanded, so `0-999999999` is as cheap as `0-9`.
"""

from __future__ import annotations

import bisect
import re
from dataclasses import dataclass
from typing import Sequence

from ..errors import UsageError
from .inputs import shown
from .model import merge_ranges
from .sizes import SizeRequest, parse_size

MAX_INDEX = 2**64 - 1  # a memory block index is an unsigned long
_MAX_INDEX_DIGITS = len(str(MAX_INDEX))
_BLOCK_LIST_CHARACTERS = frozenset("0123456789,-")
_ITEM = re.compile(r"([0-9]+)(?:-([0-9]+))?", re.ASCII)
# A sign, a fraction, or a number with a unit: meant as a size, so the size parser's message says what is wrong.
_SIZE_ATTEMPT = re.compile(r"^\s*[+-]|^\s*[0-9]*\.|^\s*[0-9]+\s*[KMGTPE]", re.ASCII | re.IGNORECASE)
_MISSING_SHOWN = 10  # missing ranges named in an error
BLOCK_LIST_HELP = "expected N, N-M or a comma-separated list of them (ASCII digits, no spaces), e.g. 12, 12-20, 3,5-7"


@dataclass(frozen=True, slots=True)
class BlockList:
    """Inclusive (low, high) ranges of block indexes, sorted and merged: never one entry per index."""

    text: str
    ranges: tuple[tuple[int, int], ...]


def looks_like_block_list(text: str) -> bool:
    """Whether `text` is meant as block indexes (only digits, commas and dashes), not as a size."""
    return bool(text) and all(character in _BLOCK_LIST_CHARACTERS for character in text)


def parse_block_list(text: str) -> BlockList:
    """`12`, `12-20`, `3,5-7` -> BlockList; UsageError naming the item otherwise."""
    ranges = []
    for item in text.split(","):
        match = _ITEM.fullmatch(item)
        if match is None:
            raise UsageError(f"invalid block list {shown(text)}: {BLOCK_LIST_HELP}")
        low = _index(match[1], text)
        high = _index(match[2], text) if match[2] is not None else low
        if high < low:
            raise UsageError(f"invalid block range {shown(item)} in {shown(text)}: {high} < {low}")
        ranges.append((low, high))
    return BlockList(text, merge_ranges(ranges))


def parse_blocks_or_size(text: str) -> BlockList | SizeRequest:
    """The argument of `online`/`offline`: block indexes, or an amount of memory (`1G`)."""
    if looks_like_block_list(text):
        return parse_block_list(text)
    try:
        return parse_size(text, allow_relative=False)
    except UsageError as exc:
        if _SIZE_ATTEMPT.search(text):
            raise
        raise UsageError(f"invalid block list or size {shown(text)}: expected block indexes (12, 12-20, 3,5-7) "
                         "or an amount of memory (1G, 512M)") from exc


def select_present(blocks: BlockList, present: Sequence[int]) -> list[int]:
    """The indexes of `blocks`, all of which must be in the sorted `present`; UsageError names the missing ones.

    Work is proportional to the ranges and the present blocks they hold, whatever their numbers.
    """
    selected: list[int] = []
    missing: list[tuple[int, int]] = []
    for low, high in blocks.ranges:
        first, last = bisect.bisect_left(present, low), bisect.bisect_right(present, high)
        expected = low
        for index in present[first:last]:
            if index > expected:
                missing.append((expected, index - 1))
            selected.append(index)
            expected = index + 1
        if expected <= high:
            missing.append((expected, high))
    if missing:
        named = ", ".join(str(low) if low == high else f"{low}-{high}" for low, high in missing[:_MISSING_SHOWN])
        more = " ..." if len(missing) > _MISSING_SHOWN else ""
        raise UsageError(f"no such memory block: {named}{more}")
    return selected


def _index(digits: str, text: str) -> int:
    if len(digits) > _MAX_INDEX_DIGITS or int(digits) > MAX_INDEX:
        raise UsageError(f"invalid block list {shown(text)}: block index {shown(digits, 24)} is larger than {MAX_INDEX}")
    return int(digits)
