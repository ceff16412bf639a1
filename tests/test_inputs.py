"""The pure input checks (core.blocklists, core.inputs): properties against brute force and round trips."""

from __future__ import annotations

import re
import shlex

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vmem_agent.core.blocklists import BlockList, parse_block_list, parse_blocks_or_size, select_present
from vmem_agent.core.inputs import (
    LONG_WORD_LIMIT, SHOWN_LIMIT, escape_controls, one_line, parse_seconds, shown, split_command,
)
from vmem_agent.core.model import format_block_list
from vmem_agent.core.sizes import SizeRequest
from vmem_agent.errors import UsageError

_RAW_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
SMALL_INDEXES = st.sets(st.integers(0, 200), max_size=40)


@given(SMALL_INDEXES.filter(bool))
def test_a_formatted_block_list_parses_back_to_its_blocks(indexes):
    blocks = parse_block_list(format_block_list(indexes))
    assert select_present(blocks, sorted(indexes)) == sorted(indexes)


@settings(max_examples=300)
@given(present=SMALL_INDEXES, ranges=st.lists(st.tuples(st.integers(0, 220), st.integers(0, 30)), min_size=1,
                                              max_size=6))
def test_selection_agrees_with_brute_force(present, ranges):
    text = ",".join(f"{low}-{low + extra}" if extra else str(low) for low, extra in ranges)
    wanted = sorted({index for low, extra in ranges for index in range(low, low + extra + 1)})
    missing = [index for index in wanted if index not in present]
    if missing:
        with pytest.raises(UsageError) as error:
            select_present(parse_block_list(text), sorted(present))
        named = str(error.value).removeprefix("no such memory block: ").removesuffix(" ...").replace(" ", "")
        assert named == format_block_list(missing)[:len(named)]
    else:
        assert select_present(parse_block_list(text), sorted(present)) == wanted


def test_huge_ranges_are_intersected_not_expanded():
    everything = parse_block_list("0-18446744073709551615")
    assert everything.ranges == ((0, 2**64 - 1),)
    assert select_present(parse_block_list("5-9,3-6"), list(range(3, 10))) == [3, 4, 5, 6, 7, 8, 9]
    with pytest.raises(UsageError, match=r"no such memory block: 0-2, 10-18446744073709551615$"):
        select_present(everything, list(range(3, 10)))


# Unicode's decimal digits (category Nd) beyond ASCII; listed, not asked of st.characters(), whose
# arguments changed names after Debian 12's hypothesis 6.67 (the package build runs these tests).
NON_ASCII_DIGITS = st.sampled_from([chr(code) for code in range(0x80, 0x110000) if chr(code).isdecimal()])


@given(before=st.text(alphabet="0123456789,-", max_size=6), digit=NON_ASCII_DIGITS,
       after=st.text(alphabet="0123456789,-", max_size=6))
def test_only_ascii_digits_are_digits(before, digit, after):
    with pytest.raises(UsageError):
        parse_blocks_or_size(before + digit + after)


@pytest.mark.parametrize("text", ["0 4", "4 5", " 12", "12 ", "3, 5", "1\t2"])
def test_spaces_are_never_deleted_from_a_block_list(text):
    parsed = None
    try:
        parsed = parse_blocks_or_size(text)
    except UsageError:
        return
    assert isinstance(parsed, SizeRequest)  # ' 12' is a size of 12 bytes, never block 12 or 45


def test_block_lists_and_sizes_are_told_apart():
    assert isinstance(parse_blocks_or_size("3,5-7"), BlockList)
    assert isinstance(parse_blocks_or_size("1G"), SizeRequest)
    with pytest.raises(UsageError, match="larger than 64 bits"):  # a size attempt gets the size parser's reason
        parse_blocks_or_size("99999E")
    with pytest.raises(UsageError, match="is larger than 18446744073709551615"):
        parse_blocks_or_size("9" * 5000)


@given(st.text(max_size=400))
def test_one_line_is_one_terminal_safe_line(text):
    line = one_line(text)
    assert "\n" not in line and not _RAW_CONTROL.search(line)
    assert all(len(word) <= LONG_WORD_LIMIT + 40 for word in line.split())


@given(st.one_of(st.text(max_size=300), st.integers(), st.lists(st.text(max_size=5), max_size=30)))
def test_shown_is_quoted_escaped_and_short(value):
    text = shown(value)
    assert not _RAW_CONTROL.search(text)
    assert len(text) <= 4 * SHOWN_LIMIT + 40  # repr escapes take up to 4 characters per character


@given(st.text(max_size=50))
def test_escaping_keeps_text_without_controls_as_it_is(text):
    escaped = escape_controls(text)
    assert not re.search(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]", escaped)
    if not re.search(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]", text):
        assert escaped == text


@given(st.from_regex(r"\A[0-9]{1,6}(\.[0-9]{0,3})?\Z"))
def test_seconds_are_plain_decimals_in_range(text):
    value = float(text)
    if 0.1 <= value <= 604800:
        assert parse_seconds(text, 0.1) == value
    else:
        with pytest.raises(ValueError, match="expected a number of seconds from 0.1 to 604800"):
            parse_seconds(text, 0.1)


@pytest.mark.parametrize("text", ["nan", "NaN", "inf", "-inf", "1e3", "1_000", "５", "0x10", "", "-1", "1,5", "9" * 400])
def test_seconds_refuse_what_float_would_take(text):
    with pytest.raises(ValueError):
        parse_seconds(text, 0.0)


@given(st.lists(st.text(min_size=1, max_size=8).filter(lambda word: "\x00" not in word), min_size=1, max_size=4))
def test_a_shell_quoted_command_splits_back(argv):
    assert split_command(shlex.join(argv)) == tuple(argv)


@pytest.mark.parametrize("text, reason", [("'", "no closing quotation"), ('a "b', "no closing quotation"),
                                          ("", "non-empty"), ("  ", "non-empty"), ("''", "non-empty")])
def test_commands_that_cannot_run_are_refused(text, reason):
    with pytest.raises(ValueError, match=reason):
        split_command(text)
