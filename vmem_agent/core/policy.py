"""Which memory blocks to online (into which zone) or offline, in order, and why. Pure: no I/O.

The executor writes `Action.write` to each block's `state` in plan order, and re-plans with
the failed block in `exclude` when a write fails.

Growing: lowest offline blocks first. In zone mode `auto` the zone follows a ratio rule
modelled on the kernel's `auto-movable` online policy: a block goes Movable while

    movable_online + new <= movable_ratio% * kernel_early

where kernel_early is the online memory of boot blocks in kernel zones (anything but
Movable; `none` counts as kernel) and hot-plugged kernel memory never raises the allowance.
The check is system-wide and, when NUMA aware, per node; both must pass. Too much Movable
memory starves the kernel zones (page tables, slab) and ends in OOM with memory "free".
Memory groups, simplified from the kernel:
- a DIMM (origin `dimm`) is decided as a whole: kernel zone if any of it is online in a
  kernel zone; otherwise Movable only if all of its not-yet-online blocks fit the ratio
  (that size is booked at once, so later blocks cannot take the DIMM's share);
- a virtio-mem device (origin `virtio-mem`) is decided per block, but goes to the kernel
  zone once any of its blocks is online (or planned) in a kernel zone. The kernel applies
  this per virtio-mem unit; the whole device is the safe approximation here.
A zone that valid_zones does not list is never requested: the other allowed zone is used,
except that `auto` never exceeds the ratio for it (the block is skipped, with a note).
Blocks with unknown valid_zones get a plain `online`.

Modes `movable` and `normal` force the zone where valid_zones allows it; the ratio is not
applied for `movable` (the user asked), and the plan notes when it is exceeded.

When the kernel's own online_policy is `auto-movable` and the mode is `auto`, the agent
defers to the kernel: it writes plain `online`, because the kernel knows its memory groups
and zone counters exactly, and the plan only predicts the zone with the rule above (using
the kernel's auto_movable_ratio and auto_movable_numa_aware where it exposes them).

Shrinking: only online hot-plugged blocks that can be offlined (never boot memory, never
valid_zones `none`): Movable blocks first, highest index first, then hot-plugged kernel-zone
blocks, highest first (these often fail with EBUSY; the executor moves on). Offlining stops
at the target, at `min_online_bytes`, and where MemAvailable minus the memory offlined would
drop below the reserve (default max(256M, 5% of MemTotal)). Without memory figures nothing
is offlined: guessing could push the guest into OOM.

All counting is in blocks of `state.block_size`; the work is O(number of blocks).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, NamedTuple

from ..errors import UsageError
from .model import (
    OFFLINE,
    ONLINE,
    GOING_OFFLINE,
    ORIGIN_BOOT,
    ORIGIN_DIMM,
    ORIGIN_VIRTIO_MEM,
    ZONE_MOVABLE,
    ZONE_NONE,
    ZONE_NORMAL,
    MemoryBlock,
    MemoryFigures,
    MemoryState,
    format_block_list,
)
from ..limits import DEFAULT_MOVABLE_RATIO, ZONE_MODES
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

# Scopes of the ratio check, for reasons: _SYSTEM, or (_NODE, node id).
_SYSTEM = "system"
_NODE = "node"


@dataclass(frozen=True, slots=True)
class PolicyConfig:
    """How the agent chooses zones and how far it may shrink."""

    zone_mode: str = "auto"
    movable_ratio: int = DEFAULT_MOVABLE_RATIO  # percent of boot kernel memory allowed as Movable
    numa_aware: bool = True
    reserve_bytes: int | None = None  # None: max(256M, 5% of MemTotal)
    min_online_bytes: int = 0

    def __post_init__(self) -> None:
        if self.zone_mode not in ZONE_MODES:
            raise UsageError(f"invalid zone mode {self.zone_mode!r}: expected one of {', '.join(ZONE_MODES)}")
        if self.movable_ratio < 0:
            raise UsageError(f"invalid movable ratio {self.movable_ratio}%: must be 0 or more")
        if self.reserve_bytes is not None and self.reserve_bytes < 0:
            raise UsageError(f"invalid reserve {self.reserve_bytes}: must be 0 or more")
        if self.min_online_bytes < 0:
            raise UsageError(f"invalid minimum online memory {self.min_online_bytes}: must be 0 or more")

    def reserve_for(self, total_bytes: int) -> int:
        """Memory that must stay available after offlining."""
        if self.reserve_bytes is not None:
            return self.reserve_bytes
        return max(MIN_RESERVE_BYTES, total_bytes * RESERVE_PERCENT_OF_TOTAL // 100)


class Action(NamedTuple):
    """One write: `write` goes to the `state` file of block `index` ([start, end] inclusive)."""

    kind: str  # KIND_ONLINE or KIND_OFFLINE
    index: int
    start: int
    end: int
    zone: str | None  # zone requested (or predicted, when the kernel decides); None for offline
    write: str
    reason: str


@dataclass(frozen=True, slots=True)
class Plan:
    """The ordered actions that take online memory from `current_bytes` to `planned_bytes`."""

    target_bytes: int
    current_bytes: int
    planned_bytes: int
    actions: tuple[Action, ...]
    shortfall_bytes: int  # how far planned_bytes stays from target_bytes
    notes: tuple[str, ...]  # why the target cannot be fully reached, and what the plan assumes


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
        return _shrink_plan(state, current_blocks - target_blocks, current_blocks, config, figures, exclude, force=False)
    return _plan(state, current_blocks, target_blocks, [], [])


def plan_online(
    state: MemoryState,
    blocks_or_bytes: Iterable[int] | int,
    config: PolicyConfig = PolicyConfig(),
    exclude: frozenset[int] = frozenset(),
) -> Plan:
    """Plan `online BLOCKS|SIZE`: the named blocks (ascending), or this many more bytes.

    Zones follow the same rules as growing to a target, groups and ratio included.
    """
    current_blocks = _count_online(state.blocks)
    if isinstance(blocks_or_bytes, int):
        need = _whole_blocks(blocks_or_bytes, state.block_size)
        return _grow_plan(state, state.blocks, need, current_blocks, config, exclude)
    named = _named_blocks(state, blocks_or_bytes)
    notes: list[str] = []
    already = [block.index for block in named if block.state == ONLINE]
    if already:
        notes.append(f"{_blocks_label(already)}: already online")
    candidates = [block for block in named if block.state != ONLINE]
    return _grow_plan(state, candidates, len(candidates), current_blocks, config, exclude, notes)


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
    figures, and lets named boot blocks be offlined; it never picks boot memory by itself.
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
    target_blocks = current_blocks - sum(1 for block in named if block.state == ONLINE)
    notes = [f"{_blocks_label(indexes)}: {why}" for why, indexes in skipped.items()]
    limit = _limit_offline(len(candidates), state, current_blocks, config, figures, force, notes)
    actions = [_offline_action(block) for block in candidates[:limit]]
    return _plan(state, current_blocks, target_blocks, actions, notes)


# -- growing ---------------------------------------------------------------------------------


def _grow_plan(
    state: MemoryState,
    candidates: Iterable[MemoryBlock],
    need: int,
    current_blocks: int,
    config: PolicyConfig,
    exclude: frozenset[int],
    notes: list[str] | None = None,
) -> Plan:
    notes = list(notes or ())
    chooser = _ZoneChooser(state, config)
    actions = chooser.online_actions(candidates, need, exclude)
    notes.extend(chooser.notes(bool(actions)))
    target_blocks = current_blocks + need
    planned = current_blocks + len(actions)
    if planned < target_blocks:
        notes.append(
            f"only {format_size(len(actions) * state.block_size)} of the {format_size(need * state.block_size)} "
            f"asked for can be onlined: {format_size((target_blocks - planned) * state.block_size)} short"
        )
    return _plan(state, current_blocks, target_blocks, actions, notes)


class _MovableRoom:
    """How many more blocks may go Movable under the ratio, system-wide and per node.

    `movable + n <= ratio% * kernel_early` is kept as a room of `ratio% * kernel_early - movable`
    blocks, so that checking and booking one block costs two integer operations.
    """

    __slots__ = ("ratio", "numa_aware", "kernel_early", "kernel_early_by_node", "movable", "system", "by_node")

    def __init__(self, ratio: int, numa_aware: bool, kernel_early_by_node: dict, movable_by_node: dict):
        self.ratio = ratio
        self.numa_aware = numa_aware
        self.kernel_early = sum(kernel_early_by_node.values())
        self.kernel_early_by_node = kernel_early_by_node
        self.movable = sum(movable_by_node.values())
        self.system = ratio * self.kernel_early // 100 - self.movable
        self.by_node = {
            node: ratio * kernel_early_by_node.get(node, 0) // 100 - movable_by_node.get(node, 0)
            for node in kernel_early_by_node.keys() | movable_by_node.keys()
        }

    def exceeded_scope(self, node: int | None, blocks: int) -> str | tuple | None:
        """None if `blocks` more Movable blocks on `node` fit, else the scope that fails."""
        if self.system < blocks:
            return _SYSTEM
        if self.numa_aware and self.by_node.get(node, 0) < blocks:
            return (_NODE, node)
        return None

    def group_exceeded_scope(self, blocks_by_node: dict[int | None, int]) -> str | tuple | None:
        """Like exceeded_scope, for a group whose blocks may lie on several nodes."""
        if self.system < sum(blocks_by_node.values()):
            return _SYSTEM
        if self.numa_aware:
            for node, blocks in blocks_by_node.items():
                if self.by_node.get(node, 0) < blocks:
                    return (_NODE, node)
        return None

    def take(self, node: int | None, blocks: int) -> None:
        self.system -= blocks
        self.by_node[node] = self.by_node.get(node, 0) - blocks


class _ZoneChooser:
    """Picks the zone of each block to online, keeping the Movable room and memory groups up to date."""

    def __init__(self, state: MemoryState, config: PolicyConfig):
        params = state.params
        self.block_size = state.block_size
        self.mode = config.zone_mode
        self.defer_to_kernel = self.mode == "auto" and params.online_policy == KERNEL_AUTO_MOVABLE
        ratio, numa_aware = config.movable_ratio, config.numa_aware
        if self.defer_to_kernel:
            ratio = params.auto_movable_ratio if params.auto_movable_ratio is not None else ratio
            numa_aware = params.auto_movable_numa_aware if params.auto_movable_numa_aware is not None else numa_aware
        self.kernel_groups: set[str] = set()  # groups with memory online (or planned) in a kernel zone
        self.dimm_offline_by_node: dict[str, dict[int | None, int]] = {}
        kernel_early_by_node, movable_by_node = self._count(state.blocks) if self.mode != "normal" else ({}, {})
        self.room = _MovableRoom(ratio, numa_aware, kernel_early_by_node, movable_by_node)
        self.dimm_decisions: dict[str, tuple[str, str, bool]] = {}  # group -> (zone, reason, booked)
        self.reasons: dict[tuple, str] = {}
        self.fits_reason = f"Movable: {self._fits_text()}"
        self.allowed: dict[tuple[str, ...], tuple[bool, bool]] = {}
        self.skipped: dict[str, list[int]] = {}
        self.movable_planned = 0

    def _count(self, blocks: Iterable[MemoryBlock]) -> tuple[dict, dict]:
        """Boot kernel and Movable blocks online per node; groups with kernel memory; offline DIMM blocks."""
        kernel_early_by_node: dict[int | None, int] = {}
        movable_by_node: dict[int | None, int] = {}
        dimm_offline = self.dimm_offline_by_node
        kernel_groups = self.kernel_groups
        for block in blocks:
            if block.state != ONLINE:
                group = block.group
                if group is not None and block.origin == ORIGIN_DIMM:
                    by_node = dimm_offline.setdefault(group, {})
                    by_node[block.node] = by_node.get(block.node, 0) + 1
                continue
            zones = block.zones
            if zones is not None and zones[0] == ZONE_MOVABLE:
                movable_by_node[block.node] = movable_by_node.get(block.node, 0) + 1
                continue
            if block.origin == ORIGIN_BOOT:
                kernel_early_by_node[block.node] = kernel_early_by_node.get(block.node, 0) + 1
            elif block.group is not None:
                kernel_groups.add(block.group)
        return kernel_early_by_node, movable_by_node

    def online_actions(self, candidates: Iterable[MemoryBlock], need: int, exclude: frozenset[int]) -> list[Action]:
        """Up to `need` online actions over `candidates` in order, skipping (and noting) what cannot be onlined."""
        actions: list[Action] = []
        if need <= 0:
            return actions
        skip = self._skip
        choose = self._auto_zone if self.mode == "auto" else self._forced_zone
        defer = self.defer_to_kernel
        new_action = tuple.__new__  # Action(...) without NamedTuple's keyword handling: this loop is the hot path
        last_byte = self.block_size - 1
        remaining = need
        for block in candidates:
            if block.state != OFFLINE:
                if block.state == GOING_OFFLINE:
                    skip(block, "going offline")
                continue
            if block.index in exclude:
                skip(block, "excluded after a failed write")
                continue
            zones = block.zones
            if zones is None:
                zone, reason = None, _UNKNOWN_ZONES_REASON
            else:
                zone, reason = choose(block, zones)
                if zone is None:
                    skip(block, reason)
                    continue
            start = block.start
            write = WRITE_ONLINE if defer else _WRITE_FOR_ZONE[zone]
            actions.append(new_action(Action, (KIND_ONLINE, block.index, start, start + last_byte, zone, write, reason)))
            remaining -= 1
            if not remaining:
                break
        return actions

    def _skip(self, block: MemoryBlock, why: str) -> None:
        self.skipped.setdefault(why, []).append(block.index)

    def _allowed_zones(self, zones: tuple[str, ...]) -> tuple[bool, bool]:
        """(Movable allowed, a kernel zone allowed) for an offline block's valid_zones."""
        allowed = self.allowed.get(zones)
        if allowed is None:
            allowed = (ZONE_MOVABLE in zones, any(zone not in (ZONE_MOVABLE, ZONE_NONE) for zone in zones))
            self.allowed[zones] = allowed
        return allowed

    def _forced_zone(self, block: MemoryBlock, zones: tuple[str, ...]) -> tuple[str | None, str]:
        movable_ok, kernel_ok = self._allowed_zones(zones)
        if self.mode == "movable":
            if movable_ok:
                self.movable_planned += 1
                return ZONE_MOVABLE, "Movable: zone mode movable"
            if kernel_ok:
                return ZONE_NORMAL, "Normal: valid_zones does not allow Movable"
        else:
            if kernel_ok:
                return ZONE_NORMAL, "Normal: zone mode normal"
            if movable_ok:
                return ZONE_MOVABLE, "Movable: valid_zones allows no kernel zone"
        return None, _no_zone_reason(zones)

    def _auto_zone(self, block: MemoryBlock, zones: tuple[str, ...]) -> tuple[str | None, str]:
        """The ratio rule with memory groups, then valid_zones; books Movable blocks in the room."""
        movable_ok, kernel_ok = self.allowed.get(zones) or self._allowed_zones(zones)
        room, node, group = self.room, block.node, block.group
        booked = False
        if group is not None and block.origin == ORIGIN_DIMM:
            zone, reason, booked = self.dimm_decisions.get(group) or self._dimm_decision(group)
        elif group is not None and block.origin == ORIGIN_VIRTIO_MEM and group in self.kernel_groups:
            zone, reason = ZONE_NORMAL, self._reason("virtio-kernel", group)
        elif room.system > 0 and (not room.numa_aware or room.by_node.get(node, 0) > 0):  # exceeded_scope(node, 1), inlined
            zone, reason = ZONE_MOVABLE, self.fits_reason
        else:
            zone, reason = ZONE_NORMAL, self._reason("exceeds", room.exceeded_scope(node, 1))
        if zone == ZONE_MOVABLE and not movable_ok:
            if not kernel_ok:
                return None, _no_zone_reason(zones)
            zone, reason = ZONE_NORMAL, "Normal: valid_zones does not allow Movable"
        elif zone == ZONE_NORMAL and not kernel_ok:
            if not movable_ok:
                return None, _no_zone_reason(zones)
            scope = room.exceeded_scope(node, 1)
            if scope is not None:
                return None, self._reason("only-movable-exceeds", scope)
            zone, reason = ZONE_MOVABLE, "Movable: valid_zones allows no kernel zone, and it fits the ratio"
        if zone == ZONE_MOVABLE:
            if not booked:  # room.take(node, 1), inlined: this runs once per block
                room.system -= 1
                room.by_node[node] = room.by_node.get(node, 0) - 1
        elif group is not None:
            self.kernel_groups.add(group)
        return zone, reason

    def _dimm_decision(self, group: str) -> tuple[str, str, bool]:
        """One zone for a whole DIMM; a Movable DIMM books all its not-yet-online blocks at once."""
        decision = self.dimm_decisions.get(group)
        if decision is not None:
            return decision
        offline_by_node = self.dimm_offline_by_node.get(group, {})
        size = format_size(sum(offline_by_node.values()) * self.block_size)
        if group in self.kernel_groups:
            decision = (ZONE_NORMAL, f"Normal: DIMM {group} already has memory in a kernel zone", False)
        elif (scope := self.room.group_exceeded_scope(offline_by_node)) is None:
            for node, blocks in offline_by_node.items():
                self.room.take(node, blocks)
            decision = (ZONE_MOVABLE, f"Movable: all of DIMM {group} ({size}) {self._fits_text()}", True)
        else:
            decision = (ZONE_NORMAL, f"Normal: DIMM {group} ({size}) as Movable {self._exceeds_text(scope)}", False)
        self.dimm_decisions[group] = decision
        return decision

    def _reason(self, kind: str, subject) -> str:
        """Reason texts, built once per plan and shared by the blocks they apply to (plan tables merge them).

        Kinds: "exceeds" and "only-movable-exceeds" (subject: the failing scope), "virtio-kernel" (the device).
        """
        key = (kind, subject)
        text = self.reasons.get(key)
        if text is None:
            if kind == "exceeds":
                text = f"Normal: Movable {self._exceeds_text(subject)}"
            elif kind == "only-movable-exceeds":
                text = f"valid_zones allows only Movable, which {self._exceeds_text(subject)} (zone mode movable forces it)"
            else:  # "virtio-kernel"
                text = f"Normal: virtio-mem device {subject} already has memory in a kernel zone"
            self.reasons[key] = text
        return text

    def _fits_text(self) -> str:
        room = self.room
        return f"fits {room.ratio}% of {format_size(room.kernel_early * self.block_size)} boot kernel memory"

    def _exceeds_text(self, scope: str | tuple) -> str:
        room = self.room
        if scope == _SYSTEM:
            return f"would exceed {room.ratio}% of {format_size(room.kernel_early * self.block_size)} boot kernel memory"
        node = scope[1]
        kernel = format_size(room.kernel_early_by_node.get(node, 0) * self.block_size)
        where = "unknown node" if node is None else f"node {node}"
        return f"would exceed {room.ratio}% of {where}'s {kernel} boot kernel memory"

    def notes(self, planned_any: bool) -> list[str]:
        """Blocks skipped and why; how the zones will really be chosen; an exceeded ratio in mode movable."""
        notes = [f"{_blocks_label(indexes)}: {why}" for why, indexes in self.skipped.items()]
        if self.defer_to_kernel and planned_any:
            notes.append(
                "kernel online_policy is auto-movable: writing plain 'online' and letting the kernel pick "
                "the zone; the zones in this plan are predictions"
            )
        room = self.room
        if self.mode == "movable" and self.movable_planned:
            movable = room.movable + self.movable_planned
            if movable * 100 > room.ratio * room.kernel_early:
                notes.append(
                    f"zone mode movable: {format_size(movable * self.block_size)} Movable exceeds {room.ratio}% of "
                    f"{format_size(room.kernel_early * self.block_size)} boot kernel memory (risk of OOM in kernel zones)"
                )
        return notes


_UNKNOWN_ZONES_REASON = "zones unknown (no valid_zones): plain online, the kernel picks the zone"


def _blocks_label(indexes: list[int]) -> str:
    """`block 3` or `blocks 3-5,9`: how notes name the blocks they are about."""
    return f"block{'s' if len(indexes) > 1 else ''} {format_block_list(indexes)}"


def _no_zone_reason(zones: tuple[str, ...]) -> str:
    return f"valid_zones {' '.join(zones)!r} allows no zone to online into"


# -- shrinking --------------------------------------------------------------------------------

_MOVABLE_REASON = "hot-plugged Movable block: offline is likely to succeed"
_KERNEL_ZONE_REASON = "hot-plugged kernel-zone block: offline may fail with EBUSY"
_UNKNOWN_ZONE_REASON = "hot-plugged block in an unknown zone: offline may fail with EBUSY"
_FORCED_BOOT_REASON = "boot memory, forced: offline may fail with EBUSY"


def _shrink_plan(
    state: MemoryState,
    need: int,
    current_blocks: int,
    config: PolicyConfig,
    figures: MemoryFigures | None,
    exclude: frozenset[int],
    force: bool,
) -> Plan:
    notes: list[str] = []
    limit = _limit_offline(need, state, current_blocks, config, figures, force, notes)
    movable: list[MemoryBlock] = []
    kernel_zone: list[MemoryBlock] = []
    for block in reversed(state.blocks):
        if len(movable) >= limit:
            break
        if block.state != ONLINE or block.origin == ORIGIN_BOOT or block.index in exclude:
            continue
        zones = block.zones
        zone = zones[0] if zones else None
        if zone == ZONE_MOVABLE:
            movable.append(block)
        elif zone != ZONE_NONE:
            kernel_zone.append(block)
    actions = [_offline_action(block) for block in movable[:limit]]
    actions.extend(_offline_action(block) for block in kernel_zone[: limit - len(actions)])
    if len(actions) < limit:
        candidates = f"only {format_size(len(actions) * state.block_size)}" if actions else "nothing more"
        notes.append(
            f"{candidates} can be offlined: boot memory, blocks with valid_zones 'none' and blocks "
            "that already failed are never used"
        )
    return _plan(state, current_blocks, current_blocks - need, actions, notes)


def _floor_limit(
    state: MemoryState, current_blocks: int, config: PolicyConfig, figures: MemoryFigures | None
) -> tuple[int, str]:
    """How many blocks may go offline without crossing the floor or the reserve, and what sets that limit."""
    block_size = state.block_size
    if figures is None:
        return 0, "memory figures unknown (MemTotal/MemAvailable): refusing to offline rather than guess"
    floor_limit = max(0, (current_blocks * block_size - config.min_online_bytes) // block_size)
    reserve = config.reserve_for(figures.total_bytes)
    reserve_limit = max(0, (figures.available_bytes - reserve) // block_size)
    if floor_limit <= reserve_limit:
        return floor_limit, f"the minimum online memory is {format_size(config.min_online_bytes)}"
    return reserve_limit, f"{format_size(figures.available_bytes)} available must keep a reserve of {format_size(reserve)}"


def _limit_offline(
    wanted: int,
    state: MemoryState,
    current_blocks: int,
    config: PolicyConfig,
    figures: MemoryFigures | None,
    force: bool,
    notes: list[str],
) -> int:
    """`wanted` cut down to the floor and the reserve (unless forced), noting the cut."""
    if force:
        return wanted
    limit, why = _floor_limit(state, current_blocks, config, figures)
    if limit >= wanted:
        return wanted
    notes.append(f"offlining stops after {format_size(limit * state.block_size)}: {why}" if limit else f"nothing can go offline: {why}")
    return limit


def _offline_refusal(block: MemoryBlock, exclude: frozenset[int], force: bool) -> str | None:
    """Why a named block cannot be offlined, or None."""
    if block.state == OFFLINE:
        return "already offline"
    if block.state != ONLINE:
        return f"state {block.state}: already being offlined"
    if block.index in exclude:
        return "excluded after a failed write"
    if block.zones is not None and block.zones[0] == ZONE_NONE:
        return "valid_zones 'none': the kernel cannot offline it"
    if block.origin == ORIGIN_BOOT and not force:
        return "boot memory: offlined only with --force"
    return None


def _offline_action(block: MemoryBlock) -> Action:
    if block.origin == ORIGIN_BOOT:
        reason = _FORCED_BOOT_REASON
    elif block.zone == ZONE_MOVABLE:
        reason = _MOVABLE_REASON
    else:
        reason = _KERNEL_ZONE_REASON if block.zone is not None else _UNKNOWN_ZONE_REASON
    return Action(KIND_OFFLINE, block.index, block.start, block.start + block.size - 1, None, WRITE_OFFLINE, reason)


# -- shared -------------------------------------------------------------------------------------


def _plan(state: MemoryState, current_blocks: int, target_blocks: int, actions: list[Action], notes: list[str]) -> Plan:
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
    return sum(1 for block in blocks if block.state == ONLINE)


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
