"""`vmem-agent doctor` on the real kernel: a guest set up wrong, then one set up right.

Two VMs (boot_vm), 2G boot memory each:
- booted with `memhp_default_state=online` (after the harness's own `=offline`: the last one
  wins) and a forum-style udev rule written into the guest's /etc/udev/rules.d (a tmpfs)
  and loaded with `udevadm control --reload`: doctor names both onliners, the rule by file
  and line, and their conflict (exit 11). Then kernel auto-online is switched off at
  runtime and a 512M DIMM hot-added: the rule alone onlines it, into ZONE_NORMAL under
  contig-zones, and doctor reports it as memory the host cannot unplug, and that the
  command line brings auto-online back at the next boot (exit 10);
- as the harness boots it (auto_online_blocks offline, no rule, no crashkernel), with the
  vmem-agent daemon running and a 512M DIMM hot-added and onlined by it: exit 0, nothing
  but notes (one of them the daemon's).
"""

from __future__ import annotations

import json

import pytest

from .vm import GuestVM, VMConfig

pytestmark = pytest.mark.realkernel

MEM = "/sys/devices/system/memory"
DIMM0 = [32, 33, 34, 35]
RULE_FILE = "/etc/udev/rules.d/99-hotplug-memory.rules"
RULE_LINE = 3
RULE_TEXT = """# Online hot-added memory (as forum answers suggest)

SUBSYSTEM=="memory", ACTION=="add", ATTR{state}=="offline", ATTR{state}="online"
"""


def doctor(vm: GuestVM, rc: int) -> dict:
    r = vm.run([vm.agent, "doctor", "--json"], timeout=120)
    assert r.rc == rc and "Traceback" not in r.stderr, r
    report = json.loads(r.stdout)["doctor"]
    assert report["exit_code"] == rc
    return report


def by_check(report: dict) -> dict[str, list[dict]]:
    found: dict[str, list[dict]] = {}
    for finding in report["findings"]:
        found.setdefault(finding["check"], []).append(finding)
    return found


def problems(report: dict) -> list[str]:
    return sorted(f["check"] for f in report["findings"] if f["severity"] != "info")


def zones(vm: GuestVM, blocks: list[int]) -> list[str]:
    return vm.sh(" ".join(f"cat {MEM}/memory{n}/valid_zones;" for n in blocks)).split()


def test_auto_online_and_a_udev_rule_are_both_found_and_conflict(boot_vm):
    vm = boot_vm(VMConfig(memory="2G", cmdline="memhp_default_state=online"))
    assert vm.read(f"{MEM}/auto_online_blocks").strip() == "online"
    vm.sh(f"cat > {RULE_FILE} <<'EOF'\n{RULE_TEXT}EOF\nudevadm control --reload")

    report = doctor(vm, rc=11)
    assert problems(report) == ["kernel-auto-online", "online-policy", "onliner-conflict", "udev-onlines-memory"]
    found = by_check(report)
    (auto,) = found["kernel-auto-online"]
    assert "auto_online_blocks=online, memhp_default_state=online on the kernel command line" in auto["message"]
    assert auto["fix"].startswith(f"echo offline > {MEM}/auto_online_blocks; and replace memhp_default_state=online")
    (rule,) = found["udev-onlines-memory"]
    assert rule["where"] == f"{RULE_FILE}:{RULE_LINE}"
    assert rule["message"].startswith(f'{RULE_FILE}:{RULE_LINE} onlines every hot-added memory block (ATTR{{state}}="online")')
    assert rule["fix"] == f"delete or comment out line {RULE_LINE} of {RULE_FILE}, then run: udevadm control --reload"
    (conflict,) = found["onliner-conflict"]
    assert conflict["severity"] == "error"
    assert f"2 onliners: the kernel (auto_online_blocks=online), {RULE_FILE}:{RULE_LINE}" in conflict["message"]

    # Now the rule alone onlines a hot-added DIMM: plain `online` under contig-zones is ZONE_NORMAL.
    vm.sh(f"echo offline > {MEM}/auto_online_blocks")
    vm.hotadd_dimm("512M")
    vm.wait_for(" && ".join(f"grep -qx online {MEM}/memory{n}/state" for n in DIMM0), timeout=30)
    assert zones(vm, DIMM0) == ["Normal"] * 4

    report = doctor(vm, rc=10)
    assert problems(report) == ["hotplugged-in-kernel-zone", "kernel-auto-online", "online-policy",
                                "udev-onlines-memory"]
    found = by_check(report)
    (normal,) = found["hotplugged-in-kernel-zone"]
    assert normal["blocks"] == DIMM0
    assert normal["message"].startswith("512M of hot-plugged memory (DIMM acpi:PNP0C80:00, blocks 32-35) is online in "
                                        "ZONE_NORMAL")
    (auto,) = found["kernel-auto-online"]
    assert auto["where"] == "/proc/cmdline" and "from the next boot on" in auto["message"]


def test_a_guest_set_up_right_is_exit_0(boot_vm):
    vm = boot_vm(VMConfig(memory="2G"))
    daemon = vm.spawn([vm.agent, "daemon"], timeout=600)
    vm.wait_for(f"{vm.agent} status | grep -q 'Daemon: *running'", timeout=120)
    vm.hotadd_dimm("512M")
    vm.wait_for(" && ".join(f"grep -qx online {MEM}/memory{n}/state" for n in DIMM0), timeout=60)
    assert zones(vm, DIMM0) == ["Movable"] * 4

    report = doctor(vm, rc=0)
    assert problems(report) == []
    notes = by_check(report)
    assert set(notes) == {"online-policy", "movable-over-ratio", "memmap-on-memory", "kdump", "daemon"}
    # memhp_default_state=offline on the harness's command line is the admin's choice: the daemon writes.
    assert notes["daemon"][0]["message"].endswith("no target: it onlines every hot-added block, writing each block itself")
    assert "ZONE_MOVABLE holds 512M" in notes["movable-over-ratio"][0]["message"]
    assert notes["memmap-on-memory"][0]["message"].endswith("the 512M hot-plugged so far took 8M")
    assert notes["kdump"][0]["message"].startswith("kdump is not in use")
    r = vm.run([vm.agent, "doctor"], timeout=120)
    assert r.rc == 0 and r.stdout.splitlines()[-1] == "no problems found (5 notes)", r
    daemon.kill()
