"""Output: the status table and JSON, plans and run results, and the words for every code.

One row model drives the human status table and the JSON document. Decisions and notes
come from core.policy and engine.runner as stable codes with facts; this module is the
one place that turns them into sentences. A run is rendered from its JSON wire form
(RunResult.to_json()), so a result received from a daemon prints exactly as a direct run.

The JSON layout is a stable interface for scripts (docs/json.md); bump
STATUS_SCHEMA_VERSION on any incompatible change.
"""

from __future__ import annotations

import json
from typing import Callable, NamedTuple

from ..core.model import (
    DEVICE_OFFLINE, DEVICE_PARTLY_OFFLINE, ORIGIN_DIMM, BlockRange, MemoryState, device_states, format_block_list,
    group_ranges, origin_key,
)
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
    lines = [f"{label:<{width}} {value}" for label, value in pairs]
    devices = [device.to_json() for device in device_states(state)]
    if devices:
        lines += ["", "Devices:"] + [f"  {_device_line(device)}" for device in devices]
    return "\n".join(lines)


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
            "devices": [device.to_json() for device in device_states(state)],
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



# -- devices ---------------------------------------------------------------------------------------

_KIND_WORDS = {"acpi": "DIMM", "virtio-mem": "virtio-mem device", "kmem": "dax/kmem device"}


def _device_word(group: str | None, labels: dict | None = None) -> str:
    """`DIMM PNP0C80:03 (slot 3)`, `virtio-mem device virtio2`: how sentences name a memory group."""
    if group is None:
        return "the device"
    if labels and group in labels:
        return labels[group]
    kind, _, name = group.partition(":")
    return f"{_KIND_WORDS.get(kind, kind)} {name or group}"


def _device_labels(devices: list[dict]) -> dict:
    """Group -> its name in sentences, with the DIMM's slot where the snapshot has it."""
    labels = {}
    for device in devices:
        word = _device_word(device["group"])
        labels[device["group"]] = f"{word} in slot {device['slot']}" if device.get("slot") is not None else word
    return labels


def _device_state_words(device: dict) -> str:
    if device["state"] == DEVICE_OFFLINE:
        return "offline, ready to eject" if device["kind"] == ORIGIN_DIMM else "offline"
    if device["state"] == DEVICE_PARTLY_OFFLINE:
        words = f"partly offline ({format_size(device['offline_bytes'])} of it offline)"
        return words + (": the host cannot unplug it" if device["kind"] == ORIGIN_DIMM else "")
    return "online"


def _device_line(device: dict) -> str:
    """One device as the status summary and run results list it."""
    slot = f", slot {device['slot']}" if device.get("slot") is not None else ""
    return (f"{_device_word(device['group'])} ({format_size(device['size'])}{slot}, "
            f"0x{device['start']:x}-0x{device['end']:x}, blocks {device['first_block']}-{device['last_block']}): "
            f"{_device_state_words(device)}")


# -- words for codes --------------------------------------------------------------------------------


def _ratio_base(facts: dict) -> str:
    """`301% of 2G boot kernel memory`, or of one node's."""
    base = format_size(facts.get("kernel_early", 0))
    if facts.get("scope") == "node":
        node = facts.get("node")
        where = "unknown node" if node is None else f"node {node}"
        return f"{facts.get('ratio')}% of {where}'s {base} boot kernel memory"
    return f"{facts.get('ratio')}% of {base} boot kernel memory"


def reason_text(code: str, facts: dict, labels: dict | None = None) -> str:
    """The sentence for a Reason code (core.policy R_*, engine.runner R_*)."""
    device = _device_word(facts.get("group"), labels)
    size = format_size(facts.get("size", 0))
    words = {
        "movable-fits": lambda: f"Movable: fits {_ratio_base(facts)}"
        + (f", counting {device}'s own kernel memory" if facts.get("group", "").startswith("virtio-mem:") else ""),
        "dimm-movable-fits": lambda: f"Movable: all of {device} ({size}) fits {_ratio_base(facts)}",
        "normal-exceeds-ratio": lambda: f"Normal: Movable would exceed {_ratio_base(facts)}",
        "dimm-normal-exceeds-ratio": lambda: f"Normal: {device} ({size}) as Movable would exceed {_ratio_base(facts)}",
        "dimm-normal-has-kernel": lambda: f"Normal: {device} already has memory in a kernel zone",
        "normal-ratio-zero": lambda: "Normal: a Movable ratio of 0% allows no Movable memory",
        "normal-valid-zones": lambda: "Normal: valid_zones does not allow Movable",
        "movable-valid-zones-fits": lambda: f"Movable: valid_zones allows no kernel zone, and it fits {_ratio_base(facts)}",
        "kernel-choice": lambda: f"{'Movable' if facts.get('zone') == 'Movable' else 'Normal'}: the kernel's own choice "
        f"now (valid_zones lists {facts.get('zone')} first)",
        "movable-zone-mode": lambda: "Movable: zone mode movable",
        "normal-zone-mode": lambda: "Normal: zone mode normal",
        "movable-valid-zones": lambda: "Movable: valid_zones allows no kernel zone",
        "zones-unknown": lambda: "zones unknown (no valid_zones): plain online, the kernel picks the zone",
        "dimm-whole": lambda: f"empties {device} ({size}): the host can then unplug it",
        "dimm-part": lambda: f"part of {device} ({size}): the target needs only this much; "
        f"{format_size(facts.get('left_online', 0))} of it stays online, so the host cannot unplug it",
        "hotplugged-movable": lambda: "hot-plugged Movable block: offline is likely to succeed",
        "hotplugged-kernel-zone": lambda: "hot-plugged kernel-zone block: offline may fail with EBUSY",
        "hotplugged-unknown-zone": lambda: "hot-plugged block in an unknown zone: offline may fail with EBUSY",
        "virtio-mem-block": lambda: f"memory of {device}: offlining it gives the host nothing back",
        "forced-boot": lambda: "boot memory, forced: offline may fail with EBUSY",
        "forced-unknown-origin": lambda: "memory of unknown origin, forced: nothing says a host can take it back",
        "kmem-block": lambda: "dax/kmem memory",
        "rollback": lambda: f"rollback: {device} could not be emptied (block {facts.get('failed_block')} failed)",
    }
    word = words.get(code)
    return word() if word else code


def _limit_why(facts: dict) -> str:
    why = facts.get("why")
    if why == "min-online":
        return f"the minimum online memory is {format_size(facts.get('min_online', 0))}"
    if why == "reserve":
        return f"{format_size(facts.get('available', 0))} available must keep a reserve of {format_size(facts.get('reserve', 0))}"
    return "memory figures unknown (MemTotal/MemAvailable): refusing to offline rather than guess"


def _blocks_label(indexes) -> str:
    """`block 3` or `blocks 3-5,9`: how notes name the blocks they are about."""
    indexes = list(indexes)
    return f"block{'s' if len(indexes) > 1 else ''} {format_block_list(indexes)}"


def note_text(code: str, blocks, facts: dict, labels: dict | None = None) -> str:
    """The sentence for a Note code (core.policy N_*, engine.runner N_*)."""
    device = _device_word(facts.get("group"), labels)
    size = format_size
    about = f"{_blocks_label(blocks)}: " if blocks else ""
    words = {
        "skip-going-offline": lambda: f"{about}going offline",
        "skip-excluded": lambda: f"{about}excluded after a failed write",
        "skip-no-zone": lambda: f"{about}valid_zones {' '.join(facts.get('zones') or ())!r} allows no zone to online into",
        "skip-only-movable-exceeds": lambda: f"{about}valid_zones allows only Movable, which would exceed "
        f"{_ratio_base(facts)} (zone mode movable forces it)",
        "deferring-to-kernel": lambda: "kernel online_policy is auto-movable: writing plain 'online' and letting the "
        "kernel pick the zone; the zones in this plan are predictions",
        "movable-mode-exceeds-ratio": lambda: f"zone mode movable: {size(facts.get('movable', 0))} Movable exceeds "
        f"{facts.get('ratio')}% of {size(facts.get('kernel_early', 0))} boot kernel memory (risk of OOM in kernel zones)",
        "grow-short": lambda: f"only {size(facts.get('onlinable', 0))} of the {size(facts.get('asked', 0))} asked for can "
        f"be onlined: {size(facts.get('short', 0))} short",
        "already-online": lambda: f"{about}already online",
        "online-in-other-zone": lambda: f"{about}already online in {facts.get('zone')}, not zone mode "
        f"{facts.get('wanted')}: offline it first to change its zone",
        "already-offline": lambda: f"{about}already offline",
        "being-offlined": lambda: f"{about}going offline already",
        "zone-none": lambda: f"{about}valid_zones 'none': the kernel cannot offline it",
        "boot-needs-force": lambda: f"{about}boot memory: offlined only with --force",
        "unknown-origin-needs-force": lambda: f"{about}origin unknown (not boot memory, no known device): offlined only "
        "with --force",
        "virtio-mem-offline-gives-nothing": lambda: f"{about}memory of {device}: offlining it gives the host nothing "
        "back, and while about 1G of the device is offline its driver plugs no more; lower the device's "
        "requested-size on the host instead",
        "offline-limited": lambda: (f"offlining stops after {size(facts['limit'])}: {_limit_why(facts)}" if facts.get("limit")
                                    else f"nothing can go offline: {_limit_why(facts)}"),
        "shrink-short": lambda: (f"only {size(facts['offlinable'])}" if facts.get("offlinable") else "nothing more")
        + " can be offlined"
        + (" in whole DIMMs (--per-block takes any DIMM or virtio-mem block)" if facts.get("unit") == "dimm" else "")
        + ": boot memory, memory of unknown origin, blocks with valid_zones 'none' and blocks that already failed "
        "are never used",
        "virtio-mem-lower-requested-size": lambda: f"{device} has {size(facts.get('online', 0))} online "
        f"({size(facts.get('movable', 0))} Movable): offlining it would give the host nothing back; lower the device's "
        "requested-size on the host and its driver unplugs the memory itself (offline memory first, then online "
        "Movable memory)",
        "origin-never-offlined": lambda: f"{about}" + ("origin unknown (not boot memory, no known device): never offlined "
                                                       "automatically; name the blocks with --force"
                                                       if facts.get("origin") == "hotplug" else
                                                       "dax/kmem memory: never offlined automatically; name the blocks"),
        "dimm-left-partly-offline": lambda: f"{device} is left partly offline ({size(facts.get('offline', 0))} of its "
        f"{size(facts.get('size', 0))}): the host cannot unplug it until all of it is offline",
        "dimm-second-partial-refused": lambda: f"not offlining part of another DIMM while {device} is partly offline: "
        "that would leave two DIMMs the host cannot unplug",
        "target-rounded": lambda: facts.get("text", ""),
        "deadline-expired": lambda: f"stopped: the overall deadline of {facts.get('timeout'):g}s expired",
        "planning-rounds-exhausted": lambda: f"stopped after {facts.get('rounds')} planning rounds",
        "dimm-rolled-back": lambda: f"{device} could not be emptied (block {facts.get('failed_block')} failed): "
        f"{_blocks_label(blocks)} onlined again, and the next DIMM is tried",
        "writer-stuck": lambda: f"stopped: the offline writer of memory block {blocks[0] if blocks else '?'} "
        f"(pid {facts.get('pid')}) did not exit after SIGKILL: it is stuck in the kernel and holds the device hotplug "
        "lock, so no further write was attempted; the lock file names it until it exits",
        "kdump-not-reloaded-writer-stuck": lambda: "kdump not reloaded: a writer is stuck in the kernel; reload kdump "
        "once it has exited",
    }
    word = words.get(code)
    return word() if word else code


def _note_fields(note: dict) -> tuple[str, list, dict]:
    facts = {key: value for key, value in note.items() if key not in ("code", "blocks")}
    return note["code"], note.get("blocks", []), facts


# -- plans ------------------------------------------------------------------------------------------


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


def _plan_labels(state: MemoryState | None) -> dict:
    return _device_labels([device.to_json() for device in device_states(state)]) if state is not None else {}


def render_plan(plan, block_size: int, labels: dict) -> str:
    """The plan as a table, neighbouring blocks with the same write merged into one row."""
    header = ("ACTION", "BLOCKS", "RANGE", "SIZE", "ZONE", "WRITE", "REASON")
    rows = [header]
    for low, high, count in _runs(plan.actions, key=lambda a: (a.kind, a.zone, a.write, a.reason)):
        rows.append((low.kind, _block_label(low, high), f"0x{low.start:x}-0x{high.end:x}",
                     format_size(count * block_size), low.zone or "-", low.write,
                     reason_text(low.reason.code, low.reason.facts_dict(), labels)))
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
    lines.extend(f"note: {note_text(n.code, n.blocks, n.facts_dict(), labels)}" for n in plan.notes)
    return "\n".join(lines)


def plan_document(plan, target_note: str | None, labels: dict) -> dict:
    """`plan --json`: `reason` and `notes` in words, `reason_code`/`reason_facts` and `note_codes` for scripts."""
    actions = []
    for action in plan.actions:
        facts = action.reason.facts_dict()
        actions.append({
            "kind": action.kind, "index": action.index, "start": action.start, "end": action.end,
            "zone": action.zone, "write": action.write, "unit": action.unit,
            "reason": reason_text(action.reason.code, facts, labels),
            "reason_code": action.reason.code, "reason_facts": facts,
        })
    notes = [note.to_json() for note in plan.notes]
    return {
        "plan": {
            "target_bytes": plan.target_bytes,
            "current_online_bytes": plan.current_bytes,
            "planned_online_bytes": plan.planned_bytes,
            "shortfall_bytes": plan.shortfall_bytes,
            "actions": actions,
            "notes": ([target_note] if target_note else []) + [note_text(*_note_fields(n), labels) for n in notes],
            "note_codes": notes,
        }
    }


# -- runs -------------------------------------------------------------------------------------------


class _BlockView(NamedTuple):
    """A result block of the wire form, with `index` for _runs() and the key it merges on."""

    index: int
    block: dict


def result_document(wire: dict) -> dict:
    """`resize|online|offline --json` from the wire form: words next to every code."""
    labels = _device_labels(wire.get("devices", []))
    blocks = []
    for block in wire["blocks"]:
        reason = block.get("reason")
        facts = {key: value for key, value in reason.items() if key != "code"} if reason else {}
        blocks.append({**block, "reason": reason_text(reason["code"], facts, labels) if reason else None,
                       "reason_code": reason["code"] if reason else None, "reason_facts": facts})
    notes = wire.get("notes", [])
    return {"result": {**wire, "blocks": blocks, "notes": [note_text(*_note_fields(n), labels) for n in notes],
                       "note_codes": notes}}


def render_run(wire: dict) -> str:
    """What a resize/online/offline run did, block by block, then the outcome, from RunResult.to_json()."""
    labels = _device_labels(wire.get("devices", []))
    dry_run = wire["dry_run"]
    lines = []
    views = [_BlockView(block["index"], block) for block in wire["blocks"]]
    merge_key = lambda view: (view.block["operation"], view.block["outcome"], view.block["zone"], view.block["message"],
                              view.block.get("rollback"), str(view.block.get("reason")) if dry_run else None)
    for low, high, _count in _runs(views, key=merge_key):
        first = low.block  # every field but the index is the same across the run
        what = (f"memory block{'s' if low is not high else ''} {_block_label(low, high)}"
                f" (0x{first['start']:x}-0x{high.block['end']:x}): {first['operation']}")
        if first["outcome"] == "done":
            what += " done" + (f", zone {first['zone']}" if first["zone"] else "")
            if first.get("rollback"):
                what += " (rolled back)"
        elif first["outcome"] == "already":
            what += ": already in that state"
        elif first["outcome"] == "not-attempted":
            reason = first.get("reason")
            why = first["message"] or (reason_text(reason["code"], reason, labels) if reason else "")
            what += f" (dry run: {why})" if dry_run else f" (not attempted: {why})"
        else:
            what += f" {first['outcome']}: {first['message']}"
        lines.append(what)
    before, after = format_size(wire["initial_online_bytes"]), format_size(wire["final_online_bytes"])
    verdict = "done" if wire["reached"] else ("partial" if wire["changed"] else "failed")
    if dry_run:
        verdict = "dry run, would reach the target" if wire["reached"] else "dry run, would fall short"
    summary = f"Online memory: {before} -> {after}"
    if wire["target_bytes"] is not None:
        summary += f" (target {format_size(wire['target_bytes'])})"
        if not wire["reached"] and not dry_run:
            summary += f", {_gap_text(wire['final_online_bytes'], wire['target_bytes'])}"
    lines.append(f"{summary}: {verdict}")
    lines.extend(_run_device_lines(wire))
    lines.extend(f"note: {note_text(*_note_fields(note), labels)}" for note in wire.get("notes", []))
    if wire["kdump"] is not None:
        lines.append(f"kdump: {wire['kdump']['action']} ({wire['kdump']['reason']})")
    return "\n".join(lines)


def _run_device_lines(wire: dict) -> list[str]:
    """The DIMMs this run wrote to, and every DIMM left partly offline: what the host can unplug now."""
    touched = {block["index"] for block in wire["blocks"] if block["outcome"] != "not-attempted" or wire["dry_run"]}
    lines = []
    for device in wire.get("devices", []):
        if device["kind"] != ORIGIN_DIMM:
            continue
        blocks = range(device["first_block"], device["last_block"] + 1)
        if device["state"] == DEVICE_PARTLY_OFFLINE or any(index in touched for index in blocks):
            lines.append(("would be: " if wire["dry_run"] else "") + _device_line(device))
    return lines


def plan_output(plan, block_size: int, target_note: str | None, state: MemoryState | None = None) -> dict:
    """`plan`'s output as text, as JSON text, and its exit code: what the CLI prints, whether
    the plan was made here or by the daemon (which sends this dict over its socket)."""
    labels = _plan_labels(state)  # each block's device, for both renderings
    text = render_plan(plan, block_size, labels)
    if target_note:
        text = f"note: {target_note}\n{text}"
    return {"text": text, "json": render_json(plan_document(plan, target_note, labels)), "exit_code": 0}


def run_output(result) -> dict:
    """A resize/online/offline run's output, likewise for direct runs and the daemon's."""
    wire = result.to_json()
    return {"text": render_run(wire), "json": render_json(result_document(wire)), "exit_code": result.exit_code}
