"""Read the guest's memory-hotplug setup for `vmem-agent doctor`, through the gateway.

Everything comes from files under the root: the memory blocks (a snapshot), the kernel
command line, the udev rules directories merged as udevd merges them, the DMI attributes
the rules compare, the crash kernel's reservation, the kdump units and reload programs.
The result is one frozen `SetupPicture`; the judging is core.doctor's.
"""

from __future__ import annotations

import errno
import os

from ..core.doctor import DaemonFacts, KdumpSetup, SetupPicture
from ..core.udev_rules import (
    MASK_TARGET, RULES_DIRS, device_attribute_path, device_attribute_references, effective_rules_files, is_rules_file_name,
    memory_rule_effects, parse_rules, systemd_architecture,
)
from ..errors import SysfsError
from .iomem import VIRTIO_MEM_RESOURCE, parse_iomem
from .sysfs import PROC_FILE_LIMIT, PROC_IOMEM, Sysfs

# Unit directories in systemd's order; the units whose presence makes `systemctl try-restart` a reload.
UNIT_DIRS = ("etc/systemd/system", "run/systemd/system", "usr/lib/systemd/system", "lib/systemd/system")
KDUMP_UNITS = ("kdump.service", "kdump-tools.service")


def read_setup(sysfs: Sysfs, reload_command: tuple[str, ...] | None = None, daemon: DaemonFacts | None = None) -> SetupPicture:
    """The whole picture doctor judges; `reload_command` is what vmem-agent would run to reload kdump,
    `daemon` what its control socket said (asked by the caller: it is not a kernel file)."""
    state = sysfs.snapshot()
    architecture = systemd_architecture(sysfs.kernel_arch())
    effects, unreadable = read_rule_effects(sysfs, architecture)
    kdump = KdumpSetup(
        crash_size=sysfs.kexec_crash_size(),
        reload_command=reload_command,
        units=frozenset(unit for unit in KDUMP_UNITS if any(sysfs.exists(f"{d}/{unit}") for d in UNIT_DIRS)),
    )
    return SetupPicture(
        state=state,
        cmdline=sysfs.kernel_cmdline(),
        rule_effects=tuple(effects),
        unreadable_rules=tuple(unreadable),
        kdump=kdump,
        figures=sysfs.memory_figures(),
        virtio_mem_sizes=tuple(_virtio_mem_sizes(sysfs)),
        daemon=daemon,
        architecture=architecture,
    )


def read_rule_effects(sysfs: Sysfs, architecture: str | None) -> tuple[list, list[tuple[str, str]]]:
    """What the root's udev rules do to memory events (RuleEffect, in udev's order), and the
    rules files that could not be read; for doctor, and for the daemon, which reports (and
    does not fight) another onliner."""
    listings, unreadable = _rules_listings(sysfs)
    files = [parse_rules(path, text) for path, text in effective_rules_files(listings)]
    attributes = {reference: _device_attribute(sysfs, reference) for reference in device_attribute_references(files)}
    return memory_rule_effects(files, architecture, attributes), unreadable


def _rules_listings(sysfs: Sysfs) -> tuple[list[tuple[str, dict[str, str | None]]], list[tuple[str, str]]]:
    """Per rules directory (highest priority first): name -> text, or None when masked; and what could not be read."""
    listings = []
    unreadable = []
    for directory in RULES_DIRS:
        entries: dict[str, str | None] = {}
        for name in sorted(sysfs.listdir_optional(directory) or ()):
            if not is_rules_file_name(name):
                continue
            relative = f"{directory}/{name}"
            link = sysfs.readlink_optional(relative)
            if link == MASK_TARGET:
                entries[name] = None
                continue
            try:
                entries[name] = _read_rules_file(sysfs, relative, link)
            except SysfsError as exc:
                if exc.errno == errno.EISDIR:
                    continue  # udevd reads regular files only
                entries[name] = ""  # udevd (root) reads it; it still replaces the same name further down
                unreadable.append((f"/{relative}", os.strerror(exc.errno)))
        listings.append((directory, entries))
    return listings, unreadable


def _read_rules_file(sysfs: Sysfs, relative: str, link: str | None) -> str:
    """A rules file's text; an absolute link is followed inside the root, as udevd inside it would."""
    if link is not None and link.startswith("/"):
        relative = link.lstrip("/")
    return sysfs.read_bytes(relative, limit=PROC_FILE_LIMIT).decode("utf-8", "replace")


def _device_attribute(sysfs: Sysfs, reference: str) -> str | None:
    relative = device_attribute_path(reference)
    if relative is None:
        return None
    try:
        return sysfs.read_optional(relative)
    except SysfsError:
        return None


def _virtio_mem_sizes(sysfs: Sysfs) -> list[tuple[str, int]]:
    """(group, bytes) of each virtio-mem device region with memory in it: the most it can hold."""
    text = sysfs.read_optional(PROC_IOMEM, limit=PROC_FILE_LIMIT)
    if text is None:
        return []
    resources = parse_iomem(text, sysfs.path(PROC_IOMEM))
    devices = {resource.parent for resource in resources if resource.name == VIRTIO_MEM_RESOURCE and resource.parent}
    return [(f"virtio-mem:{r.name}", r.end - r.start + 1) for r in resources if r.name in devices and r.end > r.start]

