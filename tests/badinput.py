"""The bad-input suite's contract, checked on every case (tests/test_bad_input_*.py).

A case runs the real `vmem-agent` (a subprocess, memory-capped, with a timeout) on a
broken static tree or on the fake kernel, and must end:
- with a documented exit code (README's table), the one the case expects;
- with exactly one `vmem-agent: ...` line on stderr, or none where the case expects none
  (success, or a run whose outcome is reported on stdout);
- without a traceback, without a raw control character on stdout or stderr, and with
  no stderr line longer than MAX_LINE (a 100 KB argument is not echoed whole);
- within CASE_TIMEOUT_S (no hang);
- without a write after an error (nor in a dry run): the fake kernel's write log, or
  every file of a static tree, is as it was before.
"""

from __future__ import annotations

import hashlib
import os
import re
import resource
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from tests.helpers import TREES_DIR, agent_command

DOCUMENTED_EXIT_CODES = frozenset({0, 1, 2, 3, 4, 10, 11, 64, 78, 130, 141, 143})
CASE_TIMEOUT_S = 30.0
MEMORY_CAP_BYTES = 1 << 30  # a block list of 0-999999999 once took all the memory there was
MAX_LINE = 600
# Cases of one table run side by side (each its own process): the suite's run time, on 2 vCPUs.
WORKERS = min(8, 2 * (os.cpu_count() or 1))
_RAW_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
DIMM_TREE = TREES_DIR / "qemu-x86_64-dimm"  # blocks 0-15 boot (online), 32-35 a DIMM (offline)
VIRTIO_MEM_TREE = TREES_DIR / "qemu-x86_64-virtio-mem"


@dataclass(frozen=True)
class Expect:
    """What a case must end with: its exit code and, for an error line, a fragment of it (None: no line)."""

    code: int
    line: str | None = None


@dataclass(frozen=True)
class Case:
    """One table-driven case: the command line (after --sysfs-root), its environment, what it must end with."""

    id: str
    args: tuple[str, ...]
    expect: Expect
    env: dict = field(default_factory=dict)


def run_all(calls: list[Callable[[], object]]) -> list[object]:
    """Run independent cases side by side; results in order."""
    with ThreadPoolExecutor(WORKERS) as pool:
        return list(pool.map(lambda call: call(), calls))


class KernelBatch:
    """A table of cases run at once on one fake kernel, none of which may write: the write log
    over the whole batch is empty, or each case shows what was written (with the writer's pid)."""

    def __init__(self, kernel, cases: list[Case], root=None):
        self.kernel = kernel
        before = len(kernel.writes())
        target = kernel.root if root is None else root
        results = run_all([lambda case=case: run_capped(target, *case.args, env=case.env) for case in cases])
        self.results = {case.id: result for case, result in zip(cases, results)}
        self.writes = kernel.writes()[before:]

    def check(self, case: Case) -> str | None:
        line = check(self.results[case.id], case.expect)
        assert self.writes == [], f"written during the batch (pids {[w['pid'] for w in self.writes]}): {self.writes}"
        return line


def _cap_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_CAP_BYTES, MEMORY_CAP_BYTES))


def run_capped(root, *args: str, env: dict | None = None, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL,
               timeout: float = CASE_TIMEOUT_S) -> subprocess.CompletedProcess:
    """`vmem-agent --sysfs-root ROOT ARGS...` with a memory cap and a timeout (a hang fails the case)."""
    full_env = {key: value for key, value in os.environ.items() if not key.startswith("VMEM_AGENT_")}
    full_env.update(env or {})
    argv = [*agent_command(), *(["--sysfs-root", os.fspath(root)] if root is not None else []), *args]
    try:
        return subprocess.run(argv, stdin=stdin, stdout=stdout, stderr=subprocess.PIPE, env=full_env,
                              timeout=timeout, preexec_fn=_cap_memory)
    except subprocess.TimeoutExpired as exc:
        raise AssertionError(f"hang: {argv[-len(args):]} did not end within {timeout}s") from exc


def check(proc: subprocess.CompletedProcess, expect: Expect) -> str | None:
    """Assert the contract for one finished case; the stderr line, if any."""
    stdout = _text(proc.stdout)
    stderr = _text(proc.stderr)
    where = f"exit {proc.returncode}, stderr {stderr[:2000]!r}, stdout {stdout[:500]!r}"
    assert proc.returncode in DOCUMENTED_EXIT_CODES, f"undocumented exit code: {where}"
    assert proc.returncode == expect.code, f"expected exit {expect.code}: {where}"
    assert "Traceback" not in stderr and "Traceback" not in stdout, where
    assert not _RAW_CONTROL.search(stdout), f"raw control character on stdout: {where}"
    assert not _RAW_CONTROL.search(stderr), f"raw control character on stderr: {where}"
    lines = stderr.splitlines()
    if expect.line is None:
        assert lines == [], f"expected no line on stderr: {where}"
        return None
    assert len(lines) == 1, f"expected exactly one line on stderr: {where}"
    line = lines[0]
    assert line.startswith("vmem-agent: "), where
    assert len(line) <= MAX_LINE, f"a stderr line of {len(line)} characters: {line[:200]!r}..."
    assert expect.line in line, f"expected {expect.line!r} in the line: {where}"
    return line


def _text(data) -> str:
    if data is None:
        return ""
    return data if isinstance(data, str) else data.decode("utf-8", "backslashreplace")


# -- static trees -----------------------------------------------------------------------------


def copy_tree(source: Path, destination: Path) -> Path:
    """A writable copy of a recorded tree (links kept as links, as sysfs has them)."""
    shutil.copytree(source, destination, symlinks=True)
    return destination


def tree_digest(root: Path) -> str:
    """Every regular file's path and content under root: equal digests mean nothing was written."""
    digest = hashlib.sha256()
    for directory, dirs, files in sorted(os.walk(root)):
        dirs.sort()
        for name in sorted(files):
            path = os.path.join(directory, name)
            if os.path.islink(path) or not os.path.isfile(path):
                continue
            digest.update(path.encode(errors="surrogateescape") + b"\0")
            with open(path, "rb") as handle:
                digest.update(handle.read() + b"\0")
    return digest.hexdigest()


# -- the fake kernel --------------------------------------------------------------------------


def check_on_fake_kernel(kernel, args: tuple[str, ...], expect: Expect, env: dict | None = None,
                         allow_writes: bool = False, **run) -> str | None:
    """Run one case on the fake kernel; its write log must show no write, unless writes are the point."""
    writes_before = len(kernel.writes())
    line = check(run_capped(kernel.root, *args, env=env, **run), expect)
    if not allow_writes:
        assert kernel.writes()[writes_before:] == [], f"{args}: written (exit {expect.code})"
    return line
