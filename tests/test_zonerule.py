"""The kernel's auto-movable rule (vmem_agent.core.zonerule) against a plain transliteration
of mm/memory_hotplug.c, and the cases the issue names.

`Reference` below walks every online block and every memory group for each question, as
the kernel's auto_movable_can_online_movable() walks zones and groups; ZoneCounters keeps
sums instead. The property tests check that the two agree on generated machines, for
single questions, for the zone of the next block, and for runs of blocks onlined in turn.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vmem_agent.core.zonerule import EXCEEDS, FITS, GROUP_HAS_KERNEL, RATIO_ZERO, SYSTEM, ZoneCounters

P = 32768  # pages of a 128 MiB block


@dataclass
class Reference:
    """The kernel's rule over a list of online blocks, computed from scratch every time."""

    ratio: int
    numa_aware: bool
    groups: dict = field(default_factory=dict)  # key -> (dynamic, node, max_pages)
    online: list = field(default_factory=list)  # (node, group, movable, early, pages)

    def counters(self) -> ZoneCounters:
        counters = ZoneCounters(self.ratio, self.numa_aware)
        for key, (dynamic, node, max_pages) in self.groups.items():
            counters.add_group(key, dynamic, node, max_pages)
        for node, group, movable, early, pages in self.online:
            counters.account(node, group, movable, early, pages)
        return counters

    def _group_pages(self, key, movable: bool) -> int:
        return sum(pages for _, group, is_movable, _, pages in self.online if group == key and is_movable == movable)

    def can_online_movable(self, nid, group, nr_pages: int) -> bool:
        """auto_movable_can_online_movable(nid, group, nr_pages); nid None is NUMA_NO_NODE."""
        kernel_early = sum(p for n, _, movable, early, p in self.online if (nid is None or n == nid) and not movable and early)
        movable_pages = sum(p for n, _, movable, _, p in self.online if (nid is None or n == nid) and movable)
        required = other_movable = 0
        for key, (dynamic, node, _) in self.groups.items():  # walk_dynamic_memory_groups(nid, ..., group, ...)
            if not dynamic or key == group or (nid is not None and node != nid):
                continue
            if not self.ratio:
                continue
            pages = self._group_pages(key, True) * 100 // self.ratio - self._group_pages(key, False)
            if pages > 0:
                required += pages
            other_movable += self._group_pages(key, True)
        if kernel_early <= required:
            return False
        kernel_early -= required
        movable_pages -= other_movable
        if group is not None and self.groups[group][0]:
            kernel_early += self._group_pages(group, False)
        movable_pages += nr_pages
        return movable_pages <= self.ratio * kernel_early // 100

    def movable_zone(self, nid, group, nr_pages: int) -> bool:
        """auto_movable_zone_for_pfn() chooses ZONE_MOVABLE (a dynamic group's unit: one block)."""
        if not self.ratio:
            return False
        if group is not None and not self.groups[group][0]:
            if self._group_pages(group, False):
                return False
            nr_pages = self.groups[group][2] - self._group_pages(group, True)
        if not self.can_online_movable(None, group, nr_pages):
            return False
        return not self.numa_aware or self.can_online_movable(nid, group, nr_pages)

    def online_block(self, nid, group) -> bool:
        movable = self.movable_zone(nid, group, P)
        self.online.append((nid, group, movable, False, P))
        return movable


@st.composite
def machines(draw) -> Reference:
    """Boot memory per node, DIMMs (static) and virtio-mem devices (dynamic) on nodes, partly online."""
    nodes = draw(st.integers(min_value=1, max_value=3))
    reference = Reference(draw(st.sampled_from([0, 50, 100, 301, 1000])), draw(st.booleans()))
    for node in range(nodes):
        for _ in range(draw(st.integers(min_value=0, max_value=8))):
            movable = draw(st.booleans()) and draw(st.booleans())
            reference.online.append((node, None, movable, not movable, P))
    for number in range(draw(st.integers(min_value=0, max_value=4))):
        dynamic = draw(st.booleans())
        node = draw(st.integers(min_value=0, max_value=nodes - 1))
        size = draw(st.integers(min_value=1, max_value=12))
        key = f"{'v' if dynamic else 'd'}{number}"
        reference.groups[key] = (dynamic, node, size * P)
        for _ in range(draw(st.integers(min_value=0, max_value=size))):
            reference.online.append((node, key, draw(st.booleans()), False, P))
    for _ in range(draw(st.integers(min_value=0, max_value=4))):  # ungrouped hot-plugged memory
        node = draw(st.integers(min_value=0, max_value=nodes - 1))
        reference.online.append((node, None, draw(st.booleans()), False, P))
    return reference


def keys_of(reference: Reference) -> list:
    nodes = sorted({node for node, *_ in reference.online} | {node for _, node, _ in reference.groups.values()} | {0})
    return [(node, group) for node in nodes for group in [None, *reference.groups]
            if group is None or reference.groups[group][1] == node]


@settings(max_examples=300, deadline=None)
@given(machines(), st.data())
def test_counters_answer_like_the_kernels_walk(reference, data):
    counters = reference.counters()
    node, group = data.draw(st.sampled_from(keys_of(reference)))
    pages = data.draw(st.sampled_from([1, P // 2, P, 3 * P, 40 * P]))
    for scope in (None, node):
        assert counters.can_online_movable(SYSTEM if scope is None else scope, group, pages) == \
            reference.can_online_movable(scope, group, pages), (scope, group, pages)
    assert counters.decide(node, group, P).movable == reference.movable_zone(node, group, P)


@settings(max_examples=300, deadline=None)
@given(machines(), st.data())
def test_a_run_decides_like_block_after_block(reference, data):
    """online_run() (O(1) per segment) against the kernel's rule applied block by block."""
    node, group = data.draw(st.sampled_from(keys_of(reference)))
    count = data.draw(st.integers(min_value=1, max_value=40))
    counters = reference.counters()
    run = [decision.movable for decision, units in counters.online_run(node, group, count, P) for _ in range(units)]
    expected = [reference.online_block(node, group) for _ in range(count)]
    assert run == expected
    after = reference.counters()
    assert (counters.kernel_early, counters.movable) == (after.kernel_early, after.movable)
    for other_node, other_group in keys_of(reference):  # the run left the counters as block-by-block would
        assert counters.room(SYSTEM, other_group) == after.room(SYSTEM, other_group)
        assert counters.room(other_node, other_group) == after.room(other_node, other_group)


def device(boot_blocks: int, device_blocks: int, ratio: int = 301) -> tuple[ZoneCounters, list[bool]]:
    counters = ZoneCounters(ratio, True)
    counters.account(0, None, False, True, boot_blocks * P)
    counters.add_group("virtio0", True, 0)
    zones = [d.movable for d, units in counters.online_run(0, "virtio0", device_blocks, P) for _ in range(units)]
    return counters, zones


def test_virtio_mem_kernel_memory_pays_for_its_own_movable_memory():
    """The issue's case: 64 GiB of virtio-mem on 4 GiB of boot memory gives about 51 GiB
    Movable (each kernel block of the device raises its own allowance), not 12 GiB."""
    _, zones = device(32, 512)
    assert zones.count(True) == 408  # 51 GiB
    assert zones[:96] == [True] * 96  # 301% of 4 GiB: 12.04 GiB before the first kernel block
    assert zones[96] is False


def test_two_gib_guest_with_eight_gib_of_virtio_mem():
    """What the real-kernel test compares block by block (tests/realkernel/test_agent_virtio_mem.py)."""
    _, zones = device(16, 64)
    assert "".join("M" if movable else "K" for movable in zones) == "M" * 48 + "KMMM" * 4


def test_other_devices_first_reserve_the_early_kernel_memory_their_movable_memory_needs():
    counters = ZoneCounters(100, False)
    counters.account(0, None, False, True, 4 * P)
    counters.add_group("a", True, 0)
    counters.add_group("b", True, 0)
    counters.account(0, "a", True, False, 3 * P)  # a needs 3 blocks of early kernel memory
    assert counters.room(SYSTEM, "b") == P  # 4 - 3 early blocks left for b
    assert counters.room(SYSTEM, "a") == P  # a itself: 4 early blocks, 3 Movable already
    counters.account(0, "a", True, False, P)
    assert counters.room(SYSTEM, "b") is None  # a's 4 Movable blocks reserve all 4
    assert counters.decide(0, "b", P) == (False, EXCEEDS, SYSTEM, P)


def test_a_dimm_is_all_movable_or_all_kernel():
    counters = ZoneCounters(100, True)
    counters.account(0, None, False, True, 4 * P)
    counters.add_group("big", False, 0, 5 * P)
    counters.add_group("small", False, 0, 4 * P)
    assert counters.decide(0, "big", P) == (False, EXCEEDS, SYSTEM, 5 * P)  # the whole DIMM is the `new`
    assert counters.decide(0, "small", P) == (True, FITS, None, 4 * P)
    counters.account(0, "small", False, False, P)  # once one block is kernel, the rest follows
    assert counters.decide(0, "small", P).code == GROUP_HAS_KERNEL


def test_hot_plugged_kernel_memory_outside_a_dynamic_group_raises_nothing():
    counters = ZoneCounters(100, True)
    counters.account(0, None, False, True, 2 * P)
    before = counters.room(SYSTEM)
    counters.account(0, None, False, False, 10 * P)
    counters.add_group("d", False, 0, 10 * P)
    counters.account(0, "d", False, False, 10 * P)
    assert counters.room(SYSTEM) == before == 2 * P


def test_numa_aware_checks_the_node_too():
    counters = ZoneCounters(301, True)
    counters.account(0, None, False, True, 8 * P)
    assert counters.decide(1, None, P) == (False, EXCEEDS, 1, P)  # node 1 has no early kernel memory
    assert ZoneCounters(301, False).decide(1, None, P).code == EXCEEDS  # nothing early at all
    relaxed = ZoneCounters(301, False)
    relaxed.account(0, None, False, True, 8 * P)
    assert relaxed.decide(1, None, P).movable


@pytest.mark.parametrize("group", [None, "v", "d"])
def test_ratio_zero_puts_everything_in_a_kernel_zone(group):
    counters = ZoneCounters(0, True)
    counters.account(0, None, False, True, 64 * P)
    counters.add_group("v", True, 0)
    counters.add_group("d", False, 0, P)
    assert counters.decide(0, group, P).code == RATIO_ZERO
    assert [(d.code, units) for d, units in counters.online_run(0, group, 3, P)] == [(RATIO_ZERO, 3)]
