"""Shrinking in whole DIMMs on the real kernel, then the host unplugs what the agent emptied.

VM: 2G boot memory (blocks 0-15) and four 1G pc-dimms hot-added over QMP (blocks 32-39,
40-47, 48-55, 56-63), all onlined Movable by the agent (4G Movable fits 301% of 2G).
`resize 4G` must offline exactly two whole DIMMs and report them ready to eject, with the
ACPI slot that QMP's query-memory-devices also shows; `device_del` of those two must give
DEVICE_DELETED within 10 s (the guest ejects them at once: nothing left to offline), their
blocks disappear, MemTotal is 2 GiB lower, and the other two DIMMs are untouched.
"""

from __future__ import annotations

import time

import pytest

from .guest_reads import MEM, agent_json, block_states, mem_total
from .vm import GuestVM, VMConfig

pytestmark = pytest.mark.realkernel

G = 1 << 30
BOOT = list(range(16))
DIMMS = [list(range(32 + 8 * n, 40 + 8 * n)) for n in range(4)]
EJECT_TIMEOUT_S = 10


@pytest.fixture(scope="module")
def vm_config():
    return VMConfig(memory="2G", slots=8, maxmem="16G")


def test_resize_empties_two_whole_dimms_and_the_host_unplugs_them(vm: GuestVM):
    qemu_ids = [vm.hotadd_dimm("1G") for _ in range(4)]
    assert sorted(vm.memory_blocks()) == BOOT + [n for dimm in DIMMS for n in dimm]
    doc = agent_json(vm, "resize", "6G", rc=0)["result"]
    states = block_states(vm)
    assert all(states[n] == ("online", "Movable") for dimm in DIMMS for n in dimm), states
    total_before = mem_total(vm)
    plugged_before = vm.qmp.memory_size_summary()["plugged-memory"]
    assert plugged_before == 4 * G

    doc = agent_json(vm, "resize", "4G", rc=0)["result"]
    assert doc["reached"] is True and doc["final_online_bytes"] == 4 * G
    # Exactly two whole DIMMs, the highest ones, each offlined highest block first.
    assert [(b["index"], b["operation"], b["outcome"]) for b in doc["blocks"]] == [
        (n, "offline", "done") for n in [*reversed(DIMMS[3]), *reversed(DIMMS[2])]]
    ready = [d for d in doc["devices"] if d["ready_to_eject"]]
    assert [(d["kind"], d["first_block"], d["last_block"], d["state"]) for d in ready] == [
        ("dimm", 48, 55, "offline"), ("dimm", 56, 63, "offline")]
    assert {d["state"] for d in doc["devices"] if not d["ready_to_eject"]} == {"online"}

    # The host side: map the agent's slots to QEMU's DIMMs and unplug exactly those.
    by_slot = {d["data"]["slot"]: d["data"]["id"] for d in vm.qmp.memory_devices() if d["type"] == "dimm"}
    for device in ready:
        assert device["start"] == next(d["data"]["addr"] for d in vm.qmp.memory_devices()
                                       if d["type"] == "dimm" and d["data"]["slot"] == device["slot"])
    unplugged = [by_slot[d["slot"]] for d in ready]
    assert sorted(unplugged) == sorted(qemu_ids[2:])
    for qemu_id in unplugged:
        began = time.monotonic()
        vm.qmp.unplug_dimm(qemu_id, timeout=EJECT_TIMEOUT_S)  # raises unless DEVICE_DELETED comes in time
        print(f"{qemu_id}: DEVICE_DELETED after {time.monotonic() - began:.2f}s")
    vm.wait_for(f"! [ -e {MEM}/memory48 ] && ! [ -e {MEM}/memory63 ]", timeout=EJECT_TIMEOUT_S)
    states = block_states(vm)
    assert sorted(states) == BOOT + DIMMS[0] + DIMMS[1]
    assert all(states[n] == ("online", "Movable") for n in DIMMS[0] + DIMMS[1])  # untouched
    assert mem_total(vm) == total_before - 2 * G
    assert vm.qmp.memory_size_summary()["plugged-memory"] == plugged_before - 2 * G

    status = agent_json(vm, "status", rc=0)["memory"]
    assert [(d["name"], d["state"]) for d in status["devices"]] == [
        (d["name"], "online") for d in doc["devices"] if not d["ready_to_eject"]]
