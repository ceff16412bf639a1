"""The daemon reacting to uevents that arrive on a real netlink socket.

The fake kernel (netlink=True) multicasts every uevent it makes as udevd would, inside a
network namespace of its own; the daemon runs in that namespace and listens with pyudev
(`event_source = "udev"`). Nothing here mocks the daemon: hot-adds, removes and losses
are the fake kernel's, and what the daemon did is read back from the fake kernel's write
log, its status on the control socket and a kdump reload command that counts its runs.
"""

from __future__ import annotations

import os
import signal

import pytest

from tests.daemon_harness import DaemonProcess
from tests.fake_cli import DIMMS, agent, state_writes
from tests.fakesysfs import TreeSpec
from vmem_agent.core.model import ORIGIN_VIRTIO_MEM
from vmem_agent.kernel.sysfs import Sysfs

BASE = 'event_source = "udev"\n'
# 2 GiB boot memory (blocks 0-15) and two 512 MiB DIMMs (32-35, 36-39) present at start.
VM = TreeSpec.vm(boot_gib=2, dimm_gib=(0.5, 0.5), crash_hotplug=0)
BIG_DIMM = range(64, 64 + 512)  # a 64 GiB DIMM: 512 blocks of 128 MiB, hot-added at once


@pytest.fixture
def reload_counter(tmp_path):
    """A kdump reload command that appends one line per run (and can be told to take a while)."""
    log = tmp_path / 'reloads.log'
    script = tmp_path / 'reload.sh'
    script.write_text(f'#!/bin/sh\necho run >> {log}\nsleep "${{RELOAD_SLEEP:-0}}"\n')
    script.chmod(0o755)

    def count() -> int:
        return len(log.read_text().splitlines()) if log.exists() else 0

    return script, count


def online(kernel, indexes) -> bool:
    return all(kernel.block(index)['state'] == 'online' for index in indexes)


@pytest.mark.parametrize('kernel_onlining', ['never', 'auto'])
def test_a_512_block_burst_is_onlined_with_one_plan_and_one_kdump_reload(make_fake_kernel, start_daemon,
                                                                          reload_counter, kernel_onlining):
    kernel = make_fake_kernel(VM, netlink=True)
    kernel.set_crash(loaded=True)
    script, reloads = reload_counter
    daemon = start_daemon(kernel, BASE + f'kdump_command = "{script}"\nkernel_onlining = "{kernel_onlining}"\n')
    reloads_at_start = reloads()
    jobs_before = daemon.status()['counters']['jobs']
    writes_before = len(kernel.writes())
    kernel.hot_add(BIG_DIMM, group=('dimm', 2))
    daemon.wait_until(lambda: online(kernel, BIG_DIMM), timeout=120, what='all 512 blocks online')
    daemon.wait_until(lambda: reloads() == reloads_at_start + 1, timeout=60, what='one kdump reload')
    daemon.wait_until(lambda: daemon.status()['job'] is None and not daemon.status()['kdump']['pending'], timeout=30)
    status = daemon.status()
    writes = state_writes(kernel, writes_before)
    if kernel_onlining == 'never':
        assert status['counters']['jobs'] == jobs_before + 1  # one plan, one run for the whole burst
        assert sorted(block for block, _value, _errno in writes) == list(BIG_DIMM)  # each block written once
    else:
        assert status['onlining'] == 'kernel'
        assert status['counters']['jobs'] == jobs_before and writes == []  # the kernel onlined them
    assert {kernel.block(index)['zone'] for index in BIG_DIMM} == {'Normal'}  # 64G is over 301% of 2G: kernel zone
    assert reloads() == reloads_at_start + 1
    assert status['uevents']['received'] >= 512


def test_hot_add_beyond_the_target_stays_offline(make_fake_kernel, start_daemon):
    kernel = make_fake_kernel(VM, netlink=True)
    daemon = start_daemon(kernel, BASE + 'kdump = "never"\ntarget = "3G"\n')
    assert online(kernel, DIMMS)
    kernel.hot_add(range(48, 56), group=('dimm', 2))
    daemon.wait_until(lambda: daemon.status()['counters']['decisions'] >= 3, what='the burst decided')
    assert not any(kernel.block(index)['state'] == 'online' for index in range(48, 56))
    agent(kernel, 'resize', '3.5G', expect=0)
    assert online(kernel, range(48, 52))


def test_remove_updates_the_picture_and_reloads_kdump_once(make_fake_kernel, start_daemon, reload_counter):
    kernel = make_fake_kernel(VM, netlink=True)
    kernel.set_crash(loaded=True)
    script, reloads = reload_counter
    daemon = start_daemon(kernel, BASE + f'kdump_command = "{script}"\n')
    before = reloads()
    kernel.hot_remove(range(36, 40), force_offline=True)  # the host takes DIMM 1 back
    daemon.wait_until(lambda: reloads() == before + 1, what='the reload after the remove')
    agent(kernel, 'resize', '2.25G', expect=0)  # the daemon plans on what is present now
    assert [kernel.block(i)['state'] for i in DIMMS[:4]] == ['online', 'online', 'offline', 'offline']


def test_lost_events_cost_a_rescan_and_nothing_stays_offline(make_fake_kernel, start_daemon):
    kernel = make_fake_kernel(VM, netlink=True)
    # A 64K receive buffer holds about 78 events; the daemon is stopped while the 512-block
    # burst arrives, so the buffer overflows for certain.
    daemon = start_daemon(kernel, BASE + 'kdump = "never"\nkernel_onlining = "never"\nuevent_buffer = "64K"\n')
    daemon.process.send_signal(signal.SIGSTOP)
    try:
        kernel.hot_add(BIG_DIMM, group=('dimm', 2))
    finally:
        daemon.process.send_signal(signal.SIGCONT)
    daemon.wait_until(lambda: online(kernel, BIG_DIMM), timeout=120, what='all blocks online after the loss')
    status = daemon.status()
    assert status['uevents']['lost'] >= 1 and status['counters']['rescans'] >= 1, status['uevents']
    assert daemon.process.poll() is None


def test_a_block_taken_offline_by_hand_is_left_offline(make_fake_kernel, start_daemon):
    kernel = make_fake_kernel(VM, netlink=True)
    daemon = start_daemon(kernel, BASE + 'kdump = "never"\nkernel_onlining = "never"\n')
    agent(kernel, 'offline', '39', '--kdump', 'never', expect=0)
    daemon.wait_until(lambda: 39 in daemon.status()['blocks_left_offline'], what='block 39 noticed')
    jobs = daemon.status()['counters']['jobs']
    agent(kernel, "reconcile", expect=0)
    assert kernel.block(39)['state'] == 'offline' and daemon.status()['counters']['jobs'] == jobs
    agent(kernel, 'online', '39', '--kdump', 'never', expect=0)
    daemon.wait_until(lambda: 39 not in daemon.status()['blocks_left_offline'], what='block 39 back')


def test_a_change_during_a_reload_gives_exactly_one_more(make_fake_kernel, start_daemon, reload_counter):
    kernel = make_fake_kernel(VM, netlink=True)
    kernel.set_crash(loaded=True)
    script, reloads = reload_counter
    daemon = DaemonProcess(kernel, BASE + f'kdump_command = "{script}"\n', env={'RELOAD_SLEEP': '3'})
    try:
        daemon.start()
        daemon.wait_until(lambda: not daemon.status()['kdump']['reloading'], what='the start-up reload done')
        start = reloads()
        kernel.hot_add(range(48, 52), group=('dimm', 2))  # the kernel onlines it: a change the daemon did not make
        daemon.wait_until(lambda: daemon.status()['kdump']['reloading'], what='the first reload running')
        kernel.hot_add(range(52, 56), group=('dimm', 3))
        kernel.hot_add(range(56, 60), group=('dimm', 4))  # two changes during the reload
        daemon.wait_until(lambda: reloads() == start + 2 and not daemon.status()['kdump']['reloading']
                          and not daemon.status()['kdump']['pending'], timeout=60, what='exactly one more reload')
        assert reloads() == start + 2
        assert daemon.status()['counters']['kdump_reloads'] >= 2
    finally:
        daemon.close()


@pytest.mark.parametrize('crash', [{'loaded': False}, {'loaded': True, 'crash_hotplug': 1}])
def test_no_reload_without_a_crash_kernel_or_with_crash_hotplug(make_fake_kernel, start_daemon, reload_counter, crash):
    kernel = make_fake_kernel(VM, netlink=True)
    kernel.set_crash(**crash)
    script, reloads = reload_counter
    daemon = start_daemon(kernel, BASE + f'kdump_command = "{script}"\n')
    kernel.hot_add(range(48, 52), group=('dimm', 2))
    daemon.wait_until(lambda: online(kernel, range(48, 52)), what='the DIMM online')
    daemon.wait_until(lambda: daemon.status()['kdump']['last'] is not None, what='the reload decision')
    assert reloads() == 0
    assert daemon.status()['kdump']['last']['action'] == 'skipped'


def test_memory_of_the_daemon_does_not_grow_with_events(make_fake_kernel, start_daemon):
    kernel = make_fake_kernel(VM, netlink=True)
    daemon = start_daemon(kernel, BASE + 'kdump = "never"\nkernel_onlining = "never"\n')
    kernel.hot_add(range(64, 320), group=('dimm', 2))
    daemon.wait_until(lambda: online(kernel, range(64, 320)), timeout=120, what='first burst online')
    first = daemon.status()['rss_bytes']
    for round_ in range(3):
        kernel.hot_remove(range(64, 320), force_offline=True)
        kernel.hot_add(range(64, 320), group=('dimm', 3 + round_))
        daemon.wait_until(lambda: online(kernel, range(64, 320)), timeout=120, what='burst online again')
    assert daemon.status()['rss_bytes'] - first < 2 << 20, (first, daemon.status()['rss_bytes'])
    assert os.path.exists(f'/proc/{daemon.process.pid}')


def test_with_a_target_virtio_mem_memory_is_onlined_and_the_target_met_with_dimms(make_fake_kernel, start_daemon):
    """The host sizes virtio-mem memory: the daemon onlines all of it even beyond the target (kept
    offline it gives the host nothing and stalls the driver), and meets the target with the DIMMs."""
    kernel = make_fake_kernel(TreeSpec.vm(boot_gib=2, dimm_gib=(0.5, 0.5), virtio_mem_gib=2, virtio_mem_plugged_gib=1),
                              netlink=True)
    virtio = [block.index for block in Sysfs(kernel.root).snapshot().blocks if block.origin == ORIGIN_VIRTIO_MEM]
    assert len(virtio) == 8
    daemon = start_daemon(kernel, BASE + 'kdump = "never"\ntarget = "3G"\n')
    # boot 2G + virtio-mem 1G = 3G: the DIMMs stay offline
    assert online(kernel, virtio) and not any(kernel.block(i)['state'] == 'online' for i in DIMMS)
    status = daemon.status()
    assert status['mode'] == 'target' and status['last_run'] is not None
