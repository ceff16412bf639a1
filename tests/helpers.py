"""Shared test helpers: run the installed `vmem-agent` command as a real subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DUMPS_DIR = PROJECT_ROOT / "tests" / "data" / "dumps"
TREES_DIR = PROJECT_ROOT / "tests" / "data" / "trees"


def agent_command() -> list[str]:
    """The console script installed beside this interpreter (what users run)."""
    script = Path(sys.executable).parent / "vmem-agent"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "vmem_agent"]


def run_agent(root: str | os.PathLike, *args: str, timeout: float = 120, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run `vmem-agent --sysfs-root ROOT ARGS...`; never without an explicit root."""
    full_env = dict(os.environ)
    full_env.pop("VMEM_AGENT_SYSFS_ROOT", None)
    if env:
        full_env.update(env)
    return subprocess.run(
        [*agent_command(), "--sysfs-root", os.fspath(root), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=full_env,
    )
