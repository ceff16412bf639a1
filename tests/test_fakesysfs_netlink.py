"""The fake kernel's uevents as udevd multicasts them, received by pyudev's real code, and
only inside the fake kernel's own network namespace."""

from __future__ import annotations

import errno
import os
import selectors
import socket
import struct
import subprocess
import sys
import textwrap
import threading

import pyudev
import pytest

from tests.fakesysfs import FakeKernel, FakeKernelError, TreeSpec
from tests.fakesysfs.netlink import (
    NETLINK_KOBJECT_UEVENT, UdevNetlinkEmitter, network_namespace_inode, udev_message, udev_properties,
)
from tests.fakesysfs.plugin import netlink_unavailable_reason, require

MEMORY = 'sys/devices/system/memory'
VM = TreeSpec.vm(boot_gib=1, dimm_gib=(0.5,))  # an offline 512 MiB DIMM: blocks 32-35
DIMM = 32
HOT_ADDED = range(64, 64 + 512)  # 64 GiB of 128 MiB blocks, one add_memory() call
SO_MEMINFO = 55  # asm-generic/socket.h; not in Python's socket module
SK_MEMINFO_DROPS = 8

# Messages systemd-udevd 252.39 multicast in a Linux 6.1 guest (QEMU pc, a 512M DIMM
# hot-added over QMP, block 35 onlined, offlined, `echo change > uevent`, the DIMM unplugged),
# read from a netlink socket bound to groups 1 and 2.
RECORDED_BY_UDEVD = [
    ({'ACTION': 'add', 'DEVPATH': '/devices/system/memory/memory32', 'SUBSYSTEM': 'memory',
      'SEQNUM': '677'}, 8576574,
     '6c69627564657600feedcafe28000000280000008000000086e45acf000000000000000000000000554445565f'
     '44415441424153455f56455253494f4e3d3100414354494f4e3d61646400444556504154483d2f646576696365'
     '732f73797374656d2f6d656d6f72792f6d656d6f727933320053554253595354454d3d6d656d6f727900534551'
     '4e554d3d36373700555345435f494e495449414c495a45443d3835373635373400'),
    ({'ACTION': 'change', 'DEVPATH': '/devices/system/memory/memory35', 'SUBSYSTEM': 'memory',
      'SYNTH_UUID': '0', 'SEQNUM': '683'}, 13993288,
     '6c69627564657600feedcafe28000000280000009100000086e45acf000000000000000000000000554445565f'
     '44415441424153455f56455253494f4e3d3100414354494f4e3d6368616e676500444556504154483d2f646576'
     '696365732f73797374656d2f6d656d6f72792f6d656d6f727933350053554253595354454d3d6d656d6f727900'
     '53594e54485f555549443d30005345514e554d3d36383300555345435f494e495449414c495a45443d31333939'
     '3332383800'),
    ({'ACTION': 'remove', 'DEVPATH': '/devices/system/memory/memory32', 'SUBSYSTEM': 'memory',
      'SEQNUM': '679'}, 11153976,
     '6c69627564657600feedcafe28000000280000008400000086e45acf000000000000000000000000554445565f'
     '44415441424153455f56455253494f4e3d3100414354494f4e3d72656d6f766500444556504154483d2f646576'
     '696365732f73797374656d2f6d656d6f72792f6d656d6f727933320053554253595354454d3d6d656d6f727900'
     '5345514e554d3d36373900555345435f494e495449414c495a45443d313131353339373600'),
]

# A listener started through kernel.in_netns(): its network namespace, then each event.
LISTENER = textwrap.dedent('''
    import os, sys, pyudev
    monitor = pyudev.Monitor.from_netlink(pyudev.Context())
    monitor.filter_by('memory')
    monitor.start()
    print(os.stat('/proc/self/ns/net').st_ino, flush=True)
    for _ in range(int(sys.argv[1])):
        device = monitor.poll(30)
        print(device.action, device.device_path, device.sequence_number, flush=True)
''')


@pytest.fixture
def requires_netlink():
    require('netlink uevents', netlink_unavailable_reason())


def started_monitor(kernel: FakeKernel, receive_buffer_size: int | None = None) -> pyudev.Monitor:
    monitor = kernel.udev_monitor()
    monitor.filter_by('memory')
    if receive_buffer_size is not None:
        monitor.set_receive_buffer_size(receive_buffer_size)
    monitor.start()
    return monitor


def received(monitor: pyudev.Monitor) -> list[pyudev.Device]:
    """Everything queued now: the kernel queues a multicast before sendmsg returns, so once a
    control request or write(2) has returned, its events are here or lost."""
    return list(iter(lambda: monitor.poll(0), None))


def kernel_view(device: pyudev.Device) -> dict[str, str]:
    """The properties less what udevd adds: USEC_INITIALIZED (libudev takes
    UDEV_DATABASE_VERSION for itself)."""
    return {key: device.properties[key] for key in device.properties if key != 'USEC_INITIALIZED'}


def sysfs_write(path, value: str) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, value.encode())
    finally:
        os.close(fd)


def pending_socket_error(monitor: pyudev.Monitor) -> int:
    """SO_ERROR on the monitor's socket, which also clears it, as a recv(2) would."""
    with socket.socket(fileno=os.dup(monitor.fileno())) as view:
        return view.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)


def dropped(monitor: pyudev.Monitor) -> int:
    """How many messages the kernel could not queue on the monitor's socket, ever."""
    with socket.socket(fileno=os.dup(monitor.fileno())) as view:
        meminfo = view.getsockopt(socket.SOL_SOCKET, SO_MEMINFO, 9 * 4)
    return struct.unpack('9I', meminfo)[SK_MEMINFO_DROPS]


def netlink_socket_inodes(pid: int | str) -> set[int]:
    """The NETLINK_KOBJECT_UEVENT sockets of the network namespace a process is in."""
    with open(f'/proc/{pid}/net/netlink') as table:
        rows = [line.split() for line in list(table)[1:]]
    return {int(row[9]) for row in rows if int(row[1]) == NETLINK_KOBJECT_UEVENT}


# --- the wire format ------------------------------------------------------------------------


@pytest.mark.parametrize('event, initialized_usec, recorded', RECORDED_BY_UDEVD)
def test_messages_are_byte_for_byte_what_udevd_sends(event, initialized_usec, recorded):
    assert udev_message(udev_properties(event, initialized_usec)) == bytes.fromhex(recorded)


def test_libudev_filters_pass_exactly_the_subsystem_whose_hash_the_header_carries(requires_netlink):
    # Four subsystems, one per length modulo 4, through the BPF filter libudev builds from
    # its own MurmurHash2: each monitor must see its own event and no other.
    subsystems = ['node', 'block', 'memory', 'cpu']
    results: dict[str, list[str]] = {}

    def in_a_private_namespace() -> None:
        # This thread alone moves into a new network namespace; the emitter checks that.
        emitter = UdevNetlinkEmitter()
        try:
            context = pyudev.Context()
            monitors = {subsystem: pyudev.Monitor.from_netlink(context) for subsystem in subsystems}
            for subsystem, monitor in monitors.items():
                monitor.filter_by(subsystem)
                monitor.start()
            for seqnum, subsystem in enumerate(subsystems, 1):
                emitter.send({'ACTION': 'add', 'DEVPATH': f'/devices/virtual/{subsystem}/test',
                              'SUBSYSTEM': subsystem, 'SEQNUM': str(seqnum)})
            for subsystem, monitor in monitors.items():
                results[subsystem] = [device.subsystem for device in received(monitor)]
        finally:
            emitter.close()

    own_namespace = network_namespace_inode()
    worker = threading.Thread(target=in_a_private_namespace)
    worker.start()
    worker.join()
    assert network_namespace_inode() == own_namespace
    assert results == {subsystem: [subsystem] for subsystem in subsystems}


# --- what a monitor gets ----------------------------------------------------------------------


@pytest.mark.fake_kernel(VM, netlink=True)
def test_every_logged_uevent_reaches_a_monitor_in_order(fake_kernel):
    monitor = started_monitor(fake_kernel)
    state = fake_kernel.root / MEMORY / f'memory{DIMM}' / 'state'
    sysfs_write(state, 'online_movable')
    with pytest.raises(OSError):  # already online: EINVAL and no event
        sysfs_write(state, 'online')
    sysfs_write(state, 'offline')
    sysfs_write(fake_kernel.root / MEMORY / f'memory{DIMM}' / 'uevent', 'change')
    sysfs_write(fake_kernel.root / MEMORY / 'auto_online_blocks', 'online_movable')
    fake_kernel.hot_add(range(48, 52), group=('dimm', 3))
    fake_kernel.hot_remove(range(48, 52), force_offline=True)

    devices = received(monitor)
    assert [kernel_view(device) for device in devices] == fake_kernel.uevents()
    assert [(device.action, device.sys_name) for device in devices] == [
        ('online', 'memory32'), ('offline', 'memory32'), ('change', 'memory32'),
        *[('add', f'memory{index}') for index in range(48, 52)],
        *[('online', f'memory{index}') for index in range(48, 52)],
        *[('offline', f'memory{index}') for index in range(48, 52)],
        *[('remove', f'memory{index}') for index in range(48, 52)]]
    assert [device.sequence_number for device in devices] == list(range(1, len(devices) + 1))
    initialized = [int(device.properties['USEC_INITIALIZED']) for device in devices]
    assert initialized == sorted(initialized)
    # libudev makes the sys_path from DEVPATH: the real /sys, not the fake root.
    assert devices[0].sys_path == '/sys/devices/system/memory/memory32'


@pytest.mark.fake_kernel(VM, netlink=True)
def test_a_512_block_hot_add_arrives_whole_in_libudevs_default_buffer(fake_kernel):
    monitor = started_monitor(fake_kernel)
    fake_kernel.hot_add(HOT_ADDED)
    assert [(device.action, device.sys_name) for device in received(monitor)] == [
        ('add', f'memory{index}') for index in HOT_ADDED]


@pytest.mark.fake_kernel(VM, netlink=True)
def test_a_listener_started_through_in_netns_gets_the_events(fake_kernel):
    listener = subprocess.Popen(fake_kernel.in_netns([sys.executable, '-c', LISTENER, '2']),
                                stdout=subprocess.PIPE, text=True)
    try:
        assert int(listener.stdout.readline()) == os.stat(fake_kernel.netns_path).st_ino
        fake_kernel.hot_add([48, 49], group=('dimm', 3))
        output, _ = listener.communicate(timeout=30)
    finally:
        if listener.poll() is None:
            listener.kill()
            listener.wait()
    assert listener.returncode == 0
    assert output.splitlines() == ['add /devices/system/memory/memory48 1',
                                   'add /devices/system/memory/memory49 2']


@pytest.mark.fake_kernel(VM, netlink=True)
def test_entered_netns_moves_only_this_thread_and_only_while_inside(fake_kernel):
    own_namespace = network_namespace_inode()
    inside, looked = threading.Event(), threading.Event()
    bystander_namespace = []

    def bystander() -> None:
        inside.wait()
        bystander_namespace.append(network_namespace_inode())
        looked.set()

    other_thread = threading.Thread(target=bystander)
    other_thread.start()
    with fake_kernel.entered_netns():
        assert network_namespace_inode() == os.stat(fake_kernel.netns_path).st_ino
        inside.set()
        looked.wait()
        monitor = pyudev.Monitor.from_netlink(pyudev.Context())
    other_thread.join()
    assert bystander_namespace == [own_namespace]
    assert network_namespace_inode() == own_namespace
    monitor.filter_by('memory')
    monitor.start()  # bound outside: a socket keeps the namespace it was made in
    fake_kernel.hot_add([48])
    assert [device.sys_name for device in received(monitor)] == ['memory48']


@pytest.mark.fake_kernel(VM)
def test_without_netlink_there_is_no_namespace_to_enter(fake_kernel):
    assert fake_kernel.netns_path is None
    with pytest.raises(FakeKernelError, match='netlink=True'):
        fake_kernel.in_netns(['true'])


def test_a_closed_kernel_has_no_namespace_to_enter(make_fake_kernel):
    kernel = make_fake_kernel(VM, netlink=True)
    kernel.close()
    with pytest.raises(FakeKernelError, match='closed'):
        kernel.udev_monitor()


# --- isolation ------------------------------------------------------------------------------


@pytest.mark.fake_kernel(VM, netlink=True)
def test_the_uevent_socket_and_its_messages_stay_in_the_kernels_namespace(fake_kernel):
    own_namespace = os.stat('/proc/self/ns/net').st_ino
    private_namespace = os.stat(fake_kernel.netns_path).st_ino
    assert private_namespace != own_namespace
    server_threads = os.listdir(f'/proc/{fake_kernel.server_pid}/task')
    assert {os.stat(f'/proc/{fake_kernel.server_pid}/task/{tid}/ns/net').st_ino
            for tid in server_threads} == {private_namespace}
    # The kernel's own table of uevent sockets, per namespace.
    assert fake_kernel.uevent_socket_inode in netlink_socket_inodes(fake_kernel.server_pid)
    assert fake_kernel.uevent_socket_inode not in netlink_socket_inodes('self')

    host_monitor = pyudev.Monitor.from_netlink(pyudev.Context())
    host_monitor.filter_by('memory')
    host_monitor.start()
    private_monitor = started_monitor(fake_kernel)
    sysfs_write(fake_kernel.root / MEMORY / f'memory{DIMM}' / 'state', 'online')
    fake_kernel.hot_add(range(48, 56), group=('dimm', 3))
    assert len(received(private_monitor)) == 9
    # Delivery is synchronous: had the host namespace got copies, they would be queued now.
    assert received(host_monitor) == []


# --- loss -----------------------------------------------------------------------------------


@pytest.mark.fake_kernel(VM, netlink=True)
@pytest.mark.parametrize('clear_error', ['SO_ERROR', 'libudev receive'])
def test_a_burst_that_overflows_the_buffer_leaves_enobufs_pending(fake_kernel, clear_error):
    monitor = started_monitor(fake_kernel, receive_buffer_size=16384)  # the kernel doubles it
    fake_kernel.hot_add(HOT_ADDED)
    with selectors.DefaultSelector() as selector:
        selector.register(monitor.fileno(), selectors.EVENT_READ)
        assert [events for _, events in selector.select(0)] == [selectors.EVENT_READ]
    # pyudev's poll() sees POLLERR and raises without reading, so it raises until the
    # error is taken off the socket.
    for _ in range(2):
        with pytest.raises(OSError, match='Error while polling fd') as polled:
            monitor.poll(0)
        assert polled.value.errno is None
    if clear_error == 'SO_ERROR':
        assert pending_socket_error(monitor) == errno.ENOBUFS
    else:
        with pytest.raises(OSError) as receiving:  # udev_monitor_receive_device() fails
            monitor._receive_device()
        assert receiving.value.errno == errno.ENOBUFS
    # What did fit is there, oldest first; the rest of the burst is gone.
    kept = [device.sequence_number for device in received(monitor)]
    assert 0 < len(kept) < len(HOT_ADDED)
    assert kept == list(range(1, len(kept) + 1))
    assert dropped(monitor) == len(HOT_ADDED) - len(kept)
    sysfs_write(fake_kernel.root / MEMORY / f'memory{DIMM}' / 'uevent', 'change')
    assert [device.sequence_number for device in received(monitor)] == [len(HOT_ADDED) + 1]
