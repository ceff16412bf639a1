"""Build the tiny initramfs that boots the host's Debian kernel into a 9p root.

The image holds only a static busybox, the handful of kernel modules needed
to mount a virtio-9p share and an overlayfs (resolved from ``modules.dep``;
builtins skipped via ``modules.builtin``) and ``/init``.  ``/init`` mounts the
host root read-only over 9p (``VMX_ROOT=ro``) or as the lower layer of an
overlayfs with a tmpfs upper layer (``VMX_ROOT=overlay``: a writable root whose
changes stay in the guest), a writable per-VM exchange share, then
``switch_root``\\ s into that root and runs ``VMX_PID1`` (a bash script on the
exchange share: ``guest_loop.sh``, or ``guest_systemd.sh``, which execs
systemd), so the project's virtualenv is usable in the guest under the same
paths.

The cpio (newc) archive is written here in Python (no ``cpio`` binary needed)
and cached per kernel version + content hash, see :func:`build_initramfs`.

Stdlib only.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import lzma
import os
import re
import shutil
import stat
import subprocess
import time
from pathlib import Path

#: Modules the guest needs before switch_root.  Dependencies are added from
#: modules.dep; anything in modules.builtin is skipped.  virtio_mem is loaded
#: here too (it must bind before udevd starts so its first blocks are seen);
#: overlay makes the writable root of ``VMX_ROOT=overlay`` guests.
WANTED_MODULES = ("virtio_pci", "9pnet_virtio", "9p", "virtio_mem", "overlay")

BUSYBOX_CANDIDATES = ("/bin/busybox", "/usr/bin/busybox")

#: Name of the 9p share holding the host root and of the exchange share.
ROOT_TAG = "hostroot"
XCHG_TAG = "vmx"

#: Where the exchange share is mounted in the guest after switch_root.
GUEST_XCHG = "/run/vmx"

#: Where an overlay-root guest keeps its layers: lower/ (the host root, read
#: only) and layers/upper (everything the guest changed).
GUEST_OVERLAY_DIR = "/run/vmx-root"

# Bump when the layout/contents change in a way the hash below does not see.
_FORMAT_VERSION = 4


class PrerequisiteMissing(RuntimeError):
    """A host prerequisite (kernel, modules, busybox, qemu) is not available."""


@dataclasses.dataclass(frozen=True)
class KernelInfo:
    version: str
    image: Path
    modules_dir: Path


def _version_key(v: str) -> list:
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", v)]


def find_kernel(version: str | None = None) -> KernelInfo:
    """Locate the kernel to boot.

    ``VMEM_AGENT_REALKERNEL_KERNEL`` may name a vmlinuz path (its version is
    taken from the file name ``vmlinuz-<version>``); otherwise the newest
    ``/boot/vmlinuz-*`` that has a matching ``/lib/modules/<version>``.
    """
    env = os.environ.get("VMEM_AGENT_REALKERNEL_KERNEL")
    candidates: list[Path]
    if env:
        candidates = [Path(env)]
    elif version:
        candidates = [Path(f"/boot/vmlinuz-{version}")]
    else:
        candidates = sorted(Path("/boot").glob("vmlinuz-*"),
                            key=lambda p: _version_key(p.name), reverse=True)
    problems = []
    for image in candidates:
        ver = image.name.removeprefix("vmlinuz-")
        moddir = Path("/lib/modules") / ver
        if not image.is_file():
            problems.append(f"{image} does not exist")
            continue
        if not os.access(image, os.R_OK):
            problems.append(f"{image} is not readable")
            continue
        if not (moddir / "modules.dep").is_file():
            problems.append(f"{moddir}/modules.dep missing")
            continue
        return KernelInfo(ver, image, moddir)
    if not candidates:
        problems.append("no /boot/vmlinuz-* found (apt-get install linux-image-amd64)")
    raise PrerequisiteMissing("no bootable kernel: " + "; ".join(problems))


def find_busybox() -> Path:
    for c in BUSYBOX_CANDIDATES:
        p = Path(c)
        if p.is_file() and _is_static_elf(p):
            return p
    raise PrerequisiteMissing(
        "static busybox not found in %s (apt-get install busybox-static)"
        % ", ".join(BUSYBOX_CANDIDATES))


def _is_static_elf(path: Path) -> bool:
    """True if ``path`` is an ELF without a PT_INTERP program header."""
    with open(path, "rb") as f:
        hdr = f.read(64)
        if hdr[:4] != b"\x7fELF" or hdr[4] != 2:  # 64-bit only
            return False
        phoff = int.from_bytes(hdr[0x20:0x28], "little")
        phentsize = int.from_bytes(hdr[0x36:0x38], "little")
        phnum = int.from_bytes(hdr[0x38:0x3a], "little")
        f.seek(phoff)
        for _ in range(phnum):
            ph = f.read(phentsize)
            if int.from_bytes(ph[0:4], "little") == 3:  # PT_INTERP
                return False
    return True


# --------------------------------------------------------------------------
# modules.dep resolution

def _modname(relpath: str) -> str:
    base = relpath.rsplit("/", 1)[-1]
    base = re.sub(r"\.ko(\.(xz|gz|zst))?$", "", base)
    return base.replace("-", "_")


def resolve_modules(moddir: Path, wanted=WANTED_MODULES) -> list[str]:
    """Return module paths (relative to ``moddir``) in load order.

    Builtin modules are silently satisfied.  Raises PrerequisiteMissing for a
    wanted module that is neither builtin nor present.
    """
    deps: dict[str, tuple[str, list[str]]] = {}
    for line in (moddir / "modules.dep").read_text().splitlines():
        if ":" not in line:
            continue
        mod, rest = line.split(":", 1)
        deps[_modname(mod)] = (mod, rest.split())
    builtin = set()
    bfile = moddir / "modules.builtin"
    if bfile.exists():
        builtin = {_modname(l) for l in bfile.read_text().split()}

    order: list[str] = []
    seen: set[str] = set()

    def visit(name: str) -> None:
        name = name.replace("-", "_")
        if name in seen:
            return
        seen.add(name)
        if name in builtin:
            return
        if name not in deps:
            raise PrerequisiteMissing(
                f"kernel module {name} neither builtin nor in {moddir}/modules.dep")
        path, dlist = deps[name]
        # modules.dep lists the full transitive closure, deepest last.
        for d in reversed(dlist):
            visit(_modname(d))
        order.append(path)

    for w in wanted:
        visit(w)
    return order


def _read_module(path: Path) -> bytes:
    data = path.read_bytes()
    name = path.name
    if name.endswith(".xz"):
        return lzma.decompress(data)
    if name.endswith(".gz"):
        return gzip.decompress(data)
    if name.endswith(".zst"):
        zstd = shutil.which("zstd")
        if not zstd:
            raise PrerequisiteMissing(f"{path} is zstd-compressed and zstd is missing")
        return subprocess.run([zstd, "-dc", str(path)], check=True,
                              capture_output=True).stdout
    return data


# --------------------------------------------------------------------------
# cpio newc writer

class CpioWriter:
    """Minimal SVR4 "newc" cpio writer (what the kernel's initramfs wants)."""

    def __init__(self, fh):
        self.fh = fh
        self.ino = 1000

    def _entry(self, name: str, mode: int, data: bytes = b"", nlink: int = 1) -> None:
        name_b = name.encode() + b"\0"
        self.ino += 1
        fields = (self.ino, mode, 0, 0, nlink, 0, len(data), 0, 0, 0, 0,
                  len(name_b), 0)
        hdr = b"070701" + b"".join(b"%08X" % f for f in fields)
        self.fh.write(hdr + name_b)
        self.fh.write(b"\0" * (-(len(hdr) + len(name_b)) % 4))
        self.fh.write(data)
        self.fh.write(b"\0" * (-len(data) % 4))

    def dir(self, name: str, perm: int = 0o755) -> None:
        self._entry(name, stat.S_IFDIR | perm, nlink=2)

    def file(self, name: str, data: bytes, perm: int = 0o644) -> None:
        self._entry(name, stat.S_IFREG | perm, data)

    def symlink(self, name: str, target: str) -> None:
        self._entry(name, stat.S_IFLNK | 0o777, target.encode())

    def char_dev(self, name: str, major: int, minor: int, perm: int = 0o600) -> None:
        name_b = name.encode() + b"\0"
        self.ino += 1
        fields = (self.ino, stat.S_IFCHR | perm, 0, 0, 1, 0, 0, 0, 0, major, minor,
                  len(name_b), 0)
        hdr = b"070701" + b"".join(b"%08X" % f for f in fields)
        self.fh.write(hdr + name_b)
        self.fh.write(b"\0" * (-(len(hdr) + len(name_b)) % 4))

    def trailer(self) -> None:
        self._entry("TRAILER!!!", 0, nlink=1)


# --------------------------------------------------------------------------
# /init

INIT_SCRIPT = r"""#!/bin/busybox sh
# vmem-agent realkernel harness /init (generated by tests/realkernel/initramfs.py)
export PATH=/bin
fail() {
    echo "vmx-init: FATAL: $*" >/dev/console
    echo "vmx-init: FATAL: $*" >/dev/kmsg 2>/dev/null
    sleep 1
    reboot -f   # QEMU runs with -no-reboot: this ends the VM
}
mount -t proc proc /proc || fail "mount proc"
mount -t sysfs sysfs /sys || fail "mount sysfs"
mount -t devtmpfs devtmpfs /dev || fail "mount devtmpfs"
echo "vmx-init: initramfs up $(cut -d' ' -f1 /proc/uptime)s" >/dev/console
while read -r m; do
    insmod "/lib/modules/$m" || fail "insmod $m"
done </lib/modules/load-order

# 9p options: msize raises the transfer size (default 8k is slow).
ROOTOPTS="trans=virtio,version=9p2000.L,msize=@MSIZE@,ro,@ROOTCACHE@"
XOPTS="trans=virtio,version=9p2000.L,msize=@MSIZE@,cache=none"

mkdir -p /xchg /newroot
mount -t 9p -o "$XOPTS" @XCHG_TAG@ /xchg || fail "mount exchange share @XCHG_TAG@"
[ -r /xchg/boot.env ] || fail "no boot.env on exchange share"
. /xchg/boot.env
if [ "${VMX_ROOT:-ro}" = overlay ]; then
    # Writable root for the guest only: the host root is the read-only lower
    # layer, every change lands in a tmpfs upper layer.
    mkdir -p /lower /layers
    mount -t 9p -o "$ROOTOPTS" @ROOT_TAG@ /lower || fail "mount host root @ROOT_TAG@"
    mount -t tmpfs -o mode=755 tmpfs /layers || fail "tmpfs for the overlay layers"
    mkdir -p /layers/upper /layers/work
    mount -t overlay -o lowerdir=/lower,upperdir=/layers/upper,workdir=/layers/work \
        overlay /newroot || fail "overlay root"
    mount -t tmpfs -o mode=755,size=64m tmpfs /newroot/run || fail "tmpfs /run"
    # Kept visible for debugging: @OVERLAY_DIR@/layers/upper is what the guest changed.
    mkdir -p /newroot@OVERLAY_DIR@/lower /newroot@OVERLAY_DIR@/layers
    mount --move /lower /newroot@OVERLAY_DIR@/lower || fail "move lower layer"
    mount --move /layers /newroot@OVERLAY_DIR@/layers || fail "move overlay layers"
else
    mount -t 9p -o "$ROOTOPTS" @ROOT_TAG@ /newroot || fail "mount host root @ROOT_TAG@"
    mount -t tmpfs -o mode=755,size=64m tmpfs /newroot/run || fail "tmpfs /run"
fi
mkdir -p /newroot@GUEST_XCHG@
mount --move /xchg /newroot@GUEST_XCHG@ || fail "move exchange share"
mount --move /dev /newroot/dev || fail "move /dev"
mount --move /sys /newroot/sys || fail "move /sys"
mount --move /proc /newroot/proc || fail "move /proc"
[ -r "/newroot$VMX_PID1" ] || fail "PID 1 script $VMX_PID1 not found in the new root"
echo "vmx-init: switch_root -> $VMX_PID1" >/newroot/dev/console
exec switch_root /newroot /bin/bash "$VMX_PID1" </newroot/dev/console >/newroot/dev/console 2>&1
fail "switch_root failed"
"""


@dataclasses.dataclass(frozen=True)
class InitramfsOptions:
    msize: int = 512000
    # cache=loose speeds up python imports a lot; the host root is read-only
    # for the guest and a VM lives for seconds, so staleness is not an issue.
    root_cache: str = "cache=loose"


def render_init(opts: InitramfsOptions) -> str:
    return (INIT_SCRIPT
            .replace("@MSIZE@", str(opts.msize))
            .replace("@ROOTCACHE@", opts.root_cache)
            .replace("@ROOT_TAG@", ROOT_TAG)
            .replace("@XCHG_TAG@", XCHG_TAG)
            .replace("@GUEST_XCHG@", GUEST_XCHG)
            .replace("@OVERLAY_DIR@", GUEST_OVERLAY_DIR))


def default_cache_dir() -> Path:
    """Cache directory; must be visible in the guest (so not under /tmp,
    which the guest shadows with tmpfs)."""
    env = os.environ.get("VMEM_AGENT_REALKERNEL_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    return Path(base) / "vmem-agent" / "realkernel"


def build_initramfs(kernel: KernelInfo | None = None, *,
                    cache_dir: Path | None = None,
                    opts: InitramfsOptions = InitramfsOptions(),
                    modules=WANTED_MODULES) -> Path:
    """Return the path of a cached initramfs for ``kernel``, building it if
    needed.  The cache key covers the kernel version, the module files, the
    busybox binary and the generated /init."""
    kernel = kernel or find_kernel()
    busybox = find_busybox()
    mods = resolve_modules(kernel.modules_dir, modules)
    init = render_init(opts)

    h = hashlib.sha256()
    h.update(f"v{_FORMAT_VERSION}\0{kernel.version}\0{init}\0".encode())
    for p in [busybox] + [kernel.modules_dir / m for m in mods]:
        st = p.stat()
        h.update(f"{p}\0{st.st_size}\0{st.st_mtime_ns}\0".encode())
    key = h.hexdigest()[:16]

    cache_dir = Path(cache_dir or default_cache_dir())
    out = cache_dir / f"initramfs-{kernel.version}-{key}.cpio"
    if out.exists():
        os.utime(out)  # in use: see _drop_unused_images
        return out
    cache_dir.mkdir(parents=True, exist_ok=True)

    buf = io.BytesIO()
    w = CpioWriter(buf)
    for d in ("bin", "dev", "proc", "sys", "run", "tmp", "lib", "lib/modules",
              "xchg", "newroot"):
        w.dir(d)
    w.char_dev("dev/console", 5, 1)
    w.char_dev("dev/null", 1, 3, 0o666)
    w.file("bin/busybox", busybox.read_bytes(), 0o755)
    for applet in ("sh", "mount", "mkdir", "insmod", "switch_root", "sleep",
                   "reboot", "cat", "cut", "echo", "ls", "poweroff", "dmesg"):
        w.symlink(f"bin/{applet}", "busybox")
    names = []
    for m in mods:
        name = re.sub(r"\.(xz|gz|zst)$", "", m.rsplit("/", 1)[-1])
        names.append(name)
        w.file(f"lib/modules/{name}", _read_module(kernel.modules_dir / m))
    w.file("lib/modules/load-order", ("\n".join(names) + "\n").encode())
    w.file("init", init.encode(), 0o755)
    w.trailer()

    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    tmp.write_bytes(buf.getvalue())
    os.replace(tmp, out)
    _drop_unused_images(cache_dir, kernel.version, keep=out)
    return out


#: An image of another harness version not used for this long is deleted.
#: Checkouts on other branches share the cache and boot their own image (the
#: kexec test even reads it from the guest minutes later): never delete an
#: image that may be in use.
UNUSED_IMAGE_SECONDS = 7 * 24 * 3600


def _drop_unused_images(cache_dir: Path, version: str, keep: Path) -> None:
    now = time.time()
    for old in cache_dir.glob(f"initramfs-{version}-*.cpio"):
        try:
            if old != keep and now - old.stat().st_mtime > UNUSED_IMAGE_SECONDS:
                old.unlink()
        except OSError:
            pass


if __name__ == "__main__":  # pragma: no cover - manual use
    import sys
    k = find_kernel(sys.argv[1] if len(sys.argv) > 1 else None)
    print(k)
    print("modules:", resolve_modules(k.modules_dir))
    print(build_initramfs(k))
