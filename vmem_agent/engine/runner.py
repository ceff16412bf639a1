"""The resize engine: snapshot, plan, apply, re-plan, reload kdump once.

The CLI's commands call these functions; they hold no state between runs.
A round applies one plan; blocks that failed are excluded and the next round plans
again on a fresh snapshot, so a busy block is replaced by the next candidate. When the
plan empties DIMMs as a whole and a block of one fails, the blocks of that DIMM offlined
in this run are onlined back into their zones and the next round picks another DIMM:
a DIMM left partly offline gives the host nothing. A writer stuck in the kernel after
SIGKILL ends the run at once: it holds the kernel's device hotplug lock, so every
further write would only queue behind it.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass

from ..core import policy
from ..core.model import OFFLINE, ONLINE, ZONE_MOVABLE, MemoryState, device_states
from ..core.policy import Note
from ..errors import UsageError, VmemError
from .executor import (
    ALREADY,
    DONE,
    FAILED,
    MAX_PLANNING_ROUNDS,
    NOT_ATTEMPTED,
    TIMED_OUT,
    BlockResult,
    BlockWriter,
    Deadline,
    RunResult,
)
from .kdump import KdumpConfig, reload_after_change
from ..limits import OFFLINE_BLOCK_TIMEOUT_S, RESIZE_TIMEOUT_S
from ..paths import lock_path as default_lock_path
from .lock import WriterLock
from ..core.blocklists import BlockList, parse_blocks_or_size, select_present
from ..core.sizes import format_size, resolve_resize_target

log = logging.getLogger(__name__)

# Note codes of the engine (the policy's are in core.policy).
N_TARGET_ROUNDED = "target-rounded"  # facts: text (worded by core.sizes)
N_DEADLINE_EXPIRED = "deadline-expired"  # facts: timeout
N_ROUNDS_EXHAUSTED = "planning-rounds-exhausted"  # facts: rounds
N_DIMM_ROLLED_BACK = "dimm-rolled-back"  # blocks: onlined again; facts: group, failed_block
N_WRITER_STUCK = "writer-stuck"  # blocks: the block; facts: pid
N_KDUMP_SKIPPED_STUCK = "kdump-not-reloaded-writer-stuck"
# Reason of a rollback write.
R_ROLLBACK = "rollback"  # facts: group, failed_block


@dataclass(frozen=True)
class RunOptions:
    """Everything a writing command can tune; defaults are the production values."""

    policy: policy.PolicyConfig = policy.PolicyConfig()
    kdump: KdumpConfig = KdumpConfig()
    block_timeout: float = OFFLINE_BLOCK_TIMEOUT_S
    timeout: float = RESIZE_TIMEOUT_S
    lock_path: str | None = None
    lock_wait: float = 0.0
    dry_run: bool = False


def plan_resize(sysfs, size_text: str, options: RunOptions):
    """The plan a resize would start with, and the resolved target (no writes)."""
    state = sysfs.snapshot()
    target = resolve_resize_target(state, size_text)
    plan = policy.plan_target(state, target.bytes, options.policy, sysfs.memory_figures())
    return state, target, plan


def resize(sysfs, size_text: str, options: RunOptions, state: MemoryState | None = None) -> RunResult:
    """Bring online memory to `size_text`; `state`: a snapshot the caller has just taken (the daemon's)."""
    state = state or sysfs.snapshot()
    target = resolve_resize_target(state, size_text)
    result = RunResult(target_bytes=target.bytes, initial_online_bytes=state.online_memory_bytes, dry_run=options.dry_run)
    if target.note:
        result.add_note(Note(N_TARGET_ROUNDED, (), (("text", target.note),)))

    def make_plan(current: MemoryState, excluded: frozenset[int]):
        return policy.plan_target(current, target.bytes, options.policy, sysfs.memory_figures(), excluded)

    return _run(sysfs, state, make_plan, result, options)


def change_blocks(sysfs, operation: str, spec: str, options: RunOptions, force: bool = False,
                  state: MemoryState | None = None) -> RunResult:
    """`online`/`offline` of explicit blocks (`12`, `12-20`, `3,5-7`) or of an amount (`1G`)."""
    request = parse_blocks_or_size(spec)
    state = state or sysfs.snapshot()
    result = RunResult(target_bytes=None, initial_online_bytes=state.online_memory_bytes, dry_run=options.dry_run)
    if isinstance(request, BlockList):
        indexes = select_present(request, [block.index for block in state.blocks])
        request = indexes
    else:
        indexes = None
        request = request.bytes
        if request % state.block_size:
            raise UsageError(f"{spec!r} is not a multiple of the {format_size(state.block_size)} block size")
        if request == 0:
            raise UsageError(f"{spec!r}: nothing to {operation}")

        # The amount is fixed against the start: later rounds plan only what is missing.
        online = state.online_memory_bytes
        goal = online + request if operation == "online" else online - request

    def make_plan(current: MemoryState, excluded: frozenset[int]):
        amount = request
        if indexes is None:
            online = current.online_memory_bytes
            amount = max(0, goal - online if operation == "online" else online - goal)
        if operation == "online":
            return policy.plan_online(current, amount, options.policy, excluded)
        return policy.plan_offline(current, amount, options.policy, sysfs.memory_figures(), excluded, force=force)

    return _run(sysfs, state, make_plan, result, options, one_round=indexes is not None)


class StoppedAfterWrites(VmemError):
    """A run that had changed blocks ended with an error; `result` still says what was written."""

    def __init__(self, result: RunResult, cause: Exception):
        self.result = result
        self.cause = cause if isinstance(cause, VmemError) else f"internal error: {type(cause).__name__}: {cause}"
        super().__init__(f"stopped after changing blocks: {self.cause}")
        result.reached = False
        result.final_online_bytes = result.initial_online_bytes + sum(
            (b.end - b.start + 1) * (-1 if b.operation == "offline" else 1) for b in result.blocks if b.changed)

    @property
    def exit_code(self) -> int:
        return self.result.exit_code


def _run(sysfs, state: MemoryState, make_plan, result: RunResult, options: RunOptions, one_round: bool = False) -> RunResult:
    deadline = Deadline(options.timeout)  # bounds the lock wait, the writes and the kdump reload
    if options.dry_run:
        plan = make_plan(state, frozenset())
        for note in plan.notes:
            result.add_note(note)
        result.blocks.extend(
            BlockResult(a.index, a.start, a.end, a.write, NOT_ATTEMPTED, reason=a.reason, unit=a.unit) for a in plan.actions
        )
        result.final_online_bytes = plan.planned_bytes
        result.planned_shortfall_bytes = plan.shortfall_bytes
        result.reached = plan.shortfall_bytes == 0
        planned = {a.index: (ONLINE if a.kind == policy.KIND_ONLINE else OFFLINE) for a in plan.actions}
        result.devices = device_states(state, planned)
        return result
    lock_path = options.lock_path or default_lock_path(sysfs.root)
    with WriterLock(lock_path, min(options.lock_wait, deadline.remaining())) as lock:
        try:
            _apply_rounds(sysfs, state, make_plan, result, options, one_round, lock, deadline)
            final = sysfs.snapshot()
        except Exception as exc:
            if not result.changed:
                raise
            log.debug("run stopped after writes", exc_info=True)
            raise StoppedAfterWrites(result, exc) from None
        _record_zones(result, final)
        result.final_online_bytes = final.online_memory_bytes
        result.reached = _reached(result, final)
        result.devices = device_states(final)
        if result.changed and result.stuck_writer is not None:
            result.add_note(Note(N_KDUMP_SKIPPED_STUCK))
        elif result.changed:
            result.kdump = reload_after_change(sysfs, options.kdump, time_left=deadline.remaining())
            level = logging.WARNING if result.kdump.action == "failed" else logging.INFO
            log.log(level, "kdump reload %s: %s", result.kdump.action, result.kdump.reason)
    return result


def _record_zones(result: RunResult, final: MemoryState) -> None:
    """Each onlined block's zone, from the final snapshot (one scan, not one read per block)."""
    zones = {block.index: block.zone for block in final.blocks}
    result.blocks[:] = [
        dataclasses.replace(block, zone=zones.get(block.index))
        if block.operation != policy.WRITE_OFFLINE and block.outcome in (DONE, ALREADY) else block
        for block in result.blocks
    ]


def _reached(result: RunResult, final: MemoryState) -> bool:
    if result.target_bytes is not None:
        return final.online_memory_bytes == result.target_bytes
    # Manual online/offline: every planned write succeeded and nothing was left unplanned.
    return result.planned_shortfall_bytes == 0 and all(r.outcome in (DONE, ALREADY) for r in result.blocks)


def _apply_rounds(sysfs, state, make_plan, result: RunResult, options: RunOptions, one_round: bool, lock,
                  deadline: Deadline) -> None:
    writer = BlockWriter(sysfs, block_timeout=options.block_timeout)
    excluded: set[int] = set()
    for _round in range(MAX_PLANNING_ROUNDS):
        plan = make_plan(state, frozenset(excluded))
        result.planned_shortfall_bytes = plan.shortfall_bytes
        for note in plan.notes:
            result.add_note(note)
        if not plan.actions:
            return
        offlined_in_unit: dict[str, list] = {}  # DIMM -> this round's actions that took its blocks offline
        for position, action in enumerate(plan.actions):
            if deadline.expired:
                result.add_note(Note(N_DEADLINE_EXPIRED, (), (("timeout", options.timeout),)))
                result.blocks.extend(
                    BlockResult(a.index, a.start, a.end, a.write, NOT_ATTEMPTED, message="overall deadline expired",
                                reason=a.reason, unit=a.unit)
                    for a in plan.actions[position:]
                )
                return
            outcome = writer.apply(action.index, action.start, action.end, action.write, deadline,
                                   reason=action.reason, unit=action.unit)
            log.info("memory block %d: %s %s", action.index, action.write, outcome.outcome)
            result.blocks.append(outcome)
            if outcome.stuck_pid is not None:
                _stop_for_stuck_writer(result, action.index, outcome.stuck_pid, lock)
                return
            if outcome.outcome in (FAILED, TIMED_OUT):
                excluded.add(action.index)
                if action.unit is not None:
                    _roll_back(writer, result, action, offlined_in_unit.get(action.unit, []))
                    excluded.update(block.index for block in state.blocks if block.group == action.unit)
                    break  # plan again: the next DIMM
            elif outcome.outcome == DONE and action.unit is not None:
                offlined_in_unit.setdefault(action.unit, []).append(action)
        if one_round:
            return
        state = sysfs.snapshot()
    result.add_note(Note(N_ROUNDS_EXHAUSTED, (), (("rounds", MAX_PLANNING_ROUNDS),)))


def _roll_back(writer: BlockWriter, result: RunResult, failed, offlined: list) -> None:
    """Online the blocks of a DIMM that this run offlined, each into the zone it came from."""
    if not offlined:
        return
    why = policy.Reason(R_ROLLBACK, (("group", failed.unit), ("failed_block", failed.index)))
    for action in sorted(offlined, key=lambda a: a.index):
        operation = _ONLINE_INTO.get(action.zone, policy.WRITE_ONLINE_KERNEL) if action.zone else policy.WRITE_ONLINE
        outcome = writer.apply(action.index, action.start, action.end, operation, Deadline(writer.block_timeout),
                               reason=why, unit=failed.unit, rollback=True)
        log.info("memory block %d: %s %s (rollback)", action.index, operation, outcome.outcome)
        result.blocks.append(outcome)
    result.add_note(Note(N_DIMM_ROLLED_BACK, tuple(sorted(a.index for a in offlined)),
                         (("group", failed.unit), ("failed_block", failed.index))))


_ONLINE_INTO = {ZONE_MOVABLE: policy.WRITE_ONLINE_MOVABLE}


def _stop_for_stuck_writer(result: RunResult, index: int, pid: int, lock: WriterLock) -> None:
    """No more writes: the writer holds the device hotplug lock; the lock file names it for later runs."""
    result.stuck_writer = (index, pid)
    result.add_note(Note(N_WRITER_STUCK, (index,), (("pid", pid),)))
    lock.name_holder(pid, f"offline writer of memory block {index}, stuck in the kernel")
    log.error("memory block %d: offline writer pid %d is stuck in the kernel; stopping the run", index, pid)
