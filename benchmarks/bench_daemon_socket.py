"""How fast the daemon's control socket answers `status`, idle and while an offline hangs in the kernel.

A fake kernel (tests/fakesysfs: 2 GiB boot memory, two 512 MiB DIMMs) whose block 39
hangs when offlined; the daemon is asked to resize down, so its writer child sits in the
hanging write, and meanwhile `status` round trips (connect, request, reply) are timed
from this process. The peer is the same round trip with the daemon idle.

Goal (issue 7): the socket answers within 100 ms while an offline hangs.

    .venv/bin/python benchmarks/bench_daemon_socket.py --requests 200
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.daemon_harness import DaemonProcess  # noqa: E402
from tests.fake_cli import VM  # noqa: E402
from tests.fakesysfs import FakeKernel  # noqa: E402
from vmem_agent.daemon import client  # noqa: E402
from vmem_agent.daemon.protocol import Request  # noqa: E402


def round_trips(root: str, count: int) -> list[float]:
    times = []
    for _ in range(count):
        began = time.monotonic()
        client.ask(root, Request("status"), 10.0)
        times.append(time.monotonic() - began)
    return times


def p99(times: list[float]) -> float:
    ordered = sorted(times)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


def summary(times: list[float]) -> str:
    ordered = sorted(times)
    return f"median {statistics.median(ordered) * 1000:6.1f} ms, p99 {p99(times) * 1000:6.1f} ms, max {ordered[-1] * 1000:6.1f} ms"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200)
    args = parser.parse_args()
    with FakeKernel(VM) as kernel:
        root = str(kernel.root)
        daemon = DaemonProcess(kernel, 'kdump = "never"\nevent_source = "udev"\nblock_timeout = 600\n').start()
        try:
            idle = round_trips(root, args.requests)
            kernel.set_offline_behaviour(39, "hang")
            # The resize's reply waits for its job: it is asked from a thread of this process.
            worker = threading.Thread(target=lambda: _ask_quietly(root), daemon=True)
            worker.start()
            daemon.wait_until(lambda: kernel.block(39)["state"] == "going-offline", what="block 39 hanging")
            hanging = round_trips(root, args.requests)
            assert kernel.block(39)["state"] == "going-offline", "the offline stopped hanging during the run"
        finally:
            daemon.close()
    print(f"status over the control socket, {args.requests} round trips each:")
    print(f"  idle daemon:             {summary(idle)}")
    print(f"  offline hanging (child): {summary(hanging)}")
    print(f"  ratio of medians: {statistics.median(hanging) / statistics.median(idle):.2f}; goal p99 < 100 ms: "
          f"{'met' if p99(hanging) < 0.1 else 'NOT met'}")
    return 0


def _ask_quietly(root: str) -> None:
    try:
        client.ask(root, Request("resize", size="2.5G"), 600.0)
    except Exception:  # the daemon stops at the end of the benchmark: the reply is "stopping"
        pass


if __name__ == "__main__":
    raise SystemExit(main())
