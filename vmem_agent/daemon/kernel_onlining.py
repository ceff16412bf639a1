"""Hand onlining to the kernel while the daemon runs, and give the admin's settings back at stop.

The values found before the daemon changed anything are saved in the runtime directory
first, so that a daemon killed with SIGKILL and started again restores the admin's
values, not its own. Writes go through the gateway, like every other kernel write.
"""

from __future__ import annotations

import json
import logging
import os
import re

from .. import paths
from ..core.onlining import AUTO_MOVABLE_RATIO, AUTO_ONLINE_BLOCKS, ONLINE_POLICY
from ..errors import SysfsError
from ..kernel.sysfs import AUTO_ONLINE_VALUES, ONLINE_POLICIES, Sysfs

log = logging.getLogger(__name__)

SAVED_SETTINGS_NAME = "kernel-onlining.json"
SAVED_SETTINGS_MAX_BYTES = 4096
# The files the daemon may set, and the values any of them can hold (what is restored must be one).
SETTING_VALUES = {
    ONLINE_POLICY: re.compile("|".join(map(re.escape, ONLINE_POLICIES))),
    AUTO_MOVABLE_RATIO: re.compile(r"[0-9]{1,10}", re.ASCII),
    AUTO_ONLINE_BLOCKS: re.compile("|".join(map(re.escape, AUTO_ONLINE_VALUES))),
}


class KernelOnlining:
    def __init__(self, sysfs: Sysfs, runtime_dir: str):
        self.sysfs = sysfs
        self.saved_path = os.path.join(runtime_dir, SAVED_SETTINGS_NAME)
        self.engaged = False

    def engage(self, settings: tuple[tuple[str, str], ...]) -> str | None:
        """Write `settings` (saving what they replace); None when done, else why not (all undone)."""
        originals = self._saved_originals()
        if originals is None:
            originals = {}
            for relative, _value in settings:
                current = self.sysfs.read_optional(relative)
                if current is None:
                    return f"{self.sysfs.path(relative)} does not exist"
                originals[relative] = current
            self._save(originals)
        for relative, value in settings:
            try:
                if self.sysfs.read_optional(relative) != value:
                    self.sysfs.write_text(relative, value)
            except SysfsError as exc:
                self.engaged = True
                self.release()
                return str(exc)
        self.engaged = True
        return None

    def release(self) -> None:
        """Restore the saved values (the last one written first is restored first: auto-online)."""
        originals = self._saved_originals()
        if originals is None:
            self.engaged = False
            return
        for relative, value in reversed(list(originals.items())):
            try:
                if self.sysfs.read_optional(relative) != value:
                    self.sysfs.write_text(relative, value)
            except SysfsError as exc:
                log.error("cannot restore %s to %r: %s", relative, value, exc)
        try:
            os.unlink(self.saved_path)
        except OSError:
            pass
        self.engaged = False

    def restore_leftovers(self) -> None:
        """At start: a saved file means an earlier daemon died engaged; put the admin's values back."""
        if os.path.exists(self.saved_path):
            log.warning("restoring kernel onlining settings left by an earlier daemon (%s)", self.saved_path)
            self.release()

    def _saved_originals(self) -> dict[str, str] | None:
        """The saved settings, or None; a file that is not what _save() writes is ignored, with a warning.

        Only the kernel files the daemon sets, with values of their vocabulary, are ever
        written back: a damaged file must not send any text to any path under the root.
        """
        try:
            data = paths.read_regular_file(self.saved_path, SAVED_SETTINGS_MAX_BYTES + 1)
        except FileNotFoundError:
            return None
        except OSError as exc:
            log.warning("cannot read %s: %s", self.saved_path, exc.strerror)
            return None
        try:
            document = json.loads(data) if len(data) <= SAVED_SETTINGS_MAX_BYTES else None
        except (ValueError, RecursionError):
            document = None
        if not isinstance(document, dict) or not all(
                key in SETTING_VALUES and isinstance(value, str) and SETTING_VALUES[key].fullmatch(value)
                for key, value in document.items()):
            log.warning("ignoring %s: not kernel onlining settings saved by vmem-agent", self.saved_path)
            return None
        return document

    def _save(self, originals: dict[str, str]) -> None:
        paths.replace_file(self.saved_path, json.dumps(originals).encode())
