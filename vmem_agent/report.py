"""Status output: one row model drives the human table and the JSON document.

The JSON layout is a stable interface for scripts (docs/json.md); bump
STATUS_SCHEMA_VERSION on any incompatible change.
"""

from __future__ import annotations

import json
from typing import Callable, NamedTuple

from .model import BlockRange, MemoryBlock, MemoryState, group_ranges, origin_key
from .sizes import format_size

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


def render_summary(state: MemoryState) -> str:
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
    width = max(len(label) for label, _ in pairs)
    return "\n".join(f"{label:<{width}} {value}" for label, value in pairs)


def _block_json(block: MemoryBlock) -> dict:
    return {
        "index": block.index,
        "start": block.start,
        "end": block.end,
        "state": block.state,
        "zones": list(block.zones) if block.zones is not None else None,
        "node": block.node,
        "removable": block.removable,
        "phys_device": block.phys_device,
        "origin": block.origin,
        "group": block.group,
    }


def status_document(state: MemoryState) -> dict:
    params = state.params
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
                    "zones": list(rng.first.zones) if rng.first.zones is not None else None,
                }
                for rng in group_ranges(state.blocks)
            ],
            "blocks": [_block_json(block) for block in state.blocks],
            "warnings": list(state.warnings),
        }
    }


def render_json(document: dict) -> str:
    return json.dumps(document, indent=1)
