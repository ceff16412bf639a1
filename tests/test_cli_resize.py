"""`vmem-agent resize` and `plan`, run as the real installed command against the fake kernel.

Every test runs the `vmem-agent` console script as a subprocess with `--sysfs-root` pointing
at a FUSE-served fake kernel (tests/fakesysfs), parses `--json` results for exact checks
and looks at the human output in a few places. What the agent wrote is read back from the
fake kernel (`writes()`, `block()`, `uevents()`), never from the agent's own report alone.

The machine of most tests: 2 GiB of boot memory (blocks 0-15; block 0 reads `none`, the
rest DMA32 and refuses to go offline with EBUSY) and two offline 512 MiB DIMMs in QEMU's
hotplug region at 4 GiB: DIMM 0 = blocks 32-35, DIMM 1 = blocks 36-39.
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

from tests.fake_cli import (
    BLOCK, BOOT, BUSY_ATTEMPTS, DIMMS, VM, agent, one_line_error, online_blocks, result_of, state_writes)
from tests.fakesysfs import BlockSpec, GiB, MiB, TreeSpec
from tests.helpers import agent_command
from vmem_agent.paths import lock_path as default_lock_path

VM_CRASH_HOTPLUG_1 = TreeSpec.vm(boot_gib=2, dimm_gib=(0.5, 0.5), crash_hotplug=1)
VM_CRASH_HOTPLUG_0 = TreeSpec.vm(boot_gib=2, dimm_gib=(0.5, 0.5), crash_hotplug=0)
ONE_DIMM = TreeSpec.vm(boot_gib=2, dimm_gib=(0.5,))
VIRTIO_MEM = TreeSpec.vm(boot_gib=2, virtio_mem_gib=2, virtio_mem_plugged_gib=1)
DIMM0 = range(32, 36)
DIMM1 = range(36, 40)
MEMORY = 'sys/devices/system/memory'


# -- helpers ---------------------------------------------------------------------------------


def valid_zones(kernel, index):
    return (Path(kernel.root) / MEMORY / f'memory{index}' / 'valid_zones').read_text().strip()


def grow_to_3g(kernel, *extra):
    result, _ = result_of(kernel, 'resize', '3G', *extra, expect=0)
    assert result['final_online_bytes'] == 3 * GiB
    return result


def by_index(result):
    return {block['index']: block for block in result['blocks']}


def counter_script(tmp_path, fail=False):
    """A reload command that counts its runs in a file (and fails if asked)."""
    counter = tmp_path / 'reloads'
    script = tmp_path / 'reload.py'
    script.write_text(
        'import sys\n'
        'with open(sys.argv[1], "a") as f:\n'
        '    f.write("x\\n")\n'
        + ('sys.stderr.write("kdump: cannot load the crash kernel\\n")\nsys.exit(3)\n' if fail else '')
    )
    return f'{sys.executable} {script} {counter}', counter


def reloads(counter):
    return len(counter.read_text().splitlines()) if counter.exists() else 0


# -- grow ------------------------------------------------------------------------------------


@pytest.mark.fake_kernel(VM)
def test_grow_onlines_the_lowest_offline_blocks_into_movable(fake_kernel):
    result, _ = result_of(fake_kernel, 'resize', '3G', expect=0)
    assert result['target_bytes'] == 3 * GiB
    assert result['initial_online_bytes'] == 2 * GiB
    assert result['final_online_bytes'] == 3 * GiB
    assert result['reached'] is True and result['dry_run'] is False
    assert result['shortfall_bytes'] == 0 and result['excess_bytes'] == 0
    assert [b['index'] for b in result['blocks']] == list(DIMMS)
    for block in result['blocks']:
        assert block['operation'] == 'online_movable'
        assert block['outcome'] == 'done' and block['attempts'] == 1 and block['errno'] is None
        assert block['zone'] == 'Movable'
        assert block['start'] == block['index'] * BLOCK
        assert block['end'] == (block['index'] + 1) * BLOCK - 1
    # The kernel agrees: exactly those blocks were written, once each, and are Movable now.
    assert state_writes(fake_kernel) == [(i, 'online_movable', 0) for i in DIMMS]
    for index in DIMMS:
        assert fake_kernel.block(index)['state'] == 'online'
        assert fake_kernel.block(index)['zone'] == 'Movable'
        assert valid_zones(fake_kernel, index) == 'Movable'
    assert result['kdump'] == {'action': 'skipped', 'reason': 'no crash kernel loaded', 'command': None,
                               'returncode': None}


@pytest.mark.fake_kernel(VM)
def test_partial_grow_takes_exactly_the_lowest_blocks(fake_kernel):
    result, _ = result_of(fake_kernel, 'resize', '2.25G', expect=0)
    assert [b['index'] for b in result['blocks']] == [32, 33]
    assert online_blocks(fake_kernel, DIMMS) == [32, 33]
    assert state_writes(fake_kernel) == [(32, 'online_movable', 0), (33, 'online_movable', 0)]


@pytest.mark.fake_kernel(VM)
def test_grow_zone_normal_forces_the_kernel_zone(fake_kernel):
    result, _ = result_of(fake_kernel, 'resize', '3G', '--zone', 'normal', expect=0)
    assert {b['operation'] for b in result['blocks']} == {'online_kernel'}
    assert {b['zone'] for b in result['blocks']} == {'Normal'}
    for index in DIMMS:
        assert fake_kernel.block(index)['zone'] == 'Normal'
        assert valid_zones(fake_kernel, index) == 'Normal'


@pytest.mark.fake_kernel(VM)
def test_grow_zone_movable_forces_movable(fake_kernel):
    result, _ = result_of(fake_kernel, 'resize', '2.5G', '--zone', 'movable', expect=0)
    assert [(b['index'], b['operation'], b['zone']) for b in result['blocks']] == [
        (i, 'online_movable', 'Movable') for i in DIMM0]
    assert [fake_kernel.block(i)['zone'] for i in DIMM0] == ['Movable'] * 4


@pytest.mark.fake_kernel(VM)
def test_grow_human_output_names_blocks_range_and_zone(fake_kernel):
    proc = agent(fake_kernel, 'resize', '3G', expect=0)
    assert proc.stderr == ''
    lines = proc.stdout.splitlines()
    assert 'memory blocks 32-39 (0x100000000-0x13fffffff): online_movable done, zone Movable' in lines
    assert 'Online memory: 2G -> 3G (target 3G): done' in lines
    assert 'kdump: skipped (no crash kernel loaded)' in lines


@pytest.mark.fake_kernel(VM)
def test_grow_sends_one_online_uevent_per_block_in_order(fake_kernel):
    grow_to_3g(fake_kernel)
    events = fake_kernel.uevents()
    assert [(e['ACTION'], e['DEVPATH']) for e in events] == [
        ('online', f'/devices/system/memory/memory{i}') for i in DIMMS]
    assert [int(e['SEQNUM']) for e in events] == sorted(int(e['SEQNUM']) for e in events)


@pytest.mark.fake_kernel(VIRTIO_MEM)
def test_grow_onto_virtio_mem_blocks(fake_kernel):
    status = json.loads(agent(fake_kernel, 'status', '--json', expect=0).stdout)['memory']
    hotplugged = [b for b in status['blocks'] if b['origin'] != 'boot']
    assert [b['index'] for b in hotplugged] == list(DIMMS)  # the plugged first 1 GiB of the device
    assert {(b['origin'], b['group'], b['state']) for b in hotplugged} == {
        ('virtio-mem', 'virtio-mem:virtio0', 'offline')}

    result, _ = result_of(fake_kernel, 'resize', '3G', expect=0)
    assert [b['index'] for b in result['blocks']] == list(DIMMS)
    assert online_blocks(fake_kernel, DIMMS) == list(DIMMS)
    status = json.loads(agent(fake_kernel, 'status', '--json', expect=0).stdout)['memory']
    assert status['online_bytes'] == 3 * GiB
    assert {(b['origin'], b['state']) for b in status['blocks'] if b['index'] in DIMMS} == {('virtio-mem', 'online')}

    # Offlining virtio-mem memory gives the host nothing: resize leaves it, and says what to do.
    before = len(fake_kernel.writes())
    result, proc = result_of(fake_kernel, 'resize', '2.5G', expect=1)
    assert result['blocks'] == [] and fake_kernel.writes()[before:] == []
    assert [n['code'] for n in result['note_codes']][-1] == 'virtio-mem-lower-requested-size'
    assert "lower the device's requested-size on the host" in result['notes'][-1]
    # --per-block still does it, block by block, and each block's reason says what it costs.
    result, _ = result_of(fake_kernel, 'resize', '2.5G', '--per-block', expect=0)
    assert [(b['index'], b['operation']) for b in result['blocks']] == [(i, 'offline') for i in (39, 38, 37, 36)]
    assert {b['reason_code'] for b in result['blocks']} == {'virtio-mem-block'}


# -- shrink ----------------------------------------------------------------------------------


@pytest.mark.fake_kernel(VM)
def test_shrink_offlines_only_hotplugged_blocks_highest_first(fake_kernel):
    grow_to_3g(fake_kernel)
    before = len(fake_kernel.writes())
    result, _ = result_of(fake_kernel, 'resize', '2G', expect=0)
    assert result['initial_online_bytes'] == 3 * GiB and result['final_online_bytes'] == 2 * GiB
    assert [(b['index'], b['operation'], b['outcome']) for b in result['blocks']] == [
        (i, 'offline', 'done') for i in reversed(DIMMS)]
    assert state_writes(fake_kernel, before) == [(i, 'offline', 0) for i in reversed(DIMMS)]
    # Boot memory was never written, not even once.
    assert not [w for w in fake_kernel.writes() if w['block'] in BOOT]
    assert online_blocks(fake_kernel, DIMMS) == []
    assert online_blocks(fake_kernel, BOOT) == list(BOOT)


@pytest.mark.fake_kernel(VM)
def test_shrink_takes_movable_before_normal_even_when_lower(fake_kernel):
    agent(fake_kernel, 'online', '32-35', '--zone', 'movable', expect=0)
    agent(fake_kernel, 'online', '36-39', '--zone', 'normal', expect=0)
    assert [fake_kernel.block(i)['zone'] for i in DIMMS] == ['Movable'] * 4 + ['Normal'] * 4
    before = len(fake_kernel.writes())
    result, _ = result_of(fake_kernel, 'resize', '2.5G', expect=0)
    assert [b['index'] for b in result['blocks']] == [35, 34, 33, 32]
    result, _ = result_of(fake_kernel, 'resize', '2G', expect=0)
    assert [b['index'] for b in result['blocks']] == [39, 38, 37, 36]
    assert [w[0] for w in state_writes(fake_kernel, before)] == [35, 34, 33, 32, 39, 38, 37, 36]


@pytest.mark.fake_kernel(VM)
def test_shrink_human_output(fake_kernel):
    grow_to_3g(fake_kernel)
    proc = agent(fake_kernel, 'resize', '2.5G', expect=0)
    assert proc.stdout.splitlines()[:2] == [
        'memory blocks 36-39 (0x120000000-0x13fffffff): offline done',
        'Online memory: 3G -> 2.5G (target 2.5G): done',
    ]


FOUR_DIMMS = TreeSpec.vm(boot_gib=2, dimm_gib=(1, 1, 1, 1))


@pytest.mark.fake_kernel(FOUR_DIMMS)
def test_the_issues_case_whole_dimms_come_back_and_a_split_is_said(fake_kernel):
    """2 GiB of boot memory and four 1 GiB DIMMs (32-39, 40-47, 48-55, 56-63), all online.
    `resize 5G` with block 60 busy used to offline 61-63 and 55-59: two DIMMs half offline,
    nothing the host could unplug. Now DIMM 3 is rolled back and DIMM 2 emptied; and
    `resize 4.5G` says which DIMM it leaves partly offline."""
    agent(fake_kernel, 'resize', '6G', expect=0)
    fake_kernel.set_offline_behaviour(60, 'busy')
    result, _ = result_of(fake_kernel, 'resize', '5G', expect=0)
    devices = {d['name']: (d['state'], d['ready_to_eject']) for d in result['devices']}
    assert devices == {'PNP0C80:00': ('online', False), 'PNP0C80:01': ('online', False),
                       'PNP0C80:02': ('offline', True), 'PNP0C80:03': ('online', False)}
    assert online_blocks(fake_kernel, range(32, 64)) == [*range(32, 48), *range(56, 64)]
    proc = agent(fake_kernel, 'resize', '4.5G', expect=0)
    lines = proc.stdout.splitlines()
    assert 'DIMM PNP0C80:01 (1G, slot 1, 0x140000000-0x17fffffff, blocks 40-47): partly offline (512M of it offline): ' \
           'the host cannot unplug it' in lines
    assert any(line.startswith('note: DIMM PNP0C80:01 in slot 1 is left partly offline (512M of its 1G)') for line in lines), lines
    assert online_blocks(fake_kernel, range(32, 64)) == [*range(32, 44), *range(56, 64)]


UNKNOWN_AND_KMEM = TreeSpec(blocks=[*(BlockSpec(i) for i in range(16)),
                                     *(BlockSpec(i, boot=False, zone='Movable') for i in (32, 33)),
                                     *(BlockSpec(i, boot=False, zone='Movable', group=('kmem', 0)) for i in (34, 35))])


@pytest.mark.fake_kernel(UNKNOWN_AND_KMEM)
def test_memory_of_unknown_origin_or_kmem_is_offlined_only_when_named(fake_kernel):
    """Blocks 32-33 are not in the boot E820 table and no device claims them (origin
    unknown); 34-35 are dax/kmem memory. resize never takes them, whatever the unit."""
    status = json.loads(agent(fake_kernel, 'status', '--json', expect=0).stdout)['memory']
    assert [(b['index'], b['origin']) for b in status['blocks'] if b['index'] >= 32] == [
        (32, 'hotplug'), (33, 'hotplug'), (34, 'kmem'), (35, 'kmem')]
    for unit in ([], ['--per-block']):
        result, _ = result_of(fake_kernel, 'resize', '2G', *unit, expect=1)
        assert result['blocks'] == []
        assert {n['code'] for n in result['note_codes']} >= {'origin-never-offlined'}
    assert fake_kernel.writes() == []
    result, _ = result_of(fake_kernel, 'offline', '32-35', expect=64)
    assert [(b['index'], b['outcome']) for b in result['blocks']] == [(35, 'done'), (34, 'done')]
    assert [n['code'] for n in result['note_codes']] == ['unknown-origin-needs-force']
    result, _ = result_of(fake_kernel, 'offline', '32-33', '--force', expect=0)
    assert [(b['index'], b['reason_code']) for b in result['blocks']] == [(33, 'forced-unknown-origin'),
                                                                         (32, 'forced-unknown-origin')]


# -- no-op and relative sizes -----------------------------------------------------------------


@pytest.mark.fake_kernel(VM)
@pytest.mark.parametrize('size', ['2G', '2GiB', '2048M', '2147483648', '+0'])
def test_resize_to_the_current_size_writes_nothing(fake_kernel, size):
    fake_kernel.set_crash(loaded=True)  # a changing run would reload; this one must not
    result, proc = result_of(fake_kernel, 'resize', size, expect=0)
    assert result['blocks'] == [] and result['kdump'] is None and result['reached'] is True
    assert result['final_online_bytes'] == result['initial_online_bytes'] == 2 * GiB
    assert fake_kernel.writes() == []
    assert fake_kernel.uevents() == []
    human = agent(fake_kernel, 'resize', size, expect=0)
    assert human.stdout.strip() == 'Online memory: 2G -> 2G (target 2G): done'
    assert fake_kernel.writes() == []


@pytest.mark.fake_kernel(VM)
def test_relative_grow_and_shrink(fake_kernel):
    result, _ = result_of(fake_kernel, 'resize', '+256M', expect=0)
    assert result['target_bytes'] == 2 * GiB + 256 * MiB
    assert [b['index'] for b in result['blocks']] == [32, 33]
    # `--` is how click lets a leading '-' through; see the next test for the bare form.
    result, _ = result_of(fake_kernel, 'resize', '--', '-128M', expect=0)
    assert result['target_bytes'] == 2 * GiB + 128 * MiB
    assert [(b['index'], b['operation']) for b in result['blocks']] == [(33, 'offline')]
    assert online_blocks(fake_kernel, DIMMS) == [32]


@pytest.mark.fake_kernel(VM)
def test_relative_shrink_without_double_dash(fake_kernel):
    """README: `vmem-agent resize -512M` is relative to what is online. click must not take
    `-128M` for an option cluster (`No such option '-1'`). Fails until resize accepts it."""
    grow_to_3g(fake_kernel)
    result, _ = result_of(fake_kernel, 'resize', '-128M', expect=0)
    assert result['target_bytes'] == 3 * GiB - 128 * MiB
    assert [b['index'] for b in result['blocks']] == [39]


@pytest.mark.fake_kernel(VM)
def test_size_between_blocks_rounds_up_and_says_so(fake_kernel):
    result, _ = result_of(fake_kernel, 'resize', '2100M', expect=0)
    assert result['target_bytes'] == 2 * GiB + 128 * MiB  # 2100M rounds up to 17 blocks
    assert [b['index'] for b in result['blocks']] == [32]
    assert result['notes'] == ['2100M is not a multiple of the 128M block size: using 2.125G']
    human = agent(fake_kernel, 'resize', '2100M', expect=0)  # now a no-op, the note stays
    assert 'note: 2100M is not a multiple of the 128M block size: using 2.125G' in human.stdout.splitlines()
    assert len(state_writes(fake_kernel)) == 1


@pytest.mark.parametrize('size, named', [
    ('6X', "'6X'"),
    ('', "''"),
    ('1e999', "'1e999'"),
    ('1.5', "'1.5'"),
    ('100G', '100G'),
    ('3.2G', '3.2G'),  # rounds up to 3.25G, above the 3G present
    ('0', "target 0"),
    ('+2G', '+2G'),
    ('99999999999999999999999G', "'99999999999999999999999G'"),
])
def test_bad_sizes_are_usage_errors_naming_the_input(idle_kernel, size, named):
    proc = agent(idle_kernel, 'resize', size, expect=2)
    one_line_error(proc, named)
    assert idle_kernel.writes() == []


@pytest.mark.parametrize('size', ['-', '-3G'])
def test_bad_negative_sizes_are_usage_errors(idle_kernel, size):
    proc = agent(idle_kernel, 'resize', '--', size, expect=2)
    one_line_error(proc, repr(size) if size == '-' else size)
    assert idle_kernel.writes() == []


# -- EBUSY -----------------------------------------------------------------------------------


@pytest.mark.fake_kernel(VM)
def test_busy_block_is_given_up_after_retries_and_its_dimm_replaced(fake_kernel):
    grow_to_3g(fake_kernel)
    fake_kernel.set_offline_behaviour(39, 'busy')
    before = len(fake_kernel.writes())
    result, _ = result_of(fake_kernel, 'resize', '2.5G', expect=0)
    assert result['reached'] is True and result['final_online_bytes'] == int(2.5 * GiB)
    blocks = by_index(result)
    assert blocks[39]['outcome'] == 'failed' and blocks[39]['errno'] == 'EBUSY'
    assert blocks[39]['attempts'] == BUSY_ATTEMPTS
    assert 'EBUSY' in blocks[39]['message'] and str(BUSY_ATTEMPTS) in blocks[39]['message']
    # DIMM 1 cannot be emptied: DIMM 0 is emptied instead (nothing of DIMM 1 to roll back).
    assert [(b['index'], b['outcome']) for b in result['blocks'][1:]] == [(i, 'done') for i in (35, 34, 33, 32)]
    writes = state_writes(fake_kernel, before)
    assert writes[:BUSY_ATTEMPTS] == [(39, 'offline', 16)] * BUSY_ATTEMPTS  # 16 = EBUSY
    assert writes[BUSY_ATTEMPTS:] == [(i, 'offline', 0) for i in (35, 34, 33, 32)]
    assert online_blocks(fake_kernel, DIMMS) == list(DIMM1)
    assert {d['name']: (d['state'], d['ready_to_eject']) for d in result['devices']} == {
        'PNP0C80:00': ('offline', True), 'PNP0C80:01': ('online', False)}


@pytest.mark.fake_kernel(VM)
@pytest.mark.parametrize('behaviour', ['busy', 'hang'])
def test_a_dimm_that_cannot_be_emptied_is_rolled_back_and_the_next_one_emptied(fake_kernel, behaviour):
    """EBUSY (after its retries) or a hang in the middle of a DIMM: the blocks of that DIMM
    offlined in this run go back online, into their zone, and the next DIMM is emptied."""
    grow_to_3g(fake_kernel)
    fake_kernel.set_offline_behaviour(37, behaviour)
    before = len(fake_kernel.writes())
    result, _ = result_of(fake_kernel, 'resize', '2.5G', '--block-timeout', '1', expect=0)
    outcome = 'failed' if behaviour == 'busy' else 'timed-out'
    assert [(b['index'], b['operation'], b['outcome'], b['rollback']) for b in result['blocks']] == [
        (39, 'offline', 'done', False), (38, 'offline', 'done', False), (37, 'offline', outcome, False),
        (38, 'online_movable', 'done', True), (39, 'online_movable', 'done', True),
        *[(i, 'offline', 'done', False) for i in (35, 34, 33, 32)]]
    assert {b['unit'] for b in result['blocks']} == {'acpi:PNP0C80:01', 'acpi:PNP0C80:00'}
    assert [b['reason_code'] for b in result['blocks'] if b['rollback']] == ['rollback', 'rollback']
    rolled = [n for n in result['note_codes'] if n['code'] == 'dimm-rolled-back']
    assert rolled == [{'code': 'dimm-rolled-back', 'blocks': [38, 39], 'group': 'acpi:PNP0C80:01', 'failed_block': 37}]
    # The kernel agrees: DIMM 1 is online again in Movable, DIMM 0 is offline and can be ejected.
    assert [fake_kernel.block(i)['zone'] for i in DIMM1] == ['Movable'] * 4
    assert online_blocks(fake_kernel, DIMMS) == list(DIMM1)
    assert result['reached'] is True and result['final_online_bytes'] == int(2.5 * GiB)
    writes = [w for w in state_writes(fake_kernel, before) if w[1] != 'offline' or w[0] != 37]
    assert writes == [(39, 'offline', 0), (38, 'offline', 0), (38, 'online_movable', 0), (39, 'online_movable', 0),
                      *[(i, 'offline', 0) for i in (35, 34, 33, 32)]]
    assert result['devices'][0]['ready_to_eject'] is True and result['devices'][0]['slot'] == 0
    human = agent(fake_kernel, 'status', expect=0).stdout
    assert 'DIMM PNP0C80:00 (512M, slot 0, 0x100000000-0x11fffffff, blocks 32-35): offline, ready to eject' in human


@pytest.mark.fake_kernel(VM)
def test_busy_once_then_ok_succeeds_on_the_retry(fake_kernel):
    grow_to_3g(fake_kernel)
    fake_kernel.set_offline_behaviour(39, ('busy', 1))
    result, _ = result_of(fake_kernel, 'resize', '2.875G', expect=0)
    assert [(b['index'], b['outcome'], b['attempts'], b['errno']) for b in result['blocks']] == [
        (39, 'done', 2, None)]


@pytest.mark.fake_kernel(ONE_DIMM)
def test_a_dimm_that_cannot_be_emptied_fails_with_the_exact_gap(fake_kernel):
    agent(fake_kernel, 'resize', '2.5G', expect=0)
    for index in DIMM0:
        fake_kernel.set_offline_behaviour(index, 'busy')
    result, _ = result_of(fake_kernel, 'resize', '2G', expect=1)
    assert result['reached'] is False and result['kdump'] is None
    assert result['final_online_bytes'] == int(2.5 * GiB)
    # A shrink that stops short leaves memory over the target: excess_bytes says how much.
    assert result['excess_bytes'] == 512 * MiB and result['shortfall_bytes'] == 0
    # Its first block fails: the rest of the DIMM is not tried (emptying it can no longer work).
    assert [(b['index'], b['outcome'], b['errno'], b['attempts']) for b in result['blocks']] == [
        (35, 'failed', 'EBUSY', BUSY_ATTEMPTS)]
    assert online_blocks(fake_kernel, DIMM0) == list(DIMM0)


@pytest.mark.fake_kernel(ONE_DIMM)
def test_some_blocks_busy_per_block_is_partial(fake_kernel):
    agent(fake_kernel, 'resize', '2.5G', expect=0)
    fake_kernel.set_offline_behaviour(35, 'busy')
    fake_kernel.set_offline_behaviour(34, 'busy')
    result, _ = result_of(fake_kernel, 'resize', '2G', expect=1)  # by DIMM: nothing can be emptied
    assert [(b['index'], b['outcome']) for b in result['blocks']] == [(35, 'failed')]
    result, _ = result_of(fake_kernel, 'resize', '2G', '--per-block', expect=64)
    assert result['final_online_bytes'] == 2 * GiB + 256 * MiB
    assert result['excess_bytes'] == 256 * MiB
    assert [(b['index'], b['outcome']) for b in result['blocks']] == [
        (35, 'failed'), (34, 'failed'), (33, 'done'), (32, 'done')]
    assert result['kdump'] is not None  # something changed
    assert result['devices'][0]['state'] == 'partly-offline'


@pytest.mark.fake_kernel(ONE_DIMM)
def test_busy_human_output_names_block_range_and_gap(fake_kernel):
    agent(fake_kernel, 'resize', '2.5G', expect=0)
    fake_kernel.set_offline_behaviour(35, 'busy')
    fake_kernel.set_offline_behaviour(34, 'busy')
    proc = agent(fake_kernel, 'resize', '2G', '--per-block', expect=64)
    lines = proc.stdout.splitlines()
    # Both busy blocks failed alike: one line names them and their address range.
    busy = [line for line in lines if line.startswith('memory block') and 'failed' in line]
    assert len(busy) == 1, lines
    assert busy[0].startswith('memory blocks 34-35 (0x110000000-0x11fffffff): offline failed')
    assert 'EBUSY' in busy[0] and f'{BUSY_ATTEMPTS} attempts' in busy[0]
    assert busy[0].count('EBUSY') == 1 and busy[0].count('35') == 1  # said once, not repeated
    assert 'memory blocks 32-33 (0x100000000-0x10fffffff): offline done' in lines
    summary = [line for line in lines if line.startswith('Online memory: ')]
    # 2.25G shows as 2.3G, as lsmem rounds; the gap is exact.
    assert len(summary) == 1 and summary[0].startswith('Online memory: 2.5G -> 2.3G (target 2G), 256M ')
    assert 'above' in summary[0] and summary[0].endswith(': partial')
    # The DIMM is named: partly offline, so the host cannot unplug it.
    assert ('DIMM PNP0C80:00 (512M, slot 0, 0x100000000-0x11fffffff, blocks 32-35): partly offline (256M of it offline): '
            'the host cannot unplug it') in lines


# -- hanging offlines and deadlines -----------------------------------------------------------


def writer_pids(kernel, since=0, value='offline'):
    return {w['pid'] for w in kernel.writes()[since:] if w['value'] == value}


@pytest.mark.fake_kernel(VM)
def test_hanging_offline_is_interrupted_and_the_next_block_used(fake_kernel):
    grow_to_3g(fake_kernel)
    fake_kernel.set_offline_behaviour(39, 'hang')
    before = len(fake_kernel.writes())
    began = time.monotonic()
    result, _ = result_of(fake_kernel, 'resize', '2.5G', '--block-timeout', '2', expect=0)
    elapsed = time.monotonic() - began
    assert 2 <= elapsed < 20
    assert result['reached'] is True and result['final_online_bytes'] == int(2.5 * GiB)
    first = result['blocks'][0]
    assert (first['index'], first['outcome'], first['errno'], first['attempts']) == (39, 'timed-out', 'EINTR', 1)
    assert 2 <= first['seconds'] < 5
    assert '2s' in first['message'] and 'SIGKILL' not in first['message']
    assert [(b['index'], b['outcome']) for b in result['blocks'][1:]] == [(i, 'done') for i in (35, 34, 33, 32)]
    # The kernel saw the write end with EINTR, and the block is online again.
    assert state_writes(fake_kernel, before)[0] == (39, 'offline', 4)
    assert fake_kernel.block(39)['state'] == 'online' and fake_kernel.block(39)['zone'] == 'Movable'
    # Every forked writer is gone.
    pids = writer_pids(fake_kernel, before)
    assert len(pids) == 5
    assert not [pid for pid in pids if psutil.pid_exists(pid)]


@pytest.mark.fake_kernel(VM)
def test_overall_deadline_stops_and_leaves_the_rest_not_attempted(fake_kernel):
    grow_to_3g(fake_kernel)
    for index in (38, 37, 36):
        fake_kernel.set_offline_behaviour(index, 'hang')
    before = len(fake_kernel.writes())
    began = time.monotonic()
    result, _ = result_of(fake_kernel, 'resize', '2G', '--block-timeout', '1', '--timeout', '3', '--per-block', expect=64)
    elapsed = time.monotonic() - began
    assert elapsed < 3 + 8
    outcomes = [(b['index'], b['outcome']) for b in result['blocks']]
    assert outcomes[:3] == [(39, 'done'), (38, 'timed-out'), (37, 'timed-out')]
    # 36 got what was left of the deadline (or none of it); the rest was never tried.
    assert outcomes[3] in ((36, 'timed-out'), (36, 'not-attempted'))
    assert outcomes[4:] == [(i, 'not-attempted') for i in (35, 34, 33, 32)]
    assert all(b['message'] == 'overall deadline expired' for b in result['blocks'][4:])
    assert any('overall deadline of 3s expired' in note for note in result['notes'])
    assert [n['code'] for n in result['note_codes']].count('deadline-expired') == 1
    assert result['final_online_bytes'] == 3 * GiB - BLOCK
    assert result['excess_bytes'] == 7 * BLOCK
    assert online_blocks(fake_kernel, DIMMS) == list(range(32, 39))
    assert {w[0] for w in state_writes(fake_kernel, before)} <= {39, 38, 37, 36}
    assert not [pid for pid in writer_pids(fake_kernel, before) if psutil.pid_exists(pid)]


@pytest.mark.fake_kernel(VM)
def test_overall_deadline_with_nothing_done_fails(fake_kernel):
    grow_to_3g(fake_kernel)
    for index in DIMMS:
        fake_kernel.set_offline_behaviour(index, 'hang')
    began = time.monotonic()
    result, proc = result_of(fake_kernel, 'resize', '2G', '--block-timeout', '0.5', '--timeout', '1', '--per-block',
                             expect=1)
    assert time.monotonic() - began < 1 + 8
    assert result['kdump'] is None and result['final_online_bytes'] == 3 * GiB
    assert {b['outcome'] for b in result['blocks']} == {'timed-out', 'not-attempted'}
    assert [b['outcome'] for b in result['blocks']].count('not-attempted') >= 5
    assert online_blocks(fake_kernel, DIMMS) == list(DIMMS)


def _descendants(pid):
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


@pytest.mark.fake_kernel(VM)
def test_a_writer_stuck_after_sigkill_ends_the_run_and_is_named_by_the_next_one(fake_kernel):
    """The offline writer of block 39 does not exit even after SIGKILL (the kernel keeps it
    in D state): it holds the device hotplug lock, so the run stops at once with one note
    naming the block and the pid, writes nothing more, and the next run's busy message names
    that writer, which still holds the lock, not the agent that started it."""
    grow_to_3g(fake_kernel)
    fake_kernel.set_offline_behaviour(39, 'stuck')
    before = len(fake_kernel.writes())
    try:
        result, _ = result_of(fake_kernel, 'resize', '2G', '--block-timeout', '0.5', expect=1, timeout=120)
        assert [(b['index'], b['outcome']) for b in result['blocks']] == [(39, 'timed-out')]
        pid = result['blocks'][0]['stuck_pid']
        assert pid and psutil.pid_exists(pid) and psutil.Process(pid).status() == psutil.STATUS_DISK_SLEEP
        assert result['stuck_writer'] == {'block': 39, 'pid': pid}
        stuck = [n for n in result['notes'] if n.startswith('stopped: ')]
        assert len(stuck) == 1 and f'memory block 39 (pid {pid})' in stuck[0]
        assert 'no further write was attempted' in stuck[0]
        assert result['kdump'] is None
        # The write is still in the kernel (the log has a write once it returns); nothing came after it.
        assert fake_kernel.writes()[before:] == [] and fake_kernel.block(39)['state'] == 'going-offline'
        busy = agent(fake_kernel, 'resize', '2.5G', expect=4)
        one_line_error(busy, f'pid {pid}: offline writer of memory block 39, stuck in the kernel')
        assert fake_kernel.writes()[before:] == []
    finally:
        fake_kernel.set_offline_behaviour(39, 'ok')  # the kernel lets go: the writer finishes and exits
    deadline = time.monotonic() + 10
    while psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE and time.monotonic() < deadline:
        time.sleep(0.05)
    assert [(w['block'], w['pid']) for w in fake_kernel.writes()[before:]] == [(39, pid)]
    result, _ = result_of(fake_kernel, 'resize', '2.5G', expect=0)  # the lock is free again


@pytest.mark.fake_kernel(VM)
@pytest.mark.parametrize('sig', [signal.SIGTERM, signal.SIGINT])
def test_agent_stopped_during_a_hang_leaves_no_stuck_writer(fake_kernel, tmp_path, sig):
    """systemd stops (SIGTERM) or an operator interrupts (SIGINT) the agent while an offline
    hangs: the forked writer must be interrupted too. Otherwise it stays in the kernel with
    the block `going-offline` (holding the device hotplug lock on a real kernel) and keeps
    the inherited flock, so every later run exits 4. Fails until the agent cleans up."""
    grow_to_3g(fake_kernel)
    fake_kernel.set_offline_behaviour(39, 'hang')
    with open(tmp_path / 'out', 'w') as out, open(tmp_path / 'err', 'w') as err:
        agent_proc = subprocess.Popen(
            [*agent_command(), '--sysfs-root', str(fake_kernel.root), 'resize', '2.5G', '--block-timeout', '60'],
            stdout=out, stderr=err, env={k: v for k, v in os.environ.items() if k != 'VMEM_AGENT_SYSFS_ROOT'})
    children = []
    try:
        deadline = time.monotonic() + 10
        while fake_kernel.block(39)['state'] != 'going-offline' and time.monotonic() < deadline:
            time.sleep(0.05)
        assert fake_kernel.block(39)['state'] == 'going-offline'
        children = _descendants(agent_proc.pid)
        agent_proc.send_signal(sig)
        agent_proc.wait(timeout=10)
        time.sleep(0.5)
        assert 'Traceback' not in (tmp_path / 'err').read_text()
        stuck = [child.pid for child in children if child.is_running() and child.status() != psutil.STATUS_ZOMBIE]
        assert stuck == [], f'writer(s) {stuck} still stuck in the kernel after {sig.name} to the agent'
        assert fake_kernel.block(39)['state'] == 'online'
        agent(fake_kernel, 'resize', '2.5G', '--block-timeout', '1', expect=0)
    finally:
        if agent_proc.poll() is None:
            agent_proc.kill()
            agent_proc.wait()
        for child in children:
            try:
                child.kill()
            except psutil.NoSuchProcess:
                pass


# -- the reserve and the floor ------------------------------------------------------------------


def leave_available(kernel, available):
    """Make /proc/meminfo's MemAvailable `available` bytes (MemTotal less the used knob)."""
    total = None
    for line in (Path(kernel.root) / 'proc/meminfo').read_text().splitlines():
        if line.startswith('MemTotal:'):
            total = int(line.split()[1]) * 1024
    kernel.set_memory_used(total - available)


@pytest.mark.fake_kernel(VM)
def test_shrink_refused_when_memavailable_is_below_the_reserve(fake_kernel):
    grow_to_3g(fake_kernel)
    leave_available(fake_kernel, 200 * MiB)
    before = len(fake_kernel.writes())
    result, _ = result_of(fake_kernel, 'resize', '2G', expect=1)
    assert result['blocks'] == [] and result['kdump'] is None
    assert result['final_online_bytes'] == 3 * GiB and result['excess_bytes'] == GiB
    assert len(result['notes']) == 1 and 'reserve' in result['notes'][0] and '256M' in result['notes'][0]
    human = agent(fake_kernel, 'resize', '2G', expect=1)
    assert any(line.startswith('note: ') and 'reserve of 256M' in line for line in human.stdout.splitlines())
    summary = [line for line in human.stdout.splitlines() if line.startswith('Online memory: ')]
    assert len(summary) == 1 and summary[0].startswith('Online memory: 3G -> 3G (target 2G), 1G ')
    assert 'above' in summary[0] and summary[0].endswith(': failed')
    assert state_writes(fake_kernel, before) == []


@pytest.mark.fake_kernel(VM)
def test_reserve_zero_lets_the_shrink_proceed(fake_kernel):
    grow_to_3g(fake_kernel)
    leave_available(fake_kernel, 200 * MiB)
    result, _ = result_of(fake_kernel, 'resize', '2.875G', '--reserve', '0', expect=0)
    assert [(b['index'], b['outcome']) for b in result['blocks']] == [(39, 'done')]


@pytest.mark.fake_kernel(VM)
def test_reserve_stops_a_shrink_part_way(fake_kernel):
    grow_to_3g(fake_kernel)
    leave_available(fake_kernel, 512 * MiB + 64 * MiB)  # 320M above the 256M reserve: 2 blocks
    result, _ = result_of(fake_kernel, 'resize', '2G', expect=64)
    assert [b['index'] for b in result['blocks']] == [39, 38]
    assert result['final_online_bytes'] == 3 * GiB - 2 * BLOCK
    assert any('reserve' in note for note in result['notes'])


@pytest.mark.fake_kernel(VM)
def test_min_online_is_a_floor(fake_kernel):
    grow_to_3g(fake_kernel)
    result, _ = result_of(fake_kernel, 'resize', '2G', '--min-online', '2.5G', expect=64)
    assert [b['index'] for b in result['blocks']] == [39, 38, 37, 36]
    assert result['final_online_bytes'] == int(2.5 * GiB)
    assert any('minimum online memory is 2.5G' in note for note in result['notes'])
    result, _ = result_of(fake_kernel, 'resize', '2G', '--min-online', '2.5G', expect=1)
    assert result['blocks'] == []


# -- the writer lock ------------------------------------------------------------------------------


@pytest.fixture
def held_lock(fake_kernel):
    path = default_lock_path(str(fake_kernel.root))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX)
    state = {'fd': fd}

    def release():
        if state['fd'] is not None:
            os.close(state['fd'])
            state['fd'] = None

    yield release
    release()


@pytest.mark.fake_kernel(VM)
def test_lock_held_elsewhere_is_exit_4(fake_kernel, held_lock):
    proc = agent(fake_kernel, 'resize', '3G', expect=4)
    one_line_error(proc, 'busy', default_lock_path(str(fake_kernel.root)), '--wait')
    assert fake_kernel.writes() == []


@pytest.mark.fake_kernel(VM)
def test_lock_wait_gets_the_lock_once_released(fake_kernel, held_lock):
    timer = threading.Timer(0.3, held_lock)
    timer.start()
    try:
        began = time.monotonic()
        result, _ = result_of(fake_kernel, 'resize', '3G', '--wait', '2', expect=0)
        assert time.monotonic() - began >= 0.3
    finally:
        timer.cancel()
    assert result['final_online_bytes'] == 3 * GiB


@pytest.mark.fake_kernel(VM)
def test_lock_wait_gives_up(fake_kernel, held_lock):
    proc = agent(fake_kernel, 'resize', '3G', '--wait', '0.3', expect=4)
    one_line_error(proc, 'busy', 'waited 0.3s')
    assert fake_kernel.writes() == []


# -- kdump ----------------------------------------------------------------------------------------


@pytest.mark.fake_kernel(VM)
def test_kdump_reloaded_once_after_a_multi_block_change(fake_kernel, tmp_path):
    fake_kernel.set_crash(loaded=True)  # crash_hotplug is absent on this kernel
    command, counter = counter_script(tmp_path)
    result, _ = result_of(fake_kernel, 'resize', '3G', '--kdump-command', command, expect=0)
    assert len(result['blocks']) == 8
    assert reloads(counter) == 1
    assert result['kdump']['action'] == 'reloaded' and result['kdump']['returncode'] == 0
    assert result['kdump']['command'] == command.split()
    # No change, no reload.
    result, _ = result_of(fake_kernel, 'resize', '3G', '--kdump-command', command, expect=0)
    assert result['kdump'] is None and reloads(counter) == 1
    # A failed shrink (nothing changed) does not reload either.
    leave_available(fake_kernel, 100 * MiB)
    result, _ = result_of(fake_kernel, 'resize', '2G', '--kdump-command', command, expect=1)
    assert result['kdump'] is None and reloads(counter) == 1
    # The human output says it.
    leave_available(fake_kernel, 2 * GiB)
    proc = agent(fake_kernel, 'resize', '2.5G', '--kdump-command', command, expect=0)
    assert 'kdump: reloaded (crash kernel reloaded)' in proc.stdout.splitlines()
    assert reloads(counter) == 2


@pytest.mark.fake_kernel(VM_CRASH_HOTPLUG_1)
def test_kdump_skipped_when_the_kernel_updates_the_crash_image(fake_kernel, tmp_path):
    fake_kernel.set_crash(loaded=True)
    command, counter = counter_script(tmp_path)
    result, _ = result_of(fake_kernel, 'resize', '3G', '--kdump-command', command, expect=0)
    assert result['kdump']['action'] == 'skipped' and 'crash_hotplug=1' in result['kdump']['reason']
    assert reloads(counter) == 0


@pytest.mark.fake_kernel(VM_CRASH_HOTPLUG_0)
def test_kdump_reloaded_when_crash_hotplug_reads_0(fake_kernel, tmp_path):
    fake_kernel.set_crash(loaded=True)
    command, counter = counter_script(tmp_path)
    result, _ = result_of(fake_kernel, 'resize', '2.5G', '--kdump-command', command, expect=0)
    assert result['kdump']['action'] == 'reloaded' and reloads(counter) == 1


@pytest.mark.fake_kernel(VM)
def test_kdump_skipped_without_a_crash_kernel_unless_always(fake_kernel, tmp_path):
    command, counter = counter_script(tmp_path)
    result, _ = result_of(fake_kernel, 'resize', '2.5G', '--kdump-command', command, expect=0)
    assert result['kdump'] == {'action': 'skipped', 'reason': 'no crash kernel loaded', 'command': None,
                               'returncode': None}
    assert reloads(counter) == 0
    result, _ = result_of(fake_kernel, 'resize', '3G', '--kdump', 'always', '--kdump-command', command, expect=0)
    assert result['kdump']['action'] == 'reloaded' and reloads(counter) == 1


@pytest.mark.fake_kernel(VM)
def test_kdump_never(fake_kernel, tmp_path):
    fake_kernel.set_crash(loaded=True)
    command, counter = counter_script(tmp_path)
    result, _ = result_of(fake_kernel, 'resize', '3G', '--kdump', 'never', '--kdump-command', command, expect=0)
    assert result['kdump']['action'] == 'skipped' and '--kdump never' in result['kdump']['reason']
    assert reloads(counter) == 0


@pytest.mark.fake_kernel(VM)
def test_kdump_env_command(fake_kernel, tmp_path):
    fake_kernel.set_crash(loaded=True)
    command, counter = counter_script(tmp_path)
    result, _ = result_of(fake_kernel, 'resize', '2.5G', env={'VMEM_AGENT_KDUMP_COMMAND': command}, expect=0)
    assert result['kdump']['action'] == 'reloaded' and reloads(counter) == 1


@pytest.mark.fake_kernel(VM)
def test_failing_reload_is_reported_but_keeps_the_resize_exit_code(fake_kernel, tmp_path):
    fake_kernel.set_crash(loaded=True)
    command, counter = counter_script(tmp_path, fail=True)
    result, _ = result_of(fake_kernel, 'resize', '2.5G', '--kdump-command', command, expect=0)
    assert reloads(counter) == 1
    assert result['reached'] is True
    assert result['kdump']['action'] == 'failed' and result['kdump']['returncode'] == 3
    assert 'exit code 3' in result['kdump']['reason']
    assert 'cannot load the crash kernel' in result['kdump']['reason']
    proc = agent(fake_kernel, 'resize', '3G', '--kdump-command', command, expect=0)
    assert 'kdump: failed (exit code 3: kdump: cannot load the crash kernel)' in proc.stdout.splitlines()


@pytest.mark.fake_kernel(VM)
def test_missing_reload_program_is_reported(fake_kernel, tmp_path):
    fake_kernel.set_crash(loaded=True)
    result, _ = result_of(fake_kernel, 'resize', '2.5G', '--kdump-command', str(tmp_path / 'nope'), expect=0)
    assert result['kdump']['action'] == 'failed' and 'cannot run' in result['kdump']['reason']


# -- plan and dry runs --------------------------------------------------------------------------


def test_plan_lists_actions_and_writes_nothing(idle_kernel):
    proc = agent(idle_kernel, 'plan', '3G', expect=0)
    lines = proc.stdout.splitlines()
    assert lines[0].split()[:6] == ['ACTION', 'BLOCKS', 'RANGE', 'SIZE', 'ZONE', 'WRITE']
    assert lines[1].split()[:6] == ['online', '32-35', '0x100000000-0x11fffffff', '512M', 'Movable', 'online_movable']
    assert lines[2].split()[:6] == ['online', '36-39', '0x120000000-0x13fffffff', '512M', 'Movable', 'online_movable']
    assert 'Online memory: 2G -> 3G (target 3G)' in lines
    plan = json.loads(agent(idle_kernel, 'plan', '3G', '--json', expect=0).stdout)['plan']
    assert plan['target_bytes'] == 3 * GiB and plan['current_online_bytes'] == 2 * GiB
    assert plan['planned_online_bytes'] == 3 * GiB and plan['shortfall_bytes'] == 0
    assert [(a['kind'], a['index'], a['zone'], a['write']) for a in plan['actions']] == [
        ('online', i, 'Movable', 'online_movable') for i in DIMMS]
    assert all(a['start'] == a['index'] * BLOCK and a['end'] == (a['index'] + 1) * BLOCK - 1
               for a in plan['actions'])
    assert all(a['reason'] for a in plan['actions'])
    assert idle_kernel.writes() == [] and idle_kernel.uevents() == []


@pytest.mark.fake_kernel(VM)
def test_plan_shrink_and_rounding_note(fake_kernel):
    grow_to_3g(fake_kernel)
    before = len(fake_kernel.writes())
    plan = json.loads(agent(fake_kernel, 'plan', '2100M', '--json', expect=0).stdout)['plan']
    assert plan['target_bytes'] == 2 * GiB + BLOCK
    assert [(a['kind'], a['index'], a['write']) for a in plan['actions']] == [
        ('offline', i, 'offline') for i in (39, 38, 37, 36, 35, 34, 33)]
    assert plan['notes'][0] == '2100M is not a multiple of the 128M block size: using 2.125G'
    assert len(fake_kernel.writes()) == before


@pytest.mark.fake_kernel(VM)
def test_plan_matches_what_resize_does(fake_kernel):
    plan = json.loads(agent(fake_kernel, 'plan', '2.5G', '--json', expect=0).stdout)['plan']
    result, _ = result_of(fake_kernel, 'resize', '2.5G', expect=0)
    assert [(a['index'], a['write']) for a in plan['actions']] == [
        (b['index'], b['operation']) for b in result['blocks']]


def test_resize_dry_run_writes_nothing(idle_kernel):
    result, _ = result_of(idle_kernel, 'resize', '3G', '--dry-run', expect=0)
    assert result['dry_run'] is True and result['kdump'] is None
    assert [(b['index'], b['operation'], b['outcome']) for b in result['blocks']] == [
        (i, 'online_movable', 'not-attempted') for i in DIMMS]
    assert result['final_online_bytes'] == 3 * GiB
    proc = agent(idle_kernel, 'resize', '3G', '--dry-run', expect=0)
    assert 'dry run, would reach the target' in proc.stdout
    assert idle_kernel.writes() == []


@pytest.mark.fake_kernel(VM)
def test_dry_run_needs_no_lock(fake_kernel, held_lock):
    result, _ = result_of(fake_kernel, 'resize', '3G', '--dry-run', expect=0)
    assert result['dry_run'] is True
    assert fake_kernel.writes() == []
