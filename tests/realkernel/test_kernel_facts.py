"""Kernel behaviour the agent relies on, checked against the real kernel.

See docs/kernel-observations.md for the full transcript.  One VM for the
module: 2G boot memory, a cold-plugged 1G pc-dimm, a virtio-mem device (max
2G, 512M requested at boot), plus DIMMs hot-added by the tests.
"""

from __future__ import annotations

import json
import time

import pytest

from .vm import GuestVM, VirtioMem, VMConfig

pytestmark = pytest.mark.realkernel

MEM = "/sys/devices/system/memory"


@pytest.fixture(scope="module")
def vm_config():
    return VMConfig(dimms=["1G"], virtio_mem=VirtioMem(size="2G", requested_size="512M"))


def blocks(vm: GuestVM) -> dict[int, dict]:
    info = json.loads(vm.sh([vm.python, f"{vm.helpers}/blocks.py", "--json"]))
    return {int(n): b for n, b in info["blocks"].items()}


def write(vm: GuestVM, *pairs: tuple[int | str, str]) -> list[dict]:
    args = [f"{MEM}/memory{n}/state={v}" if isinstance(n, int) else f"{n}={v}"
            for n, v in pairs]
    return json.loads(vm.sh([vm.python, f"{vm.helpers}/write_sysfs.py", "--json", *args]))


def test_block_origin_signals(vm: GuestVM):
    before = set(blocks(vm))
    vm.hotadd_dimm("512M")
    b = blocks(vm)
    hot = sorted(set(b) - before)
    boot = [n for n in b if n < 16]            # 2G boot memory = blocks 0-15
    cold = list(range(32, 40))                 # cold 1G DIMM at 4G
    vmem = [n for n in b if b[n]["iomem_top"] and b[n]["iomem_top"].startswith("virtio")]
    assert len(hot) == 4 and len(vmem) == 4

    for n in boot:
        assert b[n]["firmware_node"] is None
        assert b[n]["in_boot_e820_any"] is True
    for n in cold + hot:
        fw = b[n]["firmware_node"]
        assert fw and fw["hid"] == "PNP0C80", b[n]
        assert b[n]["iomem_top"] == "System RAM"      # same name as boot RAM!
        assert b[n]["in_boot_e820_any"] is False
        assert b[n]["in_firmware_memmap"] is True     # memmap is NOT a boot signal
    # one ACPI device per DIMM = the memory group
    assert len({b[n]["firmware_node"]["name"] for n in cold}) == 1
    assert len({b[n]["firmware_node"]["name"] for n in hot}) == 1
    assert b[cold[0]]["firmware_node"]["name"] != b[hot[0]]["firmware_node"]["name"]
    for n in vmem:
        assert b[n]["firmware_node"] is None
        assert b[n]["virtio_driver"] == "virtio_mem"
        assert b[n]["iomem_child"] == "System RAM (virtio_mem)"
        assert b[n]["in_boot_e820_any"] is False
        assert b[n]["in_firmware_memmap"] is False
    # useless as signals on x86: identical everywhere
    assert {b[n]["phys_device"] for n in b} == {"0"}
    assert {b[n]["removable"] for n in b} == {"1"}


def test_state_write_errnos(vm: GuestVM):
    off = next(n for n, x in blocks(vm).items() if x["state"] == "offline")
    r = write(vm, (0, "offline"), (1, "online"), (off, "offline"), (off, "bogus"))
    assert [x["result"] for x in r] == ["EINVAL"] * 4, r
    # memory0 spans DMA+DMA32: valid_zones "none"
    assert r[0]["valid_zones"] == "none"


def test_online_movable_then_offline_hotadded_block(vm: GuestVM):
    before = set(blocks(vm))
    vm.hotadd_dimm("256M")
    n = min(set(blocks(vm)) - before)
    r = write(vm, (n, "online_movable"), (n, "offline"), (n, "online_kernel"), (n, "offline"))
    # Movable offlines reliably; the same block onlined into Normal (the guest's only
    # Normal memory) gets kernel allocations at once, so its offline may be EBUSY.
    assert [x["result"] for x in r[:3]] == ["ok"] * 3, r
    assert r[3]["result"] in ("ok", "EBUSY"), r
    assert (r[0]["state"], r[0]["valid_zones"]) == ("online", "Movable")
    assert (r[2]["state"], r[2]["valid_zones"]) == ("online", "Normal")
    if r[3]["result"] == "ok":
        assert r[3]["valid_zones"] == "Normal Movable"


def test_boot_memory_block_can_be_offlined(vm: GuestVM):
    # Free boot blocks (DMA32) offline fine: nothing protects boot memory
    # except the agent itself.  Find one, then re-online it.
    r = vm.run(f"for n in $(seq 2 12); do "
               f"if echo offline 2>/dev/null > {MEM}/memory$n/state; then "
               f"z=$(cat {MEM}/memory$n/valid_zones); echo online > {MEM}/memory$n/state; "
               f"echo \"$n $z\"; exit 0; fi; done; exit 1")
    assert r.rc == 0, f"no boot block 2-12 could be offlined: {r}"
    n, zones = r.stdout.split(None, 1)
    assert zones.strip() == "DMA32 Movable"
    assert vm.read(f"{MEM}/memory{n}/state").strip() == "online"


def test_dimm_eject_offlines_movable_blocks_itself(vm: GuestVM):
    before = set(blocks(vm))
    dimm = vm.hotadd_dimm("256M")
    new = sorted(set(blocks(vm)) - before)
    write(vm, *[(n, "online_movable") for n in new])
    vm.qmp.execute("device_del", {"id": dimm})
    vm.qmp.wait_event("DEVICE_DELETED", 60, match=lambda e: e["data"].get("device") == dimm)
    assert not set(new) & set(blocks(vm))


def test_virtio_mem_waits_for_onlining_after_1g_offline(vm: GuestVM):
    q = vm.qmp
    vm.set_virtio_mem("2G")

    def settled_size(quiet=4.0, limit=60.0):
        last, since, end = q.virtio_mem_size("vmem0"), time.monotonic(), time.monotonic() + limit
        while time.monotonic() < end:
            time.sleep(0.5)
            cur = q.virtio_mem_size("vmem0")
            if cur != last:
                last, since = cur, time.monotonic()
            elif time.monotonic() - since >= quiet:
                return cur
        return last

    assert settled_size() == 1 << 30       # stuck at 1 GiB while all of it is offline
    online_all = (f"for n in $(seq 40 55); do f={MEM}/memory$n/state; "
                  "[ -e $f ] && [ $(cat $f) = offline ] && echo online_movable > $f; done; true")
    deadline = time.monotonic() + 60
    while q.virtio_mem_size("vmem0") < 2 << 30:   # onlining lets it continue
        assert time.monotonic() < deadline, "virtio-mem did not reach 2G after onlining"
        vm.sh(online_all)
        time.sleep(0.5)
