"""The daemon's burst path on the fake kernel: blocks per second from the first event to the last online.

A fake kernel (tests/fakesysfs, netlink=True: uevents as udevd sends them, in a network
namespace of its own) gets one DIMM of N blocks hot-added at once; the clock runs from
the hot_add to the end of the last `state` write in the fake kernel's write log (also shown:
when the first write began). Onliners:

- daemon: `vmem-agent daemon` with `kernel_onlining = "never"`, so it writes every block
  (its path while it holds a target): one snapshot, one plan, one writer child;
- per-event onliner: a pyudev loop that writes `online_movable` for each `add` event as it
  arrives, what udev rules and the kata agent do (the peer), in the same namespace.

    .venv/bin/python benchmarks/bench_daemon_burst.py --blocks 512 2048 --rounds 3
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.daemon_harness import DaemonProcess  # noqa: E402
from tests.fakesysfs import FakeKernel, TreeSpec  # noqa: E402

FIRST = 64  # the DIMM's first block, above the 2G of boot memory and its hotplug gap
PER_EVENT_ONLINER = r"""
import os, sys, pyudev
root = sys.argv[1]
monitor = pyudev.Monitor.from_netlink(pyudev.Context(), source="udev")
monitor.filter_by("memory")
monitor.start()
print("ready", flush=True)
for device in iter(monitor.poll, None):
    if device.action == "add":
        fd = os.open(f"{root}/sys/devices/system/memory/{device.sys_name}/state", os.O_WRONLY)
        try:
            os.write(fd, b"online_movable")
        except OSError:
            pass
        os.close(fd)
"""


def burst_seconds(kernel: FakeKernel, blocks: int, group: int) -> tuple[float, float]:
    """Hot-add `blocks` as one DIMM: seconds until the last of them was written online, and
    until the first write began."""
    indexes = range(FIRST + group * blocks, FIRST + (group + 1) * blocks)
    before = len(kernel.writes())
    began = time.monotonic()
    kernel.hot_add(indexes, group=("dimm", 10 + group))
    wanted = set(indexes)
    while True:
        writes = [w for w in kernel.writes()[before:] if w["attribute"] == "state" and w["errno"] == 0]
        if wanted <= {w["block"] for w in writes}:
            mine = [w for w in writes if w["block"] in wanted]
            return max(w["end"] for w in mine) - began, min(w["start"] for w in mine) - began
        if time.monotonic() - began > 600:
            raise RuntimeError(f"{blocks} blocks not online within 600 s")
        time.sleep(0.5)  # the clock is the write log's; each look copies the whole log under its lock


def run_onliner(name: str, blocks: int, rounds: int) -> list[tuple[float, float]]:
    results = []
    spec = TreeSpec.vm(boot_gib=2)
    with FakeKernel(spec, netlink=True) as kernel:
        if name == "daemon":
            onliner = DaemonProcess(kernel, 'event_source = "udev"\nkdump = "never"\nkernel_onlining = "never"\n'
                                            'settle = 0.05\n').start()
            stop = onliner.close
        else:
            process = subprocess.Popen(kernel.in_netns([sys.executable, "-c", PER_EVENT_ONLINER, str(kernel.root)]),
                                       stdout=subprocess.PIPE, text=True)
            assert process.stdout.readline().strip() == "ready"

            def stop():
                process.kill()
                process.wait()
        try:
            for round_ in range(rounds):
                results.append(burst_seconds(kernel, blocks, round_))
        finally:
            stop()
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", type=int, nargs="*", default=[512, 2048])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    print(f"{'blocks':>7s} {'onliner':18s} {'median':>9s} {'blocks/s':>9s} {'first write':>12s}")
    for blocks in args.blocks:
        medians = {}
        for name in ("daemon", "per-event onliner"):
            runs = run_onliner(name, blocks, args.rounds)
            medians[name], first = (statistics.median(column) for column in zip(*runs))
            print(f"{blocks:7d} {name:18s} {medians[name]:8.3f}s {blocks / medians[name]:9.0f} {first:11.3f}s",
                  flush=True)
        print(f"{blocks:7d} daemon / per-event: {medians['daemon'] / medians['per-event onliner']:.2f}x the time")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
