"""The one gateway to the kernel's memory-hotplug files.

Every read and write of sysfs and procfs goes through `Sysfs`, built on a root path
(`/` in production, a recorded or fake tree in tests), and every OSError becomes a
typed `SysfsError` here and nowhere else. Scanning uses raw `os.open`/`os.read` with
directory file descriptors: a guest can have tens of thousands of blocks, and one
Python object per attribute would make `status` slower than lsmem.
"""

from __future__ import annotations

import errno
import os
import select
import signal
import time

from .errors import OfflineTimeoutError, SysfsError, UnsupportedSystemError, sysfs_error
from .e820 import boot_ram_ranges, overlaps
from .iomem import parse_iomem, virtio_mem_regions
from .model import (
    OFFLINE,
    ONLINE,
    ORIGIN_DIMM,
    ORIGIN_HOTPLUG,
    ORIGIN_VIRTIO_MEM,
    KernelParams,
    MemoryBlock,
    MemoryFigures,
    MemoryState,
    ORIGIN_BOOT,
)

MEMORY_DIR = "sys/devices/system/memory"
NODE_DIR = "sys/devices/system/node"
PARAMS_DIR = "sys/module/memory_hotplug/parameters"
KEXEC_CRASH_LOADED = "sys/kernel/kexec_crash_loaded"
PROC_DIR = "proc"
PROC_IOMEM = "proc/iomem"
BOOT_PARAMS = "sys/kernel/boot_params/data"
ACPI_DEVICES_DIR = "sys/bus/acpi/devices"
ACPI_MEMORY_DEVICE_PREFIX = "PNP0C80:"  # the ACPI memory device: one DIMM

BLOCK_STATES_WRITABLE = ("online", "online_kernel", "online_movable", "offline")
ONLINE_POLICIES = ("contig-zones", "auto-movable")

_READ_SIZE = 4096

# After SIGTERM, how long an offline writer may take to leave the kernel before
# SIGKILL, and how long after SIGKILL before it is left behind.
WRITER_TERM_GRACE_S = 2.0
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
WRITER_KILL_GRACE_S = 5.0

# Outcomes of a state write.
CHANGED = "changed"
ALREADY = "already"


def _read_raw_at(dir_fd: int, name: str) -> bytes:
    """Read a small attribute relative to an open directory (raises OSError)."""
    fd = os.open(name, os.O_RDONLY, dir_fd=dir_fd)
    try:
        return os.read(fd, _READ_SIZE)
    finally:
        os.close(fd)


def _read_at(dir_fd: int, name: str) -> str:
    return _read_raw_at(dir_fd, name).decode("ascii", "replace").strip()


def _die_with_parent(parent: int) -> None:
    """In an offline writer: be sent SIGTERM if the agent dies, even by SIGKILL.

    A writer left behind would keep the block going-offline and the kernel's device
    hotplug lock held, and keep the agent's lock file locked through the inherited fd.
    """
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:  # the agent died before prctl took effect
        os._exit(1)


def _stop_child(pid: int) -> bool:
    """SIGTERM, then SIGKILL; True if the child is still not gone (left to the kernel)."""
    for sig, grace in ((signal.SIGTERM, WRITER_TERM_GRACE_S), (signal.SIGKILL, WRITER_KILL_GRACE_S)):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return False
        end = time.monotonic() + grace
        while time.monotonic() < end:
            done, _status = os.waitpid(pid, os.WNOHANG)
            if done:
                return False
            time.sleep(0.02)
    return True


def _numbered(name: str, prefix: str) -> int | None:
    """N of a sysfs name `<prefix>N` (memory12, node0), or None for any other name."""
    digits = name[len(prefix) :]
    return int(digits) if name.startswith(prefix) and digits.isdecimal() else None


def _linked_block(dir_fd: int, link: str) -> int | None:
    """N of the memoryN a sysfs link points at (None if it is not one, or gone)."""
    try:
        target = os.readlink(link, dir_fd=dir_fd)
    except OSError:
        return None
    return _numbered(target[target.rfind("/") + 1 :], "memory")


_BOOT_ORIGIN = (ORIGIN_BOOT, None)


def _origin_classifier(boot_ram, dimm_groups: dict[int, str], virtio_regions, block_size: int):
    """A function (index, start) -> (origin, group), or None when no signal exists at all.

    Boot RAM (the boot E820 table) wins over every other signal: when signals disagree,
    calling a block boot memory only means it is never offlined. Without an E820 table
    (other architectures, recorded trees), a block no device claims is taken as boot.
    """
    if not (boot_ram or dimm_groups or virtio_regions):
        return None
    unclaimed = (ORIGIN_HOTPLUG, None) if boot_ram else _BOOT_ORIGIN

    def classify(index: int, start: int) -> tuple[str, str | None]:
        if boot_ram and overlaps(boot_ram, start, start + block_size - 1):
            return _BOOT_ORIGIN
        group = dimm_groups.get(index)
        if group is not None:
            return ORIGIN_DIMM, group
        for region_start, region_end, device in virtio_regions:
            if region_start <= start <= region_end:
                return ORIGIN_VIRTIO_MEM, device
        return unclaimed

    return classify


def _parse_bool(text: str) -> bool | None:
    lowered = text.strip().lower()
    if lowered in ("1", "y", "yes", "true"):
        return True
    if lowered in ("0", "n", "no", "false"):
        return False
    return None


def _parse_int(text: str, base: int = 10) -> int | None:
    try:
        return int(text, base)
    except ValueError:
        return None


class Sysfs:
    """Reads snapshots of memory blocks and writes block states under one root."""

    def __init__(self, root: str | os.PathLike = "/"):
        self.root = os.path.abspath(os.fspath(root))
        self.memory_dir = os.path.join(self.root, MEMORY_DIR)

    def __repr__(self) -> str:
        return f"Sysfs({self.root!r})"

    def path(self, relative: str) -> str:
        return os.path.join(self.root, relative)

    @property
    def proc_dir(self) -> str:
        """Where psutil should read /proc from, so memory figures match this root."""
        return self.path(PROC_DIR)

    # -- small reads -------------------------------------------------------------------

    def read_text(self, relative: str, block: int | None = None) -> str:
        path = self.path(relative)
        try:
            with open(path, "rb") as handle:
                return handle.read(_READ_SIZE).decode("ascii", "replace").strip()
        except OSError as exc:
            raise sysfs_error(exc, path, block, "read") from None

    def read_optional(self, relative: str) -> str | None:
        """Read an attribute that older kernels or other setups may lack (None if absent)."""
        try:
            return self.read_text(relative)
        except SysfsError as exc:
            if exc.errno in (errno.ENOENT, errno.ENOTDIR):
                return None
            raise

    def block_size(self) -> int:
        text = self.read_optional(f"{MEMORY_DIR}/block_size_bytes")
        if text is None:
            self._raise_unsupported()
        size = _parse_int(text, 16)
        if not size or size <= 0:
            raise UnsupportedSystemError(f"{self.path(MEMORY_DIR)}/block_size_bytes: unreadable block size {text!r}")
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
        ratio = self.read_optional(f"{PARAMS_DIR}/auto_movable_ratio")
        numa = self.read_optional(f"{PARAMS_DIR}/auto_movable_numa_aware")
        memmap = self.read_optional(f"{PARAMS_DIR}/memmap_on_memory")
        return KernelParams(
            online_policy=self.read_optional(f"{PARAMS_DIR}/online_policy"),
            auto_movable_ratio=_parse_int(ratio) if ratio is not None else None,
            auto_movable_numa_aware=_parse_bool(numa) if numa is not None else None,
            memmap_on_memory=_parse_bool(memmap) if memmap is not None else None,
        )

    def crash_hotplug(self) -> bool | None:
        """Whether the kernel updates the crash image itself on hotplug (None: unknown)."""
        text = self.read_optional(f"{MEMORY_DIR}/crash_hotplug")
        return _parse_bool(text) if text is not None else None

    def kexec_crash_loaded(self) -> bool | None:
        text = self.read_optional(KEXEC_CRASH_LOADED)
        return _parse_bool(text) if text is not None else None

    def memory_figures(self) -> MemoryFigures | None:
        """MemTotal and MemAvailable of this root's /proc, via psutil (None: unknown)."""
        import psutil

        saved, psutil.PROCFS_PATH = psutil.PROCFS_PATH, self.proc_dir  # a module global: put it back
        try:
            memory = psutil.virtual_memory()
        except (OSError, ValueError, KeyError, RuntimeError):
            return None
        finally:
            psutil.PROCFS_PATH = saved
        return MemoryFigures(total_bytes=memory.total, available_bytes=memory.available)

    # -- scanning ----------------------------------------------------------------------

    def block_indexes(self) -> list[int]:
        """Indexes of all present blocks, in numeric order (memory10 after memory9)."""
        try:
            names = os.listdir(self.memory_dir)
        except OSError as exc:
            if exc.errno in (errno.ENOENT, errno.ENOTDIR):
                self._raise_unsupported()
            raise sysfs_error(exc, self.memory_dir, None, "list") from None
        return sorted(index for name in names if (index := _numbered(name, "memory")) is not None)

    def read_state(self, index: int) -> str:
        return self.read_text(f"{MEMORY_DIR}/memory{index}/state", block=index)

    def read_zones(self, index: int) -> tuple[str, ...]:
        """valid_zones of one block, split in the kernel's order."""
        return tuple(self.read_text(f"{MEMORY_DIR}/memory{index}/valid_zones", block=index).split())

    def snapshot(self, legacy: bool = False) -> MemoryState:
        """Read every block and the global attributes into one frozen `MemoryState`.

        `legacy` also reads `removable` and `phys_device`: two more files per block that
        modern kernels fill with constants, so plain scans skip them.
        """
        block_size = self.block_size()
        indexes = self.block_indexes()
        warnings: list[str] = []
        nodes_by_block, only_node = self._node_map()
        classify = _origin_classifier(
            self._boot_ram_ranges(), self._acpi_memory_devices(), self._virtio_mem_regions(warnings), block_size
        )
        try:
            dir_fd = os.open(self.memory_dir, os.O_RDONLY | os.O_DIRECTORY)
        except OSError as exc:
            raise sysfs_error(exc, self.memory_dir, None, "open") from None
        try:
            present = self._optional_attributes(dir_fd, indexes, legacy, warnings)
            blocks = self._scan_blocks(dir_fd, indexes, block_size, present, nodes_by_block, only_node, classify)
        finally:
            os.close(dir_fd)
        if not blocks:
            raise UnsupportedSystemError(f"{self.memory_dir}: no memory blocks found")
        return MemoryState(
            block_size=block_size,
            blocks=tuple(blocks),
            auto_online_blocks=self.read_optional(f"{MEMORY_DIR}/auto_online_blocks"),
            crash_hotplug=self.crash_hotplug(),
            kexec_crash_loaded=self.kexec_crash_loaded(),
            params=self.kernel_params(),
            zones_supported="valid_zones" in present,
            nodes_supported=bool(nodes_by_block) or only_node is not None or "node" in present,
            warnings=tuple(warnings),
        )

    def _optional_attributes(self, dir_fd: int, indexes: list[int], legacy: bool, warnings: list[str]) -> set[str]:
        """Which optional per-block attributes exist, judged on the first block (as lsmem does)."""
        if not indexes:
            return set()
        try:
            names = set(self._listdir_at(dir_fd, f"memory{indexes[0]}"))
        except OSError as exc:
            raise sysfs_error(exc, os.path.join(self.memory_dir, f"memory{indexes[0]}"), indexes[0], "list") from None
        wanted = {"valid_zones": "zones unknown (kernel without CONFIG_MEMORY_HOTREMOVE?)"}
        if legacy:
            wanted.update(removable="removable unknown", phys_device="phys_device unknown")
        present = {name for name in wanted if name in names}
        for name, consequence in wanted.items():
            if name not in present:
                warnings.append(f"{self.memory_dir}/memory{indexes[0]}/{name} is missing: {consequence}")
        if any(_numbered(name, "node") is not None for name in names):
            present.add("node")
        return present

    @staticmethod
    def _listdir_at(dir_fd: int, name: str) -> list[str]:
        fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY, dir_fd=dir_fd)
        try:
            return os.listdir(fd)
        finally:
            os.close(fd)

    def _scan_blocks(self, dir_fd, indexes, block_size, present, nodes_by_block, only_node, classify):
        """The hot loop: two raw reads per block, local names, no per-attribute objects.

        Only a handful of distinct `state` and `valid_zones` contents exist, so the raw
        bytes are decoded and split once each and looked up in a dict after that.
        """
        with_zones = "valid_zones" in present
        with_removable = "removable" in present
        with_phys_device = "phys_device" in present
        node_links = not nodes_by_block and only_node is None and "node" in present
        get_node = nodes_by_block.get
        decoded: dict[bytes, str] = {}
        split: dict[bytes, tuple[str, ...]] = {}
        read_raw = _read_raw_at
        new_tuple = tuple.__new__  # MemoryBlock without NamedTuple's _make/__new__ layers: the hot path
        blocks = []
        append = blocks.append
        for index in indexes:
            name = f"memory{index}/"
            try:
                raw_state = read_raw(dir_fd, name + "state")
                state = decoded.get(raw_state)
                if state is None:
                    state = decoded[raw_state] = raw_state.decode("ascii", "replace").strip()
                zones = None
                if with_zones:
                    raw_zones = read_raw(dir_fd, name + "valid_zones")
                    zones = split.get(raw_zones)
                    if zones is None:
                        zones = split[raw_zones] = tuple(raw_zones.decode("ascii", "replace").split())
                node = self._node_from_links(dir_fd, name) if node_links else get_node(index, only_node)
                phys_device = _parse_int(_read_at(dir_fd, name + "phys_device")) if with_phys_device else None
                removable = _parse_bool(_read_at(dir_fd, name + "removable")) if with_removable else None
            except FileNotFoundError:
                continue  # hot-removed while we scanned: it is simply not present any more
            except OSError as exc:
                raise sysfs_error(exc, os.path.join(self.memory_dir, name), index, "read") from None
            start = index * block_size
            origin, group = classify(index, start) if classify else _BOOT_ORIGIN
            fields = (index, start, block_size, state, zones, node, phys_device, removable, origin, group)
            append(new_tuple(MemoryBlock, fields))
        return blocks

    def _node_from_links(self, dir_fd: int, name: str) -> int | None:
        for entry in self._listdir_at(dir_fd, name):
            node = _numbered(entry, "node")
            if node is not None:
                return node
        return None

    def _node_map(self) -> tuple[dict[int, int], int | None]:
        """Block -> node from /sys/devices/system/node/nodeX/memoryN, and the only node if one.

        One listdir per node instead of one per block; with a single node directory
        every block is on that node and nothing needs listing at all.
        """
        node_root = self.path(NODE_DIR)
        try:
            node_ids = [node for name in os.listdir(node_root) if (node := _numbered(name, "node")) is not None]
        except OSError:
            return {}, None
        if len(node_ids) == 1:
            return {}, node_ids[0]
        nodes: dict[int, int] = {}
        for node in node_ids:
            try:
                entries = os.listdir(os.path.join(node_root, f"node{node}"))
            except OSError:
                continue
            for entry in entries:
                block = _numbered(entry, "memory")
                if block is not None:
                    nodes[block] = node
        return nodes, None

    def _acpi_memory_devices(self) -> dict[int, str]:
        """Block -> ACPI memory device (one DIMM), from the devices' physical_node links.

        The kernel binds a device's blocks in ascending order, numbering the links
        physical_node, physical_node1, ... So when the first and the last link span
        exactly as many blocks as there are links, the device is that run of blocks and
        the links between need no readlink: a 256-block DIMM costs two, not 256.
        """
        acpi_root = self.path(ACPI_DEVICES_DIR)
        try:
            devices = [name for name in os.listdir(acpi_root) if name.startswith(ACPI_MEMORY_DEVICE_PREFIX)]
        except OSError:
            return {}
        groups: dict[int, str] = {}
        for device in devices:
            try:
                device_fd = os.open(os.path.join(acpi_root, device), os.O_RDONLY | os.O_DIRECTORY)
            except OSError:
                continue
            try:
                links = sorted(
                    (int(name[13:] or 0), name)
                    for name in os.listdir(device_fd)
                    if name.startswith("physical_node") and (name[13:] == "" or name[13:].isdecimal())
                )
                first = _linked_block(device_fd, links[0][1]) if links else None
                last = _linked_block(device_fd, links[-1][1]) if links else None
                if first is not None and last is not None and last - first + 1 == len(links):
                    members = range(first, last + 1)
                else:
                    members = [block for _, name in links if (block := _linked_block(device_fd, name)) is not None]
            finally:
                os.close(device_fd)
            group = f"acpi:{device}"
            for block in members:
                groups[block] = group
        return groups

    def _boot_ram_ranges(self) -> list[tuple[int, int]]:
        """RAM of the boot E820 table (x86; empty elsewhere or when unreadable)."""
        path = self.path(BOOT_PARAMS)
        try:
            with open(path, "rb") as handle:
                return boot_ram_ranges(handle.read())
        except OSError:
            return []

    def _virtio_mem_regions(self, warnings: list[str]) -> list[tuple[int, int, str]]:
        text = self.read_optional(PROC_IOMEM)
        if text is None:
            return []
        resources = parse_iomem(text)
        if resources and all(r.start == 0 and r.end == 0 for r in resources):
            warnings.append(f"{self.path(PROC_IOMEM)} shows no addresses (not root?): virtio-mem memory not identified")
            return []
        return virtio_mem_regions(resources)

    # -- writing -----------------------------------------------------------------------

    def write_block_state(self, index: int, value: str) -> str:
        """Write `value` to memoryN/state; CHANGED, or ALREADY when the kernel says it is a no-op.

        The kernel answers EINVAL when the block is already in the requested state; a
        re-read of `state` tells that apart from a real EINVAL.
        """
        if value not in BLOCK_STATES_WRITABLE:
            raise ValueError(f"not a block state to write: {value!r}")
        path = os.path.join(self.memory_dir, f"memory{index}", "state")
        action = f"write {value!r}"
        try:
            fd = os.open(path, os.O_WRONLY)
        except OSError as exc:
            raise sysfs_error(exc, path, index, action) from None
        try:
            os.write(fd, value.encode("ascii"))
        except OSError as exc:
            if exc.errno == errno.EINVAL and self._already_in(index, value):
                return ALREADY
            raise sysfs_error(exc, path, index, action) from None
        finally:
            os.close(fd)
        return CHANGED

    def offline_block(self, index: int, timeout: float) -> str:
        """Offline a block in a forked child that is signalled if it is not done by `timeout`.

        Since Linux 4.15 offlining retries page migration until a signal arrives, so the
        write must happen in something we can signal; the child reports the gateway's
        outcome or errno through a pipe and the same typed exception is raised here.
        """
        read_end, write_end = os.pipe()
        parent = os.getpid()
        pid = os.fork()
        if pid == 0:  # child: only the write and a one-line report, no Python cleanup
            try:
                os.close(read_end)
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                signal.signal(signal.SIGINT, signal.SIG_DFL)
                _die_with_parent(parent)
                try:
                    report = "ok " + self.write_block_state(index, "offline")
                except SysfsError as exc:
                    report = f"error {exc.errno} {exc.path}"
                os.write(write_end, report.encode())
            finally:
                os._exit(0)
        os.close(write_end)
        state_path = os.path.join(self.memory_dir, f"memory{index}", "state")
        try:
            ready, _, _ = select.select([read_end], [], [], timeout)
            if not ready:
                stuck = _stop_child(pid)
                raise OfflineTimeoutError(state_path, index, timeout, pid if stuck else None)
            report = os.read(read_end, 4096).decode()
        except BaseException as exc:
            if not isinstance(exc, OfflineTimeoutError):
                _stop_child(pid)  # we were interrupted (SIGINT/SIGTERM): take the writer with us
            raise
        finally:
            os.close(read_end)
        os.waitpid(pid, 0)
        kind, _, rest = report.partition(" ")
        if kind == "ok":
            return rest
        if kind == "error":
            code, _, path = rest.partition(" ")
            raise sysfs_error(OSError(int(code), os.strerror(int(code))), path, index, "write 'offline'")
        raise SysfsError(state_path, errno.EIO, index, "offline (the writer died without a report)")

    def _already_in(self, index: int, value: str) -> bool:
        try:
            state = self.read_state(index)
        except SysfsError:
            return False
        wanted = OFFLINE if value == "offline" else ONLINE
        return state == wanted
