"""The one gateway to the kernel's memory-hotplug files.

Every read and write of sysfs and procfs goes through `Sysfs`, built on a root path
(`/` in production, a recorded or fake tree in tests), and every OSError becomes a
typed `SysfsError` here and nowhere else. Besides path-based reads it offers
descriptor-relative primitives (`open_dir`, `read_at`, ...) for the snapshot's hot loop:
a guest can have tens of thousands of blocks, and one Python object per attribute
would make `status` slower than lsmem.
"""

from __future__ import annotations

import errno
import os
import re

from ..core.inputs import shown
from ..core.model import GOING_OFFLINE, OFFLINE, ONLINE, ZONE_MOVABLE, KernelParams, MemoryFigures
from ..errors import SysfsError, TreeContentError, UnsupportedSystemError, sysfs_error
from .meminfo import memory_figures

MEMORY_DIR = "sys/devices/system/memory"
NODE_DIR = "sys/devices/system/node"
PARAMS_DIR = "sys/module/memory_hotplug/parameters"
KEXEC_CRASH_LOADED = "sys/kernel/kexec_crash_loaded"
KEXEC_CRASH_SIZE = "sys/kernel/kexec_crash_size"
PROC_CMDLINE = "proc/cmdline"
PROC_ARCH = "proc/sys/kernel/arch"
# Where programs live under a root, in the order of a root shell's PATH.
PROGRAM_DIRS = ("usr/local/sbin", "usr/local/bin", "usr/sbin", "usr/bin", "sbin", "bin")
PROC_IOMEM = "proc/iomem"
PROC_MEMINFO = "proc/meminfo"
BOOT_PARAMS = "sys/kernel/boot_params/data"
BOOT_SETUP_DATA = "sys/kernel/boot_params/setup_data"
ACPI_DEVICES_DIR = "sys/bus/acpi/devices"

BLOCK_STATES_WRITABLE = ("online", "online_kernel", "online_movable", "offline")
# What the kernel writes (drivers/base/memory.c, mm/memory_hotplug.c): anything else is a broken tree.
BLOCK_STATES_READ = (ONLINE, OFFLINE, GOING_OFFLINE)
KERNEL_ZONES = ("DMA", "DMA32", "Normal", "HighMem", "Movable", "Device", "none")
AUTO_ONLINE_VALUES = ("offline", "online", "online_kernel", "online_movable")
ONLINE_POLICIES = ("contig-zones", "auto-movable")
MEMMAP_ON_MEMORY_FORCE = "force"  # Linux 6.6+: memmap_on_memory=force reads "force", not Y
UINT_MAX = 2**32 - 1
ULONG_MAX = 2**64 - 1
MIN_BLOCK_SIZE = 4096
_DECIMAL = re.compile(r"[0-9]{1,20}", re.ASCII)
_HEX = re.compile(r"[0-9a-fA-F]{1,16}", re.ASCII)

_READ_SIZE = 4096  # a sysfs attribute is at most one page
# O_NONBLOCK: a FIFO in a broken tree must not hang a read (no effect on regular and sysfs files).
_READ_FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
PROC_FILE_LIMIT = 1 << 20  # /proc/iomem of a big machine is far longer than a page
PROC_CMDLINE_LIMIT = 64 << 10  # COMMAND_LINE_SIZE is 2 KiB on x86, at most a few KiB elsewhere
_ABSENT = (errno.ENOENT, errno.ENOTDIR)

# Outcomes of a state write.
CHANGED = "changed"
ALREADY = "already"


def numbered(name: str, prefix: str) -> int | None:
    """N of a sysfs name `<prefix>N` (memory12, node0) as the kernel spells it, or None for any other name
    (`memory007` or a thousand digits are no kernel's: the block's files would be looked up as memory7)."""
    digits = name[len(prefix) :]
    if not name.startswith(prefix) or _DECIMAL.fullmatch(digits) is None or (digits[0] == "0" and digits != "0"):
        return None
    return int(digits)


def parse_bool(text: str) -> bool | None:
    lowered = text.strip().lower()
    if lowered in ("1", "y", "yes", "true"):
        return True
    if lowered in ("0", "n", "no", "false"):
        return False
    return None


def parse_int(text: str, base: int = 10) -> int | None:
    try:
        return int(text, base)
    except ValueError:
        return None


def _as_text(raw: bytes) -> str:
    """An attribute's bytes as text for checks and messages (non-ASCII bytes shown as escapes)."""
    return raw.decode("ascii", "backslashreplace").strip()


def checked_state(raw: bytes, path: str) -> str:
    """A block's `state` as the kernel writes it; TreeContentError for anything else."""
    text = _as_text(raw)
    if text not in BLOCK_STATES_READ:
        raise TreeContentError(path, f"reads {shown(text)}, expected one of {', '.join(BLOCK_STATES_READ)}")
    return text


def checked_zones(raw: bytes, path: str) -> tuple[str, ...]:
    """A block's `valid_zones`, split in the kernel's order; TreeContentError unless it is kernel zone names."""
    zones = tuple(_as_text(raw).split())
    if not zones or any(zone not in KERNEL_ZONES for zone in zones) or (len(zones) > 1 and "none" in zones):
        raise TreeContentError(path, f"reads {shown(_as_text(raw))}, expected zone names ({', '.join(KERNEL_ZONES)}) "
                                     "separated by spaces, or none")
    return zones


def checked_number(text: str, path: str, maximum: int) -> int:
    """A decimal attribute (`%u`, `%lu`, `%d` >= 0); TreeContentError for anything else."""
    if _DECIMAL.fullmatch(text) is None or int(text) > maximum:
        raise TreeContentError(path, f"reads {shown(text)}, expected a whole number from 0 to {maximum}")
    return int(text)


def checked_flag(text: str, path: str) -> bool:
    """A boolean attribute (Y/N of a bool module parameter, 0/1 of a flag)."""
    value = parse_bool(text)
    if value is None:
        raise TreeContentError(path, f"reads {shown(text)}, expected Y, N, 1 or 0")
    return value


class Sysfs:
    """Reads and writes the kernel's memory-hotplug files under one root."""

    def __init__(self, root: str | os.PathLike = "/"):
        self.root = os.path.abspath(os.fspath(root))
        self.memory_dir = os.path.join(self.root, MEMORY_DIR)
        self._fd_paths: dict[int, str] = {}

    def __repr__(self) -> str:
        return f"Sysfs({self.root!r})"

    def path(self, relative: str) -> str:
        return os.path.join(self.root, relative)

    # -- path-based reads --------------------------------------------------------------

    def read_bytes(self, relative: str, block: int | None = None, limit: int = _READ_SIZE) -> bytes:
        path = self.path(relative)
        try:
            fd = os.open(path, _READ_FLAGS)
            try:
                chunks = []
                while limit > 0 and (chunk := os.read(fd, min(limit, 1 << 16))):
                    chunks.append(chunk)
                    limit -= len(chunk)
                return b"".join(chunks)
            finally:
                os.close(fd)
        except OSError as exc:
            raise sysfs_error(exc, path, block, "read") from None

    def read_text(self, relative: str, block: int | None = None, limit: int = _READ_SIZE) -> str:
        return self.read_bytes(relative, block, limit).decode("ascii", "backslashreplace").strip()

    def read_optional(self, relative: str, limit: int = _READ_SIZE) -> str | None:
        """Read an attribute that older kernels or other setups may lack (None if absent)."""
        try:
            return self.read_text(relative, limit=limit)
        except SysfsError as exc:
            if exc.errno in _ABSENT:
                return None
            raise

    def read_bytes_optional(self, relative: str, limit: int = _READ_SIZE) -> bytes | None:
        """A file's bytes, or None when it is absent or unreadable (a signal that is simply missing)."""
        try:
            return self.read_bytes(relative, limit=limit)
        except SysfsError:
            return None

    def listdir_optional(self, relative: str) -> list[str] | None:
        """Names in a directory, or None when it does not exist or cannot be listed."""
        try:
            return os.listdir(self.path(relative))
        except OSError:
            return None

    def exists(self, relative: str) -> bool:
        return os.path.lexists(self.path(relative))

    def readlink_optional(self, relative: str) -> str | None:
        """Where a link under the root points, or None when it is no link or is missing."""
        try:
            return os.readlink(self.path(relative))
        except OSError:
            return None

    def find_program(self, name: str) -> str | None:
        """The program's path as seen inside the root (searched like its PATH), or None: a `which` for the root."""
        for directory in PROGRAM_DIRS:
            path = self.path(f"{directory}/{name}")
            if os.path.isfile(path) and os.access(path, os.X_OK):
                return f"/{directory}/{name}"
        return None

    # -- descriptor-relative reads, for scans of many files -----------------------------

    def open_dir(self, relative: str, block: int | None = None) -> int:
        path = self.path(relative)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        except OSError as exc:
            raise sysfs_error(exc, path, block, "open") from None
        self._fd_paths[fd] = path
        return fd

    def open_dir_optional(self, relative: str) -> int | None:
        try:
            return self.open_dir(relative)
        except SysfsError:
            return None

    def close(self, fd: int) -> None:
        self._fd_paths.pop(fd, None)
        os.close(fd)

    def read_at(self, dir_fd: int, name: str, block: int | None = None) -> bytes:
        """A small attribute relative to an open directory; BlockVanishedError when it is gone."""
        try:
            fd = os.open(name, _READ_FLAGS, dir_fd=dir_fd)
            try:
                return os.read(fd, _READ_SIZE)
            finally:
                os.close(fd)
        except OSError as exc:
            raise sysfs_error(exc, os.path.join(self._fd_paths.get(dir_fd, "?"), name), block, "read") from None

    def listdir_at(self, dir_fd: int, name: str, block: int | None = None) -> list[str]:
        try:
            fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY, dir_fd=dir_fd)
            try:
                return os.listdir(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            raise sysfs_error(exc, os.path.join(self._fd_paths.get(dir_fd, "?"), name), block, "list") from None

    def listdir_fd(self, dir_fd: int) -> list[str]:
        try:
            return os.listdir(dir_fd)
        except OSError as exc:
            raise sysfs_error(exc, self._fd_paths.get(dir_fd, "?"), None, "list") from None

    @staticmethod
    def readlink_at(dir_fd: int, name: str) -> str | None:
        """Where a link points, or None when it is not a link or is gone (links are optional signals)."""
        try:
            return os.readlink(name, dir_fd=dir_fd)
        except OSError:
            return None

    # -- typed reads -------------------------------------------------------------------

    def block_size(self) -> int:
        text = self.read_optional(f"{MEMORY_DIR}/block_size_bytes")
        if text is None:
            self._raise_unsupported()
        size = int(text, 16) if _HEX.fullmatch(text) else 0
        if size < MIN_BLOCK_SIZE or size & (size - 1):
            raise UnsupportedSystemError(
                f"{self.path(MEMORY_DIR)}/block_size_bytes: unreadable block size {shown(text)}: expected a power "
                f"of two of at least {MIN_BLOCK_SIZE:x} in hex, as the kernel writes it (e.g. 8000000)")
        return size

    def _raise_unsupported(self) -> None:
        if not os.path.isdir(self.root):
            raise UnsupportedSystemError(f"{self.root}: sysfs root does not exist or is not a directory")
        if not os.path.isdir(self.memory_dir):
            raise UnsupportedSystemError(
                f"{self.memory_dir}: no such directory: this kernel does not support memory blocks "
                "(CONFIG_MEMORY_HOTPLUG) or the sysfs root is wrong"
            )
        raise UnsupportedSystemError(f"{self.memory_dir}/block_size_bytes: missing: this system does not support memory blocks")

    def kernel_params(self) -> KernelParams:
        memmap = self.read_optional(f"{PARAMS_DIR}/memmap_on_memory")
        return KernelParams(
            online_policy=self._read_word(f"{PARAMS_DIR}/online_policy", ONLINE_POLICIES),
            auto_movable_ratio=self._read_number(f"{PARAMS_DIR}/auto_movable_ratio", UINT_MAX),
            auto_movable_numa_aware=self._read_flag(f"{PARAMS_DIR}/auto_movable_numa_aware"),
            memmap_on_memory=None if memmap is None else (
                memmap == MEMMAP_ON_MEMORY_FORCE or checked_flag(memmap, self.path(f"{PARAMS_DIR}/memmap_on_memory"))),
        )

    def auto_online_blocks(self) -> str | None:
        return self._read_word(f"{MEMORY_DIR}/auto_online_blocks", AUTO_ONLINE_VALUES)

    def crash_hotplug(self) -> bool | None:
        """Whether the kernel updates the crash image itself on hotplug (None: unknown)."""
        return self._read_flag(f"{MEMORY_DIR}/crash_hotplug")

    def kexec_crash_loaded(self) -> bool | None:
        return self._read_flag(KEXEC_CRASH_LOADED)

    def kexec_crash_size(self) -> int | None:
        """Bytes reserved for a crash kernel (crashkernel=), None when unknown."""
        return self._read_number(KEXEC_CRASH_SIZE, ULONG_MAX)

    def _read_word(self, relative: str, vocabulary: tuple[str, ...]) -> str | None:
        text = self.read_optional(relative)
        if text is None or text in vocabulary:
            return text
        raise TreeContentError(self.path(relative), f"reads {shown(text)}, expected one of {', '.join(vocabulary)}")

    def _read_number(self, relative: str, maximum: int) -> int | None:
        text = self.read_optional(relative)
        return None if text is None else checked_number(text, self.path(relative), maximum)

    def _read_flag(self, relative: str) -> bool | None:
        text = self.read_optional(relative)
        return None if text is None else checked_flag(text, self.path(relative))

    def kernel_cmdline(self) -> str | None:
        return self.read_optional(PROC_CMDLINE, limit=PROC_CMDLINE_LIMIT)

    def kernel_arch(self) -> str | None:
        """The kernel's machine name as uname gives it (x86_64), None when unknown."""
        return self.read_optional(PROC_ARCH)

    def memory_figures(self) -> MemoryFigures | None:
        """MemTotal and MemAvailable of this root's /proc/meminfo (None: unknown or unreadable)."""
        try:
            text = self.read_bytes(PROC_MEMINFO, limit=PROC_FILE_LIMIT).decode("ascii", "backslashreplace")
        except SysfsError:
            return None
        try:
            return memory_figures(text)
        except ValueError as exc:
            raise TreeContentError(self.path(PROC_MEMINFO), str(exc)) from None

    def block_indexes(self) -> list[int]:
        """Indexes of all present blocks, in numeric order (memory10 after memory9)."""
        try:
            names = os.listdir(self.memory_dir)
        except OSError as exc:
            if exc.errno in _ABSENT:
                self._raise_unsupported()
            raise sysfs_error(exc, self.memory_dir, None, "list") from None
        return sorted(index for name in names if (index := numbered(name, "memory")) is not None)

    def read_state(self, index: int) -> str:
        relative = f"{MEMORY_DIR}/memory{index}/state"
        return checked_state(self.read_bytes(relative, block=index), self.path(relative))

    def read_zones(self, index: int) -> tuple[str, ...]:
        """valid_zones of one block, split in the kernel's order."""
        relative = f"{MEMORY_DIR}/memory{index}/valid_zones"
        return checked_zones(self.read_bytes(relative, block=index), self.path(relative))

    def snapshot(self, legacy: bool = False):
        """Every block and the global attributes as one frozen `MemoryState` (see kernel.snapshot)."""
        from .snapshot import read_snapshot

        return read_snapshot(self, legacy)

    # -- writing -----------------------------------------------------------------------

    def write_text(self, relative: str, value: str, block: int | None = None) -> None:
        """Write an existing attribute (never created, as on a real sysfs)."""
        path = self.path(relative)
        action = f"write {value!r}"
        try:
            fd = os.open(path, os.O_WRONLY)
        except OSError as exc:
            raise sysfs_error(exc, path, block, action) from None
        try:
            os.write(fd, value.encode("ascii"))
        except OSError as exc:
            raise sysfs_error(exc, path, block, action) from None
        finally:
            os.close(fd)

    def write_block_state(self, index: int, value: str) -> str:
        """Write `value` to memoryN/state; CHANGED, or ALREADY when the kernel says it is a no-op.

        The kernel answers EINVAL when the block is already in the requested state; a
        re-read of `state` (and, for online_movable/online_kernel, of its zone) tells that
        apart from a real EINVAL. A block online in Normal is not "already" online_movable:
        that EINVAL is raised, naming the zone the block is in.
        """
        if value not in BLOCK_STATES_WRITABLE:
            raise ValueError(f"not a block state to write: {value!r}")
        try:
            self.write_text(f"{MEMORY_DIR}/memory{index}/state", value, block=index)
        except SysfsError as exc:
            if exc.errno == errno.EINVAL:
                already, zone = self._already_in(index, value)
                if already:
                    return ALREADY
                if zone is not None:
                    exc.action = f"write {value!r} (the block is already online, in zone {zone})"
            raise
        return CHANGED

    def _already_in(self, index: int, value: str) -> tuple[bool, str | None]:
        """Whether the block is in the state `value` asks for; the zone of a block that is online otherwise."""
        try:
            state = self.read_state(index)
            if value == "offline" or state != ONLINE:
                return state == (OFFLINE if value == "offline" else ONLINE), None
            zones = self.read_zones(index) if value != "online" else ()
        except SysfsError:
            return False, None
        zone = zones[0] if zones else None
        if value == "online_movable":
            return zone == ZONE_MOVABLE, zone
        if value == "online_kernel":
            return zone is not None and zone != ZONE_MOVABLE, zone
        return True, None
