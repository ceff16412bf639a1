"""The kernel's `auto-movable` online policy (mm/memory_hotplug.c), as pure code.

One implementation serves the agent's zone choice (core.policy) and the test suite's fake
kernel (tests/fakesysfs), so the two cannot drift apart; the real-kernel tests compare
both with Linux itself. The kernel's rule, restated:

- A block may go to ZONE_MOVABLE while `movable + new <= ratio% * kernel_early`, where
  kernel_early is the memory present since boot in kernel zones (DMA, DMA32, Normal) and
  movable all memory in ZONE_MOVABLE. Hot-plugged kernel memory does not raise the
  allowance. The check is made system-wide and, when NUMA aware, for the block's node.
- Memory groups. A static group (one ACPI DIMM) is all Movable or all kernel: once any of
  it is in a kernel zone the rest follows, and `new` is all of the group not yet Movable.
  A dynamic group (one virtio-mem device) is decided per unit (a memory block; the
  kernel's unit is the device block when that is bigger, see UNIT below): its own
  kernel memory raises its own allowance, while every *other* dynamic group in the scope
  first reserves the early kernel memory its Movable memory needs
  (`movable * 100 / ratio - its kernel memory`) and has its Movable memory left out.
- A ratio of 0 sends everything to a kernel zone.

Counts are in 4 KiB pages (PAGE), so that the kernel's integer divisions round the same
way; where the kernel's pages are bigger the result differs by less than one of them.
"""

from __future__ import annotations

from typing import Hashable, NamedTuple

PAGE = 4096
# Where a check fails: SYSTEM, or a node id (int, or None for an unknown node).
SYSTEM = "system"

# Decision codes, shared with the policy's reasons.
FITS = "fits"  # Movable: the new memory fits the ratio everywhere it is checked
EXCEEDS = "exceeds"  # kernel zone: Movable would exceed the ratio (see `scope`)
GROUP_HAS_KERNEL = "group-has-kernel"  # kernel zone: a static group already has kernel memory
RATIO_ZERO = "ratio-zero"  # kernel zone: a ratio of 0 allows no Movable memory


class Decision(NamedTuple):
    movable: bool
    code: str
    scope: object = None  # for EXCEEDS: SYSTEM or the node whose check failed
    pages: int = 0  # the `new` the checks were made for (a static group: all of it not yet Movable)


class GroupCounts:
    """One memory group: online pages in kernel zones and in ZONE_MOVABLE; a static group's size."""

    __slots__ = ("dynamic", "node", "kernel", "movable", "max_pages")

    def __init__(self, dynamic: bool, node, max_pages: int = 0):
        self.dynamic = dynamic
        self.node = node
        self.kernel = 0
        self.movable = 0
        self.max_pages = max_pages


class ZoneCounters:
    """The kernel's zone statistics and memory groups, kept up to date block by block.

    `account` records an online block; `room` and `decide` answer what the kernel's
    auto_movable_can_online_movable() and auto_movable_zone_for_pfn() would. The sums over
    other dynamic groups are kept per scope, so a question costs O(1), not O(groups).
    """

    __slots__ = ("ratio", "numa_aware", "kernel_early", "movable", "groups", "_required", "_dynamic_movable",
                 "_kernel_early_total", "_movable_total")

    def __init__(self, ratio: int, numa_aware: bool):
        self.ratio = ratio
        self.numa_aware = numa_aware
        self.kernel_early: dict = {}  # node -> early pages online in kernel zones
        self.movable: dict = {}  # node -> pages online in ZONE_MOVABLE
        self.groups: dict[Hashable, GroupCounts] = {}
        # Per scope (SYSTEM and each node), over all dynamic groups in it: the early kernel
        # pages they reserve, and their Movable pages.
        self._required: dict = {}
        self._dynamic_movable: dict = {}
        self._kernel_early_total = 0
        self._movable_total = 0

    def add_group(self, key: Hashable, dynamic: bool, node, max_pages: int = 0) -> None:
        """Register a memory group (before accounting its blocks); a static one with its full size."""
        if key not in self.groups:
            self.groups[key] = GroupCounts(dynamic, node, max_pages)

    def account(self, node, group: Hashable | None, movable: bool, early: bool, pages: int) -> None:
        """`pages` more online on `node`: in ZONE_MOVABLE, or in a kernel zone (early: present since boot)."""
        counts = self.groups.get(group) if group is not None else None
        if counts is not None and counts.dynamic:
            before = self._group_required(counts)
        if movable:
            self.movable[node] = self.movable.get(node, 0) + pages
            self._movable_total += pages
        elif early:
            self.kernel_early[node] = self.kernel_early.get(node, 0) + pages
            self._kernel_early_total += pages
        if counts is None:
            return
        if movable:
            counts.movable += pages
        else:
            counts.kernel += pages
        if counts.dynamic:
            change = self._group_required(counts) - before
            for scope in (SYSTEM, counts.node):
                self._required[scope] = self._required.get(scope, 0) + change
                if movable:
                    self._dynamic_movable[scope] = self._dynamic_movable.get(scope, 0) + pages

    def _group_required(self, counts: GroupCounts) -> int:
        """Early kernel pages a dynamic group needs for its Movable memory (never negative)."""
        if not self.ratio:
            return 0
        return max(0, counts.movable * 100 // self.ratio - counts.kernel)

    def room(self, scope, group: Hashable | None = None) -> int | None:
        """The most pages of `group` that could go Movable now in `scope` (SYSTEM or a node).

        None when the other dynamic groups' reservations leave no early kernel memory at
        all; a negative number when there is none left to take.
        """
        if scope == SYSTEM:
            kernel_early = self._kernel_early_total
            movable = self._movable_total
        else:
            kernel_early = self.kernel_early.get(scope, 0)
            movable = self.movable.get(scope, 0)
        required = self._required.get(scope, 0)
        movable -= self._dynamic_movable.get(scope, 0)
        counts = self.groups.get(group) if group is not None else None
        own_kernel = 0
        if counts is not None and counts.dynamic:
            own_kernel = counts.kernel
            if scope == SYSTEM or counts.node == scope:  # the kernel's walk leaves the group itself out
                required -= self._group_required(counts)
                movable += counts.movable
        if kernel_early <= required:
            return None
        return self.ratio * (kernel_early - required + own_kernel) // 100 - movable

    def can_online_movable(self, scope, group: Hashable | None, pages: int) -> bool:
        """auto_movable_can_online_movable(): `pages` more Movable memory of `group` keep `scope` in the ratio."""
        room = self.room(scope, group)
        return room is not None and pages <= room

    def decide(self, node, group: Hashable | None, pages: int) -> Decision:
        """auto_movable_zone_for_pfn() for onlining one unit of `pages` of `group` on `node`.

        UNIT: a dynamic group's unit is taken to be the block being onlined, as for
        virtio-mem in sub-block mode (device block up to a memory block, the usual case);
        the kernel's "once kernel, stay kernel" inside a bigger unit is not modelled.
        """
        if not self.ratio:
            return Decision(False, RATIO_ZERO)
        counts = self.groups.get(group) if group is not None else None
        if counts is not None and not counts.dynamic:
            if counts.kernel:
                return Decision(False, GROUP_HAS_KERNEL)
            if counts.max_pages:  # all of the group not yet Movable (a group of unknown size: this unit)
                pages = counts.max_pages - counts.movable
        if not self.can_online_movable(SYSTEM, group, pages):
            return Decision(False, EXCEEDS, SYSTEM, pages)
        if self.numa_aware and not self.can_online_movable(node, group, pages):
            return Decision(False, EXCEEDS, node, pages)
        return Decision(True, FITS, None, pages)

    def online_run(self, node, group: Hashable | None, count: int, pages: int) -> list[tuple[Decision, int]]:
        """Decide and account `count` units of `pages` of `group` on `node`, onlined one after another.

        The same as decide() then account() for each unit in turn, as (decision, units)
        segments, in O(1) per segment. Within such a run only the group's own terms move,
        and they move every scope alike: a unit fits while `ratio * kernel - 100 * movable`
        (its slack) is at least `100 * pages` in every scope; a Movable unit lowers each
        slack by that much, a kernel unit of a dynamic group raises each by `ratio * pages`
        (the group's own kernel memory counts everywhere), and a kernel unit of anything
        else changes nothing. So the smallest slack alone decides the run.
        """
        counts = self.groups.get(group) if group is not None else None
        if count == 1 or not self.ratio or (counts is not None and not counts.dynamic):
            decision = self.decide(node, group, pages)
            self.account(node, group, decision.movable, False, pages * count)
            return [(decision, count)]
        dynamic = counts is not None
        ratio = self.ratio
        scopes = [SYSTEM, node] if self.numa_aware else [SYSTEM]
        slacks: list[int | None] = []
        for scope in scopes:
            room = self.room(scope, group)
            if room is None:  # other groups' reservations leave this scope no early kernel memory
                slacks.append(None)
                continue
            kernel = self.early_kernel_pages(scope) - self._required.get(scope, 0) + (counts.kernel if dynamic else 0)
            if dynamic and (scope == SYSTEM or counts.node == scope):
                kernel += self._group_required(counts)
            slacks.append(ratio * kernel - 100 * (ratio * kernel // 100 - room))
        needed = 100 * pages
        segments: list[tuple[Decision, int]] = []
        movable_units = 0
        left = count
        if None in slacks:
            failed = scopes[slacks.index(None)]
            segments.append((Decision(False, EXCEEDS, failed, pages), left))
            left = 0
        else:
            lowest = min(slacks)
            offsets = [slack - lowest for slack in slacks]
        while left:
            fitting = min(left, lowest // needed) if lowest >= needed else 0
            if fitting:
                segments.append((Decision(True, FITS, None, pages), fitting))
                movable_units += fitting
                lowest -= fitting * needed
                left -= fitting
                if not left:
                    break
            failed = next(scope for scope, offset in zip(scopes, offsets) if lowest + offset < needed)
            units = min(left, -(-(needed - lowest) // (ratio * pages))) if dynamic else left
            segments.append((Decision(False, EXCEEDS, failed, pages), units))
            if dynamic:
                lowest += units * ratio * pages
            left -= units
        if movable_units:
            self.account(node, group, True, False, movable_units * pages)
        if count - movable_units:
            self.account(node, group, False, False, (count - movable_units) * pages)
        return segments

    def early_kernel_pages(self, scope) -> int:
        """Early kernel pages in `scope`, for reasons that name the base of the ratio."""
        return self._kernel_early_total if scope == SYSTEM else self.kernel_early.get(scope, 0)
