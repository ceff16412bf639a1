"""The resize engine: snapshot, plan, apply, re-plan, reload kdump once.

The CLI's commands call these functions; they hold no state between runs.
A round applies one plan; blocks that failed are excluded and the next round plans
again on a fresh snapshot, so a busy block is replaced by the next candidate.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from ..core import policy
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
from ..core.model import MemoryState
from ..core.sizes import format_size, parse_size, resolve_target

log = logging.getLogger(__name__)


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


def resolve_resize_target(state: MemoryState, size_text: str):
    present = state.block_size * len(state.blocks)
    return resolve_target(parse_size(size_text), state.online_bytes, state.block_size, present)


def plan_resize(sysfs, size_text: str, options: RunOptions):
    """The plan a resize would start with, and the resolved target (no writes)."""
    state = sysfs.snapshot()
    target = resolve_resize_target(state, size_text)
    plan = policy.plan_target(state, target.bytes, options.policy, sysfs.memory_figures())
    return state, target, plan


def resize(sysfs, size_text: str, options: RunOptions) -> RunResult:
    state = sysfs.snapshot()
    target = resolve_resize_target(state, size_text)
    result = RunResult(target_bytes=target.bytes, initial_online_bytes=state.online_bytes, dry_run=options.dry_run)
    if target.note:
        result.notes.append(target.note)

    def make_plan(current: MemoryState, excluded: frozenset[int]):
        return policy.plan_target(current, target.bytes, options.policy, sysfs.memory_figures(), excluded)

    return _run(sysfs, state, make_plan, result, options)


def change_blocks(sysfs, operation: str, spec: str, options: RunOptions, force: bool = False) -> RunResult:
    """`online`/`offline` of explicit blocks (`12`, `12-20`, `3,5-7`) or of an amount (`1G`)."""
    request = parse_blocks_or_size(spec)
    state = sysfs.snapshot()
    result = RunResult(target_bytes=None, initial_online_bytes=state.online_bytes, dry_run=options.dry_run)
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
        goal = state.online_bytes + request if operation == "online" else state.online_bytes - request

    def make_plan(current: MemoryState, excluded: frozenset[int]):
        amount = request
        if indexes is None:
            amount = max(0, goal - current.online_bytes if operation == "online" else current.online_bytes - goal)
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
        result.notes.extend(plan.notes)
        result.blocks.extend(
            BlockResult(a.index, a.start, a.end, a.write, NOT_ATTEMPTED, message=a.reason) for a in plan.actions
        )
        result.final_online_bytes = plan.planned_bytes
        result.planned_shortfall_bytes = plan.shortfall_bytes
        result.reached = plan.shortfall_bytes == 0
        return result
    lock_path = options.lock_path or default_lock_path(sysfs.root)
    with WriterLock(lock_path, min(options.lock_wait, deadline.remaining())):
        try:
            _apply_rounds(sysfs, state, make_plan, result, options, one_round, deadline)
            final = sysfs.snapshot()
        except Exception as exc:
            if not result.changed:
                raise
            log.debug("run stopped after writes", exc_info=True)
            raise StoppedAfterWrites(result, exc) from None
        result.final_online_bytes = final.online_bytes
        result.reached = _reached(result, final)
        if result.changed:
            result.kdump = reload_after_change(sysfs, options.kdump, time_left=deadline.remaining())
            level = logging.WARNING if result.kdump.action == "failed" else logging.INFO
            log.log(level, "kdump reload %s: %s", result.kdump.action, result.kdump.reason)
    return result


def _reached(result: RunResult, final: MemoryState) -> bool:
    if result.target_bytes is not None:
        return final.online_bytes == result.target_bytes
    # Manual online/offline: every planned write succeeded and nothing was left unplanned.
    return result.planned_shortfall_bytes == 0 and all(r.outcome in (DONE, ALREADY) for r in result.blocks)


def _apply_rounds(sysfs, state, make_plan, result: RunResult, options: RunOptions, one_round: bool,
                  deadline: Deadline) -> None:
    writer = BlockWriter(sysfs, block_timeout=options.block_timeout)
    excluded: set[int] = set()
    for _round in range(MAX_PLANNING_ROUNDS):
        plan = make_plan(state, frozenset(excluded))
        result.planned_shortfall_bytes = plan.shortfall_bytes
        for note in plan.notes:
            if note not in result.notes:
                result.notes.append(note)
        if not plan.actions:
            return
        for position, action in enumerate(plan.actions):
            if deadline.expired:
                result.notes.append(f"stopped: the overall deadline of {options.timeout:g}s expired")
                result.blocks.extend(
                    BlockResult(a.index, a.start, a.end, a.write, NOT_ATTEMPTED, message="overall deadline expired")
                    for a in plan.actions[position:]
                )
                return
            outcome = writer.apply(action.index, action.start, action.end, action.write, deadline)
            log.info("memory block %d: %s %s", action.index, action.write, outcome.outcome)
            result.blocks.append(outcome)
            if outcome.outcome in (FAILED, TIMED_OUT):
                excluded.add(action.index)
        if one_round:
            return
        state = sysfs.snapshot()
    result.notes.append(f"stopped after {MAX_PLANNING_ROUNDS} planning rounds")
