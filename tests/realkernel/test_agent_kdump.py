"""kdump reload after a changing run, with a real crash kernel loaded in the guest.

One VM for the module: 2G boot memory, crashkernel=256M, a 2G pc-dimm hot-added over
QMP (16 offline blocks of headroom), and a crash kernel loaded with `kexec -s -p` (so
/sys/kernel/kexec_crash_loaded reads 1).  Linux 6.1 has no memory/crash_hotplug, so in
mode auto the agent must run the reload command itself: once per changing run, after
the last block changed, and never for a run that changed nothing.

The reload command is a small script in the guest's /tmp that appends one line per run
(its arguments and the MemTotal it saw) to a counter file.  Every test reads the counter
first and checks the difference, so the order of the tests does not matter.
"""

from __future__ import annotations

import json
import shlex

import pytest

from .vm import GuestVM, VMConfig

pytestmark = pytest.mark.realkernel

MEM = "/sys/devices/system/memory"
M = 1 << 20
COUNTER = "/tmp/kdump-reloads"
RELOAD = "/tmp/kdump-reload.sh"
CRASH_APPEND = "console=ttyS0 irqpoll nr_cpus=1 reset_devices memhp_default_state=offline"


@pytest.fixture(scope="module")
def vm_config():
    return VMConfig(memory="2G", crashkernel="256M")


def load_crash_kernel_argv(vm: GuestVM) -> list[str]:
    return ["kexec", "-s", "-p", vm.kernel_image, f"--initrd={vm.initrd}", f"--append={CRASH_APPEND}"]


@pytest.fixture(scope="module")
def guest(vm: GuestVM) -> GuestVM:
    vm.hotadd_dimm("2G")
    r = vm.run(load_crash_kernel_argv(vm), timeout=120)
    assert r.rc == 0, r
    # reload.sh [ARGS...]: log one line; with KEXEC=1 in its argv, really reload the crash
    # kernel (unload, then load: if the load failed, kexec_crash_loaded would read 0)
    kexec = shlex.join(load_crash_kernel_argv(vm))
    vm.sh(f"""cat > {RELOAD} <<'EOF'
#!/bin/sh
echo "reload $* memtotal=$(awk '/^MemTotal:/ {{print $2}}' /proc/meminfo)" >> {COUNTER}
case " $* " in *" KEXEC=1 "*) kexec -p -u && exec {kexec} ;; esac
EOF
chmod +x {RELOAD}; : > {COUNTER}""")
    return vm


def agent_json(vm: GuestVM, *args: str, rc: int = 0) -> dict:
    r = vm.run([vm.agent, *args, "--json"], timeout=180)
    assert r.rc == rc and "Traceback" not in r.stderr, r
    return json.loads(r.stdout)["result"]


def reloads(vm: GuestVM) -> list[str]:
    return vm.read(COUNTER).splitlines()


def mem_total_kib(vm: GuestVM) -> int:
    return next(int(line.split()[1]) for line in vm.read("/proc/meminfo").splitlines()
                if line.startswith("MemTotal:"))


def changed(doc: dict) -> list[int]:
    return [b["index"] for b in doc["blocks"] if b["outcome"] == "done"]


def test_crash_kernel_is_loaded(guest: GuestVM):
    # (the agent's reading of it is what makes mode auto reload in the tests below)
    assert guest.read("/sys/kernel/kexec_crash_loaded").strip() == "1"
    assert guest.run(f"test -e {MEM}/crash_hotplug").rc != 0     # Linux 6.1: no crash_hotplug


def test_grow_by_one_block_reloads_once(guest: GuestVM):
    before = reloads(guest)
    doc = agent_json(guest, "resize", "+128M", "--kdump-command", f"{RELOAD} grow-one")
    assert len(changed(doc)) == 1, doc
    kdump = doc["kdump"]
    assert (kdump["action"], kdump["command"], kdump["returncode"]) == (
        "reloaded", [RELOAD, "grow-one"], 0), doc
    new = reloads(guest)[len(before):]
    assert new == [f"reload grow-one memtotal={mem_total_kib(guest)}"]   # once, after the change


def test_noop_resize_does_not_reload(guest: GuestVM):
    before = reloads(guest)
    doc = agent_json(guest, "resize", "+0", "--kdump-command", f"{RELOAD} noop")
    assert doc["blocks"] == [] and doc["kdump"] is None, doc
    assert reloads(guest) == before


def test_kdump_never_does_not_reload(guest: GuestVM):
    before = reloads(guest)
    doc = agent_json(guest, "resize", "+128M", "--kdump", "never", "--kdump-command", f"{RELOAD} never")
    assert len(changed(doc)) == 1, doc
    assert doc["kdump"]["action"] == "skipped" and doc["kdump"]["command"] is None, doc
    assert reloads(guest) == before


def test_multi_block_grow_reloads_once(guest: GuestVM):
    before = reloads(guest)
    doc = agent_json(guest, "resize", "+512M", "--kdump-command", f"{RELOAD} grow-four")
    assert len(changed(doc)) == 4, doc
    assert doc["kdump"]["action"] == "reloaded", doc
    new = reloads(guest)[len(before):]
    assert new == [f"reload grow-four memtotal={mem_total_kib(guest)}"]


def test_shrink_reloads_the_real_crash_kernel_once(guest: GuestVM):
    """The reload command really runs `kexec -s -p` again; the crash kernel stays loaded."""
    # at least 4 hot-plugged blocks online (Movable, by hand) to take away
    guest.sh(f"cd {MEM}; k=0; for n in $(seq 32 47); do read -r s < memory$n/state; "
             f"if [ $s = online ]; then k=$((k+1)); elif [ $k -lt 4 ]; then "
             f"echo online_movable > memory$n/state; k=$((k+1)); fi; done")
    start = sum(s == "online" for s in guest.memory_blocks().values()) * guest.block_size()
    before = reloads(guest)
    doc = agent_json(guest, "resize", str(start - 512 * M), "--kdump-command", f"{RELOAD} shrink KEXEC=1")
    assert len(changed(doc)) == 4 and doc["final_online_bytes"] == start - 512 * M, doc
    assert doc["kdump"]["action"] == "reloaded" and doc["kdump"]["returncode"] == 0, doc
    assert reloads(guest)[len(before):] == [f"reload shrink KEXEC=1 memtotal={mem_total_kib(guest)}"]
    assert guest.read("/sys/kernel/kexec_crash_loaded").strip() == "1"
