"""Smoke tests proving the real-kernel harness works.

One VM for the module (boot ~6 s under TCG): 2G boot memory, 8 DIMM slots,
crashkernel=256M and a 2G virtio-mem device starting at requested-size 0.
Every test compares against state it reads first, so order does not matter.
"""

from __future__ import annotations

import textwrap

import pytest

from .vm import GuestCommandTimeout, GuestVM, VirtioMem, VMConfig

pytestmark = pytest.mark.realkernel

MEM = "/sys/devices/system/memory"


@pytest.fixture(scope="module")
def vm_config():
    return VMConfig(crashkernel="256M",
                    virtio_mem=VirtioMem(size="2G", requested_size=0))


def new_blocks(before: dict[int, str], after: dict[int, str]) -> dict[int, str]:
    return {n: s for n, s in after.items() if n not in before}


def test_boot_and_uname(vm: GuestVM, realkernel_prereqs):
    r = vm.run("uname -r")
    assert r.rc == 0, r
    assert r.stdout.strip() == realkernel_prereqs.kernel.version
    assert vm.boot_seconds is not None
    # harness invariants every scenario relies on
    assert vm.read(f"{MEM}/auto_online_blocks").strip() == "offline"
    assert "memhp_default_state=offline" in vm.read("/proc/cmdline")


def test_run_reports_rc_stdout_stderr_and_stdin(vm: GuestVM):
    r = vm.run("echo out; echo err >&2; cat; exit 3", stdin="in\n")
    assert (r.rc, r.stdout, r.stderr) == (3, "out\nin\n", "err\n")
    r = vm.run(["printf", "%s|", "a b", "c'd"])
    assert r.stdout == "a b|c'd|"


def test_command_timeout_kills_guest_command(vm: GuestVM):
    with pytest.raises(GuestCommandTimeout):
        vm.run("echo started; sleep 30", timeout=1.5)
    # the VM is still usable afterwards and the sleep is gone
    assert vm.run("pgrep -x sleep || true").stdout.strip() == ""


def test_venv_usable_in_guest(vm: GuestVM):
    r = vm.run([vm.python, "-c", "import sys, pyudev, vmem_agent; print(sys.prefix)"])
    assert r.rc == 0, r
    assert r.stdout.strip() == str(vm.python).rsplit("/bin/", 1)[0]


def test_hotadd_dimm_gives_offline_blocks(vm: GuestVM):
    before = vm.memory_blocks()
    bs = vm.block_size()
    dimm = vm.hotadd_dimm("512M")
    added = new_blocks(before, vm.memory_blocks())
    assert len(added) == (512 << 20) // bs == 4, added  # 128 MiB blocks on x86_64
    assert set(added.values()) == {"offline"}
    # QEMU agrees: a hot-plugged pc-dimm of 512 MiB
    dev = [d["data"] for d in vm.qmp.memory_devices() if d["data"].get("id") == dimm]
    assert dev and dev[0]["hotplugged"] and dev[0]["size"] == 512 << 20
    # ...and every new block is linked to one ACPI memory device (PNP0C80)
    links = vm.sh(" ".join(f"readlink -f {MEM}/memory{n}/firmware_node;" for n in added))
    targets = set(links.split())
    assert len(targets) == 1 and "PNP0C80" in targets.pop(), links


def test_virtio_mem_requested_size_adds_offline_blocks(vm: GuestVM):
    before = vm.memory_blocks()
    start = vm.qmp.virtio_mem_size("vmem0")
    vm.set_virtio_mem(start + (512 << 20))
    vm.wait_until(lambda: vm.qmp.virtio_mem_size("vmem0") == start + (512 << 20),
                  timeout=60, what="virtio-mem plugged size")
    vm.wait_for(f"set -- {MEM}/memory[0-9]*; [ $# -ge {len(before) + 4} ]", timeout=30)
    added = new_blocks(before, vm.memory_blocks())
    assert len(added) == 4 and set(added.values()) == {"offline"}, added
    iomem = vm.read("/proc/iomem")
    assert "System RAM (virtio_mem)" in iomem, iomem


def test_pyudev_sees_memory_add_event(vm: GuestVM):
    listener = textwrap.dedent("""
        import sys, pyudev
        ctx = pyudev.Context()
        mon = pyudev.Monitor.from_netlink(ctx)          # udev-processed events
        mon.filter_by(subsystem="memory")
        mon.start()
        print("listening", flush=True)
        n = 0
        for dev in iter(lambda: mon.poll(timeout=60), None):
            print(dev.action, dev.sys_name, flush=True)
            if dev.action == "add":
                n += 1
                if n == 4:
                    break
    """)
    proc = vm.spawn([vm.python, "-c", listener], timeout=90)
    proc.wait_output("listening", timeout=60)
    vm.hotadd_dimm("512M", wait=False)
    res = proc.wait()
    assert res.rc == 0, res
    adds = [l for l in res.stdout.splitlines() if l.startswith("add memory")]
    assert len(adds) == 4, res


def test_kexec_crash_kernel_loads(vm: GuestVM):
    assert "crashkernel=256M" in vm.read("/proc/cmdline")
    assert int(vm.read("/sys/kernel/kexec_crash_size")) > 0
    r = vm.run(["kexec", "-s", "-p", vm.kernel_image, f"--initrd={vm.initrd}",
                "--append=console=ttyS0 irqpoll nr_cpus=1 reset_devices "
                "memhp_default_state=offline"], timeout=120)
    assert r.rc == 0, r
    assert vm.read("/sys/kernel/kexec_crash_loaded").strip() == "1"
    # crash_hotplug appeared in Linux 6.5 (CONFIG_CRASH_HOTPLUG); the
    # Debian 6.1 kernel does not have it.  Record what we see.
    ch = vm.run(f"cat {MEM}/crash_hotplug")
    major, minor = (int(x) for x in vm.kernel_version.split(".")[:2])
    if (major, minor) < (6, 5):
        assert ch.rc != 0 and "No such file" in ch.stderr, ch
    else:
        assert ch.rc == 0 and ch.stdout.strip() in ("0", "1"), ch
    vm.run(["kexec", "-p", "-u"])  # unload again (module VM is shared)
