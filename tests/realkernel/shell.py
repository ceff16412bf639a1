"""Boot a harness VM by hand and poke at it.

    .venv/bin/python -m tests.realkernel.shell                 # serial console (needs a tty)
    .venv/bin/python -m tests.realkernel.shell --repl          # line REPL through the harness
    .venv/bin/python -m tests.realkernel.shell -c 'lsmem' -c 'cat /proc/iomem'
    .venv/bin/python -m tests.realkernel.shell --dimm 1G --virtio-mem 4G:512M --crashkernel 256M
    .venv/bin/python -m tests.realkernel.shell --init systemd --repl   # systemd as PID 1

Console mode: QEMU's serial port is your terminal, with a root bash in the
guest.  Ctrl-A c switches to the QEMU monitor (HMP) and back, where you can
hot-plug memory:
    (qemu) object_add memory-backend-ram,id=m1,size=512M
    (qemu) device_add pc-dimm,id=d1,memdev=m1
    (qemu) qom-set /machine/peripheral/vmem0 requested-size 1G
Ctrl-A x quits QEMU.

REPL mode (works without a tty): each line runs as a bash command in the guest;
  :dimm SIZE        hot-add a pc-dimm (waits for the blocks)
  :vmem SIZE        set virtio-mem requested-size
  :qmp CMD [JSON]   raw QMP command, e.g. :qmp query-memory-devices
  :blocks           block table (tests/realkernel/guest/blocks.py)
  :console          tail of the serial console
  :quit             (or EOF)
The QMP socket path is printed at start, for use from another terminal.
"""

from __future__ import annotations

import argparse
import json
import sys

from .vm import INIT_MODES, Dimm, GuestCommandTimeout, GuestVM, VirtioMem, VMConfig


def build_config(a) -> VMConfig:
    vmem = None
    if a.virtio_mem:
        size, _, req = a.virtio_mem.partition(":")
        vmem = VirtioMem(size=size, requested_size=req or 0)
    return VMConfig(memory=a.memory, maxmem=a.maxmem, smp=a.smp,
                    dimms=[Dimm(d) for d in a.dimm], virtio_mem=vmem,
                    crashkernel=a.crashkernel, cmdline=a.append, init=a.init,
                    max_lifetime=a.max_time)


def repl(vm: GuestVM) -> None:
    print(f"guest ready in {vm.boot_seconds:.1f}s; kernel {vm.kernel_version}; "
          f"QMP socket {vm.tmpdir}/qmp.sock. Type :quit to stop.", flush=True)
    while True:
        try:
            line = input("guest# ")
        except EOFError:
            print()
            return
        line = line.strip()
        if not line:
            continue
        try:
            if line in (":quit", ":q", "exit"):
                return
            if line.startswith(":dimm"):
                print("added", vm.hotadd_dimm(line.split()[1] if len(line.split()) > 1 else "512M"))
            elif line.startswith(":vmem"):
                vm.set_virtio_mem(line.split()[1])
            elif line.startswith(":qmp"):
                parts = line.split(None, 2)
                args = json.loads(parts[2]) if len(parts) > 2 else None
                print(json.dumps(vm.qmp.execute(parts[1], args), indent=1))
            elif line == ":blocks":
                print(vm.run([vm.python, f"{vm.helpers}/blocks.py"]).stdout, end="")
            elif line == ":console":
                print(vm.console_tail(40))
            else:
                r = vm.run(line, timeout=600)
                sys.stdout.write(r.stdout)
                sys.stderr.write(r.stderr)
                if r.rc:
                    print(f"[rc={r.rc}]")
        except GuestCommandTimeout as e:
            print(f"timeout: {e}")
        except Exception as e:  # keep the session alive
            print(f"error: {type(e).__name__}: {e}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.realkernel.shell", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--memory", default="2G")
    ap.add_argument("--maxmem", default="16G")
    ap.add_argument("--smp", type=int, default=1)
    ap.add_argument("--dimm", action="append", default=[], help="cold-plugged pc-dimm SIZE")
    ap.add_argument("--virtio-mem", metavar="MAX[:REQUESTED]")
    ap.add_argument("--crashkernel", metavar="SIZE")
    ap.add_argument("--append", default="", help="extra kernel command line")
    ap.add_argument("--init", choices=INIT_MODES, default="loop",
                    help="PID 1: the harness loop, or systemd on a writable overlay root")
    ap.add_argument("--max-time", type=float, default=4 * 3600, help="kill QEMU after (s)")
    ap.add_argument("--repl", action="store_true", help="line REPL instead of serial console")
    ap.add_argument("-c", "--command", action="append", default=[],
                    help="run this bash command in the guest, print output, exit")
    a = ap.parse_args(argv)
    cfg = build_config(a)

    if a.command:
        with GuestVM(cfg, name="shell") as vm:
            rc = 0
            for c in a.command:
                r = vm.run(c, timeout=600)
                sys.stdout.write(r.stdout)
                sys.stderr.write(r.stderr)
                rc = rc or r.rc
            return rc
    if a.repl or not sys.stdin.isatty():
        with GuestVM(cfg, name="shell") as vm:
            repl(vm)
        return 0

    cfg = cfg.replace(console="stdio", console_shell=True)
    print("Booting; Ctrl-A c = QEMU monitor, Ctrl-A x = quit.", flush=True)
    with GuestVM(cfg, name="shell") as vm:
        print(f"\r\n[ready in {vm.boot_seconds:.1f}s; QMP: {vm.tmpdir}/qmp.sock; "
              f"press Enter for the guest shell]\r", flush=True)
        vm.proc.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
