"""The fake kernel answers plain system calls the way Linux's memory hotplug sysfs does."""

from __future__ import annotations

import ctypes
import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

import psutil
import pytest

from tests.fakesysfs import BlockSpec, FakeKernel, FakeKernelError, GiB, MiB, TreeSpec, build_static_tree
from tests.fakesysfs.kernel import is_mounted
from tests.fakesysfs.plugin import require_fuse

MEMORY = 'sys/devices/system/memory'
# Boot blocks 0-7 (0 spans DMA and DMA32, so it reads `none`), one offline 512 MiB DIMM at
# 4 GiB (blocks 32-35) and a 1 GiB DIMM after it (blocks 36-43).
VM = TreeSpec.vm(boot_gib=1, dimm_gib=(0.5, 1), crash_hotplug=0)
DIMM = 32
LIBC = ctypes.CDLL(None, use_errno=True)

# A separate process that writes VALUE to PATH with one write(2) and prints its result and
# errno; with `handler` it catches SIGUSR1 and SIGALRM instead of dying of them.
WRITER = textwrap.dedent('''
    import ctypes, os, signal, sys
    path, value, mode = sys.argv[1:]
    if mode == 'handler':
        signal.signal(signal.SIGUSR1, lambda *args: None)
        signal.signal(signal.SIGALRM, lambda *args: None)
    elif mode == 'block-usr1':
        signal.signal(signal.SIGUSR1, lambda *args: None)
        signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGUSR1])
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(path, os.O_WRONLY)
    result = libc.write(fd, value.encode(), len(value))
    print(result, ctypes.get_errno(), flush=True)
''')


def attribute(root: Path, index: int, name: str) -> Path:
    return root / MEMORY / f'memory{index}' / name


def read(path: Path) -> str:
    return path.read_text()


def sysfs_write(path: Path, value: str) -> int:
    """Write as an agent would (open O_WRONLY, one write); 0 or the errno."""
    try:
        fd = os.open(path, os.O_WRONLY)
    except OSError as error:
        return error.errno
    try:
        written = os.write(fd, value.encode())
        assert written == len(value)
        return 0
    except OSError as error:
        return error.errno
    finally:
        os.close(fd)


def meminfo_kib(root: Path, field: str) -> int:
    for line in read(root / 'proc/meminfo').splitlines():
        name, value = line.split(':')
        if name == field:
            return int(value.split()[0])
    raise KeyError(field)


def wait_until(predicate, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError('timed out waiting')
        time.sleep(0.01)


def actions(kernel: FakeKernel) -> list[tuple[str, str]]:
    return [(event['ACTION'], event['DEVPATH'].rsplit('/', 1)[1]) for event in kernel.uevents()]


class Writers:
    """Child processes that each make one write(2); killed and reaped after the test."""

    def __init__(self) -> None:
        self.processes: list[subprocess.Popen] = []

    def start(self, path: Path, value: str, mode: str = 'default') -> subprocess.Popen:
        self.processes.append(subprocess.Popen([sys.executable, '-c', WRITER, str(path), value, mode],
                                               stdout=subprocess.PIPE, text=True))
        return self.processes[-1]

    def hang(self, kernel: FakeKernel, index: int, mode: str = 'default') -> subprocess.Popen:
        """A child stuck offlining a block, which reads going-offline meanwhile."""
        kernel.set_offline_behaviour(index, 'hang')
        state = attribute(kernel.root, index, 'state')
        writer = self.start(state, 'offline', mode)
        wait_until(lambda: read(state) == 'going-offline\n')
        return writer

    def close(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.kill()
            process.wait()
            process.stdout.close()


@pytest.fixture
def writers():
    started = Writers()
    yield started
    started.close()


# --- state transitions -------------------------------------------------------------------


@pytest.mark.fake_kernel(VM)
def test_online_and_offline_change_state_zone_meminfo_and_send_uevents(fake_kernel):
    root = fake_kernel.root
    total = meminfo_kib(root, 'MemTotal')
    available = meminfo_kib(root, 'MemAvailable')
    assert read(attribute(root, DIMM, 'state')) == 'offline\n'
    assert read(attribute(root, DIMM, 'online')) == '0\n'

    assert sysfs_write(attribute(root, DIMM, 'state'), 'online\n') == 0
    assert read(attribute(root, DIMM, 'state')) == 'online\n'
    assert read(attribute(root, DIMM, 'online')) == '1\n'
    assert read(attribute(root, DIMM, 'valid_zones')) == 'Normal\n'
    assert meminfo_kib(root, 'MemTotal') == total + 128 * 1024
    assert meminfo_kib(root, 'MemAvailable') == available + 128 * 1024

    assert sysfs_write(attribute(root, DIMM, 'state'), 'offline') == 0
    assert read(attribute(root, DIMM, 'state')) == 'offline\n'
    assert read(attribute(root, DIMM, 'valid_zones')) == 'Normal Movable\n'
    assert meminfo_kib(root, 'MemTotal') == total
    assert actions(fake_kernel) == [('online', 'memory32'), ('offline', 'memory32')]
    assert fake_kernel.uevents()[0] == {'ACTION': 'online', 'DEVPATH': '/devices/system/memory/memory32',
                                        'SUBSYSTEM': 'memory', 'SEQNUM': '1'}


@pytest.mark.fake_kernel(VM)
@pytest.mark.parametrize('online_type, zone', [('online_movable', 'Movable'), ('online_kernel', 'Normal')])
def test_online_type_forces_the_zone_and_state_reads_plain_online(fake_kernel, online_type, zone):
    assert sysfs_write(attribute(fake_kernel.root, DIMM, 'state'), online_type) == 0
    assert read(attribute(fake_kernel.root, DIMM, 'state')) == 'online\n'
    assert read(attribute(fake_kernel.root, DIMM, 'valid_zones')) == f'{zone}\n'
    assert fake_kernel.block(DIMM)['zone'] == zone


@pytest.mark.fake_kernel(VM)
def test_writing_the_current_state_is_einval_without_uevent(fake_kernel):
    state = attribute(fake_kernel.root, DIMM, 'state')
    assert sysfs_write(state, 'offline') == errno.EINVAL
    assert sysfs_write(state, 'online_movable') == 0
    for online_type in ('online', 'online_kernel', 'online_movable'):
        assert sysfs_write(state, online_type) == errno.EINVAL
    assert read(attribute(fake_kernel.root, DIMM, 'valid_zones')) == 'Movable\n'
    assert actions(fake_kernel) == [('online', 'memory32')]
    assert [(write['value'], write['errno']) for write in fake_kernel.writes()] == [
        ('offline', errno.EINVAL), ('online_movable', 0), ('online', errno.EINVAL),
        ('online_kernel', errno.EINVAL), ('online_movable', errno.EINVAL)]


@pytest.mark.fake_kernel(VM)
@pytest.mark.parametrize('value', ['onlin', 'Online', ' online', 'online\n\n', 'online ', 'movable', ''])
def test_unknown_state_values_are_einval(fake_kernel, value):
    state = attribute(fake_kernel.root, DIMM, 'state')
    if value:
        assert sysfs_write(state, value) == errno.EINVAL
    assert read(state) == 'offline\n'


@pytest.mark.fake_kernel(VM)
def test_online_file_takes_booleans_and_repeats_succeed(fake_kernel):
    online = attribute(fake_kernel.root, DIMM, 'online')
    assert sysfs_write(online, '1\n') == 0
    assert read(attribute(fake_kernel.root, DIMM, 'state')) == 'online\n'
    assert read(attribute(fake_kernel.root, DIMM, 'valid_zones')) == 'Normal\n'
    assert sysfs_write(online, 'y') == 0
    assert sysfs_write(online, '0') == 0
    assert sysfs_write(online, 'off') == 0
    assert sysfs_write(online, '2') == errno.EINVAL
    assert read(attribute(fake_kernel.root, DIMM, 'state')) == 'offline\n'
    assert actions(fake_kernel) == [('online', 'memory32'), ('offline', 'memory32')]


@pytest.mark.fake_kernel(VM)
def test_shell_redirection_works_as_on_sysfs(fake_kernel):
    state = attribute(fake_kernel.root, DIMM, 'state')
    done = subprocess.run(['sh', '-c', f'echo online_movable > {state} && cat {state}'],
                          capture_output=True, text=True)
    assert (done.returncode, done.stdout) == (0, 'online\n')
    done = subprocess.run(['sh', '-c', f'echo online > {state}'], capture_output=True, text=True)
    assert done.returncode != 0
    assert fake_kernel.writes()[0]['pid'] != os.getpid()


# --- offline failures --------------------------------------------------------------------


@pytest.mark.fake_kernel(VM)
def test_offline_of_a_busy_block_is_ebusy_and_it_stays_online(fake_kernel):
    # Boot kernel memory of TreeSpec.vm() refuses to go offline, as on a real guest.
    state = attribute(fake_kernel.root, 3, 'state')
    assert sysfs_write(state, 'offline') == errno.EBUSY
    assert sysfs_write(state, 'offline') == errno.EBUSY
    assert read(state) == 'online\n'
    assert read(attribute(fake_kernel.root, 3, 'valid_zones')) == 'DMA32\n'
    assert fake_kernel.uevents() == []


@pytest.mark.fake_kernel(VM)
def test_busy_for_the_first_attempts_then_offline_succeeds(fake_kernel):
    state = attribute(fake_kernel.root, DIMM, 'state')
    sysfs_write(state, 'online_movable')
    fake_kernel.set_offline_behaviour(DIMM, ('busy', 2))
    assert [sysfs_write(state, 'offline') for _ in range(3)] == [errno.EBUSY, errno.EBUSY, 0]
    assert read(state) == 'offline\n'
    offline_attempts = [write for write in fake_kernel.writes() if write['value'] == 'offline']
    assert [write['errno'] for write in offline_attempts] == [errno.EBUSY, errno.EBUSY, 0]
    assert fake_kernel.block(DIMM)['offline_behaviour'] == 'ok'


@pytest.mark.fake_kernel(VM)
def test_offline_can_fail_with_any_errno(fake_kernel):
    sysfs_write(attribute(fake_kernel.root, DIMM, 'state'), 'online_movable')
    fake_kernel.set_offline_behaviour(DIMM, errno.ENOMEM)
    assert sysfs_write(attribute(fake_kernel.root, DIMM, 'online'), '0') == errno.ENOMEM
    assert read(attribute(fake_kernel.root, DIMM, 'state')) == 'online\n'


@pytest.mark.fake_kernel(VM)
def test_a_block_spanning_zones_cannot_go_offline(fake_kernel):
    fake_kernel.set_offline_behaviour(0, 'ok')
    assert read(attribute(fake_kernel.root, 0, 'valid_zones')) == 'none\n'
    assert sysfs_write(attribute(fake_kernel.root, 0, 'state'), 'offline') == errno.EINVAL
    assert read(attribute(fake_kernel.root, 0, 'state')) == 'online\n'


# --- hanging offline and signals ----------------------------------------------------------


@pytest.mark.fake_kernel(VM)
@pytest.mark.parametrize('kill_with', [signal.SIGTERM, signal.SIGKILL])
def test_hanging_offline_ends_when_the_writer_is_killed(fake_kernel, writers, kill_with):
    writer = writers.hang(fake_kernel, 3)
    assert read(attribute(fake_kernel.root, 3, 'online')) == '1\n'
    time.sleep(0.2)
    assert writer.poll() is None
    writer.send_signal(kill_with)
    assert writer.wait(timeout=2) == -kill_with
    state = attribute(fake_kernel.root, 3, 'state')
    wait_until(lambda: read(state) == 'online\n', timeout=1)
    [record] = fake_kernel.writes()
    assert (record['errno'], record['pid']) == (errno.EINTR, writer.pid)
    assert fake_kernel.uevents() == []
    assert sysfs_write(attribute(fake_kernel.root, DIMM, 'state'), 'online') == 0


@pytest.mark.fake_kernel(VM)
@pytest.mark.parametrize('sent', [signal.SIGUSR1, signal.SIGALRM])
def test_a_caught_signal_makes_the_hanging_write_return_eintr(fake_kernel, writers, sent):
    writer = writers.hang(fake_kernel, 3, 'handler')
    signalled = time.monotonic()
    writer.send_signal(sent)
    assert writer.communicate(timeout=2)[0].split() == ['-1', str(errno.EINTR)]
    [record] = fake_kernel.writes()
    assert record['end'] - signalled < 0.5
    assert read(attribute(fake_kernel.root, 3, 'state')) == 'online\n'


@pytest.mark.fake_kernel(VM)
def test_a_blocked_signal_does_not_interrupt_like_in_the_kernel(fake_kernel, writers):
    writer = writers.hang(fake_kernel, 3, 'block-usr1')
    writer.send_signal(signal.SIGUSR1)
    time.sleep(0.3)
    assert read(attribute(fake_kernel.root, 3, 'state')) == 'going-offline\n'
    writer.kill()
    writer.wait(timeout=2)


@pytest.mark.fake_kernel(VM)
def test_a_hang_ends_when_its_behaviour_changes(fake_kernel, writers):
    writer = writers.hang(fake_kernel, 3)
    fake_kernel.set_offline_behaviour(3, 'ok')
    assert writer.communicate(timeout=2)[0].split() == ['7', '0']
    assert read(attribute(fake_kernel.root, 3, 'state')) == 'offline\n'
    assert actions(fake_kernel) == [('offline', 'memory3')]


@pytest.mark.fake_kernel(VM)
def test_other_writes_wait_for_the_hanging_one_while_reads_go_on(fake_kernel, writers):
    """Every state write takes the device hotplug lock: a hang holds up all of them."""
    hanging = writers.hang(fake_kernel, 3)
    waiting = writers.start(attribute(fake_kernel.root, DIMM, 'state'), 'online')
    time.sleep(0.3)
    assert waiting.poll() is None
    started = time.monotonic()
    assert read(attribute(fake_kernel.root, DIMM, 'state')) == 'offline\n'
    assert meminfo_kib(fake_kernel.root, 'MemTotal')
    assert time.monotonic() - started < 0.5
    hanging.kill()
    assert waiting.communicate(timeout=2)[0].split() == ['6', '0']
    assert read(attribute(fake_kernel.root, DIMM, 'state')) == 'online\n'


@pytest.mark.fake_kernel(VM)
def test_a_write_waiting_for_the_lock_dies_with_a_fatal_signal(fake_kernel, writers):
    hanging = writers.hang(fake_kernel, 3)
    waiting = writers.start(attribute(fake_kernel.root, DIMM, 'state'), 'online')
    time.sleep(0.2)
    waiting.terminate()
    assert waiting.wait(timeout=2) == -signal.SIGTERM
    assert read(attribute(fake_kernel.root, 3, 'state')) == 'going-offline\n'
    hanging.kill()
    hanging.wait(timeout=2)


@pytest.mark.fake_kernel(VM)
def test_in_process_main_thread_writer_is_interrupted_by_its_alarm(fake_kernel):
    fake_kernel.set_offline_behaviour(3, 'hang')

    def give_up(signum, frame):
        raise TimeoutError
    previous = signal.signal(signal.SIGALRM, give_up)
    fd = os.open(attribute(fake_kernel.root, 3, 'state'), os.O_WRONLY)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.2)
        with pytest.raises(TimeoutError):
            os.write(fd, b'offline')
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        os.close(fd)
    assert read(attribute(fake_kernel.root, 3, 'state')) == 'online\n'
    assert [write['errno'] for write in fake_kernel.writes()] == [errno.EINTR]


@pytest.mark.fake_kernel(VM)
def test_in_process_thread_writer_gets_eintr_from_a_signal_sent_to_it(fake_kernel):
    """libc write() returns EINTR; os.write() would retry and hang again (PEP 475), as it
    would on a real kernel, since Python runs signal handlers in the main thread only."""
    fake_kernel.set_offline_behaviour(3, 'hang')
    state = attribute(fake_kernel.root, 3, 'state')
    outcome = []

    def write_offline():
        fd = os.open(state, os.O_WRONLY)
        outcome.append((LIBC.write(fd, b'offline', 7), ctypes.get_errno()))
        os.close(fd)
    previous = signal.signal(signal.SIGUSR1, lambda *args: None)
    try:
        writer = threading.Thread(target=write_offline)
        writer.start()
        wait_until(lambda: read(state) == 'going-offline\n')
        signal.pthread_kill(writer.ident, signal.SIGUSR1)
        writer.join(timeout=2)
    finally:
        signal.signal(signal.SIGUSR1, previous)
    assert outcome == [(-1, errno.EINTR)]
    assert fake_kernel.writes()[0]['pid'] == writer.native_id


@pytest.mark.fake_kernel(VM)
def test_close_releases_a_hanging_writer_and_unmounts(fake_kernel, writers):
    writer = writers.hang(fake_kernel, 3, 'handler')
    started = time.monotonic()
    fake_kernel.close()
    assert time.monotonic() - started < 3
    assert writer.communicate(timeout=2)[0].split() == ['-1', str(errno.EINTR)]
    assert not is_mounted(fake_kernel.root)
    assert not fake_kernel.root.exists()
    assert not psutil.pid_exists(fake_kernel.server_pid)
    with pytest.raises(FakeKernelError):
        fake_kernel.uevents()


def test_the_server_unmounts_when_the_test_process_dies():
    require_fuse()
    owner = subprocess.run([sys.executable, '-c', textwrap.dedent('''
        import os, signal
        from tests.fakesysfs import FakeKernel
        kernel = FakeKernel()
        print(kernel.root, kernel.server_pid, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
    ''')], capture_output=True, text=True, cwd=Path(__file__).parents[1])
    root, server_pid = owner.stdout.split()
    wait_until(lambda: not is_mounted(Path(root)))
    wait_until(lambda: not psutil.pid_exists(int(server_pid))
               or psutil.Process(int(server_pid)).status() == psutil.STATUS_ZOMBIE)
    os.rmdir(root)


# --- hot-add, hot-remove, uevents ---------------------------------------------------------


@pytest.mark.fake_kernel(VM)
def test_hot_add_and_remove_make_blocks_appear_and_vanish_with_uevents(fake_kernel):
    root = fake_kernel.root
    fake_kernel.hot_add(range(48, 52), group=('dimm', 5))
    assert actions(fake_kernel) == [('add', f'memory{index}') for index in range(48, 52)]
    assert read(attribute(root, 49, 'state')) == 'offline\n'
    assert read(attribute(root, 49, 'phys_index')) == '00000031\n'
    assert os.readlink(attribute(root, 49, 'node0')) == '../../node/node0'
    assert (root / 'sys/devices/system/node/node0/memory49/state').read_text() == 'offline\n'
    firmware_node = attribute(root, 49, 'firmware_node')
    assert os.readlink(firmware_node) == '../../../LNXSYSTM:00/LNXSYBUS:00/PNP0A06:04/PNP0C80:05'
    assert [(firmware_node / name).read_text() for name in ('hid', 'status')] == ['PNP0C80\n', '15\n']
    assert (firmware_node / 'physical_node3').resolve() == attribute(root, 51, '').resolve()
    acpi_device = root / 'sys/bus/acpi/devices/PNP0C80:05'
    assert acpi_device.resolve() == firmware_node.resolve()

    stale = os.open(attribute(root, 49, 'state'), os.O_WRONLY)
    fake_kernel.hot_remove(range(48, 52))
    assert actions(fake_kernel)[4:] == [('remove', f'memory{index}') for index in range(48, 52)]
    assert not attribute(root, 49, '').exists()
    assert sysfs_write(attribute(root, 49, 'state'), 'online') == errno.ENOENT
    with pytest.raises(OSError) as gone:
        os.write(stale, b'online')
    assert gone.value.errno == errno.ENODEV
    os.close(stale)
    assert not (root / 'sys/devices/system/node/node0/memory49').exists()
    assert not firmware_node.exists()
    # The slot stays, empty.
    assert (acpi_device / 'status').read_text() == '0\n'
    assert not [name for name in os.listdir(acpi_device) if name.startswith('physical_node')]


@pytest.mark.fake_kernel(VM)
def test_hot_remove_refuses_online_blocks_unless_forced(fake_kernel):
    sysfs_write(attribute(fake_kernel.root, DIMM, 'state'), 'online_movable')
    with pytest.raises(FakeKernelError, match='online'):
        fake_kernel.hot_remove([DIMM])
    fake_kernel.hot_remove([DIMM], force_offline=True)
    assert actions(fake_kernel) == [('online', 'memory32'), ('offline', 'memory32'), ('remove', 'memory32')]
    with pytest.raises(FakeKernelError, match='already present'):
        fake_kernel.hot_add([0])


@pytest.mark.fake_kernel(TreeSpec.vm(boot_gib=1, virtio_mem_gib=1, virtio_mem_plugged_gib=0.25))
def test_auto_online_blocks_onlines_hot_added_memory_like_the_kernel(fake_kernel):
    setting = fake_kernel.root / MEMORY / 'auto_online_blocks'
    assert read(setting) == 'offline\n'
    assert sysfs_write(setting, 'online_movable\n') == 0
    assert sysfs_write(setting, 'movable') == errno.EINVAL
    assert read(setting) == 'online_movable\n'
    # A DIMM comes in one add_memory() call: adds first; virtio-mem adds block by block.
    fake_kernel.hot_add([48, 49], group=('dimm', 0))
    fake_kernel.hot_add([34, 35], group=('virtio_mem', 0))
    assert actions(fake_kernel) == [
        ('add', 'memory48'), ('add', 'memory49'), ('online', 'memory48'), ('online', 'memory49'),
        ('add', 'memory34'), ('online', 'memory34'), ('add', 'memory35'), ('online', 'memory35')]
    assert read(attribute(fake_kernel.root, 35, 'valid_zones')) == 'Movable\n'
    with pytest.raises(ValueError, match='region'):
        fake_kernel.hot_add([45], group=('virtio_mem', 0))


@pytest.mark.fake_kernel(VM)
def test_writing_uevent_replays_an_event(fake_kernel):
    uevent = attribute(fake_kernel.root, DIMM, 'uevent')
    assert sysfs_write(uevent, 'change\n') == 0
    assert sysfs_write(uevent, 'bogus') == errno.EINVAL
    assert sysfs_write(fake_kernel.root / MEMORY / 'uevent', 'add') == 0
    assert fake_kernel.uevents() == [{'ACTION': 'change', 'DEVPATH': '/devices/system/memory/memory32',
                                      'SUBSYSTEM': 'memory', 'SYNTH_UUID': '0', 'SEQNUM': '1'}]


# --- zones ---------------------------------------------------------------------------------


@pytest.mark.fake_kernel(VM)
def test_valid_zones_put_the_zone_whose_span_holds_the_block_first(fake_kernel):
    root = fake_kernel.root

    def online(index, online_type):
        assert sysfs_write(attribute(root, index, 'state'), online_type) == 0

    def zones(index):
        return read(attribute(root, index, 'valid_zones'))
    # The 1 GiB DIMM, blocks 36-43. Neither zone spans block 37: the kernel zone first.
    assert zones(37) == 'Normal Movable\n'
    online(36, 'online_movable')
    assert zones(37) == 'Normal Movable\n'
    online(38, 'online_movable')
    assert zones(37) == 'Movable Normal\n'
    online(37, 'online')
    assert zones(37) == 'Movable\n'
    online(43, 'online_kernel')
    online(41, 'online_kernel')
    assert zones(42) == 'Normal Movable\n'  # in the Normal span only
    online(40, 'online_movable')  # the Movable span is now 36-40
    assert zones(39) == 'Movable Normal\n'
    online(35, 'online_kernel')  # the Normal span is now 35-43: block 39 lies in both
    assert zones(39) == 'Normal Movable\n'
    online(39, 'online')
    assert zones(39) == 'Normal\n'
    # A DMA32 boot block, once offline, goes back to DMA32 by default.
    fake_kernel.set_offline_behaviour(5, 'ok')
    assert sysfs_write(attribute(root, 5, 'state'), 'offline') == 0
    assert zones(5) == 'DMA32 Movable\n'


def auto_movable_vm(**settings) -> TreeSpec:
    """1 GiB of boot memory and four 1 GiB DIMMs: a ratio of 301 % allows 3 GiB of Movable."""
    return TreeSpec.vm(boot_gib=1, dimm_gib=(1, 1, 1, 1), online_policy='auto-movable', **settings)


def online_dimm(root: Path, dimm: int) -> set[str]:
    first = DIMM + 8 * dimm
    for index in range(first, first + 8):
        assert sysfs_write(attribute(root, index, 'state'), 'online') == 0
    return {read(attribute(root, index, 'valid_zones')) for index in range(first, first + 8)}


@pytest.mark.fake_kernel(auto_movable_vm())
def test_auto_movable_policy_keeps_movable_within_the_ratio_per_dimm(fake_kernel):
    root = fake_kernel.root
    policy = root / 'sys/module/memory_hotplug/parameters'
    assert read(policy / 'online_policy') == 'auto-movable\n'
    assert read(policy / 'auto_movable_ratio') == '301\n'
    assert read(policy / 'auto_movable_numa_aware') == 'Y\n'
    assert read(attribute(root, DIMM, 'valid_zones')) == 'Movable Normal\n'
    assert [online_dimm(root, dimm) for dimm in range(3)] == [{'Movable\n'}] * 3
    assert read(attribute(root, DIMM + 24, 'valid_zones')) == 'Normal Movable\n'
    assert online_dimm(root, 3) == {'Normal\n'}


@pytest.mark.fake_kernel(auto_movable_vm())
def test_auto_movable_settings_are_writable_like_module_parameters(fake_kernel):
    policy = fake_kernel.root / 'sys/module/memory_hotplug/parameters'
    assert sysfs_write(policy / 'auto_movable_ratio', '0x64\n') == 0
    assert read(policy / 'auto_movable_ratio') == '100\n'
    assert sysfs_write(policy / 'auto_movable_ratio', '-1') == errno.EINVAL
    assert sysfs_write(policy / 'online_policy', 'movable') == errno.EINVAL
    assert sysfs_write(policy / 'auto_movable_numa_aware', 'n') == 0
    assert read(policy / 'auto_movable_numa_aware') == 'N\n'
    assert sysfs_write(policy / 'memmap_on_memory', 'Y') == errno.EACCES
    # 100 % of 1 GiB: one DIMM fits, the second goes to the kernel.
    assert online_dimm(fake_kernel.root, 0) == {'Movable\n'}
    assert online_dimm(fake_kernel.root, 1) == {'Normal\n'}
    assert sysfs_write(policy / 'online_policy', 'contig-zones') == 0
    assert read(attribute(fake_kernel.root, DIMM + 16, 'valid_zones')) == 'Normal Movable\n'


@pytest.mark.fake_kernel(TreeSpec.vm(boot_gib=1, virtio_mem_gib=4, online_policy='auto-movable',
                                     auto_movable_ratio=50))
def test_auto_movable_lets_kernel_memory_of_a_virtio_mem_device_pay_for_its_movable(fake_kernel):
    """50 % of 1 GiB allows 4 Movable blocks; then each kernel block of the device earns room
    for half a block more."""
    zones = []
    for index in range(34, 46):
        fake_kernel.hot_add([index], group=('virtio_mem', 0))
        assert sysfs_write(attribute(fake_kernel.root, index, 'state'), 'online') == 0
        zones.append(fake_kernel.block(index)['zone'][0])
    assert ''.join(zones) == 'MMMMNNMNNMNN'


# --- the rest of the tree ------------------------------------------------------------------


@pytest.mark.fake_kernel(VM)
def test_read_only_attributes_refuse_writers_and_nothing_can_be_created(fake_kernel):
    root = fake_kernel.root
    for path in (attribute(root, DIMM, 'valid_zones'), attribute(root, DIMM, 'phys_index'),
                 attribute(root, DIMM, 'removable'), root / MEMORY / 'block_size_bytes',
                 root / MEMORY / 'crash_hotplug', root / 'sys/kernel/kexec_crash_loaded',
                 root / 'proc/meminfo', root / 'proc/iomem'):
        assert sysfs_write(path, '1') == errno.EACCES, path
        assert path.stat().st_mode & 0o777 == 0o444
        assert path.stat().st_size == 4096
    assert attribute(root, DIMM, 'state').stat().st_mode & 0o777 == 0o644
    with pytest.raises(PermissionError):
        os.open(root / MEMORY / 'memory32/new', os.O_WRONLY | os.O_CREAT, 0o644)
    with pytest.raises(OSError) as refused:
        os.mkdir(root / MEMORY / 'memory999')
    assert refused.value.errno == errno.EPERM
    with pytest.raises(OSError) as refused:
        os.unlink(attribute(root, DIMM, 'state'))
    assert refused.value.errno == errno.EPERM
    assert sysfs_write(attribute(root, 999, 'state'), 'online') == errno.ENOENT
    assert not (root / MEMORY / 'memory032').exists()


@pytest.mark.fake_kernel(VM)
def test_meminfo_follows_online_memory_and_the_used_knob_through_psutil(fake_kernel, monkeypatch):
    monkeypatch.setattr(psutil, 'PROCFS_PATH', str(fake_kernel.root / 'proc'))
    # 1 GiB online, a sixteenth of it reserved by the kernel, a quarter of it in use.
    memory = psutil.virtual_memory()
    assert (memory.total, memory.available) == (960 * MiB, 704 * MiB)
    fake_kernel.set_memory_used(896 * MiB)
    sysfs_write(attribute(fake_kernel.root, DIMM, 'state'), 'online')
    memory = psutil.virtual_memory()
    assert (memory.total, memory.available, memory.used) == (1088 * MiB, 192 * MiB, 896 * MiB)
    assert memory.free > 0


@pytest.mark.fake_kernel(TreeSpec.vm(boot_gib=4, dimm_gib=(1,), virtio_mem_gib=2,
                                     virtio_mem_plugged_gib=0.25))
def test_iomem_shows_boot_dimm_and_virtio_mem_memory_as_the_kernel_does(fake_kernel):
    assert read(fake_kernel.root / 'proc/iomem') == textwrap.dedent('''\
        00000000-00000fff : Reserved
        00001000-0009fbff : System RAM
        0009fc00-0009ffff : Reserved
        000a0000-000bffff : PCI Bus 0000:00
        000c0000-000c05ff : Video ROM
        000f0000-000fffff : Reserved
          000f0000-000fffff : System ROM
        00100000-bffdffff : System RAM
          01000000-01ffffff : Kernel code
          02000000-025fffff : Kernel rodata
          02600000-0287ffff : Kernel data
          02c00000-02ffffff : Kernel bss
        bffe0000-bfffffff : Reserved
        c0000000-febfffff : PCI Bus 0000:00
        fec00000-fec003ff : IOAPIC 0
        fee00000-fee00fff : Local APIC
        fffc0000-ffffffff : Reserved
        100000000-13fffffff : System RAM
        140000000-17fffffff : System RAM
        180000000-1ffffffff : virtio0
          180000000-18fffffff : System RAM (virtio_mem)
        ''')
    fake_kernel.hot_add([52], group=('virtio_mem', 0))
    assert read(fake_kernel.root / 'proc/iomem').endswith(
        '  180000000-18fffffff : System RAM (virtio_mem)\n'
        '  1a0000000-1a7ffffff : System RAM (virtio_mem)\n')


def test_boot_e820_beyond_the_table_is_a_setup_data_extension(make_fake_kernel):
    from vmem_agent.kernel.e820 import boot_ram_ranges, extension_ram_ranges

    kernel = make_fake_kernel(TreeSpec.vm(boot_gib=4, e820_table_entries=3))
    params = kernel.root / 'sys/kernel/boot_params'
    table = boot_ram_ranges((params / 'data').read_bytes())
    assert read(params / 'setup_data/0/type') == '0x1\n'
    extension = extension_ram_ranges((params / 'setup_data/0/data').read_bytes())
    assert table == [(0, 0x9fbff)] and extension == [(0x100000, 0xbffdffff), (1 << 32, (1 << 32) + (1 << 30) - 1)]
    assert not (make_fake_kernel(TreeSpec.vm(boot_e820=False)).root / 'sys/kernel/boot_params').exists()


def test_kmem_memory_shows_in_iomem_below_its_dax_device(make_fake_kernel):
    spec = TreeSpec(blocks=[BlockSpec(0), BlockSpec(1), BlockSpec(2, boot=False, group=('kmem', 0)),
                            BlockSpec(3, boot=False, group=('kmem', 0))])
    lines = read(make_fake_kernel(spec).root / 'proc/iomem').splitlines()
    at = lines.index('10000000-1fffffff : dax0.0')
    assert lines[at + 1] == '  10000000-1fffffff : System RAM (kmem)'


@pytest.mark.fake_kernel(VM)
def test_crash_files_follow_set_crash(fake_kernel):
    loaded = fake_kernel.root / 'sys/kernel/kexec_crash_loaded'
    crash_hotplug = fake_kernel.root / MEMORY / 'crash_hotplug'
    assert (read(loaded), read(crash_hotplug)) == ('0\n', '0\n')
    fake_kernel.set_crash(loaded=True, crash_hotplug=1)
    assert (read(loaded), read(crash_hotplug)) == ('1\n', '1\n')


def test_crash_hotplug_is_absent_on_older_kernels(make_fake_kernel):
    kernel = make_fake_kernel(TreeSpec.vm())
    assert not (kernel.root / MEMORY / 'crash_hotplug').exists()
    with pytest.raises(FakeKernelError, match='no crash_hotplug'):
        kernel.set_crash(crash_hotplug=1)


@pytest.mark.fake_kernel(TreeSpec.vm(boot_gib=2, dimm_gib=(1, 1), nodes=2))
def test_node_directories_link_the_blocks_of_their_node(fake_kernel):
    node_dir = fake_kernel.root / 'sys/devices/system/node'
    assert sorted(os.listdir(node_dir)) == ['node0', 'node1']
    node1 = sorted(os.listdir(node_dir / 'node1'), key=lambda name: int(name[6:]))
    assert node1 == [f'memory{index}' for index in [*range(8, 16), *range(40, 48)]]
    assert os.readlink(node_dir / 'node1/memory40') == '../../memory/memory40'
    assert os.path.exists(attribute(fake_kernel.root, 40, 'node1'))


# --- static trees and realism ---------------------------------------------------------------


def tree_listing(root: Path) -> dict[str, tuple]:
    """Every entry below root: kind, mode and content or link target."""
    listing = {}
    for entry in os.scandir(root):
        relative = entry.path[len(str(root)):]
        if entry.is_symlink():
            listing[relative] = ('link', os.readlink(entry.path))
        elif entry.is_dir():
            listing[relative] = ('dir',)
            listing.update({f'{relative}{name}': value
                            for name, value in tree_listing(Path(entry.path)).items()})
        else:
            listing[relative] = ('file', entry.stat().st_mode & 0o777, Path(entry.path).read_bytes())
    return listing


SPEC_FOR_LSMEM = TreeSpec.vm(boot_gib=4, dimm_gib=(1, 1), virtio_mem_gib=2,
                             virtio_mem_plugged_gib=0.5, nodes=2, crash_hotplug=1)


def lsmem_json(root: Path) -> dict:
    done = subprocess.run(['lsmem', '--sysroot', str(root), '--json',
                           '-o', 'RANGE,SIZE,STATE,BLOCK,NODE,ZONES'],
                          capture_output=True, text=True, check=True)
    return json.loads(done.stdout)


def test_static_and_fuse_trees_read_the_same(make_fake_kernel, tmp_path):
    static = build_static_tree(tmp_path / 'static', SPEC_FOR_LSMEM)
    mounted = make_fake_kernel(SPEC_FOR_LSMEM).root
    static_listing = tree_listing(static)
    assert len(static_listing) > 500
    assert tree_listing(mounted) == static_listing


@pytest.mark.skipif(shutil.which('lsmem') is None, reason='lsmem is not installed')
def test_lsmem_reads_a_static_tree_as_the_spec_says(tmp_path):
    def row(first, last, size, state, node, zones):
        gib = 1 << 30
        return {'range': f'0x{first * gib // 8:016x}-0x{(last + 1) * gib // 8 - 1:016x}', 'size': size,
                'state': state, 'block': f'{first}-{last}' if first != last else str(first),
                'node': node, 'zones': zones}
    assert lsmem_json(build_static_tree(tmp_path, SPEC_FOR_LSMEM)) == {'memory': [
        row(0, 0, '128M', 'online', 0, 'None'),
        row(1, 15, '1.9G', 'online', 0, 'DMA32'),
        row(16, 23, '1G', 'online', 1, 'DMA32'),
        row(32, 39, '1G', 'online', 1, 'Normal'),
        row(40, 47, '1G', 'offline', 0, 'Normal/Movable'),
        row(48, 55, '1G', 'offline', 1, 'Normal/Movable'),
        row(56, 59, '512M', 'offline', 0, 'Normal/Movable'),
    ]}


@pytest.mark.skipif(shutil.which('lsmem') is None, reason='lsmem is not installed')
def test_lsmem_reads_the_fuse_tree_and_sees_changes(make_fake_kernel, tmp_path):
    kernel = make_fake_kernel(SPEC_FOR_LSMEM)
    assert lsmem_json(kernel.root) == lsmem_json(build_static_tree(tmp_path, SPEC_FOR_LSMEM))
    for index in range(40, 48):
        assert sysfs_write(attribute(kernel.root, index, 'state'), 'online_movable') == 0
    rows = lsmem_json(kernel.root)['memory']
    assert {key: rows[4][key] for key in ('block', 'state', 'zones')} == {
        'block': '40-47', 'state': 'online', 'zones': 'Movable'}


RECORDED_QEMU_GUEST = Path(__file__).parent / 'data/trees/qemu-x86_64-dimm'


@pytest.mark.skipif(not RECORDED_QEMU_GUEST.is_dir(), reason='no recorded QEMU guest tree')
@pytest.mark.skipif(shutil.which('lsmem') is None, reason='lsmem is not installed')
def test_the_same_vm_reads_like_a_recorded_qemu_guest(tmp_path):
    """The recording: Linux 6.1, QEMU pc, -m 2G,slots=8, a 512 MiB DIMM hot-added, offline."""
    fake = build_static_tree(tmp_path, TreeSpec.vm(boot_gib=2, dimm_gib=(0.5,)))
    assert lsmem_json(fake) == lsmem_json(RECORDED_QEMU_GUEST)

    def without_mode(entry: tuple) -> tuple:  # the recording's copies all have mode 0644
        return (entry[0], entry[2]) if entry[0] == 'file' else entry
    modelled = ('/devices/system/memory', '/devices/LNXSYSTM:00', '/module/memory_hotplug',
                '/devices/system/node/node0/memory')
    recorded = {path: without_mode(entry) for path, entry in tree_listing(RECORDED_QEMU_GUEST / 'sys').items()
                if path.startswith(modelled)}
    faked = tree_listing(fake / 'sys')
    assert len(recorded) > 150
    assert {path: without_mode(faked[path]) for path in recorded if path in faked} == recorded

    def lines(root: Path, name: str, keep) -> list[str]:
        return [line for line in (root / 'proc' / name).read_text().splitlines() if keep(line)]
    assert lines(fake, 'iomem', lambda line: 'System RAM' in line) == lines(
        RECORDED_QEMU_GUEST, 'iomem', lambda line: 'System RAM' in line)
    assert [line.split(':')[0] for line in lines(fake, 'meminfo', bool)] == [
        line.split(':')[0] for line in lines(RECORDED_QEMU_GUEST, 'meminfo', bool)]
    # The boot E820 table: the same entries below 4 GiB (QEMU also reserves a range at 1 TiB).
    from vmem_agent.kernel.e820 import E820_ENTRIES_OFFSET, E820_ENTRY, E820_TABLE_OFFSET

    def e820(root: Path) -> list[tuple]:
        data = (root / 'sys/kernel/boot_params/data').read_bytes()
        return [entry for number in range(data[E820_ENTRIES_OFFSET])
                if (entry := E820_ENTRY.unpack_from(data, E820_TABLE_OFFSET + number * E820_ENTRY.size))[0] < 1 << 32]
    assert e820(fake) == e820(RECORDED_QEMU_GUEST)


def test_a_static_tree_of_65536_blocks_builds_in_seconds():
    blocks = [BlockSpec(index, zone='Movable' if index % 3 else 'Normal') for index in range(65536)]
    spec = TreeSpec(blocks=blocks, block_size=2 * GiB, nodes=1)
    parent = '/dev/shm' if os.access('/dev/shm', os.W_OK) else None
    root = Path(tempfile.mkdtemp(prefix='fakesysfs-static-', dir=parent))
    try:
        started = time.monotonic()
        build_static_tree(root, spec)
        elapsed = time.monotonic() - started
        assert read(root / MEMORY / 'block_size_bytes') == '80000000\n'
        assert read(attribute(root, 65535, 'phys_index')) == '0000ffff\n'
        assert read(attribute(root, 65534, 'valid_zones')) == 'Movable\n'
        assert len(os.listdir(root / MEMORY)) == 65536 + 3
        print(f'65,536-block static tree built in {elapsed:.1f} s')
        assert elapsed < 15
    finally:
        shutil.rmtree(root)
