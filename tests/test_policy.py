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
    Action,
    Plan,
    PolicyConfig,
    plan_offline,
    plan_online,
    plan_target,
)

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
    return sum(BS for block in state.blocks if block.state == ONLINE)


# -- growing -------------------------------------------------------------------------------------


def test_grow_takes_lowest_offline_blocks_and_reaches_the_target_exactly():
    state = make_state(boot(0, 4), virtio("v", 4, 2, state=ONLINE), virtio("v", 6, 6))
    plan = plan_target(state, 8 * BS, PolicyConfig(zone_mode="normal"))
    assert indexes(plan) == [6, 7]
    assert (plan.current_bytes, plan.planned_bytes, plan.target_bytes, plan.shortfall_bytes) == (6 * BS, 8 * BS, 8 * BS, 0)
    first = plan.actions[0]
    assert first == Action(KIND_ONLINE, 6, 6 * BS, 7 * BS - 1, ZONE_NORMAL, "online_kernel", "Normal: zone mode normal")


def test_grow_skips_excluded_and_going_offline_blocks():
    state = make_state(boot(0, 4), run(4, 1, GOING_OFFLINE, (ZONE_MOVABLE,), origin=ORIGIN_DIMM), run(5, 4, origin=ORIGIN_VIRTIO_MEM))
    plan = plan_target(state, 6 * BS, exclude=frozenset({5}))
    assert indexes(plan) == [6, 7]
    assert "block 4: going offline" in plan.notes
    assert "block 5: excluded after a failed write" in plan.notes


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
    assert plan.notes[-1] == "only 256M of the 768M asked for can be onlined: 512M short"


def test_auto_goes_movable_up_to_the_ratio_of_boot_kernel_memory_then_normal():
    state = make_state(boot(0, 4), run(4, 8, origin=ORIGIN_VIRTIO_MEM))
    plan = plan_target(state, 12 * BS, PolicyConfig(movable_ratio=150))
    assert zones_of(plan) == [(i, ZONE_MOVABLE) for i in range(4, 10)] + [(10, ZONE_NORMAL), (11, ZONE_NORMAL)]
    assert plan.actions[0].write == "online_movable" and plan.actions[-1].write == "online_kernel"
    assert plan.actions[0].reason == "Movable: fits 150% of 512M boot kernel memory"
    assert plan.actions[-1].reason == "Normal: Movable would exceed 150% of 512M boot kernel memory"


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
    assert plan.actions[0].reason == "Normal: Movable would exceed 301% of node 1's 0B boot kernel memory"
    relaxed = plan_target(state, 12 * BS, PolicyConfig(numa_aware=False))
    assert {zone for _, zone in zones_of(relaxed)} == {ZONE_MOVABLE}


def test_dimm_is_decided_as_a_whole():
    # Room for 3 Movable blocks: a 4-block DIMM does not fit, a 2-block one does.
    state = make_state(boot(0, 3), dimm("big", 3, 4), dimm("small", 7, 2))
    plan = plan_target(state, 9 * BS, PolicyConfig(movable_ratio=100))
    assert zones_of(plan) == [(i, ZONE_NORMAL) for i in range(3, 7)] + [(7, ZONE_MOVABLE), (8, ZONE_MOVABLE)]
    assert plan.actions[0].reason == "Normal: DIMM big (512M) as Movable would exceed 100% of 384M boot kernel memory"
    assert plan.actions[-1].reason == "Movable: all of DIMM small (256M) fits 100% of 384M boot kernel memory"


def test_dimm_counts_its_whole_size_even_when_the_target_takes_part_of_it():
    state = make_state(boot(0, 3), dimm("big", 3, 4))
    plan = plan_target(state, 4 * BS, PolicyConfig(movable_ratio=100))
    assert zones_of(plan) == [(3, ZONE_NORMAL)]


def test_movable_dimm_books_its_share_before_interleaved_blocks():
    state = make_state(
        boot(0, 4), dimm("d", 4, 1), run(5, 1, origin=ORIGIN_VIRTIO_MEM, group="v"), dimm("d", 6, 3)
    )
    plan = plan_target(state, 9 * BS, PolicyConfig(movable_ratio=100))
    assert zones_of(plan) == [(4, ZONE_MOVABLE), (5, ZONE_NORMAL), (6, ZONE_MOVABLE), (7, ZONE_MOVABLE), (8, ZONE_MOVABLE)]


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


def test_virtio_mem_goes_normal_once_any_of_the_device_is_in_a_kernel_zone():
    state = make_state(boot(0, 8), virtio("a", 8, 1, ONLINE, (ZONE_NORMAL,)), virtio("a", 9, 2), virtio("b", 11, 2))
    plan = plan_target(state, 13 * BS)
    assert zones_of(plan) == [(9, ZONE_NORMAL), (10, ZONE_NORMAL), (11, ZONE_MOVABLE), (12, ZONE_MOVABLE)]
    assert plan.actions[0].reason == "Normal: virtio-mem device a already has memory in a kernel zone"


def test_virtio_mem_stays_normal_after_the_plan_puts_part_of_it_in_a_kernel_zone():
    # Block 1 may only go Normal; the rest of device "a" follows, although Movable would fit.
    state = make_state(boot(0, 1), virtio("a", 1, 1, zones=(ZONE_NORMAL,)), virtio("a", 2, 2))
    plan = plan_target(state, 4 * BS)
    assert zones_of(plan) == [(1, ZONE_NORMAL), (2, ZONE_NORMAL), (3, ZONE_NORMAL)]


def test_never_requests_a_zone_valid_zones_forbids():
    state = make_state(
        boot(0, 4),
        run(4, 1, zones=(ZONE_NORMAL,), origin=ORIGIN_VIRTIO_MEM),
        run(5, 1, zones=("DMA32", ZONE_MOVABLE), origin=ORIGIN_VIRTIO_MEM),
    )
    plan = plan_target(state, 6 * BS, PolicyConfig(zone_mode="movable"))
    assert zones_of(plan) == [(4, ZONE_NORMAL), (5, ZONE_MOVABLE)]
    assert plan.actions[0].reason == "Normal: valid_zones does not allow Movable"
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
    assert "block 2: valid_zones allows only Movable, which would exceed 100% of 128M boot kernel memory (zone mode movable forces it)" in plan.notes


def test_unknown_valid_zones_write_plain_online():
    state = make_state(boot(0, 2, zones=None), run(2, 2, zones=None, origin=ORIGIN_DIMM))
    plan = plan_target(state, 4 * BS)
    assert [(a.zone, a.write) for a in plan.actions] == [(None, "online"), (None, "online")]


def test_mode_movable_ignores_the_ratio_and_says_so():
    state = make_state(boot(0, 1), run(1, 4, origin=ORIGIN_VIRTIO_MEM))
    plan = plan_target(state, 5 * BS, PolicyConfig(zone_mode="movable", movable_ratio=100))
    assert {zone for _, zone in zones_of(plan)} == {ZONE_MOVABLE}
    assert any(note.startswith("zone mode movable: 512M Movable exceeds 100% of 128M") for note in plan.notes)


def test_defers_to_kernel_auto_movable_but_predicts_the_zone():
    params = KernelParams(online_policy="auto-movable", auto_movable_ratio=100, auto_movable_numa_aware=True)
    state = make_state(boot(0, 2), run(2, 3, origin=ORIGIN_VIRTIO_MEM), params=params)
    plan = plan_target(state, 5 * BS, PolicyConfig(movable_ratio=301))  # the kernel's 100% wins
    assert [(a.zone, a.write) for a in plan.actions] == [(ZONE_MOVABLE, "online")] * 2 + [(ZONE_NORMAL, "online")]
    assert any("auto-movable" in note and "predictions" in note for note in plan.notes)
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


def test_shrink_offlines_movable_highest_first_then_hot_plugged_kernel_zones():
    plan = plan_target(shrink_state(), 5 * BS, figures=PLENTY)
    assert indexes(plan) == [10, 8, 7, 11, 6, 5]
    assert {(a.kind, a.write, a.zone) for a in plan.actions} == {(KIND_OFFLINE, "offline", None)}
    assert plan.actions[0].reason == "hot-plugged Movable block: offline is likely to succeed"
    assert plan.actions[4].reason == "hot-plugged kernel-zone block: offline may fail with EBUSY"
    assert plan.planned_bytes == 6 * BS and plan.shortfall_bytes == BS
    assert "boot memory" in plan.notes[-1]


def test_shrink_stops_at_the_target():
    plan = plan_target(shrink_state(), 10 * BS, figures=PLENTY)
    assert indexes(plan) == [10, 8]
    assert plan.planned_bytes == plan.target_bytes and plan.notes == ()


def test_shrink_skips_excluded_blocks():
    plan = plan_target(shrink_state(), 10 * BS, figures=PLENTY, exclude=frozenset({10}))
    assert indexes(plan) == [8, 7]


def test_shrink_honours_the_minimum_online_floor():
    plan = plan_target(shrink_state(), 6 * BS, PolicyConfig(min_online_bytes=10 * BS + 1), figures=PLENTY)
    assert indexes(plan) == [10]
    assert plan.shortfall_bytes == 5 * BS
    assert plan.notes == ("offlining stops after 128M: the minimum online memory is 1.3G",)


def test_shrink_keeps_the_default_reserve_available():
    # 5% of 8G is 409.6M: with 800M available, 384M (3 blocks) may go.
    figures = MemoryFigures(total_bytes=8 * G, available_bytes=800 * M)
    plan = plan_target(shrink_state(), 6 * BS, figures=figures)
    assert indexes(plan) == [10, 8, 7]
    assert plan.notes == ("offlining stops after 384M: 800M available must keep a reserve of 409.6M",)
    small = plan_target(shrink_state(), 6 * BS, figures=MemoryFigures(total_bytes=G, available_bytes=512 * M))
    assert len(small.actions) == 2  # reserve is at least 256M


def test_shrink_refuses_without_memory_figures():
    plan = plan_target(shrink_state(), 6 * BS)
    assert plan.actions == () and plan.shortfall_bytes == 6 * BS
    assert plan.notes[0].startswith("nothing can go offline: memory figures unknown")


def test_config_reserve_overrides_the_default():
    assert PolicyConfig().reserve_for(8 * G) == 8 * G // 20
    assert PolicyConfig().reserve_for(G) == 256 * M
    assert PolicyConfig(reserve_bytes=0).reserve_for(8 * G) == 0


@pytest.mark.parametrize(
    "changes",
    [{"zone_mode": "kernel"}, {"movable_ratio": -1}, {"reserve_bytes": -1}, {"min_online_bytes": -1}],
)
def test_config_rejects_bad_values(changes):
    with pytest.raises(UsageError):
        PolicyConfig(**changes)


# -- manual online / offline -----------------------------------------------------------------


def test_online_named_blocks_follows_the_zone_rules():
    state = make_state(boot(0, 2), run(2, 1, ONLINE, origin=ORIGIN_VIRTIO_MEM), run(3, 4, origin=ORIGIN_VIRTIO_MEM))
    plan = plan_online(state, [6, 2, 4, 4], PolicyConfig(movable_ratio=50))
    assert zones_of(plan) == [(4, ZONE_MOVABLE), (6, ZONE_NORMAL)]
    assert "block 2: already online" in plan.notes
    assert plan.target_bytes == plan.planned_bytes == 5 * BS


def test_online_named_unknown_block_is_a_usage_error():
    with pytest.raises(UsageError, match="no such memory block: 9-10"):
        plan_online(make_state(boot(0, 2)), [1, 9, 10])


def test_online_named_blocks_report_what_was_skipped():
    state = make_state(boot(0, 2), run(2, 1, GOING_OFFLINE, (ZONE_MOVABLE,), origin=ORIGIN_DIMM), run(3, 2, origin=ORIGIN_DIMM))
    plan = plan_online(state, [2, 3, 4], exclude=frozenset({3}))
    assert indexes(plan) == [4]
    assert plan.shortfall_bytes == 2 * BS


def test_online_size_grows_by_that_much():
    state = make_state(boot(0, 2), run(2, 4, origin=ORIGIN_VIRTIO_MEM))
    assert indexes(plan_online(state, 2 * BS)) == [2, 3]
    with pytest.raises(ValueError):
        plan_online(state, BS + 1)


def test_offline_named_blocks_highest_first_and_boot_only_with_force():
    state = shrink_state()
    plan = plan_offline(state, [0, 5, 7, 9, 12], figures=PLENTY)
    assert indexes(plan) == [7, 5]
    assert "block 0: boot memory: offlined only with --force" in plan.notes
    assert "block 9: valid_zones 'none': the kernel cannot offline it" in plan.notes
    assert "block 12: already offline" in plan.notes
    assert plan.target_bytes == plan.current_bytes - 4 * BS and plan.shortfall_bytes == 2 * BS
    forced = plan_offline(state, [0, 5, 9], force=True)  # no figures needed when forced
    assert indexes(forced) == [5, 0]
    assert forced.actions[1].reason == "boot memory, forced: offline may fail with EBUSY"


def test_offline_named_blocks_honour_the_floor_unless_forced():
    config = PolicyConfig(min_online_bytes=11 * BS)
    plan = plan_offline(shrink_state(), [5, 6, 7, 8], config, PLENTY)
    assert indexes(plan) == [8]
    assert plan_offline(shrink_state(), [5, 6, 7, 8], config, None, force=True).actions != ()


def test_offline_size_uses_the_shrink_order():
    plan = plan_offline(shrink_state(), 2 * BS, figures=PLENTY)
    assert indexes(plan) == [10, 8]
    with pytest.raises(UsageError, match="only 1.5G is online"):
        plan_offline(shrink_state(), 13 * BS, figures=PLENTY)


# -- properties over random states -------------------------------------------------------------

ONLINE_ZONES = [(ZONE_NORMAL,), (ZONE_MOVABLE,), (ZONE_NONE,), ("DMA32",), None]
OFFLINE_ZONES = [BOTH, (ZONE_MOVABLE, ZONE_NORMAL), (ZONE_NORMAL,), (ZONE_MOVABLE,), ("DMA32", ZONE_MOVABLE), None]


@st.composite
def memory_states(draw) -> MemoryState:
    """Boot memory first, then runs of DIMMs, virtio-mem devices and ungrouped hot-plugged blocks.

    Each run is all offline, all online in one zone, or mixed block by block, so that whole
    groups are often still offline (the interesting case for group decisions).
    """
    count = draw(st.integers(min_value=1, max_value=300))
    nodes = draw(st.integers(min_value=1, max_value=3))
    boot_count = draw(st.integers(min_value=0, max_value=count))
    blocks = []
    first = 0
    while first < count:
        if first < boot_count:
            origin, group, end = ORIGIN_BOOT, None, boot_count
        else:
            origin = draw(st.sampled_from([ORIGIN_DIMM, ORIGIN_VIRTIO_MEM]))
            group = draw(st.sampled_from([None, "g0", "g1", "g2", f"g{first}"]))
            end = min(count, first + draw(st.integers(min_value=1, max_value=40)))
        node = draw(st.sampled_from(range(nodes)))
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


def movable_and_kernel_early(state: MemoryState, online_zones: dict[int, str | None]) -> dict:
    """Per scope ("system" and each node): (movable blocks, boot kernel blocks) with these online blocks."""
    counts: dict = {}
    for block in state.blocks:
        if block.index not in online_zones:
            continue
        zone = online_zones[block.index]
        for scope in ("system", ("node", block.node)):
            movable, kernel_early = counts.get(scope, (0, 0))
            if zone == ZONE_MOVABLE:
                movable += 1
            elif block.origin == ORIGIN_BOOT and block.state == ONLINE:  # onlined later: not early memory
                kernel_early += 1
            counts[scope] = (movable, kernel_early)
    return counts


def is_kernel_zone(zone: str) -> bool:
    return zone not in (ZONE_MOVABLE, ZONE_NONE)


def can_surely_online(block: MemoryBlock, mode: str) -> bool:
    """Whether some zone is allowed whatever the ratio says."""
    if block.zones is None or any(is_kernel_zone(zone) for zone in block.zones):
        return True
    return mode != "auto" and ZONE_MOVABLE in block.zones


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
        assert block.state == ONLINE and block.origin != ORIGIN_BOOT and block.zones != (ZONE_NONE,)
        assert figures is not None
        assert plan.planned_bytes >= max(config.min_online_bytes, plan.target_bytes)
        assert figures.available_bytes - len(offlined) * BS >= config.reserve_for(figures.total_bytes)

    if onlined and plan.shortfall_bytes:
        planned = {a.index for a in onlined}
        missed = [b.index for b in state.blocks if b.state == OFFLINE and b.index not in exclude and b.index not in planned and can_surely_online(b, config.zone_mode)]
        assert not missed, "stopped short although these blocks could be onlined"
    if plan.target_bytes < current and plan.shortfall_bytes and figures is not None:
        planned = {a.index for a in offlined}
        left = [
            b for b in state.blocks
            if b.state == ONLINE and b.origin != ORIGIN_BOOT and b.zones != (ZONE_NONE,) and b.index not in exclude and b.index not in planned
        ]
        one_more = len(offlined) + 1
        floors_stop = (
            current - one_more * BS < config.min_online_bytes
            or figures.available_bytes - one_more * BS < config.reserve_for(figures.total_bytes)
        )
        assert floors_stop or not left, "stopped short although a block could go offline"

    if config.zone_mode == "auto":
        assert_ratio_kept(state, plan, config)


def assert_ratio_kept(state: MemoryState, plan: Plan, config: PolicyConfig) -> None:
    """Applied to the snapshot, the plan adds no Movable memory to a scope beyond the ratio."""
    ratio, numa = movable_ratio_in_force(state, config)
    before_zones = {b.index: b.zone for b in state.blocks if b.state == ONLINE}
    after_zones = {**before_zones, **{a.index: a.zone for a in plan.actions if a.kind == KIND_ONLINE}}
    before = movable_and_kernel_early(state, before_zones)
    after = movable_and_kernel_early(state, after_zones)
    for scope, (movable, kernel_early) in after.items():
        if scope != "system" and not numa:
            continue
        if movable != before.get(scope, (0, 0))[0]:
            assert movable * 100 <= ratio * kernel_early, f"{scope}: {movable} Movable > {ratio}% of {kernel_early}"


@st.composite
def grouped_states(draw) -> MemoryState:
    """Online boot memory, then whole offline DIMMs with virtio-mem or loose blocks between their blocks."""
    nodes = draw(st.integers(min_value=1, max_value=3))
    blocks = [
        MemoryBlock(i, i * BS, BS, ONLINE, (ZONE_NORMAL,), node=draw(st.sampled_from(range(nodes))))
        for i in range(draw(st.integers(min_value=1, max_value=16)))
    ]
    members = []
    for number in range(draw(st.integers(min_value=1, max_value=8))):
        node = draw(st.sampled_from(range(nodes)))
        members += [(ORIGIN_DIMM, f"dimm{number}", node)] * draw(st.integers(min_value=1, max_value=8))
    members += [(ORIGIN_VIRTIO_MEM, draw(st.sampled_from([None, "v0", "v1"])), 0) for _ in range(draw(st.integers(min_value=0, max_value=16)))]
    for origin, group, node in draw(st.permutations(members)):
        index = len(blocks)
        blocks.append(MemoryBlock(index, index * BS, BS, OFFLINE, BOTH, node=node, origin=origin, group=group))
    return MemoryState(block_size=BS, blocks=tuple(blocks))


@settings(max_examples=300, deadline=None)
@given(grouped_states(), st.integers(min_value=0, max_value=400), st.booleans(), st.data())
def test_group_decisions_keep_the_ratio_properties(state, ratio, numa_aware, data):
    config = PolicyConfig(movable_ratio=ratio, numa_aware=numa_aware)
    target_blocks = data.draw(st.integers(min_value=online_bytes(state) // BS, max_value=len(state.blocks)))
    plan = plan_target(state, target_blocks * BS, config)
    assert plan.planned_bytes == plan.target_bytes
    assert_ratio_kept(state, plan, config)
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
        assert force or block.origin != ORIGIN_BOOT
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
    wanted = {i for i in named if by_index[i].state != ONLINE}
    assert plan.target_bytes == plan.current_bytes + len(wanted) * BS
