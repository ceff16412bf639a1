"""`vmem-agent doctor`, the real command: on the recorded trees, on copies of them with udev
rules and kernel settings added, and on the fake kernel where the blocks' state matters."""

from __future__ import annotations

import json
import os
import shutil

import pytest

from tests.fake_cli import VM, agent
from tests.fakesysfs import TreeSpec
from tests.helpers import TREES_DIR, run_agent
from tests.test_status_dumps import unpacked  # noqa: F401  (fixture: the util-linux dumps, unpacked)
from tests.test_udev_rules import RHEL9_40_REDHAT, SUSE_80_HOTPLUG

EXIT_OK, EXIT_WARNINGS, EXIT_ERRORS = 0, 10, 11
FORUM_RULE = '# online hot-added memory (from a forum)\nSUBSYSTEM=="memory", ACTION=="add", ATTR{state}="online"\n'
MEMORY = "sys/devices/system/memory"


def doctor(root, *args, expect=None):
    """`doctor --json`: the document, checked for its shape, and the process."""
    proc = run_agent(root, "doctor", "--json", *args)
    assert "Traceback" not in proc.stderr, proc.stderr
    document = json.loads(proc.stdout)
    assert set(document) == {"doctor"}
    report = document["doctor"]
    assert set(report) == {"schema_version", "findings", "counts", "exit_code"}
    assert report["schema_version"] == 1 and report["exit_code"] == proc.returncode
    for finding in report["findings"]:
        assert set(finding) == {"check", "severity", "message", "fix", "where", "blocks"}
        assert finding["severity"] in ("error", "warning", "info")
    assert report["counts"] == {severity: sum(f["severity"] == severity for f in report["findings"])
                                for severity in ("error", "warning", "info")}
    if expect is not None:
        assert proc.returncode == expect, (proc.returncode, proc.stdout, proc.stderr)
    return report, proc


def checks(report, severity=None):
    return sorted(f["check"] for f in report["findings"] if severity is None or f["severity"] == severity)


def problems(report):
    return sorted((f["check"], f["severity"]) for f in report["findings"] if f["severity"] != "info")


def copy_tree(name: str, target) -> str:
    root = target / name
    shutil.copytree(TREES_DIR / name, root, symlinks=True)
    return root


def write(root, relative: str, text: str) -> None:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


# -- recorded trees ------------------------------------------------------------------------------------


@pytest.mark.parametrize("tree, notes, memmap", [
    ("qemu-x86_64-dimm", ["kdump", "memmap-on-memory", "online-policy"],
     "the 512M hot-plugged so far took 8M, 8M of it for the 512M still offline"),
    ("qemu-x86_64-virtio-mem", ["kdump", "memmap-on-memory", "movable-over-ratio", "online-policy"],
     "the 768M hot-plugged so far took 12M, 8M of it for the 512M still offline"),
])
def test_recorded_guests_are_set_up_right_but_for_the_missing_daemon(tree, notes, memmap):
    """The recorded guests keep hot-added memory offline and run no daemon: that one warning."""
    report, _ = doctor(TREES_DIR / tree, expect=EXIT_WARNINGS)
    assert problems(report) == [("daemon", "warning")] and checks(report, "info") == notes
    (daemon,) = [f for f in report["findings"] if f["check"] == "daemon"]
    assert daemon["fix"] == "systemctl enable --now vmem-agent"
    (finding,) = [f for f in report["findings"] if f["check"] == "memmap-on-memory"]
    assert finding["message"].endswith(memmap)  # 1/64 of the memory


@pytest.mark.parametrize("tarball, code, found", [
    ("lsmem-x86_64-16g.tar.bz2", EXIT_WARNINGS, [("kernel-auto-online", "warning"), ("online-policy", "warning")]),
    ("chmem-x86_64_16g.tar.bz2", EXIT_WARNINGS, [("kernel-auto-online", "warning"), ("online-policy", "warning")]),
    ("lsmem-aarch64_16K_16g.tar.bz2", EXIT_WARNINGS,
     [("kernel-auto-online", "warning"), ("online-policy", "warning")]),
    # The s390 dump holds only memory/: its architecture is unknown, so nobody onlining is warned about.
    ("lsmem-s390-zvm-6g.tar.bz2", EXIT_WARNINGS, [("daemon", "warning")]),
])
def test_util_linux_dumps(unpacked, tarball, code, found):  # noqa: F811
    report, _ = doctor(unpacked[tarball], expect=code)
    assert problems(report) == found
    if ("kernel-auto-online", "warning") in found:
        auto = next(f for f in report["findings"] if f["check"] == "kernel-auto-online")
        assert "auto_online_blocks=online, kernel command line unknown" in auto["message"]


def test_no_memory_sysfs_is_exit_3(tmp_path):
    proc = run_agent(tmp_path, "doctor")
    assert proc.returncode == 3 and proc.stdout == ""
    assert proc.stderr.startswith("vmem-agent: ") and len(proc.stderr.splitlines()) == 1


# -- recorded trees with udev rules and kernel settings added ---------------------------------------------


@pytest.fixture
def misconfigured(tmp_path):
    """The DIMM guest with memhp_default_state=online, a forum rule in /etc, RHEL's rule in
    /usr/lib, SUSE's masked by a /dev/null link, and a rule linked from /etc into the tree."""
    root = copy_tree("qemu-x86_64-dimm", tmp_path)
    cmdline = (root / "proc/cmdline").read_text().replace("memhp_default_state=offline", "memhp_default_state=online")
    write(root, "proc/cmdline", cmdline)
    write(root, f"{MEMORY}/auto_online_blocks", "online\n")
    write(root, "proc/sys/kernel/arch", "x86_64\n")
    write(root, "etc/udev/rules.d/99-hotplug-memory.rules", FORUM_RULE)
    write(root, "usr/lib/udev/rules.d/40-redhat.rules", RHEL9_40_REDHAT)
    write(root, "usr/lib/udev/rules.d/80-hotplug-cpu-mem.rules", SUSE_80_HOTPLUG)
    os.symlink("/dev/null", root / "etc/udev/rules.d/80-hotplug-cpu-mem.rules")
    write(root, "opt/rules/95-linked.rules", "\n\n" + FORUM_RULE)
    os.symlink("/opt/rules/95-linked.rules", root / "etc/udev/rules.d/95-linked.rules")
    return root


def test_every_onliner_with_file_and_line_and_their_conflict(misconfigured):
    report, _ = doctor(misconfigured, expect=EXIT_ERRORS)
    assert problems(report) == [("kernel-auto-online", "warning"), ("online-policy", "warning"),
                                ("onliner-conflict", "error"), ("udev-onlines-memory", "warning"),
                                ("udev-onlines-memory", "warning"), ("udev-onlines-memory", "warning")]
    rules = [f["where"] for f in report["findings"] if f["check"] == "udev-onlines-memory"]
    # udevd's order: by file name across the directories; the masked SUSE file is not read
    assert rules == ["/usr/lib/udev/rules.d/40-redhat.rules:21", "/etc/udev/rules.d/95-linked.rules:4",
                     "/etc/udev/rules.d/99-hotplug-memory.rules:2"]
    conflict = next(f for f in report["findings"] if f["check"] == "onliner-conflict")
    assert conflict["message"].startswith("hot-added memory has 4 onliners: the kernel (auto_online_blocks=online), "
                                          "/usr/lib/udev/rules.d/40-redhat.rules:21, ")
    auto = next(f for f in report["findings"] if f["check"] == "kernel-auto-online")
    assert "memhp_default_state=online on the kernel command line" in auto["message"]
    assert "replace memhp_default_state=online with memhp_default_state=offline" in auto["fix"]
    assert report["findings"][0]["severity"] == "error"


def test_human_output(misconfigured):
    proc = run_agent(misconfigured, "doctor")
    assert proc.returncode == EXIT_ERRORS and proc.stderr == ""
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("error: hot-added memory has 4 onliners: ") and lines[0].endswith(" [onliner-conflict]")
    assert lines[1].startswith("  fix: keep one onliner")
    assert "warning: /etc/udev/rules.d/99-hotplug-memory.rules:2 onlines every hot-added memory block " \
           '(ATTR{state}="online"): ' in proc.stdout
    assert "  fix: delete or comment out line 2 of /etc/udev/rules.d/99-hotplug-memory.rules, then run: " \
           "udevadm control --reload" in lines
    assert lines[-1] == "1 error, 5 warnings, 2 notes"


def test_fixing_what_doctor_says_leaves_no_problems(misconfigured):
    """Apply each fix as the operator would, in the tree, and doctor is content."""
    (misconfigured / "etc/udev/rules.d/99-hotplug-memory.rules").write_text(FORUM_RULE.replace("\nSUB", "\n#SUB"))
    (misconfigured / "etc/udev/rules.d/95-linked.rules").unlink()
    shutil.copy(misconfigured / "usr/lib/udev/rules.d/40-redhat.rules", misconfigured / "etc/udev/rules.d/")
    local = misconfigured / "etc/udev/rules.d/40-redhat.rules"
    lines = local.read_text().splitlines()
    lines[20] = "#" + lines[20]
    local.write_text("\n".join(lines) + "\n")
    write(misconfigured, f"{MEMORY}/auto_online_blocks", "offline\n")
    cmdline = (misconfigured / "proc/cmdline").read_text()
    write(misconfigured, "proc/cmdline", cmdline.replace("memhp_default_state=online", "memhp_default_state=offline"))
    report, _ = doctor(misconfigured, expect=EXIT_WARNINGS)
    assert problems(report) == [("daemon", "warning")]  # what is left: the onliner it should have, vmem-agent's


def test_reserved_crash_kernel_memory_without_a_crash_kernel(tmp_path):
    root = copy_tree("qemu-x86_64-dimm", tmp_path)
    write(root, "sys/kernel/kexec_crash_size", "268435456\n")
    report, _ = doctor(root, expect=EXIT_WARNINGS)
    (finding,) = [f for f in report["findings"] if f["check"] == "kdump"]
    assert finding["severity"] == "warning" and finding["message"].startswith("256M is reserved for a crash kernel")


def test_loaded_crash_kernel_and_the_reload_tool_in_the_root(tmp_path):
    root = copy_tree("qemu-x86_64-dimm", tmp_path)
    write(root, "sys/kernel/kexec_crash_loaded", "1\n")
    report, _ = doctor(root, expect=EXIT_ERRORS)
    (finding,) = [f for f in report["findings"] if f["check"] == "kdump"]
    assert "no reload command exists" in finding["message"]
    write(root, "usr/sbin/kdump-config", "#!/bin/sh\n")
    (root / "usr/sbin/kdump-config").chmod(0o755)
    report, _ = doctor(root, expect=EXIT_WARNINGS)
    assert problems(report) == [("daemon", "warning")]
    (finding,) = [f for f in report["findings"] if f["check"] == "kdump"]
    assert finding["message"].endswith("vmem-agent reloads it once after each change with 'kdump-config reload'")


# -- the fake kernel: state that changes -----------------------------------------------------------


def write_state(kernel, index: int, value: str) -> None:
    (kernel.root / f"{MEMORY}/memory{index}/state").write_text(value)


@pytest.mark.fake_kernel(VM)
def test_zones_and_dimms_as_the_blocks_change(fake_kernel):
    """DIMM 0 (32-35) into Normal, half of DIMM 1 (36-37) Movable, then a ratio that 256M of
    Movable exceeds; the fix doctor gives for the ratio works; doctor itself writes nothing.
    No daemon runs: its warning stands throughout and is left out of the comparisons."""
    report, _ = doctor(fake_kernel.root, expect=EXIT_WARNINGS)
    assert problems(report) == [("daemon", "warning")]
    for index in range(32, 36):
        write_state(fake_kernel, index, "online_kernel")
    for index in (36, 37):
        write_state(fake_kernel, index, "online_movable")
    report, _ = doctor(fake_kernel.root, expect=EXIT_WARNINGS)
    by_check = {f["check"]: f for f in report["findings"] if f["severity"] != "info" and f["check"] != "daemon"}
    assert sorted(by_check) == ["dimm-partly-offline", "hotplugged-in-kernel-zone"]
    assert by_check["hotplugged-in-kernel-zone"]["blocks"] == [32, 33, 34, 35]
    assert "(DIMM acpi:PNP0C80:00, blocks 32-35) is online in ZONE_NORMAL" in by_check["hotplugged-in-kernel-zone"]["message"]
    assert by_check["dimm-partly-offline"]["blocks"] == [38, 39]
    assert by_check["dimm-partly-offline"]["fix"].startswith("vmem-agent online 38-39 to use it")

    (fake_kernel.root / "sys/module/memory_hotplug/parameters/auto_movable_ratio").write_text("10")
    report, _ = doctor(fake_kernel.root, expect=EXIT_ERRORS)
    (ratio,) = [f for f in report["findings"] if f["check"] == "movable-over-ratio"]
    assert ratio["severity"] == "error" and ratio["fix"] == "vmem-agent offline 37" and ratio["blocks"] == [37]
    assert ratio["message"].startswith("ZONE_MOVABLE holds 256M, 12% of the 2G boot kernel memory, above the 10%")

    writes_before = len(fake_kernel.writes())
    agent(fake_kernel, *ratio["fix"].split()[1:], expect=0)
    assert len(fake_kernel.writes()) > writes_before
    writes_before = len(fake_kernel.writes())
    report, _ = doctor(fake_kernel.root, expect=EXIT_WARNINGS)
    assert [f["severity"] for f in report["findings"] if f["check"] == "movable-over-ratio"] == ["info"]
    assert len(fake_kernel.writes()) == writes_before  # doctor reads only


@pytest.mark.fake_kernel(TreeSpec.vm(boot_gib=2, virtio_mem_gib=16, virtio_mem_plugged_gib=1, kexec_crash_loaded=True,
                                         crash_hotplug=0))
def test_crash_kernel_and_a_big_virtio_mem_device(fake_kernel):
    report, _ = doctor(fake_kernel.root, expect=EXIT_ERRORS)
    by_check = {f["check"]: f for f in report["findings"]}
    assert by_check["kdump"]["severity"] == "error"  # loaded, no crash_hotplug, no reload program in the root
    memmap = by_check["memmap-on-memory"]
    assert memmap["severity"] == "warning" and "the 16G of hot-pluggable memory would take 256M" in memmap["message"]
    fake_kernel.set_crash(loaded=True, crash_hotplug=1)
    report, _ = doctor(fake_kernel.root, expect=EXIT_WARNINGS)
    (kdump,) = [f for f in report["findings"] if f["check"] == "kdump"]
    assert kdump["severity"] == "info" and "crash_hotplug=1" in kdump["message"]


def test_help_lists_the_exit_codes(tmp_path):
    proc = run_agent(tmp_path, "doctor", "--help")
    assert proc.returncode == 0
    for line in ("0    nothing wrong (notes only)", "10   warnings only", "11   at least one error"):
        assert line in proc.stdout
