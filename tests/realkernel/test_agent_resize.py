"""`vmem-agent resize/plan/online/offline` on the real kernel: what it writes, and what it refuses.

One VM for the module: 2G boot memory (blocks 0-15, no crashkernel) and two 512M
pc-dimms hot-added over QMP (blocks 32-35 = PNP0C80:00, 36-39 = PNP0C80:01).
Every test starts from "boot memory only": the `at_boot_size` fixture offlines every
online DIMM block with plain sysfs writes (not with the agent), so the order of the
tests does not matter.  Set-up states are also made with plain sysfs writes.

Zones: boot kernel memory is 2G, so the ratio rule (301%) allows ~6G Movable: every
DIMM block the agent onlines in zone mode auto must land in Movable.  Normal memory is
only made in the last test, on a VM of its own: in a 2G guest the hot-plugged Normal
blocks are the only ZONE_NORMAL, kernel allocations land there at once, and offlining
them again often fails with EBUSY (it would poison the shared VM).
"""

from __future__ import annotations

import json
import re

import pytest

from .vm import GuestVM, Result, VMConfig

pytestmark = pytest.mark.realkernel

MEM = "/sys/devices/system/memory"
M = 1 << 20
G = 1 << 30
BOOT = list(range(16))
DIMM0 = [32, 33, 34, 35]
DIMM1 = [36, 37, 38, 39]
DIMMS = DIMM0 + DIMM1


@pytest.fixture(scope="module")
def vm_config():
    return VMConfig(memory="2G")


@pytest.fixture(scope="module")
def guest(vm: GuestVM) -> GuestVM:
    vm.hotadd_dimm("512M")
    vm.hotadd_dimm("512M")
    blocks = vm.memory_blocks()
    assert sorted(blocks) == BOOT + DIMMS, blocks
    return vm


@pytest.fixture
def at_boot_size(guest: GuestVM) -> GuestVM:
    """Offline every online DIMM block (highest first), by hand; retried on EBUSY."""
    guest.sh(f"""
        cd {MEM}
        for n in {' '.join(map(str, reversed(DIMMS)))}; do
          read -r s < memory$n/state; [ "$s" = online ] || continue
          for try in 1 2 3 4 5 6; do echo offline 2>/dev/null > memory$n/state && break; sleep 0.5; done
        done""", timeout=60)
    assert online_blocks(guest) == BOOT
    return guest


def agent(vm: GuestVM, *args: str, timeout: float = 120) -> Result:
    r = vm.run([vm.agent, *args], timeout=timeout)
    assert "Traceback" not in r.stdout + r.stderr, r
    return r


def agent_json(vm: GuestVM, *args: str, rc: int, timeout: float = 120) -> dict:
    r = agent(vm, *args, "--json", timeout=timeout)
    assert r.rc == rc, r
    doc = json.loads(r.stdout)["result"]
    assert doc["exit_code"] == rc, doc
    return doc


def block_states(vm: GuestVM) -> dict[int, tuple[str, str]]:
    """{N: (state, valid_zones)}, read with shell builtins only (forks are slow under TCG)."""
    out = vm.sh(f"cd {MEM}; for d in memory[0-9]*; do "
                "read -r s < $d/state; read -r z < $d/valid_zones; echo ${d#memory} $s $z; done")
    states = {}
    for line in out.splitlines():
        n, state, zones = line.split(None, 2)
        states[int(n)] = (state, zones)
    return states


def online_blocks(vm: GuestVM) -> list[int]:
    return sorted(n for n, (s, _) in block_states(vm).items() if s == "online")


def set_state(vm: GuestVM, blocks: list[int], value: str) -> None:
    vm.sh(" ".join(f"echo {value} > {MEM}/memory{n}/state;" for n in blocks))


def meminfo(vm: GuestVM, field: str) -> int:
    """A /proc/meminfo field in bytes."""
    for line in vm.read("/proc/meminfo").splitlines():
        name, value = line.split(":", 1)
        if name == field:
            return int(value.split()[0]) * 1024
    raise KeyError(field)


def changed(doc: dict) -> list[int]:
    """Blocks the run changed, in the order it changed them."""
    return [b["index"] for b in doc["blocks"] if b["outcome"] == "done"]


def test_plan_then_resize_grows_to_3g_in_movable(at_boot_size: GuestVM):
    vm = at_boot_size
    total_before = meminfo(vm, "MemTotal")
    r = agent(vm, "plan", "3G")
    assert r.rc == 0, r
    rows = [line.split() for line in r.stdout.splitlines() if line.startswith("online ")]
    # one row per DIMM (the reason names the DIMM), both into Movable
    assert [(row[1], "Movable" in row, "online_movable" in row) for row in rows] == [
        ("32-35", True, True), ("36-39", True, True)], r
    assert re.search(r"2G -> 3G \(target 3G\)", r.stdout), r
    assert online_blocks(vm) == BOOT                                  # plan wrote nothing

    doc = agent_json(vm, "resize", "3G", rc=0)
    assert (doc["target_bytes"], doc["initial_online_bytes"], doc["final_online_bytes"]) == (
        3 * G, 2 * G, 3 * G)
    assert doc["reached"] is True and doc["shortfall_bytes"] == doc["excess_bytes"] == 0
    assert [(b["index"], b["operation"], b["outcome"], b["zone"]) for b in doc["blocks"]] == [
        (n, "online_movable", "done", "Movable") for n in DIMMS]
    states = block_states(vm)
    assert online_blocks(vm) == BOOT + DIMMS
    assert {states[n][1] for n in DIMMS} == {"Movable"}               # as the kernel says
    assert meminfo(vm, "MemTotal") - total_before == G              # exactly +1 GiB


def test_resize_relative_grow_and_noop(at_boot_size: GuestVM):
    vm = at_boot_size
    doc = agent_json(vm, "resize", "+128M", rc=0)
    assert changed(doc) == [32] and doc["final_online_bytes"] == 2 * G + 128 * M
    assert doc["blocks"][0]["zone"] == "Movable"
    before = block_states(vm)
    # the size that is online now: nothing to do, nothing written, no kdump
    doc = agent_json(vm, "resize", "2176M", rc=0)
    assert doc["blocks"] == [] and doc["kdump"] is None, doc
    assert doc["reached"] is True and doc["final_online_bytes"] == 2 * G + 128 * M
    assert block_states(vm) == before


def test_resize_relative_shrink_with_minus_size(at_boot_size: GuestVM):
    """README: `-512M` (relative to the memory online now) works like `+1G`."""
    vm = at_boot_size
    set_state(vm, [32, 33], "online_movable")
    doc = agent_json(vm, "resize", "-128M", rc=0)
    assert changed(doc) == [33] and doc["final_online_bytes"] == 2 * G + 128 * M
    assert online_blocks(vm) == BOOT + [32]


def test_online_amount_onlines_exactly_that_amount(at_boot_size: GuestVM):
    vm = at_boot_size
    doc = agent_json(vm, "online", "256M", rc=0)
    assert changed(doc) == [32, 33], doc
    assert doc["final_online_bytes"] == 2 * G + 256 * M and doc["reached"] is True
    assert online_blocks(vm) == BOOT + [32, 33]


def test_offline_amount_offlines_exactly_that_amount(at_boot_size: GuestVM):
    vm = at_boot_size
    set_state(vm, DIMM0, "online_movable")
    doc = agent_json(vm, "offline", "128M", rc=0)
    assert changed(doc) == [35], doc
    assert doc["final_online_bytes"] == 2 * G + 384 * M and doc["reached"] is True
    assert online_blocks(vm) == BOOT + [32, 33, 34]


def test_shrink_offlines_hotplugged_movable_blocks_highest_first(at_boot_size: GuestVM):
    vm = at_boot_size
    set_state(vm, DIMMS, "online_movable")
    doc = agent_json(vm, "resize", "2560M", rc=0)
    assert [(b["index"], b["operation"], b["outcome"]) for b in doc["blocks"]] == [
        (n, "offline", "done") for n in reversed(DIMM1)]
    assert doc["final_online_bytes"] == 2 * G + 512 * M and doc["reached"] is True
    assert online_blocks(vm) == BOOT + DIMM0

    # below what hot-plugged memory allows: the rest of the DIMM blocks go, boot memory
    # stays, and the run says exactly how far it stayed above the target
    doc = agent_json(vm, "resize", "1G", rc=64)
    assert changed(doc) == list(reversed(DIMM0)), doc
    assert doc["reached"] is False
    assert (doc["final_online_bytes"], doc["excess_bytes"], doc["shortfall_bytes"]) == (2 * G, G, 0)
    assert doc["notes"], doc                                          # says why it stopped
    assert online_blocks(vm) == BOOT


def test_offline_named_boot_block_needs_force_and_kernel_refusals_are_clean(at_boot_size: GuestVM):
    vm = at_boot_size
    # a named boot block without --force: refused, not written
    doc = agent_json(vm, "offline", "5", rc=1)
    assert doc["blocks"] == [] and doc["kdump"] is None, doc
    assert any(re.search(r"\bblocks? 5\b", n) and "boot memory" in n for n in doc["notes"]), doc
    # with --force: memory0 (valid_zones none) is refused by the agent itself, one line
    # says why; memory15 holds the Reserved range 0x7ffe0000-, so the kernel answers
    # EINVAL: one line names the block and the errno, no traceback, exit 1
    states = block_states(vm)
    assert (states[0], states[15]) == (("online", "none"), ("online", "DMA32"))
    r = agent(vm, "offline", "0,15", "--force")
    assert r.rc == 1, r
    lines = (r.stdout + r.stderr).splitlines()
    why = [line for line in lines if "valid_zones 'none'" in line]
    assert len(why) == 1 and re.search(r"\bblocks? 0\b", why[0]), r
    einval = [line for line in lines if "EINVAL" in line]
    assert len(einval) == 1 and "memory block 15" in einval[0], r
    assert online_blocks(vm) == BOOT
    # after the kernel's refusal the engine moves on: 15 (EINVAL), then 14 is written;
    # free DMA32 boot memory may offline (nothing but the agent protects it), or be busy
    r = agent(vm, "offline", "14,15", "--force", "--json")
    results = [(b["index"], b["outcome"], b["errno"]) for b in json.loads(r.stdout)["result"]["blocks"]]
    assert results[0] == (15, "failed", "EINVAL") and results[1][0] == 14, r
    assert results[1][1:] in (("done", None), ("failed", "EBUSY")), r
    assert r.rc == (64 if results[1][1] == "done" else 1), r
    if results[1][1] == "done":
        set_state(vm, [14], "online")
    assert online_blocks(vm) == BOOT


def test_reserve_floor_limits_offlining(at_boot_size: GuestVM):
    vm = at_boot_size
    set_state(vm, DIMM0, "online_movable")
    # a reserve above MemAvailable: nothing may go offline (exit 1), and the note says why
    available = meminfo(vm, "MemAvailable")
    doc = agent_json(vm, "resize", "2G", "--reserve", str(available + G), rc=1)
    assert doc["blocks"] == [] and doc["final_online_bytes"] == 2 * G + 512 * M, doc
    assert any("reserve" in n for n in doc["notes"]), doc             # says why
    assert online_blocks(vm) == BOOT + DIMM0
    # a reserve that leaves room for 2 blocks (+-64M of MemAvailable drift): partial (64)
    available = meminfo(vm, "MemAvailable")
    doc = agent_json(vm, "resize", "2G", "--reserve", str(available - 320 * M), rc=64)
    assert changed(doc) == [35, 34], doc
    assert doc["final_online_bytes"] == 2 * G + 256 * M and doc["excess_bytes"] == 256 * M
    assert any("reserve" in n for n in doc["notes"]), doc
    assert online_blocks(vm) == BOOT + [32, 33]


def test_zone_normal_and_movable_first_on_a_fresh_guest(boot_vm):
    """Normal memory in a 2G guest attracts unmovable kernel allocations (it is the only
    ZONE_NORMAL: boot memory is all DMA32), so it often cannot be offlined again; this
    test therefore has a VM of its own (two cold-plugged 512M DIMMs, offline at boot)."""
    vm = boot_vm(VMConfig(memory="2G", dimms=["512M", "512M"]))
    assert online_blocks(vm) == BOOT and sorted(vm.memory_blocks()) == BOOT + DIMMS
    set_state(vm, DIMM0, "online_movable")
    # --zone normal: the next DIMM goes into Normal
    doc = agent_json(vm, "resize", "3G", "--zone", "normal", rc=0)
    assert [(b["index"], b["operation"], b["zone"]) for b in doc["blocks"]] == [
        (n, "online_kernel", "Normal") for n in DIMM1]
    assert doc["final_online_bytes"] == 3 * G and doc["reached"] is True
    states = block_states(vm)
    assert [states[n] for n in DIMMS] == [("online", "Movable")] * 4 + [("online", "Normal")] * 4
    # shrinking takes the Movable blocks first (highest first), although DIMM1 lies higher
    doc = agent_json(vm, "resize", "2560M", rc=0)
    assert [(b["index"], b["outcome"]) for b in doc["blocks"]] == [
        (n, "done") for n in reversed(DIMM0)]
    assert online_blocks(vm) == BOOT + DIMM1
