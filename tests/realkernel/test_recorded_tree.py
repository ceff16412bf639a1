"""Consistency of the recorded real-guest tree tests/data/trees/qemu-x86_64-dimm.

No VM needed (not a realkernel test): checks that the capture is a usable
sysroot - util-linux lsmem reads it exactly as it read the live guest - and
that the signals documented in docs/kernel-observations.md are in it.
Re-capture with: .venv/bin/python -m tests.realkernel.capture_tree
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

TREES = Path(__file__).resolve().parent.parent / "data" / "trees"
TREE = TREES / "qemu-x86_64-dimm"
MEM = TREE / "sys/devices/system/memory"


def test_tree_layout():
    assert (MEM / "block_size_bytes").read_text().strip() == "8000000"
    assert (MEM / "auto_online_blocks").read_text().strip() == "offline"
    blocks = {int(p.name[6:]): p for p in MEM.iterdir() if re.fullmatch(r"memory\d+", p.name)}
    assert sorted(blocks) == list(range(16)) + [32, 33, 34, 35]
    for n, p in blocks.items():
        assert (p / "node0").is_symlink()
        assert os.readlink(p / "node0") == "../../node/node0"
        assert (TREE / "sys/devices/system/node/node0" / f"memory{n}").is_symlink()
        state = (p / "state").read_text().strip()
        fw = p / "firmware_node"
        if n >= 32:   # the hot-added DIMM
            assert state == "offline"
            assert (p / "valid_zones").read_text().strip() == "Normal Movable"
            assert fw.is_symlink() and (fw.resolve() / "hid").read_text().strip() == "PNP0C80"
        else:
            assert state == "online" and not fw.exists()
    for skipped in ("probe", "soft_offline_page", "hard_offline_page", "uevent"):
        assert not (MEM / skipped).exists()
    assert "System RAM" in (TREE / "proc/iomem").read_text()
    assert (TREE / "sys/module/memory_hotplug/parameters/online_policy").read_text().strip() \
        == "contig-zones"


@pytest.mark.skipif(not shutil.which("lsmem"), reason="lsmem (util-linux) not installed")
@pytest.mark.parametrize("args,recorded", [
    (["--json", "-o", "RANGE,SIZE,STATE,BLOCK,NODE,ZONES"], "qemu-x86_64-dimm.lsmem.json"),
    ([], "qemu-x86_64-dimm.lsmem.txt"),
])
def test_lsmem_reads_tree_like_the_live_guest(args, recorded):
    r = subprocess.run(["lsmem", "--sysroot", str(TREE), *args], capture_output=True,
                       text=True, timeout=30)
    if r.returncode and "sysroot" in r.stderr:
        pytest.skip(f"lsmem without --sysroot: {r.stderr.strip()}")
    assert r.returncode == 0, r.stderr
    expected = (TREES / recorded).read_text()
    if recorded.endswith(".json"):
        assert json.loads(r.stdout) == json.loads(expected)
    else:
        assert r.stdout == expected
