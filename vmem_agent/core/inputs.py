"""Checks and display of what users and files give us, shared by the CLI, the daemon and the gateway. Pure.

An input is checked where it enters, and an error names it as `shown()` renders it:
quoted, control characters escaped (never sent raw to a terminal), and cut when long
(a 100 KB argument is not echoed whole). `one_line()` is the last guard for a whole
message line, whatever it embeds.
"""

from __future__ import annotations

import math
import re
import shlex

from ..limits import MAX_SECONDS

SHOWN_LIMIT = 60  # characters of an input quoted in a message
LONG_WORD_LIMIT = 256  # a word of a message line longer than this is cut (a path may well be 200)
_LONG_WORD_KEPT = 80  # characters kept at each end of a cut word
# C0 controls but tab and newline, DEL, and the C1 controls (U+0080-U+009F: CSI is U+009B).
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
_ASCII_CONTROLS = tuple(map(chr, (*range(0x09), *range(0x0b, 0x20), 0x7f)))
_CONTROL_OR_NEWLINE = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_LONG_WORD = re.compile(r"\S{%d,}" % (LONG_WORD_LIMIT + 1))
_DECIMAL_SECONDS = re.compile(r"[0-9]+(?:\.[0-9]*)?|\.[0-9]+", re.ASCII)


def _escape(match: re.Match) -> str:
    return f"\\x{ord(match.group()):02x}"


def escape_controls(text: str) -> str:
    """Text with control characters (but tab and newline) written as `\\xNN`: safe for a terminal.

    ASCII text (JSON, tables: nearly everything printed) is checked with one memchr-fast `in`
    per control character: a third of a regex search over a 10 MB `status --json`.
    """
    if text.isascii() and not any(control in text for control in _ASCII_CONTROLS):
        return text
    return _CONTROL.sub(_escape, text)


def shown(value: object, limit: int = SHOWN_LIMIT) -> str:
    """An input quoted for a message: repr-style escapes, and only its start when it is long."""
    if isinstance(value, str):
        return repr(value) if len(value) <= limit else f"{value[:limit]!r}... ({len(value)} characters)"
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}..."


def one_line(message: str) -> str:
    """A message as one terminal-safe line: newlines joined, controls escaped, very long words cut."""
    text = "; ".join(part.strip() for part in message.splitlines() if part.strip())
    text = _CONTROL_OR_NEWLINE.sub(_escape, text)
    return _LONG_WORD.sub(_cut_word, text)


def _cut_word(match: re.Match) -> str:
    word = match.group()
    return f"{word[:_LONG_WORD_KEPT]}...({len(word)} characters)...{word[-_LONG_WORD_KEPT:]}"


def seconds_problem(value: float, minimum: float, maximum: float = MAX_SECONDS) -> str | None:
    """What is wrong with a number of seconds (NaN, infinite, out of range), or None when it is fine."""
    if minimum <= value <= maximum:  # never true for NaN
        return None
    return f"expected a number of seconds from {minimum:g} to {maximum:g}"


def parse_seconds(text: str, minimum: float, maximum: float = MAX_SECONDS) -> float:
    """`30`, `0.5`, `.5` -> seconds; ValueError says what was expected (no nan, inf, 1e9, '３')."""
    stripped = text.strip()
    if _DECIMAL_SECONDS.fullmatch(stripped) is None:
        raise ValueError(f"expected a number of seconds from {minimum:g} to {maximum:g}, not {shown(text)}")
    value = float(stripped) if len(stripped) <= SHOWN_LIMIT else math.inf
    problem = seconds_problem(value, minimum, maximum)
    if problem:
        raise ValueError(f"{problem}, not {shown(text)}")
    return value


def split_command(text: str) -> tuple[str, ...]:
    """A command line split as a shell would (run without one); ValueError when it cannot be."""
    try:
        argv = shlex.split(text)
    except ValueError as exc:
        raise ValueError(f"cannot split {shown(text)} into a command: {str(exc).lower()}") from None
    return check_command(argv)


def check_command(argv: list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """An argv that can be run: not empty, a program name, no NUL character."""
    if not argv or not argv[0]:
        raise ValueError("expected a non-empty command")
    if any("\0" in part for part in argv):
        raise ValueError("the command contains a NUL character")
    return tuple(argv)
