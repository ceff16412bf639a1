"""Re-run the kernel observations recorded in docs/kernel-observations.md.

    .venv/bin/python -m tests.realkernel.observe > /tmp/observations.md

Boots: 2G boot memory, one cold-plugged 1G pc-dimm, a virtio-mem device
(max 4G, requested 512M), crashkernel=256M; hot-adds a 512M pc-dimm over QMP,
then runs the commands below in the guest and prints them with their output
as markdown.  Everything happens inside the QEMU guest.
"""

from __future__ import annotations

import sys
import textwrap
import time

from .vm import GuestVM, VirtioMem, VMConfig

MEM = "/sys/devices/system/memory"

CONFIG = VMConfig(memory="2G", dimms=["1G"], crashkernel="256M",
                  virtio_mem=VirtioMem(size="4G", requested_size="512M"))

# Decode the e820 table the kernel booted with from /sys/kernel/boot_params/data
E820_HELPER = textwrap.dedent("""\
    import struct
    d = open("/sys/kernel/boot_params/data", "rb").read()
    n = d[0x1e8]
    types = {1: "RAM", 2: "reserved", 3: "ACPI", 4: "NVS", 5: "unusable", 7: "PMEM", 12: "PRAM"}
    for i in range(n):
        addr, size, typ = struct.unpack_from("<QQI", d, 0x2d0 + 20 * i)
        print(f"{addr:#014x}-{addr + size - 1:#014x} {types.get(typ, typ)}")
""")

def steps(vm: GuestVM, dimm: str):
    py = vm.python
    vm.put("e820.py", E820_HELPER)
    W = f"{py} {vm.helpers}/write_sysfs.py"
    return [
        ("Kernel command line", "cat /proc/cmdline"),
        ("QEMU view (host side, QMP query-memory-devices)", None),
        ("/proc/iomem (root; top level + RAM children)",
         "grep -v -e 'Kernel ' -e 'PCI Bus' -e '0000:00' -e 'virtio-pci' /proc/iomem"),
        ("/sys/firmware/memmap",
         "for d in $(ls /sys/firmware/memmap | sort -n); do "
         "echo \"$d: $(cat /sys/firmware/memmap/$d/start)-$(cat /sys/firmware/memmap/$d/end) "
         "$(cat /sys/firmware/memmap/$d/type)\"; done"),
        ("E820 table the kernel booted with (/sys/kernel/boot_params/data, x86)",
         f"{py} {vm.guest_xchg}/files/e820.py"),
        ("Per block: state, valid_zones, firmware_node, /proc/iomem top-level resource / "
         "RAM child, in boot E820, in /sys/firmware/memmap",
         f"{py} {vm.helpers}/blocks.py"),
        ("phys_device / removable / phys_index (boot, cold DIMM, virtio-mem, hot DIMM block)",
         f"cd {MEM}; grep . memory1/phys_device memory32/phys_device memory40/phys_device "
         "memory72/phys_device memory1/removable memory72/removable memory72/phys_index"),
        ("ACPI memory devices (PNP0C80) and their blocks",
         "for d in /sys/bus/acpi/devices/PNP0C80:*; do "
         "echo \"$(basename $d) hid=$(cat $d/hid) status=$(cat $d/status) "
         "uid=$(cat $d/uid) blocks=$(for l in $d/physical_node*; do "
         "[ -e $l ] && basename $(readlink $l); done | sort -V | tr '\\n' ' ')\"; done"),
        ("virtio devices (device id 0x0018 = virtio-mem)",
         "for d in /sys/bus/virtio/devices/*; do echo \"$(basename $d) "
         "device=$(cat $d/device) driver=$(basename $(readlink $d/driver))\"; done"),
        ("memoryN directory of a DIMM block; its uevent", f"ls {MEM}/memory72; cat {MEM}/memory72/uevent"),
        ("Module parameters",
         "grep . /sys/module/memory_hotplug/parameters/* /sys/module/virtio_mem/parameters/*"),
        ("auto_online_blocks, crash_hotplug, kexec",
         f"cat {MEM}/auto_online_blocks; cat {MEM}/crash_hotplug; "
         "grep . /sys/kernel/kexec_crash_loaded /sys/kernel/kexec_crash_size"),
        ("Errnos: online/online_kernel/online_movable on an online block, offline an offline "
         "block, bad value, no-op writes to `online`; offline boot blocks (memory0 spans "
         "DMA+DMA32, memory1, memory15 holds the crash kernel and the 0x7ffe0000 reserved tail)",
         f"{W} {MEM}/memory2/state=online {MEM}/memory2/state=online_kernel "
         f"{MEM}/memory2/state=online_movable {MEM}/memory73/state=offline "
         f"{MEM}/memory73/state=bogus {MEM}/memory2/online=1 {MEM}/memory73/online=0 "
         f"{MEM}/memory0/state=offline {MEM}/memory1/state=offline "
         f"{MEM}/memory15/state=offline {MEM}/memory1/state=online"),
        ("Hot-added DIMM block: online_movable, offline, online_kernel, offline, "
         "online (policy), offline",
         f"{W} {MEM}/memory72/state=online_movable {MEM}/memory72/state=offline "
         f"{MEM}/memory72/state=online_kernel {MEM}/memory72/state=offline "
         f"{MEM}/memory72/state=online {MEM}/memory72/state=offline"),
        ("Cold-plugged DIMM block memory32 and virtio-mem block memory40: online, offline",
         f"{W} {MEM}/memory32/state=online {MEM}/memory32/state=offline "
         f"{MEM}/memory40/state=online {MEM}/memory40/state=offline"),
        ("Offline a Movable block that is in use (a process holds 300 MiB anon memory, "
         "allocated after the block was onlined Movable; bounded by timeout 60)",
         f"{W} {MEM}/memory73/state=online_movable; "
         f"({py} -c 'import time; b = bytearray(300 << 20); b[::4096] = b\"x\" * len(b[::4096]); "
         "print(\"held\", flush=True); time.sleep(120)' &) ; sleep 5; "
         "grep -E 'Movable|present|managed|free ' /proc/zoneinfo | grep -A3 Movable | head -4; "
         f"time timeout 60 {W} {MEM}/memory73/state=offline; pkill -f bytearray; "
         f"cat {MEM}/memory73/state"),
        ("Pages of boot memory in use: offline the boot block that has the most used pages "
         "(memory5..memory13, timeout 20 each)",
         f"for n in 5 9 13; do timeout 20 {W} {MEM}/memory$n/state=offline; "
         f"echo rc=$?; done; for n in 5 9 13; do echo online > {MEM}/memory$n/state 2>/dev/null; done; "
         f"grep . {MEM}/memory5/state {MEM}/memory9/state {MEM}/memory13/state"),
        ("lsmem", "lsmem"),
        ("DIMM unplug (QMP device_del) with all its blocks offline", unplug_offline),
        ("DIMM unplug while its blocks are online Movable / online Normal", unplug_online),
        ("virtio-mem: raise requested-size 512M -> 3G with all its memory offline, "
         "then online everything it added", virtio_mem_grow),
        ("virtio-mem: lower requested-size to 256M", virtio_mem_shrink),
    ]


def _vmem_blocks(vm: GuestVM) -> str:
    return vm.sh(
        "set -- $(grep -l . /sys/bus/virtio/drivers/virtio_mem/virtio*/device >/dev/null; "
        "awk -F' : ' '/System RAM \\(virtio_mem\\)/ {print $1}' /proc/iomem); "
        "echo \"virtio_mem iomem ranges: $*\"")


def _count(vm: GuestVM, first: int, last: int) -> str:
    return vm.sh(
        f"on=0; off=0; for n in $(seq {first} {last}); do f={MEM}/memory$n/state; "
        "[ -e $f ] || continue; case $(cat $f) in online) on=$((on+1));; *) off=$((off+1));; esac; "
        "done; echo \"blocks online=$on offline=$off\"")


def unplug_offline(vm: GuestVM) -> str:
    out = [vm.sh(f"ls -d {MEM}/memory7[2-5] | xargs -n1 basename | tr '\\n' ' '; echo; "
                 f"cat {MEM}/memory7[2-5]/state | tr '\\n' ' '; echo")]
    t = time.monotonic()
    vm.qmp.execute("device_del", {"id": "dimm0"})
    ev = vm.qmp.wait_event("DEVICE_DELETED", 30,
                           match=lambda e: e["data"].get("device") == "dimm0")
    out.append(f"(host) device_del dimm0 -> DEVICE_DELETED after {time.monotonic() - t:.1f}s: "
               f"{ev['data']}")
    out.append(vm.sh(f"ls -d {MEM}/memory7[2-5] 2>&1; "
                     "cat /sys/bus/acpi/devices/PNP0C80:01/status; "
                     "grep 240000000 /proc/iomem /sys/firmware/memmap/*/start || echo 'gone from iomem and memmap'"))
    return "\n".join(out)


def unplug_online(vm: GuestVM) -> str:
    out = []
    for zone in ("online_movable", "online_kernel"):
        before = set(vm.memory_blocks())
        dimm = vm.hotadd_dimm("512M")
        new = sorted(set(vm.memory_blocks()) - before)
        vm.sh(f"for n in {' '.join(map(str, new))}; do echo {zone} > {MEM}/memory$n/state; done")
        vm.run("dd if=/dev/zero of=/tmp/fill bs=1M count=300 status=none")  # some page cache
        out.append(f"{dimm}: blocks {new[0]}-{new[-1]} {zone}: "
                   + _count(vm, new[0], new[-1]))
        t = time.monotonic()
        vm.qmp.execute("device_del", {"id": dimm})
        try:
            ev = vm.qmp.wait_event("DEVICE_DELETED", 30,
                                   match=lambda e, d=dimm: e["data"].get("device") == d)
            out.append(f"(host) device_del {dimm} -> DEVICE_DELETED after "
                       f"{time.monotonic() - t:.1f}s")
        except TimeoutError:
            out.append(f"(host) device_del {dimm} -> no DEVICE_DELETED within 30s")
        out.append("  after: " + _count(vm, new[0], new[-1]) + " (absent blocks not counted)")
        vm.run("rm -f /tmp/fill")
    out.append("(guest dmesg) " + vm.sh("dmesg | grep -i -E 'offline failed|eject|_OST' "
                                        "| tail -5; true"))
    return "\n".join(out)


def virtio_mem_grow(vm: GuestVM) -> str:
    out = []
    vm.set_virtio_mem("3G")
    time.sleep(20)
    out.append(f"(host) requested-size=3G; after 20s QEMU size="
               f"{vm.qmp.virtio_mem_size('vmem0') >> 20}M")
    out.append(_count(vm, 40, 71) + "   (virtio-mem region = blocks 40..71)")
    out.append(_vmem_blocks(vm))
    vm.sh(f"for n in $(seq 40 71); do f={MEM}/memory$n/state; [ -e $f ] && "
          "[ $(cat $f) = offline ] && echo online_movable > $f; done; true")
    out.append("(guest) onlined (online_movable) every offline virtio-mem block")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and vm.qmp.virtio_mem_size("vmem0") < 3 << 30:
        vm.sh(f"for n in $(seq 40 71); do f={MEM}/memory$n/state; [ -e $f ] && "
              "[ $(cat $f) = offline ] && echo online_movable > $f; done; true")
        time.sleep(1)
    out.append(f"(host) QEMU size={vm.qmp.virtio_mem_size('vmem0') >> 20}M")
    out.append(_count(vm, 40, 71))
    return "\n".join(out)


def virtio_mem_shrink(vm: GuestVM) -> str:
    vm.set_virtio_mem("256M")
    time.sleep(20)
    return "\n".join([
        f"(host) requested-size=256M; after 20s QEMU size={vm.qmp.virtio_mem_size('vmem0') >> 20}M",
        _count(vm, 40, 71), _vmem_blocks(vm)])


def main() -> int:
    out = sys.stdout
    t0 = time.monotonic()
    with GuestVM(CONFIG, name="observe") as vm:
        dimm = vm.hotadd_dimm("512M")
        out.write(f"<!-- booted in {vm.boot_seconds:.1f}s; kernel {vm.kernel_version}; "
                  f"QEMU config {CONFIG} ; hot-added {dimm} 512M -->\n\n")
        for title, cmd in steps(vm, dimm):
            out.write(f"### {title}\n\n```\n")
            if callable(cmd):
                out.write(cmd(vm) + "\n")
            elif cmd is None:
                for d in vm.qmp.memory_devices():
                    data = d["data"]
                    keys = ("id", "addr", "memaddr", "size", "hotplugged", "requested-size",
                            "max-size", "block-size", "node")
                    out.write(f"{d['type']}: " + ", ".join(
                        f"{k}={hex(data[k]) if k in ('addr', 'memaddr') else data[k]}"
                        for k in keys if k in data) + "\n")
            else:
                r = vm.run(cmd, timeout=120)
                shown = cmd.strip() if "\n" not in cmd.strip() else "(script, see observe.py)"
                out.write(f"$ {shown}\n{r.stdout}")
                if r.stderr:
                    out.write(r.stderr)
                if r.rc:
                    out.write(f"[rc={r.rc}]\n")
            out.write("```\n\n")
            out.flush()
    out.write(f"<!-- total {time.monotonic() - t0:.1f}s -->\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
