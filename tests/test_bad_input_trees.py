"""Bad input from the tree: copies of the recorded guest trees (tests/data/trees) with one file broken.

A file that does not read as the kernel writes it is a broken tree, never the user's
fault: one line naming the file and what was expected, exit 1 (3 for a missing or
unusable block size), and nothing written. The writing command runs for real on its own
copy; tests/badinput.py proves that no file of the tree changed. What the kernel may
legitimately show (odd meminfo lines, memmap_on_memory=force, iomem without addresses)
still works, and control characters in names reach no terminal raw.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.badinput import (
    DIMM_TREE, VIRTIO_MEM_TREE, Expect, check, copy_tree, run_all, run_capped, tree_digest,
)

MEMORY = "sys/devices/system/memory"
PARAMS = "sys/module/memory_hotplug/parameters"
STATUS = ("status",)
STATUS_JSON = ("status", "--json", "--legacy")
ONLINE = ("online", "32-35")  # for real: the tree's DIMM, offline
SHRINK = ("offline", "--force", "15")  # for real: reads MemTotal/MemAvailable first
PLAN = ("plan", "2560M")
DOCTOR = ("doctor",)
# doctor on the recorded trees as they are: one warning, nothing onlines hot-added memory there.
DOCTOR_AS_RECORDED = 10
ESC = "\x1b]0;pwned\x07\x9b2J"  # a terminal title (OSC) and C1 CSI: click strips neither


def write(relative: str, content: str | bytes) -> Callable[[Path], None]:
    def mutate(root: Path) -> None:
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.is_symlink() or path.exists():
            path.unlink()
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return mutate


def remove(relative: str) -> Callable[[Path], None]:
    return lambda root: (root / relative).unlink()


def replace_with(relative: str, make: Callable[[Path], None]) -> Callable[[Path], None]:
    def mutate(root: Path) -> None:
        (root / relative).unlink()
        make(root / relative)
    return mutate


def append(relative: str, text: str) -> Callable[[Path], None]:
    def mutate(root: Path) -> None:
        with open(root / relative, "a") as handle:
            handle.write(text)
    return mutate


def edit(relative: str, old: str, new: str) -> Callable[[Path], None]:
    def mutate(root: Path) -> None:
        path = root / relative
        path.write_text(path.read_text().replace(old, new))
    return mutate


@dataclass(frozen=True)
class Break:
    name: str
    mutate: Callable[[Path], None]
    expect: dict  # command -> Expect
    tree: Path = DIMM_TREE


def broken_everywhere(fragment: str, code: int = 1) -> dict:
    """Read by every command: each fails the same way before anything is written."""
    return {command: Expect(code, fragment) for command in (STATUS, ONLINE, DOCTOR)}


STATE33 = f"{MEMORY}/memory33/state"
BREAKS = [
    # a block's state
    Break("state-garbage", write(STATE33, "garbage\n"),
          broken_everywhere("memory33/state: reads 'garbage', expected one of online, offline, going-offline")),
    Break("state-empty", write(STATE33, ""), broken_everywhere("memory33/state: reads ''")),
    Break("state-escape", write(STATE33, "online\x1b[31m\n"), broken_everywhere("reads 'online\\x1b[31m'")),
    Break("state-fullwidth", write(STATE33, "ｏｎｌｉｎｅ\n"), broken_everywhere("memory33/state: reads")),
    Break("state-case", write(STATE33, "Online\n"), broken_everywhere("reads 'Online'")),
    Break("state-binary", write(STATE33, b"\xff\xfe\x00"), broken_everywhere("memory33/state: reads")),
    Break("state-page", write(STATE33, "x" * 4096), broken_everywhere("(4096 characters)")),
    Break("state-missing", remove(STATE33), broken_everywhere("memory33/state: is missing")),
    Break("state-directory", replace_with(STATE33, lambda path: path.mkdir()), broken_everywhere("Is a directory")),
    Break("state-fifo", replace_with(STATE33, os.mkfifo), broken_everywhere("memory33/state: reads ''")),
    Break("state-loop", replace_with(STATE33, lambda path: path.symlink_to(path.name)),
          broken_everywhere("Too many levels of symbolic links")),
    # a block's zones
    Break("zones-empty-online", write(f"{MEMORY}/memory5/valid_zones", "\n"),
          broken_everywhere("memory5/valid_zones: reads '', expected zone names")),
    Break("zones-bogus", write(f"{MEMORY}/memory33/valid_zones", "Normal Bogus\n"),
          broken_everywhere("reads 'Normal Bogus'")),
    Break("zones-none-and-more", write(f"{MEMORY}/memory33/valid_zones", "none Normal\n"),
          broken_everywhere("reads 'none Normal'")),
    Break("zones-escape", write(f"{MEMORY}/memory33/valid_zones", ESC),
          broken_everywhere("reads '\\x1b]0;pwned\\x07\\\\xc2\\\\x9b2J'")),
    Break("zones-missing-on-one", remove(f"{MEMORY}/memory33/valid_zones"),
          broken_everywhere("memory33/valid_zones: is missing")),
    # the block size
    *(Break(f"block-size-{name}", write(f"{MEMORY}/block_size_bytes", text),
            broken_everywhere("block_size_bytes: unreadable block size", code=3))
      for name, text in (("hex-garbage", "zz\n"), ("empty", ""), ("not-power-of-two", "3\n"), ("too-small", "800\n"),
                         ("fullwidth", "８000000\n"), ("prefix", "0x8000000\n"), ("too-long", "1" * 17),
                         ("negative", "-8000000\n"))),
    Break("block-size-missing", remove(f"{MEMORY}/block_size_bytes"), broken_everywhere("block_size_bytes: missing", 3)),
    Break("memory-dir-is-a-file", lambda root: (os.rename(root / MEMORY, root / "gone"), (root / MEMORY).write_text("")),
          broken_everywhere("no such directory", 3)),
    # the kernel's hotplug settings (once blamed on the user, exit 2)
    *(Break(f"ratio-{name}", write(f"{PARAMS}/auto_movable_ratio", text),
            broken_everywhere(f"auto_movable_ratio: reads {shown}"))
      for name, text, shown in (("negative", "-5\n", "'-5', expected a whole number from 0 to 4294967295"), ("garbage", "garbage\n", "'garbage'"),
                                ("huge", "99999999999\n", "'99999999999'"), ("float", "1e3\n", "'1e3'"),
                                ("fullwidth", "３０１\n", "'\\\\xef\\\\xbc\\\\x93"))),
    Break("online-policy", write(f"{PARAMS}/online_policy", "zigzag\n"),
          broken_everywhere("online_policy: reads 'zigzag', expected one of contig-zones, auto-movable")),
    Break("numa-aware", write(f"{PARAMS}/auto_movable_numa_aware", "maybe\n"),
          broken_everywhere("auto_movable_numa_aware: reads 'maybe', expected Y, N, 1 or 0")),
    Break("memmap", write(f"{PARAMS}/memmap_on_memory", "perhaps\n"), broken_everywhere("memmap_on_memory: reads")),
    Break("memmap-force", write(f"{PARAMS}/memmap_on_memory", "force\n"),  # Linux 6.6+: a real value
          {STATUS: Expect(0), STATUS_JSON: Expect(0)}),
    Break("auto-online", write(f"{MEMORY}/auto_online_blocks", "sometimes\n"),
          broken_everywhere("auto_online_blocks: reads 'sometimes', expected one of offline, online")),
    Break("crash-loaded", write("sys/kernel/kexec_crash_loaded", "2\n"),
          broken_everywhere("kexec_crash_loaded: reads '2', expected Y, N, 1 or 0")),
    Break("crash-hotplug", write(f"{MEMORY}/crash_hotplug", "yes please\n"),
          broken_everywhere("crash_hotplug: reads 'yes please'")),
    Break("crash-size", write("sys/kernel/kexec_crash_size", "-1\n"),
          {DOCTOR: Expect(1, "kexec_crash_size: reads '-1'"), STATUS: Expect(0)}),
    # legacy per-block attributes (status --legacy only)
    Break("phys-device", write(f"{MEMORY}/memory33/phys_device", "zero\n"),
          {STATUS_JSON: Expect(1, "memory33/phys_device: reads 'zero'"), STATUS: Expect(0)}),
    Break("removable", write(f"{MEMORY}/memory33/removable", "2\n"),
          {STATUS_JSON: Expect(1, "memory33/removable: reads '2'")}),
    # /proc/meminfo: read to shrink and by doctor
    *(Break(f"meminfo-{name}", write("proc/meminfo", text),
            {SHRINK: Expect(1, f"meminfo: {fragment}"), DOCTOR: Expect(1, fragment), STATUS: Expect(0)})
      for name, text, fragment in (
          ("total-words", "MemTotal: lots kB\nMemAvailable: 1 kB\n", "MemTotal reads 'lots kB', expected a number of kB"),
          ("negative-available", "MemTotal: 2000000 kB\nMemAvailable: -1000 kB\n", "MemAvailable reads '-1000 kB'"),
          ("zero-total", "MemTotal: 0 kB\nMemAvailable: 0 kB\n", "MemTotal reads 0 kB"),
          ("twice", "MemTotal: 2000000 kB\nMemTotal: 1 kB\nMemAvailable: 1 kB\n", "MemTotal appears more than once"),
          ("overflow", "MemTotal: 99999999999999999999 kB\nMemAvailable: 1 kB\n", "MemTotal reads"),
          ("no-unit", "MemTotal: 2000000\nMemAvailable: 1000000 kB\n", "MemTotal reads '2000000'"),
          ("fullwidth", "MemTotal: ２０００ kB\nMemAvailable: 1 kB\n", "MemTotal reads"),
      )),
    Break("meminfo-odd-lines", write("proc/meminfo", "\n\nMemTotal:  1948096 kB\nodd line\n: 5\nFoo:\n"
                                                     "MemAvailable: 1817844 kB\nHugePages_Total: x\n"),
          {("offline", "--dry-run", "--force", "15"): Expect(0), DOCTOR: Expect(DOCTOR_AS_RECORDED), STATUS: Expect(0)}),
    Break("meminfo-two-lines", write("proc/meminfo", "MemTotal: 1948096 kB\nMemAvailable: 1817844 kB\n"),
          {("offline", "--dry-run", "--force", "15"): Expect(0), DOCTOR: Expect(DOCTOR_AS_RECORDED)}),
    Break("meminfo-no-available", write("proc/meminfo", "MemTotal: 1948096 kB\n"),  # before Linux 3.14
          {("plan", "1920M"): Expect(0), DOCTOR: Expect(DOCTOR_AS_RECORDED)}),  # plans no shrink, and says so on stdout
    # /proc/iomem: read by every snapshot
    Break("iomem-garbage-line", append("proc/iomem", "garbage line\n"),
          broken_everywhere("iomem: line 29 reads 'garbage line', expected 'start-end : name'")),
    Break("iomem-reversed", append("proc/iomem", "2000-1000 : System RAM\n"), broken_everywhere("line 29 reads")),
    Break("iomem-not-hex", append("proc/iomem", "zzzz-ffff : x\n"), broken_everywhere("line 29 reads")),
    Break("iomem-no-addresses", write("proc/iomem", "00000000-00000000 : System RAM\n  00000000-00000000 : virtio0\n"),
          {STATUS: Expect(0, "warning: "), ("online", "--dry-run", "32-35"): Expect(0)}),
    Break("iomem-device-name-escape", edit("proc/iomem", "virtio2", f"virtio2{ESC}"),
          {STATUS: Expect(0), STATUS_JSON: Expect(0), DOCTOR: Expect(DOCTOR_AS_RECORDED)}, VIRTIO_MEM_TREE),
    # directories and names
    Break("leading-zero-block", lambda root: (root / MEMORY / "memory007").mkdir(), {STATUS: Expect(0)}),
    Break("long-block-name", lambda root: (root / MEMORY / ("memory" + "9" * 240)).mkdir(), {STATUS: Expect(0)}),
    Break("acpi-name-escape", lambda root: os.symlink(
        "../../../devices/LNXSYSTM:00/LNXSYBUS:00/PNP0A06:04/PNP0C80:00", root / f"sys/bus/acpi/devices/PNP0C80:{ESC}"),
        {STATUS: Expect(0), ("status", "--blocks"): Expect(0), DOCTOR: Expect(DOCTOR_AS_RECORDED)}),
    Break("node-name-escape", lambda root: (root / f"sys/devices/system/node/node{ESC}").mkdir(), {STATUS: Expect(0)}),
    Break("boot-params-garbage", write("sys/kernel/boot_params/data", b"\xff" * 3000), {STATUS: Expect(0)}),
    # the kernel command line and udev rules (doctor)
    Break("cmdline-huge", write("proc/cmdline", "a" * (1 << 20)), {STATUS: Expect(0), DOCTOR: Expect(DOCTOR_AS_RECORDED)}),
    Break("cmdline-escape", lambda root: (write("proc/cmdline", f"memhp_default_state=online{ESC}\n")(root),
                                          write(f"{MEMORY}/auto_online_blocks", "online\n")(root)),
          {STATUS: Expect(0), DOCTOR: Expect(10)}),
    Break("rules-binary", write("etc/udev/rules.d/99-garbage.rules", bytes(range(256)) * 64), {DOCTOR: Expect(DOCTOR_AS_RECORDED)}),
    Break("rules-name-escape", write(f"etc/udev/rules.d/99-{ESC}.rules",
                                     'SUBSYSTEM=="memory", ACTION=="add", ATTR{state}="online"\n'),
          {DOCTOR: Expect(10), ("doctor", "--json"): Expect(10)}),
    Break("rules-huge", write("etc/udev/rules.d/98-huge.rules", "#" * (2 << 20)), {DOCTOR: Expect(DOCTOR_AS_RECORDED)}),
    Break("rules-fifo", lambda root: ((root / "etc/udev/rules.d").mkdir(parents=True),
                                      os.mkfifo(root / "etc/udev/rules.d/97-fifo.rules")), {DOCTOR: Expect(DOCTOR_AS_RECORDED)}),
    Break("rules-directory", lambda root: (root / "etc/udev/rules.d/96-dir.rules").mkdir(parents=True),
          {DOCTOR: Expect(DOCTOR_AS_RECORDED)}),
]

CASES = [(brk, command) for brk in BREAKS for command in brk.expect]


@pytest.fixture(scope="module")
def tree_table(tmp_path_factory):
    """Every case, side by side: one copy per break, shared by its commands, none of which may change it."""
    roots = {}
    for brk in BREAKS:
        roots[brk.name] = copy_tree(brk.tree, tmp_path_factory.mktemp(brk.name) / "root")
        brk.mutate(roots[brk.name])
    before = {name: tree_digest(root) for name, root in roots.items()}
    results = run_all([lambda brk=brk, command=command: run_capped(roots[brk.name], *command) for brk, command in CASES])
    after = {name: tree_digest(root) for name, root in roots.items()}
    return {(brk.name, command): result for (brk, command), result in zip(CASES, results)}, before, after


@pytest.mark.parametrize("brk, command", CASES, ids=[f"{brk.name}:{' '.join(c)}" for brk, c in CASES])
def test_broken_tree(tree_table, brk, command):
    results, before, after = tree_table
    check(results[(brk.name, command)], brk.expect[command])
    assert after[brk.name] == before[brk.name], f"{brk.name}: a file of the tree changed"


def test_an_error_after_writes_is_reported_with_the_writes(tmp_path):
    """A plain-file tree reads back `online_movable` where the kernel shows `online`: the run stops
    after its writes, prints them, and exits 64 with the one line that says why."""
    root = copy_tree(DIMM_TREE, tmp_path / "root")
    proc = run_capped(root, *ONLINE)
    check(proc, Expect(64, "stopped after changing blocks: "))
    assert "memory32/state: reads 'online_movable'" in proc.stderr.decode()
    assert b"memory blocks 32-35 (0x100000000-0x11fffffff): online_movable done" in proc.stdout
    assert (root / f"{MEMORY}/memory32/state").read_text() == "online_movable"


GENERATED_TARGETS = [STATE33, f"{MEMORY}/memory5/valid_zones", f"{MEMORY}/memory33/valid_zones",
                     f"{MEMORY}/block_size_bytes", f"{MEMORY}/auto_online_blocks", f"{PARAMS}/online_policy",
                     f"{PARAMS}/auto_movable_ratio", f"{PARAMS}/auto_movable_numa_aware", "sys/kernel/kexec_crash_loaded",
                     "proc/meminfo", "proc/iomem", "proc/cmdline"]
CONTENT = st.one_of(
    st.binary(max_size=64),
    st.text(max_size=40).map(lambda text: text.encode("utf-8", "replace")),  # surrogates cannot be UTF-8
    st.sampled_from([b"online", b"offline", b"going-offline", b"Normal Movable", b"8000000", b"301", b"Y",
                     b"1", b"auto-movable", b"MemTotal: 1 kB\nMemAvailable: 1 kB"]).flatmap(
        lambda good: st.tuples(st.just(good), st.binary(max_size=4)).map(lambda pair: pair[0] + pair[1])),
)


GENERATED_BATCH = 8


@settings(max_examples=5, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                HealthCheck.function_scoped_fixture])
@given(breaks=st.lists(st.tuples(st.sampled_from(GENERATED_TARGETS), CONTENT),
                       min_size=GENERATED_BATCH, max_size=GENERATED_BATCH))
def test_generated_tree_contents(tmp_path_factory, breaks):
    """Any content in any of the files the agent reads: status and a real online end by the contract,
    and the online writes nothing when it fails (a plain-file tree that it wrote to stops it with 64)."""
    roots = []
    for target, content in breaks:
        root = copy_tree(DIMM_TREE, tmp_path_factory.mktemp("generated") / "root")
        write(target, content)(root)
        roots.append(root)
    results = run_all([lambda root=root, command=command: run_capped(root, *command)
                       for root in roots for command in (STATUS, ONLINE)])
    for root, status, online in zip(roots, results[0::2], results[1::2]):
        assert status.returncode in (0, 1, 3), status
        check(status, Expect(status.returncode, _line_for(status)))
        assert online.returncode in (1, 2, 3, 64), online
        check(online, Expect(online.returncode, _line_for(online)))
        if online.returncode != 64:
            assert (root / f"{MEMORY}/memory32/state").read_text() == "offline\n", "written after an error"


def _line_for(proc) -> str | None:
    """Usage and unsupported-root errors always have their line; a run's outcome may be on stdout only."""
    if proc.returncode in (2, 3) or proc.stderr:
        return "vmem-agent: "
    return None
