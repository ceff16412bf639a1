"""What the agent scenarios read back in the guest: block states, MemTotal, the agent's JSON."""

from __future__ import annotations

import json

from .vm import GuestVM

MEM = "/sys/devices/system/memory"


def block_states(vm: GuestVM) -> dict[int, tuple[str, str]]:
    """{N: (state, valid_zones)}, read with shell builtins only (forks are slow under TCG)."""
    out = vm.sh(f"cd {MEM}; for d in memory[0-9]*; do "
                "read -r s < $d/state; read -r z < $d/valid_zones; echo ${d#memory} $s $z; done")
    return {int(n): (state, zones) for n, state, zones in (line.split(None, 2) for line in out.splitlines())}


def mem_total(vm: GuestVM) -> int:
    """MemTotal of the guest's /proc/meminfo, in bytes."""
    return next(int(line.split()[1]) * 1024 for line in vm.read("/proc/meminfo").splitlines()
                if line.startswith("MemTotal:"))


def agent_json(vm: GuestVM, *args: str, rc: int, timeout: float = 180) -> dict:
    """Run `vmem-agent ARGS --json` in the guest; it must exit `rc` without a traceback."""
    r = vm.run([vm.agent, *args, "--json"], timeout=timeout)
    assert r.rc == rc and "Traceback" not in r.stderr, r
    return json.loads(r.stdout)
