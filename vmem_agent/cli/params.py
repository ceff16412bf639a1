"""The CLI's argument types: every option and argument is checked by click as it is parsed.

So a bad value is a usage error (exit 2) naming the option, before anything is read from
the tree or written to it, and the same checks apply to the VMEM_AGENT_* variables. The
checks themselves are the pure ones of core (sizes, block lists, seconds, commands).
"""

from __future__ import annotations

import os
import re
import stat

import click

from ..errors import VmemError
from ..limits import MAX_MOVABLE_RATIO

# `resize -512M`: a dash and a digit (or a dot) can start no option of ours, only a relative size.
_NEGATIVE_SIZE = re.compile(r"-[0-9.]")
_PERCENT = re.compile(r"[0-9]{1,9}", re.ASCII)


def _fail(param_type: click.ParamType, message: str, param, ctx):
    """An argument's message already names the input (`invalid size '6X': ...`); an option's gets its name."""
    if isinstance(param, click.Argument):
        raise click.UsageError(message, ctx)
    param_type.fail(message, param, ctx)


class SizeType(click.ParamType):
    """A size option (`512M`, `1G`), parsed by the one size parser; an int is bytes already."""

    name = "SIZE"

    def convert(self, value, param, ctx):
        if isinstance(value, int):
            return value
        from ..core.sizes import parse_size

        try:
            return parse_size(value, allow_relative=False).bytes
        except VmemError as exc:
            _fail(self, str(exc), param, ctx)


class CheckedText(click.ParamType):
    """An argument checked now by a pure parser and passed on as text (the engine and the daemon parse it again)."""

    def __init__(self, name: str, parse):
        self.name = name
        self.parse = parse

    def convert(self, value, param, ctx):
        try:
            self.parse(value)
        except VmemError as exc:
            _fail(self, str(exc), param, ctx)
        return value


def _target_size(text: str) -> None:
    """`resize`/`plan`'s SIZE (`6G`, `+1G`, `-512M`); resolved against the blocks later."""
    from ..core.sizes import parse_size

    parse_size(text)


def _blocks_or_size(text: str) -> None:
    """`online`/`offline`'s argument: block indexes (`12`, `12-20`, `3,5-7`) or an amount (`1G`)."""
    from ..core.blocklists import parse_blocks_or_size

    parse_blocks_or_size(text)


TARGET_SIZE = CheckedText("SIZE", _target_size)
BLOCKS_OR_SIZE = CheckedText("BLOCKS|SIZE", _blocks_or_size)


class SecondsType(click.ParamType):
    """A deadline or a wait in seconds: a plain decimal number in range (no nan, inf, 1e9 or `３`)."""

    name = "SECONDS"

    def __init__(self, minimum: float):
        self.minimum = minimum

    def convert(self, value, param, ctx):
        from ..core.inputs import parse_seconds, seconds_problem

        if isinstance(value, float):
            problem = seconds_problem(value, self.minimum)
            if problem:
                self.fail(f"{problem}, not {value:g}", param, ctx)
            return value
        try:
            return parse_seconds(value, self.minimum)
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


class PercentType(click.ParamType):
    """--movable-ratio: a whole percentage in ASCII digits, 0 to MAX_MOVABLE_RATIO."""

    name = "PERCENT"

    def convert(self, value, param, ctx):
        if isinstance(value, int):
            return value
        from ..core.inputs import shown

        stripped = value.strip()
        if _PERCENT.fullmatch(stripped) is None or int(stripped) > MAX_MOVABLE_RATIO:
            self.fail(f"expected a whole percentage from 0 to {MAX_MOVABLE_RATIO}, e.g. 301, not {shown(value)}",
                      param, ctx)
        return int(stripped)


class CommandType(click.ParamType):
    """--kdump-command: split as a shell would (quotes must close), run without a shell."""

    name = "COMMAND"

    def convert(self, value, param, ctx):
        if isinstance(value, tuple):
            return value
        from ..core.inputs import split_command

        try:
            return split_command(value)
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


class LockFileType(click.ParamType):
    """--lock-file: a regular file, or one that can be created (not /dev/null, a directory or a FIFO)."""

    name = "PATH"

    def convert(self, value, param, ctx):
        from ..core.inputs import shown

        if not value:
            self.fail("expected a path, not ''", param, ctx)
        try:
            mode = os.stat(value).st_mode
        except FileNotFoundError:
            return value
        except OSError as exc:
            self.fail(f"{shown(value)}: {exc.strerror}", param, ctx)
        if not stat.S_ISREG(mode):
            self.fail(f"{shown(value)} is not a regular file: a lock needs one of its own", param, ctx)
        return value


class RootType(click.ParamType):
    """--sysfs-root: a path, never empty (an empty one would mean the current directory)."""

    name = "DIR"

    def convert(self, value, param, ctx):
        if not value:
            self.fail("expected a directory, not ''", param, ctx)
        return value


class SizeArgumentCommand(click.Command):
    """A command whose SIZE may be negative (`resize -512M`) while misspelt options stay errors.

    A word that starts with a dash and a digit is no option: it is moved behind `--`, so
    that click takes it as the SIZE, and everything else is parsed as usual (`--sizee`
    gets click's "No such option", `--reserve -1G` stays the option's value).
    """

    def parse_args(self, ctx, args):
        takes_value = {name for param in self.get_params(ctx) if isinstance(param, click.Option)
                       and not param.is_flag and not param.count for name in param.opts}
        kept: list[str] = []
        negative: list[str] = []
        position = 0
        while position < len(args):
            word = args[position]
            if word == "--":
                kept.extend(args[position:])
                break
            if word in takes_value:
                kept.extend(args[position:position + 2])
                position += 2
                continue
            (negative if _NEGATIVE_SIZE.match(word) else kept).append(word)
            position += 1
        if negative:
            if "--" not in kept:
                kept.append("--")
            separator = kept.index("--")
            kept[separator + 1:separator + 1] = negative
        return super().parse_args(ctx, kept)
