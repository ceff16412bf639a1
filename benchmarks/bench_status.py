"""Benchmark: `vmem-agent status --json` against `lsmem --json` on the same big trees.

Builds static trees of 16,384 and 65,536 blocks (tests/fakesysfs), then times both
commands alternately, several rounds, and reports medians and the ratio (goal: at most
0.7x lsmem's wall time). Also times `vmem-agent --help` start-up (goal: under 60 ms).
Run: .venv/bin/python benchmarks/bench_status.py [--rounds N]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.fakesysfs.spec import BlockSpec, TreeSpec  # noqa: E402
from tests.fakesysfs.static import build_static_tree  # noqa: E402
from tests.helpers import agent_command  # noqa: E402

SIZES = (16_384, 65_536)
LSMEM_COLUMNS = "RANGE,SIZE,STATE,BLOCK,NODE,ZONES"


def big_spec(blocks: int) -> TreeSpec:
    """A guest with 8 GiB of boot memory and the rest hot-plugged, a quarter of it offline."""
    boot = 64
    specs = [BlockSpec(i, zone="DMA32" if i < 24 else "Normal") for i in range(boot)]
    specs += [
        BlockSpec(i, state="offline" if i % 4 == 0 else "online", zone=None if i % 4 == 0 else "Movable",
                  boot=False, group=("dimm", (i - boot) // 64))
        for i in range(boot, blocks)
    ]
    return TreeSpec(blocks=specs)


def wall_time(argv: list[str]) -> float:
    began = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - began


def compare(root: Path, rounds: int) -> tuple[float, float]:
    ours = [*agent_command(), "--sysfs-root", str(root), "status", "--json"]
    lsmem = ["lsmem", "--sysroot", str(root), "--json", "-o", LSMEM_COLUMNS]
    wall_time(ours), wall_time(lsmem)  # warm the dentry cache for both
    ours_times, lsmem_times = [], []
    for _ in range(rounds):
        ours_times.append(wall_time(ours))
        lsmem_times.append(wall_time(lsmem))
    return statistics.median(ours_times), statistics.median(lsmem_times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--dir", default=None,
                        help="where to build the trees (default: the temp dir; /dev/shm for tmpfs)")
    args = parser.parse_args()
    print(f"{'blocks':>8} {'vmem-agent':>11} {'lsmem':>8} {'ratio':>6}  goal <= 0.70")
    with tempfile.TemporaryDirectory(prefix="bench-status-", dir=args.dir) as scratch:
        print(f"trees in {scratch}")
        for count in SIZES:
            root = build_static_tree(Path(scratch) / f"tree{count}", big_spec(count))
            ours, lsmem = compare(root, args.rounds)
            ratio = ours / lsmem
            print(f"{count:>8} {ours * 1000:>9.0f}ms {lsmem * 1000:>6.0f}ms {ratio:>6.2f}  {'ok' if ratio <= 0.7 else 'MISSED'}")
    help_times = [wall_time([*agent_command(), "--help"]) for _ in range(args.rounds)]
    bare_python = [wall_time([sys.executable, "-c", "pass"]) for _ in range(args.rounds)]
    print(f"vmem-agent --help: {statistics.median(help_times) * 1000:.0f}ms "
          f"(bare python: {statistics.median(bare_python) * 1000:.0f}ms)  goal < 60ms")


if __name__ == "__main__":
    main()
