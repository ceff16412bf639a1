"""The Debian package on a real kernel, under a real systemd as PID 1.

The guest boots as a stock Debian guest does (no memhp_default_state= on the command
line). Its root is this machine's root under an overlay, so the Debian packages
installed here look installed there too; to show that the package's dependencies come
from Debian's packages, the guest first purges python3-pyudev, -click, -psutil and
-tenacity with dpkg (and checks that Python cannot import them any more), then installs their
.debs, fetched on the host with `apt-get download`, together with the built
vmem-agent .deb in one `dpkg -i`: no pip, no checkout on sys.path.

The .deb is $VMEM_AGENT_DEB (CI builds it with scripts/build-deb first) or is built
here with scripts/build-deb. Every test starts from "installed and running" (the
`package` fixture reinstalls or starts when a test before left it otherwise), so the
order of the tests does not matter; in file order the package is installed once.
"""

from __future__ import annotations

import os
import shlex
import subprocess
from pathlib import Path

import pytest

from vmem_agent.daemon.config import render_default_config

from .initramfs import default_cache_dir
from .vm import REPO_ROOT, GuestVM, VMConfig

pytestmark = pytest.mark.realkernel

PACKAGE = "vmem-agent"
UNIT = "vmem-agent.service"
DEPENDENCIES = ("python3-pyudev", "python3-click", "python3-psutil", "python3-tenacity")
DEPENDENCY_MODULES = ("pyudev", "click", "psutil", "tenacity")
MEM = "/sys/devices/system/memory"
KERNEL_SETTINGS = (f"{MEM}/auto_online_blocks",
                   "/sys/module/memory_hotplug/parameters/online_policy",
                   "/sys/module/memory_hotplug/parameters/auto_movable_ratio")
CONFIG = "/etc/vmem-agent/config.toml"
STATE_FILE = "/var/lib/vmem-agent/target.json"
ENABLE_LINK = f"/etc/systemd/system/sysinit.target.wants/{UNIT}"
#: Everything of the package on the guest's disk, and what its service made.
PACKAGE_PATHS = (
    "/usr/bin/vmem-agent",
    f"/lib/systemd/system/{UNIT}",
    CONFIG,
    "/usr/lib/python3/dist-packages/vmem_agent/daemon/loop.py",
    "/usr/share/man/man8/vmem-agent.8.gz",
    "/usr/share/man/man5/vmem-agent.toml.5.gz",
    "/usr/share/bash-completion/completions/vmem-agent",
    "/usr/share/zsh/vendor-completions/_vmem-agent",
    "/usr/share/fish/vendor_completions.d/vmem-agent.fish",
)
GONE_AFTER_PURGE = PACKAGE_PATHS + (
    "/etc/vmem-agent", "/var/lib/vmem-agent", "/run/vmem-agent",
    "/usr/lib/python3/dist-packages/vmem_agent", ENABLE_LINK,
    f"/etc/systemd/system/{UNIT}",  # the mask dpkg's remove step leaves until purge
)
DPKG_TIMEOUT = 600  # dpkg under TCG reads its database of 3000 packages over 9p


@pytest.fixture(scope="module")
def vm_config():
    return VMConfig(init="systemd", memhp_default_state=None)


@pytest.fixture(scope="module")
def package_deb(tmp_path_factory) -> Path:
    given = os.environ.get("VMEM_AGENT_DEB")
    if given:
        assert Path(given).is_file(), f"VMEM_AGENT_DEB={given}: no such file"
        return Path(given)
    out = tmp_path_factory.mktemp("deb")
    build = subprocess.run(["bash", str(REPO_ROOT / "scripts" / "build-deb"), "--no-lintian", str(out)],
                           env={**os.environ, "DEB_BUILD_OPTIONS": "nocheck"}, capture_output=True, text=True,
                           timeout=1800)
    assert build.returncode == 0, f"scripts/build-deb failed:\n{build.stdout}\n{build.stderr}"
    (deb,) = out.glob(f"{PACKAGE}_*_all.deb")
    return deb


@pytest.fixture(scope="module")
def dependency_debs() -> list[Path]:
    """Debian's .debs of the four dependencies, fetched once into the harness cache."""
    cache = default_cache_dir() / "debs"
    cache.mkdir(parents=True, exist_ok=True)
    download = ["apt-get", "download", "-q", *DEPENDENCIES]
    fetched = subprocess.run(download, cwd=cache, capture_output=True, text=True)
    if fetched.returncode != 0 and os.geteuid() == 0:  # no package lists yet
        subprocess.run(["apt-get", "update", "-qq"], check=True, capture_output=True)
        fetched = subprocess.run(download, cwd=cache, capture_output=True, text=True)
    assert fetched.returncode == 0, fetched.stderr
    debs = []
    for name in DEPENDENCIES:
        version = subprocess.run(["apt-cache", "policy", name], capture_output=True, text=True, check=True)
        candidate = next(line.split()[1] for line in version.stdout.splitlines() if "Candidate:" in line)
        (deb,) = cache.glob(f"{name}_{candidate.replace(':', '%3a')}_*.deb")
        debs.append(deb)
    return debs


def dpkg(vm: GuestVM, *args: str) -> str:
    """dpkg's output, stderr included (where deb-systemd-helper says what it linked)."""
    done = vm.run(["env", "DEBIAN_FRONTEND=noninteractive", "dpkg", *args], timeout=DPKG_TIMEOUT).check()
    return done.stdout + done.stderr


def package_status(vm: GuestVM, name: str = PACKAGE) -> str:
    return vm.run(["dpkg-query", "-W", "-f=${Status}", name]).stdout


def kernel_settings(vm: GuestVM) -> dict[str, str]:
    return {path: vm.read(path).strip() for path in KERNEL_SETTINGS}


def service_state(vm: GuestVM) -> dict[str, str]:
    return vm.unit_properties(UNIT, "ActiveState", "SubState", "StatusText", "MainPID", "Result",
                              "ExecMainStatus", "UnitFileState")


def exists(vm: GuestVM, path: str) -> bool:
    return vm.run(["test", "-e", path]).rc == 0 or vm.run(["test", "-L", path]).rc == 0


@pytest.fixture(scope="module")
def first_install(vm: GuestVM, package_deb, dependency_debs) -> dict:
    """Purge the dependencies in the guest, then `dpkg -i` their .debs and the package at once.
    Returns what was seen before and right after, before any test acts on the service."""
    before = {"settings": kernel_settings(vm), "config_on_host": Path(CONFIG).exists()}
    imports = "import " + ", ".join(DEPENDENCY_MODULES)
    assert vm.run(["/usr/bin/python3", "-c", imports]).rc == 0  # the host's packages, seen through the overlay
    dpkg(vm, "--purge", *DEPENDENCIES)  # not apt-get: its hooks start PackageKit, over a minute under TCG
    before["purged"] = {name: package_status(vm, name) for name in DEPENDENCIES}
    before["modules_after_purge"] = {module: vm.run(["/usr/bin/python3", "-c", f"import {module}"]).rc
                                     for module in DEPENDENCY_MODULES}
    debs = [vm.put(deb.name, deb.read_bytes()) for deb in (*dependency_debs, package_deb)]
    # What the README's `apt install ./vmem-agent_*.deb` would do: take the dependencies
    # from Debian's archive. Simulated (-s): it installs nothing, and runs no apt hooks.
    before["apt_plan"] = vm.sh(["apt-get", "install", "-s", "-q", debs[-1]], timeout=DPKG_TIMEOUT)
    before["dpkg_output"] = dpkg(vm, "-i", *debs)
    before["service"] = service_state(vm)
    before["settings_running"] = kernel_settings(vm)
    return before


def start(vm: GuestVM) -> None:
    vm.systemctl("start", UNIT, check=True)


@pytest.fixture
def package(vm: GuestVM, first_install, package_deb) -> dict:
    """The package installed and its service running, whatever a test before did."""
    if package_status(vm) != "install ok installed":
        dpkg(vm, "-i", vm.put(package_deb.name, package_deb.read_bytes()))
    start(vm)
    return first_install


def test_dependencies_are_debians_packages_installed_in_the_guest(vm: GuestVM, package, dependency_debs):
    assert set(package["purged"].values()) <= {"", "deinstall ok config-files", "unknown ok not-installed"}, \
        package["purged"]
    assert all(rc != 0 for rc in package["modules_after_purge"].values()), package["modules_after_purge"]
    for name, deb in zip(DEPENDENCIES, dependency_debs):
        version = deb.name.split("_")[1].replace("%3a", ":")
        assert vm.sh(["dpkg-query", "-W", "-f=${Status} ${Version}", name]) == f"install ok installed {version}"
    located = vm.sh(["/usr/bin/python3", "-c", "import " + ", ".join(DEPENDENCY_MODULES) + "; "
                     f"print(' '.join(m.__file__ for m in ({', '.join(DEPENDENCY_MODULES)})))"]).split()
    owners = vm.sh(["dpkg-query", "-S", *located])
    for name, path in zip(DEPENDENCIES, located):
        assert path.startswith("/usr/lib/python3/dist-packages/"), path
        assert f"{name}: {path}" in owners
    depends = vm.sh(["dpkg-query", "-W", "-f=${Depends}", PACKAGE])
    planned = {line.split()[1] for line in package["apt_plan"].splitlines() if line.startswith("Inst ")}
    assert {PACKAGE, *DEPENDENCIES} <= planned, package["apt_plan"]
    for name in DEPENDENCIES:
        assert name in depends, depends


def test_files_are_installed_where_debian_puts_them(vm: GuestVM, package):
    for path in PACKAGE_PATHS:
        assert exists(vm, path), path
    assert vm.sh(["dpkg-query", "-W", "-f=${Conffiles}", PACKAGE]).split()[0] == CONFIG
    assert vm.read(CONFIG) == render_default_config()
    assert vm.sh(["/usr/bin/vmem-agent", "--version"]).strip() == f"vmem-agent, version {package_version(vm)}"
    assert vm.sh(["head", "-1", "/usr/bin/vmem-agent"]).strip() == "#!/usr/bin/python3"
    assert not package["config_on_host"]  # the guest's conffile came from the package, not the host


def package_version(vm: GuestVM) -> str:
    return vm.sh(["dpkg-query", "-W", "-f=${Version}", PACKAGE])


def test_service_is_enabled_and_came_up_on_install(vm: GuestVM, package):
    """postinst enabled it (deb-systemd-helper) and started it (deb-systemd-invoke): READY=1
    reached, with the kernel's onlining handed over (no memhp_default_state= here)."""
    assert f"Created symlink {ENABLE_LINK}" in package["dpkg_output"]
    assert vm.sh(["readlink", ENABLE_LINK]).strip() == f"/lib/systemd/system/{UNIT}"
    assert vm.systemctl("is-enabled", UNIT).stdout.strip() == "enabled"
    came_up = package["service"]
    assert (came_up["ActiveState"], came_up["SubState"], came_up["UnitFileState"]) == ("active", "running", "enabled")
    assert came_up["StatusText"].startswith("no target: every hot-added block is onlined"), came_up
    hardening = vm.unit_properties(UNIT, "Type", "WatchdogUSec", "ProtectSystem", "ProtectKernelTunables",
                                   "ProtectHome", "NotifyAccess", "WatchdogTimestampMonotonic")
    assert hardening["WatchdogUSec"] == "30s" and int(hardening["WatchdogTimestampMonotonic"]) > 0
    assert (hardening["Type"], hardening["ProtectSystem"], hardening["ProtectKernelTunables"],
            hardening["ProtectHome"], hardening["NotifyAccess"]) == ("notify", "strict", "yes", "yes", "main")
    running = package["settings_running"]
    assert running[KERNEL_SETTINGS[0]] == "online"
    assert running[KERNEL_SETTINGS[1]] == "auto-movable"


def hotadd_and_wait_online(vm: GuestVM, size: str) -> list[int]:
    before = vm.memory_blocks()
    vm.hotadd_dimm(size)
    added = sorted(set(vm.memory_blocks()) - set(before))
    assert added and len(added) * vm.block_size() == int(size.rstrip("M")) << 20, added
    vm.wait_for(" && ".join(f"grep -qx online {MEM}/memory{n}/state" for n in added), timeout=60)
    return added


def test_a_hot_added_dimm_is_online_without_any_command(vm: GuestVM, package):
    """A 256M DIMM on a 2G guest: the ratio rule allows Movable, and the kernel onlines it
    in the hot-add with the settings the daemon gave it."""
    assert kernel_settings(vm)[KERNEL_SETTINGS[0]] == "online"
    added = hotadd_and_wait_online(vm, "256M")
    for n in added:
        assert vm.read(f"{MEM}/memory{n}/valid_zones").strip() == "Movable"
    status = vm.sh(["/usr/bin/vmem-agent", "status"])  # through the daemon's socket
    assert "set by the vmem-agent daemon" in status and "Daemon:               running" in status, status


def test_man_pages_render(vm: GuestVM, package):
    assert vm.sh(["man", "-w", "vmem-agent"]).strip() == "/usr/share/man/man8/vmem-agent.8.gz"
    env = ["env", "MANWIDTH=80", "LC_ALL=C.UTF-8"]
    page = vm.run([*env, "man", "--warnings", "vmem-agent"], timeout=120)
    assert page.rc == 0 and page.stderr == "", page
    assert page.stdout.startswith("VMEM-AGENT(8)")
    for command in ("status", "plan", "resize", "online", "offline", "daemon", "reconcile", "doctor"):
        assert f"\n   {command}" in page.stdout, command
    config_page = vm.run([*env, "man", "--warnings", "5", "vmem-agent.toml"], timeout=120)
    assert config_page.rc == 0 and config_page.stderr == "", config_page
    assert config_page.stdout.startswith("VMEM-AGENT.TOML(5)") and "kernel_onlining" in config_page.stdout


def bash_completions(vm: GuestVM, *words: str) -> list[str]:
    """What the installed bash completion offers for the command line `words` (the last one
    being completed), through click's completion protocol with the installed command."""
    script = ("source /usr/share/bash-completion/completions/vmem-agent\n"
              f"COMP_WORDS=({shlex.join(words)}); COMP_CWORD={len(words) - 1}; COMPREPLY=()\n"
              "_vmem_agent_completion vmem-agent\n"
              'printf "%s\\n" "${COMPREPLY[@]}"')
    return vm.sh(["bash", "-c", script]).split()


def test_bash_completion_completes_commands_options_and_choices(vm: GuestVM, package):
    assert bash_completions(vm, "vmem-agent", "re") == ["reconcile", "resize"]
    assert bash_completions(vm, "vmem-agent", "resize", "--zo") == ["--zone"]
    assert bash_completions(vm, "vmem-agent", "offline", "--kdump", "") == ["auto", "always", "never"]


def test_reload_rereads_the_config(vm: GuestVM, package):
    """`kernel_onlining = "never"` and a reload: the daemon takes onlining back from the kernel
    (its settings restored) and onlines the next DIMM itself."""
    pid = service_state(vm)["MainPID"]
    try:
        vm.put("config.toml", render_default_config() + 'kernel_onlining = "never"\n')
        vm.sh(["cp", "/run/vmx/files/config.toml", CONFIG])
        reload = vm.systemctl("reload", UNIT)
        assert reload.rc == 0 and reload.stderr == "", reload
        state = service_state(vm)
        assert (state["ActiveState"], state["MainPID"]) == ("active", pid), state
        journal = vm.journal(UNIT, output="cat")
        assert f"Reloaded {UNIT}" in journal
        assert "configuration reloaded: no target: every hot-added block is onlined; the daemon onlines " \
               "hot-added memory (kernel_onlining = never)" in journal, journal
        assert kernel_settings(vm) == package["settings"]
        added = hotadd_and_wait_online(vm, "256M")
        for n in added:
            assert vm.read(f"{MEM}/memory{n}/valid_zones").strip() == "Movable"
        vm.wait_for(f"journalctl -b -u {UNIT} -o cat | grep -q 'job done: .*{len(added)} block(s) written'",
                    timeout=30)
    finally:
        vm.put("config.toml", render_default_config())
        vm.sh(["cp", "/run/vmx/files/config.toml", CONFIG])
        vm.systemctl("reload", UNIT, check=True)
    assert kernel_settings(vm)[KERNEL_SETTINGS[0]] == "online"  # handed to the kernel again


def test_stop_is_clean_and_gives_the_kernel_its_settings_back(vm: GuestVM, package):
    stop = vm.systemctl("stop", UNIT)
    assert stop.rc == 0 and stop.stderr == "", stop
    state = service_state(vm)
    assert (state["ActiveState"], state["Result"], state["ExecMainStatus"]) == ("inactive", "success", "0"), state
    assert kernel_settings(vm) == package["settings"]
    journal = vm.journal(UNIT, output="cat").splitlines()
    last_stop = max(i for i, line in enumerate(journal) if line == "stopping on SIGTERM")
    after = journal[last_stop:]
    assert "stopped" in after and f"{UNIT}: Deactivated successfully." in after, after
    assert any(line.startswith(f"Stopped {UNIT}") for line in after), after


def test_purge_removes_everything(vm: GuestVM, package):
    cleared = vm.run(["/usr/bin/vmem-agent", "resize", "--clear"])  # through the daemon: it stores target.json
    assert cleared.rc == 0 and exists(vm, STATE_FILE), cleared
    dpkg(vm, "--purge", PACKAGE)
    assert package_status(vm) == ""
    leftovers = [path for path in GONE_AFTER_PURGE if exists(vm, path)]
    assert leftovers == []
    assert vm.systemctl("is-active", UNIT).stdout.strip() == "inactive"
    assert kernel_settings(vm) == package["settings"]  # prerm stopped the daemon, which restored them
