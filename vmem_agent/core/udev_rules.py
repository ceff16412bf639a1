"""udev rules as udevd reads them, and what they do when a memory block appears. Pure: no I/O.

Files (udev(7)): every `*.rules` file of the rules directories, sorted by file name across
all of them; a name in a directory of higher priority replaces the same name lower down,
and a file that is empty or a link to /dev/null disables the name.

Rules: one per line (a trailing backslash continues it), `KEY[{attr}] OP "value"` pairs
separated by commas, `#` comments; a line that does not parse is ignored, as udevd does.

To learn what a file does to a memory block, its rules are run on a synthetic event the
way udevd runs them: in order, all match keys of a rule must hold, GOTO jumps forward to
the file's next LABEL of that name. Matches are three-valued. Keys the event decides
(ACTION, SUBSYSTEM, KERNEL, DEVPATH, ATTR{state}, ATTR{online}, TEST of the block's own
files, CONST{arch}, ENV set by earlier rules, `[dmi/id]`-style attributes read
beforehand) are true or false; the rest (PROGRAM, RESULT, CONST{virt}, other attributes)
are unknown, and then both ways are followed. An effect reached only through unknown
matches carries those conditions, so the report can say "when ...". Files are run
independently: ENV set in one file is not carried into the next (no memory rule in the
distributions relies on that). A walk stops after MAX_WALK_STEPS rules.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

# Rules directories in udev's order of priority, highest first, relative to the root.
# /lib/udev/rules.d is the split-/usr location (on merged-/usr systems the same directory).
RULES_DIRS = ("etc/udev/rules.d", "run/udev/rules.d", "usr/local/lib/udev/rules.d", "usr/lib/udev/rules.d", "lib/udev/rules.d")
RULES_SUFFIX = ".rules"
MASK_TARGET = "/dev/null"

ONLINE_STATES = frozenset({"online", "online_kernel", "online_movable"})
EFFECT_ONLINE = "online"  # writes a block's state or online file so that the block goes online
EFFECT_KDUMP_RELOAD = "kdump-reload"  # runs a kdump reload for the event

MATCH_OPS = ("==", "!=")
# Rules visited per file and event at most: each unknown GOTO can double the ways through a
# file, and a file is untrusted input; real memory rules take a few dozen steps.
MAX_WALK_STEPS = 20_000
# Files of a memory block that TEST can rely on (drivers/base/memory.c).
_BLOCK_FILES = frozenset({"state", "online", "phys_index", "phys_device", "removable", "valid_zones", "uevent"})
# Programs that reload kdump (Debian kdump-tools, Fedora/RHEL kdump-utils, kexec itself).
_KDUMP_RELOAD = re.compile(r"kdump-config|kdumpctl|kdump-udev-throttler|kdump(?:-tools)?\.service|\bkexec\b")
# Shell commands that online the block: `echo online > /sys$devpath/state`, `... | tee .../online`, chmem -e.
_WRITE_STATE = re.compile(
    r"\b(?P<value>online(?:_movable|_kernel)?|1)\b[^;&|>]*(?:>|\|\s*tee\s+(?:-a\s+)?)\s*\S*/(?P<file>state|online)\b"
)
_CHMEM_ENABLE = re.compile(r"\bchmem\b.*\s(?:-e|--enable)\b")
_KEY = re.compile(r'([A-Z_]+)(?:\{([^}]*)\})?\s*(==|!=|\+=|-=|:=|=)\s*e?"((?:[^"\\]|\\.)*)"')
_SUBSTITUTION = re.compile(r"\$(env|attr)\{([^}]*)\}|%([Es])\{([^}]*)\}|\$(kernel|devpath|sys)\b|%([kpS])|\$\$|%%")

# systemd's names for uname's machine, as CONST{arch} compares them.
_SYSTEMD_ARCHITECTURES = {
    "x86_64": "x86-64", "i386": "x86", "i486": "x86", "i586": "x86", "i686": "x86", "aarch64": "arm64",
    "ppc64le": "ppc64-le", "armv7l": "arm", "armv6l": "arm", "armv8l": "arm",
}


def systemd_architecture(machine: str | None) -> str | None:
    """CONST{arch} for a uname machine name (x86_64 -> x86-64), None when unknown."""
    if not machine:
        return None
    return _SYSTEMD_ARCHITECTURES.get(machine, machine)


@dataclass(frozen=True, slots=True)
class Key:
    """One `KEY{attr} OP "value"` of a rule."""

    name: str
    attr: str | None
    op: str
    value: str

    @property
    def is_match(self) -> bool:
        """Compared rather than assigned; PROGRAM is a match (its exit status) whatever its operator."""
        return self.op in MATCH_OPS or self.name == "PROGRAM"

    def __str__(self) -> str:
        attr = "" if self.attr is None else "{" + self.attr + "}"
        return f'{self.name}{attr}{self.op}"{self.value}"'

    def negated(self) -> str:
        return str(Key(self.name, self.attr, "!=" if self.op == "==" else "==", self.value))


@dataclass(frozen=True, slots=True)
class Rule:
    line: int  # where the rule starts in its file, 1-based
    keys: tuple[Key, ...]


@dataclass(frozen=True, slots=True)
class RulesFile:
    path: str  # as udevd sees it: /etc/udev/rules.d/99-memory.rules
    rules: tuple[Rule, ...]


@dataclass(frozen=True, slots=True)
class RuleEffect:
    """What one rule does to a memory block event, and under which unknown conditions."""

    kind: str  # EFFECT_ONLINE or EFFECT_KDUMP_RELOAD
    path: str
    line: int
    action: str  # the event: add, online, offline
    how: str  # what the rule does, e.g. 'ATTR{state}="online"' or the RUN command
    values: tuple[str, ...] = ()  # for EFFECT_ONLINE: what it writes (online, online_movable, 1, ...)
    conditions: tuple[str, ...] = ()  # empty: the rule always does it

    @property
    def where(self) -> str:
        return f"{self.path}:{self.line}"


@dataclass(frozen=True, slots=True)
class MemoryEvent:
    """A uevent of one memory block as udevd would process it."""

    action: str
    state: str  # what the block's state file reads while the rules run
    block: int = 32
    arch: str | None = None  # CONST{arch}, systemd's name; None: unknown
    # `[subsystem/device]attribute` values read beforehand (None: could not be read).
    device_attributes: Mapping[str, str | None] | None = None

    @property
    def kernel(self) -> str:
        return f"memory{self.block}"

    @property
    def devpath(self) -> str:
        return f"/devices/system/memory/memory{self.block}"


# -- files ---------------------------------------------------------------------------------


def is_rules_file_name(name: str) -> bool:
    return name.endswith(RULES_SUFFIX) and not name.startswith(".")


def effective_rules_files(listings: Sequence[tuple[str, Mapping[str, str | None]]]) -> list[tuple[str, str]]:
    """(path, text) of the files udevd reads, in its order.

    `listings` holds (directory, {name: text, or None when masked}) in order of priority,
    highest first; a masked name hides the same name in every lower directory.
    """
    chosen: dict[str, tuple[str, str | None]] = {}
    for directory, entries in listings:
        for name, text in entries.items():
            if is_rules_file_name(name) and name not in chosen:
                chosen[name] = (f"/{directory.strip('/')}/{name}", text)
    return [(path, text) for name, (path, text) in sorted(chosen.items()) if text]


# -- parsing -------------------------------------------------------------------------------


def logical_lines(text: str) -> Iterable[tuple[int, str]]:
    """(first line number, line) with backslash continuations joined."""
    pending: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), 1):
        if not pending:
            start = number
        if raw.endswith("\\"):
            pending.append(raw[:-1])
            continue
        pending.append(raw)
        yield start, "".join(pending)
        pending = []
    if pending:
        yield start, "".join(pending)


def parse_rule(line: str) -> tuple[Key, ...] | None:
    """The keys of one rule line; None for comments, blank lines and lines udevd rejects."""
    stripped = line.strip()
    if not stripped or stripped.startswith("#"):
        return None
    keys: list[Key] = []
    position = 0
    while position < len(stripped):
        while position < len(stripped) and stripped[position] in " \t,":
            position += 1
        if position >= len(stripped):
            break
        found = _KEY.match(stripped, position)
        if found is None:
            return None
        name, attr, op, value = found.groups()
        keys.append(Key(name, attr, op, value.replace('\\"', '"')))
        position = found.end()
    return tuple(keys) or None


def parse_rules(path: str, text: str) -> RulesFile:
    rules = []
    for number, line in logical_lines(text):
        keys = parse_rule(line)
        if keys is not None:
            rules.append(Rule(number, keys))
    return RulesFile(path, tuple(rules))


def device_attribute_references(files: Iterable[RulesFile]) -> set[str]:
    """`[dmi/id]sys_vendor`-style attributes that matches compare: the reader fetches them."""
    return {
        key.attr
        for rules_file in files
        for rule in rules_file.rules
        for key in rule.keys
        if key.name in ("ATTR", "ATTRS") and key.is_match and key.attr and key.attr.startswith("[")
    }


def device_attribute_path(reference: str) -> str | None:
    """`[dmi/id]sys_vendor` -> sys/class/dmi/id/sys_vendor (relative to the root); None if malformed."""
    found = re.fullmatch(r"\[([^/\]]+)/([^\]]+)\](.+)", reference)
    if found is None or ".." in reference:
        return None
    subsystem, device, attribute = found.groups()
    return f"sys/class/{subsystem}/{device}/{attribute}"


# -- running rules on an event ---------------------------------------------------------------

# Possible values of a string: None inside the set stands for "unknown".
Values = frozenset


def _glob_matches(value: str, pattern: str) -> bool:
    return any(fnmatch.fnmatchcase(value, alternative) for alternative in pattern.split("|"))


def _compare(possible: Iterable[str | None], key: Key) -> bool | None:
    """True/False when every possible value agrees, None when unknown."""
    outcomes = set()
    for value in possible:
        if value is None:
            return None
        hit = _glob_matches(value, key.value)
        outcomes.add(hit if key.op == "==" else not hit)
    if len(outcomes) != 1:
        return None
    return outcomes.pop()


class _Walk:
    """Runs one file's rules on one event, following both ways past unknown matches."""

    def __init__(self, rules_file: RulesFile, event: MemoryEvent):
        self.file = rules_file
        self.event = event
        self.attributes = event.device_attributes or {}
        self.effects: dict[tuple[str, int], RuleEffect] = {}

    def run(self) -> list[RuleEffect]:
        rules = self.file.rules
        base_env = {"ACTION": Values({self.event.action}), "SUBSYSTEM": Values({"memory"}),
                    "DEVPATH": Values({self.event.devpath})}
        stack = [(0, _freeze(base_env), False, ())]
        seen: set = set()
        while stack and len(seen) < MAX_WALK_STEPS:
            index, env, tainted, conditions = stack.pop()
            while index < len(rules) and len(seen) < MAX_WALK_STEPS:
                marker = (index, env, tainted, not conditions)
                if marker in seen:
                    break
                seen.add(marker)
                rule = rules[index]
                outcome, unknown = self._match(rule, dict(env), tainted)
                if outcome is False:
                    index += 1
                    continue
                rule_conditions = conditions + unknown
                self._record(rule, dict(env), rule_conditions)
                env, tainted = self._assign(rule, dict(env), tainted, definite=outcome is True)
                target = self._goto_target(rule, index)
                if target is None:
                    index += 1
                elif outcome is True:
                    index = target
                else:
                    stack.append((index + 1, env, tainted, conditions + (_negation(unknown),)))
                    index, conditions = target, rule_conditions
        return sorted(self.effects.values(), key=lambda effect: (effect.line, effect.kind))

    # matching

    def _match(self, rule: Rule, env: dict, tainted: bool) -> tuple[bool | None, tuple[str, ...]]:
        unknown: list[str] = []
        for key in rule.keys:
            if not key.is_match:
                continue
            outcome = self._match_key(key, env, tainted)
            if outcome is False:
                return False, ()
            if outcome is None and not (key.name == "PROGRAM" and _command_effect(key.value)):
                unknown.append(str(key))  # a PROGRAM that is itself the effect is no condition of it
        return (None, tuple(unknown)) if unknown else (True, ())

    def _match_key(self, key: Key, env: dict, tainted: bool) -> bool | None:
        event = self.event
        name = key.name
        if name == "ACTION":
            return _compare([event.action], key)
        if name in ("SUBSYSTEM", "SUBSYSTEMS"):
            return _compare(["memory"], key)
        if name == "KERNEL":
            return _compare([event.kernel], key)
        if name == "KERNELS":  # the block or its parent, the memory subsystem's root device
            return _any_of(key, [event.kernel, "memory"])
        if name == "DEVPATH":
            return _compare([event.devpath], key)
        if name in ("DRIVER", "DRIVERS", "NAME"):
            return _compare([""], key)
        if name in ("ATTR", "ATTRS"):
            return _compare(self._attribute(key.attr), key)
        if name == "ENV":
            values = env.get(key.attr)
            if values is None:
                values = Values({None}) if tainted else Values({""})
            return _compare(values, key)
        if name == "CONST" and key.attr == "arch":
            return _compare([event.arch], key)
        if name == "TEST":
            exists = True if key.value in _BLOCK_FILES else None
            if exists is None:
                return None
            return exists if key.op == "==" else not exists
        return None  # PROGRAM, RESULT, CONST{virt}, TAG, SYSCTL, ...: not decidable here

    def _attribute(self, attr: str | None) -> list[str | None]:
        if attr == "state":
            return [self.event.state]
        if attr == "online":
            return ["1" if self.event.state == "online" else "0"]
        if attr and attr.startswith("["):
            value = self.attributes.get(attr)
            return [value.strip() if value is not None else None]
        return [None]

    # effects and assignments

    def _record(self, rule: Rule, env: dict, conditions: tuple[str, ...]) -> None:
        for key in rule.keys:
            if key.is_match and key.name != "PROGRAM":
                continue
            effect = self._effect_of(key, env, rule.line, conditions)
            if effect is None:
                continue
            slot = (effect.kind, rule.line)
            previous = self.effects.get(slot)
            if previous is None or (previous.conditions and not effect.conditions):
                self.effects[slot] = effect

    def _effect_of(self, key: Key, env: dict, line: int, conditions: tuple[str, ...]) -> RuleEffect | None:
        event = self.event
        if key.name == "ATTR" and key.attr in ("state", "online") and not key.is_match and key.op != "-=":
            written = self._expand(key.value, env)
            onlining = {value for value in written if value is not None and _onlines(key.attr, value)}
            if not onlining:
                return None
            return RuleEffect(EFFECT_ONLINE, self.file.path, line, event.action, str(key),
                              tuple(sorted(onlining)), conditions)
        if _runs_command(key):
            found = _command_effect(key.value)
            if found is not None:
                kind, written = found
                return RuleEffect(kind, self.file.path, line, event.action, str(key), written, conditions)
        return None

    def _assign(self, rule: Rule, env: dict, tainted: bool, definite: bool):
        for key in rule.keys:
            if key.name == "ENV" and key.attr and not key.is_match and key.op in ("=", ":=", "+="):
                new = self._expand(key.value, env)
                if key.op == "+=":
                    old = env.get(key.attr, Values({""}))
                    new = Values(None if a is None or b is None else a + b for a in old for b in new)
                env[key.attr] = new if definite else new | env.get(key.attr, Values({None if tainted else ""}))
            elif key.name == "IMPORT":
                tainted = True  # it may set any ENV key
        return _freeze(env), tainted

    def _expand(self, value: str, env: dict) -> Values:
        """Possible results of udev's string substitutions ($env{}, %k, ...); None where unknown."""
        results = [""]
        position = 0
        for found in _SUBSTITUTION.finditer(value):
            literal = value[position:found.start()]
            results = [None if r is None else r + literal for r in results]
            options = self._substitute(found, env)
            results = [None if r is None or o is None else r + o for r in results for o in options]
            position = found.end()
        tail = value[position:]
        return Values(None if r is None else r + tail for r in results)

    def _substitute(self, found: re.Match, env: dict) -> Iterable[str | None]:
        text = found.group(0)
        if text in ("$$", "%%"):
            return [text[0]]
        if found.group(1) == "env" or found.group(3) == "E":
            name = found.group(2) if found.group(1) else found.group(4)
            return env.get(name, Values({""}))
        if found.group(1) == "attr" or found.group(3) == "s":
            return self._attribute(found.group(2) if found.group(1) else found.group(4))
        short = found.group(5) or {"k": "kernel", "p": "devpath", "S": "sys"}[found.group(6)]
        return [{"kernel": self.event.kernel, "devpath": self.event.devpath, "sys": "/sys"}[short]]

    def _goto_target(self, rule: Rule, index: int) -> int | None:
        """Index of the next LABEL named by the rule's GOTO, None without one (udevd ignores a missing label)."""
        label = next((key.value for key in rule.keys if key.name == "GOTO"), None)
        if label is None:
            return None
        for later in range(index + 1, len(self.file.rules)):
            if any(key.name == "LABEL" and key.value == label for key in self.file.rules[later].keys):
                return later
        return None


def _any_of(key: Key, candidates: list[str]) -> bool:
    hit = any(_glob_matches(candidate, key.value) for candidate in candidates)
    return hit if key.op == "==" else not hit


def _freeze(env: dict) -> frozenset:
    return frozenset(env.items())


def _negation(unknown: tuple[str, ...]) -> str:
    """The condition of not taking a GOTO whose unknown matches were these."""
    if len(unknown) == 1:
        key = _KEY.fullmatch(unknown[0])
        if key is not None and key.group(1) != "PROGRAM" and key.group(3) in MATCH_OPS:
            name, attr, op, value = key.groups()
            return Key(name, attr, op, value).negated()
    return "not (" + " and ".join(unknown) + ")"


def _onlines(attribute: str, value: str) -> bool:
    value = value.strip()
    return value in ONLINE_STATES if attribute == "state" else value in ("1", "y", "Y", "yes", "true", "on")


def _runs_command(key: Key) -> bool:
    return key.name in ("RUN", "PROGRAM") or (key.name == "IMPORT" and key.attr == "program")


def _command_effect(command: str) -> tuple[str, tuple[str, ...]] | None:
    """(kind, values written) of a command a rule runs, when its text shows one we look for."""
    if _KDUMP_RELOAD.search(command):
        return EFFECT_KDUMP_RELOAD, ()
    written = _shell_online_values(command)
    return (EFFECT_ONLINE, written) if written else None


def _shell_online_values(command: str) -> tuple[str, ...]:
    """What a RUN/PROGRAM command writes to onlining files, as far as its text shows."""
    values = {found.group("value") for found in _WRITE_STATE.finditer(command)
              if _onlines(found.group("file"), found.group("value"))}
    if _CHMEM_ENABLE.search(command):
        values.add("chmem -e")
    return tuple(sorted(values))


def _relevant(rules_file: RulesFile) -> bool:
    """Whether any rule could have an effect we look for: only those files are run."""
    for rule in rules_file.rules:
        for key in rule.keys:
            if key.name == "ATTR" and key.attr in ("state", "online") and not key.is_match:
                return True
            if _runs_command(key) and _command_effect(key.value):
                return True
    return False


# The events that matter: a block hot-added (offline, waiting for an onliner), and the
# online/offline events on which kdump reload rules fire.
EVENTS = (("add", "offline"), ("online", "online"), ("offline", "offline"))


def memory_rule_effects(
    files: Iterable[RulesFile], arch: str | None = None, device_attributes: Mapping[str, str | None] | None = None
) -> list[RuleEffect]:
    """Every onlining and kdump-reloading effect of the rules on memory block events, in udev's order."""
    effects: list[RuleEffect] = []
    for rules_file in files:
        if not _relevant(rules_file):
            continue
        for action, state in EVENTS:
            event = MemoryEvent(action=action, state=state, arch=arch, device_attributes=device_attributes or {})
            for effect in _Walk(rules_file, event).run():
                if effect.kind == EFFECT_ONLINE and action != "add":
                    continue  # onlining on add is what counts; the same rule firing later is not another onliner
                effects.append(effect)
    return effects
