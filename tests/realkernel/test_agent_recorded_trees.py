"""The agent over the trees recorded from real guests (tests/data/trees), without a VM.

`capture_tree.py` records what the agent reads (memory blocks, nodes, the ACPI memory
devices and their bus links, the boot E820 table in boot_params, /proc/iomem, the
virtio devices) and what lsmem printed in the live guest.  Here the real CLI runs
with --sysfs-root on each recording: its status must match that lsmem output, and
every block must have the origin the real kernel's signals gave it.  Not a realkernel
test: it needs no QEMU.  Re-capture with `python -m tests.realkernel.capture_tree`
(see docs/testing.md for the command lines of both trees).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from .vm import GUEST_AGENT

TREES = Path(__file__).resolve().parent.parent / "data" / "trees"
G = 1 << 30
M = 1 << 20

# tree -> {block: (state, origin, group)} for the hot-plugged blocks; 0-15 are boot RAM
EXPECTED = {
    "qemu-x86_64-dimm": {n: ("offline", "dimm", "acpi:PNP0C80:00") for n in range(32, 36)},
    "qemu-x86_64-virtio-mem": {
        **{n: ("online", "virtio-mem", "virtio-mem:virtio2") for n in (32, 33)},
        **{n: ("offline", "virtio-mem", "virtio-mem:virtio2") for n in range(34, 38)},
    },
}


def agent(tree: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([GUEST_AGENT, "--sysfs-root", str(TREES / tree), *args],
                          capture_output=True, text=True, timeout=60)


@pytest.fixture(params=sorted(EXPECTED))
def tree(request) -> str:
    if not (TREES / request.param).is_dir():
        pytest.skip(f"{request.param} not recorded")
    return request.param


def test_status_json_matches_the_guests_lsmem(tree: str):
    r = agent(tree, "status", "--json")
    assert r.returncode == 0 and r.stderr == "", r
    doc = json.loads(r.stdout)["memory"]
    lsmem = json.loads((TREES / f"{tree}.lsmem.json").read_text())["memory"]
    ours = [{"range": f"0x{x['start']:016x}-0x{x['end']:016x}", "state": x["state"],
             "block": str(x["first_block"]) if x["first_block"] == x["last_block"]
             else f"{x['first_block']}-{x['last_block']}",
             "node": x["node"], "zones": "/".join("None" if z == "none" else z for z in x["zones"])}
            for x in doc["ranges"]]
    assert ours == [{k: row[k] for k in ("range", "state", "block", "node", "zones")} for row in lsmem]
    # the human summary agrees with the guest's plain `lsmem`
    r = agent(tree, "status")
    assert r.returncode == 0, r
    ours = {k.strip(): v.strip() for k, v in (l.split(":", 1) for l in r.stdout.splitlines() if ":" in l)}
    theirs = {k.strip(): v.strip() for k, v in
              (l.split(":", 1) for l in (TREES / f"{tree}.lsmem.txt").read_text().splitlines() if ":" in l)}
    for label in ("Memory block size", "Total online memory", "Total offline memory"):
        assert ours[label] == theirs[label], label


@pytest.mark.skipif(not shutil.which("lsmem"), reason="lsmem (util-linux) not installed")
def test_lsmem_reads_the_recording_like_the_live_guest(tree: str):
    for args, recorded in ((["--json", "-o", "RANGE,SIZE,STATE,BLOCK,NODE,ZONES"], ".lsmem.json"),
                           ([], ".lsmem.txt")):
        r = subprocess.run(["lsmem", "--sysroot", str(TREES / tree), *args],
                           capture_output=True, text=True, timeout=30)
        assert r.returncode == 0, r.stderr
        assert r.stdout == (TREES / f"{tree}{recorded}").read_text()


def test_status_origins_from_the_recorded_signals(tree: str):
    r = agent(tree, "status", "--json")
    doc = json.loads(r.stdout)["memory"]
    got = {b["index"]: (b["state"], b["origin"], b["group"]) for b in doc["blocks"]}
    expected = {n: ("online", "boot", None) for n in range(16)} | EXPECTED[tree]
    assert got == expected
    assert doc["kexec_crash_loaded"] is False and doc["crash_hotplug"] is None
    assert doc["warnings"] == []


@pytest.mark.parametrize("tree_name,blocks", [
    ("qemu-x86_64-dimm", [32, 33, 34, 35]), ("qemu-x86_64-virtio-mem", [34, 35]),
])
def test_plan_over_the_recording(tree_name: str, blocks: list[int]):
    if not (TREES / tree_name).is_dir():
        pytest.skip(f"{tree_name} not recorded")
    r = agent(tree_name, "plan", "2560M", "--json")
    assert r.returncode == 0, r
    plan = json.loads(r.stdout)["plan"]
    assert [(a["index"], a["zone"], a["write"]) for a in plan["actions"]] == [
        (n, "Movable", "online_movable") for n in blocks]
    assert plan["planned_online_bytes"] == 2 * G + 512 * M


def test_tree_symlinks_are_relative_and_resolve_inside(tree: str):
    root = TREES / tree
    links = 0
    for dirpath, dirnames, filenames in os.walk(root):      # never follows links
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            if not p.is_symlink():
                continue
            links += 1
            target = os.readlink(p)
            assert not os.path.isabs(target), p
            real = p.resolve()
            assert real.exists() and root.resolve() in real.parents, (p, target)
            assert real not in p.parents, p                # no link to its own ancestor
    assert links > 30
    r = subprocess.run(["find", str(root)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stderr == "", r.stderr
    for must in ("sys/kernel/boot_params/data", "sys/kernel/kexec_crash_loaded",
                 "sys/bus/acpi/devices/PNP0C80:00"):
        assert (root / must).exists(), must
    assert (root / "sys/kernel/boot_params/data").stat().st_size == 4096


def test_virtio_mem_tree_has_the_driver_links():
    root = TREES / "qemu-x86_64-virtio-mem"
    if not root.is_dir():
        pytest.skip("not recorded")
    dev = root / "sys/bus/virtio/devices/virtio2"
    assert (dev / "device").read_text().strip() == "0x0018"
    assert os.readlink(dev / "driver") == "../../../../bus/virtio/drivers/virtio_mem"
    assert (dev / "driver").resolve() == (root / "sys/bus/virtio/drivers/virtio_mem").resolve()
    assert "System RAM (virtio_mem)" in (root / "proc/iomem").read_text()
