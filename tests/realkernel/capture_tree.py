"""Capture a real guest's memory sysfs tree as a recorded test fixture.

    .venv/bin/python -m tests.realkernel.capture_tree            # default scenario
    .venv/bin/python -m tests.realkernel.capture_tree --out DIR --name qemu-x86_64-dimm
    .venv/bin/python -m tests.realkernel.capture_tree --name qemu-x86_64-virtio-mem \
        --dimm '' --virtio-mem 2G:512M --online-movable 2

Boots the host kernel (2G boot memory, memhp_default_state=offline), hot-adds
a 512M pc-dimm over QMP (4 offline 128M blocks) - or, with --virtio-mem MAX:PLUGGED,
starts a virtio-mem device that plugs PLUGGED at boot (and --online-movable N onlines
the first N offline hot-plugged blocks into Movable) - and copies, laid out as a
sysroot under tests/data/trees/<name>/:

  sys/devices/system/memory/...          files (content) + symlinks (as symlinks);
                                         skipped: probe, soft_offline_page,
                                         hard_offline_page, uevent, power/
  sys/devices/system/node/nodeN/memoryM  symlinks (+ nodeN/cpulist, has_* masks)
  sys/devices/LNXSYSTM:00/.../PNP0C80:NN ACPI memory devices (hid, uid, status,
                                         physical_node* links) - firmware_node targets
  sys/bus/acpi/devices/PNP0C80:NN        symlinks to those device dirs (as in sysfs)
  sys/firmware/memmap/N/{start,end,type}
  sys/module/memory_hotplug/parameters/*
  sys/kernel/boot_params/data            binary, as is (the boot E820 table)
  sys/kernel/kexec_crash_loaded, kexec_crash_size
  sys/bus/virtio/devices/virtioN         only with a virtio-mem device: symlinks to the
                                         device dirs (device, vendor, status, features,
                                         modalias and the driver symlink), and the
                                         sys/bus/virtio/drivers/<name> dirs the driver
                                         links point at (their uevent only: no back-links)
  proc/iomem, proc/meminfo, proc/cmdline

and lsmem's view of the guest into <name>.lsmem.json
(`lsmem --json -o RANGE,SIZE,STATE,BLOCK,NODE,ZONES`) and <name>.lsmem.txt
(plain `lsmem`).  Only the guest's sysfs is read; the host's is never touched.

Symlinks keep the kernel's relative targets, and every one of them resolves inside
the tree.  Links that would only add cycles are not copied (`subsystem`, `driver`
below memory/, the drivers' back-links to their devices); the cycles real sysfs has
between memoryN/node0, nodeN/memoryM, memoryN/firmware_node and physical_node* stay
(lsmem and the agent need them).  Plain `find` and os.walk() without followlinks
never follow links; `find -L` reports those loops and terminates.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import textwrap
import time
from pathlib import Path

from .qmp import parse_size
from .vm import REPO_ROOT, GuestVM, VirtioMem, VMConfig

DEFAULT_OUT = REPO_ROOT / "tests" / "data" / "trees"

# Runs in the guest (project venv python); copies into the exchange share.
GUEST_COPY = textwrap.dedent(r"""
    import glob, os, re, shutil, stat, sys
    dest = sys.argv[1]
    SKIP_NAMES = {"probe", "soft_offline_page", "hard_offline_page", "uevent"}
    SKIP_DIRS = {"power"}
    SKIP_LINKS = {"subsystem", "driver"}

    def put_file(src, text_ok=True):
        dst = dest + src
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        try:
            with open(src, "rb") as f:
                data = f.read()
        except OSError as e:  # unreadable attribute: record nothing
            print(f"skip {src}: {e}", file=sys.stderr)
            return
        with open(dst, "wb") as f:
            f.write(data)

    def put_link(src):
        dst = dest + src
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        os.symlink(os.readlink(src), dst)

    def copy_tree(top, skip_links=SKIP_LINKS):
        for root, dirs, files in os.walk(top):
            dirs[:] = [d for d in dirs if d not in SKIP_DIRS
                       and not os.path.islink(os.path.join(root, d))]
            os.makedirs(dest + root, exist_ok=True)
            entries = files + [d for d in os.listdir(root)
                               if os.path.islink(os.path.join(root, d)) and d not in files]
            for name in sorted(set(entries)):
                p = os.path.join(root, name)
                if os.path.islink(p):
                    if name not in skip_links:
                        put_link(p)
                    continue
                if name in SKIP_NAMES:
                    continue
                st = os.stat(p)
                if not stat.S_ISREG(st.st_mode) or not (st.st_mode & 0o444):
                    continue  # write-only attribute
                put_file(p)

    copy_tree("/sys/devices/system/memory")
    for node in sorted(glob.glob("/sys/devices/system/node/node[0-9]*")):
        os.makedirs(dest + node, exist_ok=True)
        for name in sorted(os.listdir(node)):
            p = os.path.join(node, name)
            if re.fullmatch(r"memory\d+", name) and os.path.islink(p):
                put_link(p)
            elif name in ("cpulist", "cpumap", "meminfo"):
                put_file(p)
    for f in glob.glob("/sys/devices/system/node/*"):
        if (os.path.isfile(f) and os.stat(f).st_mode & 0o444
                and os.path.basename(f) not in SKIP_NAMES):
            put_file(f)
    # ACPI memory devices that memoryN/firmware_node points at
    for adev in sorted(glob.glob("/sys/bus/acpi/devices/PNP0C80:*")):
        real = os.path.realpath(adev)
        for name in ("hid", "uid", "status", "path", "modalias"):
            if os.path.exists(os.path.join(real, name)):
                put_file(os.path.join(real, name))
        for l in sorted(glob.glob(real + "/physical_node*")):
            put_link(l)
    # ... and their entries on the ACPI bus, which the agent lists to find the DIMMs
    for adev in sorted(glob.glob("/sys/bus/acpi/devices/PNP0C80:*")):
        put_link(adev)
    copy_tree("/sys/firmware/memmap")
    copy_tree("/sys/module/memory_hotplug/parameters")
    # the boot E820 table (binary) and the crash kernel state
    for f in ("/sys/kernel/boot_params/data", "/sys/kernel/kexec_crash_loaded",
              "/sys/kernel/kexec_crash_size"):
        if os.path.exists(f):
            put_file(f)
    # virtio devices, when one of them is virtio-mem (device id 0x0018)
    vdevs = sorted(glob.glob("/sys/bus/virtio/devices/virtio*"))
    def vread(d, name):
        try:
            with open(os.path.join(d, name)) as f:
                return f.read().strip()
        except OSError:
            return None
    if any(vread(d, "device") == "0x0018" for d in vdevs):
        for vdev in vdevs:
            put_link(vdev)
            real = os.path.realpath(vdev)
            for name in ("device", "vendor", "status", "features", "modalias"):
                if os.path.isfile(os.path.join(real, name)):
                    put_file(os.path.join(real, name))
            drv = os.path.join(real, "driver")
            if os.path.islink(drv):
                put_link(drv)
                # the driver's uevent file is write-only (nothing to read): record it
                # empty, which also keeps the directory in git (no empty dirs there)
                driver_dir = dest + os.path.realpath(drv)
                os.makedirs(driver_dir, exist_ok=True)
                open(os.path.join(driver_dir, "uevent"), "wb").close()
    for f in ("/proc/iomem", "/proc/meminfo", "/proc/cmdline"):
        put_file(f)
""")


def capture(out_dir: Path = DEFAULT_OUT, name: str = "qemu-x86_64-dimm",
            config: VMConfig | None = None, dimm: str = "512M",
            online_movable: int = 0) -> Path:
    config = config or VMConfig(memory="2G")
    target = out_dir / name
    with GuestVM(config, name="capture") as vm:
        vmem = config.virtio_mem
        if vmem is not None and parse_size(vmem.requested_size):
            plugged = parse_size(vmem.requested_size)
            vm.wait_until(lambda: vm.qmp.virtio_mem_size(vmem.id) == plugged, timeout=60,
                          what=f"virtio-mem plugged {vmem.requested_size}")
            vm.wait_for("grep -q 'System RAM (virtio_mem)' /proc/iomem", timeout=30)
        if dimm:
            vm.hotadd_dimm(dimm)
        vm.run("udevadm settle --timeout=30")
        if online_movable:
            # the first N offline blocks above boot memory (all hot-plugged), Movable
            vm.sh(f"cd /sys/devices/system/memory; k=0; "
                  f"for n in $(ls -d memory[0-9]* | sed 's/memory//' | sort -n); do "
                  f"[ $k -lt {online_movable} ] || break; read -r s < memory$n/state; "
                  f"[ $s = offline ] || continue; "
                  f"echo online_movable > memory$n/state; k=$((k+1)); done")
        script = vm.put("capture.py", GUEST_COPY)
        gdest = f"{vm.guest_xchg}/tree"
        vm.run([vm.python, script, gdest], timeout=120, check=True)
        lsmem_json = vm.sh("lsmem --json -o RANGE,SIZE,STATE,BLOCK,NODE,ZONES")
        lsmem_txt = vm.sh("lsmem")
        src = vm.host_xchg / "tree"
        if target.exists():
            shutil.rmtree(target)
        out_dir.mkdir(parents=True, exist_ok=True)
        shutil.copytree(src, target, symlinks=True)
        (out_dir / f"{name}.lsmem.json").write_text(lsmem_json)
        (out_dir / f"{name}.lsmem.txt").write_text(lsmem_txt)
        devices = []
        if config.dimms:
            devices.append(f"cold-plugged pc-dimm(s) {', '.join(map(str, config.dimms))}")
        if vmem is not None:
            devices.append(f"virtio-mem-pci {vmem.id} (max {vmem.size}, requested-size "
                           f"{vmem.requested_size} at boot)")
        devices.append(f"hot-added pc-dimm {dimm or 'none'} (QMP object-add + device_add)")
        if online_movable:
            devices.append(f"then the first {online_movable} offline hot-plugged blocks "
                           "onlined with online_movable")
        (target / "README").write_text(
            f"Captured by tests/realkernel/capture_tree.py on {time.strftime('%Y-%m-%d')}\n"
            f"guest kernel {vm.kernel_version}, QEMU {config.machine} TCG, "
            f"-m {config.memory},slots={config.slots},maxmem={config.maxmem},\n"
            + "".join(f"{d},\n" for d in devices) +
            "kernel cmdline memhp_default_state=offline.  Files are verbatim copies of the "
            "guest's;\nsymlinks are kept as symlinks with their relative targets.\n")
    return target


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--name", default="qemu-x86_64-dimm")
    ap.add_argument("--memory", default="2G")
    ap.add_argument("--dimm", default="512M", help="size of the hot-added DIMM ('' for none)")
    ap.add_argument("--virtio-mem", metavar="MAX:PLUGGED", default=None,
                    help="add a virtio-mem device of MAX that plugs PLUGGED at boot")
    ap.add_argument("--online-movable", type=int, default=0, metavar="N",
                    help="online the first N offline hot-plugged blocks into Movable")
    a = ap.parse_args(argv)
    vmem = None
    if a.virtio_mem:
        size, _, plugged = a.virtio_mem.partition(":")
        vmem = VirtioMem(size=size, requested_size=plugged or 0)
    t = capture(a.out, a.name, VMConfig(memory=a.memory, virtio_mem=vmem), a.dimm,
                a.online_movable)
    print(f"captured into {t}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
