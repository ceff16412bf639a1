"""virtio-mem growth driven by `vmem-agent resize` in the guest.

VM: 2G boot memory and a virtio-mem device (max 4G, requested-size 0 at boot).  The
host raises requested-size to 2G over QMP.  The driver adds memory blocks offline and,
with memhp_default_state=offline, stops at 1 GiB of offline memory until userspace
onlines some (docs/kernel-observations.md): the device only reaches the requested size
if the agent keeps onlining what the driver adds.

What the agent must do (the loop below plays the part of a daemon reacting to
udev "add memory" events): run `vmem-agent resize T`, T = min(boot + 2G, memory
present), and run it again when the driver has added more blocks, until boot + 2G is
online.  Each run must reach its T (exit 0).  `resize boot+2G` before all blocks exist
is a usage error (exit 2: a target above the memory present), so T is capped.
"""

from __future__ import annotations

import json
import re
import time

import pytest

from .vm import GuestVM, VirtioMem, VMConfig

pytestmark = pytest.mark.realkernel

MEM = "/sys/devices/system/memory"
G = 1 << 30


@pytest.fixture(scope="module")
def vm_config():
    return VMConfig(memory="2G", virtio_mem=VirtioMem(size="4G", requested_size=0))


def mem_total(vm: GuestVM) -> int:
    return next(int(line.split()[1]) * 1024 for line in vm.read("/proc/meminfo").splitlines()
                if line.startswith("MemTotal:"))


def test_agent_onlines_virtio_mem_until_the_requested_size_is_online(vm: GuestVM):
    bs = vm.block_size()
    blocks = vm.memory_blocks()
    assert set(blocks.values()) == {"online"}, blocks     # nothing plugged yet
    boot = len(blocks) * bs
    total_before = mem_total(vm)
    assert vm.qmp.memory_size_summary()["plugged-memory"] == 0
    target = boot + 2 * G

    vm.set_virtio_mem(2 * G)
    vm.wait_for(f"set -- {MEM}/memory[0-9]*; [ $# -ge {len(blocks) + 8} ]", timeout=60)

    runs = []
    deadline = time.monotonic() + 120
    while True:
        present = len(vm.memory_blocks()) * bs
        step = min(target, present)
        r = vm.run([vm.agent, "resize", str(step), "--json"], timeout=120)
        assert r.rc == 0 and "Traceback" not in r.stderr, r
        doc = json.loads(r.stdout)["result"]
        runs.append(doc)
        assert doc["reached"] is True and doc["final_online_bytes"] == step, doc
        if step == target:
            break
        assert time.monotonic() < deadline, f"virtio-mem did not grow to 2G: {runs}"
        # the driver goes on once it sees its memory online: wait for its next blocks
        vm.wait_for(f"set -- {MEM}/memory[0-9]*; [ $# -gt {present // bs} ]", timeout=60)
    assert len(runs) >= 2, runs      # 1G at most was present (offline) before the first run

    # the hypervisor's view and the guest's agree: 2G plugged, 2G more MemTotal
    vm.wait_until(lambda: vm.qmp.virtio_mem_size("vmem0") == 2 * G, timeout=30,
                  what="virtio-mem size 2G")
    assert vm.qmp.memory_size_summary() == {"base-memory": boot, "plugged-memory": 2 * G}
    assert mem_total(vm) - total_before == 2 * G

    r = vm.run([vm.agent, "status", "--json"])
    assert r.rc == 0, r
    doc = json.loads(r.stdout)["memory"]
    assert (doc["online_bytes"], doc["offline_bytes"]) == (target, 0)
    hot = [b for b in doc["blocks"] if b["start"] >= boot]
    assert len(hot) == 16 and {b["origin"] for b in hot} == {"virtio-mem"}, hot
    assert {tuple(b["zones"]) for b in hot} == {("Movable",)}, hot       # 301% of 2G boot
    groups = {b["group"] for b in hot}
    assert len(groups) == 1, groups
    device = re.fullmatch(r"virtio-mem:(virtio\d+)", groups.pop()).group(1)
    driver = vm.sh(f"readlink /sys/bus/virtio/devices/{device}/driver").strip()
    assert driver.endswith("/virtio_mem"), driver
    assert {b["origin"] for b in doc["blocks"] if b["start"] < boot} == {"boot"}
