"""The zone and offline policy: one test per rule on hand-built states, then properties on random ones."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vmem_agent.errors import UsageError
from vmem_agent.core.model import (
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
    KernelParams,
    MemoryBlock,
    MemoryFigures,
    MemoryState,
)
from vmem_agent.core.policy import (
    KIND_OFFLINE,
    KIND_ONLINE,
    SHRINK_BY_BLOCK,
    Action,
    Plan,
    PolicyConfig,
    Reason,
    plan_offline,
    plan_online,
    plan_target,
)
from tests.test_zonerule import P, Reference

M, G = 1 << 20, 1 << 30
BS = 128 * M
BOTH = (ZONE_NORMAL, ZONE_MOVABLE)
PLENTY = MemoryFigures(total_bytes=1 << 50, available_bytes=1 << 49)


# -- builders ----------------------------------------------------------------------------------


def run(first: int, count: int, state: str = OFFLINE, zones=BOTH, node: int | None = 0, origin: str = ORIGIN_BOOT, group: str | None = None):
    """`count` alike blocks from index `first`; zones default to ('Normal', 'Movable') offline."""
    if zones is BOTH and state != OFFLINE:
        zones = (ZONE_NORMAL,)
    return [MemoryBlock(i, i * BS, BS, state, zones, node=node, origin=origin, group=group) for i in range(first, first + count)]


def boot(first: int, count: int, state: str = ONLINE, zones=(ZONE_NORMAL,), node: int | None = 0):
    return run(first, count, state, zones, node)


def dimm(name: str, first: int, count: int, state: str = OFFLINE, zones=BOTH, node: int | None = 0):
    return run(first, count, state, zones, node, ORIGIN_DIMM, name)


def virtio(name: str, first: int, count: int, state: str = OFFLINE, zones=BOTH, node: int | None = 0):
    return run(first, count, state, zones, node, ORIGIN_VIRTIO_MEM, name)


def make_state(*runs, params: KernelParams = KernelParams()) -> MemoryState:
    blocks = sorted((block for blocks in runs for block in blocks), key=lambda block: block.index)
    return MemoryState(block_size=BS, blocks=tuple(blocks), params=params)


def zones_of(plan: Plan) -> list[tuple[int, str | None]]:
    return [(action.index, action.zone) for action in plan.actions]


def indexes(plan: Plan) -> list[int]:
    return [action.index for action in plan.actions]


def online_bytes(state: MemoryState) -> int:
    """Online memory as plans count it: going-offline blocks are still online."""
    return sum(BS for block in state.blocks if block.state in (ONLINE, GOING_OFFLINE))


def codes(plan: Plan) -> list[str]:
    return [note.code for note in plan.notes]


def note(plan: Plan, code: str):
    found = [n for n in plan.notes if n.code == code]
    assert len(found) == 1, plan.notes
    return found[0]


# -- growing -------------------------------------------------------------------------------------


def test_grow_takes_lowest_offline_blocks_and_reaches_the_target_exactly():
    state = make_state(boot(0, 4), virtio("v", 4, 2, state=ONLINE), virtio("v", 6, 6))
    plan = plan_target(state, 8 * BS, PolicyConfig(zone_mode="normal"))
    assert indexes(plan) == [6, 7]
    assert (plan.current_bytes, plan.planned_bytes, plan.target_bytes, plan.shortfall_bytes) == (6 * BS, 8 * BS, 8 * BS, 0)
    assert plan.actions[0] == Action(KIND_ONLINE, 6, 6 * BS, 7 * BS - 1, ZONE_NORMAL, "online_kernel",
                                     Reason("normal-zone-mode"), None)


def test_grow_skips_excluded_and_going_offline_blocks():
    state = make_state(boot(0, 4), run(4, 1, GOING_OFFLINE, (ZONE_MOVABLE,), origin=ORIGIN_DIMM), run(5, 4, origin=ORIGIN_VIRTIO_MEM))
    plan = plan_target(state, 7 * BS, exclude=frozenset({5}))
    assert plan.current_bytes == 5 * BS  # the going-offline block is still online memory
    assert indexes(plan) == [6, 7]
    assert note(plan, "skip-going-offline").blocks == (4,)
    assert note(plan, "skip-excluded").blocks == (5,)


def test_no_op_when_already_at_target():
    state = make_state(boot(0, 4), run(4, 4))
    plan = plan_target(state, 4 * BS, figures=PLENTY)
    assert plan == Plan(4 * BS, 4 * BS, 4 * BS, (), 0, ())


def test_target_must_be_block_aligned():
    with pytest.raises(ValueError):
        plan_target(make_state(boot(0, 4)), 4 * BS + 1)


def test_shortfall_when_not_enough_offline_blocks():
    state = make_state(boot(0, 4), run(4, 2, origin=ORIGIN_VIRTIO_MEM))
    plan = plan_target(state, 10 * BS)
    assert plan.planned_bytes == 6 * BS and plan.shortfall_bytes == 4 * BS
    assert plan.notes[-1].code == "grow-short"
    assert plan.notes[-1].facts_dict() == {"onlinable": 2 * BS, "asked": 6 * BS, "short": 4 * BS}


def test_auto_goes_movable_up_to_the_ratio_of_boot_kernel_memory_then_normal():
    state = make_state(boot(0, 4), run(4, 8, origin=ORIGIN_VIRTIO_MEM))
    plan = plan_target(state, 12 * BS, PolicyConfig(movable_ratio=150))
    assert zones_of(plan) == [(i, ZONE_MOVABLE) for i in range(4, 10)] + [(10, ZONE_NORMAL), (11, ZONE_NORMAL)]
    assert plan.actions[0].write == "online_movable" and plan.actions[-1].write == "online_kernel"
    assert plan.actions[0].reason == Reason("movable-fits", (("scope", "system"), ("ratio", 150), ("kernel_early", 4 * BS)))
    assert plan.actions[-1].reason.code == "normal-exceeds-ratio"
    assert plan.actions[-1].reason.facts_dict() == {"scope": "system", "ratio": 150, "kernel_early": 4 * BS}


def test_hot_plugged_kernel_memory_does_not_raise_the_allowance():
    state = make_state(boot(0, 2), virtio("v", 2, 10, state=ONLINE), run(12, 4, origin=ORIGIN_VIRTIO_MEM))
    plan = plan_target(state, 16 * BS, PolicyConfig(movable_ratio=100))
    assert zones_of(plan) == [(12, ZONE_MOVABLE), (13, ZONE_MOVABLE), (14, ZONE_NORMAL), (15, ZONE_NORMAL)]


def test_existing_movable_memory_uses_up_the_allowance():
    state = make_state(boot(0, 2), run(2, 2, ONLINE, (ZONE_MOVABLE,), origin=ORIGIN_VIRTIO_MEM), run(4, 2, origin=ORIGIN_VIRTIO_MEM))
    plan = plan_target(state, 6 * BS, PolicyConfig(movable_ratio=150))
    assert zones_of(plan) == [(4, ZONE_MOVABLE), (5, ZONE_NORMAL)]


def test_boot_blocks_in_zone_none_count_as_kernel():
    state = make_state(boot(0, 2, zones=(ZONE_NONE,)), run(2, 2, origin=ORIGIN_VIRTIO_MEM))
    plan = plan_target(state, 4 * BS, PolicyConfig(movable_ratio=100))
    assert zones_of(plan) == [(2, ZONE_MOVABLE), (3, ZONE_MOVABLE)]


def test_ratio_is_checked_per_node_when_numa_aware():
    state = make_state(boot(0, 8, node=0), run(8, 2, node=1, origin=ORIGIN_VIRTIO_MEM), run(10, 2, node=0, origin=ORIGIN_VIRTIO_MEM))
    plan = plan_target(state, 12 * BS)
    assert zones_of(plan) == [(8, ZONE_NORMAL), (9, ZONE_NORMAL), (10, ZONE_MOVABLE), (11, ZONE_MOVABLE)]
    assert plan.actions[0].reason.facts_dict() == {"scope": "node", "node": 1, "ratio": 301, "kernel_early": 0}
    relaxed = plan_target(state, 12 * BS, PolicyConfig(numa_aware=False))
    assert {zone for _, zone in zones_of(relaxed)} == {ZONE_MOVABLE}


def test_dimm_is_decided_as_a_whole():
    # Room for 3 Movable blocks: a 4-block DIMM does not fit, a 2-block one does.
    state = make_state(boot(0, 3), dimm("big", 3, 4), dimm("small", 7, 2))
    plan = plan_target(state, 9 * BS, PolicyConfig(movable_ratio=100))
    assert zones_of(plan) == [(i, ZONE_NORMAL) for i in range(3, 7)] + [(7, ZONE_MOVABLE), (8, ZONE_MOVABLE)]
    assert plan.actions[0].reason.code == "dimm-normal-exceeds-ratio"
    assert plan.actions[0].reason.facts_dict() == {"group": "big", "size": 4 * BS, "scope": "system", "ratio": 100,
                                                   "kernel_early": 3 * BS}
    assert plan.actions[-1].reason.code == "dimm-movable-fits"
    assert plan.actions[-1].reason.facts_dict()["size"] == 2 * BS


def test_dimm_counts_its_whole_size_even_when_the_target_takes_part_of_it():
    state = make_state(boot(0, 3), dimm("big", 3, 4))
    plan = plan_target(state, 4 * BS, PolicyConfig(movable_ratio=100))
    assert zones_of(plan) == [(3, ZONE_NORMAL)]


def test_like_the_kernel_a_block_between_a_dimms_blocks_can_take_its_share():
    """DIMM blocks are contiguous on real machines; interleaved, the kernel's rule (checked
    again at each block) sends the rest of the DIMM to a kernel zone once the room is gone."""
    state = make_state(
        boot(0, 4), dimm("d", 4, 1), run(5, 1, origin=ORIGIN_VIRTIO_MEM, group="v"), dimm("d", 6, 3)
    )
    plan = plan_target(state, 9 * BS, PolicyConfig(movable_ratio=100))
    assert zones_of(plan) == [(4, ZONE_MOVABLE), (5, ZONE_MOVABLE), (6, ZONE_NORMAL), (7, ZONE_NORMAL), (8, ZONE_NORMAL)]


@pytest.mark.parametrize(
    "online_zone, rest, expected",
    [
        (ZONE_NORMAL, 1, ZONE_NORMAL),  # follows its kernel-zone part, although Movable would fit
        (ZONE_MOVABLE, 1, ZONE_MOVABLE),  # follows its Movable part while the rest fits
        (ZONE_MOVABLE, 4, ZONE_NORMAL),  # the rest does not fit: kernel zone, as the kernel does
    ],
)
def test_partly_online_dimm(online_zone, rest, expected):
    state = make_state(boot(0, 4), dimm("d", 4, 1, ONLINE, (online_zone,)), dimm("d", 5, rest))
    plan = plan_target(state, (5 + rest) * BS, PolicyConfig(movable_ratio=100))
    assert {zone for _, zone in zones_of(plan)} == {expected}


def test_virtio_mem_decides_block_by_block_and_its_kernel_memory_pays_for_its_movable():
    """The kernel's dynamic groups: once a block of the device is in a kernel zone, it raises
    that device's own allowance; the device does not go all Normal (the old rule did)."""
    state = make_state(boot(0, 1), virtio("v", 1, 4))
    plan = plan_target(state, 5 * BS, PolicyConfig(movable_ratio=100))
    assert zones_of(plan) == [(1, ZONE_MOVABLE), (2, ZONE_NORMAL), (3, ZONE_MOVABLE), (4, ZONE_NORMAL)]
    assert plan.actions[2].reason.code == "movable-fits" and plan.actions[2].reason.facts_dict()["group"] == "v"


def test_a_device_with_kernel_memory_online_is_not_sent_all_to_normal():
    state = make_state(boot(0, 8), virtio("a", 8, 1, ONLINE, (ZONE_NORMAL,)), virtio("a", 9, 2), virtio("b", 11, 2))
    plan = plan_target(state, 13 * BS)
    assert zones_of(plan) == [(i, ZONE_MOVABLE) for i in range(9, 13)]


def test_another_devices_movable_memory_is_paid_for_by_its_own_kernel_memory_first():
    # a: 3 Movable and 3 kernel blocks: it needs no early kernel memory, so b has all 4.
    state = make_state(boot(0, 4), virtio("a", 4, 3, ONLINE, (ZONE_MOVABLE,)), virtio("a", 7, 3, ONLINE, (ZONE_NORMAL,)),
                       virtio("b", 10, 5))
    plan = plan_target(state, 15 * BS, PolicyConfig(movable_ratio=100))
    assert zones_of(plan) == [(i, ZONE_MOVABLE) for i in range(10, 14)] + [(14, ZONE_NORMAL)]


def test_a_block_forced_to_a_kernel_zone_raises_its_devices_allowance():
    # Block 1 may only go Normal; the rest of device "a" is Movable, as the kernel would decide.
    state = make_state(boot(0, 1), virtio("a", 1, 1, zones=(ZONE_NORMAL,)), virtio("a", 2, 2))
    plan = plan_target(state, 4 * BS)
    assert zones_of(plan) == [(1, ZONE_NORMAL), (2, ZONE_MOVABLE), (3, ZONE_MOVABLE)]


def test_never_requests_a_zone_valid_zones_forbids():
    state = make_state(
        boot(0, 4),
        run(4, 1, zones=(ZONE_NORMAL,), origin=ORIGIN_VIRTIO_MEM),
        run(5, 1, zones=("DMA32", ZONE_MOVABLE), origin=ORIGIN_VIRTIO_MEM),
    )
    plan = plan_target(state, 6 * BS, PolicyConfig(zone_mode="movable"))
    assert zones_of(plan) == [(4, ZONE_NORMAL), (5, ZONE_MOVABLE)]
    assert plan.actions[0].reason == Reason("normal-valid-zones")
    normal = plan_target(make_state(boot(0, 4), run(4, 1, zones=(ZONE_MOVABLE,), origin=ORIGIN_DIMM)), 5 * BS, PolicyConfig(zone_mode="normal"))
    assert zones_of(normal) == [(4, ZONE_MOVABLE)]


def test_dma32_counts_as_a_kernel_zone():
    state = make_state(boot(0, 1), run(1, 2, zones=("DMA32", ZONE_MOVABLE), origin=ORIGIN_VIRTIO_MEM))
    plan = plan_target(state, 3 * BS, PolicyConfig(movable_ratio=100))
    assert [(a.zone, a.write) for a in plan.actions] == [(ZONE_MOVABLE, "online_movable"), (ZONE_NORMAL, "online_kernel")]


def test_auto_skips_a_movable_only_block_that_would_exceed_the_ratio():
    state = make_state(boot(0, 1), run(1, 2, zones=(ZONE_MOVABLE,), origin=ORIGIN_VIRTIO_MEM), run(3, 1, origin=ORIGIN_VIRTIO_MEM))
    plan = plan_target(state, 3 * BS, PolicyConfig(movable_ratio=100))
    assert zones_of(plan) == [(1, ZONE_MOVABLE), (3, ZONE_NORMAL)]
    skipped = note(plan, "skip-only-movable-exceeds")
    assert skipped.blocks == (2,) and skipped.facts_dict() == {"scope": "system", "ratio": 100, "kernel_early": BS}


def test_unknown_valid_zones_write_plain_online():
    state = make_state(boot(0, 2, zones=None), run(2, 2, zones=None, origin=ORIGIN_DIMM))
    plan = plan_target(state, 4 * BS)
    assert [(a.zone, a.write) for a in plan.actions] == [(None, "online"), (None, "online")]


def test_mode_movable_ignores_the_ratio_and_says_so():
    state = make_state(boot(0, 1), run(1, 4, origin=ORIGIN_VIRTIO_MEM))
    plan = plan_target(state, 5 * BS, PolicyConfig(zone_mode="movable", movable_ratio=100))
    assert {zone for _, zone in zones_of(plan)} == {ZONE_MOVABLE}
    assert note(plan, "movable-mode-exceeds-ratio").facts_dict() == {"movable": 4 * BS, "ratio": 100, "kernel_early": BS}


def test_defers_to_kernel_auto_movable_and_predicts_the_first_zone_from_valid_zones():
    params = KernelParams(online_policy="auto-movable", auto_movable_ratio=100, auto_movable_numa_aware=True)
    kernel_says_movable = (ZONE_MOVABLE, ZONE_NORMAL)
    state = make_state(boot(0, 2), run(2, 3, zones=kernel_says_movable, origin=ORIGIN_VIRTIO_MEM), params=params)
    plan = plan_target(state, 5 * BS, PolicyConfig(movable_ratio=301))  # the kernel's 100% wins
    assert [(a.zone, a.write) for a in plan.actions] == [(ZONE_MOVABLE, "online")] * 2 + [(ZONE_NORMAL, "online")]
    assert plan.actions[0].reason == Reason("kernel-choice", (("zone", ZONE_MOVABLE),))
    assert plan.actions[1].reason.code == "movable-fits"
    assert "deferring-to-kernel" in codes(plan)
    # The kernel knows what the agent cannot see (CMA, holes): its valid_zones says Normal.
    kernel_says_normal = make_state(boot(0, 2), run(2, 1, zones=BOTH, origin=ORIGIN_VIRTIO_MEM), params=params)
    assert zones_of(plan_target(kernel_says_normal, 3 * BS)) == [(2, ZONE_NORMAL)]
    forced = plan_target(state, 5 * BS, PolicyConfig(zone_mode="normal"))
    assert {action.write for action in forced.actions} == {"online_kernel"}


# -- shrinking -------------------------------------------------------------------------------


def shrink_state():
    return make_state(
        boot(0, 4),
        boot(4, 1, zones=(ZONE_MOVABLE,)),  # boot memory, even in Movable, is never picked
        dimm("a", 5, 2, ONLINE, (ZONE_NORMAL,)),
        dimm("b", 7, 2, ONLINE, (ZONE_MOVABLE,)),
        virtio("v", 9, 1, ONLINE, (ZONE_NONE,)),
        virtio("v", 10, 1, ONLINE, (ZONE_MOVABLE,)),
        virtio("v", 11, 1, ONLINE, None),
        virtio("v", 12, 1, OFFLINE),
    )


PER_BLOCK = PolicyConfig(shrink_unit=SHRINK_BY_BLOCK)


def test_shrink_empties_whole_dimms_and_leaves_virtio_mem_to_the_host():
    plan = plan_target(shrink_state(), 5 * BS, figures=PLENTY)
    assert indexes(plan) == [8, 7, 6, 5]  # DIMM b (Movable) before DIMM a
    assert [(a.kind, a.write, a.zone, a.unit) for a in plan.actions] == [
        (KIND_OFFLINE, "offline", ZONE_MOVABLE, "b")] * 2 + [(KIND_OFFLINE, "offline", ZONE_NORMAL, "a")] * 2
    assert plan.actions[0].reason == Reason("dimm-whole", (("group", "b"), ("size", 2 * BS)))
    assert plan.planned_bytes == 8 * BS and plan.shortfall_bytes == 3 * BS
    assert note(plan, "shrink-short").facts_dict() == {"offlinable": 4 * BS, "unit": "dimm"}
    assert note(plan, "virtio-mem-lower-requested-size").facts_dict() == {"group": "v", "online": 3 * BS, "movable": BS}


def test_per_block_shrink_takes_movable_highest_first_then_hot_plugged_kernel_zones():
    plan = plan_target(shrink_state(), 5 * BS, PER_BLOCK, figures=PLENTY)
    assert indexes(plan) == [10, 8, 7, 11, 6, 5]
    assert {(a.kind, a.write, a.unit) for a in plan.actions} == {(KIND_OFFLINE, "offline", None)}
    assert plan.actions[0].reason == Reason("virtio-mem-block", (("group", "v"),))
    assert plan.actions[1].reason == Reason("hotplugged-movable")
    assert plan.actions[4].reason == Reason("hotplugged-kernel-zone")
    assert plan.planned_bytes == 6 * BS and plan.shortfall_bytes == BS
    assert "virtio-mem-lower-requested-size" not in codes(plan)


def test_shrink_stops_at_the_target():
    plan = plan_target(shrink_state(), 10 * BS, figures=PLENTY)
    assert indexes(plan) == [8, 7]
    assert plan.planned_bytes == plan.target_bytes and plan.notes == ()


def test_shrink_skips_excluded_dimms():
    plan = plan_target(shrink_state(), 10 * BS, figures=PLENTY, exclude=frozenset({8}))
    assert indexes(plan) == [6, 5]


def dimm_state(extra=()):
    """DIMM A Movable (32-35), B Movable with 39 offline (36-39), C Normal (40-43), D Movable (44-47)."""
    return make_state(
        boot(0, 8),
        dimm("A", 32, 4, ONLINE, (ZONE_MOVABLE,)),
        dimm("B", 36, 3, ONLINE, (ZONE_MOVABLE,)), dimm("B", 39, 1),
        dimm("C", 40, 4, ONLINE, (ZONE_NORMAL,)),
        dimm("D", 44, 4, ONLINE, (ZONE_MOVABLE,)),
        *extra,
    )


@pytest.mark.parametrize("offline, expected", [
    (3, [38, 37, 36]),  # B first: Movable, and the most of it already offline
    (7, [38, 37, 36, 47, 46, 45, 44]),  # then D: Movable, and higher than A
    (11, [38, 37, 36, 47, 46, 45, 44, 35, 34, 33, 32]),
    (15, [38, 37, 36, 47, 46, 45, 44, 35, 34, 33, 32, 43, 42, 41, 40]),  # the Normal DIMM last
])
def test_dimms_in_order_movable_then_most_offline_then_highest(offline, expected):
    state = dimm_state()
    plan = plan_target(state, online_bytes(state) - offline * BS, figures=PLENTY)
    assert indexes(plan) == expected and plan.shortfall_bytes == 0
    assert "dimm-left-partly-offline" not in codes(plan)


def test_a_target_inside_a_dimm_leaves_exactly_one_dimm_partly_offline_and_says_so():
    state = dimm_state()
    plan = plan_target(state, online_bytes(state) - 5 * BS, figures=PLENTY)
    assert indexes(plan) == [38, 37, 36, 47, 46]  # all of B, then part of D
    assert plan.actions[-1].reason == Reason("dimm-part", (("group", "D"), ("size", 4 * BS), ("left_online", 2 * BS)))
    left = note(plan, "dimm-left-partly-offline")
    assert left.blocks == (46, 47) and left.facts_dict() == {"group": "D", "size": 4 * BS, "offline": 2 * BS}


def test_a_dimm_already_partly_offline_is_the_one_to_take_a_part_of():
    state = make_state(boot(0, 8), dimm("A", 32, 4, ONLINE, (ZONE_MOVABLE,)),
                       dimm("C", 40, 3, ONLINE, (ZONE_NORMAL,)), dimm("C", 43, 1))
    plan = plan_target(state, online_bytes(state) - BS, figures=PLENTY)
    assert indexes(plan) == [42]  # not a part of the Movable A: that would leave two DIMMs split


def test_never_a_second_dimm_partly_offline():
    # C is partly offline and cannot be emptied (block 40 failed in this run): no part of A.
    state = make_state(boot(0, 8), dimm("A", 32, 4, ONLINE, (ZONE_MOVABLE,)),
                       dimm("C", 40, 3, ONLINE, (ZONE_NORMAL,)), dimm("C", 43, 1))
    plan = plan_target(state, online_bytes(state) - BS, figures=PLENTY, exclude=frozenset({40}))
    assert plan.actions == ()
    assert note(plan, "dimm-second-partial-refused").facts_dict() == {"group": "C"}


def test_a_dimm_with_a_block_the_kernel_cannot_offline_is_not_emptied():
    state = make_state(boot(0, 8), dimm("A", 32, 1, ONLINE, (ZONE_NONE,)), dimm("A", 33, 3, ONLINE, (ZONE_MOVABLE,)),
                       dimm("B", 36, 4, ONLINE, (ZONE_NORMAL,)))
    plan = plan_target(state, online_bytes(state) - 4 * BS, figures=PLENTY)
    assert indexes(plan) == [39, 38, 37, 36]


@pytest.mark.parametrize("config", [PolicyConfig(), PER_BLOCK])
def test_memory_of_unknown_origin_and_kmem_is_never_offlined_automatically(config):
    state = make_state(boot(0, 4), run(4, 2, ONLINE, (ZONE_MOVABLE,), origin=ORIGIN_HOTPLUG),
                       run(6, 2, ONLINE, (ZONE_MOVABLE,), origin=ORIGIN_KMEM, group="kmem:dax0.0"))
    plan = plan_target(state, 4 * BS, config, figures=PLENTY)
    assert plan.actions == ()
    untouched = {n.facts_dict()["origin"]: n.blocks for n in plan.notes if n.code == "origin-never-offlined"}
    assert untouched == {ORIGIN_HOTPLUG: (4, 5), ORIGIN_KMEM: (6, 7)}


def test_shrink_honours_the_minimum_online_floor():
    config = PolicyConfig(min_online_bytes=10 * BS + 1, shrink_unit=SHRINK_BY_BLOCK)
    plan = plan_target(shrink_state(), 6 * BS, config, figures=PLENTY)
    assert indexes(plan) == [10]
    assert plan.shortfall_bytes == 5 * BS
    assert plan.notes == (note(plan, "offline-limited"),)
    assert plan.notes[0].facts_dict() == {"limit": BS, "why": "min-online", "min_online": 10 * BS + 1}


def test_shrink_keeps_the_default_reserve_available():
    # 5% of 8G is 409.6M: with 800M available, 384M (3 blocks) may go.
    figures = MemoryFigures(total_bytes=8 * G, available_bytes=800 * M)
    plan = plan_target(shrink_state(), 6 * BS, PER_BLOCK, figures=figures)
    assert indexes(plan) == [10, 8, 7]
    assert plan.notes[0].code == "offline-limited"
    assert plan.notes[0].facts_dict() == {"limit": 3 * BS, "why": "reserve", "available": 800 * M, "reserve": 8 * G // 20}
    small = plan_target(shrink_state(), 6 * BS, PER_BLOCK, figures=MemoryFigures(total_bytes=G, available_bytes=512 * M))
    assert len(small.actions) == 2  # reserve is at least 256M


def test_shrink_refuses_without_memory_figures():
    plan = plan_target(shrink_state(), 6 * BS)
    assert plan.actions == () and plan.shortfall_bytes == 6 * BS
    assert plan.notes[0] == note(plan, "offline-limited")
    assert plan.notes[0].facts_dict() == {"limit": 0, "why": "no-memory-figures"}


def test_config_reserve_overrides_the_default():
    assert PolicyConfig().reserve_for(8 * G) == 8 * G // 20
    assert PolicyConfig().reserve_for(G) == 256 * M
    assert PolicyConfig(reserve_bytes=0).reserve_for(8 * G) == 0


@pytest.mark.parametrize(
    "changes",
    [{"zone_mode": "kernel"}, {"movable_ratio": -1}, {"reserve_bytes": -1}, {"min_online_bytes": -1},
     {"shrink_unit": "page"}],
)
def test_config_rejects_bad_values(changes):
    with pytest.raises(UsageError):
        PolicyConfig(**changes)


# -- manual online / offline -----------------------------------------------------------------


def test_online_named_blocks_follows_the_zone_rules():
    state = make_state(boot(0, 2), run(2, 1, ONLINE, origin=ORIGIN_VIRTIO_MEM), run(3, 4, origin=ORIGIN_VIRTIO_MEM))
    plan = plan_online(state, [6, 2, 4, 4], PolicyConfig(movable_ratio=50))
    assert zones_of(plan) == [(4, ZONE_MOVABLE), (6, ZONE_NORMAL)]
    assert note(plan, "already-online").blocks == (2,)
    assert plan.target_bytes == plan.planned_bytes == 5 * BS


def test_online_in_another_zone_is_not_already_done():
    state = make_state(boot(0, 2), run(2, 1, ONLINE, (ZONE_NORMAL,), origin=ORIGIN_DIMM),
                       run(3, 1, ONLINE, (ZONE_MOVABLE,), origin=ORIGIN_DIMM))
    plan = plan_online(state, [2, 3], PolicyConfig(zone_mode="movable"))
    assert plan.actions == () and plan.shortfall_bytes == BS  # block 2 is not what was asked for
    assert note(plan, "already-online").blocks == (3,)
    assert note(plan, "online-in-other-zone").blocks == (2,)
    assert note(plan, "online-in-other-zone").facts_dict() == {"zone": ZONE_NORMAL, "wanted": "movable"}


def test_online_named_unknown_block_is_a_usage_error():
    with pytest.raises(UsageError, match="no such memory block: 9-10"):
        plan_online(make_state(boot(0, 2)), [1, 9, 10])


def test_online_named_blocks_report_what_was_skipped():
    state = make_state(boot(0, 2), run(2, 1, GOING_OFFLINE, (ZONE_MOVABLE,), origin=ORIGIN_DIMM), run(3, 2, origin=ORIGIN_DIMM))
    plan = plan_online(state, [2, 3, 4], exclude=frozenset({3}))
    assert indexes(plan) == [4]
    assert plan.shortfall_bytes == BS  # block 3; the going-offline block 2 is still online memory


def test_online_size_grows_by_that_much():
    state = make_state(boot(0, 2), run(2, 4, origin=ORIGIN_VIRTIO_MEM))
    assert indexes(plan_online(state, 2 * BS)) == [2, 3]
    with pytest.raises(ValueError):
        plan_online(state, BS + 1)


def test_offline_named_blocks_highest_first_boot_and_unknown_origin_only_with_force():
    state = make_state(list(shrink_state().blocks), run(13, 1, ONLINE, (ZONE_MOVABLE,), origin=ORIGIN_HOTPLUG))
    plan = plan_offline(state, [0, 5, 7, 9, 10, 12, 13], figures=PLENTY)
    assert indexes(plan) == [10, 7, 5]
    assert note(plan, "boot-needs-force").blocks == (0,)
    assert note(plan, "unknown-origin-needs-force").blocks == (13,)
    assert note(plan, "zone-none").blocks == (9,)
    assert note(plan, "already-offline").blocks == (12,)
    assert note(plan, "virtio-mem-offline-gives-nothing").blocks == (10,)
    assert plan.target_bytes == plan.current_bytes - 6 * BS and plan.shortfall_bytes == 3 * BS
    forced = plan_offline(state, [0, 5, 9, 13], force=True)  # no figures needed when forced
    assert indexes(forced) == [13, 5, 0]
    assert forced.actions[0].reason == Reason("forced-unknown-origin")
    assert forced.actions[2].reason == Reason("forced-boot")


def test_offline_named_blocks_honour_the_floor_unless_forced():
    config = PolicyConfig(min_online_bytes=11 * BS)
    plan = plan_offline(shrink_state(), [5, 6, 7, 8], config, PLENTY)
    assert indexes(plan) == [8]
    assert plan_offline(shrink_state(), [5, 6, 7, 8], config, None, force=True).actions != ()


def test_offline_size_uses_the_shrink_order():
    plan = plan_offline(shrink_state(), 2 * BS, figures=PLENTY)
    assert indexes(plan) == [8, 7]
    assert indexes(plan_offline(shrink_state(), 2 * BS, PER_BLOCK, figures=PLENTY)) == [10, 8]
    with pytest.raises(UsageError, match="only 1.5G is online"):
        plan_offline(shrink_state(), 13 * BS, figures=PLENTY)


# -- properties over random states -------------------------------------------------------------

ONLINE_ZONES = [(ZONE_NORMAL,), (ZONE_MOVABLE,), (ZONE_NONE,), ("DMA32",), None]
OFFLINE_ZONES = [BOTH, (ZONE_MOVABLE, ZONE_NORMAL), (ZONE_NORMAL,), (ZONE_MOVABLE,), ("DMA32", ZONE_MOVABLE), None]
HOT_ORIGINS = [ORIGIN_DIMM, ORIGIN_DIMM, ORIGIN_VIRTIO_MEM, ORIGIN_HOTPLUG, ORIGIN_KMEM]


@st.composite
def memory_states(draw) -> MemoryState:
    """Boot memory first, then runs of DIMMs, virtio-mem and kmem devices and blocks of unknown origin.

    Each run is all offline, all online in one zone, or mixed block by block, so that whole
    groups are often still offline (the interesting case for group decisions). A device's
    blocks lie on one node, as on real machines.
    """
    count = draw(st.integers(min_value=1, max_value=300))
    nodes = draw(st.integers(min_value=1, max_value=3))
    boot_count = draw(st.integers(min_value=0, max_value=count))
    blocks = []
    group_nodes: dict[str, int] = {}
    first = 0
    while first < count:
        if first < boot_count:
            origin, group, end = ORIGIN_BOOT, None, boot_count
        else:
            origin = draw(st.sampled_from(HOT_ORIGINS))
            group = None if origin == ORIGIN_HOTPLUG else f"{origin}:{draw(st.sampled_from(['g0', 'g1', 'g2', f'g{first}']))}"
            end = min(count, first + draw(st.integers(min_value=1, max_value=40)))
        node = group_nodes.setdefault(group, draw(st.sampled_from(range(nodes)))) if group else draw(st.sampled_from(range(nodes)))
        if origin == ORIGIN_BOOT:  # mostly online kernel memory, as after a real boot
            style = draw(st.sampled_from(["online", "online", "mixed"]))
            run_zones = draw(st.sampled_from([(ZONE_NORMAL,), (ZONE_NORMAL,), *ONLINE_ZONES]))
        else:
            style = draw(st.sampled_from(["offline", "offline", "online", "mixed"]))
            run_zones = draw(st.sampled_from(OFFLINE_ZONES if style == "offline" else ONLINE_ZONES))
        for index in range(first, end):
            if style == "mixed":
                state = draw(st.sampled_from([ONLINE, OFFLINE, OFFLINE, GOING_OFFLINE]))
                zones = draw(st.sampled_from(OFFLINE_ZONES if state == OFFLINE else ONLINE_ZONES))
            else:
                state, zones = (OFFLINE if style == "offline" else ONLINE), run_zones
            blocks.append(MemoryBlock(index, index * BS, BS, state, zones, node=node, origin=origin, group=group))
        first = end
    params = KernelParams(
        online_policy=draw(st.sampled_from([None, "contig-zones", "auto-movable"])),
        auto_movable_ratio=draw(st.one_of(st.none(), st.integers(min_value=0, max_value=600))),
        auto_movable_numa_aware=draw(st.one_of(st.none(), st.booleans())),
    )
    return MemoryState(block_size=BS, blocks=tuple(blocks), params=params)


configs = st.builds(
    PolicyConfig,
    zone_mode=st.sampled_from(["auto", "auto", "auto", "movable", "normal"]),
    movable_ratio=st.integers(min_value=0, max_value=600),
    numa_aware=st.booleans(),
    reserve_bytes=st.one_of(st.none(), st.integers(min_value=0, max_value=40 * BS)),
    min_online_bytes=st.integers(min_value=0, max_value=300 * BS),
    shrink_unit=st.sampled_from(["dimm", "dimm", "block"]),
)
figures_strategy = st.one_of(
    st.none(),
    st.builds(MemoryFigures, total_bytes=st.integers(min_value=0, max_value=400 * BS), available_bytes=st.integers(min_value=0, max_value=400 * BS)),
)


def movable_ratio_in_force(state: MemoryState, config: PolicyConfig) -> tuple[int, bool]:
    params = state.params
    if config.zone_mode == "auto" and params.online_policy == "auto-movable":
        ratio = params.auto_movable_ratio if params.auto_movable_ratio is not None else config.movable_ratio
        numa = params.auto_movable_numa_aware if params.auto_movable_numa_aware is not None else config.numa_aware
        return ratio, numa
    return config.movable_ratio, config.numa_aware


def kernel_reference(state: MemoryState, ratio: int, numa_aware: bool) -> Reference:
    """The test suite's transliteration of the kernel's rule (tests/test_zonerule.py), loaded with this snapshot."""
    reference = Reference(ratio, numa_aware)
    for block in state.blocks:
        if block.group is not None and block.group not in reference.groups:
            members = sum(1 for other in state.blocks if other.group == block.group)
            reference.groups[block.group] = (block.origin == ORIGIN_VIRTIO_MEM, block.node, members * P)
        if block.state in (ONLINE, GOING_OFFLINE):
            movable = block.zones is not None and block.zones[0] == ZONE_MOVABLE
            reference.online.append((block.node, block.group, movable, not movable and block.origin == ORIGIN_BOOT, P))
    return reference


def is_kernel_zone(zone: str) -> bool:
    return zone not in (ZONE_MOVABLE, ZONE_NONE)


def can_surely_online(block: MemoryBlock, mode: str) -> bool:
    """Whether some zone is allowed whatever the ratio says."""
    if block.zones is None or any(is_kernel_zone(zone) for zone in block.zones):
        return True
    return mode != "auto" and ZONE_MOVABLE in block.zones


def dimm_halves(state: MemoryState, offline: set[int]) -> set[str]:
    """DIMMs partly offline once the blocks in `offline` are: some of their blocks online, some not."""
    online_by_dimm: dict[str, set[bool]] = {}
    for block in state.blocks:
        if block.origin == ORIGIN_DIMM and block.group is not None:
            online = block.state in (ONLINE, GOING_OFFLINE) and block.index not in offline
            online_by_dimm.setdefault(block.group, set()).add(online)
    return {group for group, seen in online_by_dimm.items() if seen == {True, False}}


@settings(max_examples=300, deadline=None)
@given(memory_states(), configs, figures_strategy, st.data())
def test_plan_properties(state, config, figures, data):
    by_index = {block.index: block for block in state.blocks}
    exclude = frozenset(data.draw(st.sets(st.sampled_from(sorted(by_index)), max_size=10)))
    online_blocks = online_bytes(state) // BS
    target_blocks = data.draw(
        st.one_of(  # growing and shrinking equally often, whatever the share of online blocks
            st.integers(min_value=online_blocks, max_value=len(state.blocks)),
            st.integers(min_value=0, max_value=online_blocks),
        )
    )
    plan = plan_target(state, target_blocks * BS, config, figures, exclude)

    assert plan == plan_target(dataclasses.replace(state), target_blocks * BS, config, figures, exclude), "deterministic"
    current = online_bytes(state)
    onlined = [a for a in plan.actions if a.kind == KIND_ONLINE]
    offlined = [a for a in plan.actions if a.kind == KIND_OFFLINE]
    assert plan.current_bytes == current and plan.target_bytes == target_blocks * BS
    assert plan.planned_bytes == current + BS * (len(onlined) - len(offlined))
    assert plan.shortfall_bytes == abs(plan.target_bytes - plan.planned_bytes)
    assert not (onlined and offlined), "a plan moves one way"
    assert len({a.index for a in plan.actions}) == len(plan.actions)
    assert not {a.index for a in plan.actions} & exclude
    if plan.target_bytes == current:
        assert plan.actions == () and plan.notes == ()
    if plan.shortfall_bytes:
        assert plan.notes

    for action in plan.actions:
        block = by_index[action.index]
        assert (action.start, action.end) == (block.start, block.end)
    for action in onlined:
        block = by_index[action.index]
        assert block.state == OFFLINE
        assert plan.planned_bytes <= plan.target_bytes
        if block.zones is None:
            assert (action.zone, action.write) == (None, "online")
        elif action.zone == ZONE_MOVABLE:
            assert ZONE_MOVABLE in block.zones
        else:
            assert action.zone == ZONE_NORMAL and any(is_kernel_zone(zone) for zone in block.zones)
        if action.write != "online":
            assert action.write == {ZONE_MOVABLE: "online_movable", ZONE_NORMAL: "online_kernel"}[action.zone]
    for action in offlined:
        block = by_index[action.index]
        assert block.state == ONLINE and block.zones != (ZONE_NONE,)
        # Only memory a host can take back: never boot memory, memory of unknown origin or kmem.
        allowed = (ORIGIN_DIMM,) if config.shrink_unit == "dimm" else (ORIGIN_DIMM, ORIGIN_VIRTIO_MEM)
        assert block.origin in allowed
        assert figures is not None
        assert plan.planned_bytes >= max(config.min_online_bytes, plan.target_bytes)
        assert figures.available_bytes - len(offlined) * BS >= config.reserve_for(figures.total_bytes)
    if offlined and config.shrink_unit == "dimm":
        before, after = dimm_halves(state, set()), dimm_halves(state, {a.index for a in offlined})
        assert len(after - before) <= 1 and (after <= before or len(after) == 1), "a second DIMM left partly offline"
        assert all(action.unit == by_index[action.index].group for action in offlined)

    if onlined and plan.shortfall_bytes:
        planned = {a.index for a in onlined}
        missed = [b.index for b in state.blocks if b.state == OFFLINE and b.index not in exclude and b.index not in planned and can_surely_online(b, config.zone_mode)]
        assert not missed, "stopped short although these blocks could be onlined"
    if plan.target_bytes < current and plan.shortfall_bytes and figures is not None and config.shrink_unit == "block":
        planned = {a.index for a in offlined}
        left = [
            b for b in state.blocks
            if b.state == ONLINE and b.origin in (ORIGIN_DIMM, ORIGIN_VIRTIO_MEM) and b.zones != (ZONE_NONE,)
            and b.index not in exclude and b.index not in planned
        ]
        one_more = len(offlined) + 1
        floors_stop = (
            current - one_more * BS < config.min_online_bytes
            or figures.available_bytes - one_more * BS < config.reserve_for(figures.total_bytes)
        )
        assert floors_stop or not left, "stopped short although a block could go offline"

    if config.zone_mode == "auto" and onlined:
        assert_zones_as_the_kernel_decides(state, plan, config)


def assert_zones_as_the_kernel_decides(state: MemoryState, plan: Plan, config: PolicyConfig) -> None:
    """Where valid_zones leaves the choice to the rule, each block gets the zone the kernel's rule
    (the test's own transliteration) gives it when the blocks are onlined in plan order."""
    by_index = {block.index: block for block in state.blocks}
    if any(by_index[a.index].zones is None or set(by_index[a.index].zones) != set(BOTH) for a in plan.actions):
        return  # valid_zones forced some zones; the other properties cover those
    reference = kernel_reference(state, *movable_ratio_in_force(state, config))
    actions = list(plan.actions)
    if state.params.online_policy == "auto-movable":  # the first zone is the kernel's own (valid_zones)
        first = actions.pop(0)
        block = by_index[first.index]
        reference.online.append((block.node, block.group, first.zone == ZONE_MOVABLE, False, P))
    for action in actions:
        block = by_index[action.index]
        assert (action.zone == ZONE_MOVABLE) == reference.online_block(block.node, block.group), action


@st.composite
def grouped_states(draw) -> MemoryState:
    """Online boot memory, then whole offline DIMMs (contiguous, as on real machines) with
    virtio-mem or loose blocks between them."""
    nodes = draw(st.integers(min_value=1, max_value=3))
    blocks = [
        MemoryBlock(i, i * BS, BS, ONLINE, (ZONE_NORMAL,), node=draw(st.sampled_from(range(nodes))))
        for i in range(draw(st.integers(min_value=1, max_value=16)))
    ]
    pieces = []
    for number in range(draw(st.integers(min_value=1, max_value=8))):
        node = draw(st.sampled_from(range(nodes)))
        pieces.append([(ORIGIN_DIMM, f"dimm{number}", node)] * draw(st.integers(min_value=1, max_value=8)))
    for _ in range(draw(st.integers(min_value=0, max_value=16))):
        group = draw(st.sampled_from([None, "v0", "v1"]))
        pieces.append([(ORIGIN_VIRTIO_MEM, group, 0 if group != "v1" else nodes - 1)])
    for piece in draw(st.permutations(pieces)):
        for origin, group, node in piece:
            index = len(blocks)
            blocks.append(MemoryBlock(index, index * BS, BS, OFFLINE, BOTH, node=node, origin=origin, group=group))
    return MemoryState(block_size=BS, blocks=tuple(blocks))


@settings(max_examples=300, deadline=None)
@given(grouped_states(), st.integers(min_value=0, max_value=400), st.booleans(), st.data())
def test_group_decisions_follow_the_kernel(state, ratio, numa_aware, data):
    config = PolicyConfig(movable_ratio=ratio, numa_aware=numa_aware)
    target_blocks = data.draw(st.integers(min_value=online_bytes(state) // BS, max_value=len(state.blocks)))
    plan = plan_target(state, target_blocks * BS, config)
    assert plan.planned_bytes == plan.target_bytes
    assert_zones_as_the_kernel_decides(state, plan, config)
    for group in {b.group for b in state.blocks if b.origin == ORIGIN_DIMM}:
        assert len({a.zone for a in plan.actions if state.blocks[a.index].group == group}) <= 1, "a DIMM is all one zone"


@settings(max_examples=150, deadline=None)
@given(memory_states(), configs, figures_strategy, st.booleans(), st.data())
def test_named_offline_properties(state, config, figures, force, data):
    by_index = {block.index: block for block in state.blocks}
    named = data.draw(st.sets(st.sampled_from(sorted(by_index)), max_size=30))
    plan = plan_offline(state, named, config, figures, force=force)
    assert indexes(plan) == sorted(indexes(plan), reverse=True)
    for action in plan.actions:
        block = by_index[action.index]
        assert action.index in named and block.state == ONLINE and block.zones != (ZONE_NONE,)
        assert force or block.origin not in (ORIGIN_BOOT, ORIGIN_HOTPLUG)
    if plan.actions and not force:
        assert figures is not None and plan.planned_bytes >= config.min_online_bytes
        assert figures.available_bytes - len(plan.actions) * BS >= config.reserve_for(figures.total_bytes)


@settings(max_examples=150, deadline=None)
@given(memory_states(), configs, st.data())
def test_named_online_properties(state, config, data):
    by_index = {block.index: block for block in state.blocks}
    named = data.draw(st.sets(st.sampled_from(sorted(by_index)), max_size=30))
    plan = plan_online(state, named, config)
    assert indexes(plan) == sorted(indexes(plan))
    for action in plan.actions:
        assert action.index in named and by_index[action.index].state == OFFLINE
    wanted = {i for i in named if by_index[i].state == OFFLINE}
    assert plan.target_bytes == plan.current_bytes + len(wanted) * BS


@st.composite
def dimm_machines(draw) -> MemoryState:
    """Boot memory, then DIMMs in every state a shrink meets (online Movable or Normal, partly
    offline, a block that cannot go offline), with virtio-mem, kmem and unknown memory between."""
    blocks = list(boot(0, draw(st.integers(min_value=1, max_value=8))))
    partly_offline = 0
    for number in range(draw(st.integers(min_value=0, max_value=8))):
        kind = draw(st.sampled_from([ORIGIN_DIMM, ORIGIN_DIMM, ORIGIN_DIMM, ORIGIN_VIRTIO_MEM, ORIGIN_KMEM, ORIGIN_HOTPLUG]))
        group = None if kind == ORIGIN_HOTPLUG else f"{kind}:{number}"
        size = draw(st.integers(min_value=1, max_value=6))
        zone = draw(st.sampled_from([ZONE_MOVABLE, ZONE_MOVABLE, ZONE_NORMAL]))
        offline = draw(st.integers(min_value=0, max_value=size))
        if kind == ORIGIN_DIMM and 0 < offline < size:
            if partly_offline:  # at most one, as the agent leaves them
                offline = 0
            partly_offline += 1
        first = len(blocks)
        for position in range(size):
            index = first + position
            if position >= size - offline:
                blocks.append(MemoryBlock(index, index * BS, BS, OFFLINE, BOTH, origin=kind, group=group))
            else:
                zones = (ZONE_NONE,) if draw(st.integers(min_value=0, max_value=30)) == 0 else (zone,)
                blocks.append(MemoryBlock(index, index * BS, BS, ONLINE, zones, origin=kind, group=group))
    return MemoryState(block_size=BS, blocks=tuple(blocks))


@settings(max_examples=400, deadline=None)
@given(dimm_machines(), st.data())
def test_a_shrink_plan_empties_dimms_one_at_a_time_and_splits_at_most_one(state, data):
    by_index = {block.index: block for block in state.blocks}
    current = online_bytes(state) // BS
    target = data.draw(st.integers(min_value=0, max_value=current))
    exclude = frozenset(data.draw(st.sets(st.sampled_from(sorted(by_index)), max_size=3)))
    plan = plan_target(state, target * BS, figures=PLENTY, exclude=exclude)
    offlined = [action.index for action in plan.actions]
    assert plan.planned_bytes >= plan.target_bytes
    assert all(by_index[i].origin == ORIGIN_DIMM and by_index[i].state == ONLINE for i in offlined), "only DIMMs"
    before, after = dimm_halves(state, set()), dimm_halves(state, set(offlined))
    assert len(after) <= max(1, len(before)), "a second DIMM left partly offline"
    assert after <= before or len(after) == 1
    order = [by_index[i].group for i in offlined]
    assert order == sorted(order, key=order.index), "all of one DIMM before the next"
    for group in set(order):  # highest first within a DIMM
        own = [i for i in offlined if by_index[i].group == group]
        assert own == sorted(own, reverse=True)
    # It stops short only where no DIMM could be emptied or split any further.
    if plan.shortfall_bytes:
        assert plan.notes
        untouched = {b.group for b in state.blocks if b.origin == ORIGIN_DIMM and b.state == ONLINE} - set(order)
        emptiable = [g for g in untouched if all(
            b.index not in exclude and b.zones != (ZONE_NONE,)
            for b in state.blocks if b.group == g and b.state == ONLINE)]
        assert not emptiable or after or any(n.code == "dimm-second-partial-refused" for n in plan.notes)


def test_blocks_no_zone_can_take_are_skipped_and_later_ones_used():
    # valid_zones 'none' (e.g. a block spanning zones) allows nothing: the next blocks are used.
    state = make_state(boot(0, 2), run(2, 2, zones=(ZONE_NONE,), origin=ORIGIN_DIMM), run(4, 2, origin=ORIGIN_VIRTIO_MEM))
    for mode in ("auto", "movable", "normal"):
        plan = plan_target(state, 4 * BS, PolicyConfig(zone_mode=mode))
        assert indexes(plan) == [4, 5], mode
        assert note(plan, "skip-no-zone").blocks == (2, 3)
