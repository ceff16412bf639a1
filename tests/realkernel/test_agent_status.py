"""`vmem-agent status` on the real kernel agrees with util-linux lsmem in the same guest.

One VM for the module: 2G boot memory, a cold-plugged 512M pc-dimm, a virtio-mem
device (max 2G, 512M requested at boot) and a 512M pc-dimm hot-added over QMP.
Every test compares whatever state it finds (the comparisons hold in any state),
so the order of the tests does not matter.  Each comparison also checks every block's
origin (boot / dimm / virtio-mem) and group against the kernel's own signals for it
(firmware_node -> PNP0C80, the virtioN iomem parent, the boot E820 table).

The agent runs inside the guest with its default --sysfs-root / (the guest's).
"""

from __future__ import annotations

import json
import re

import pytest

from .vm import GuestVM, Result, VirtioMem, VMConfig

pytestmark = pytest.mark.realkernel

MEM = "/sys/devices/system/memory"
LSMEM_COLUMNS = "RANGE,SIZE,STATE,BLOCK,NODE,ZONES"


@pytest.fixture(scope="module")
def vm_config():
    return VMConfig(dimms=["512M"], virtio_mem=VirtioMem(size="2G", requested_size="512M"))


@pytest.fixture(scope="module")
def guest(vm: GuestVM) -> GuestVM:
    """The module VM once virtio-mem plugged its 512M and a DIMM was hot-added."""
    vm.wait_until(lambda: vm.qmp.virtio_mem_size("vmem0") == 512 << 20, timeout=60,
                  what="virtio-mem plugged 512M at boot")
    # 16 boot blocks + 4 of the cold DIMM + 4 of virtio-mem
    vm.wait_for(f"set -- {MEM}/memory[0-9]*; [ $# -ge 24 ]", timeout=30)
    vm.hotadd_dimm("512M")
    vm.run("udevadm settle --timeout=30")
    return vm


def agent(vm: GuestVM, *args: str, timeout: float = 60) -> Result:
    r = vm.run([vm.agent, *args], timeout=timeout)
    assert "Traceback" not in r.stderr, r
    return r


def agent_status(vm: GuestVM) -> dict:
    r = agent(vm, "status", "--json")
    assert r.rc == 0 and r.stderr == "", r
    return json.loads(r.stdout)["memory"]


def lsmem_rows(vm: GuestVM) -> list[dict]:
    return json.loads(vm.sh(["lsmem", "--json", "-b", "-o", LSMEM_COLUMNS]))["memory"]


def lsmem_summary(vm: GuestVM, *args: str) -> dict[str, str]:
    """`lsmem --summary=only` as {label: value}."""
    out = vm.sh(["lsmem", *args, "--summary=only"])
    return dict((k.strip(), v.strip()) for k, v in
                (line.split(":", 1) for line in out.splitlines() if ":" in line))


def lsmem_zone(zone: str) -> str:
    # util-linux prints its own zone names: the kernel's "none" is "None"
    return "None" if zone == "none" else zone


def as_lsmem_row(rng: dict) -> dict:
    first, last = rng["first_block"], rng["last_block"]
    return {
        "range": f"0x{rng['start']:016x}-0x{rng['end']:016x}",
        "size": rng["size"],
        "state": rng["state"],
        "block": str(first) if first == last else f"{first}-{last}",
        "node": rng["node"],
        "zones": "/".join(lsmem_zone(z) for z in rng["zones"]),
    }


def kernel_blocks(vm: GuestVM) -> dict[int, dict]:
    """Per block, read straight from sysfs and /proc/iomem in the guest (guest/blocks.py)."""
    info = json.loads(vm.sh([vm.python, f"{vm.helpers}/blocks.py", "--json"]))
    return {int(n): b for n, b in info["blocks"].items()}


def assert_status_matches_lsmem(vm: GuestVM) -> dict:
    doc = agent_status(vm)
    rows = lsmem_rows(vm)
    summary = lsmem_summary(vm, "-b")
    # ranges: lsmem's rows for -o RANGE,SIZE,STATE,BLOCK,NODE,ZONES, one to one
    assert [as_lsmem_row(r) for r in doc["ranges"]] == rows
    # totals: lsmem -b --summary=only
    assert doc["block_size_bytes"] == int(summary["Memory block size"])
    assert doc["online_bytes"] == int(summary["Total online memory"])
    assert doc["offline_bytes"] == int(summary["Total offline memory"])
    # per zone and per node: the online rows of lsmem, summed
    by_zone: dict[str, int] = {}
    by_node: dict[str, int] = {}
    for row in rows:
        if row["state"] == "online":
            by_zone[row["zones"]] = by_zone.get(row["zones"], 0) + row["size"]
            by_node[str(row["node"])] = by_node.get(str(row["node"]), 0) + row["size"]
    assert {lsmem_zone(z): n for z, n in doc["online_bytes_by_zone"].items()} == by_zone
    assert doc["online_bytes_by_node"] == by_node
    # blocks: every memoryN, with the kernel's own state, valid_zones and node
    kb = kernel_blocks(vm)
    assert [b["index"] for b in doc["blocks"]] == sorted(kb)
    bs = doc["block_size_bytes"]
    for b in doc["blocks"]:
        k = kb[b["index"]]
        assert (b["start"], b["end"]) == (b["index"] * bs, (b["index"] + 1) * bs - 1), b
        assert b["state"] == k["state"], (b, k)
        assert b["zones"] == k["valid_zones"].split(), (b, k)
        assert f"node{b['node']}" == k["node"], (b, k)
    # the kernel settings the harness boots with
    assert doc["auto_online_blocks"] == "offline"
    assert doc["online_policy"] == vm.read("/sys/module/memory_hotplug/parameters/online_policy").strip()
    assert doc["auto_movable_ratio"] == 301
    assert doc["zones_supported"] is True
    assert doc["kexec_crash_loaded"] is False      # no crashkernel= in this VM
    assert doc["crash_hotplug"] is None            # 6.1 has no memory/crash_hotplug
    assert doc["warnings"] == []
    assert_origins(doc, kb)
    return doc


def assert_origins(doc: dict, kb: dict[int, dict]) -> None:
    """origin/group of every block, against the kernel's own signals for that block."""
    for b in doc["blocks"]:
        k = kb[b["index"]]
        fw = k["firmware_node"]
        if fw is not None:                                  # an ACPI memory device
            assert fw["hid"] == "PNP0C80", k
            expected = ("dimm", f"acpi:{fw['name']}")
        elif k["virtio_driver"] == "virtio_mem":            # below a virtioN iomem resource
            assert k["iomem_child"] == "System RAM (virtio_mem)", k
            expected = ("virtio-mem", f"virtio-mem:{k['iomem_top']}")
        else:
            assert k["in_boot_e820_any"] is True, k        # RAM of the boot E820 table
            expected = ("boot", None)
        assert (b["origin"], b["group"]) == expected, (b, k)
    origins: dict[str, list[int]] = {}
    for b in doc["blocks"]:
        origins.setdefault(b["origin"], []).append(b["index"])
    assert origins["boot"] == list(range(16))               # 2G of 128M blocks
    assert len(origins["dimm"]) == 8 and len(origins["virtio-mem"]) == 4, origins
    groups = {b["group"] for b in doc["blocks"] if b["origin"] == "dimm"}
    assert len(groups) == 2 and all(re.fullmatch(r"acpi:PNP0C80:0\d", g) for g in groups), groups
    vgroups = {b["group"] for b in doc["blocks"] if b["origin"] == "virtio-mem"}
    assert len(vgroups) == 1 and re.fullmatch(r"virtio-mem:virtio\d+", vgroups.pop())


def test_status_json_matches_lsmem_as_found(guest: GuestVM):
    doc = assert_status_matches_lsmem(guest)
    # the hot-plugged memory is there: 2G boot + 512M cold DIMM + 512M virtio-mem + 512M DIMM
    assert doc["online_bytes"] + doc["offline_bytes"] == (2 << 30) + 3 * (512 << 20)


def test_status_json_matches_lsmem_with_mixed_states_and_zones(guest: GuestVM):
    """Online blocks behind the agent's back (plain sysfs writes) so that the ranges
    split by state and zone, then compare again; also the human summary lines."""
    kb = kernel_blocks(guest)
    dimm = sorted(n for n, b in kb.items() if b["firmware_node"])
    vmem = sorted(n for n, b in kb.items() if b["virtio_driver"] == "virtio_mem")
    cold, hot = dimm[:4], dimm[4:]
    assert len(cold) == len(hot) == len(vmem) == 4, kb
    writes = [(cold[0], "online_movable"), (cold[1], "online_movable"),
              (vmem[1], "online_kernel"), (hot[3], "online_movable")]
    guest.sh(" ".join(f"f={MEM}/memory{n}/state; [ $(cat $f) = online ] || echo {w} > $f;"
                      for n, w in writes))
    doc = assert_status_matches_lsmem(guest)
    states = {b["index"]: (b["state"], b["zones"]) for b in doc["blocks"]}
    assert states[cold[0]] == ("online", ["Movable"])
    assert states[vmem[1]] == ("online", ["Normal"])
    assert states[cold[2]][0] == "offline"
    # the human summary says what lsmem's says
    r = agent(guest, "status")
    assert r.rc == 0, r
    ours = dict((k.strip(), v.strip()) for k, v in
                (line.split(":", 1) for line in r.stdout.splitlines() if ":" in line))
    theirs = lsmem_summary(guest)
    for label in ("Memory block size", "Total online memory", "Total offline memory"):
        assert ours[label] == theirs[label], (label, r.stdout, theirs)
