"""Boot the host's kernel in QEMU and run commands in the guest.

    from tests.realkernel.vm import GuestVM, VMConfig, VirtioMem

    with GuestVM(VMConfig(virtio_mem=VirtioMem(size="4G"))) as vm:
        print(vm.run("uname -r").stdout)
        dimm = vm.hotadd_dimm("512M")          # QMP + wait until the guest sees the blocks
        r = vm.run([vm.agent, "--help"])       # /work/main/.venv/bin/vmem-agent in the guest
        assert r.rc == 0, r

The guest root is the host root (read-only 9p), so the project virtualenv and
repository work in the guest under the same paths.  Writable in the guest:
/tmp, /var/tmp, /var/log, /var/cache, /run, /dev/shm (tmpfs, per VM) and
``vm.guest_xchg`` (= /run/vmx, a host temp dir shared over 9p, host side
``vm.host_xchg``).

With ``VMConfig(init="systemd")`` a real systemd is PID 1 and the whole root is
writable: an overlayfs whose lower layer is the read-only 9p host root and
whose upper layer is a tmpfs (``vm.overlay_upper``), so ``dpkg -i`` works and
no change reaches the host.  The commands run in vmx-runner.service; see the
systemd helpers (install_unit, systemctl, unit_properties, journal, poweroff)::

    with GuestVM(VMConfig(init="systemd")) as vm:
        vm.install_unit("probe.service", "[Service]\nType=exec\nExecStart=/bin/sleep 60\n")
        vm.systemctl("start", "probe.service", check=True)
        assert vm.unit_properties("probe.service", "ActiveState") == {"ActiveState": "active"}

Every VM is bounded in time: boot timeout, per-command timeout, and a max
lifetime watchdog that kills QEMU.  QEMU is killed by pid (SIGTERM, then
SIGKILL) on close, on interpreter exit, and (PR_SET_PDEATHSIG) when the
process that started it dies.

Environment knobs:
  VMEM_AGENT_REALKERNEL_ACCEL   tcg (default) | kvm
  VMEM_AGENT_REALKERNEL_QEMU    qemu-system-x86_64 binary
  VMEM_AGENT_REALKERNEL_KERNEL  vmlinuz to boot (modules from /lib/modules/<ver>)
  VMEM_AGENT_REALKERNEL_CACHE   initramfs cache dir (default ~/.cache/vmem-agent/realkernel)
  VMEM_AGENT_REALKERNEL_LOGDIR  keep every VM's console log (and the journal and
                                dmesg read at a test failure) here
"""

from __future__ import annotations

import atexit
import ctypes
import dataclasses
import itertools
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from pathlib import Path
from typing import Callable, Mapping, Sequence

from .initramfs import (GUEST_OVERLAY_DIR, GUEST_XCHG, ROOT_TAG, XCHG_TAG,
                        KernelInfo, PrerequisiteMissing, build_initramfs,
                        find_busybox, find_kernel)
from .qmp import QMPClient, QMPError, parse_size

HERE = Path(__file__).resolve().parent
GUEST_LOOP = HERE / "guest_loop.sh"
#: PID 1 before systemd in ``init="systemd"`` guests: prepares the overlay root.
GUEST_SYSTEMD_BOOT = HERE / "guest_systemd.sh"
#: tests/realkernel/guest/: helper scripts to run in the guest (same path there)
GUEST_HELPERS = str(HERE / "guest")

#: Python of the project virtualenv running this harness.  The same path
#: works inside the guest.
REPO_ROOT = HERE.parent.parent
VENV_BIN = (Path(sys.prefix) if sys.prefix != sys.base_prefix
            else REPO_ROOT / ".venv") / "bin"
GUEST_PYTHON = str(VENV_BIN / "python")
GUEST_AGENT = str(VENV_BIN / "vmem-agent")

#: Debian's Python, outside /root (where this machine's venv Python lives and
#: which ProtectHome=yes hides from a unit), with Debian's python3-pyudev,
#: -click, -psutil and -tenacity.  Runs the checkout with PYTHONPATH set, see
#: GuestVM.debian_python_env.
DEBIAN_PYTHON = "/usr/bin/python3"
DEBIAN_PYTHON_AGENT = (DEBIAN_PYTHON, "-m", "vmem_agent")

SYSTEMD_BINARY = "/lib/systemd/systemd"
#: The guest's unit directory (in its overlay under init="systemd").
GUEST_UNIT_DIR = "/etc/systemd/system"
#: The target an init="systemd" guest boots: basic.target + the command runner.
GUEST_TARGET = "vmx.target"
GUEST_RUNNER_UNIT = "vmx-runner.service"
#: Second guest path of a checkout living under /tmp or /var/tmp, which
#: PrivateTmp= would hide from a unit.
GUEST_CHECKOUT_ALIAS = "/run/vmx-checkout"

INIT_MODES = ("loop", "systemd")
#: Default boot timeouts per init mode: a systemd boot took 19-54 s under load
#: (shared/GUEST-SYSTEMD.md).
DEFAULT_BOOT_TIMEOUT = {"loop": 90.0, "systemd": 150.0}
#: Diagnostics read from a guest whose test failed: bounded, the guest may be wedged.
DIAGNOSTICS_TIMEOUT = 30.0


# ---------------------------------------------------------------- errors
class GuestError(RuntimeError):
    """Something went wrong with the VM; ``console`` holds the log tail."""

    def __init__(self, msg: str, console: str = ""):
        self.console = console
        if console:
            msg = f"{msg}\n----- guest console (tail) -----\n{console}\n-----"
        super().__init__(msg)


class BootError(GuestError):
    pass


class GuestCommandTimeout(GuestError, TimeoutError):
    def __init__(self, msg: str, result: "Result | None" = None, console: str = ""):
        self.result = result
        super().__init__(msg, console)


class GuestCommandError(GuestError):
    def __init__(self, result: "Result"):
        self.result = result
        super().__init__(f"guest command failed: {result}")


# ---------------------------------------------------------------- config
@dataclasses.dataclass
class VirtioMem:
    """A virtio-mem-pci device (memory backend ``mem-<id>`` of ``size``)."""
    size: str | int = "4G"              # maximum size (backend size)
    requested_size: str | int = 0       # initial requested-size
    id: str = "vmem0"
    node: int = 0
    block_size: str | int | None = None  # device block size (default 2M)


@dataclasses.dataclass
class Dimm:
    """A cold-plugged pc-dimm (present when the VM starts)."""
    size: str | int = "1G"
    id: str | None = None
    node: int | None = None


@dataclasses.dataclass
class VMConfig:
    memory: str | int = "2G"            # boot memory
    slots: int = 8
    maxmem: str | int = "16G"
    smp: int = 1                        # 1 vCPU boots fastest and steadiest under TCG
    dimms: Sequence[Dimm | str | int] = ()   # cold-plugged pc-dimms
    virtio_mem: VirtioMem | None = None
    crashkernel: str | None = None      # e.g. "256M"
    cmdline: str = ""                   # extra kernel command line
    # memhp_default_state= on the command line (None: not given, the kernel's build default, which
    # for Debian's 6.1 is offline; a daemon may then configure auto-online itself)
    memhp_default_state: str | None = "offline"
    udev: bool = True                   # start systemd-udevd in the guest
    # "loop": guest_loop.sh is PID 1 on the read-only host root.  "systemd": a
    # real systemd is PID 1 on a writable overlay root (changes stay in the
    # guest) and guest_loop.sh runs as vmx-runner.service.
    init: str = "loop"
    machine: str = "pc"
    accel: str | None = None            # None: $VMEM_AGENT_REALKERNEL_ACCEL or tcg
    boot_timeout: float | None = None   # None: DEFAULT_BOOT_TIMEOUT[init]
    max_lifetime: float = 1200.0        # watchdog: QEMU killed after this
    qemu_args: Sequence[str] = ()       # extra QEMU arguments
    console_shell: bool = False         # interactive bash on ttyS0
    console: str = "file"               # "file" or "stdio" (interactive)

    def __post_init__(self) -> None:
        if self.init not in INIT_MODES:
            raise ValueError(f"VMConfig.init={self.init!r}: want one of {INIT_MODES}")

    def replace(self, **kw) -> "VMConfig":
        return dataclasses.replace(self, **kw)

    @property
    def effective_boot_timeout(self) -> float:
        return (DEFAULT_BOOT_TIMEOUT[self.init] if self.boot_timeout is None
                else self.boot_timeout)


@dataclasses.dataclass
class Result:
    rc: int
    stdout: str
    stderr: str
    duration: float
    cmd: str = ""

    @property
    def ok(self) -> bool:
        return self.rc == 0

    def check(self) -> "Result":
        if self.rc != 0:
            raise GuestCommandError(self)
        return self

    def __str__(self) -> str:
        def clip(s: str) -> str:
            return s if len(s) < 4000 else s[:2000] + "\n...\n" + s[-2000:]
        return (f"rc={self.rc} ({self.duration:.2f}s) cmd={self.cmd!r}\n"
                f"--- stdout ---\n{clip(self.stdout)}--- stderr ---\n{clip(self.stderr)}")


# ---------------------------------------------------------------- prereqs
@dataclasses.dataclass(frozen=True)
class Prerequisites:
    qemu: str
    kernel: KernelInfo
    busybox: Path
    accel: str


def find_qemu() -> str:
    q = os.environ.get("VMEM_AGENT_REALKERNEL_QEMU") or shutil.which("qemu-system-x86_64")
    if not q or not os.access(q, os.X_OK):
        raise PrerequisiteMissing(
            "qemu-system-x86_64 not found (apt-get install qemu-system-x86)")
    return q


def default_accel() -> str:
    accel = os.environ.get("VMEM_AGENT_REALKERNEL_ACCEL", "tcg").strip() or "tcg"
    if accel not in ("tcg", "kvm"):
        raise PrerequisiteMissing(f"VMEM_AGENT_REALKERNEL_ACCEL={accel!r}: want tcg or kvm")
    return accel


def check_prerequisites() -> Prerequisites:
    """Raise PrerequisiteMissing (with a readable reason) if the harness
    cannot run here."""
    qemu = find_qemu()
    kernel = find_kernel()
    busybox = find_busybox()
    accel = default_accel()
    if accel == "kvm" and not os.access("/dev/kvm", os.R_OK | os.W_OK):
        raise PrerequisiteMissing("VMEM_AGENT_REALKERNEL_ACCEL=kvm but /dev/kvm is not usable")
    for script in (GUEST_LOOP, GUEST_SYSTEMD_BOOT):
        if not script.exists():
            raise PrerequisiteMissing(f"{script} missing")
    return Prerequisites(qemu, kernel, busybox, accel)


# ---------------------------------------------------------------- process safety
_LIVE: "weakref.WeakSet[GuestVM]" = weakref.WeakSet()


@atexit.register
def _kill_all_at_exit() -> None:  # pragma: no cover - safety net
    for vm in list(_LIVE):
        try:
            vm.close()
        except Exception:
            pass


def _pdeathsig() -> None:  # runs in the child between fork and exec
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except Exception:
        pass


# ---------------------------------------------------------------- the VM
class GuestProcess:
    """A command running in the guest (see :meth:`GuestVM.spawn`)."""

    def __init__(self, vm: "GuestVM", cid: str, cmd: str, timeout: float):
        self.vm, self.id, self.cmd, self.timeout = vm, cid, cmd, timeout
        self.started = time.monotonic()
        self._result: Result | None = None

    def _p(self, ext: str) -> Path:
        return self.vm._q / f"{self.id}.{ext}"

    def poll(self) -> Result | None:
        if self._result is None:
            try:
                rc = self._p("rc").read_text()
            except FileNotFoundError:
                return None
            if rc.endswith("\n"):  # complete write
                self._result = self._collect(rc)
        return self._result

    def _read(self, ext: str) -> str:
        try:
            return self._p(ext).read_bytes().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def _collect(self, rc_text: str) -> Result:
        rc_text = rc_text.strip()
        rc = int(rc_text) if rc_text.lstrip("-").isdigit() else -1
        res = Result(rc, self._read("out"), self._read("err"),
                     time.monotonic() - self.started, self.cmd)
        for ext in ("rc", "out", "err", "cmd", "pid", "stdin", "cwd"):
            try:
                self._p(ext).unlink()
            except FileNotFoundError:
                pass
        return res

    def partial(self) -> Result:
        return Result(-1, self._read("out"), self._read("err"),
                      time.monotonic() - self.started, self.cmd)

    def wait_output(self, text: str, timeout: float = 30.0) -> str:
        """Wait until the command's stdout (so far) contains ``text``;
        returns the stdout so far.  Raises GuestCommandTimeout, or
        GuestError if the command ends without printing it."""
        deadline = time.monotonic() + timeout
        while True:
            out = self._result.stdout if self._result else self._read("out")
            if text in out:
                return out
            res = self.poll()
            if res is not None and text not in res.stdout:
                raise GuestError(f"guest command ended before printing {text!r}: {res}")
            if not self.vm.alive():
                raise GuestError("QEMU exited", self.vm.console_tail())
            if time.monotonic() > deadline:
                raise GuestCommandTimeout(
                    f"{text!r} not printed within {timeout}s by {self.cmd!r}", self.partial())
            time.sleep(0.02)

    def kill(self) -> None:
        if self._result is None:
            self._p("kill").write_text("")

    def wait(self, timeout: float | None = None) -> Result:
        """Wait for the command.  After ``timeout`` (default: the one given to
        spawn) the command's process group is SIGKILLed in the guest and
        GuestCommandTimeout is raised (``.result`` has the partial output)."""
        limit = self.timeout if timeout is None else timeout
        deadline = self.started + limit
        delay = 0.005
        while True:
            res = self.poll()
            if res is not None:
                return res
            if not self.vm.alive():
                raise GuestError(f"QEMU exited while running {self.cmd!r}",
                                 self.vm.console_tail())
            if time.monotonic() > deadline:
                part = self.partial()
                self.kill()
                # give the guest a moment to reap it so the files get cleaned
                end = time.monotonic() + 5
                while self.poll() is None and time.monotonic() < end and self.vm.alive():
                    time.sleep(0.05)
                raise GuestCommandTimeout(
                    f"guest command timed out after {limit:g}s: {self.cmd!r}", part,
                    self.vm.console_tail(20))
            time.sleep(delay)
            delay = min(delay * 1.5, 0.05)


class GuestVM:
    """A QEMU guest running the host kernel.  Use as a context manager."""

    def __init__(self, config: VMConfig | None = None, *, name: str = "vm", **kw):
        self.config = dataclasses.replace(config or VMConfig(), **kw)
        self.name = name
        self.proc: subprocess.Popen | None = None
        self.qmp: QMPClient | None = None  # type: ignore[assignment]
        self.tmpdir: Path | None = None
        self.boot_seconds: float | None = None
        self.guest_uptime_at_ready: float | None = None
        self.kernel_version: str | None = None
        #: init="systemd": `systemctl is-system-running --wait` when the runner came up
        self.system_state: str | None = None
        self._ids = itertools.count(1)
        self._watchdog: threading.Timer | None = None
        self._closed = False
        self._ready = False
        self._failed = False
        #: the guest's journal and dmesg as last read by collect_diagnostics
        #: (which runs by itself when a test using the VM fails)
        self.diagnostics: dict[str, str] = {}
        self.saved_logs: dict[str, Path] = {}
        self._qemu_out_fh = None
        self._block_size: int | None = None

    # ------------------------------------------------------------ lifecycle
    def __enter__(self) -> "GuestVM":
        try:
            self.start()
        except BaseException:
            self.close(failed=True)
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close(failed=exc[0] is not None)

    @property
    def host_xchg(self) -> Path:
        assert self.tmpdir
        return self.tmpdir / "xchg"

    guest_xchg = GUEST_XCHG
    python = GUEST_PYTHON
    agent = GUEST_AGENT
    repo = str(REPO_ROOT)
    helpers = GUEST_HELPERS
    debian_python = DEBIAN_PYTHON
    #: argv running the checkout's agent with Debian's Python; needs
    #: ``debian_python_env`` (in a unit: ``Environment=PYTHONPATH=...``)
    debian_python_agent = list(DEBIAN_PYTHON_AGENT)

    @property
    def init(self) -> str:
        return self.config.init

    @property
    def guest_checkout(self) -> str:
        """The checkout's path in the guest as every unit sees it: its own
        path, or GUEST_CHECKOUT_ALIAS when it lives under /tmp or /var/tmp
        (hidden by PrivateTmp=) in an init="systemd" guest."""
        return GUEST_CHECKOUT_ALIAS if self._checkout_needs_alias() else self.repo

    def _checkout_needs_alias(self) -> bool:
        return (self.init == "systemd"
                and any(REPO_ROOT.is_relative_to(d) for d in ("/tmp", "/var/tmp")))

    @property
    def debian_python_env(self) -> dict[str, str]:
        """Environment for ``debian_python_agent``: the checkout on the path."""
        return {"PYTHONPATH": self.guest_checkout}

    @property
    def overlay_upper(self) -> str:
        """init="systemd": the guest dir holding every change the guest made to its root."""
        self._require_systemd("overlay_upper")
        return f"{GUEST_OVERLAY_DIR}/layers/upper"

    @property
    def _q(self) -> Path:
        return self.host_xchg / "q"

    @property
    def console_log(self) -> Path:
        assert self.tmpdir
        return self.tmpdir / "console.log"

    def qemu_command(self, pre: Prerequisites, initrd: Path) -> list[str]:
        c = self.config
        accel = c.accel or pre.accel
        mem = f"{parse_size(c.memory) >> 20}M"
        args = [pre.qemu, "-name", f"vmx-{self.name}",
                "-nodefaults", "-nographic", "-no-reboot",
                "-machine", c.machine, "-accel", accel,
                "-smp", str(c.smp),
                "-m", f"{mem},slots={c.slots},maxmem={parse_size(c.maxmem) >> 20}M"]
        if accel == "kvm":
            args += ["-cpu", "host"]
        cmdline = ["console=ttyS0", *([f"memhp_default_state={c.memhp_default_state}"] if c.memhp_default_state else []),
                   "panic=-1",
                   "quiet", "loglevel=4", "rdinit=/init", "8250.nr_uarts=1",
                   "i8042.noaux", "i8042.nokbd", "i8042.nopnp"]
        if c.init == "systemd":
            cmdline.append(f"systemd.unit={GUEST_TARGET}")
        if c.crashkernel:
            cmdline.append(f"crashkernel={c.crashkernel}")
        if c.cmdline:
            cmdline.append(c.cmdline)
        args += ["-kernel", str(pre.kernel.image), "-initrd", str(initrd),
                 "-append", " ".join(cmdline)]
        args += ["-fsdev", "local,id=fsroot,path=/,security_model=none,readonly=on,"
                           "multidevs=remap",
                 "-device", f"virtio-9p-pci,fsdev=fsroot,mount_tag={ROOT_TAG}",
                 "-fsdev", f"local,id=fsx,path={self.host_xchg},security_model=none",
                 "-device", f"virtio-9p-pci,fsdev=fsx,mount_tag={XCHG_TAG}"]
        if c.console == "stdio":  # interactive: serial + HMP monitor (Ctrl-A c) on the tty
            args += ["-chardev", f"stdio,id=con,mux=on,signal=off,logfile={self.console_log}",
                     "-serial", "chardev:con", "-mon", "chardev=con,mode=readline"]
        else:
            args += ["-chardev", f"file,id=con,path={self.console_log}",
                     "-serial", "chardev:con"]
        args += ["-qmp", f"unix:{self.tmpdir}/qmp.sock,server=on,wait=off"]
        for i, d in enumerate(c.dimms):
            if not isinstance(d, Dimm):
                d = Dimm(size=d)
            did = d.id or f"cdimm{i}"
            args += ["-object", f"memory-backend-ram,id=mem-{did},size={parse_size(d.size)}",
                     "-device", f"pc-dimm,id={did},memdev=mem-{did}"
                                + (f",node={d.node}" if d.node is not None else "")]
        if c.virtio_mem:
            v = c.virtio_mem
            dev = (f"virtio-mem-pci,id={v.id},memdev=mem-{v.id},node={v.node},"
                   f"requested-size={parse_size(v.requested_size)}")
            if v.block_size is not None:
                dev += f",block-size={parse_size(v.block_size)}"
            args += ["-object", f"memory-backend-ram,id=mem-{v.id},size={parse_size(v.size)}",
                     "-device", dev]
        args += list(c.qemu_args)
        return args

    def start(self) -> "GuestVM":
        c = self.config
        pre = check_prerequisites()
        if c.init == "systemd" and not os.access(SYSTEMD_BINARY, os.X_OK):
            raise PrerequisiteMissing(f"init='systemd' needs {SYSTEMD_BINARY} "
                                      "(apt-get install systemd)")
        initrd = build_initramfs(pre.kernel)
        self.initrd = str(initrd)           # readable in the guest too
        self.kernel_image = str(pre.kernel.image)
        self.tmpdir = Path(tempfile.mkdtemp(prefix=f"vmx-{self.name}-"))
        self._q.mkdir(parents=True)
        shutil.copy(GUEST_LOOP, self.host_xchg / GUEST_LOOP.name)
        shutil.copy(GUEST_SYSTEMD_BOOT, self.host_xchg / GUEST_SYSTEMD_BOOT.name)
        pid1 = GUEST_SYSTEMD_BOOT if c.init == "systemd" else GUEST_LOOP
        boot_env = {
            "VMX_PID1": f"{GUEST_XCHG}/{pid1.name}",
            "VMX_ROOT": "overlay" if c.init == "systemd" else "ro",
            "VMX_UDEV": str(int(c.udev)),
            "VMX_CONSOLE_SHELL": str(int(c.console_shell)),
            "VMX_KEEP": " ".join(str(p) for p in (REPO_ROOT, VENV_BIN.parent)),
            "VMX_CHECKOUT": str(REPO_ROOT),
            "VMX_CHECKOUT_ALIAS": GUEST_CHECKOUT_ALIAS if self._checkout_needs_alias() else "",
        }
        (self.host_xchg / "boot.env").write_text(
            "".join(f"{k}={shlex.quote(v)}\n" for k, v in boot_env.items()))
        self.console_log.touch()
        argv = self.qemu_command(pre, initrd)
        (self.tmpdir / "qemu.argv").write_text(shlex.join(argv) + "\n")
        t0 = time.monotonic()
        interactive = c.console == "stdio"
        if not interactive:
            self._qemu_out_fh = open(self.tmpdir / "qemu.out", "wb")
        self.proc = subprocess.Popen(
            argv,
            stdin=None if interactive else subprocess.DEVNULL,
            stdout=self._qemu_out_fh,
            stderr=subprocess.STDOUT if not interactive else None,
            preexec_fn=_pdeathsig, close_fds=True)
        _LIVE.add(self)
        self._watchdog = threading.Timer(c.max_lifetime, self._watchdog_fired)
        self._watchdog.daemon = True
        self._watchdog.start()
        try:
            self.qmp = QMPClient.connect(str(self.tmpdir / "qmp.sock"), timeout=30,
                                         alive=self.alive)
        except Exception as e:
            raise BootError(f"QMP not available: {e}\n{self._qemu_out()}",
                            self.console_tail()) from None
        ready = self.host_xchg / "ready"
        boot_timeout = c.effective_boot_timeout
        deadline = t0 + boot_timeout
        while not ready.exists():
            if not self.alive():
                raise BootError(f"QEMU exited during boot (rc={self.proc.returncode})\n"
                                f"{self._qemu_out()}", self.console_tail())
            if time.monotonic() > deadline:
                raise BootError(f"guest not ready after {boot_timeout}s",
                                self.console_tail())
            time.sleep(0.02)
        self.boot_seconds = time.monotonic() - t0
        info = dict(l.split("=", 1) for l in ready.read_text().split() if "=" in l)
        self.kernel_version = info.get("kernel")
        self.system_state = info.get("system_state")
        try:
            self.guest_uptime_at_ready = float(info.get("uptime", "nan"))
        except ValueError:
            pass
        self._ready = True
        return self

    def _qemu_out(self) -> str:
        try:
            return (self.tmpdir / "qemu.out").read_text(errors="replace")[-3000:]
        except (OSError, TypeError):
            return ""

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def _watchdog_fired(self) -> None:
        sys.stderr.write(f"\nvmx: VM {self.name} exceeded max_lifetime "
                         f"{self.config.max_lifetime}s, killing QEMU pid "
                         f"{self.proc.pid if self.proc else '?'}\n")
        self._kill_qemu(graceful=False)

    def _kill_qemu(self, graceful: bool = True) -> None:
        p = self.proc
        if p is None or p.poll() is not None:
            return
        if graceful and self.qmp is not None:
            try:
                self.qmp.quit()
                p.wait(timeout=3)
                return
            except Exception:
                pass
        for sig, wait in ((signal.SIGTERM, 3), (signal.SIGKILL, 10)):
            if p.poll() is not None:
                return
            try:
                os.kill(p.pid, sig)
            except ProcessLookupError:
                return
            try:
                p.wait(timeout=wait)
                return
            except subprocess.TimeoutExpired:
                continue

    def close(self, failed: bool = False) -> None:
        if self._closed:
            return
        failed = failed or self._failed
        if failed and not self.diagnostics:
            self.collect_diagnostics()
        self._closed = True
        if self._watchdog:
            self._watchdog.cancel()
        try:
            self._kill_qemu()
        finally:
            if self.qmp is not None:
                self.qmp.close()
            if self._qemu_out_fh is not None:
                self._qemu_out_fh.close()
            _LIVE.discard(self)
            self._save_logs(failed)
            if self.tmpdir and self.tmpdir.exists():
                shutil.rmtree(self.tmpdir, ignore_errors=True)

    def mark_failed(self) -> None:
        """A test using this VM failed: read the guest's journal and dmesg now,
        while the guest still runs, and keep them with the console log at close."""
        self._failed = True
        self.collect_diagnostics()

    def collect_diagnostics(self) -> dict[str, str]:
        """Read the guest's ``journalctl -b -o short-monotonic`` (init="systemd")
        and ``dmesg`` into ``self.diagnostics`` ({"journal": text, "dmesg":
        text}); each read is bounded by DIAGNOSTICS_TIMEOUT, since a failing
        guest may be wedged."""
        if not (self._ready and self.alive()):
            return self.diagnostics
        commands = {"dmesg": "dmesg"}
        if self.init == "systemd":
            commands = {"journal": "journalctl --sync 2>/dev/null; "
                                   "journalctl -b --no-pager -o short-monotonic", **commands}
        fresh = {}
        for name, cmd in commands.items():
            try:
                r = self.run(cmd, timeout=DIAGNOSTICS_TIMEOUT)
            except GuestError as e:
                fresh[name] = f"vmx: could not read {name}: {str(e).splitlines()[0]}\n"
                break
            fresh[name] = r.stdout + (f"vmx: rc={r.rc}\n{r.stderr}" if r.rc else "")
        self.diagnostics = fresh
        return fresh

    def _save_logs(self, failed: bool) -> None:
        """Copy the console log and the diagnostics out of the temp dir
        (always with VMEM_AGENT_REALKERNEL_LOGDIR, else only for a failed VM)."""
        logdir = os.environ.get("VMEM_AGENT_REALKERNEL_LOGDIR")
        if not self.tmpdir or not self.console_log.exists():
            return
        if logdir:
            dest_dir = Path(logdir)
        elif failed:
            dest_dir = Path(tempfile.gettempdir()) / "vmx-logs"
        else:
            return
        dest_dir.mkdir(parents=True, exist_ok=True)
        prefix = f"{time.strftime('%Y%m%d-%H%M%S')}-{self.tmpdir.name}"
        dest = dest_dir / f"{prefix}.console.log"
        shutil.copy(self.console_log, dest)
        self.saved_logs = {"console": dest}
        for name, text in self.diagnostics.items():
            path = dest_dir / f"{prefix}.{name}.log"
            path.write_text(text)
            self.saved_logs[name] = path
        if failed:
            sys.stderr.write(f"vmx: logs of failed VM saved to {dest_dir}/{prefix}.*.log\n")

    def console_text(self) -> str:
        try:
            return self.console_log.read_text(errors="replace")
        except (OSError, AssertionError):
            saved = self.saved_logs.get("console")
            if saved:
                return saved.read_text(errors="replace")
            return ""

    def console_tail(self, lines: int = 60) -> str:
        return "\n".join(self.console_text().splitlines()[-lines:])

    # ------------------------------------------------------------ commands
    def spawn(self, cmd: str | Sequence[str], timeout: float = 60.0, *,
              stdin: bytes | str | None = None, cwd: str | None = None) -> GuestProcess:
        """Start ``cmd`` (a bash script string, or an argv list) in the guest
        without waiting.  ``timeout`` is enforced by :meth:`GuestProcess.wait`."""
        if not self.alive():
            raise GuestError("VM is not running", self.console_tail())
        script = cmd if isinstance(cmd, str) else shlex.join(map(str, cmd))
        cid = f"{next(self._ids):06d}"
        q = self._q
        if cwd:
            (q / f"{cid}.cwd").write_text(cwd + "\n")
        if stdin is not None:
            (q / f"{cid}.stdin").write_bytes(stdin.encode() if isinstance(stdin, str) else stdin)
        tmp = q / f"{cid}.tmp"
        tmp.write_text(script + "\n")
        proc = GuestProcess(self, cid, script, timeout)
        os.rename(tmp, q / f"{cid}.cmd")
        return proc

    def run(self, cmd: str | Sequence[str], timeout: float = 60.0, *,
            check: bool = False, stdin: bytes | str | None = None,
            cwd: str | None = None) -> Result:
        """Run ``cmd`` in the guest as root and wait for it.

        ``cmd`` is a bash script (str) or an argv list (quoted for you).
        Returns Result(rc, stdout, stderr).  Raises GuestCommandTimeout when
        it does not finish within ``timeout`` (the guest command is killed),
        GuestCommandError when ``check`` and rc != 0.
        """
        res = self.spawn(cmd, timeout, stdin=stdin, cwd=cwd).wait()
        return res.check() if check else res

    def sh(self, cmd: str | Sequence[str], timeout: float = 60.0) -> str:
        """Run, require rc 0, return stdout."""
        return self.run(cmd, timeout, check=True).stdout

    def wait_for(self, cmd: str, timeout: float = 30.0, interval: float = 0.1) -> Result:
        """Re-run the bash condition ``cmd`` in the guest until it exits 0;
        returns that last run's Result (stdout+stderr of the successful run).
        The loop runs inside the guest (one round trip).  Raises
        GuestCommandTimeout if the condition is not met within ``timeout``."""
        script = (f"while :; do\n"
                  f"  if __out=$( {{ {cmd}\n}} 2>&1 ); then printf '%s' \"$__out\"; exit 0; fi\n"
                  f"  sleep {interval}\n"
                  f"done")
        try:
            return self.run(script, timeout=timeout)
        except GuestCommandTimeout as e:
            raise GuestCommandTimeout(
                f"guest condition not met within {timeout}s: {cmd!r}", e.result,
                self.console_tail(20)) from None

    def wait_until(self, predicate: Callable[[], object], timeout: float = 30.0,
                   interval: float = 0.2, what: str = "condition"):
        """Host-side polling helper: call ``predicate()`` until truthy."""
        deadline = time.monotonic() + timeout
        while True:
            v = predicate()
            if v:
                return v
            if time.monotonic() > deadline:
                raise TimeoutError(f"{what} not met within {timeout}s")
            time.sleep(interval)

    def put(self, name: str, data: bytes | str) -> str:
        """Write a file into the exchange dir; returns its path in the guest."""
        p = self.host_xchg / "files" / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data.encode() if isinstance(data, str) else data)
        return f"{GUEST_XCHG}/files/{name}"

    def read(self, path: str) -> str:
        return self.sh(["cat", path])

    # ------------------------------------------------------------ memory helpers
    def block_size(self) -> int:
        if self._block_size is None:
            self._block_size = int(
                self.read("/sys/devices/system/memory/block_size_bytes").strip(), 16)
        return self._block_size

    def memory_blocks(self) -> dict[int, str]:
        """{block number: state} for every memoryN in the guest."""
        out = self.sh("cd /sys/devices/system/memory && for d in memory[0-9]*; do "
                      "read -r s <$d/state; echo \"${d#memory} $s\"; done")
        blocks = {}
        for line in out.splitlines():
            n, state = line.split()
            blocks[int(n)] = state
        return blocks

    def hotadd_dimm(self, size: str | int = "512M", *, node: int | None = None,
                    wait: bool = True, timeout: float = 30.0) -> str:
        """Hot-add a pc-dimm via QMP; with ``wait``, block until the guest
        has as many more memoryN directories as the DIMM has blocks.
        Returns the QEMU device id."""
        before = len(self.memory_blocks()) if wait else 0
        dimm = self.qmp.hotadd_dimm(size, node=node)
        if wait:
            n = parse_size(size) // self.block_size()
            self.wait_for(f"set -- /sys/devices/system/memory/memory[0-9]*; "
                          f"[ $# -ge {before + n} ]", timeout=timeout)
        return dimm

    def set_virtio_mem(self, requested: str | int, dev_id: str | None = None) -> None:
        dev_id = dev_id or (self.config.virtio_mem.id if self.config.virtio_mem else "vmem0")
        self.qmp.set_virtio_mem_size(dev_id, requested)

    # ------------------------------------------------------------ systemd (init="systemd")
    def _require_systemd(self, what: str) -> None:
        if self.init != "systemd":
            raise GuestError(f"{what} needs VMConfig(init='systemd'); this VM has "
                             f"init={self.init!r}")

    def systemctl(self, *args: str, check: bool = False, timeout: float = 120.0) -> Result:
        """``systemctl ARGS`` in the guest.  The default timeout outlasts
        systemd's own start/stop timeouts (90 s), so a hung job fails there
        with systemd's message."""
        self._require_systemd("systemctl")
        return self.run(["systemctl", *args], timeout, check=check)

    def install_unit(self, name: str, text: str | None,
                     dropins: Mapping[str, str] | None = None, *,
                     reload: bool = True) -> str:
        """Write unit ``name`` to the guest's /etc/systemd/system (its overlay,
        never the host), its ``dropins`` ({file name: text}; ".conf" added when
        missing) to ``name``.d/, and daemon-reload.  ``text=None`` writes only
        the drop-ins, e.g. over a unit a package installed.  Returns the
        unit's path in the guest."""
        self._require_systemd("install_unit")
        staging = f"units/{next(self._ids):06d}"
        unit_path = f"{GUEST_UNIT_DIR}/{name}"
        files = {} if text is None else {unit_path: text}
        for file_name, dropin in (dropins or {}).items():
            if not file_name.endswith(".conf"):
                file_name += ".conf"
            files[f"{unit_path}.d/{file_name}"] = dropin
        if not files:
            raise ValueError(f"install_unit({name!r}): neither unit text nor drop-ins")
        script = ["set -e"]
        for i, (dest, content) in enumerate(files.items()):
            src = self.put(f"{staging}/{i}", content)
            script.append(f"install -D -m 0644 {shlex.quote(src)} {shlex.quote(dest)}")
        if reload:
            script.append("systemctl daemon-reload")
        self.run("\n".join(script), timeout=90, check=True)
        return unit_path

    def unit_properties(self, unit: str, *names: str, timeout: float = 60.0) -> dict[str, str]:
        """``systemctl show UNIT --property=NAME,...`` as {name: value}; every
        property when no names are given."""
        args = ["show", unit] + ([f"--property={','.join(names)}"] if names else [])
        props = {}
        for line in self.systemctl(*args, check=True, timeout=timeout).stdout.splitlines():
            key, sep, value = line.partition("=")
            if sep:
                props[key] = value
        return props

    def journal(self, unit: str | None = None, since_boot: bool = True, *,
                output: str = "short-monotonic", timeout: float = 60.0) -> str:
        """The guest's journal (of ``unit``, when given) after making journald
        write out what it has received (``journalctl --sync``)."""
        self._require_systemd("journal")
        cmd = ["journalctl", "--no-pager", "--quiet", "-o", output]
        if since_boot:
            cmd.append("-b")
        if unit:
            cmd += ["-u", unit]
        return self.sh("journalctl --sync 2>/dev/null; " + shlex.join(cmd), timeout)

    def poweroff(self, timeout: float = 60.0) -> bool:
        """Shut the guest down cleanly (init="systemd": start poweroff.target
        directly; loop: ``poweroff -f``) and wait for QEMU to exit.  A QEMU
        still running after ``timeout`` is killed by pid.  Returns True when the
        guest powered off by itself."""
        if not self.alive():
            return False
        (self._q / "shutdown").write_text("")
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self._kill_qemu(graceful=False)
            return False
        return self.proc.returncode == 0

    def __repr__(self) -> str:
        pid = self.proc.pid if self.proc else None
        return f"<GuestVM {self.name} pid={pid} {self.config.memory} tmp={self.tmpdir}>"


__all__ = ["GuestVM", "VMConfig", "VirtioMem", "Dimm", "Result", "GuestError",
           "BootError", "GuestCommandTimeout", "GuestCommandError", "GuestProcess",
           "PrerequisiteMissing", "Prerequisites", "check_prerequisites",
           "QMPError", "GUEST_PYTHON", "GUEST_AGENT", "GUEST_HELPERS",
           "DEBIAN_PYTHON", "DEBIAN_PYTHON_AGENT", "GUEST_UNIT_DIR", "GUEST_TARGET",
           "GUEST_RUNNER_UNIT"]
