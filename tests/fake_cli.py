"""Shared pieces of the tests that run the real `vmem-agent` against the fake kernel.

Also a pytest plugin (tests/conftest.py): it provides the `idle_kernel` fixture.

The machine most of them use: 2 GiB of boot memory (blocks 0-15; block 0 reads `none`,
the rest DMA32 and refuses to go offline with EBUSY) and two offline 512 MiB DIMMs at
4 GiB: DIMM 0 = blocks 32-35, DIMM 1 = blocks 36-39.
"""

from __future__ import annotations

import json

import pytest

from tests.fakesysfs import FakeKernel, MiB, TreeSpec
from tests.fakesysfs.plugin import require_fuse
from tests.helpers import run_agent

BLOCK = 128 * MiB
VM = TreeSpec.vm(boot_gib=2, dimm_gib=(0.5, 0.5))
BOOT = range(0, 16)
DIMMS = range(32, 40)
# executor.BUSY_ATTEMPTS, restated: the documented retry count is part of the contract.
BUSY_ATTEMPTS = 3


def agent(kernel, *args, expect=None, env=None, timeout=60):
    """Run the real command on the fake; never a traceback, and the exit code if given."""
    proc = run_agent(kernel.root, *args, env=env, timeout=timeout)
    assert 'Traceback' not in proc.stderr, proc.stderr
    assert 'Traceback' not in proc.stdout, proc.stdout
    if expect is not None:
        assert proc.returncode == expect, (proc.returncode, proc.stdout, proc.stderr)
    return proc


def result_of(kernel, *args, expect=None, env=None, timeout=60):
    """Run with --json and return (the `result` object, the process)."""
    command, *rest = args  # --json right after the command, so that `-- -128M` can come last
    proc = agent(kernel, command, '--json', *rest, expect=expect, env=env, timeout=timeout)
    document = json.loads(proc.stdout)
    assert set(document) == {'result'}
    result = document['result']
    assert result['exit_code'] == proc.returncode
    return result, proc


def one_line_error(proc, *fragments):
    """Our own errors: exactly one line on stderr, `vmem-agent: ...`, naming what is given."""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith('vmem-agent: '), proc.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    assert proc.stdout == ''
    return lines[0]


def state_writes(kernel, since=0):
    """(block, value, errno) of every write to a `state` file, oldest first."""
    return [(w['block'], w['value'], w['errno']) for w in kernel.writes()[since:] if w['attribute'] == 'state']


def steps(result):
    return [(b['index'], b['operation'], b['outcome']) for b in result['blocks']]


def online_blocks(kernel, indexes=DIMMS):
    return [i for i in indexes if kernel.block(i)['state'] == 'online']


@pytest.fixture(scope='module')
def idle_kernel():
    """One fake kernel (VM) shared by a module's tests that never write."""
    require_fuse()
    with FakeKernel(VM) as kernel:
        yield kernel
