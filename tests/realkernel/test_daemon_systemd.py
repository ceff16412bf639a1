"""The daemon as the packaged systemd unit, under a real systemd as PID 1, on Linux 6.1.

One VM for the module: systemd as PID 1 (VMConfig(init="systemd")), 2G boot memory,
crashkernel=256M, a virtio-mem device (max 4G, nothing plugged), and no
memhp_default_state= on the command line (Debian's kernel then boots with
auto_online_blocks offline, and the daemon may hand onlining to the kernel). The unit is
packaging/systemd/vmem-agent.service exactly as shipped, with one drop-in that runs the
checkout with Debian's python3 (the package's binary is tests/realkernel/test_package.py's
business). A crash kernel is loaded with `kexec -s -p`; the config's reload command is a
script that counts its runs and really reloads it.

The tests run in order and build on each other (one guest, one daemon).
"""

from __future__ import annotations

import json
import shlex
import time
from pathlib import Path

import pytest

from .vm import GuestVM, VMConfig

pytestmark = pytest.mark.realkernel

MEM = "/sys/devices/system/memory"
PARAMS = "/sys/module/memory_hotplug/parameters"
UNIT = "vmem-agent.service"
UNIT_TEXT = (Path(__file__).resolve().parents[2] / "packaging" / "systemd" / UNIT).read_text()
COUNTER = "/var/lib/vmem-agent-test/reloads"
RELOAD = "/usr/local/sbin/vmem-agent-test-reload"
CRASH_APPEND = "console=ttyS0 irqpoll nr_cpus=1 reset_devices"
G = 1 << 30


@pytest.fixture(scope="module")
def vm_config():
    from .vm import VirtioMem

    return VMConfig(init="systemd", memory="2G", crashkernel="256M", memhp_default_state=None,
                    virtio_mem=VirtioMem(size="4G", requested_size=0), maxmem="16G")


CRASH_INITRD = "/var/lib/vmem-agent-test/initrd"  # the harness's lives under /root, which ProtectHome hides


def kexec_argv(vm: GuestVM) -> list[str]:
    return ["kexec", "-s", "-p", vm.kernel_image, f"--initrd={CRASH_INITRD}", f"--append={CRASH_APPEND}"]


@pytest.fixture(scope="module")
def guest(vm: GuestVM) -> GuestVM:
    """The crash kernel loaded, the reload script and config written, the unit installed and started."""
    assert vm.read(f"{MEM}/auto_online_blocks").strip() == "offline"
    vm.sh(f"mkdir -p {Path(CRASH_INITRD).parent} && cp {vm.initrd} {CRASH_INITRD} && {shlex.join(kexec_argv(vm))}")
    # The unit's ProtectSystem=strict leaves /usr/local read-only but runs it; the counter goes
    # to a directory the drop-in makes writable, as a real kdump tool's state dir would be.
    vm.sh(f"""mkdir -p {Path(COUNTER).parent} && : > {COUNTER}
cat > {RELOAD} <<'EOF'
#!/bin/sh
echo "reload memtotal=$(awk '/^MemTotal:/ {{print $2}}' /proc/meminfo)" >> {COUNTER}
kexec -p -u && exec {shlex.join(kexec_argv(vm))}
EOF
chmod +x {RELOAD}
mkdir -p /etc/vmem-agent && printf 'kdump_command = "{RELOAD}"\\nreconcile_interval = 20\\n' > /etc/vmem-agent/config.toml""")
    env = " ".join(f"{key}={value}" for key, value in vm.debian_python_env.items())
    vm.install_unit(UNIT, UNIT_TEXT, dropins={"checkout": f"""[Service]
ExecStart=
ExecStart={shlex.join(vm.debian_python_agent)} daemon
Environment={env} PYTHONDONTWRITEBYTECODE=1
ReadWritePaths={Path(COUNTER).parent}
"""})
    started = vm.systemctl("start", UNIT, timeout=180)
    assert started.rc == 0, (started, vm.journal(UNIT))
    return vm


def agent(vm: GuestVM, *args: str, rc: int = 0):
    r = vm.run(["env", *(f"{k}={v}" for k, v in vm.debian_python_env.items()), *vm.debian_python_agent, *args],
               timeout=300)
    assert r.rc == rc and "Traceback" not in r.stderr, (r, vm.journal(UNIT)[-3000:])
    return r


def blocks(vm: GuestVM) -> dict[int, tuple[str, str]]:
    """block -> (state, valid_zones) read in the guest."""
    out = vm.sh(f"for d in {MEM}/memory[0-9]*; do echo ${{d##*memory}} $(cat $d/state) $(cat $d/valid_zones); done")
    return {int(parts[0]): (parts[1], " ".join(parts[2:])) for parts in (line.split() for line in out.splitlines())}


def reloads(vm: GuestVM) -> int:
    return len(vm.read(COUNTER).splitlines())


def daemon_status(vm: GuestVM) -> dict:
    return json.loads(agent(vm, "status", "--json").stdout)["memory"]["daemon"]


def wait_quiet(vm: GuestVM, timeout: float = 60) -> dict:
    """Until the daemon runs no job and owes no kdump reload; its status then."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        status = daemon_status(vm)
        if status["job"] is None and not status["kdump"]["pending"] and not status["kdump"]["reloading"]:
            return status
        time.sleep(0.5)
    raise AssertionError(f"the daemon did not settle: {status}")


def test_the_packaged_unit_starts_ready_with_the_watchdog_and_hands_onlining_to_the_kernel(guest: GuestVM):
    props = guest.unit_properties(UNIT, "ActiveState", "SubState", "Type", "WatchdogUSec", "StatusText",
                                  "OOMScoreAdjust", "NRestarts")
    assert (props["ActiveState"], props["SubState"], props["Type"]) == ("active", "running", "notify"), props
    assert props["WatchdogUSec"] == "30s" and props["OOMScoreAdjust"] == "-900" and props["NRestarts"] == "0"
    assert props["StatusText"].startswith("no target: every hot-added block is onlined, 2G online"), props
    # no target, no memhp_default_state=: the kernel onlines with the same rule, set by the daemon
    assert guest.read(f"{MEM}/auto_online_blocks").strip() == "online"
    assert guest.read(f"{PARAMS}/online_policy").strip() == "auto-movable"
    text = agent(guest, "status").stdout
    assert "Onlined by:           the kernel (auto_online_blocks online, set by the vmem-agent daemon)" in text
    journal = guest.journal(UNIT, output="cat")
    assert "ready: no target" in journal


def test_a_hot_added_dimm_is_online_without_any_command_in_movable(guest: GuestVM):
    before = set(blocks(guest))
    reloads_before = reloads(guest)
    guest.hotadd_dimm("1G")
    new = sorted(set(blocks(guest)) - before)
    assert len(new) == 8
    guest.wait_for(" && ".join(f"grep -qx online {MEM}/memory{n}/state" for n in new), timeout=30)
    assert {blocks(guest)[n] for n in new} == {("online", "Movable")}  # 1G on 2G boot memory fits 301%
    wait_quiet(guest)
    assert reloads(guest) == reloads_before + 1  # one kdump reload for the whole DIMM
    assert guest.read("/sys/kernel/kexec_crash_loaded").strip() == "1"


def test_virtio_mem_growth_comes_online_in_the_zones_of_the_rule(guest: GuestVM):
    before = {n for n, (state, _zones) in blocks(guest).items() if state == "online"}
    guest.set_virtio_mem("1G")
    guest.wait_until(lambda: len({n for n, (s, _z) in blocks(guest).items() if s == "online"} - before) == 8,
                     timeout=60)
    grown = sorted({n for n, (s, _z) in blocks(guest).items() if s == "online"} - before)
    assert {blocks(guest)[n][1] for n in grown} == {"Movable"}
    assert guest.qmp.virtio_mem_size("vmem0") == G  # the driver plugged what the host asked for
    wait_quiet(guest)


def test_resize_through_the_socket_shrinks_the_guest_and_is_held(guest: GuestVM):
    online_before = {n for n, (s, _z) in blocks(guest).items() if s == "online"}
    reloads_before = reloads(guest)
    r = agent(guest, "resize", "3.5G")
    assert "Online memory: 4G -> 3.5G (target 3.5G): done" in r.stdout, r
    after = {n for n, (s, _z) in blocks(guest).items() if s == "online"}
    assert len(online_before - after) == 4 and not after - online_before
    assert guest.read(f"{MEM}/auto_online_blocks").strip() == "offline"  # target mode: the daemon decides
    assert json.loads(guest.read("/var/lib/vmem-agent/target.json"))["target_bytes"] == 7 * G // 2
    status = wait_quiet(guest)
    assert status["mode"] == "target" and status["target_bytes"] == 7 * G // 2
    assert reloads(guest) == reloads_before + 1
    assert guest.unit_properties(UNIT, "StatusText")["StatusText"].startswith("target 3.5G, 3.5G online")
    # hot-added memory beyond the target stays offline
    before = set(blocks(guest))
    guest.hotadd_dimm("512M")
    new = sorted(set(blocks(guest)) - before)
    time.sleep(3)
    assert {blocks(guest)[n][0] for n in new} == {"offline"}
    wait_quiet(guest)


def test_systemctl_reload_rereads_the_config_and_a_bad_one_keeps_the_old(guest: GuestVM):
    guest.sh("printf 'zone = \"fast\"\\n' >> /etc/vmem-agent/config.toml")
    assert guest.systemctl("reload", UNIT).rc == 0
    guest.wait_until(lambda: "configuration not reloaded" in guest.journal(UNIT, output="cat"), timeout=30)
    props = guest.unit_properties(UNIT, "ActiveState", "StatusText")
    assert props["ActiveState"] == "active" and "configuration error" in props["StatusText"], props
    guest.sh("sed -i '/zone = \"fast\"/d' /etc/vmem-agent/config.toml")
    assert guest.systemctl("reload", UNIT).rc == 0
    guest.wait_until(lambda: "configuration reloaded" in guest.journal(UNIT, output="cat"), timeout=30)
    assert guest.unit_properties(UNIT, "ActiveState")["ActiveState"] == "active"


def test_clear_returns_to_no_target_and_onlines_what_the_target_kept_offline(guest: GuestVM):
    r = agent(guest, "resize", "--clear")
    assert "memory block" in r.stdout and "done" in r.stdout, r
    assert {state for state, _zones in blocks(guest).values()} == {"online"}
    assert guest.read(f"{MEM}/auto_online_blocks").strip() == "online"
    wait_quiet(guest)


def test_the_watchdog_is_live(guest: GuestVM):
    """A daemon whose loop stops (SIGSTOP) is killed by systemd's watchdog and restarted."""
    guest.install_unit(UNIT, None, dropins={"watchdog": "[Service]\nWatchdogSec=4s\n"})
    assert guest.systemctl("restart", UNIT, timeout=180).rc == 0
    time.sleep(10)  # pings every 2 s keep it alive
    props = guest.unit_properties(UNIT, "ActiveState", "NRestarts", "MainPID")
    assert props["ActiveState"] == "active" and props["NRestarts"] == "0", props
    guest.sh(f"kill -STOP {props['MainPID']}")
    guest.wait_until(lambda: guest.unit_properties(UNIT, "NRestarts")["NRestarts"] == "1", timeout=60)
    assert "watchdog timeout" in guest.journal(UNIT, output="short").lower()
    guest.wait_until(lambda: guest.unit_properties(UNIT, "ActiveState")["ActiveState"] == "active", timeout=60)


def test_stop_is_clean_and_gives_the_kernel_settings_back(guest: GuestVM):
    guest.install_unit(UNIT, None, dropins={"watchdog": "[Service]\nWatchdogSec=30s\n"})
    assert guest.systemctl("restart", UNIT, timeout=180).rc == 0
    assert guest.read(f"{MEM}/auto_online_blocks").strip() == "online"
    began = time.monotonic()
    assert guest.systemctl("stop", UNIT, timeout=60).rc == 0
    took = time.monotonic() - began
    props = guest.unit_properties(UNIT, "ActiveState", "Result", "ExecMainStatus")
    assert props == {"ActiveState": "inactive", "Result": "success", "ExecMainStatus": "0"}, props
    assert guest.read(f"{MEM}/auto_online_blocks").strip() == "offline"
    assert guest.read(f"{PARAMS}/online_policy").strip() == "contig-zones"
    assert guest.run("test -e /run/vmem-agent/control.sock").rc != 0
    assert took < 30
