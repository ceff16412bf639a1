"""Status output: one row model drives the human table and the JSON document.

The JSON layout is a stable interface for scripts (docs/json.md); bump
STATUS_SCHEMA_VERSION on any incompatible change.
"""

from __future__ import annotations

import json
from typing import Callable, NamedTuple

from ..core.model import BlockRange, MemoryState, format_block_list, group_ranges, origin_key
from ..core.sizes import format_size

STATUS_SCHEMA_VERSION = 1


class Column(NamedTuple):
    header: str
    cell: Callable[[BlockRange], str]
    right_aligned: bool = False


def _zones_cell(zones: tuple[str, ...] | None) -> str:
    return "/".join(zones) if zones else "-"


def _node_cell(node: int | None) -> str:
    return "-" if node is None else str(node)


COLUMNS = (
    Column("RANGE", lambda r: f"0x{r.start:016x}-0x{r.end:016x}"),
    Column("SIZE", lambda r: format_size(r.size), right_aligned=True),
    Column("STATE", lambda r: r.first.state),
    Column("BLOCK", lambda r: r.block_label, right_aligned=True),
    Column("NODE", lambda r: _node_cell(r.first.node), right_aligned=True),
    Column("ZONES", lambda r: _zones_cell(r.first.zones)),
    Column("ORIGIN", lambda r: r.first.origin if r.first.group is None else f"{r.first.origin} ({r.first.group})"),
)


def render_table(state: MemoryState, per_block: bool = False) -> str:
    rows = [[column.header for column in COLUMNS]]
    ranges = group_ranges(state.blocks, merge=not per_block, key=origin_key)
    rows.extend([column.cell(rng) for column in COLUMNS] for rng in ranges)
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    lines = []
    for row in rows:
        cells = [
            cell.rjust(width) if column.right_aligned else cell.ljust(width)
            for cell, width, column in zip(row, widths, COLUMNS)
        ]
        lines.append(" ".join(cells).rstrip())
    return "\n".join(lines)


def _yes_no_unknown(value: bool | None, yes: str = "yes", no: str = "no") -> str:
    return "unknown" if value is None else (yes if value else no)


def render_summary(state: MemoryState, onlining: dict | None = None) -> str:
    params = state.params
    zones = ", ".join(f"{zone} {format_size(size)}" for zone, size in state.online_bytes_by_zone().items())
    nodes = ", ".join(
        f"{'node' + str(node) if node is not None else 'unknown node'} {format_size(size)}"
        for node, size in state.online_bytes_by_node().items()
    )
    policy = params.online_policy or "unknown"
    if params.auto_movable_ratio is not None:
        policy += f" (auto_movable_ratio {params.auto_movable_ratio}%)"
    pairs = [
        ("Memory block size:", format_size(state.block_size)),
        ("Total online memory:", format_size(state.online_bytes)),
        ("Total offline memory:", format_size(state.offline_bytes)),
        ("Online by zone:", zones or "-"),
        ("Online by node:", nodes or "-"),
        ("auto_online_blocks:", state.auto_online_blocks or "unknown"),
        ("online_policy:", policy),
        ("crash_hotplug:", _yes_no_unknown(state.crash_hotplug, "1 (kernel updates the crash image)", "0")),
        ("kdump loaded:", _yes_no_unknown(state.kexec_crash_loaded)),
    ]
    if onlining is not None:
        pairs.extend(_onlining_pairs(onlining))
    width = max(len(label) for label, _ in pairs)
    return "\n".join(f"{label:<{width}} {value}" for label, value in pairs)


def _onlining_pairs(onlining: dict) -> list[tuple[str, str]]:
    """`Onlined by:` and `Daemon:` lines from the facts cli.commands gathers."""
    daemon = onlining.get("daemon")
    onlined_by = onlining.get("onlined_by") or "nobody: hot-added memory stays offline until onlined by hand"
    others = (daemon or {}).get("other_onliners") or []
    if others:
        onlined_by += f"; also {', '.join(others)} (vmem-agent doctor)"
    if daemon:
        mode = "no target, every hot-added block is onlined" if daemon.get("target_bytes") is None else (
            f"target {format_size(daemon['target_bytes'])}")
        job = daemon.get("job")
        busy = f", {job['kind']} job running for {job['seconds']:g}s" if job else ""
        failed = daemon.get("blocks_failed") or []
        failing = f", blocks {format_block_list(failed)} failed (retried at the next reconcile)" if failed else ""
        daemon_text = f"running (pid {daemon['pid']}), {mode}{busy}{failing}"
    elif not onlining.get("daemon_access", True):
        daemon_text = "running (its socket is not accessible to this user)"
    else:
        stored = onlining.get("stored_target_bytes")
        daemon_text = "not running" + (f" (target {format_size(stored)} stored for it)" if stored else "")
    return [("Onlined by:", onlined_by), ("Daemon:", daemon_text)]


def _blocks_json(blocks, legacy: bool) -> str:
    """The `blocks` array as JSON text, one template fill per block.

    A status of 65,536 blocks would spend more time building and encoding one dict per
    block than scanning sysfs. Besides the integers, a block's fields take only a few
    distinct combinations, so each combination is encoded once by the json module and
    reused; the text is what json.dumps would give for the equivalent dicts.
    """
    tails: dict[tuple, str] = {}
    parts = []
    append = parts.append
    for block in blocks:
        key = (block.state, block.zones, block.node, block.origin, block.group, block.removable, block.phys_device)
        tail = tails.get(key)
        if tail is None:
            fields = {"state": block.state, "zones": block.zones, "node": block.node, "origin": block.origin,
                      "group": block.group}
            if legacy:
                fields.update(removable=block.removable, phys_device=block.phys_device)
            tail = tails[key] = json.dumps(fields, separators=(",", ":"))[1:]
        append('{"index":%d,"start":%d,"end":%d,%s' % (block.index, block.start, block.start + block.size - 1, tail))
    return "[" + ",".join(parts) + "]"


def status_document(state: MemoryState, onlining: dict | None = None) -> dict:
    """The `status --json` document but its `blocks` array (see render_status_json)."""
    params = state.params
    onlining = onlining or {}
    return {
        "memory": {
            "schema_version": STATUS_SCHEMA_VERSION,
            "block_size_bytes": state.block_size,
            "online_bytes": state.online_bytes,
            "offline_bytes": state.offline_bytes,
            "online_bytes_by_zone": state.online_bytes_by_zone(),
            "online_bytes_by_node": {str(node): size for node, size in state.online_bytes_by_node().items()},
            "auto_online_blocks": state.auto_online_blocks,
            "online_policy": params.online_policy,
            "auto_movable_ratio": params.auto_movable_ratio,
            "auto_movable_numa_aware": params.auto_movable_numa_aware,
            "memmap_on_memory": params.memmap_on_memory,
            "crash_hotplug": state.crash_hotplug,
            "kexec_crash_loaded": state.kexec_crash_loaded,
            "zones_supported": state.zones_supported,
            "ranges": [
                {
                    "start": rng.start,
                    "end": rng.end,
                    "size": rng.size,
                    "state": rng.first.state,
                    "first_block": rng.first.index,
                    "last_block": rng.last.index,
                    "node": rng.first.node,
                    "zones": rng.first.zones,
                }
                for rng in group_ranges(state.blocks)
            ],
            "warnings": list(state.warnings),
            "onlined_by": onlining.get("onlined_by"),
            "daemon": onlining.get("daemon"),
            "stored_target_bytes": onlining.get("stored_target_bytes"),
        }
    }


def render_json(document: dict) -> str:
    """Compact JSON: json's C encoder only runs without indent, and status can be 10 MB."""
    return json.dumps(document, separators=(",", ":"))


def render_status_json(state: MemoryState, legacy: bool = False, onlining: dict | None = None) -> str:
    """`status --json`: the document with the pre-encoded `blocks` array spliced in last."""
    head = render_json(status_document(state, onlining))
    assert head.endswith("}}")
    return f'{head[:-2]},"blocks":{_blocks_json(state.blocks, legacy)}}}}}'



def _block_label(low, high) -> str:
    return str(low.index) if low.index == high.index else f"{low.index}-{high.index}"


def _runs(items, key):
    """Consecutive items with the same key and neighbouring indexes (either direction),
    as (lowest, highest, count): plans and results go upwards to grow, downwards to shrink."""
    runs = []
    for item in items:
        if runs and key(runs[-1][1]) == key(item) and abs(item.index - runs[-1][1].index) == 1:
            runs[-1] = (runs[-1][0], item, runs[-1][2] + 1)
        else:
            runs.append((item, item, 1))
    return [(first, last, count) if first.index <= last.index else (last, first, count) for first, last, count in runs]


def _gap_text(reached_bytes: int, target_bytes: int) -> str:
    side = "short of" if reached_bytes < target_bytes else "above"
    return f"{format_size(abs(target_bytes - reached_bytes))} {side} the target"


def render_plan(plan, block_size: int) -> str:
    """The plan as a table, neighbouring blocks with the same write merged into one row."""
    header = ("ACTION", "BLOCKS", "RANGE", "SIZE", "ZONE", "WRITE", "REASON")
    rows = [header]
    for low, high, count in _runs(plan.actions, key=lambda a: (a.kind, a.zone, a.write, a.reason)):
        rows.append((low.kind, _block_label(low, high), f"0x{low.start:x}-0x{high.end:x}",
                     format_size(count * block_size), low.zone or "-", low.write, low.reason))
    lines = []
    if len(rows) > 1:
        widths = [max(len(row[i]) for row in rows) for i in range(len(header) - 1)]
        for row in rows:
            lines.append(" ".join(cell.ljust(width) for cell, width in zip(row, widths)) + " " + row[-1])
    lines.append(
        f"Online memory: {format_size(plan.current_bytes)} -> {format_size(plan.planned_bytes)}"
        f" (target {format_size(plan.target_bytes)})"
        + (f", {_gap_text(plan.planned_bytes, plan.target_bytes)}" if plan.shortfall_bytes else "")
    )
    lines.extend(f"note: {note}" for note in plan.notes)
    return "\n".join(lines)


def plan_document(plan, target_note: str | None = None) -> dict:
    return {
        "plan": {
            "target_bytes": plan.target_bytes,
            "current_online_bytes": plan.current_bytes,
            "planned_online_bytes": plan.planned_bytes,
            "shortfall_bytes": plan.shortfall_bytes,
            "actions": [action._asdict() for action in plan.actions],
            "notes": ([target_note] if target_note else []) + list(plan.notes),
        }
    }


def render_run(result) -> str:
    """What a resize/online/offline run did, block by block, then the outcome."""
    lines = []
    for low, high, _count in _runs(result.blocks, key=lambda r: (r.operation, r.outcome, r.zone, r.message)):
        first = low  # every field but the index is the same across the run
        what = (f"memory block{'s' if low is not high else ''} {_block_label(low, high)}"
                f" (0x{low.start:x}-0x{high.end:x}): {first.operation}")
        if first.outcome == "done":
            what += " done" + (f", zone {first.zone}" if first.zone else "")
        elif first.outcome == "already":
            what += ": already in that state"
        elif first.outcome == "not-attempted":
            what += f" (not attempted: {first.message})" if not result.dry_run else f" (dry run: {first.message})"
        else:
            what += f" {first.outcome}: {first.message}"
        lines.append(what)
    before, after = format_size(result.initial_online_bytes), format_size(result.final_online_bytes)
    verdict = "done" if result.reached else ("partial" if result.changed else "failed")
    if result.dry_run:
        verdict = "dry run, would reach the target" if result.reached else "dry run, would fall short"
    summary = f"Online memory: {before} -> {after}"
    if result.target_bytes is not None:
        summary += f" (target {format_size(result.target_bytes)})"
        if not result.reached and not result.dry_run:
            summary += f", {_gap_text(result.final_online_bytes, result.target_bytes)}"
    lines.append(f"{summary}: {verdict}")
    lines.extend(f"note: {note}" for note in result.notes)
    if result.kdump is not None:
        lines.append(f"kdump: {result.kdump.action} ({result.kdump.reason})")
    return "\n".join(lines)


def plan_output(plan, block_size: int, target_note: str | None) -> dict:
    """`plan`'s output as text, as JSON text, and its exit code: what the CLI prints, whether
    the plan was made here or by the daemon (which sends this dict over its socket)."""
    text = render_plan(plan, block_size)
    if target_note:
        text = f"note: {target_note}\n{text}"
    return {"text": text, "json": render_json(plan_document(plan, target_note)), "exit_code": 0}


def run_output(result) -> dict:
    """A resize/online/offline run's output, likewise for direct runs and the daemon's."""
    return {"text": render_run(result), "json": render_json({"result": result.to_json()}), "exit_code": result.exit_code}
