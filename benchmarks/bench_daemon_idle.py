"""Idle cost of the daemon: resident memory and CPU per idle minute, against peers in the same run.

Starts `vmem-agent daemon` on a fake kernel (tests/fakesysfs; 2 GiB boot memory and two
1 GiB DIMMs, 48 blocks) in a network namespace of its own, waits for READY=1, then samples
it for --seconds (default 300) without touching it. Peers, sampled over the same window:
a bare Python interpreter sleeping (the floor any Python daemon pays) and `udevadm
monitor --kernel --subsystem-match=memory` (a C program watching the same events).

Goals (issue 7): RSS at most 22 MiB, CPU at most 10 ms per idle minute.

    .venv/bin/python benchmarks/bench_daemon_idle.py --seconds 300
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.daemon_harness import DaemonProcess  # noqa: E402
from tests.fakesysfs import FakeKernel, TreeSpec  # noqa: E402
from tests.helpers import agent_command  # noqa: E402

MIB = 1 << 20


def cpu_seconds(process: psutil.Process) -> float:
    times = process.cpu_times()
    return times.user + times.system


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=300.0)
    parser.add_argument("--reconcile-interval", type=float, default=60.0)
    parser.add_argument("--event-source", choices=("kernel", "udev"), default="udev",
                        help="udev (default here): a private network namespace hears no udev messages, so the "
                             "daemon's own cost is measured; kernel: every kernel uevent of this machine (FUSE "
                             "mounts of other jobs, ...) reaches every namespace and wakes it")
    args = parser.parse_args()

    # Byte-code as an installed package has it (a checkout run with PYTHONDONTWRITEBYTECODE
    # compiles every module at each start, and the compiler's memory stays in the process).
    cache = tempfile.mkdtemp(prefix="vmem-bench-pycache-")
    bytecode = {"PYTHONPYCACHEPREFIX": cache}
    environment = {key: value for key, value in os.environ.items() if key != "PYTHONDONTWRITEBYTECODE"}
    # With a prefix every module's bytecode lives there (the stdlib's too): an import of all the
    # daemon uses fills it, as an installed package's byte-compiled files are there from the start.
    warm = "import vmem_agent.cli.commands, vmem_agent.daemon.main, vmem_agent.daemon.loop, pyudev"
    subprocess.run([sys.executable, "-c", warm], check=True, env={**environment, **bytecode})
    empty_config = Path(cache) / "empty.toml"
    empty_config.write_text("")
    subprocess.run([*agent_command(), "daemon", "--check-config", "--config", str(empty_config)], check=True,
                   stdout=subprocess.DEVNULL, env={**environment, **bytecode})
    with FakeKernel(TreeSpec.vm(boot_gib=2, dimm_gib=(1, 1))) as kernel:
        daemon = DaemonProcess(kernel, f'kdump = "never"\nreconcile_interval = {args.reconcile_interval}\n'
                                       f'event_source = "{args.event_source}"\n', env=bytecode)
        daemon.env.pop("PYTHONDONTWRITEBYTECODE", None)
        peers = {}
        try:
            daemon.start()
            peers["python sleeping"] = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(10**6)"],
                                                        env={**environment, **bytecode})
            if shutil.which("udevadm"):
                peers["udevadm monitor"] = subprocess.Popen(
                    ["unshare", "--net", "udevadm", "monitor", "--kernel", "--subsystem-match=memory"],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(2.0)  # past start-up
            processes = {"vmem-agent daemon": psutil.Process(daemon.process.pid)}
            processes.update((name, psutil.Process(proc.pid)) for name, proc in peers.items())
            before = {name: cpu_seconds(p) for name, p in processes.items()}
            began = time.monotonic()
            peak = {name: 0 for name in processes}
            while time.monotonic() - began < args.seconds:
                for name, process in processes.items():
                    peak[name] = max(peak[name], process.memory_info().rss)
                time.sleep(1.0)
            minutes = (time.monotonic() - began) / 60
            print(f"idle for {args.seconds:g}s, reconcile every {args.reconcile_interval:g}s, "
                  f"event source {args.event_source}, {os.cpu_count()} CPUs, "
                  f"load {os.getloadavg()[0]:.2f}")
            print(f"{'process':20s} {'peak RSS':>10s} {'CPU ms/idle min':>16s}")
            for name, process in processes.items():
                cpu = (cpu_seconds(process) - before[name]) * 1000 / minutes
                print(f"{name:20s} {peak[name] / MIB:8.1f}Mi {cpu:16.2f}")
            daemon_rss = peak["vmem-agent daemon"] / MIB
            floor = peak["python sleeping"] / MIB
            print(f"daemon RSS / bare Python: {daemon_rss / floor:.2f}x; goal RSS <= 22 MiB: "
                  f"{'met' if daemon_rss <= 22 else 'NOT met'}")
        finally:
            for proc in peers.values():
                proc.kill()
                proc.wait()
            daemon.close()
            shutil.rmtree(cache, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
