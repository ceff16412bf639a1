"""The daemon as a real process against the fake kernel: start, socket, targets, signals, notify.

Machine: 2 GiB boot memory (blocks 0-15) and two offline 512 MiB DIMMs (blocks 32-35,
36-39), as in tests/fake_cli.py. The daemon runs in a network namespace of its own, so it
hears no uevents of this machine (tests/test_daemon_events.py covers events).
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import socket
import time

import pytest

from tests.daemon_harness import QUIET_CONFIG, DaemonProcess, raw_exchange
from tests import fake_cli
from tests.fake_cli import BOOT, DIMMS, VM, agent, state_writes
from vmem_agent import paths
from vmem_agent.daemon.protocol import MAX_REQUEST_BYTES
from vmem_agent.daemon.target_store import load_target

GIB = 1 << 30


def online_blocks(kernel) -> set[int]:
    return set(fake_cli.online_blocks(kernel, (*BOOT, *DIMMS)))


def kernel_settings(kernel) -> tuple[str, str]:
    root = kernel.root
    return ((root / 'sys/devices/system/memory/auto_online_blocks').read_text().strip(),
            (root / 'sys/module/memory_hotplug/parameters/online_policy').read_text().strip())


# -- start, modes and the kernel's own onlining ------------------------------------------------------


@pytest.mark.fake_kernel(VM)
def test_start_onlines_present_memory_before_ready_and_lets_the_kernel_online(fake_kernel, start_daemon):
    before = kernel_settings(fake_kernel)
    assert before == ('offline', 'contig-zones')
    daemon = start_daemon(fake_kernel)
    ready = [m for m in daemon.notify.messages if m.get('READY') == '1'][0]
    # READY=1 comes after the first reconcile: every block is online by then.
    assert online_blocks(fake_kernel) == set(BOOT) | set(DIMMS)
    assert 'no target' in ready['STATUS'] and '3G online' in ready['STATUS']
    assert {fake_kernel.block(i)['zone'] for i in DIMMS} == {'Movable'}
    assert kernel_settings(fake_kernel) == ('online', 'auto-movable')
    status = daemon.status()
    assert status['mode'] == 'no-target' and status['onlining'] == 'kernel'
    code, seconds = daemon.stop()
    assert code == 0 and seconds < 10
    assert kernel_settings(fake_kernel) == before  # the admin's settings are back
    assert [m for m in daemon.notify.collect() if m.get('STOPPING') == '1']


@pytest.mark.fake_kernel(VM)
def test_kernel_onlining_never_keeps_the_kernel_settings(fake_kernel, start_daemon):
    daemon = start_daemon(fake_kernel, QUIET_CONFIG + 'kernel_onlining = "never"\n')
    assert kernel_settings(fake_kernel) == ('offline', 'contig-zones')
    assert daemon.status()['onlining'] == 'daemon'
    assert online_blocks(fake_kernel) == set(BOOT) | set(DIMMS)


@pytest.mark.fake_kernel(VM)
def test_config_target_is_held_at_start(fake_kernel, start_daemon):
    daemon = start_daemon(fake_kernel, QUIET_CONFIG + 'target = "2.5G"\n')
    assert online_blocks(fake_kernel) == set(BOOT) | {32, 33, 34, 35}
    status = daemon.status()
    assert (status['mode'], status['target_bytes'], status['target_source']) == ('target', 5 * GIB // 2, 'config')
    assert kernel_settings(fake_kernel) == ('offline', 'contig-zones')  # a target: the daemon onlines


# -- the socket: resize, plan, status, as a direct run would print them -------------------------------


@pytest.mark.fake_kernel(VM)
def test_resize_through_the_socket_prints_what_a_direct_run_prints(fake_kernel, make_fake_kernel, start_daemon):
    twin = make_fake_kernel(VM)
    start_daemon(fake_kernel, QUIET_CONFIG + 'target = "2G"\n')
    assert online_blocks(fake_kernel) == set(BOOT)
    through_daemon = agent(fake_kernel, 'resize', '3G', expect=0)
    direct = agent(twin, 'resize', '3G', '--kdump', 'never', expect=0)
    assert through_daemon.stdout == direct.stdout
    assert online_blocks(fake_kernel) == set(BOOT) | set(DIMMS)
    for size in ('2.5G', '-128M', '+128M'):
        through_daemon = agent(fake_kernel, 'resize', size, expect=0)
        direct = agent(twin, 'resize', size, '--kdump', 'never', expect=0)
        assert through_daemon.stdout == direct.stdout, size
    assert online_blocks(fake_kernel) == online_blocks(twin)
    plan_daemon = agent(fake_kernel, 'plan', '2G', expect=0)
    assert plan_daemon.stdout == agent(twin, 'plan', '2G', expect=0).stdout
    json_daemon = json.loads(agent(fake_kernel, 'resize', '2.5G', '--json', expect=0).stdout)
    json_direct = json.loads(agent(twin, 'resize', '2.5G', '--json', '--kdump', 'never', expect=0).stdout)
    for document in (json_daemon, json_direct):
        for block in document['result']['blocks']:
            block.pop('seconds')
    assert json_daemon == json_direct


@pytest.mark.fake_kernel(VM)
def test_resize_through_the_daemon_is_stored_and_cleared(fake_kernel, start_daemon):
    daemon = start_daemon(fake_kernel)
    agent(fake_kernel, 'resize', '2.5G', expect=0)
    stored = load_target(paths.state_dir(str(fake_kernel.root)))
    assert stored.target_bytes == 5 * GIB // 2
    assert daemon.status()['target_source'] == 'resize'
    assert kernel_settings(fake_kernel)[0] == 'offline'  # target mode: added memory stays offline
    cleared = agent(fake_kernel, 'resize', '--clear', expect=0)
    assert 'memory block' in cleared.stdout  # the blocks kept offline for the target are onlined again
    assert online_blocks(fake_kernel) == set(BOOT) | set(DIMMS)
    assert load_target(paths.state_dir(str(fake_kernel.root))).target_bytes is None
    status = daemon.status()
    assert status['mode'] == 'no-target' and status['onlining'] == 'kernel'


@pytest.mark.fake_kernel(VM)
def test_policy_options_are_refused_while_a_daemon_runs(fake_kernel, start_daemon):
    start_daemon(fake_kernel)
    before = len(fake_kernel.writes())
    proc = agent(fake_kernel, 'resize', '2.5G', '--zone', 'normal', expect=2)
    assert '--zone' in proc.stderr and 'daemon' in proc.stderr and len(proc.stderr.splitlines()) == 1
    assert len(fake_kernel.writes()) == before


@pytest.mark.fake_kernel(VM)
def test_status_names_the_daemon_and_who_onlines(fake_kernel, start_daemon):
    daemon = start_daemon(fake_kernel)
    text = agent(fake_kernel, 'status', expect=0).stdout
    assert f'running (pid {daemon.process.pid})' in text
    assert 'Onlined by:           the kernel (auto_online_blocks online, set by the vmem-agent daemon)' in text
    document = json.loads(agent(fake_kernel, 'status', '--json', expect=0).stdout)['memory']
    assert document['daemon']['pid'] == daemon.process.pid
    daemon.stop()
    text = agent(fake_kernel, 'status', expect=0).stdout
    assert 'Daemon:               not running' in text and 'Onlined by:           nobody' in text


# -- without a daemon, and the lock between CLI and daemon -------------------------------------------


@pytest.mark.fake_kernel(VM)
def test_resize_without_a_daemon_acts_directly_and_a_later_daemon_holds_it(fake_kernel, start_daemon):
    agent(fake_kernel, 'resize', '2.5G', '--kdump', 'never', expect=0)
    assert online_blocks(fake_kernel) == set(BOOT) | {32, 33, 34, 35}
    assert 'target 2.5G stored for it' in agent(fake_kernel, 'status', expect=0).stdout
    daemon = start_daemon(fake_kernel)
    assert online_blocks(fake_kernel) == set(BOOT) | {32, 33, 34, 35}  # not onlined back: the target holds
    assert daemon.status()['target_bytes'] == 5 * GIB // 2


@pytest.mark.fake_kernel(VM)
def test_a_cli_holding_the_lock_delays_the_daemon_until_it_is_done(fake_kernel, start_daemon):
    lock = paths.lock_path(str(fake_kernel.root))
    os.makedirs(os.path.dirname(lock), exist_ok=True)
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX)  # what a direct `vmem-agent online ...` holds while it writes
    try:
        daemon = start_daemon(fake_kernel, wait_ready=False)
        daemon.wait_until(lambda: 'lock' in daemon.log() and 'busy' in daemon.log(), what='the daemon meeting the lock')
        assert online_blocks(fake_kernel) == set(BOOT)
        busy = agent(fake_kernel, 'status', expect=0).stdout
        assert 'Daemon:               running' in busy
    finally:
        os.close(fd)
    daemon.wait_ready()
    assert online_blocks(fake_kernel) == set(BOOT) | set(DIMMS)


# -- signals ------------------------------------------------------------------------------------------


@pytest.mark.fake_kernel(VM)
def test_sigterm_during_a_hanging_offline_exits_0_within_2s_and_leaves_nothing_half_done(fake_kernel, start_daemon):
    daemon = start_daemon(fake_kernel, QUIET_CONFIG + 'block_timeout = 600\n')
    fake_kernel.set_offline_behaviour(39, 'hang')
    resize = agent_background(fake_kernel, 'resize', '2.5G')
    daemon.wait_until(lambda: fake_kernel.block(39)['state'] == 'going-offline', what='block 39 hanging')
    began = time.monotonic()
    status = daemon.status()  # the loop answers while the kernel write hangs in a child
    answered = time.monotonic() - began
    assert status['job']['kind'] == 'resize', status
    target_file = os.path.join(paths.state_dir(str(fake_kernel.root)), paths.TARGET_FILE_NAME)
    stored_before = open(target_file).read()
    code, seconds = daemon.stop()
    assert code == 0 and seconds < 2.0, (code, seconds, daemon.log())
    assert fake_kernel.block(39)['state'] == 'online'  # the interrupted offline left it online
    assert open(target_file).read() == stored_before
    reply = resize.communicate(timeout=30)
    assert resize.returncode != 0 and 'stopping' in reply[1], reply
    assert answered < 5.0


def agent_background(kernel, *args):
    import subprocess

    from tests.helpers import agent_command

    env = dict(os.environ)
    env.pop('VMEM_AGENT_SYSFS_ROOT', None)
    return subprocess.Popen([*agent_command(), '--sysfs-root', str(kernel.root), *args], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


@pytest.mark.fake_kernel(VM)
def test_kill_9_then_restart_restores_the_target_and_the_admins_kernel_settings(fake_kernel, start_daemon):
    daemon = start_daemon(fake_kernel)
    assert kernel_settings(fake_kernel) == ('online', 'auto-movable')
    daemon.process.kill()
    daemon.process.wait(10)
    assert kernel_settings(fake_kernel) == ('online', 'auto-movable')  # left behind by the killed daemon
    again = start_daemon(fake_kernel)
    again.stop()
    assert kernel_settings(fake_kernel) == ('offline', 'contig-zones')  # the admin's, not the killed daemon's
    agent(fake_kernel, 'resize', '2.5G', '--kdump', 'never', expect=0)
    third = start_daemon(fake_kernel)
    third.process.kill()
    third.process.wait(10)
    agent(fake_kernel, 'online', '36-39', '--kdump', 'never', expect=0)  # drift while no daemon runs
    start_daemon(fake_kernel)
    assert online_blocks(fake_kernel) == set(BOOT) | {32, 33, 34, 35}


@pytest.mark.fake_kernel(VM)
def test_sighup_with_a_bad_config_keeps_the_old_one(fake_kernel, start_daemon):
    daemon = start_daemon(fake_kernel, QUIET_CONFIG + 'target = "2.5G"\n')
    with open(daemon.config_path, 'w') as handle:
        handle.write('target = "2.5G"\nzone = "fast"\n')
    daemon.process.send_signal(signal.SIGHUP)
    ready = daemon.notify.wait_for(lambda m: m.get('READY') == '1' and 'configuration error' in m.get('STATUS', ''),
                                   what='READY=1 with the configuration error')
    assert "key 'zone'" in ready['STATUS']
    assert any(m.get('RELOADING') == '1' and m.get('MONOTONIC_USEC', '').isdigit() for m in daemon.notify.messages)
    assert "key 'zone'" in daemon.log()
    assert daemon.status()['target_bytes'] == 5 * GIB // 2
    with open(daemon.config_path, 'w') as handle:
        handle.write(QUIET_CONFIG + 'target = "3G"\n')
    daemon.process.send_signal(signal.SIGHUP)
    daemon.wait_until(lambda: online_blocks(fake_kernel) == set(BOOT) | set(DIMMS), what='the new config target')
    assert daemon.status()['target_bytes'] == 3 * GIB


@pytest.mark.fake_kernel(VM)
def test_watchdog_pings_come_from_the_loop(fake_kernel, start_daemon):
    daemon = start_daemon(fake_kernel, env={'WATCHDOG_USEC': '400000'})
    daemon.notify.wait_for(lambda m: m.get('WATCHDOG') == '1', timeout=10, what='WATCHDOG=1')
    count = sum(1 for m in daemon.notify.collect() if m.get('WATCHDOG') == '1')
    daemon.notify.wait_for(lambda m: m.get('WATCHDOG') == '1' and sum(
        1 for x in daemon.notify.messages if x.get('WATCHDOG') == '1') > count + 2, timeout=10, what='more pings')


# -- hostile clients ------------------------------------------------------------------------------------


@pytest.mark.fake_kernel(VM)
def test_oversized_slow_and_garbage_clients_get_errors_and_the_loop_goes_on(fake_kernel, start_daemon):
    daemon = start_daemon(fake_kernel)
    root = str(fake_kernel.root)
    reply = json.loads(raw_exchange(root, b'x' * (MAX_REQUEST_BYTES + 10), shutdown=False))
    assert reply['error']['code'] == 'too-large'
    # No newline, then EOF: the client gave up before its request was whole; it gets nothing.
    assert raw_exchange(root, b'{"version": 1, "command": "status"') == b''
    slow = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    slow.connect(paths.control_socket_path(root))
    slow.sendall(b'{"version": 1,')  # and nothing more
    began = time.monotonic()
    assert daemon.status()['pid'] == daemon.process.pid  # answered while the slow client waits
    assert time.monotonic() - began < 5
    slow.settimeout(10)
    assert json.loads(slow.recv(65536))['error']['code'] == 'timeout'
    slow.close()
    hoard = [socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) for _ in range(40)]
    for sock in hoard:
        sock.connect(paths.control_socket_path(root))
    time.sleep(0.5)
    for sock in hoard:
        sock.close()
    assert daemon.status()['pid'] == daemon.process.pid
    assert daemon.process.poll() is None


@pytest.mark.fake_kernel(VM)
def test_an_unauthorised_user_is_refused(fake_kernel, start_daemon):
    start_daemon(fake_kernel)
    path = paths.control_socket_path(str(fake_kernel.root))
    assert oct(os.stat(path).st_mode & 0o777) == '0o600'
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # a user that is neither root nor in a socket group; the socket's mode would stop it first
        os.close(read_end)
        try:
            os.setgid(65534)
            os.setuid(65534)
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.connect(path)
                outcome = b'connected'
            except PermissionError:
                outcome = b'EACCES'
            os.write(write_end, outcome)
        finally:
            os._exit(0)
    os.close(write_end)
    outcome = os.read(read_end, 100)
    os.waitpid(pid, 0)
    assert outcome == b'EACCES'


@pytest.mark.fake_kernel(VM)
def test_a_second_daemon_for_the_same_root_refuses_to_start(fake_kernel, start_daemon):
    start_daemon(fake_kernel)
    second = start_daemon(fake_kernel, wait_ready=False)
    assert second.process.wait(30) == 1
    assert 'another vmem-agent daemon is running' in second.log()


# -- configuration ---------------------------------------------------------------------------------------


@pytest.mark.parametrize('text, fragment', [
    ('zone = "fast"\n', "key 'zone': expected one of auto, movable, normal"),
    ('zones = "auto"\n', "unknown key 'zones' (did you mean 'zone'?)"),
    ('target = 6\n', "key 'target': expected a size in quotes"),
    ('block_timeout = nan\n', "key 'block_timeout'"),
    ('reconcile_interval = 0\n', "key 'reconcile_interval'"),
    ('kdump_command = "\'unclosed"\n', "key 'kdump_command': cannot split"),
    ('target = "6G\n', 'invalid TOML'),
])
def test_check_config_names_the_bad_key_and_exits_78(tmp_path, text, fragment):
    from tests.helpers import run_agent

    path = tmp_path / 'config.toml'
    path.write_text(text)
    proc = run_agent(tmp_path, 'daemon', '--config', str(path), '--check-config')
    assert proc.returncode == 78, proc
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith('vmem-agent: ') and fragment in lines[0], proc.stderr
    assert str(path) in lines[0]


def test_check_config_prints_the_effective_values(tmp_path):
    from tests.helpers import run_agent

    path = tmp_path / 'config.toml'
    path.write_text('target = "6G"\nkdump_command = ["kdump-config", "reload"]\n')
    proc = run_agent(tmp_path, 'daemon', '--config', str(path), '--check-config')
    assert proc.returncode == 0, proc
    assert 'target = "6G"' in proc.stdout and "kdump_command = ['kdump-config', 'reload']" in proc.stdout
    assert 'zone = "auto"' in proc.stdout
    missing = run_agent(tmp_path, 'daemon', '--config', str(tmp_path / 'nope.toml'), '--check-config')
    assert missing.returncode == 78 and 'no such file' in missing.stderr


@pytest.mark.fake_kernel(VM)
def test_a_bad_config_at_start_exits_78_without_writing(fake_kernel, start_daemon):
    daemon = start_daemon(fake_kernel, 'zone = "fast"\n', wait_ready=False)
    assert daemon.process.wait(30) == 78
    assert state_writes(fake_kernel) == [] and kernel_settings(fake_kernel) == ('offline', 'contig-zones')


HOSTILE_REQUESTS = [
    b'\n', b'{}\n', b'null\n', b'"status"\n', b'{"version":1}\n', b'{"version":"1","command":"status"}\n',
    b'{"version":1,"command":"status"}' * 100 + b'\n', b'{"version":1,"command":"plan","size":"1e9999G"}\n',
    b'{"version":1,"command":"plan","size":"99999999999999999999P"}\n', b'{"version":1,"command":"plan","size":"\xff"}\n',
    b'{"version":1,"command":"resize","size":"0"}\n', b'{"version":1,"command":"resize","size":"-99T"}\n',
    b'{"version":1,"command":"plan","size":"NaN"}\n', b'{"version":1,"command":"plan","size":"inf"}\n',
    b'\x00\x01\x02\n', b'[' * 10000 + b'\n', b'{"a":' * 5000 + b'\n', b'{"version":1,"command":"status","version":2}\n',
]


@pytest.mark.fake_kernel(VM)
def test_generated_hostile_requests_never_stop_the_daemon(fake_kernel, start_daemon):
    """150 hostile lines, each on its own connection: every reply is one JSON error or result, and
    the daemon keeps answering status throughout."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    daemon = start_daemon(fake_kernel)
    root = str(fake_kernel.root)
    replies = []

    def send(line: bytes) -> None:
        raw = raw_exchange(root, line)
        document = json.loads(raw)
        assert raw.endswith(b'\n') and raw.count(b'\n') == 1
        assert document['version'] == 1 and isinstance(document['ok'], bool)
        replies.append(document)

    for line in HOSTILE_REQUESTS:
        send(line)
    fields = st.dictionaries(st.sampled_from(['version', 'command', 'size', 'clear', 'dry_run', 'x']),
                             st.none() | st.booleans() | st.integers() | st.text(max_size=12) |
                             st.sampled_from(['status', 'plan', 'resize', 'reconcile', 1, '6G', '-1G']), max_size=5)

    @settings(max_examples=132, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(st.one_of(fields.map(lambda d: json.dumps(d).encode()), st.binary(max_size=300).filter(lambda b: b'\n' not in b)))
    def hostile(line):
        if b'"resize"' in line or b'"reconcile"' in line:
            return  # valid ones would change memory or wait for a job: not what this test is about
        send(line + b'\n')

    hostile()
    assert len(replies) >= 100
    assert sum(1 for reply in replies if not reply['ok']) >= 90
    assert daemon.status()['pid'] == daemon.process.pid
    assert online_blocks(fake_kernel) == set(BOOT) | set(DIMMS)


def test_another_onliner_is_reported_and_not_fought(tmp_path, start_daemon):
    """A udev rule that onlines memory, in a copy of a recorded guest: the daemon names it in its
    log and in status, and changes nothing (its target is what is online: no writes at all)."""
    import shutil

    from tests.helpers import TREES_DIR

    root = tmp_path / 'guest'
    shutil.copytree(TREES_DIR / 'qemu-x86_64-dimm', root, symlinks=True)
    rules = root / 'etc/udev/rules.d'
    rules.mkdir(parents=True)
    (rules / '99-memory.rules').write_text('SUBSYSTEM=="memory", ACTION=="add", ATTR{state}="online"\n')

    class StaticTree:
        netns_path = None

        def __init__(self, path):
            self.root = path

    before = {path: path.read_bytes() for path in root.glob('sys/devices/system/memory/memory*/state')}
    daemon = start_daemon(StaticTree(root), QUIET_CONFIG + 'target = "2G"\n')
    daemon.wait_until(lambda: daemon.status()['other_onliners'], what='the rule found')
    assert daemon.status()['other_onliners'] == ['the udev rule /etc/udev/rules.d/99-memory.rules:1']
    text = agent(StaticTree(root), 'status', expect=0).stdout
    assert 'also the udev rule /etc/udev/rules.d/99-memory.rules:1 (vmem-agent doctor)' in text
    assert 'also onlines hot-added memory' in daemon.log()
    assert {path: path.read_bytes() for path in before} == before


@pytest.mark.fake_kernel(VM)
def test_a_state_dir_that_cannot_be_written_is_a_warning_after_the_run(fake_kernel):
    state_dir = paths.state_dir(str(fake_kernel.root))
    os.makedirs(os.path.dirname(state_dir), exist_ok=True)
    with open(state_dir, 'w'):
        pass  # a file where the directory should be: the target cannot be stored
    try:
        proc = agent(fake_kernel, 'resize', '2.5G', '--kdump', 'never', expect=0)
    finally:
        os.unlink(state_dir)
    assert 'Online memory: 2G -> 2.5G (target 2.5G): done' in proc.stdout
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith('vmem-agent: warning: target not stored'), proc.stderr
    assert online_blocks(fake_kernel) == set(BOOT) | {32, 33, 34, 35}


@pytest.mark.fake_kernel(VM)
def test_logs_carry_journald_priorities_when_stderr_is_the_journal(fake_kernel):
    """JOURNAL_STREAM naming stderr's device and inode (what systemd sets) turns on sd-daemon
    priority prefixes: <6> for info, <3> for errors."""
    daemon = DaemonProcess(fake_kernel, QUIET_CONFIG)
    try:
        with open(daemon.log_path, 'w'):
            pass
        status = os.stat(daemon.log_path)
        daemon.env['JOURNAL_STREAM'] = f'{status.st_dev}:{status.st_ino}'
        daemon.start()
        with open(daemon.config_path, 'w') as handle:
            handle.write('zone = "fast"\n')
        daemon.process.send_signal(signal.SIGHUP)
        daemon.wait_until(lambda: 'configuration not reloaded' in daemon.log(), what='the reload error')
        lines = daemon.log().splitlines()
        assert any(line.startswith('<6>ready: ') for line in lines), lines
        assert any(line.startswith('<3>configuration not reloaded') for line in lines), lines
        assert not any(line.startswith('vmem-agent: ') for line in lines), lines
    finally:
        daemon.close()
