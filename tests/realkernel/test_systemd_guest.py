"""The harness under a real systemd as PID 1: VMConfig(init="systemd").

One module VM (2G boot memory) for everything but the clean poweroff, which
needs a VM of its own.  Every test installs units under its own names and
compares against state it reads first, so the order does not matter.
"""

from __future__ import annotations

import json
import subprocess
import textwrap
from pathlib import Path

import pytest

from .vm import GUEST_RUNNER_UNIT, GUEST_TARGET, GuestVM, VMConfig

pytestmark = pytest.mark.realkernel

MEM = "/sys/devices/system/memory"
#: Host facts of this image the guest changes in its overlay (shared/GUEST-SYSTEMD.md).
HOST_FILES_REMOVED_IN_GUEST = ("/.dockerenv", "/usr/sbin/policy-rc.d",
                               "/var/lib/man-db/auto-update")
HOST_ONLY_IN_GUEST = ("/etc/.updated", "/var/.updated")


@pytest.fixture(scope="module")
def host_before() -> dict[str, bool]:
    """Which of the files the guest changes exist on the host before the boot."""
    return {p: Path(p).exists() for p in HOST_FILES_REMOVED_IN_GUEST + HOST_ONLY_IN_GUEST}


@pytest.fixture(scope="module")
def vm_config(host_before):
    return VMConfig(init="systemd")


def env_argv(vm: GuestVM) -> list[str]:
    return ["env", *(f"{k}={v}" for k, v in vm.debian_python_env.items())]


def test_systemd_is_pid1_and_boot_reaches_the_harness_target(vm: GuestVM):
    assert vm.read("/proc/1/comm").strip() == "systemd"
    assert vm.system_state == "running", vm.systemctl("--failed", "--no-legend").stdout
    props = vm.unit_properties(GUEST_TARGET, "ActiveState")
    assert props == {"ActiveState": "active"}
    runner = vm.unit_properties(GUEST_RUNNER_UNIT, "Type", "ActiveState")
    assert runner == {"Type": "exec", "ActiveState": "active"}
    # the small target: no getty, logind or the image's enabled services
    active = vm.systemctl("list-units", "--state=active", "--no-legend", "--plain").stdout
    for unwanted in ("getty", "systemd-logind", "systemd-timesyncd", "postgresql", ".timer"):
        assert unwanted not in active, active
    assert vm.systemctl("is-enabled", "systemd-timesyncd.service").stdout.strip() == "masked"
    # udev is systemd's own, and it coldplugged the memory blocks
    assert vm.systemctl("is-active", "systemd-udevd.service").stdout.strip() == "active"
    assert "DEVPATH=/devices/system/memory/memory0" in vm.sh(
        f"udevadm info --query=property {MEM}/memory0")
    assert vm.read(f"{MEM}/auto_online_blocks").strip() == "offline"


def test_overlay_fixes_stay_in_the_guest(vm: GuestVM, host_before):
    assert vm.sh("systemd-detect-virt").strip() == "qemu"   # no /.dockerenv
    for path in HOST_FILES_REMOVED_IN_GUEST:
        assert vm.run(["test", "-e", path]).rc == 1, path
    for path in HOST_ONLY_IN_GUEST:
        assert vm.run(["test", "-e", path]).rc == 0, path
    assert vm.read("/etc/udev/rules.d/80-drivers.rules") == ""
    # the checkout is visible at its own path even when it lives under /tmp
    assert vm.run(["test", "-f", f"{vm.repo}/pyproject.toml"]).rc == 0
    assert vm.run(["test", "-f", f"{vm.guest_checkout}/pyproject.toml"]).rc == 0
    assert {p: Path(p).exists() for p in host_before} == host_before


def test_root_overlay_takes_writes_renames_and_removals_of_host_files(vm: GuestVM):
    """What dpkg does to the root, done by hand: the guest sees each change, the
    host none, and the upper layer holds them (a whiteout for the removal)."""
    host_os_release = Path("/etc/os-release").read_text()
    assert Path("/etc/debian_version").exists()
    vm.sh("set -e\n"
          "cp /etc/os-release /etc/os-release.vmx-new\n"
          "echo VMX_GUEST=1 >>/etc/os-release.vmx-new\n"
          "mv -f /etc/os-release.vmx-new /etc/os-release\n"
          "rm /etc/debian_version\n"
          "mkdir -p /usr/lib/vmx-probe && echo data >/usr/lib/vmx-probe/file\n")
    assert vm.read("/etc/os-release") == host_os_release + "VMX_GUEST=1\n"
    assert vm.run(["test", "-e", "/etc/debian_version"]).rc == 1
    assert vm.read("/usr/lib/vmx-probe/file") == "data\n"
    whiteout = vm.sh(["stat", "-c", "%F %t:%T", f"{vm.overlay_upper}/etc/debian_version"])
    assert whiteout.strip() == "character special file 0:0"
    assert Path("/etc/os-release").read_text() == host_os_release
    assert Path("/etc/debian_version").exists()
    assert not Path("/usr/lib/vmx-probe").exists()


def hardened_notify_unit(vm: GuestVM) -> str:
    """A Type=notify unit with the hardening a memory daemon would have, running
    guest/notify_probe.py with Debian's python3."""
    probe = f"{vm.guest_checkout}/tests/realkernel/guest/notify_probe.py"
    return textwrap.dedent(f"""\
        [Unit]
        Description=harness test: hardened notify service onlining hot-added memory

        [Service]
        Type=notify
        ExecStart={vm.debian_python} {probe}
        ExecReload=/bin/kill -HUP $MAINPID
        WatchdogSec=10s
        ProtectSystem=strict
        ProtectKernelTunables=yes
        ReadWritePaths={MEM}
        ProtectHome=yes
        PrivateTmp=yes
        NoNewPrivileges=yes
        """)


def test_hardened_notify_unit_onlines_a_hotadded_dimm_block(vm: GuestVM):
    unit = "vmx-notify-online.service"
    vm.install_unit(unit, hardened_notify_unit(vm))
    vm.systemctl("start", unit, check=True)
    props = vm.unit_properties(unit, "ActiveState", "SubState", "StatusText", "ProtectSystem",
                               "ProtectKernelTunables", "ProtectHome", "WatchdogUSec",
                               "WatchdogTimestampMonotonic")
    assert props["ActiveState"] == "active" and props["SubState"] == "running", props
    assert props["StatusText"] == "watching memory blocks"
    assert (props["ProtectSystem"], props["ProtectKernelTunables"], props["ProtectHome"],
            props["WatchdogUSec"]) == ("strict", "yes", "yes", "10s")

    before = vm.memory_blocks()
    vm.hotadd_dimm("256M")
    added = sorted(set(vm.memory_blocks()) - set(before))
    assert len(added) == 2, added
    vm.wait_for(" && ".join(f"grep -qx online {MEM}/memory{n}/state" for n in added),
                timeout=30)
    for n in added:
        assert vm.read(f"{MEM}/memory{n}/valid_zones").strip() == "Movable"
    log = vm.journal(unit, output="cat")
    assert all(f"onlined memory{n} movable" in log for n in added), log
    # the watchdog pings arrive: systemd records a later one than at the start
    later = vm.unit_properties(unit, "ActiveState", "WatchdogTimestampMonotonic")
    assert later["ActiveState"] == "active"
    assert int(later["WatchdogTimestampMonotonic"]) > int(props["WatchdogTimestampMonotonic"])
    vm.systemctl("stop", unit, check=True)


def test_reload_and_stop_of_a_hardened_notify_unit(vm: GuestVM):
    unit = "vmx-notify-reload.service"
    vm.install_unit(unit, hardened_notify_unit(vm),
                    dropins={"timeouts": "[Service]\nTimeoutStopSec=30s\n"})
    assert vm.unit_properties(unit, "TimeoutStopUSec") == {"TimeoutStopUSec": "30s"}
    vm.systemctl("start", unit, check=True)
    pid = vm.unit_properties(unit, "MainPID")["MainPID"]
    vm.systemctl("reload", unit, check=True)
    vm.wait_for(f"journalctl --sync; journalctl -b -u {unit} -o cat | grep -qx 'reloaded 1'",
                timeout=30)
    props = vm.unit_properties(unit, "ActiveState", "MainPID")
    assert props == {"ActiveState": "active", "MainPID": pid}

    vm.systemctl("stop", unit, check=True)
    props = vm.unit_properties(unit, "ActiveState", "Result", "ExecMainStatus")
    assert props == {"ActiveState": "inactive", "Result": "success", "ExecMainStatus": "0"}
    assert "stopping" in vm.journal(unit, output="cat").splitlines()


def test_debian_python_runs_the_checkout_agent_also_under_protecthome(vm: GuestVM):
    r = vm.run([*env_argv(vm), *vm.debian_python_agent, "--help"])
    assert r.rc == 0 and "Usage: vmem-agent" in r.stdout, r
    direct = json.loads(vm.sh([*env_argv(vm), *vm.debian_python_agent, "status", "--json"]))

    unit = "vmx-agent-status.service"
    env = " ".join(f"{k}={v}" for k, v in vm.debian_python_env.items())
    vm.install_unit(unit, textwrap.dedent(f"""\
        [Service]
        Type=oneshot
        Environment={env}
        ExecStart={" ".join(vm.debian_python_agent)} status --json
        ProtectHome=yes
        ProtectSystem=strict
        PrivateTmp=yes
        """))
    vm.systemctl("start", unit, check=True)
    props = vm.unit_properties(unit, "Result", "ExecMainStatus")
    assert props == {"Result": "success", "ExecMainStatus": "0"}, vm.journal(unit)
    printed = [l for l in vm.journal(unit, output="cat").splitlines() if l.startswith("{")]
    in_unit = json.loads(printed[-1])
    assert in_unit["memory"]["blocks"] == direct["memory"]["blocks"]
    assert vm.run(["test", "-e", "/root"]).rc == 0  # hidden only inside the unit


PROBE_PACKAGE_FILES = {
    "/usr/share/vmx-probe/data": "v1\n",
    "/usr/bin/vmx-probe": "#!/bin/sh\n",
    "/etc/vmx-probe.conf": "setting=1\n",
    "/lib/systemd/system/vmx-probe.service":
        "[Service]\nType=exec\nExecStart=/bin/sleep infinity\n\n"
        "[Install]\nWantedBy=multi-user.target\n",
}
#: Maintainer scripts that enable and start the service the way
#: dh_installsystemd's do (deb-systemd-helper / deb-systemd-invoke).
PROBE_MAINTAINER_SCRIPTS = {
    "postinst": """\
        if [ "$1" = configure ]; then
            deb-systemd-helper enable vmx-probe.service
            systemctl daemon-reload
            deb-systemd-invoke start vmx-probe.service
        fi""",
    "prerm": "deb-systemd-invoke stop vmx-probe.service",
    "postrm": """\
        if [ "$1" = purge ]; then
            deb-systemd-helper purge vmx-probe.service
        fi""",
}


def build_probe_deb(workdir: Path) -> Path:
    """vmx-probe_1.0_all.deb: files in /usr, /etc (a conffile) and a service."""
    root = workdir / "vmx-probe"
    debian = root / "DEBIAN"
    debian.mkdir(parents=True)
    (debian / "control").write_text(textwrap.dedent("""\
        Package: vmx-probe
        Version: 1.0
        Architecture: all
        Maintainer: vmem-agent tests <tests@invalid>
        Description: harness test package
        """))
    (debian / "conffiles").write_text("/etc/vmx-probe.conf\n")
    for name, body in PROBE_MAINTAINER_SCRIPTS.items():
        (debian / name).write_text("#!/bin/sh\nset -e\n" + textwrap.dedent(body) + "\n")
        (debian / name).chmod(0o755)
    for path, text in PROBE_PACKAGE_FILES.items():
        (root / path.lstrip("/")).parent.mkdir(parents=True, exist_ok=True)
        (root / path.lstrip("/")).write_text(text)
    deb = workdir / "vmx-probe_1.0_all.deb"
    subprocess.run(["dpkg-deb", "--root-owner-group", "--build", str(root), str(deb)],
                   check=True, capture_output=True)
    return deb


def test_trivial_deb_installs_and_purges_in_the_guest(vm: GuestVM, tmp_path):
    deb = build_probe_deb(tmp_path)

    def dpkg(*args: str) -> str:
        return vm.sh(["env", "DEBIAN_FRONTEND=noninteractive", "dpkg", *args], timeout=180)

    def installed_version() -> str:
        return vm.run(["dpkg-query", "-W", "-f=${Status} ${Version}", "vmx-probe"]).stdout

    dpkg("-i", vm.put(deb.name, deb.read_bytes()))
    assert installed_version() == "install ok installed 1.0"
    assert vm.read("/usr/share/vmx-probe/data") == "v1\n"
    assert vm.read("/etc/vmx-probe.conf") == "setting=1\n"
    # the maintainer script started the service: no policy-rc.d in the guest
    assert vm.systemctl("is-active", "vmx-probe.service").stdout.strip() == "active"
    assert vm.systemctl("is-enabled", "vmx-probe.service").stdout.strip() == "enabled"

    dpkg("--purge", "vmx-probe")
    assert installed_version() == ""
    for gone in (*PROBE_PACKAGE_FILES, "/usr/share/vmx-probe",
                 "/etc/systemd/system/multi-user.target.wants/vmx-probe.service"):
        assert vm.run(["test", "-e", gone]).rc == 1, gone
    assert vm.systemctl("is-active", "vmx-probe.service").stdout.strip() == "inactive"
    # nothing of it reached the host (whose dpkg database others may change meanwhile)
    assert "Package: vmx-probe\n" not in Path("/var/lib/dpkg/status").read_text()
    assert not Path("/usr/share/vmx-probe").exists()


def test_poweroff_is_clean_and_logs_are_saved(boot_vm, tmp_path, monkeypatch):
    monkeypatch.setenv("VMEM_AGENT_REALKERNEL_LOGDIR", str(tmp_path))
    vm = boot_vm(VMConfig(init="systemd"))
    diagnostics = vm.collect_diagnostics()
    assert f"Reached target {GUEST_TARGET}" in diagnostics["journal"]
    assert "Linux version" in diagnostics["dmesg"]
    assert vm.poweroff() is True
    assert not vm.alive()
    assert "reboot: Power down" in vm.console_text()
    vm.close()
    assert not vm.tmpdir.exists()
    assert set(vm.saved_logs) == {"console", "journal", "dmesg"}
    for name, path in vm.saved_logs.items():
        assert path.parent == tmp_path and path.stat().st_size > 0, name
