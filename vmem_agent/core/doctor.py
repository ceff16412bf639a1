"""`vmem-agent doctor`: what in the guest's setup works against memory hotplug. Pure: no I/O.

The reader (kernel.setup) gathers one frozen `SetupPicture`; every check here is a function
from that picture to findings, each with a severity, one line of what is wrong, and the
command or file that fixes it. Severities:

- error: memory or crash dumps are lost or at risk now (two onliners, Movable above the
  allowance, a loaded crash kernel nothing can reload);
- warning: a setting that defeats vmem-agent or makes hot-plugged memory hard to give back;
- info: how things stand (no exit status of its own).

Adding a check: write `check_x(picture) -> Iterable[Finding]`, append it to CHECKS, and
test it with a picture built by hand. If it needs a fact the picture lacks, add a field
with a default here and read it in kernel.setup. A new onliner (a daemon, say) goes into
`onliners()`, so that the conflict and zone checks count it too.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from typing import Callable, Iterable

from ..errors import EXIT_DOCTOR_ERRORS, EXIT_DOCTOR_WARNINGS, EXIT_OK
from .model import (
    ONLINE, ORIGIN_BOOT, ORIGIN_DIMM, ORIGIN_HOTPLUG, ZONE_MOVABLE, ZONE_NONE, MemoryBlock, MemoryFigures, MemoryState,
    format_block_list,
)
from .onlining import kernel_parameter
from .policy import DEFAULT_MOVABLE_RATIO, KERNEL_AUTO_MOVABLE
from .sizes import format_size
from .udev_rules import EFFECT_KDUMP_RELOAD, EFFECT_ONLINE, ONLINE_STATES, RuleEffect

ERROR = "error"
WARNING = "warning"
INFO = "info"
SEVERITIES = (ERROR, WARNING, INFO)

# The kernel documentation: "MOVABLE:KERNEL ratios of up to 3:1 or even 4:1 are fine".
SAFE_MOVABLE_RATIO = 400
MEMMAP_FRACTION = 64  # the memmap takes 64 bytes per 4 KiB page: 1/64 of the memory it describes
# Warn about the memmap when that of the hot-pluggable memory exceeds this share of MemAvailable.
MEMMAP_AVAILABLE_PERCENT = 10

AUTO_ONLINE_FILE = "/sys/devices/system/memory/auto_online_blocks"
PARAMS_DIR = "/sys/module/memory_hotplug/parameters"
GRUB_HINT = "GRUB_CMDLINE_LINUX in /etc/default/grub, then update-grub"
KDUMP_INSTALL_HINT = "install kdump-tools (Debian, Ubuntu) or kdump-utils (Fedora, RHEL), or give vmem-agent --kdump-command"
# Rules directories whose files are the administrator's own, edited in place.
_LOCAL_RULES_DIRS = ("/etc/udev/rules.d/", "/run/udev/rules.d/")


@dataclass(frozen=True, slots=True)
class Finding:
    check: str  # stable name of the check, for scripts
    severity: str  # ERROR, WARNING or INFO
    message: str  # one line: what is wrong (or, for INFO, how things stand)
    fix: str | None = None  # the command or file that fixes it
    where: str | None = None  # the file (file:line for a rule) the finding is about
    blocks: tuple[int, ...] = ()  # the memory blocks it is about

    def to_json(self) -> dict:
        return {"check": self.check, "severity": self.severity, "message": self.message, "fix": self.fix,
                "where": self.where, "blocks": list(self.blocks)}


@dataclass(frozen=True, slots=True)
class KdumpSetup:
    crash_size: int | None = None  # bytes reserved for a crash kernel (kexec_crash_size); None: unknown
    reload_command: tuple[str, ...] | None = None  # what vmem-agent would run to reload kdump
    units: frozenset[str] = frozenset()  # kdump unit files present: kdump.service, kdump-tools.service


@dataclass(frozen=True, slots=True)
class DaemonFacts:
    """What the vmem-agent daemon's control socket says (or that none answers)."""

    running: bool
    accessible: bool = True  # False: a daemon runs but this user may not ask it
    pid: int | None = None
    target_bytes: int | None = None
    onlining: str | None = None  # "kernel": it let the kernel's auto-online do it; "daemon": it writes
    stored_target_bytes: int | None = None  # what resize stored for a daemon

    @property
    def onlines(self) -> bool:
        return self.running and self.accessible


@dataclass(frozen=True, slots=True)
class SetupPicture:
    """Everything doctor judges, read once."""

    state: MemoryState
    cmdline: str | None = None  # /proc/cmdline; None: unknown
    rule_effects: tuple[RuleEffect, ...] = ()  # what the udev rules do to memory events, in udev's order
    unreadable_rules: tuple[tuple[str, str], ...] = ()  # (path, reason) of rules files that could not be read
    kdump: KdumpSetup = field(default_factory=KdumpSetup)
    figures: MemoryFigures | None = None
    virtio_mem_sizes: tuple[tuple[str, int], ...] = ()  # (group, bytes the device can hold at most)
    daemon: DaemonFacts | None = None  # None: not asked (pictures built by hand)
    architecture: str | None = None  # systemd's name (x86-64, s390x, ...); None: unknown


@dataclass(frozen=True, slots=True)
class Onliner:
    """Something that onlines hot-added memory before vmem-agent can."""

    name: str  # how messages name it
    writes: tuple[str, ...]  # what it writes: online, online_movable, 1, ...


Check = Callable[[SetupPicture], Iterable[Finding]]


# -- facts derived from the picture ---------------------------------------------------------------


DAEMON_WRITES = ("online_movable", "online_kernel")  # the daemon always names the zone
# Where standby memory is onlined by the operator (chmem) by design, as memhpd also assumes.
MANUAL_ONLINING_ARCHITECTURES = ("s390", "s390x")


def daemon_set_auto_online(picture: SetupPicture) -> bool:
    """The kernel's auto-online is on because the running daemon handed onlining to it."""
    daemon = picture.daemon
    return daemon is not None and daemon.onlines and daemon.onlining == "kernel"


def onliners(picture: SetupPicture) -> list[Onliner]:
    """Who onlines a hot-added block, in the order they act: the kernel, then udev, then the daemon.

    The kernel's auto-online that the daemon itself set up is the daemon onlining (with the
    zone rule), not a second onliner.
    """
    found = []
    mode = picture.state.auto_online_blocks
    if mode in ONLINE_STATES and not daemon_set_auto_online(picture):
        found.append(Onliner(f"the kernel (auto_online_blocks={mode})", (mode,)))
    found.extend(Onliner(effect.where, effect.values) for effect in _effects(picture, EFFECT_ONLINE))
    if picture.daemon is not None and picture.daemon.onlines:
        found.append(Onliner(f"the vmem-agent daemon (pid {picture.daemon.pid})", DAEMON_WRITES))
    return found


def _effects(picture: SetupPicture, kind: str) -> list[RuleEffect]:
    return [effect for effect in picture.rule_effects if effect.kind == kind]


def movable_balance(blocks: Iterable[MemoryBlock]) -> tuple[dict[int | None, int], dict[int | None, int]]:
    """(boot kernel memory, Movable memory) online per node, in blocks.

    Boot kernel memory is the allowance's base as in core.policy: online boot blocks in any
    zone but Movable; hot-plugged kernel memory never raises it.
    """
    kernel: dict[int | None, int] = {}
    movable: dict[int | None, int] = {}
    for block in blocks:
        if block.state != ONLINE:
            continue
        if block.zone == ZONE_MOVABLE:
            movable[block.node] = movable.get(block.node, 0) + 1
        elif block.origin == ORIGIN_BOOT:
            kernel[block.node] = kernel.get(block.node, 0) + 1
    return kernel, movable


def _blocks_phrase(indexes: Iterable[int]) -> str:
    indexes = sorted(indexes)
    return f"block{'s' if len(indexes) > 1 else ''} {format_block_list(indexes)}"


def _device_name(block: MemoryBlock) -> str:
    """DIMM acpi:PNP0C80:00, virtio-mem device virtio2: how messages name a block's memory device."""
    if block.group is None:
        return "no known device"
    if block.origin == ORIGIN_DIMM:
        return f"DIMM {block.group}"
    return f"{block.origin} device {block.group.split(':', 1)[-1]}"


def _rule_fix(path: str, line: int) -> str:
    if path.startswith(_LOCAL_RULES_DIRS):
        return f"delete or comment out line {line} of {path}, then run: udevadm control --reload"
    name = path.rsplit("/", 1)[-1]
    return (f"cp {path} /etc/udev/rules.d/{name} and comment out line {line} there (the copy replaces the "
            f"packaged file), then run: udevadm control --reload")


def _cmdline_fix(cmdline: str | None, name: str, value: str) -> str:
    current = kernel_parameter(cmdline, name)
    if current is None:
        return f"add {name}={value} to the kernel command line ({GRUB_HINT})"
    return f"replace {name}={current} with {name}={value} on the kernel command line ({GRUB_HINT})"


# -- checks ------------------------------------------------------------------------------------


def check_kernel_auto_online(picture: SetupPicture) -> Iterable[Finding]:
    """The kernel onlining every hot-added block itself, now or from the next boot."""
    mode = picture.state.auto_online_blocks
    at_boot = kernel_parameter(picture.cmdline, "memhp_default_state")
    if mode in ONLINE_STATES and daemon_set_auto_online(picture):
        return  # the daemon's own hand-over, restored when it stops (check_daemon says so)
    if mode in ONLINE_STATES:
        fix = f"echo offline > {AUTO_ONLINE_FILE}; and "
        if at_boot == mode:
            source = f"memhp_default_state={at_boot} on the kernel command line"
            fix += _cmdline_fix(picture.cmdline, "memhp_default_state", "offline")
        elif picture.cmdline is None:
            source = "kernel command line unknown"
            fix += _cmdline_fix(picture.cmdline, "memhp_default_state", "offline")
        elif at_boot is None:
            source = "the kernel's build default or a write at runtime; the command line does not set it"
            fix += _cmdline_fix(picture.cmdline, "memhp_default_state", "offline")
        else:
            source = f"written at runtime: the kernel command line has memhp_default_state={at_boot}"
            fix += "find what writes it at boot (a unit, a tmpfiles.d or sysfs.d entry, a udev rule)"
        yield Finding(
            "kernel-auto-online", WARNING,
            f"the kernel onlines every hot-added memory block itself (auto_online_blocks={mode}, {source}): "
            "the memory is online before vmem-agent sees it, so vmem-agent cannot hold a target or choose zones",
            fix,
            AUTO_ONLINE_FILE,
        )
    elif mode == "offline" and at_boot in ONLINE_STATES:
        yield Finding(
            "kernel-auto-online", WARNING,
            f"auto_online_blocks is offline now, but the kernel command line sets memhp_default_state={at_boot}: "
            "from the next boot on the kernel onlines hot-added memory itself again",
            _cmdline_fix(picture.cmdline, "memhp_default_state", "offline"),
            "/proc/cmdline",
        )


def check_udev_onliners(picture: SetupPicture) -> Iterable[Finding]:
    """udev rules that online hot-added memory (RHEL's 40-redhat.rules, SUSE's, forum rules)."""
    for effect in _effects(picture, EFFECT_ONLINE):
        when = f", when {' and '.join(effect.conditions)}" if effect.conditions else ""
        yield Finding(
            "udev-onlines-memory", WARNING,
            f"{effect.where} onlines every hot-added memory block ({effect.how}{when}): the memory is online "
            "before vmem-agent sees it, so vmem-agent cannot hold a target or choose zones",
            _rule_fix(effect.path, effect.line),
            effect.where,
        )


def check_onliner_conflict(picture: SetupPicture) -> Iterable[Finding]:
    found = onliners(picture)
    if len(found) < 2:
        return
    names = ", ".join(onliner.name for onliner in found)
    yield Finding(
        "onliner-conflict", ERROR,
        f"hot-added memory has {len(found)} onliners: {names}; {found[0].name} onlines each block first and "
        "decides its zone, the others then fail (EINVAL) or find nothing to do",
        "keep one onliner: for vmem-agent (its daemon), apply the fixes of the kernel-auto-online and "
        "udev-onlines-memory findings",
    )


def check_online_policy(picture: SetupPicture) -> Iterable[Finding]:
    """Plain `online` from another onliner lands in ZONE_NORMAL under contig-zones."""
    params = picture.state.params
    policy = params.online_policy
    plain = [onliner.name for onliner in onliners(picture) if {"online", "1"} & set(onliner.writes)]
    if plain and policy != KERNEL_AUTO_MOVABLE:
        shown = policy or "contig-zones (this kernel does not expose online_policy)"
        yield Finding(
            "online-policy", WARNING,
            f"{', '.join(plain)} online{'s' if len(plain) == 1 else ''} hot-added memory with plain 'online', and "
            f"online_policy={shown} then picks ZONE_NORMAL (unless the block lies in ZONE_MOVABLE's span): "
            "memory in ZONE_NORMAL can rarely be offlined again, so the host cannot unplug it",
            f"echo {KERNEL_AUTO_MOVABLE} > {PARAMS_DIR}/online_policy; and "
            + _cmdline_fix(picture.cmdline, "memory_hotplug.online_policy", KERNEL_AUTO_MOVABLE),
            f"{PARAMS_DIR}/online_policy",
        )
        return
    ratio = params.auto_movable_ratio
    yield Finding(
        "online-policy", INFO,
        f"online_policy={policy or 'unknown'}, auto_movable_ratio={'unknown' if ratio is None else f'{ratio}%'}: "
        "vmem-agent puts hot-plugged memory into ZONE_MOVABLE while Movable stays within "
        f"{DEFAULT_MOVABLE_RATIO if ratio is None else ratio}% of boot kernel memory",
    )


def check_movable_ratio_setting(picture: SetupPicture) -> Iterable[Finding]:
    """An allowance above what the kernel documentation calls safe; vmem-agent follows it."""
    ratio = picture.state.params.auto_movable_ratio
    if ratio is None or ratio <= SAFE_MOVABLE_RATIO:
        return
    yield Finding(
        "movable-ratio-setting", WARNING,
        f"auto_movable_ratio is {ratio}%: it lets ZONE_MOVABLE grow to {ratio / 100:g} times the boot kernel memory, "
        "and vmem-agent follows it; the kernel's documentation calls 3:1 or 4:1 usually fine, beyond that kernel "
        "allocations can run out",
        f"echo {DEFAULT_MOVABLE_RATIO} > {PARAMS_DIR}/auto_movable_ratio; and "
        + _cmdline_fix(picture.cmdline, "memory_hotplug.auto_movable_ratio", str(DEFAULT_MOVABLE_RATIO)),
        f"{PARAMS_DIR}/auto_movable_ratio",
    )


def check_movable_balance(picture: SetupPicture) -> Iterable[Finding]:
    """ZONE_MOVABLE above the ratio's allowance: kernel allocations can run out (OOM)."""
    state = picture.state
    params = state.params
    ratio = params.auto_movable_ratio if params.auto_movable_ratio is not None else DEFAULT_MOVABLE_RATIO
    numa_aware = params.auto_movable_numa_aware is not False
    kernel, movable = movable_balance(state.blocks)
    scopes: list[tuple[str, int, int, int | None]] = [("", sum(kernel.values()), sum(movable.values()), None)]
    if numa_aware and len(kernel.keys() | movable.keys()) > 1:
        scopes.extend((f" on node {node}", kernel.get(node, 0), movable.get(node, 0), node)
                      for node in sorted(kernel.keys() | movable.keys(), key=lambda n: (n is None, n or 0)))
    over = False
    size = state.block_size
    for where, kernel_blocks, movable_blocks, node in scopes:
        if movable_blocks * 100 <= ratio * kernel_blocks:
            continue
        over = True
        share = "no" if not kernel_blocks else f"{movable_blocks * 100 // kernel_blocks}% of the"
        excess = movable_blocks - ratio * kernel_blocks // 100
        candidates = sorted(
            (b.index for b in state.blocks
             if b.zone == ZONE_MOVABLE and b.hotplugged and (node is None or b.node == node)),
            reverse=True,
        )[:excess]
        if len(candidates) < excess:  # boot memory in ZONE_MOVABLE (movablecore=, kernelcore=) is part of it
            candidates = []
        fix = (f"vmem-agent offline {format_block_list(candidates)}" if candidates else
               "add kernel memory, or make less memory Movable (movablecore=, kernelcore= on the kernel command line)")
        yield Finding(
            "movable-over-ratio", ERROR,
            f"ZONE_MOVABLE{where} holds {format_size(movable_blocks * size)}, {share} "
            f"{format_size(kernel_blocks * size)} boot kernel memory, above the {ratio}% allowance: kernel "
            "allocations (page tables, slab) can only use the kernel zones, so the guest can run out of memory "
            "with Movable memory free",
            fix, blocks=tuple(sorted(candidates)),
        )
    total_kernel, total_movable = scopes[0][1], scopes[0][2]
    if not over and total_movable:
        yield Finding(
            "movable-over-ratio", INFO,
            f"ZONE_MOVABLE holds {format_size(total_movable * size)}, "
            f"{total_movable * 100 // total_kernel}% of the {format_size(total_kernel * size)} boot kernel "
            f"memory (allowance {ratio}%)",
        )


def check_memmap_on_memory(picture: SetupPicture) -> Iterable[Finding]:
    """Without memmap_on_memory the memmap of added memory comes from memory already online."""
    state = picture.state
    setting = state.params.memmap_on_memory
    fix = "memory_hotplug.memmap_on_memory=1 on the kernel command line (read at boot only)"
    if setting:
        yield Finding("memmap-on-memory", INFO, "memmap_on_memory is on: hot-added memory holds its own memmap")
        return
    hotplugged = sum(b.size for b in state.blocks if b.hotplugged)
    offline = sum(b.size for b in state.blocks if b.hotplugged and b.state != ONLINE)
    present_by_group: dict[str, int] = {}
    for block in state.blocks:
        if block.group is not None:
            present_by_group[block.group] = present_by_group.get(block.group, 0) + block.size
    room = sum(max(0, capacity - present_by_group.get(group, 0)) for group, capacity in picture.virtio_mem_sizes)
    pluggable = hotplugged + room
    setting_text = "off" if setting is False else "not exposed by this kernel"
    message = (f"memmap_on_memory is {setting_text}: the memmap of hot-added memory (1/{MEMMAP_FRACTION} of it) comes "
               "from memory already online, before the new memory can be onlined; the "
               f"{format_size(hotplugged)} hot-plugged so far took {format_size(hotplugged // MEMMAP_FRACTION)}")
    if offline:
        message += f", {format_size(offline // MEMMAP_FRACTION)} of it for the {format_size(offline)} still offline"
    available = picture.figures.available_bytes if picture.figures else None
    big = available is not None and pluggable // MEMMAP_FRACTION * 100 > MEMMAP_AVAILABLE_PERCENT * available
    if big:
        yield Finding(
            "memmap-on-memory", WARNING,
            f"{message}, and the {format_size(pluggable)} of hot-pluggable memory would take "
            f"{format_size(pluggable // MEMMAP_FRACTION)}, over {MEMMAP_AVAILABLE_PERCENT}% of the "
            f"{format_size(available)} available: a big hot-add can run the guest out of memory",
            fix if setting is False else "a kernel with memory_hotplug.memmap_on_memory (Linux 5.12 or later)",
        )
    elif hotplugged or room:
        yield Finding("memmap-on-memory", INFO, message)


def check_normal_hotplugged(picture: SetupPicture) -> Iterable[Finding]:
    """Hot-plugged memory online in a kernel zone: it can rarely be offlined, so not unplugged."""
    by_group: dict[tuple[str | None, str], list[MemoryBlock]] = {}
    for block in picture.state.blocks:
        zone = block.zone
        if block.hotplugged and zone is not None and zone not in (ZONE_MOVABLE, ZONE_NONE):
            by_group.setdefault((block.group, zone), []).append(block)
    for (group, zone), blocks in by_group.items():
        indexes = [b.index for b in blocks]
        device = _device_name(blocks[0])
        listed = format_block_list(indexes)
        yield Finding(
            "hotplugged-in-kernel-zone", WARNING,
            f"{format_size(sum(b.size for b in blocks))} of hot-plugged memory ({device}, "
            f"{_blocks_phrase(indexes)}) is online in ZONE_{zone.upper()}: kernel allocations pin it, so it can "
            "rarely be offlined and the host cannot unplug it",
            f"vmem-agent offline {listed} && vmem-agent online {listed} --zone movable (fails with EBUSY once the "
            "kernel uses it; then only a reboot frees it); prevent it by leaving onlining to vmem-agent",
            blocks=tuple(indexes),
        )


def check_partly_offline_dimms(picture: SetupPicture) -> Iterable[Finding]:
    """A DIMM is unplugged as a whole: partly online, it is memory neither side uses well."""
    dimms: dict[str, list[MemoryBlock]] = {}
    for block in picture.state.blocks:
        if block.origin == ORIGIN_DIMM and block.group is not None:
            dimms.setdefault(block.group, []).append(block)
    for group, blocks in dimms.items():
        online = [b.index for b in blocks if b.state == ONLINE]
        offline = [b.index for b in blocks if b.state != ONLINE]
        if not (online and offline):
            continue
        yield Finding(
            "dimm-partly-offline", WARNING,
            f"DIMM {group} ({_blocks_phrase(b.index for b in blocks)}) is partly online: "
            f"{format_size(len(offline) * blocks[0].size)} of it ({_blocks_phrase(offline)}) is offline, memory the "
            f"host gave but the guest does not use, and the host cannot unplug the DIMM while "
            f"{_blocks_phrase(online)} {'are' if len(online) > 1 else 'is'} online",
            f"vmem-agent online {format_block_list(offline)} to use it, or vmem-agent offline "
            f"{format_block_list(online)} so that the host can unplug it",
            blocks=tuple(sorted(offline)),
        )


def check_unknown_origin(picture: SetupPicture) -> Iterable[Finding]:
    blocks = [b for b in picture.state.blocks if b.origin == ORIGIN_HOTPLUG]
    if not blocks:
        return
    indexes = [b.index for b in blocks]
    yield Finding(
        "unknown-origin", WARNING,
        f"{format_size(sum(b.size for b in blocks))} of memory ({_blocks_phrase(indexes)}) is not in the boot "
        "memory map and no DIMM or virtio-mem device claims it: vmem-agent treats it as hot-plugged but cannot "
        "tell which device would take it back",
        "nothing, if it is dax/kmem, Xen or Hyper-V balloon memory; otherwise compare /proc/iomem with "
        "vmem-agent status --blocks",
        blocks=tuple(indexes),
    )


def check_kdump(picture: SetupPicture) -> Iterable[Finding]:
    """A crash kernel must be reloaded after memory changes unless the kernel updates it (crash_hotplug)."""
    state, kdump = picture.state, picture.kdump
    loaded = state.kexec_crash_loaded
    if loaded:
        if state.crash_hotplug:
            yield Finding("kdump", INFO, "a crash kernel is loaded and the kernel updates its memory map on "
                                         "hotplug itself (crash_hotplug=1): no reload needed")
            return
        stale = (f"a crash kernel is loaded and the kernel does not update it on hotplug (crash_hotplug "
                 f"{'0' if state.crash_hotplug is False else 'absent'})")
        command = kdump.reload_command
        if command is None:
            yield Finding("kdump", ERROR, f"{stale}, and no reload command exists (kdumpctl, kdump-config, "
                                          "systemctl): after a memory change a crash dump misses memory or fails",
                          KDUMP_INSTALL_HINT)
        elif command[0] == "systemctl" and not kdump.units:
            yield Finding("kdump", ERROR, f"{stale}; vmem-agent would reload it with '{shlex.join(command)}', but "
                                          "no kdump unit is installed: after a memory change a crash dump misses "
                                          "memory or fails", KDUMP_INSTALL_HINT)
        else:
            yield Finding("kdump", INFO, f"{stale}: vmem-agent reloads it once after each change with "
                                         f"'{shlex.join(command)}'")
        return
    reserved = kdump.crash_size
    asked = kernel_parameter(picture.cmdline, "crashkernel")
    if loaded is False and reserved:
        yield Finding(
            "kdump", WARNING,
            f"{format_size(reserved)} is reserved for a crash kernel (crashkernel=) but none is loaded: no crash "
            "dumps, and the reservation is memory the guest cannot use",
            "load one (Debian: systemctl enable --now kdump-tools; Fedora, RHEL: systemctl enable --now kdump), "
            "or drop crashkernel= from the kernel command line",
            "/sys/kernel/kexec_crash_size",
        )
    elif loaded is False and asked is not None and reserved == 0:
        yield Finding(
            "kdump", WARNING,
            f"crashkernel={asked} is on the kernel command line but nothing is reserved (kexec_crash_size is 0): "
            "the reservation failed at boot, so there can be no crash dumps",
            "see why: dmesg | grep -i crashkernel; then choose a size the guest can reserve",
            "/proc/cmdline",
        )
    elif loaded is False:
        yield Finding("kdump", INFO, "kdump is not in use: no crash kernel is loaded and no memory is reserved for one")
    else:
        yield Finding("kdump", INFO, "kdump state unknown: /sys/kernel/kexec_crash_loaded is missing")


def check_udev_kdump_reloads(picture: SetupPicture) -> Iterable[Finding]:
    """udev rules reloading kdump per memory event, on top of vmem-agent's one reload per change."""
    actions: dict[tuple[str, int], list[str]] = {}
    first: dict[tuple[str, int], RuleEffect] = {}
    for effect in _effects(picture, EFFECT_KDUMP_RELOAD):
        key = (effect.path, effect.line)
        actions.setdefault(key, []).append(effect.action)
        first.setdefault(key, effect)
    redundant = picture.state.crash_hotplug is True
    for key, effect in first.items():
        events = "/".join(actions[key])
        if redundant:
            consequence = "redundant: the kernel updates the crash kernel itself (crash_hotplug=1)"
        else:
            consequence = ("on top of vmem-agent's one reload per change, a resize then reloads kdump again, up to "
                           "once per block, and each reload is a window in which a crash gives no dump")
        yield Finding(
            "udev-reloads-kdump", INFO if redundant else WARNING,
            f"{effect.where} reloads kdump on every memory block {events} event ({effect.how}): {consequence}",
            _rule_fix(effect.path, effect.line),
            effect.where,
        )


def check_daemon(picture: SetupPicture) -> Iterable[Finding]:
    """Whether the daemon runs and holds a target; nothing onlining hot-added memory at all."""
    daemon = picture.daemon
    if daemon is None:
        return
    if daemon.running and not daemon.accessible:
        yield Finding("daemon", INFO, "a vmem-agent daemon runs, but its control socket is not open to this user: "
                                      "run vmem-agent doctor as root to see its target")
        return
    if daemon.running:
        mode = "no target: it onlines every hot-added block" if daemon.target_bytes is None else (
            f"it holds online memory at {format_size(daemon.target_bytes)}")
        how = ("through the kernel's auto-online, which it set to the same zone rule and restores when it stops"
               if daemon.onlining == "kernel" else "writing each block itself")
        yield Finding("daemon", INFO, f"the vmem-agent daemon runs (pid {daemon.pid}): {mode}, {how}")
        return
    enable = "systemctl enable --now vmem-agent"
    if daemon.stored_target_bytes is not None:
        yield Finding(
            "daemon", WARNING,
            f"a target of {format_size(daemon.stored_target_bytes)} is stored (vmem-agent resize) but no vmem-agent "
            "daemon runs to hold it: hot-added memory is not onlined up to it, nor kept offline beyond it",
            enable,
        )
    elif not onliners(picture) and picture.architecture not in MANUAL_ONLINING_ARCHITECTURES:
        yield Finding(
            "daemon", WARNING,
            "nothing onlines hot-added memory (no vmem-agent daemon, no kernel auto-online, no udev rule): "
            "memory the host adds stays offline until someone runs vmem-agent online",
            enable,
        )


def check_unreadable_rules(picture: SetupPicture) -> Iterable[Finding]:
    for path, reason in picture.unreadable_rules:
        yield Finding("udev-rules-unreadable", WARNING,
                      f"{path} could not be read ({reason}): its rules were not checked",
                      "run vmem-agent doctor as root", path)


def check_reading(picture: SetupPicture) -> Iterable[Finding]:
    """What the snapshot could not read (a missing valid_zones, /proc/iomem without addresses)."""
    for warning in picture.state.warnings:
        yield Finding("incomplete-reading", INFO, f"some facts could not be read: {warning}")


CHECKS: tuple[Check, ...] = (
    check_kernel_auto_online,
    check_udev_onliners,
    check_onliner_conflict,
    check_online_policy,
    check_movable_ratio_setting,
    check_movable_balance,
    check_memmap_on_memory,
    check_normal_hotplugged,
    check_partly_offline_dimms,
    check_unknown_origin,
    check_kdump,
    check_udev_kdump_reloads,
    check_daemon,
    check_unreadable_rules,
    check_reading,
)


def diagnose(picture: SetupPicture, checks: Iterable[Check] = CHECKS) -> tuple[Finding, ...]:
    """Every finding of every check, errors first, then warnings, then information (stable)."""
    findings = [finding for check in checks for finding in check(picture)]
    return tuple(sorted(findings, key=lambda finding: SEVERITIES.index(finding.severity)))


def count_by_severity(findings: Iterable[Finding]) -> dict[str, int]:
    counts = {severity: 0 for severity in SEVERITIES}
    for finding in findings:
        counts[finding.severity] += 1
    return counts


def exit_code(findings: Iterable[Finding]) -> int:
    """0 when nothing is wrong (information only), else the code of the worst severity."""
    counts = count_by_severity(findings)
    if counts[ERROR]:
        return EXIT_DOCTOR_ERRORS
    return EXIT_DOCTOR_WARNINGS if counts[WARNING] else EXIT_OK
