"""The engine and the executor in this process, against the fake kernel (tests/fakesysfs).

The CLI tests (test_cli_resize.py, test_cli_manual.py) cover the paths a user takes; these
reach what the command line cannot (a zero deadline, the retry count, the gateway's
offline timeout) and pin engine-level bugs to the function that has them.
"""

from __future__ import annotations

import errno

import psutil
import pytest

from tests.fakesysfs import GiB, MiB, TreeSpec
from vmem_agent.engine import runner as engine
from vmem_agent.engine.runner import RunOptions
from vmem_agent.core.policy import PolicyConfig
from vmem_agent.errors import EXIT_FAILURE, EXIT_OK, InvalidRequestError, OfflineTimeoutError
from vmem_agent.engine.executor import BlockWriter, Deadline
from vmem_agent.engine.kdump import KdumpConfig
from vmem_agent.kernel.offline_child import offline_block
from vmem_agent.kernel.sysfs import Sysfs

BLOCK = 128 * MiB
VM = TreeSpec.vm(boot_gib=2, dimm_gib=(0.5, 0.5))
DIMMS = range(32, 40)


@pytest.fixture
def options(tmp_path):
    return RunOptions(lock_path=str(tmp_path / 'lock'), kdump=KdumpConfig(mode='never'))


def state_writes(kernel, since=0):
    return [(w['block'], w['value'], w['errno']) for w in kernel.writes()[since:] if w['attribute'] == 'state']


@pytest.mark.fake_kernel(VM)
def test_resize_in_process(fake_kernel, options):
    sysfs = Sysfs(fake_kernel.root)
    result = engine.resize(sysfs, '3G', options)
    assert result.exit_code == EXIT_OK and result.reached and result.changed
    assert [r.index for r in result.blocks] == list(DIMMS)
    assert result.kdump.action == 'skipped'
    result = engine.resize(sysfs, '2.5G', options)
    assert [r.index for r in result.blocks] == [39, 38, 37, 36]
    assert state_writes(fake_kernel)[-4:] == [(i, 'offline', 0) for i in (39, 38, 37, 36)]


@pytest.mark.fake_kernel(VM)
def test_plan_resize_writes_nothing(fake_kernel):
    state, target, plan = engine.plan_resize(Sysfs(fake_kernel.root), '2100M', RunOptions())
    assert target.bytes == 2 * GiB + BLOCK and target.rounded
    assert [a.index for a in plan.actions] == [32]
    assert fake_kernel.writes() == []


@pytest.mark.fake_kernel(VM)
def test_expired_deadline_attempts_nothing(fake_kernel, tmp_path):
    options = RunOptions(lock_path=str(tmp_path / 'lock'), timeout=0.0)
    result = engine.resize(Sysfs(fake_kernel.root), '3G', options)
    assert result.exit_code == EXIT_FAILURE and not result.changed and result.kdump is None
    assert [(r.index, r.outcome) for r in result.blocks] == [(i, 'not-attempted') for i in DIMMS]
    assert [note.code for note in result.notes] == ['deadline-expired']
    assert fake_kernel.writes() == []


@pytest.mark.fake_kernel(VM)
def test_online_amount_is_not_re_planned_per_round(fake_kernel, options):
    """engine.change_blocks('online', '256M') must online 256M in all. Today every round
    plans 256M more against the new snapshot, until nothing is left offline."""
    result = engine.change_blocks(Sysfs(fake_kernel.root), 'online', '256M', options)
    assert [r.index for r in result.blocks] == [32, 33]
    assert result.final_online_bytes == 2 * GiB + 256 * MiB
    assert result.exit_code == EXIT_OK


@pytest.mark.fake_kernel(VM)
def test_block_writer_retries_ebusy_a_given_number_of_times(fake_kernel, options):
    sysfs = Sysfs(fake_kernel.root)
    engine.change_blocks(sysfs, 'online', '39', options)
    fake_kernel.set_offline_behaviour(39, 'busy')
    writer = BlockWriter(sysfs, block_timeout=5, busy_attempts=2)
    outcome = writer.apply(39, 39 * BLOCK, 40 * BLOCK - 1, 'offline', Deadline(30))
    assert (outcome.outcome, outcome.attempts, outcome.errno) == ('failed', 2, errno.EBUSY)
    assert state_writes(fake_kernel)[-2:] == [(39, 'offline', errno.EBUSY)] * 2


@pytest.mark.fake_kernel(VM)
def test_gateway_offline_timeout_interrupts_and_reaps_the_writer(fake_kernel, options):
    sysfs = Sysfs(fake_kernel.root)
    engine.change_blocks(sysfs, 'online', '39', options)
    fake_kernel.set_offline_behaviour(39, 'hang')
    before = len(fake_kernel.writes())
    with pytest.raises(OfflineTimeoutError) as caught:
        offline_block(sysfs, 39, 0.3)
    assert caught.value.writer_stuck_pid is None and caught.value.block == 39
    assert fake_kernel.block(39)['state'] == 'online'
    writes = fake_kernel.writes()[before:]
    assert [(w['block'], w['errno']) for w in writes] == [(39, errno.EINTR)]
    assert not psutil.pid_exists(writes[0]['pid'])


@pytest.mark.fake_kernel(VM)
def test_memory_figures_come_from_the_roots_meminfo(fake_kernel):
    """MemTotal/MemAvailable are read through the gateway from ROOT/proc/meminfo, and move
    with the fake kernel's knobs (nothing process-global such as psutil's PROCFS_PATH)."""
    sysfs = Sysfs(fake_kernel.root)
    before = sysfs.memory_figures()
    fake_kernel.set_memory_used(1 * GiB)
    after = sysfs.memory_figures()
    assert before is not None and after is not None
    assert after.total_bytes == before.total_bytes
    assert after.available_bytes == after.total_bytes - 1 * GiB


@pytest.mark.fake_kernel(VM)
def test_online_in_another_zone_is_not_already_done(fake_kernel, options):
    """EINVAL for online_movable on a block online in Normal is not "already": the gateway
    raises it and names the zone; the CLI run notes it and does not call it done."""
    sysfs = Sysfs(fake_kernel.root)
    assert sysfs.write_block_state(36, 'online_kernel') == 'changed'
    assert sysfs.write_block_state(36, 'online_kernel') == 'already'
    with pytest.raises(InvalidRequestError, match="already online, in zone Normal"):
        sysfs.write_block_state(36, 'online_movable')
    assert sysfs.write_block_state(36, 'online') == 'already'
    result = engine.change_blocks(sysfs, 'online', '36', RunOptions(
        policy=PolicyConfig(zone_mode='movable'), lock_path=options.lock_path, kdump=options.kdump))
    assert result.blocks == [] and result.exit_code == EXIT_FAILURE
    assert [note.code for note in result.notes] == ['online-in-other-zone']


@pytest.mark.fake_kernel(VM)
def test_a_run_prints_the_same_from_its_json_wire_form(fake_kernel, options):
    """A daemon sends RunResult.to_json() over its socket: rendered after a JSON round trip,
    a result must read exactly as it does in the process that ran it."""
    import json

    from vmem_agent.cli import report

    sysfs = Sysfs(fake_kernel.root)
    engine.resize(sysfs, '3G', options)
    fake_kernel.set_offline_behaviour(37, 'busy')
    result = engine.resize(sysfs, '2.5G', options)
    wire = result.to_json()
    received = json.loads(json.dumps(wire))
    assert report.render_run(received) == report.render_run(wire)
    assert report.result_document(received) == report.result_document(wire)
    text = report.render_run(received)
    assert 'memory blocks 38-39 (0x130000000-0x13fffffff): online_movable done, zone Movable (rolled back)' in text
    assert 'ready to eject' in text
