"""doctor's checks on hand-built pictures, one rule per test, then properties on random ones."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vmem_agent.core.doctor import (
    CHECKS,
    ERROR,
    INFO,
    SEVERITIES,
    WARNING,
    Finding,
    KdumpSetup,
    SetupPicture,
    check_movable_balance,
    diagnose,
    exit_code,
    onliners,
)
from vmem_agent.core.model import (
    OFFLINE, ONLINE, ORIGIN_HOTPLUG, ZONE_MOVABLE, ZONE_NORMAL, KernelParams, MemoryFigures,
)
from vmem_agent.core.onlining import kernel_parameter, kernel_parameters
from vmem_agent.core.udev_rules import EFFECT_KDUMP_RELOAD, EFFECT_ONLINE, RuleEffect
from vmem_agent.errors import EXIT_DOCTOR_ERRORS, EXIT_DOCTOR_WARNINGS, EXIT_OK
from tests.test_policy import boot, dimm, make_state, memory_states, run, virtio

M, G = 1 << 20, 1 << 30
CONTIG = KernelParams(online_policy="contig-zones", auto_movable_ratio=301, auto_movable_numa_aware=True,
                      memmap_on_memory=False)
PLAIN = boot(0, 16, zones=("DMA32",))  # a 2G guest
FIGURES = MemoryFigures(total_bytes=2 * G, available_bytes=int(1.5 * G))
RULE = "/etc/udev/rules.d/99-memory.rules"
REDHAT = "/usr/lib/udev/rules.d/40-redhat.rules"


def picture(*runs, auto="offline", params=CONTIG, cmdline="root=/dev/vda memhp_default_state=offline",
            effects=(), kdump=KdumpSetup(crash_size=0), loaded=False, crash_hotplug=None, figures=FIGURES, **more):
    state = dataclasses.replace(make_state(*(runs or (PLAIN,)), params=params), auto_online_blocks=auto,
                                kexec_crash_loaded=loaded, crash_hotplug=crash_hotplug)
    return SetupPicture(state=state, cmdline=cmdline, rule_effects=tuple(effects), kdump=kdump, figures=figures,
                        **more)


def onlining(path=RULE, line=3, values=("online",), conditions=()):
    return RuleEffect(EFFECT_ONLINE, path, line, "add", 'ATTR{state}="online"', values, conditions)


def findings(pic, check=None):
    found = diagnose(pic)
    return [f for f in found if check is None or f.check == check]


def problems(pic):
    """(check, severity) of everything but information."""
    return [(f.check, f.severity) for f in diagnose(pic) if f.severity != INFO]


# -- the kernel command line -------------------------------------------------------------------------


def test_kernel_parameters_quotes_dashes_and_init_arguments():
    cmdline = 'BOOT_IMAGE=/vmlinuz quiet memhp-default-state=online dyndbg="file x +p" crashkernel=256M -- single x=1'
    assert kernel_parameters(cmdline) == [("BOOT_IMAGE", "/vmlinuz"), ("quiet", None),
                                          ("memhp_default_state", "online"), ("dyndbg", "file x +p"),
                                          ("crashkernel", "256M")]
    assert kernel_parameter(cmdline, "x") is None
    assert kernel_parameter("memhp_default_state=offline memhp_default_state=online", "memhp_default_state") == "online"
    assert kernel_parameter(None, "crashkernel") is None


# -- who onlines hot-added memory ------------------------------------------------------------------


def test_a_guest_set_up_right_has_no_problems():
    pic = picture(PLAIN, dimm("acpi:PNP0C80:00", 32, 4, state=ONLINE, zones=(ZONE_MOVABLE,)))
    assert problems(pic) == []
    assert exit_code(diagnose(pic)) == EXIT_OK


def test_kernel_auto_online_from_the_command_line():
    pic = picture(auto="online", cmdline="quiet memhp_default_state=offline memhp_default_state=online")
    (finding,) = findings(pic, "kernel-auto-online")
    assert finding.severity == WARNING
    assert "auto_online_blocks=online, memhp_default_state=online on the kernel command line" in finding.message
    assert finding.fix.startswith("echo offline > /sys/devices/system/memory/auto_online_blocks")
    assert "replace memhp_default_state=online with memhp_default_state=offline" in finding.fix
    assert finding.where == "/sys/devices/system/memory/auto_online_blocks"


def test_kernel_auto_online_from_the_build_default():
    (finding,) = findings(picture(auto="online_movable", cmdline="quiet"), "kernel-auto-online")
    assert "build default" in finding.message
    assert "add memhp_default_state=offline to the kernel command line" in finding.fix


def test_auto_online_switched_on_at_runtime_against_the_command_line():
    (finding,) = findings(picture(auto="online", cmdline="memhp_default_state=offline"), "kernel-auto-online")
    assert "written at runtime: the kernel command line has memhp_default_state=offline" in finding.message
    assert finding.fix.endswith("find what writes it at boot (a unit, a tmpfiles.d or sysfs.d entry, a udev rule)")


def test_auto_online_switched_off_at_runtime_comes_back_at_boot():
    (finding,) = findings(picture(auto="offline", cmdline="memhp_default_state=online"), "kernel-auto-online")
    assert finding.severity == WARNING and "from the next boot" in finding.message
    assert finding.where == "/proc/cmdline"


def test_udev_rule_onliner_names_file_and_line_and_how_to_fix():
    pic = picture(effects=[onlining(), onlining(REDHAT, 21, ("online", "online_movable"), ('CONST{arch}!="s390*"',))])
    local, packaged = findings(pic, "udev-onlines-memory")
    assert local.where == f"{RULE}:3" and local.message.startswith(f"{RULE}:3 onlines every hot-added memory block")
    assert local.fix == f"delete or comment out line 3 of {RULE}, then run: udevadm control --reload"
    assert packaged.where == f"{REDHAT}:21" and 'when CONST{arch}!="s390*"' in packaged.message
    assert packaged.fix.startswith(f"cp {REDHAT} /etc/udev/rules.d/40-redhat.rules and comment out line 21 there")


def test_two_onliners_conflict_and_the_kernel_acts_first():
    pic = picture(auto="online", cmdline="memhp_default_state=online", effects=[onlining()])
    assert [o.name for o in onliners(pic)] == ["the kernel (auto_online_blocks=online)", f"{RULE}:3"]
    (conflict,) = findings(pic, "onliner-conflict")
    assert conflict.severity == ERROR
    assert f"2 onliners: the kernel (auto_online_blocks=online), {RULE}:3; the kernel" in conflict.message
    assert sorted(problems(pic)) == sorted([("onliner-conflict", ERROR), ("kernel-auto-online", WARNING),
                                            ("udev-onlines-memory", WARNING), ("online-policy", WARNING)])
    assert exit_code(diagnose(pic)) == EXIT_DOCTOR_ERRORS


def test_one_onliner_is_no_conflict():
    assert findings(picture(effects=[onlining()]), "onliner-conflict") == []


@pytest.mark.parametrize("auto, effects, policy, warned", [
    ("online", [], "contig-zones", True),
    ("online", [], None, True),  # a kernel without online_policy behaves like contig-zones
    ("online", [], "auto-movable", False),
    ("online_movable", [], "contig-zones", False),  # forces the zone: no policy involved
    ("offline", [onlining()], "contig-zones", True),
    ("offline", [onlining(values=("1",))], "contig-zones", True),
    ("offline", [onlining(values=("online_movable",))], "contig-zones", False),
    ("offline", [], "contig-zones", False),
])
def test_plain_online_under_contig_zones_goes_to_normal(auto, effects, policy, warned):
    pic = picture(auto=auto, effects=effects, params=dataclasses.replace(CONTIG, online_policy=policy))
    (finding,) = findings(pic, "online-policy")
    assert (finding.severity == WARNING) == warned
    if warned:
        assert "ZONE_NORMAL" in finding.message
        assert finding.fix.startswith("echo auto-movable > /sys/module/memory_hotplug/parameters/online_policy")


def test_a_ratio_above_four_to_one_is_warned_about():
    (finding,) = findings(picture(params=dataclasses.replace(CONTIG, auto_movable_ratio=1000)), "movable-ratio-setting")
    assert finding.severity == WARNING and "10 times the boot kernel memory" in finding.message
    assert findings(picture(params=dataclasses.replace(CONTIG, auto_movable_ratio=400)), "movable-ratio-setting") == []


# -- zones and blocks --------------------------------------------------------------------------------


def test_movable_above_the_allowance_is_an_error_with_the_blocks_to_offline():
    params = dataclasses.replace(CONTIG, auto_movable_ratio=50)  # 2G boot kernel memory allows 1G Movable
    pic = picture(PLAIN, dimm("acpi:PNP0C80:00", 32, 8, state=ONLINE, zones=(ZONE_MOVABLE,)),
                  dimm("acpi:PNP0C80:01", 40, 4, state=ONLINE, zones=(ZONE_MOVABLE,)), params=params)
    (finding,) = findings(pic, "movable-over-ratio")
    assert finding.severity == ERROR
    assert finding.message.startswith("ZONE_MOVABLE holds 1.5G, 75% of the 2G boot kernel memory, above the 50%")
    assert finding.fix == "vmem-agent offline 40-43" and finding.blocks == (40, 41, 42, 43)


def test_movable_within_the_allowance_is_information():
    pic = picture(PLAIN, virtio("virtio-mem:virtio2", 32, 2, state=ONLINE, zones=(ZONE_MOVABLE,)))
    (finding,) = findings(pic, "movable-over-ratio")
    assert finding.severity == INFO and "256M, 12% of the 2G boot kernel memory (allowance 301%)" in finding.message


def test_movable_over_the_ratio_on_one_node_only():
    pic = picture(boot(0, 8, node=0), boot(8, 8, node=1),
                  run(32, 4, ONLINE, (ZONE_MOVABLE,), node=1, origin="dimm", group="acpi:PNP0C80:00"),
                  params=dataclasses.replace(CONTIG, auto_movable_ratio=40))
    (finding,) = findings(pic, "movable-over-ratio")
    assert "ZONE_MOVABLE on node 1 holds 512M, 50% of the 1G boot kernel memory" in finding.message
    assert finding.fix == "vmem-agent offline 35"
    numa_blind = dataclasses.replace(pic, state=dataclasses.replace(
        pic.state, params=dataclasses.replace(pic.state.params, auto_movable_numa_aware=False)))
    assert [f.severity for f in findings(numa_blind, "movable-over-ratio")] == [INFO]


def test_boot_movable_memory_over_the_ratio_has_no_blocks_to_offline():
    pic = picture(boot(0, 2), boot(2, 14, zones=(ZONE_MOVABLE,)))  # movablecore= at boot
    (finding,) = findings(pic, "movable-over-ratio")
    assert finding.blocks == () and "movablecore=" in finding.fix


def test_hot_plugged_memory_in_normal_cannot_be_unplugged():
    pic = picture(PLAIN, dimm("acpi:PNP0C80:00", 32, 4, state=ONLINE, zones=(ZONE_NORMAL,)),
                  dimm("acpi:PNP0C80:01", 36, 4, state=ONLINE, zones=(ZONE_MOVABLE,)))
    (finding,) = findings(pic, "hotplugged-in-kernel-zone")
    assert finding.severity == WARNING and finding.blocks == (32, 33, 34, 35)
    assert finding.message.startswith("512M of hot-plugged memory (DIMM acpi:PNP0C80:00, blocks 32-35) is online in "
                                      "ZONE_NORMAL")
    assert finding.fix.startswith("vmem-agent offline 32-35 && vmem-agent online 32-35 --zone movable")


def test_virtio_mem_in_normal_names_the_device():
    pic = picture(PLAIN, virtio("virtio-mem:virtio2", 32, 2, state=ONLINE, zones=(ZONE_NORMAL,)))
    (finding,) = findings(pic, "hotplugged-in-kernel-zone")
    assert "(virtio-mem device virtio2, blocks 32-33)" in finding.message


def test_what_the_snapshot_could_not_read_is_noted():
    pic = picture()
    pic = dataclasses.replace(pic, state=dataclasses.replace(pic.state, warnings=("proc/iomem shows no addresses",)))
    (finding,) = findings(pic, "incomplete-reading")
    assert finding.severity == INFO and finding.message.endswith("proc/iomem shows no addresses")


def test_a_dimm_left_partly_offline():
    pic = picture(PLAIN, dimm("acpi:PNP0C80:00", 32, 2, state=ONLINE, zones=(ZONE_MOVABLE,)),
                  dimm("acpi:PNP0C80:00", 34, 2))
    (finding,) = findings(pic, "dimm-partly-offline")
    assert finding.blocks == (34, 35)
    assert "256M of it (blocks 34-35) is offline" in finding.message
    assert finding.fix == "vmem-agent online 34-35 to use it, or vmem-agent offline 32-33 so that the host can unplug it"
    assert findings(picture(PLAIN, dimm("acpi:PNP0C80:00", 32, 4)), "dimm-partly-offline") == []


def test_blocks_of_unknown_origin():
    pic = picture(PLAIN, run(40, 2, ONLINE, (ZONE_MOVABLE,), origin=ORIGIN_HOTPLUG))
    (finding,) = findings(pic, "unknown-origin")
    assert finding.blocks == (40, 41) and "256M of memory (blocks 40-41)" in finding.message


# -- memmap_on_memory ---------------------------------------------------------------------------------


def test_memmap_figure_of_offline_memory():
    (finding,) = findings(picture(PLAIN, dimm("acpi:PNP0C80:00", 32, 8)), "memmap-on-memory")
    assert finding.severity == INFO and "the 1G hot-plugged so far took 16M, 16M of it for the 1G still offline" in finding.message


def test_memmap_warning_for_a_big_hot_add_into_a_small_guest():
    # a virtio-mem device that can grow to 16G in a guest with 1.5G available: its memmap needs 256M
    pic = picture(PLAIN, virtio("virtio-mem:virtio2", 32, 2), virtio_mem_sizes=(("virtio-mem:virtio2", 16 * G),))
    (finding,) = findings(pic, "memmap-on-memory")
    assert finding.severity == WARNING
    assert "the 16G of hot-pluggable memory would take 256M, over 10% of the 1.5G available" in finding.message
    assert finding.fix == "memory_hotplug.memmap_on_memory=1 on the kernel command line (read at boot only)"
    small = dataclasses.replace(pic, virtio_mem_sizes=(("virtio-mem:virtio2", 4 * G),))
    assert [f.severity for f in findings(small, "memmap-on-memory")] == [INFO]


def test_memmap_on_memory_on():
    pic = picture(PLAIN, dimm("acpi:PNP0C80:00", 32, 8), params=dataclasses.replace(CONTIG, memmap_on_memory=True))
    (finding,) = findings(pic, "memmap-on-memory")
    assert finding.severity == INFO and "is on" in finding.message


# -- kdump ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("loaded, crash_hotplug, kdump, cmdline, severity, text", [
    (True, True, KdumpSetup(), "", INFO, "crash_hotplug=1"),
    (True, None, KdumpSetup(reload_command=("kdump-config", "reload")), "", INFO, "'kdump-config reload'"),
    (True, False, KdumpSetup(), "", ERROR, "no reload command exists"),
    (True, None, KdumpSetup(reload_command=("systemctl", "try-restart", "kdump.service")), "", ERROR,
     "no kdump unit is installed"),
    (True, None, KdumpSetup(reload_command=("systemctl", "try-restart", "kdump.service"),
                            units=frozenset({"kdump.service"})), "", INFO, "'systemctl try-restart kdump.service'"),
    (False, None, KdumpSetup(crash_size=256 * M), "crashkernel=256M", WARNING, "256M is reserved"),
    (False, None, KdumpSetup(crash_size=0), "crashkernel=8G", WARNING, "crashkernel=8G is on the kernel command line"),
    (False, None, KdumpSetup(crash_size=0), "", INFO, "kdump is not in use"),
    (None, None, KdumpSetup(), "", INFO, "kdump state unknown"),
])
def test_kdump(loaded, crash_hotplug, kdump, cmdline, severity, text):
    (finding,) = findings(picture(loaded=loaded, crash_hotplug=crash_hotplug, kdump=kdump, cmdline=cmdline), "kdump")
    assert finding.severity == severity and text in finding.message
    assert (finding.fix is not None) == (severity != INFO)


def test_udev_kdump_reload_rules():
    reload = [RuleEffect(EFFECT_KDUMP_RELOAD, "/usr/lib/udev/rules.d/50-kdump-tools.rules", line, action,
                         'PROGRAM="/usr/sbin/kdump-config try-reload"') for line, action in ((1, "online"), (2, "offline"))]
    online, offline = findings(picture(effects=reload), "udev-reloads-kdump")
    assert online.severity == WARNING and online.where == "/usr/lib/udev/rules.d/50-kdump-tools.rules:1"
    assert "every memory block online event" in online.message and "offline event" in offline.message
    redundant = findings(picture(effects=reload, crash_hotplug=True), "udev-reloads-kdump")
    assert [f.severity for f in redundant] == [INFO, INFO]


def test_unreadable_rules_files():
    (finding,) = findings(picture(unreadable_rules=((RULE, "Permission denied"),)), "udev-rules-unreadable")
    assert finding.severity == WARNING and finding.where == RULE


# -- exit codes and order --------------------------------------------------------------------------------


@pytest.mark.parametrize("severities, code", [
    ((), EXIT_OK), ((INFO, INFO), EXIT_OK), ((WARNING, INFO), EXIT_DOCTOR_WARNINGS),
    ((INFO, ERROR, WARNING), EXIT_DOCTOR_ERRORS),
])
def test_exit_code_is_the_worst_severity(severities, code):
    assert exit_code([Finding("x", severity, "m") for severity in severities]) == code


def test_exit_codes_differ_from_the_other_commands():
    from vmem_agent import errors

    others = {value for name, value in vars(errors).items() if name.startswith("EXIT_") and "DOCTOR" not in name}
    assert {EXIT_DOCTOR_WARNINGS, EXIT_DOCTOR_ERRORS}.isdisjoint(others | {130, 143})
    assert EXIT_DOCTOR_WARNINGS != EXIT_DOCTOR_ERRORS


# -- properties ------------------------------------------------------------------------------------------

_effects = st.lists(st.builds(
    RuleEffect, kind=st.sampled_from([EFFECT_ONLINE, EFFECT_KDUMP_RELOAD]),
    path=st.sampled_from([RULE, REDHAT]), line=st.integers(min_value=1, max_value=99),
    action=st.sampled_from(["add", "online", "offline"]), how=st.just('ATTR{state}="online"'),
    values=st.sampled_from([("online",), ("online_movable",), ("1",), ("online", "online_movable")]),
    conditions=st.sampled_from([(), ('CONST{virt}=="none"',)]),
), max_size=4)


@st.composite
def pictures(draw):
    state = draw(memory_states())
    state = dataclasses.replace(
        state,
        auto_online_blocks=draw(st.sampled_from([None, "offline", "online", "online_kernel", "online_movable"])),
        kexec_crash_loaded=draw(st.sampled_from([None, False, True])),
        crash_hotplug=draw(st.sampled_from([None, False, True])),
    )
    return SetupPicture(
        state=state,
        cmdline=draw(st.sampled_from([None, "", "memhp_default_state=online crashkernel=256M", "quiet"])),
        rule_effects=tuple(draw(_effects)),
        kdump=KdumpSetup(crash_size=draw(st.sampled_from([None, 0, 256 * M])),
                         reload_command=draw(st.sampled_from([None, ("kdumpctl", "reload")]))),
        figures=draw(st.sampled_from([None, FIGURES, MemoryFigures(G, 10 * M)])),
        virtio_mem_sizes=draw(st.sampled_from([(), (("virtio-mem:virtio2", 64 * G),)])),
    )


@settings(max_examples=300, deadline=None)
@given(pictures())
def test_every_finding_is_one_line_with_a_fix_for_every_problem(pic):
    found = diagnose(pic)
    assert [SEVERITIES.index(f.severity) for f in found] == sorted(SEVERITIES.index(f.severity) for f in found)
    for finding in found:
        assert finding.message and "\n" not in finding.message
        assert finding.severity in SEVERITIES
        if finding.severity != INFO:
            assert finding.fix and "\n" not in finding.fix
    codes = {ERROR: EXIT_DOCTOR_ERRORS, WARNING: EXIT_DOCTOR_WARNINGS}
    worst = min((SEVERITIES.index(f.severity) for f in found), default=len(SEVERITIES))
    assert exit_code(found) == codes.get(SEVERITIES[worst] if worst < len(SEVERITIES) else None, EXIT_OK)
    rules = [e for e in pic.rule_effects if e.kind == EFFECT_ONLINE]
    assert [f.where for f in found if f.check == "udev-onlines-memory"] == [e.where for e in rules]
    kernel_onlines = pic.state.auto_online_blocks in ("online", "online_kernel", "online_movable")
    assert len(onliners(pic)) == len(rules) + kernel_onlines
    assert bool([f for f in found if f.check == "onliner-conflict"]) == (len(onliners(pic)) >= 2)


@settings(max_examples=300, deadline=None)
@given(memory_states())
def test_offlining_the_blocks_the_ratio_finding_names_brings_movable_within_the_allowance(state):
    pic = SetupPicture(state=state)
    for finding in check_movable_balance(pic):
        if finding.severity != ERROR or not finding.blocks:
            continue
        named = set(finding.blocks)
        blocks = tuple(b._replace(state=OFFLINE, zones=(ZONE_NORMAL, ZONE_MOVABLE)) if b.index in named else b
                       for b in state.blocks)
        assert all(b.zone == ZONE_MOVABLE and b.hotplugged for b in state.blocks if b.index in named)
        after = check_movable_balance(SetupPicture(state=dataclasses.replace(state, blocks=blocks)))
        remaining = [f for f in after if f.severity == ERROR and f.message.split(" holds")[0] ==
                     finding.message.split(" holds")[0]]
        assert remaining == []


def test_every_check_is_registered_once():
    assert len(set(CHECKS)) == len(CHECKS)
    assert all(check.__name__.startswith("check_") for check in CHECKS)


def test_a_new_check_is_one_function():
    """What the daemon finding will look like: a function of the picture, added to the checks."""
    def check_example(pic: SetupPicture):
        if pic.state.auto_online_blocks == "offline":
            yield Finding("example", WARNING, "nobody onlines hot-added memory", "systemctl enable --now vmem-agent")

    found = diagnose(picture(), checks=CHECKS + (check_example,))
    assert [f.check for f in found if f.severity == WARNING] == ["example"]


# -- the daemon -------------------------------------------------------------------------------------

from vmem_agent.core.doctor import DaemonFacts  # noqa: E402

RUNNING_KERNEL = DaemonFacts(running=True, pid=321, onlining="kernel")


def test_a_running_daemon_that_handed_onlining_to_the_kernel_is_one_onliner():
    pic = picture(auto="online", cmdline="quiet", daemon=RUNNING_KERNEL)
    assert problems(pic) == []  # its own auto-online is not "the kernel onlines before vmem-agent"
    assert [o.name for o in onliners(pic)] == ["the vmem-agent daemon (pid 321)"]
    (finding,) = findings(pic, "daemon")
    assert finding.severity == INFO and "through the kernel's auto-online" in finding.message


def test_a_daemon_with_a_target_is_reported():
    pic = picture(daemon=DaemonFacts(running=True, pid=7, onlining="daemon", target_bytes=6 * G))
    (finding,) = findings(pic, "daemon")
    assert "holds online memory at 6G, writing each block itself" in finding.message


def test_the_daemon_and_a_udev_rule_conflict():
    pic = picture(effects=[onlining()], daemon=DaemonFacts(running=True, pid=9, onlining="daemon"))
    (conflict,) = findings(pic, "onliner-conflict")
    assert conflict.severity == ERROR and "the vmem-agent daemon (pid 9)" in conflict.message and RULE in conflict.message


def test_the_daemon_and_the_admins_kernel_auto_online_conflict():
    pic = picture(auto="online", cmdline="memhp_default_state=online",
                  daemon=DaemonFacts(running=True, pid=9, onlining="daemon"))
    assert ("onliner-conflict", ERROR) in problems(pic)


def test_nothing_onlining_hot_added_memory_is_a_warning():
    (finding,) = findings(picture(daemon=DaemonFacts(running=False)), "daemon")
    assert finding.severity == WARNING and "nothing onlines hot-added memory" in finding.message
    assert finding.fix == "systemctl enable --now vmem-agent"
    assert findings(picture(effects=[onlining()], daemon=DaemonFacts(running=False)), "daemon") == []


def test_a_stored_target_without_a_daemon_is_a_warning():
    (finding,) = findings(picture(daemon=DaemonFacts(running=False, stored_target_bytes=4 * G)), "daemon")
    assert finding.severity == WARNING and "target of 4G is stored" in finding.message


def test_a_daemon_whose_socket_is_closed_to_this_user():
    (finding,) = findings(picture(daemon=DaemonFacts(running=True, accessible=False)), "daemon")
    assert finding.severity == INFO and "run vmem-agent doctor as root" in finding.message


def test_on_s390_nobody_onlining_is_the_platforms_norm():
    assert findings(picture(daemon=DaemonFacts(running=False), architecture="s390x"), "daemon") == []
