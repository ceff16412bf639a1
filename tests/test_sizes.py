"""Size parsing, target resolution and lsmem-style formatting."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vmem_agent.errors import UsageError
from vmem_agent.core.sizes import MAX_SIZE, SizeRequest, Target, format_size, parse_size, resolve_target

K, M, G, T = 1 << 10, 1 << 20, 1 << 30, 1 << 40
BLOCK = 128 * M


@pytest.mark.parametrize(
    "text, size, sign",
    [
        ("6G", 6 * G, 0),
        ("6GiB", 6 * G, 0),
        ("6g", 6 * G, 0),
        ("6gib", 6 * G, 0),
        ("6GB", 6 * G, 0),  # binary, whatever the spelling
        ("6gb", 6 * G, 0),
        ("512M", 512 * M, 0),
        ("512MiB", 512 * M, 0),
        ("1.5G", 3 * G // 2, 0),
        (".5G", G // 2, 0),
        ("6442450944", 6 * G, 0),
        ("4096B", 4096, 0),
        ("4096b", 4096, 0),
        ("1.0", 1, 0),
        ("1K", K, 0),
        ("1KiB", K, 0),
        ("2T", 2 * T, 0),
        ("2TiB", 2 * T, 0),
        ("  6G\n", 6 * G, 0),
        ("6 G", 6 * G, 0),
        ("0", 0, 0),
        ("+1G", G, 1),
        ("-512M", 512 * M, -1),
        ("+0", 0, 1),
        ("1.1G", 1181116007, 0),  # 1181116006.4 bytes, rounded up to a whole byte
        (str(MAX_SIZE), MAX_SIZE, 0),
    ],
)
def test_parse_size_accepts(text, size, sign):
    request = parse_size(text)
    assert (request.bytes, request.sign) == (size, sign)
    assert request.relative == (sign != 0)
    assert str(request) == text.strip()


@pytest.mark.parametrize(
    "text",
    [
        "6X", "-", "+", "", "   ", "1e999", "1e3", "inf", "nan", "-inf", "0x10", "1.5", "0.3", "6iB",
        "1Z", "G", "1.G", "1..5G", "1,5G", "1_000", "+-1G", "--1G", "6 G B", "six", "١٢", "6G6",
        str(2**64), "16777216T", "9" * 70,
    ],
)
def test_parse_size_rejects_naming_the_input(text):
    with pytest.raises(UsageError) as raised:
        parse_size(text)
    message = str(raised.value)
    assert repr(text) in message
    assert "\n" not in message


def test_parse_size_can_refuse_relative_sizes():
    assert parse_size("1G", allow_relative=False).bytes == G
    with pytest.raises(UsageError, match="relative"):
        parse_size("+1G", allow_relative=False)


@pytest.mark.parametrize(
    "text, current, expected",
    [
        ("6G", 4 * G, Target(6 * G, 6 * G, False, None)),
        ("+1G", 4 * G, Target(5 * G, 5 * G, False, None)),
        ("-512M", 4 * G, Target(3584 * M, 3584 * M, False, None)),
        ("+0", 4 * G, Target(4 * G, 4 * G, False, None)),
        ("16G", 4 * G, Target(16 * G, 16 * G, False, None)),
        ("1B", 4 * G, Target(BLOCK, 1, True, "1B is not a multiple of the 128M block size: using 128M")),
    ],
)
def test_resolve_target(text, current, expected):
    assert resolve_target(parse_size(text), current, BLOCK, 16 * G) == expected


def test_resolve_target_rounds_up_with_a_note():
    target = resolve_target(parse_size("6.1G"), 4 * G, BLOCK, 16 * G)
    assert target.bytes == 6 * G + BLOCK
    assert target.rounded and target.requested == 6549825127
    assert target.note == "6.1G is not a multiple of the 128M block size: using 6.125G"


def test_resolve_target_relative_note_names_the_base():
    target = resolve_target(parse_size("-200M"), 4 * G, BLOCK, 16 * G)
    assert target.bytes == 4 * G - BLOCK  # 3.805G rounds up: never less memory than asked
    assert target.note == "-200M (from 4G online) is not a multiple of the 128M block size: using 3.875G"


def test_resolve_target_small_relative_shrink_rounds_to_no_change():
    assert resolve_target(parse_size("-100M"), 4 * G, BLOCK, 16 * G).bytes == 4 * G


@pytest.mark.parametrize(
    "text, fragments",
    [
        ("0", ["'0'", "0B"]),
        ("-4G", ["-4G", "from 4G online", "no memory online"]),
        ("-5G", ["-5G", "from 4G online"]),
        ("17G", ["17G", "16G of memory present"]),
        ("+12.1G", ["+12.1G", "16G of memory present"]),
    ],
)
def test_resolve_target_rejects_naming_input_and_limit(text, fragments):
    with pytest.raises(UsageError) as raised:
        resolve_target(parse_size(text), 4 * G, BLOCK, 16 * G)
    for fragment in fragments:
        assert fragment.strip("'") in str(raised.value)


@pytest.mark.parametrize(
    "size, text",
    [
        # Sizes lsmem printed for the recorded trees in /work/shared/sysfs-dumps.
        (0, "0B"), (128 * M, "128M"), (256 * M, "256M"), (896 * M, "896M"), (G, "1G"),
        (1207959552, "1.1G"), (1342177280, "1.3G"), (1610612736, "1.5G"), (1879048192, "1.8G"),
        (2818572288, "2.6G"), (3758096384, "3.5G"), (13958643712, "13G"), (16777216000, "15.6G"),
        (4.75 * G, "4.8G"), (15.75 * G, "15.8G"),
        # Edges of the rounding: thousandths truncated, then half up; a carry into the whole part.
        (1, "1B"), (1023, "1023B"), (K, "1K"), (1536, "1.5K"), (2047, "2K"), (1023 * M + 1000 * K, "1024M"),
        (1075, "1K"), (1076, "1.1K"), (MAX_SIZE, "16E"),
    ],
)
def test_format_size_matches_lsmem(size, text):
    assert format_size(int(size)) == text


@pytest.mark.parametrize(
    "size, text",
    [(0, "0B"), (128 * M, "128M"), (6 * G + BLOCK, "6.125G"), (6 * G + 64 * M, "6208M"), (G + 1, "1073741825B"), (-BLOCK, "-128M")],
)
def test_format_size_exact(size, text):
    assert format_size(size, exact=True) == text


sizes = st.integers(min_value=0, max_value=MAX_SIZE)


@given(sizes)
def test_plain_bytes_round_trip(size):
    assert parse_size(str(size)).bytes == size


@given(sizes, st.sampled_from(["", "+", "-"]))
def test_exact_format_round_trips(size, sign):
    request = parse_size(sign + format_size(size, exact=True))
    assert request.bytes == size
    assert request.sign == {"": 0, "+": 1, "-": -1}[sign]


@given(st.integers(min_value=0, max_value=2**63))  # lsmem rounding must not carry past 64 bits
def test_lsmem_format_parses_back_close(size):
    unit = 1 << (10 * ((size.bit_length() - 1) // 10)) if size else 1
    assert abs(parse_size(format_size(size)).bytes - size) <= unit * 51 // 1000 + 1


@given(st.integers(min_value=0, max_value=2**13), st.sampled_from(["k", "M", "g", "T", "p"]), st.sampled_from(["", "b", "iB", "IB"]))
def test_unit_spellings_agree(number, unit, suffix):
    assert parse_size(f"{number}{unit}{suffix}").bytes == number << (10 * "KMGTP".index(unit.upper()) + 10)


@given(
    block_blocks=st.integers(min_value=1, max_value=64),
    present_blocks=st.integers(min_value=1, max_value=4096),
    data=st.data(),
)
def test_resolved_targets_are_the_smallest_block_multiple_not_below_the_request(block_blocks, present_blocks, data):
    block_size = block_blocks * M
    total = present_blocks * block_size
    current = data.draw(st.integers(min_value=0, max_value=present_blocks)) * block_size
    request = SizeRequest(text="x", bytes=data.draw(st.integers(min_value=0, max_value=2 * total)), sign=data.draw(st.sampled_from([-1, 0, 1])))
    requested = current + request.sign * request.bytes if request.relative else request.bytes
    if requested <= 0 or -(-requested // block_size) * block_size > total:
        with pytest.raises(UsageError):
            resolve_target(request, current, block_size, total)
        return
    target = resolve_target(request, current, block_size, total)
    assert target.bytes % block_size == 0
    assert requested <= target.bytes < requested + block_size
    assert target.rounded == (target.note is not None) == (target.bytes != requested)
