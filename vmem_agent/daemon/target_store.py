"""The persisted target: what `vmem-agent resize` last asked for, kept across restarts and reboots.

One small JSON file under the state directory (/var/lib/vmem-agent/target.json),
replaced atomically (temp file, fsync, rename, fsync of the directory), so that a crash
or a kill -9 at any moment leaves either the old or the new target, never a torn file.

The file records the latest instruction, including "no target" (`resize --clear`); when
it does not exist, the config file's `target` applies.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

from ..errors import VmemError
from ..paths import TARGET_FILE_NAME, read_regular_file, replace_file

TARGET_FILE_VERSION = 1
_MAX_BYTES = 4096


class TargetFileError(VmemError):
    """The target file exists but cannot be read, parsed or written."""


@dataclass(frozen=True, slots=True)
class StoredTarget:
    target_bytes: int | None  # None: cleared (no target)
    config_target_bytes: int | None  # the config's target when this was stored (a new one in the config wins)


def target_file(state_dir: str) -> str:
    return os.path.join(state_dir, TARGET_FILE_NAME)


def load_target(state_dir: str) -> StoredTarget | None:
    """The stored target, or None when nothing was stored; TargetFileError when unreadable."""
    path = target_file(state_dir)
    try:
        data = read_regular_file(path, _MAX_BYTES + 1)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise TargetFileError(f"{path}: cannot read: {exc.strerror}") from None
    try:
        document = json.loads(data) if len(data) <= _MAX_BYTES else None
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        document = None
    if not isinstance(document, dict) or document.get("version") != TARGET_FILE_VERSION:
        raise TargetFileError(f"{path}: not a vmem-agent target file (remove it, or run `vmem-agent resize`)")
    target, config_target = document.get("target_bytes"), document.get("config_target_bytes")
    for value in (target, config_target):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value <= 0):
            raise TargetFileError(f"{path}: invalid target {value!r} (remove it, or run `vmem-agent resize`)")
    return StoredTarget(target, config_target)


def store_target(state_dir: str, stored: StoredTarget) -> None:
    """Replace the target file atomically and durably."""
    path = target_file(state_dir)
    payload = json.dumps({
        "version": TARGET_FILE_VERSION,
        "target_bytes": stored.target_bytes,
        "config_target_bytes": stored.config_target_bytes,
    }).encode()
    try:
        os.makedirs(state_dir, mode=0o755, exist_ok=True)
        replace_file(path, payload + b"\n")
    except OSError as exc:
        raise TargetFileError(f"{path}: cannot write: {exc.strerror}") from None


def effective_target(stored: StoredTarget | None, config_target: int | None) -> int | None:
    """What to hold: the stored instruction, unless the config's target changed since it was stored."""
    if stored is None or stored.config_target_bytes != config_target:
        return config_target
    return stored.target_bytes
