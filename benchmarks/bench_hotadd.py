"""Hot-add to all-online on the real kernel: the daemon against the kernel's auto-online and a udev rule.

Boots Debian's 6.1 kernel in QEMU (tests/realkernel; TCG here) once per onliner and
round, 2G boot memory, and times, inside the guest, from the first memory `add` uevent
to the `online` of the last new block (tests/realkernel/guest/online_watch.py) for a
4 GiB DIMM, a 16 GiB DIMM and 8 GiB of virtio-mem (requested-size 0 -> 8G). All
onliners put the memory in ZONE_MOVABLE, so they do the same work:

- kernel: `memhp_default_state=online_movable` (the latency limit);
- udev rule: one line, `SUBSYSTEM=="memory", ACTION=="add", ATTR{state}=="offline",
  ATTR{state}="online_movable"`, run by the guest's systemd-udevd;
- daemon: `vmem-agent daemon` with `zone = "movable"`: with no target it hands onlining
  to the kernel (auto_online_blocks online_movable);
- daemon, writing: the same with `kernel_onlining = "never"`, so that the daemon writes
  each block itself (what it does while it holds a target).

Goal (issue 7): the daemon at most 1.05x the kernel's time, and faster than the udev rule.

    .venv/bin/python benchmarks/bench_hotadd.py --rounds 2
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.realkernel.vm import GuestVM, VirtioMem, VMConfig, check_prerequisites  # noqa: E402

G = 1 << 30
BLOCK = 128 << 20
WORKLOADS = (("4G DIMM", "dimm", 4 * G), ("16G DIMM", "dimm", 16 * G), ("8G virtio-mem", "virtio-mem", 8 * G))
UDEV_RULE = 'SUBSYSTEM=="memory", ACTION=="add", ATTR{state}=="offline", ATTR{state}="online_movable"\n'
ONLINERS = ("kernel", "udev rule", "daemon", "daemon, writing")
CHECKOUT = Path(__file__).resolve().parent.parent
BYTECODE_ENV = "env -u PYTHONDONTWRITEBYTECODE PYTHONPYCACHEPREFIX=/run/bench/pycache"


def boot(onliner: str) -> GuestVM:
    state = {"kernel": "online_movable", "udev rule": "offline"}.get(onliner)
    config = VMConfig(memory="2G", maxmem="32G", slots=4, memhp_default_state=state, boot_timeout=180,
                      virtio_mem=VirtioMem(size="8G", requested_size=0))
    vm = GuestVM(config, name=f"bench-{onliner.replace(' ', '-').replace(',', '')}").start()
    if onliner == "udev rule":
        vm.sh(f"printf '%s' '{UDEV_RULE}' > /etc/udev/rules.d/99-online-memory.rules && udevadm control --reload")
    elif onliner.startswith("daemon"):
        config_text = 'zone = "movable"\nkdump = "never"\n' + ('kernel_onlining = "never"\n' if "writing" in onliner else "")
        vm.sh(f"mkdir -p /run/bench && printf '%s' '{config_text}' > /run/bench/config.toml")
        # Byte-code, as an installed package has it (the read-only 9p checkout has none): compiled
        # once into a cache in the guest, so that the daemon's writer children do not compile.
        vm.sh(f"{BYTECODE_ENV} {vm.python} -m compileall -q {CHECKOUT / 'vmem_agent'}", timeout=600)
        vm.daemon = vm.spawn(f"{BYTECODE_ENV} {vm.agent} daemon --config /run/bench/config.toml", timeout=3600)
        vm.wait_for(f"{vm.agent} status | grep -q 'Daemon: *running'", timeout=180)
    return vm


def measure(vm: GuestVM, kind: str, size: int) -> float:
    blocks = size // BLOCK
    watch = vm.spawn([vm.python, f"{vm.helpers}/online_watch.py", str(blocks), "900"], timeout=1000)
    watch.wait_output("ready", timeout=60)
    if kind == "dimm":
        vm.qmp.hotadd_dimm(size)
    else:
        vm.set_virtio_mem(size)
    result = watch.wait(timeout=1000)
    report = json.loads(result.stdout.splitlines()[-1])
    if not report["complete"]:
        raise RuntimeError(f"{kind} {size >> 30}G: only {report['onlined']} of {blocks} blocks came online")
    return report["seconds"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--onliners", nargs="*", default=list(ONLINERS), choices=ONLINERS)
    args = parser.parse_args()
    check_prerequisites()
    times: dict[tuple[str, str], list[float]] = {}
    for round_ in range(args.rounds):
        for onliner in args.onliners:
            vm = boot(onliner)
            try:
                for name, kind, size in WORKLOADS:
                    seconds = measure(vm, kind, size)
                    times.setdefault((onliner, name), []).append(seconds)
                    print(f"round {round_ + 1} {onliner:16s} {name:14s} {seconds:7.3f}s", flush=True)
            finally:
                vm.close()
    print(f"\nmedian seconds from the first add to the last online ({args.rounds} round(s), TCG), ratio to the kernel:")
    print(f"{'onliner':16s} " + " ".join(f"{name:>20s}" for name, _k, _s in WORKLOADS))
    for onliner in args.onliners:
        cells = []
        for name, _kind, _size in WORKLOADS:
            value = statistics.median(times[(onliner, name)])
            kernel = statistics.median(times[("kernel", name)]) if ("kernel", name) in times else None
            ratio = f" ({value / kernel:.2f}x)" if kernel else ""
            cells.append(f"{value:8.3f}s{ratio:>9s}".rjust(20))
        print(f"{onliner:16s} " + " ".join(cells))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
