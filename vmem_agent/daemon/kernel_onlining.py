"""Hand onlining to the kernel while the daemon runs, and give the admin's settings back at stop.

The values found before the daemon changed anything are saved in the runtime directory
first, so that a daemon killed with SIGKILL and started again restores the admin's
values, not its own. Writes go through the gateway, like every other kernel write.
"""

from __future__ import annotations

import json
import logging
import os

from ..errors import SysfsError
from ..kernel.sysfs import Sysfs

log = logging.getLogger(__name__)

SAVED_SETTINGS_NAME = "kernel-onlining.json"


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
        try:
            with open(self.saved_path, encoding="utf-8") as handle:
                document = json.load(handle)
        except (OSError, ValueError):
            return None
        if not isinstance(document, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in document.items()):
            return None
        return document

    def _save(self, originals: dict[str, str]) -> None:
        temporary = self.saved_path + ".tmp"
        with open(temporary, "w", encoding="utf-8") as handle:
            json.dump(originals, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, self.saved_path)
