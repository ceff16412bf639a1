"""Bad input from the user: arguments, options, environment variables, and where the output goes.

The real `vmem-agent` runs against the fake kernel (tests/fake_cli.py's VM: blocks 0-15
boot memory, 32-39 two offline DIMMs); the contract of every case is tests/badinput.py,
and its write log proves that nothing was written. Bad cases run without --dry-run (a
check that came too late would write), cases that are fine with it.
"""

from __future__ import annotations

import json
import os
import pty
import subprocess

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.badinput import Case, Expect, KernelBatch, check, check_on_fake_kernel, run_all, run_capped
from tests.fake_cli import VM
from tests.fakesysfs import TreeSpec
from vmem_agent import paths
from vmem_agent.core.blocklists import parse_blocks_or_size
from vmem_agent.core.sizes import parse_size
from vmem_agent.errors import VmemError

USAGE, FAILED, UNSUPPORTED = 2, 1, 3
BIG = "9" * 100_000  # a 100 KB argument
ESC = "\x1b[2J\x1b]0;pwned\x07\x9b31m"  # clear screen, a terminal title, C1 CSI: must reach no terminal raw
ESC_SHOWN = "'\\x1b[2J\\x1b]0;pwned\\x07\\x9b31m'"
GENERATED_BATCH = 8  # generated inputs per example, run side by side
GENERATED = settings(max_examples=6, deadline=None,
                     suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])

# -- the tables: every case runs for real (no --dry-run unless it is fine), all side by side ------------

BLOCK_CASES = [
    ("４", Expect(USAGE, "invalid block list or size '４'")),  # a fullwidth digit is no digit
    ("٤", Expect(USAGE, "invalid block list or size")),  # nor an Arabic-Indic one
    ("3２", Expect(USAGE, "invalid block list or size")),
    ("0 4", Expect(USAGE, "invalid block list or size '0 4'")),  # no silent space deletion
    ("4 5", Expect(USAGE, "invalid block list or size '4 5'")),
    ("32, 33", Expect(USAGE, "invalid block list or size")),
    ("32,,33", Expect(USAGE, "invalid block list '32,,33'")),
    (",", Expect(USAGE, "invalid block list")),
    ("32-", Expect(USAGE, "invalid block list '32-'")),
    ("32--33", Expect(USAGE, "invalid block list")),
    ("32-33-34", Expect(USAGE, "invalid block list")),
    ("35-32", Expect(USAGE, "invalid block range '35-32'")),
    ("", Expect(USAGE, "invalid block list or size ''")),
    (" 32", Expect(USAGE, "not a multiple of the 128M block size")),  # a size of 32 bytes
    ("1e3", Expect(USAGE, "invalid size '1e3'")),
    ("0x20", Expect(USAGE, "invalid block list or size '0x20'")),
    ("32\x1b[31m", Expect(USAGE, "invalid block list or size '32\\x1b[31m'")),
    ("9" * 5000, Expect(USAGE, "is larger than 18446744073709551615")),
    ("18446744073709551616", Expect(USAGE, "is larger than")),
    ("0-99999999999999999999999", Expect(USAGE, "is larger than")),
    ("0-999999999", Expect(USAGE, "no such memory block: 16-31, 40-999999999")),  # bounded: intersected
    ("0-18446744073709551615", Expect(USAGE, "no such memory block: 16-31, 40-18446744073709551615")),
    (",".join(str(i) for i in range(100, 30_000, 2)), Expect(USAGE, "no such memory block: 100, 102, 104")),
    ("9999", Expect(USAGE, "no such memory block: 9999")),
    ("16-31", Expect(USAGE, "no such memory block: 16-31")),
    (BIG, Expect(USAGE, "characters)")),
    ("x" * 100_000, Expect(USAGE, "(100000 characters)")),
    ("+1G", Expect(USAGE, "a relative size (+/-) is not allowed here")),
    ("1X", Expect(USAGE, "invalid block list or size '1X'")),
    ("0M", Expect(USAGE, "nothing to")),
    ("100M", Expect(USAGE, "not a multiple")),
    ("99999E", Expect(USAGE, "larger than 64 bits")),
    ("nan", Expect(USAGE, "invalid block list or size 'nan'")),
    (ESC, Expect(USAGE, f"invalid block list or size {ESC_SHOWN}")),
    (os.fsdecode(b"3\xff\xfe"), Expect(USAGE, "invalid block list or size '3\\udcff\\udcfe'")),  # not UTF-8
]
SIZE_CASES = [
    ("nan", "invalid size 'nan'"), ("inf", "invalid size 'inf'"), ("1e9G", "invalid size"), ("６G", "invalid size"),
    ("1.5.5G", "invalid size"), ("+", "invalid size '+'"), ("1G1", "invalid size"), ("1GiBB", "invalid size"),
    ("1iB", "'iB' needs a unit letter"), ("99999E", "larger than 64 bits"), ("0", "leaves no memory online"),
    ("1.5", "a fraction of a byte"), ("ＧＧ", "invalid size"), (ESC, f"invalid size {ESC_SHOWN}"),
    (BIG, "characters)"), ("1T", "more than the 3G of memory present"), ("+999T", "more than the"),
    ("0x40000000", "invalid size"), ("", "invalid size ''"), (" ", "invalid size"),
    (os.fsdecode(b"1\xffG"), "invalid size '1\\udcffG'"),
]
PARSING_CASES = [
    (("resize", "-999T"), Expect(USAGE, "leaves no memory online")),
    (("resize", "-5X"), Expect(USAGE, "invalid size '-5X'")),  # a negative size, not an option
    (("plan", "-.5Q"), Expect(USAGE, "invalid size '-.5Q'")),
    (("resize", "--sizee", "1G"), Expect(USAGE, "no such option '--sizee'")),  # click's own, in our style
    (("plan", "--zon", "movable", "2G"), Expect(USAGE, "no such option '--zon'")),
    (("resize", "--dry-runn", "2G"), Expect(USAGE, "did you mean")),
    (("resize", "-x", "2G"), Expect(USAGE, "no such option")),
    (("resize", "--reserve", "-1G", "2G"), Expect(USAGE, "'--reserve': invalid size '-1G': a relative size")),
    (("resize", "2G", "3G"), Expect(USAGE, "unexpected extra argument")),
    (("resize", "-128M", "2G"), Expect(USAGE, "unexpected extra argument")),
    (("resize",), Expect(USAGE, "resize needs a SIZE or --clear")),
    (("resize", "--clear", "2G"), Expect(USAGE, "resize needs a SIZE or --clear")),
    (("resize", "--clear", "--dry-run"), Expect(USAGE, "--clear has no --dry-run")),
    (("plan",), Expect(USAGE, "missing argument 'SIZE'")),
    (("statu",), Expect(USAGE, "no such command 'statu'; did you mean 'status'?")),
    ((), Expect(USAGE, "missing command")),
    (("status", "--blah"), Expect(USAGE, "status: no such option '--blah'")),
    (("status", "extra"), Expect(USAGE, "unexpected extra argument (extra)")),
    (("status", BIG), Expect(USAGE, "characters)")),
    (("--no-such-global", "status"), Expect(USAGE, "no such option")),
    (("reconcile",), Expect(FAILED, "no vmem-agent daemon is running for this root")),
    (("daemon", "--config"), Expect(USAGE, "requires an argument")),
    # what is fine stays fine
    (("resize", "--dry-run", "-128M"), Expect(FAILED)),  # only boot memory is online: the plan falls short
    (("resize", "-128M", "--dry-run", "--zone", "normal"), Expect(FAILED)),
    (("resize", "--dry-run", "--", "-128M"), Expect(FAILED)),
    (("resize", "--dry-run", "+256M"), Expect(0)),
    (("plan", "--zone", "normal", "-0M"), Expect(0)),
    (("online", "--dry-run", "32-33,33-34"), Expect(0)),  # overlapping ranges are one range
    (("online", "--dry-run", "39,32"), Expect(0)),
    (("online", "--dry-run", "0-15"), Expect(0)),  # online already: nothing to do
    (("offline", "--dry-run", "5"), Expect(FAILED)),  # boot memory: refused on stdout, no error line
    (("online", "--dry-run", "256M"), Expect(0)),
]
OPTION_CASES = [
    (("--timeout", "nan"), "'--timeout': expected a number of seconds from 0.1 to 604800, not 'nan'"),
    (("--timeout", "inf"), "not 'inf'"), (("--timeout", "-1"), "not '-1'"), (("--timeout", "0"), "not '0'"),
    (("--timeout", "1e400"), "not '1e400'"), (("--timeout", "0x10"), "not '0x10'"), (("--timeout", "５"), "not '５'"),
    (("--timeout", ""), "not ''"), (("--timeout", "999999999"), "not '999999999'"), (("--timeout", "1,5"), "not '1,5'"),
    (("--timeout", BIG), "characters)"),
    (("--block-timeout", "nan"), "'--block-timeout'"), (("--block-timeout", "inf"), "'--block-timeout'"),
    (("--block-timeout", "0.01"), "from 0.1"),
    (("--wait", "nan"), "'--wait'"), (("--wait", "-1"), "'--wait'"), (("--wait", "inf"), "'--wait'"),
    (("--movable-ratio", "-5"), "'--movable-ratio': expected a whole percentage"),
    (("--movable-ratio", "５"), "percentage"), (("--movable-ratio", "1e3"), "percentage"),
    (("--movable-ratio", "100001"), "percentage"), (("--movable-ratio", "9" * 5000), "characters)"),
    (("--reserve", "nan"), "'--reserve': invalid size 'nan'"), (("--reserve", "-1G"), "relative"),
    (("--min-online", "1X"), "'--min-online': invalid size '1X'"),
    (("--zone", "Movable"), "'--zone'"), (("--zone", "x" * 100_000), "characters)"),
    (("--kdump", "sometimes"), "'--kdump'"),
    (("--kdump-command", 'kdumpctl "reload'), "'--kdump-command': cannot split 'kdumpctl \"reload' into a command"),
    (("--kdump-command", ""), "expected a non-empty command"), (("--kdump-command", "   "), "non-empty command"),
    (("--kdump-command", "'"), "no closing quotation"),
    (("--lock-file", "/dev/null"), "'/dev/null' is not a regular file"), (("--lock-file", "/"), "not a regular file"),
    (("--lock-file", ""), "expected a path"),
]
ENVIRONMENT_CASES = [
    ("VMEM_AGENT_BLOCK_TIMEOUT", "nan", "'--block-timeout'"),
    ("VMEM_AGENT_ZONE", "sideways", "'--zone'"),
    ("VMEM_AGENT_MOVABLE_RATIO", "-1", "'--movable-ratio'"),
    ("VMEM_AGENT_RESERVE", "lots", "'--reserve': invalid size 'lots'"),
    ("VMEM_AGENT_MIN_ONLINE", "+1G", "relative"),
    ("VMEM_AGENT_KDUMP", "x", "'--kdump'"),
    ("VMEM_AGENT_KDUMP_COMMAND", '"', "'--kdump-command'"),
    ("VMEM_AGENT_LOCK_FILE", "/dev/null", "'--lock-file'"),
]
SAME_PARSER_TOO = 8  # the first cases of a table also go through the other command with the same argument type

TABLE = [
    *(Case(f"online-{n}", ("online", spec), expect) for n, (spec, expect) in enumerate(BLOCK_CASES)),
    *(Case(f"offline-{n}", ("offline", spec), expect) for n, (spec, expect) in enumerate(BLOCK_CASES[:SAME_PARSER_TOO])),
    *(Case(f"resize-{n}", ("resize", size), Expect(USAGE, fragment)) for n, (size, fragment) in enumerate(SIZE_CASES)),
    *(Case(f"plan-{n}", ("plan", size), Expect(USAGE, fragment))
      for n, (size, fragment) in enumerate(SIZE_CASES[:SAME_PARSER_TOO])),
    *(Case(f"parse-{' '.join(args)[:40]}", args, expect) for args, expect in PARSING_CASES),
    *(Case(f"option-online-{n}", ("online", *option, "32"), Expect(USAGE, fragment))
      for n, (option, fragment) in enumerate(OPTION_CASES)),
    *(Case(f"option-resize-{n}", ("resize", *option, "2560M"), Expect(USAGE, fragment))
      for n, (option, fragment) in enumerate(OPTION_CASES[:SAME_PARSER_TOO])),
    *(Case(f"env-{variable}", ("online", "32"), Expect(USAGE, fragment), {variable: value})
      for variable, value, fragment in ENVIRONMENT_CASES),
]


@pytest.fixture(scope="module")
def table(idle_kernel):
    return KernelBatch(idle_kernel, TABLE)


@pytest.mark.parametrize("case", TABLE, ids=[case.id for case in TABLE])
def test_bad_arguments(table, case):
    table.check(case)


ROOT_CASES = [
    ("empty", "", Expect(USAGE, "'--sysfs-root': expected a directory")),
    ("missing", "/nonexistent/root", Expect(UNSUPPORTED, "does not exist")),
    ("file", "/dev/null", Expect(UNSUPPORTED, "does not exist or is not a directory")),
    ("no-memory", "/proc/self", Expect(UNSUPPORTED, "no such directory")),
    ("control", f"/tmp/{ESC}", Expect(UNSUPPORTED, "\\x1b[2J")),
]
ROOT_TABLE = [Case(f"{name}-{command[0]}", command, expect, {"VMEM_AGENT_SYSFS_ROOT": root})
              for name, root, expect in ROOT_CASES for command in (("status",), ("online", "32"), ("doctor",))]


@pytest.fixture(scope="module")
def root_table():
    results = run_all([lambda case=case: run_capped(case.env["VMEM_AGENT_SYSFS_ROOT"] or "", *case.args)
                       for case in ROOT_TABLE])
    return dict(zip((case.id for case in ROOT_TABLE), results))


@pytest.mark.parametrize("case", ROOT_TABLE, ids=[case.id for case in ROOT_TABLE])
def test_bad_roots(root_table, case):
    check(root_table[case.id], case.expect)


def test_an_empty_root_variable_is_refused_not_taken_for_the_real_root():
    """Read-only on purpose: were the check gone, this would read this machine's own /sys."""
    proc = run_capped(None, "status", env={"VMEM_AGENT_SYSFS_ROOT": ""})
    check(proc, Expect(USAGE, "VMEM_AGENT_SYSFS_ROOT is set but empty; unset it to mean /"))


def test_help_and_version_still_print():
    for args in (("--help",), ("resize", "--help"), ("--version",)):
        proc = run_capped(None, *args)
        check(proc, Expect(0))
        assert proc.stdout


def test_a_fifo_as_lock_file_is_refused_before_anything_is_written(idle_kernel, tmp_path):
    fifo = tmp_path / "lock"
    os.mkfifo(fifo)
    check_on_fake_kernel(idle_kernel, ("online", "--lock-file", str(fifo), "32"), Expect(USAGE, "not a regular file"))


# -- generated inputs: batches of them per example, side by side ------------------------------------


def _blocks_args(spec: str) -> tuple[str, ...]:
    """Valid syntax runs as a dry run (it may name blocks that exist), anything else for real."""
    try:
        parse_blocks_or_size(spec)
    except VmemError:
        return ("online", spec)
    return ("online", "--dry-run", spec)


def _size_args(size: str) -> tuple[str, ...]:
    try:
        parse_size(size)
    except VmemError:
        return ("resize", size)
    return ("resize", "--dry-run", size)


def _arguments(text: st.SearchStrategy) -> st.SearchStrategy:
    """Arguments a shell can pass: no NUL, and no leading dash (click would take an option)."""
    return text.filter(lambda value: "\x00" not in value and not value.startswith("-"))


BLOCK_TEXT = _arguments(st.one_of(
    st.text(alphabet=st.sampled_from("0123456789-, ４٤\t\x1b KMGiB+.x"), max_size=40),
    st.from_regex(r"\A[0-9]{1,30}(-[0-9]{1,30})?(,[0-9]{1,30}(-[0-9]{1,30})?){0,5}\Z"),
    st.text(max_size=30),
))
SIZE_TEXT = _arguments(st.one_of(
    st.from_regex(r"\A\+?[0-9]{0,25}(\.[0-9]{0,5})?\s?[KMGTPEkmgtpeX]?(i?B)?\Z"),
    st.text(alphabet=st.sampled_from("0123456789.+KMGTPEiBb ６\x1bn"), max_size=20),
))
OPTION_VALUE = st.tuples(
    st.sampled_from(["--timeout", "--block-timeout", "--wait", "--movable-ratio", "--reserve", "--min-online",
                     "--kdump-command", "--zone", "--lock-file"]),
    st.one_of(st.text(max_size=12), st.from_regex(r"\A-?[0-9]{0,400}(\.[0-9]*)?(e[0-9]+)?\Z"),
              st.sampled_from(["nan", "inf", "-inf", "NaN", "1e308", "1_000", "0.0", "604800.1", "/dev/zero"])),
).filter(lambda pair: "\x00" not in pair[1] and not (pair[1].startswith("-") and not pair[1][1:2].isdigit()))


def _check_generated(kernel, cases: list[Case]) -> list[str | None]:
    """A dry run may end 0, 1 (a plan that falls short) or 2; a real run of a bad input only with 2."""
    batch = KernelBatch(kernel, cases)
    lines = []
    for case in cases:
        proc = batch.results[case.id]
        assert proc.returncode in ((0, FAILED, USAGE) if "--dry-run" in case.args else (USAGE,)), (case, proc)
        lines.append(check(proc, Expect(proc.returncode, "vmem-agent: " if proc.returncode == USAGE else None)))
    assert batch.writes == [], batch.writes
    return lines


@GENERATED
@given(specs=st.lists(BLOCK_TEXT, min_size=GENERATED_BATCH, max_size=GENERATED_BATCH))
def test_generated_block_lists(idle_kernel, specs):
    _check_generated(idle_kernel, [Case(str(n), _blocks_args(spec), Expect(0)) for n, spec in enumerate(specs)])


@GENERATED
@given(sizes=st.lists(SIZE_TEXT, min_size=GENERATED_BATCH, max_size=GENERATED_BATCH))
def test_generated_sizes(idle_kernel, sizes):
    _check_generated(idle_kernel, [Case(str(n), _size_args(size), Expect(0)) for n, size in enumerate(sizes)])


@GENERATED
@given(options=st.lists(OPTION_VALUE, min_size=GENERATED_BATCH, max_size=GENERATED_BATCH))
def test_generated_option_values(idle_kernel, options):
    """Any value: a usage error naming the option, or accepted, and then block 16 does not exist."""
    cases = [Case(str(n), ("online", option, value, "16"), Expect(USAGE)) for n, (option, value) in enumerate(options)]
    for (option, _value), line in zip(options, _check_generated(idle_kernel, cases)):
        assert option in line or "no such memory block: 16" in line, line


# -- where the output goes --------------------------------------------------------------------------


def closed_pipe():
    """A pipe whose reader is gone: writing to it is EPIPE (SIGPIPE is ignored by Python)."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    return write_end


def hung_up_terminal():
    """A terminal whose other side is closed: writing to it is EIO."""
    controller, terminal = pty.openpty()
    os.close(controller)
    return terminal


@pytest.mark.parametrize("args", [("status",), ("status", "--json"), ("plan", "2560M"), ("doctor",), ("--help",)],
                         ids=["status", "json", "plan", "doctor", "help"])
@pytest.mark.parametrize("target, expect", [
    (closed_pipe, Expect(141)),  # quiet, as a process killed by SIGPIPE shows in a shell
    (lambda: os.open("/dev/full", os.O_WRONLY), Expect(FAILED, "vmem-agent: write error: No space left on device")),
    (hung_up_terminal, Expect(FAILED, "vmem-agent: write error: Input/output error")),
], ids=["epipe", "enospc", "eio"])
def test_output_errors_end_like_util_linux(idle_kernel, args, target, expect):
    fd = target()
    try:
        check_on_fake_kernel(idle_kernel, args, expect, stdout=fd)
    finally:
        os.close(fd)


def test_a_closed_stdout_is_a_write_error_and_nothing_else_is_written_to_it(idle_kernel):
    proc = subprocess.run(["sh", "-c", 'exec "$@" >&-', "sh", *run_argv(idle_kernel.root, "status")],
                          capture_output=True, timeout=30)
    check(proc, Expect(FAILED, "write error: Bad file descriptor"))


def test_a_broken_stderr_keeps_the_exit_code(idle_kernel):
    with open("/dev/full", "wb") as full:
        proc = subprocess.run(run_argv(idle_kernel.root, "online", "４"), stdout=subprocess.PIPE, stderr=full,
                              timeout=30)
    assert proc.returncode == USAGE and proc.stdout == b""
    assert idle_kernel.writes() == []


def run_argv(root, *args):
    from tests.helpers import agent_command

    return [*agent_command(), "--sysfs-root", str(root), *args]


@pytest.mark.fake_kernel(VM)
@pytest.mark.parametrize("target, expect", [
    (closed_pipe, Expect(0)),  # the blocks were written: the run's exit code, not 141
    (lambda: os.open("/dev/full", os.O_WRONLY), Expect(0, "write error: No space left on device")),
], ids=["epipe", "enospc"])
def test_an_output_error_after_writes_keeps_the_runs_exit_code(fake_kernel, target, expect):
    fd = target()
    try:
        check_on_fake_kernel(fake_kernel, ("resize", "2560M"), expect, stdout=fd, allow_writes=True)
    finally:
        os.close(fd)
    assert [fake_kernel.block(i)["state"] for i in range(32, 36)] == ["online"] * 4
    assert [w["value"] for w in fake_kernel.writes()] == ["online_movable"] * 4


# -- the overall deadline, and the stored target -----------------------------------------------------


@pytest.mark.fake_kernel(TreeSpec.vm(boot_gib=2, dimm_gib=(0.5,), kexec_crash_loaded=True))
def test_the_overall_deadline_bounds_the_kdump_reload(fake_kernel):
    """A 60 s reload command under --timeout 2: the run ends well within the case's 30 s."""
    proc = run_capped(fake_kernel.root, "online", "--json", "--timeout", "2", "--kdump", "always",
                      "--kdump-command", "sleep 60", "32")
    check(proc, Expect(0, "vmem-agent: warning: kdump reload failed: timed out after"))
    kdump = json.loads(proc.stdout)["result"]["kdump"]
    assert kdump["action"] == "failed" and "overall deadline" in kdump["reason"], kdump


@pytest.mark.fake_kernel(VM)
def test_a_corrupt_stored_target_is_one_warning_for_status(fake_kernel):
    state_dir = paths.state_dir(str(fake_kernel.root))
    os.makedirs(state_dir, exist_ok=True)
    with open(os.path.join(state_dir, paths.TARGET_FILE_NAME), "wb") as handle:
        handle.write(b"\x1b[2J{not json")
    try:
        check_on_fake_kernel(fake_kernel, ("status",), Expect(0, "warning: "))
    finally:
        os.unlink(os.path.join(state_dir, paths.TARGET_FILE_NAME))
