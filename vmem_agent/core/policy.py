"""Which memory blocks to online (into which zone) or offline, in order, and why. Pure: no I/O.

The executor writes `Action.write` to each block's `state` in plan order, and re-plans with
the failed blocks in `exclude` when a write fails. Every decision carries a `Reason` (a
stable code and the facts behind it) and every remark a `Note`; cli.report words them.

Growing: lowest offline blocks first. In zone mode `auto` the zone follows the kernel's own
`auto-movable` rule (core.zonerule, the same code the test suite's fake kernel runs): a
block goes Movable while `movable + new <= ratio% * boot kernel memory`, system-wide and,
when NUMA aware, per node; a DIMM (static memory group) is all Movable or all kernel; a
virtio-mem device (dynamic group) is decided block by block, its own kernel memory raising
its own allowance while other devices first reserve what their Movable memory needs. Too
much Movable memory starves the kernel zones (page tables, slab) and ends in OOM with
memory "free". A zone that valid_zones does not list is never requested: the other
allowed zone is used, except that `auto` never exceeds the ratio for it (the block is
skipped, with a note). Blocks with unknown valid_zones get a plain `online`.

Modes `movable` and `normal` force the zone where valid_zones allows it; the ratio is not
applied for `movable` (the user asked), and the plan notes when it is exceeded.

When the kernel's own online_policy is `auto-movable` and the mode is `auto`, the agent
defers to the kernel: it writes plain `online`. The plan predicts the zones: the first
block's from its valid_zones (an offline block lists the kernel's choice at that moment
first), the later ones with the rule, using the kernel's auto_movable_ratio and
auto_movable_numa_aware.

Shrinking returns memory in the units a host can take back. By default (shrink unit
`dimm`) only ACPI DIMMs are offlined, a whole DIMM at a time: DIMMs that can be emptied,
Movable ones first, then the ones with the most already offline, then the highest. When
the target needs only part of a DIMM, one DIMM is left partly offline (and a note says
so), never a second one. virtio-mem memory is not offlined: offlining it from the guest
returns nothing to the host and stalls the driver's next grow; the host lowers the
device's requested size instead, and a note says so. Shrink unit `block` is the older
behaviour: any DIMM or virtio-mem block, Movable first, highest first. Never offlined
automatically: boot memory, memory of unknown origin, dax/kmem memory, blocks whose
valid_zones is `none`. Offlining stops at the target, at `min_online_bytes`, and where
MemAvailable minus the memory offlined would drop below the reserve (default max(256M, 5%
of MemTotal)). Without memory figures nothing is offlined: guessing could push the guest
into OOM.

All counting is in blocks of `state.block_size` (the zone rule in 4 KiB pages); the work
is O(number of blocks).
"""

from __future__ import annotations

import dataclasses
import operator
from collections import Counter
from dataclasses import dataclass
from itertools import groupby
from typing import Iterable, NamedTuple

from ..errors import UsageError
from . import zonerule
from .model import (
    GOING_OFFLINE,
    OFFLINE,
    ONLINE,
    ORIGIN_BOOT,
    ORIGIN_DIMM,
    ORIGIN_HOTPLUG,
    ORIGIN_KMEM,
    ORIGIN_VIRTIO_MEM,
    ZONE_MOVABLE,
    ZONE_NONE,
    ZONE_NORMAL,
    MemoryBlock,
    MemoryFigures,
    MemoryState,
    format_block_list,
)
from ..limits import DEFAULT_MOVABLE_RATIO, SHRINK_BY_BLOCK, SHRINK_BY_DIMM, SHRINK_UNITS, ZONE_MODES
from .sizes import format_size
MIN_RESERVE_BYTES = 256 << 20
RESERVE_PERCENT_OF_TOTAL = 5
KERNEL_AUTO_MOVABLE = "auto-movable"

KIND_ONLINE = "online"
KIND_OFFLINE = "offline"
WRITE_ONLINE = "online"  # the kernel's online policy picks the zone
WRITE_ONLINE_MOVABLE = "online_movable"
WRITE_ONLINE_KERNEL = "online_kernel"  # the block's default kernel zone (Normal, or DMA32 low down)
WRITE_OFFLINE = "offline"
_WRITE_FOR_ZONE = {ZONE_MOVABLE: WRITE_ONLINE_MOVABLE, ZONE_NORMAL: WRITE_ONLINE_KERNEL, None: WRITE_ONLINE}
SYSTEM = zonerule.SYSTEM

# Reason codes of online actions.
R_FITS = "movable-fits"  # facts: ratio, kernel_early, [group_kernel, reserved]
R_DIMM_FITS = "dimm-movable-fits"  # facts: group, size, ratio, kernel_early
R_EXCEEDS = "normal-exceeds-ratio"  # facts: scope, ratio, kernel_early
R_DIMM_EXCEEDS = "dimm-normal-exceeds-ratio"  # facts: group, size, scope, ratio, kernel_early
R_DIMM_HAS_KERNEL = "dimm-normal-has-kernel"  # facts: group
R_RATIO_ZERO = "normal-ratio-zero"
R_NO_MOVABLE_ZONE = "normal-valid-zones"  # valid_zones does not allow Movable
R_ONLY_MOVABLE_FITS = "movable-valid-zones-fits"  # valid_zones allows no kernel zone, and it fits
R_KERNEL_CHOICE = "kernel-choice"  # facts: zone (the first valid_zones entry under auto-movable)
R_MODE_MOVABLE = "movable-zone-mode"
R_MODE_NORMAL = "normal-zone-mode"
R_MODE_NO_KERNEL = "movable-valid-zones"  # zone mode normal, but valid_zones allows only Movable
R_ZONES_UNKNOWN = "zones-unknown"
# Reason codes of offline actions.
R_DIMM_WHOLE = "dimm-whole"  # facts: group, size: offlined to empty the DIMM
R_DIMM_PART = "dimm-part"  # facts: group, size, left_online: the target needs only part of it
R_MOVABLE = "hotplugged-movable"
R_KERNEL_ZONE = "hotplugged-kernel-zone"
R_UNKNOWN_ZONE = "hotplugged-unknown-zone"
R_VIRTIO_MEM = "virtio-mem-block"  # facts: group: gives the host nothing back
R_FORCED_BOOT = "forced-boot"
R_FORCED_UNKNOWN = "forced-unknown-origin"
R_KMEM = "kmem-block"

# Note codes (blocks: the blocks a note is about).
N_SKIP_GOING_OFFLINE = "skip-going-offline"
N_SKIP_EXCLUDED = "skip-excluded"
N_SKIP_NO_ZONE = "skip-no-zone"  # facts: zones
N_SKIP_ONLY_MOVABLE_EXCEEDS = "skip-only-movable-exceeds"  # facts: scope, ratio, kernel_early
N_DEFERRING = "deferring-to-kernel"
N_MOVABLE_MODE_EXCEEDS = "movable-mode-exceeds-ratio"  # facts: movable, ratio, kernel_early
N_GROW_SHORT = "grow-short"  # facts: onlinable, asked, short
N_ALREADY_ONLINE = "already-online"
N_ONLINE_OTHER_ZONE = "online-in-other-zone"  # facts: zone, wanted
N_ALREADY_OFFLINE = "already-offline"
N_BEING_OFFLINED = "being-offlined"
N_ZONE_NONE = "zone-none"
N_BOOT_NEEDS_FORCE = "boot-needs-force"
N_UNKNOWN_NEEDS_FORCE = "unknown-origin-needs-force"
N_VIRTIO_MEM_NAMED = "virtio-mem-offline-gives-nothing"  # facts: group
N_OFFLINE_LIMITED = "offline-limited"  # facts: limit, why (+ its facts)
WHY_NO_FIGURES = "no-memory-figures"  # offline-limited: MemTotal/MemAvailable unknown
N_SHRINK_SHORT = "shrink-short"  # facts: offlinable, unit
N_VIRTIO_MEM_HOST = "virtio-mem-lower-requested-size"  # facts: group, online, movable
N_UNTOUCHED_ORIGIN = "origin-never-offlined"  # facts: origin
N_DIMM_LEFT_PARTLY = "dimm-left-partly-offline"  # facts: group, size, offline
N_DIMM_SECOND_PARTIAL = "dimm-second-partial-refused"  # facts: group (the DIMM already partly offline)


_FITS = object()  # _exceeded_alone(): no scope fails
_BOTH = (True, True)  # _allowed_zones(): Movable and a kernel zone
_SCOPED_REASONS = frozenset({R_FITS, R_DIMM_FITS, R_ONLY_MOVABLE_FITS, R_EXCEEDS, R_DIMM_EXCEEDS})


class Reason(NamedTuple):
    """Why an action was chosen: a stable code and the facts behind it, as (name, value) pairs."""

    code: str
    facts: tuple = ()

    def facts_dict(self) -> dict:
        return dict(self.facts)


class Note(NamedTuple):
    """A remark on a plan or run: a stable code, the blocks it is about, and its facts."""

    code: str
    blocks: tuple[int, ...] = ()
    facts: tuple = ()

    def facts_dict(self) -> dict:
        return dict(self.facts)

    def to_json(self) -> dict:
        return {"code": self.code, "blocks": list(self.blocks), **_json_facts(self.facts)}


def _json_facts(facts: tuple) -> dict:
    return {name: value for name, value in facts}


@dataclass(frozen=True, slots=True)
class PolicyConfig:
    """How the agent chooses zones and how far, and in which units, it may shrink."""

    zone_mode: str = "auto"
    movable_ratio: int = DEFAULT_MOVABLE_RATIO  # percent of boot kernel memory allowed as Movable
    numa_aware: bool = True
    reserve_bytes: int | None = None  # None: max(256M, 5% of MemTotal)
    min_online_bytes: int = 0
    shrink_unit: str = SHRINK_BY_DIMM

    def __post_init__(self) -> None:
        if self.zone_mode not in ZONE_MODES:
            raise UsageError(f"invalid zone mode {self.zone_mode!r}: expected one of {', '.join(ZONE_MODES)}")
        if self.movable_ratio < 0:
            raise UsageError(f"invalid movable ratio {self.movable_ratio}%: must be 0 or more")
        if self.reserve_bytes is not None and self.reserve_bytes < 0:
            raise UsageError(f"invalid reserve {self.reserve_bytes}: must be 0 or more")
        if self.min_online_bytes < 0:
            raise UsageError(f"invalid minimum online memory {self.min_online_bytes}: must be 0 or more")
        if self.shrink_unit not in SHRINK_UNITS:
            raise UsageError(f"invalid shrink unit {self.shrink_unit!r}: expected one of {', '.join(SHRINK_UNITS)}")

    def reserve_for(self, total_bytes: int) -> int:
        """Memory that must stay available after offlining."""
        if self.reserve_bytes is not None:
            return self.reserve_bytes
        return max(MIN_RESERVE_BYTES, total_bytes * RESERVE_PERCENT_OF_TOTAL // 100)


class Action(NamedTuple):
    """One write: `write` goes to the `state` file of block `index` ([start, end] inclusive).

    `zone`: for online, the zone requested (or predicted, when the kernel decides); for
    offline, the zone the block is in now, which a rollback returns it to. `unit`: the
    DIMM (memory group) an offline belongs to when the plan empties DIMMs as a whole.
    """

    kind: str  # KIND_ONLINE or KIND_OFFLINE
    index: int
    start: int
    end: int
    zone: str | None
    write: str
    reason: Reason
    unit: str | None = None


@dataclass(frozen=True, slots=True)
class Plan:
    """The ordered actions that take online memory from `current_bytes` to `planned_bytes`."""

    target_bytes: int
    current_bytes: int
    planned_bytes: int
    actions: tuple[Action, ...]
    shortfall_bytes: int  # how far planned_bytes stays from target_bytes
    notes: tuple[Note, ...]  # why the target cannot be fully reached, and what the plan assumes


def plan_target(
    state: MemoryState,
    target_bytes: int,
    config: PolicyConfig = PolicyConfig(),
    figures: MemoryFigures | None = None,
    exclude: frozenset[int] = frozenset(),
) -> Plan:
    """Plan the online and offline writes that bring online memory to `target_bytes`."""
    block_size = state.block_size
    if target_bytes < 0 or target_bytes % block_size:
        raise ValueError(f"target {target_bytes} is not a non-negative multiple of the block size {block_size}")
    current_blocks = _count_online(state.blocks)
    target_blocks = target_bytes // block_size
    if target_blocks > current_blocks:
        return _grow_plan(state, state.blocks, target_blocks - current_blocks, current_blocks, config, exclude)
    if target_blocks < current_blocks:
        return _shrink_plan(state, current_blocks - target_blocks, current_blocks, config, figures, exclude)
    return _plan(state, current_blocks, target_blocks, [], [])


def plan_online(
    state: MemoryState,
    blocks_or_bytes: Iterable[int] | int,
    config: PolicyConfig = PolicyConfig(),
    exclude: frozenset[int] = frozenset(),
) -> Plan:
    """Plan `online BLOCKS|SIZE`: the named blocks (ascending), or this many more bytes.

    Zones follow the same rules as growing to a target, groups and ratio included. A named
    block already online counts as done only when it is in a zone the zone mode allows.
    """
    current_blocks = _count_online(state.blocks)
    if isinstance(blocks_or_bytes, int):
        need = _whole_blocks(blocks_or_bytes, state.block_size)
        return _grow_plan(state, state.blocks, need, current_blocks, config, exclude)
    named = _named_blocks(state, blocks_or_bytes)
    notes: list[Note] = []
    already, other_zone = [], {}
    for block in named:
        if block.state != ONLINE:
            continue
        zone = block.zone
        if _zone_satisfies(zone, config.zone_mode):
            already.append(block.index)
        else:
            other_zone.setdefault(zone, []).append(block.index)
    if already:
        notes.append(Note(N_ALREADY_ONLINE, tuple(already)))
    for zone, indexes in other_zone.items():
        notes.append(Note(N_ONLINE_OTHER_ZONE, tuple(indexes), (("zone", zone), ("wanted", config.zone_mode))))
    candidates = [block for block in named if block.state != ONLINE]  # going-offline ones are noted, not counted
    need = sum(1 for block in candidates if block.state == OFFLINE)
    plan = _grow_plan(state, candidates, need, current_blocks, config, exclude, notes)
    unmet = sum(len(indexes) for indexes in other_zone.values()) * state.block_size
    if unmet:  # online, but not in the zone asked for: the request is not met, though nothing is to be written
        plan = dataclasses.replace(plan, shortfall_bytes=plan.shortfall_bytes + unmet)
    return plan


def _zone_satisfies(zone: str | None, mode: str) -> bool:
    """Whether an online block's zone is what zone mode `mode` asks for (auto: any)."""
    if mode == "movable":
        return zone == ZONE_MOVABLE
    if mode == "normal":
        return zone != ZONE_MOVABLE
    return True


def plan_offline(
    state: MemoryState,
    blocks_or_bytes: Iterable[int] | int,
    config: PolicyConfig = PolicyConfig(),
    figures: MemoryFigures | None = None,
    exclude: frozenset[int] = frozenset(),
    force: bool = False,
) -> Plan:
    """Plan `offline BLOCKS|SIZE`: the named blocks (highest first), or this many fewer bytes.

    A SIZE picks blocks as shrinking to a target does. Named blocks must be online and not
    valid_zones `none`. `force` lifts the floor, the reserve and the need for memory
    figures, and lets named boot blocks and blocks of unknown origin be offlined; it never
    picks them by itself.
    """
    current_blocks = _count_online(state.blocks)
    if isinstance(blocks_or_bytes, int):
        need = _whole_blocks(blocks_or_bytes, state.block_size)
        if need > current_blocks:
            raise UsageError(
                f"cannot offline {format_size(blocks_or_bytes)}: only {format_size(current_blocks * state.block_size)} is online"
            )
        return _shrink_plan(state, need, current_blocks, config, figures, exclude, force)
    named = sorted(_named_blocks(state, blocks_or_bytes), key=lambda block: block.index, reverse=True)
    skipped: dict[str, list[int]] = {}
    candidates = []
    for block in named:
        refusal = _offline_refusal(block, exclude, force)
        if refusal is None:
            candidates.append(block)
        else:
            skipped.setdefault(refusal, []).append(block.index)
    target_blocks = current_blocks - sum(1 for block in named if block.online_memory)
    notes = [Note(code, tuple(sorted(indexes))) for code, indexes in skipped.items()]
    limit = _limit_offline(len(candidates), state, current_blocks, config, figures, force, notes)
    actions = _offline_actions(candidates[:limit])
    by_device: dict[str, list[int]] = {}
    for block in candidates[:limit]:
        if block.origin == ORIGIN_VIRTIO_MEM and block.group is not None:
            by_device.setdefault(block.group, []).append(block.index)
    notes.extend(Note(N_VIRTIO_MEM_NAMED, tuple(sorted(indexes)), (("group", group),)) for group, indexes in by_device.items())
    return _plan(state, current_blocks, target_blocks, actions, notes)


# -- growing ---------------------------------------------------------------------------------


def _grow_plan(
    state: MemoryState,
    candidates: Iterable[MemoryBlock],
    need: int,
    current_blocks: int,
    config: PolicyConfig,
    exclude: frozenset[int],
    notes: list[Note] | None = None,
) -> Plan:
    notes = list(notes or ())
    chooser = _ZoneChooser(state, config)
    actions = chooser.online_actions(candidates, need, exclude)
    notes.extend(chooser.notes(bool(actions)))
    target_blocks = current_blocks + need
    planned = current_blocks + len(actions)
    if planned < target_blocks:
        size = state.block_size
        notes.append(Note(N_GROW_SHORT, (), (
            ("onlinable", len(actions) * size), ("asked", need * size), ("short", (target_blocks - planned) * size))))
    return _plan(state, current_blocks, target_blocks, actions, notes)


class _ZoneChooser:
    """Picks the zone of each block to online and keeps the kernel's zone counters up to date.

    Decisions are Reasons; one Reason object is shared by all the blocks it applies to (plan
    tables merge them), built once per plan.
    """

    def __init__(self, state: MemoryState, config: PolicyConfig):
        params = state.params
        self.block_size = state.block_size
        self.pages = state.block_size // zonerule.PAGE
        self.mode = config.zone_mode
        self.defer_to_kernel = self.mode == "auto" and params.online_policy == KERNEL_AUTO_MOVABLE
        ratio, numa_aware = config.movable_ratio, config.numa_aware
        if self.defer_to_kernel:
            ratio = params.auto_movable_ratio if params.auto_movable_ratio is not None else ratio
            numa_aware = params.auto_movable_numa_aware if params.auto_movable_numa_aware is not None else numa_aware
        self.counters = _counters(state, ratio, numa_aware)
        self.reasons: dict[tuple, Reason] = {}
        self.allowed: dict[tuple[str, ...], tuple[bool, bool]] = {}
        self.skipped: dict[tuple, list[int]] = {}
        self.movable_planned = 0
        self.predicted_by_kernel = not self.defer_to_kernel  # the kernel predicts the first block itself

    def online_actions(self, candidates: Iterable[MemoryBlock], need: int, exclude: frozenset[int]) -> list[Action]:
        """Up to `need` online actions over `candidates` in order, skipping (and noting) what cannot be onlined.

        Consecutive blocks of one group, node and valid_zones form a run that is decided as
        a whole: by the zone rule (zonerule.online_run) in mode auto when both zones are
        allowed, by valid_zones alone in the forced modes. Other blocks go one by one.
        """
        actions: list[Action] = []
        if need <= 0:
            return actions
        forced = self.mode != "auto"
        taken = 0
        for (block_state, zones, _node, _group), blocks in groupby(candidates, key=_RUN_KEY):
            if taken >= need:
                break
            run = list(blocks)
            if block_state != OFFLINE:
                if block_state == GOING_OFFLINE:
                    for block in run:
                        self._skip(block, N_SKIP_GOING_OFFLINE)
                continue
            if exclude:
                for block in run:
                    if block.index in exclude:
                        self._skip(block, N_SKIP_EXCLUDED)
                run = [block for block in run if block.index not in exclude]
            run = run[:need - taken]
            if run and zones is not None and not self.predicted_by_kernel:
                taken += self._add_one(run.pop(0), zones, actions)  # the kernel predicts the first block itself
            if zones is not None and (forced or self._allowed_zones(zones) == _BOTH):
                taken += self._add_run(run, actions)
                continue
            for block in run:
                taken += self._add_one(block, zones, actions)
        return actions

    def _add_one(self, block: MemoryBlock, zones: tuple[str, ...] | None, actions: list[Action]) -> int:
        """One block on its own (zones unknown, or valid_zones constraining the rule): 1 if it is onlined."""
        if zones is None:
            zone, reason = None, self._reason(R_ZONES_UNKNOWN)
        elif self.mode == "auto":
            zone, reason = self._auto_zone(block, zones)
        else:
            zone, reason = self._forced_zone(zones)
            if zone == ZONE_MOVABLE:
                self.movable_planned += 1
        if zone is None and zones is not None:
            self._skip(block, *reason)
            return 0
        write = WRITE_ONLINE if self.defer_to_kernel else _WRITE_FOR_ZONE[zone]
        actions.append(Action(KIND_ONLINE, block.index, block.start, block.end, zone, write, reason))
        return 1

    def _add_run(self, run: list[MemoryBlock], actions: list[Action]) -> int:
        """Online actions for a run of blocks of one group and node with the same valid_zones; how many."""
        if not run:
            return 0
        first = run[0]
        if self.mode == "auto":
            segments = [(self._zone_of(decision, first.group), units) for decision, units in
                        self.counters.online_run(first.node, first.group, len(run), self.pages)]
        else:
            zone, reason = self._forced_zone(first.zones)
            if zone is None:
                for block in run:
                    self._skip(block, *reason)
                return 0
            if zone == ZONE_MOVABLE:
                self.movable_planned += len(run)
            segments = [((zone, reason), len(run))]
        new_action = tuple.__new__  # Action(...) without NamedTuple's keyword handling: the hot path
        last_byte = self.block_size - 1
        defer = self.defer_to_kernel
        position = 0
        for (zone, reason), units in segments:
            write = WRITE_ONLINE if defer else _WRITE_FOR_ZONE[zone]
            actions.extend(
                new_action(Action, (KIND_ONLINE, block.index, block.start, block.start + last_byte, zone, write, reason, None))
                for block in run[position:position + units]
            )
            position += units
        return len(run)

    def _skip(self, block: MemoryBlock, code: str, facts: tuple = ()) -> None:
        self.skipped.setdefault((code, facts), []).append(block.index)

    def _allowed_zones(self, zones: tuple[str, ...]) -> tuple[bool, bool]:
        """(Movable allowed, a kernel zone allowed) for an offline block's valid_zones."""
        allowed = self.allowed.get(zones)
        if allowed is None:
            allowed = (ZONE_MOVABLE in zones, any(zone not in (ZONE_MOVABLE, ZONE_NONE) for zone in zones))
            self.allowed[zones] = allowed
        return allowed

    def _forced_zone(self, zones: tuple[str, ...]):
        """The zone modes movable and normal: the zone asked for where valid_zones allows it, else the other one."""
        movable_ok, kernel_ok = self._allowed_zones(zones)
        if self.mode == "movable":
            if movable_ok:
                return ZONE_MOVABLE, self._reason(R_MODE_MOVABLE)
            if kernel_ok:
                return ZONE_NORMAL, self._reason(R_NO_MOVABLE_ZONE)
        else:
            if kernel_ok:
                return ZONE_NORMAL, self._reason(R_MODE_NORMAL)
            if movable_ok:
                return ZONE_MOVABLE, self._reason(R_MODE_NO_KERNEL)
        return None, (N_SKIP_NO_ZONE, (("zones", zones),))

    def _auto_zone(self, block: MemoryBlock, zones: tuple[str, ...]):
        """One block on its own: the kernel's rule, then valid_zones; accounts the block in the counters."""
        movable_ok, kernel_ok = self._allowed_zones(zones)
        counters, node, group, pages = self.counters, block.node, block.group, self.pages
        if not self.predicted_by_kernel:
            self.predicted_by_kernel = True
            zone, reason = self._kernel_choice(zones)
        else:
            zone, reason = self._zone_of(counters.decide(node, group, pages), group)
        if zone == ZONE_MOVABLE and not movable_ok:
            if not kernel_ok:
                return None, (N_SKIP_NO_ZONE, (("zones", zones),))
            zone, reason = ZONE_NORMAL, self._reason(R_NO_MOVABLE_ZONE)
        elif zone == ZONE_NORMAL and not kernel_ok:
            if not movable_ok:
                return None, (N_SKIP_NO_ZONE, (("zones", zones),))
            scope = self._exceeded_alone(node, group)
            if scope is not _FITS:
                return None, (N_SKIP_ONLY_MOVABLE_EXCEEDS, self._scope_facts(scope))
            zone, reason = ZONE_MOVABLE, self._reason(R_ONLY_MOVABLE_FITS, (), SYSTEM)
        counters.account(node, group, zone == ZONE_MOVABLE, False, pages)
        return zone, reason

    def _exceeded_alone(self, node, group):
        """_FITS if this one block may go Movable under the ratio, else the scope whose check fails."""
        counters, pages = self.counters, self.pages
        if not counters.can_online_movable(SYSTEM, group, pages):
            return SYSTEM
        if counters.numa_aware and not counters.can_online_movable(node, group, pages):
            return node
        return _FITS

    def _zone_of(self, decision: zonerule.Decision, group) -> tuple[str, Reason]:
        """The zone of one of the kernel's decisions (auto_movable_zone_for_pfn()), with its reason."""
        counts = self.counters.groups.get(group) if group is not None else None
        static = counts is not None and not counts.dynamic
        if decision.movable:
            if static:
                return ZONE_MOVABLE, self._reason(R_DIMM_FITS, (("group", group), ("size", decision.pages * zonerule.PAGE)), SYSTEM)
            if counts is not None:
                return ZONE_MOVABLE, self._reason(R_FITS, (("group", group),), SYSTEM)
            return ZONE_MOVABLE, self._reason(R_FITS, (), SYSTEM)
        if decision.code == zonerule.GROUP_HAS_KERNEL:
            return ZONE_NORMAL, self._reason(R_DIMM_HAS_KERNEL, (("group", group),))
        if decision.code == zonerule.RATIO_ZERO:
            return ZONE_NORMAL, self._reason(R_RATIO_ZERO)
        if static:
            facts = (("group", group), ("size", decision.pages * zonerule.PAGE))
            return ZONE_NORMAL, self._reason(R_DIMM_EXCEEDS, facts, decision.scope)
        return ZONE_NORMAL, self._reason(R_EXCEEDS, (), decision.scope)

    def _kernel_choice(self, zones: tuple[str, ...]) -> tuple[str, Reason]:
        """Under the kernel's auto-movable policy, an offline block's first valid_zones entry is its choice now."""
        zone = ZONE_MOVABLE if zones[0] == ZONE_MOVABLE else ZONE_NORMAL
        return zone, self._reason(R_KERNEL_CHOICE, (("zone", zones[0]),))

    def _reason(self, code: str, facts: tuple = (), scope=None) -> Reason:
        """The Reason for a decision, built once per plan and shared by the blocks it applies to.

        For ratio decisions, `scope` (SYSTEM or a node) adds the ratio and the early kernel
        memory it was checked against.
        """
        key = (code, facts, scope)
        reason = self.reasons.get(key)
        if reason is None:
            if code in _SCOPED_REASONS:
                facts = facts + self._scope_facts(scope)
            reason = self.reasons[key] = Reason(code, facts)
        return reason

    def _scope_facts(self, scope) -> tuple:
        counters = self.counters
        where = (("scope", "system"),) if scope == SYSTEM else (("scope", "node"), ("node", scope))
        return where + (("ratio", counters.ratio), ("kernel_early", counters.early_kernel_pages(scope) * zonerule.PAGE))

    def notes(self, planned_any: bool) -> list[Note]:
        """Blocks skipped and why; how the zones will really be chosen; an exceeded ratio in mode movable."""
        notes = [Note(code, tuple(indexes), facts) for (code, facts), indexes in self.skipped.items()]
        if self.defer_to_kernel and planned_any:
            notes.append(Note(N_DEFERRING))
        counters = self.counters
        if self.mode == "movable" and self.movable_planned:
            kernel_early = counters.early_kernel_pages(SYSTEM)
            movable = sum(counters.movable.values()) + self.movable_planned * self.pages
            if movable * 100 > counters.ratio * kernel_early:
                notes.append(Note(N_MOVABLE_MODE_EXCEEDS, (), (
                    ("movable", movable * zonerule.PAGE), ("ratio", counters.ratio),
                    ("kernel_early", kernel_early * zonerule.PAGE))))
        return notes


_BLOCK_COUNT_FIELDS = operator.itemgetter(3, 4, 5, 8, 9)  # MemoryBlock: state, zones, node, origin, group
_BLOCK_STATE = operator.itemgetter(3)
_RUN_KEY = operator.itemgetter(3, 4, 5, 9)  # MemoryBlock: state, zones, node, group


def _counters(state: MemoryState, ratio: int, numa_aware: bool) -> zonerule.ZoneCounters:
    """The kernel's zone statistics for this snapshot: online memory per zone kind, and the memory groups.

    Boot memory online in a kernel zone is the early kernel memory (`none` counts as kernel);
    a DIMM or kmem device is a static group, a virtio-mem device a dynamic one. Blocks are
    counted by kind first (in C), so that a snapshot costs one pass, not a call per block.
    """
    pages = state.block_size // zonerule.PAGE
    counters = zonerule.ZoneCounters(ratio, numa_aware)
    kinds = Counter(map(_BLOCK_COUNT_FIELDS, state.blocks))
    group_sizes: dict[str, list] = {}
    for (block_state, zones, node, origin, group), count in kinds.items():
        if group is not None:
            entry = group_sizes.setdefault(group, [origin, node, 0])
            entry[2] += count
    for group, (origin, node, count) in group_sizes.items():
        counters.add_group(group, origin == ORIGIN_VIRTIO_MEM, node, count * pages)
    for (block_state, zones, node, origin, group), count in kinds.items():
        if block_state != ONLINE and block_state != GOING_OFFLINE:
            continue
        movable = zones is not None and zones[0] == ZONE_MOVABLE
        counters.account(node, group, movable, not movable and origin == ORIGIN_BOOT, count * pages)
    return counters


# -- shrinking --------------------------------------------------------------------------------


class _Dimm:
    """A DIMM's blocks as a shrink sees them."""

    __slots__ = ("group", "online", "offline", "eligible", "movable")

    def __init__(self, group: str):
        self.group = group
        self.online: list[MemoryBlock] = []  # ascending
        self.offline = 0
        self.eligible = True  # every online block can be offlined in this plan
        self.movable = True  # every online block is in ZONE_MOVABLE

    @property
    def partly_offline(self) -> bool:
        return bool(self.online) and self.offline > 0


def _shrink_plan(
    state: MemoryState,
    need: int,
    current_blocks: int,
    config: PolicyConfig,
    figures: MemoryFigures | None,
    exclude: frozenset[int],
    force: bool = False,
) -> Plan:
    notes: list[Note] = []
    limit = _limit_offline(need, state, current_blocks, config, figures, force, notes)
    if config.shrink_unit == SHRINK_BY_BLOCK:
        actions = _block_shrink(state, limit, exclude)
    else:
        actions = _dimm_shrink(state, limit, exclude, notes)
    if len(actions) < need:
        notes.extend(_untouched_notes(state, config, actions, len(actions) < limit))
    return _plan(state, current_blocks, current_blocks - need, actions, notes)


def _dimm_shrink(state: MemoryState, want: int, exclude: frozenset[int], notes: list[Note]) -> list[Action]:
    """Whole DIMMs, in the order a host gets memory back soonest; at most one left partly offline."""
    if want <= 0:
        return []
    dimms: dict[str, _Dimm] = {}
    for block in state.blocks:
        if block.origin != ORIGIN_DIMM or block.group is None:
            continue
        dimm = dimms.get(block.group)
        if dimm is None:
            dimm = dimms[block.group] = _Dimm(block.group)
        if block.state == OFFLINE:
            dimm.offline += 1
            continue
        if block.state != ONLINE or block.index in exclude or (block.zones is not None and block.zones[0] == ZONE_NONE):
            dimm.eligible = False
        if block.state == ONLINE:
            dimm.online.append(block)
            dimm.movable = dimm.movable and block.zones is not None and block.zones[0] == ZONE_MOVABLE
    candidates = [dimm for dimm in dimms.values() if dimm.online and dimm.eligible]
    candidates.sort(key=lambda dimm: (not dimm.movable, -dimm.offline, -dimm.online[-1].index))
    size = state.block_size
    actions: list[Action] = []
    taken: set[str] = set()
    remaining = want
    for dimm in candidates:
        if len(dimm.online) <= remaining:
            whole = Reason(R_DIMM_WHOLE, (("group", dimm.group), ("size", (len(dimm.online) + dimm.offline) * size)))
            actions.extend(_offline_actions(reversed(dimm.online), whole, dimm.group))
            taken.add(dimm.group)
            remaining -= len(dimm.online)
            if not remaining:
                return actions
    partly = [dimm for dimm in dimms.values() if dimm.partly_offline and dimm.group not in taken]
    if partly:
        usable = [dimm for dimm in candidates if dimm.partly_offline and dimm.group not in taken]
        if not usable:
            notes.append(Note(N_DIMM_SECOND_PARTIAL, (), (("group", partly[0].group),)))
            return actions
        chosen = usable[0]
    else:
        untaken = [dimm for dimm in candidates if dimm.group not in taken]
        if not untaken:
            return actions
        chosen = untaken[0]
    part = Reason(R_DIMM_PART, (("group", chosen.group), ("size", (len(chosen.online) + chosen.offline) * size),
                                ("left_online", (len(chosen.online) - remaining) * size)))
    actions.extend(_offline_actions(reversed(chosen.online[-remaining:]), part, chosen.group))
    notes.append(Note(N_DIMM_LEFT_PARTLY, tuple(sorted(b.index for b in chosen.online[-remaining:])), (
        ("group", chosen.group), ("size", (len(chosen.online) + chosen.offline) * size),
        ("offline", (chosen.offline + remaining) * size))))
    return actions


def _block_shrink(state: MemoryState, want: int, exclude: frozenset[int]) -> list[Action]:
    """Block by block: DIMM and virtio-mem blocks, Movable ones first, each highest first."""
    movable: list[MemoryBlock] = []
    kernel_zone: list[MemoryBlock] = []
    wanted = (ORIGIN_DIMM, ORIGIN_VIRTIO_MEM)
    for block in reversed(state.blocks):
        if len(movable) >= want:
            break
        if block.state != ONLINE or block.origin not in wanted or block.index in exclude:
            continue
        zones = block.zones
        zone = zones[0] if zones else None
        if zone == ZONE_MOVABLE:
            movable.append(block)
        elif zone != ZONE_NONE:
            kernel_zone.append(block)
    return _offline_actions((movable + kernel_zone)[:want])


def _untouched_notes(state: MemoryState, config: PolicyConfig, actions: list[Action], short: bool) -> list[Note]:
    """Why a shrink stops short: what is online but never offlined automatically, and what to do about it."""
    notes: list[Note] = []
    size = state.block_size
    if short:
        notes.append(Note(N_SHRINK_SHORT, (), (("offlinable", len(actions) * size), ("unit", config.shrink_unit))))
    planned = {action.index for action in actions}
    virtio: dict[str, list[int]] = {}  # group -> [online blocks, of them Movable]
    untouched: dict[str, list[int]] = {}
    for block in state.blocks:
        if block.state != ONLINE or block.index in planned:
            continue
        if block.origin == ORIGIN_VIRTIO_MEM and config.shrink_unit == SHRINK_BY_DIMM and block.group is not None:
            counts = virtio.setdefault(block.group, [0, 0])
            counts[0] += 1
            counts[1] += block.zone == ZONE_MOVABLE
        elif block.origin in (ORIGIN_HOTPLUG, ORIGIN_KMEM):
            untouched.setdefault(block.origin, []).append(block.index)
    for group, (online, movable) in virtio.items():
        notes.append(Note(N_VIRTIO_MEM_HOST, (), (("group", group), ("online", online * size), ("movable", movable * size))))
    for origin, indexes in untouched.items():
        notes.append(Note(N_UNTOUCHED_ORIGIN, tuple(indexes), (("origin", origin),)))
    return notes


def _floor_limit(state: MemoryState, current_blocks: int, config: PolicyConfig, figures: MemoryFigures | None):
    """How many blocks may go offline without crossing the floor or the reserve, and the facts that set that limit."""
    block_size = state.block_size
    if figures is None:
        return 0, (("why", WHY_NO_FIGURES),)
    floor_limit = max(0, (current_blocks * block_size - config.min_online_bytes) // block_size)
    reserve = config.reserve_for(figures.total_bytes)
    reserve_limit = max(0, (figures.available_bytes - reserve) // block_size)
    if floor_limit <= reserve_limit:
        return floor_limit, (("why", "min-online"), ("min_online", config.min_online_bytes))
    return reserve_limit, (("why", "reserve"), ("available", figures.available_bytes), ("reserve", reserve))


def _limit_offline(
    wanted: int,
    state: MemoryState,
    current_blocks: int,
    config: PolicyConfig,
    figures: MemoryFigures | None,
    force: bool,
    notes: list[Note],
) -> int:
    """`wanted` cut down to the floor and the reserve (unless forced), noting the cut."""
    if force:
        return wanted
    limit, facts = _floor_limit(state, current_blocks, config, figures)
    if limit >= wanted:
        return wanted
    notes.append(Note(N_OFFLINE_LIMITED, (), (("limit", limit * state.block_size),) + facts))
    return limit


def _offline_refusal(block: MemoryBlock, exclude: frozenset[int], force: bool) -> str | None:
    """Why a named block cannot be offlined (a note code), or None."""
    if block.state == OFFLINE:
        return N_ALREADY_OFFLINE
    if block.state != ONLINE:
        return N_BEING_OFFLINED
    if block.index in exclude:
        return N_SKIP_EXCLUDED
    if block.zones is not None and block.zones[0] == ZONE_NONE:
        return N_ZONE_NONE
    if block.origin == ORIGIN_BOOT and not force:
        return N_BOOT_NEEDS_FORCE
    if block.origin == ORIGIN_HOTPLUG and not force:
        return N_UNKNOWN_NEEDS_FORCE
    return None


_ORIGIN_REASONS = {
    ORIGIN_BOOT: Reason(R_FORCED_BOOT),
    ORIGIN_HOTPLUG: Reason(R_FORCED_UNKNOWN),
    ORIGIN_KMEM: Reason(R_KMEM),
}
_ZONE_REASONS = {ZONE_MOVABLE: Reason(R_MOVABLE), None: Reason(R_UNKNOWN_ZONE)}


def _offline_reason(block: MemoryBlock) -> Reason:
    """Why a block (picked block by block, or named) goes offline: what it is, and how likely that works."""
    reason = _ORIGIN_REASONS.get(block.origin)
    if reason is not None:
        return reason
    if block.origin == ORIGIN_VIRTIO_MEM:
        return Reason(R_VIRTIO_MEM, (("group", block.group),))
    zones = block.zones
    return _ZONE_REASONS.get(zones[0] if zones else None) or Reason(R_KERNEL_ZONE)


def _offline_actions(blocks: Iterable[MemoryBlock], reason: Reason | None = None, unit: str | None = None) -> list[Action]:
    """Offline actions in the given order; `reason` (else one per block) and the DIMM `unit` they empty."""
    new_action = tuple.__new__  # Action(...) without NamedTuple's keyword handling: shrinks build thousands
    reasons: dict = {}
    actions = []
    for block in blocks:
        zones = block.zones
        why = reason
        if why is None:
            key = (block.origin, block.group, zones)
            why = reasons.get(key)
            if why is None:
                why = reasons[key] = _offline_reason(block)
        start = block.start
        actions.append(new_action(Action, (KIND_OFFLINE, block.index, start, start + block.size - 1,
                                           zones[0] if block.state == ONLINE and zones else None, WRITE_OFFLINE, why, unit)))
    return actions


# -- shared -------------------------------------------------------------------------------------


def _plan(state: MemoryState, current_blocks: int, target_blocks: int, actions: list[Action], notes: list[Note]) -> Plan:
    block_size = state.block_size
    step = 1 if actions and actions[0].kind == KIND_ONLINE else -1  # a plan only grows or only shrinks
    planned_blocks = current_blocks + step * len(actions)
    return Plan(
        target_bytes=target_blocks * block_size,
        current_bytes=current_blocks * block_size,
        planned_bytes=planned_blocks * block_size,
        actions=tuple(actions),
        shortfall_bytes=abs(target_blocks - planned_blocks) * block_size,
        notes=tuple(notes),
    )


def _count_online(blocks: Iterable[MemoryBlock]) -> int:
    """Online memory in blocks; a going-offline block still counts (its offline may yet fail)."""
    states = Counter(map(_BLOCK_STATE, blocks))
    return states[ONLINE] + states[GOING_OFFLINE]


def _whole_blocks(size: int, block_size: int) -> int:
    if size < 0 or size % block_size:
        raise ValueError(f"size {size} is not a non-negative multiple of the block size {block_size}")
    return size // block_size


def _named_blocks(state: MemoryState, indexes: Iterable[int]) -> list[MemoryBlock]:
    """The blocks with these indexes, ascending and without duplicates; UsageError names unknown ones."""
    by_index = {block.index: block for block in state.blocks}
    wanted = sorted(set(indexes))
    unknown = [index for index in wanted if index not in by_index]
    if unknown:
        raise UsageError(f"no such memory block: {format_block_list(unknown)}")
    return [by_index[index] for index in wanted]

