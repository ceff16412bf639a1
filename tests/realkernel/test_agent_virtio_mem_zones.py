"""virtio-mem on the real kernel: zones as the kernel's auto-movable rule decides them, and
why shrinking virtio-mem memory is left to the host.

VM A: 2G boot memory, a virtio-mem device of up to 10G (requested-size 0 at boot),
online_policy contig-zones and memhp_default_state=offline: the agent chooses every zone.
The host asks for 8G; the driver adds 1G at most while its memory is offline, so the agent
runs `resize` again as the blocks come (as a daemon would on their uevents).
VM B: the same guest, but the kernel onlines the memory itself (memhp_default_state=online)
with its own online_policy=auto-movable at auto_movable_ratio 301.
Both must end with the same zone in every block: 48 Movable (301% of 2G), then the
device's own kernel blocks buy three more Movable blocks each (docs/kernel-observations.md).

Then, on VM A, the shrink: `resize` does not offline virtio-mem memory and says to lower
requested-size. Why: offlining 1G of it by hand gives the host nothing (QEMU's `size`
stays 8G), and with 1G offline the driver plugs nothing more when the host asks for 9G;
onlining it again lets the driver go on; lowering requested-size makes the driver unplug
online Movable memory itself, and MemTotal drops by what the host took back.
"""

from __future__ import annotations

import time

import pytest

from .guest_reads import MEM, agent_json, block_states, mem_total
from .vm import GuestVM, VirtioMem, VMConfig

pytestmark = pytest.mark.realkernel

G = 1 << 30
VIRTIO = VirtioMem(size="10G", requested_size=0)
STALL_WAIT_S = 20


@pytest.fixture(scope="module")
def vm_config():
    return VMConfig(memory="2G", maxmem="16G", virtio_mem=VIRTIO)


def virtio_zones(vm: GuestVM, boot_blocks: int) -> dict[int, str]:
    """{block: zone} of the online hot-plugged (virtio-mem) blocks."""
    return {n: zones for n, (state, zones) in block_states(vm).items() if n >= boot_blocks and state == "online"}


@pytest.fixture(scope="module")
def grown(vm: GuestVM):
    """VM A with 8G of virtio-mem onlined by the agent, resize after resize as the driver adds it."""
    boot_blocks = len(vm.memory_blocks())
    bs = vm.block_size()
    target = boot_blocks * bs + 8 * G
    vm.set_virtio_mem(8 * G)
    vm.wait_for(f"set -- {MEM}/memory[0-9]*; [ $# -gt {boot_blocks} ]", timeout=60)
    deadline = time.monotonic() + 300
    while True:
        present = len(vm.memory_blocks()) * bs
        doc = agent_json(vm, "resize", str(min(target, present)), rc=0)["result"]
        assert doc["reached"] is True, doc
        if min(target, present) == target:
            break
        assert time.monotonic() < deadline, "virtio-mem did not grow to 8G"
        # the driver goes on once it sees its memory online: wait for its next blocks
        vm.wait_for(f"set -- {MEM}/memory[0-9]*; [ $# -gt {present // bs} ]", timeout=60)
    vm.wait_until(lambda: vm.qmp.virtio_mem_size("vmem0") == 8 * G, timeout=60, what="virtio-mem size 8G")
    return vm, boot_blocks


def test_agent_chooses_the_zones_the_kernels_auto_movable_policy_chooses(grown, boot_vm):
    vm, boot_blocks = grown
    agent_zones = virtio_zones(vm, boot_blocks)
    assert len(agent_zones) == 64

    kernel_vm = boot_vm(VMConfig(memory="2G", maxmem="16G", virtio_mem=VIRTIO,
                                 cmdline="memhp_default_state=online memory_hotplug.online_policy=auto-movable"))
    assert kernel_vm.sh("cat /sys/module/memory_hotplug/parameters/online_policy "
                        "/sys/module/memory_hotplug/parameters/auto_movable_ratio").split() == ["auto-movable", "301"]
    kernel_vm.set_virtio_mem(8 * G)
    kernel_vm.wait_until(lambda: kernel_vm.qmp.virtio_mem_size("vmem0") == 8 * G, timeout=180, what="8G plugged")
    kernel_vm.wait_until(lambda: len(virtio_zones(kernel_vm, boot_blocks)) == 64, timeout=60, what="64 blocks online")
    kernel_zones = virtio_zones(kernel_vm, boot_blocks)

    assert agent_zones == kernel_zones  # block by block
    pattern = "".join("M" if agent_zones[n] == "Movable" else "K" for n in sorted(agent_zones))
    assert pattern == "M" * 48 + "KMMM" * 4, pattern
    assert {zone for zone in agent_zones.values() if zone != "Movable"} == {"Normal"}


def test_virtio_mem_is_given_back_by_the_host_not_by_offlining(grown):
    vm, boot_blocks = grown
    before = block_states(vm)
    total = mem_total(vm)

    # 1. resize below the memory online: virtio-mem is not offlined, and the note says what to do.
    doc = agent_json(vm, "resize", "6G", rc=1)["result"]
    assert doc["blocks"] == [] and block_states(vm) == before
    advice = [n for n in doc["note_codes"] if n["code"] == "virtio-mem-lower-requested-size"]
    assert len(advice) == 1 and advice[0]["online"] == 8 * G, doc["note_codes"]
    assert any("lower the device's requested-size on the host" in note for note in doc["notes"]), doc["notes"]

    # 2. Offlining 1G of it by hand returns nothing: QEMU's plugged size stays 8G.
    movable = sorted((n for n, (state, zones) in before.items() if n >= boot_blocks and zones == "Movable"))[-8:]
    doc = agent_json(vm, "offline", ",".join(map(str, movable)), rc=0)["result"]
    assert [b["index"] for b in doc["blocks"] if b["outcome"] == "done"] == list(reversed(movable))
    assert [n["code"] for n in doc["note_codes"]] == ["virtio-mem-offline-gives-nothing"]
    assert vm.qmp.virtio_mem_size("vmem0") == 8 * G
    assert mem_total(vm) == total - G

    # 3. With that 1G offline the driver plugs no more: the host asks for 9G and gets nothing.
    count = len(vm.memory_blocks())
    vm.set_virtio_mem(9 * G)
    time.sleep(STALL_WAIT_S)
    assert vm.qmp.virtio_mem_size("vmem0") == 8 * G and len(vm.memory_blocks()) == count

    # 4. Online it again and the driver goes on by itself.
    vm.sh(" ".join(f"echo online_movable > {MEM}/memory{n}/state;" for n in movable))
    began = time.monotonic()
    try:
        vm.wait_until(lambda: vm.qmp.virtio_mem_size("vmem0") == 9 * G, timeout=60, what="9G plugged")
    except TimeoutError:
        # Seen once under heavy host load: the driver's wake-up on onlining can miss (it
        # skips it while its worker runs); the host asking again (a config change) wakes it.
        print("no plug within 60s of onlining: asking for 9G again")
        vm.set_virtio_mem(9 * G)
        vm.wait_until(lambda: vm.qmp.virtio_mem_size("vmem0") == 9 * G, timeout=240, what="9G plugged")
    print(f"requested-size 9G reached {time.monotonic() - began:.1f}s after onlining")
    assert mem_total(vm) == total  # the new 1G is offline: the agent (or a daemon) would online it

    # 5. The host lowers requested-size: the driver unplugs offline memory, then online Movable memory.
    vm.set_virtio_mem(4 * G)
    began = time.monotonic()
    vm.wait_until(lambda: vm.qmp.virtio_mem_size("vmem0") == 4 * G, timeout=300, what="4G plugged")
    print(f"requested-size 4G reached {time.monotonic() - began:.1f}s after asking")
    assert mem_total(vm) == total - 4 * G
    after = block_states(vm)
    assert sum(1 for n, (state, _) in after.items() if n >= boot_blocks and state == "online") == 32
    assert all(state == "online" for state, _ in after.values())
    doc = agent_json(vm, "status", rc=0)["memory"]
    assert [(d["kind"], d["online_bytes"], d["state"]) for d in doc["devices"]] == [("virtio-mem", 4 * G, "online")]
