"""Uevents as udevd multicasts them, on a netlink socket in a network namespace of its own.

A udev monitor (libudev's udev_monitor, pyudev's Monitor with source 'udev') listens on
NETLINK_KOBJECT_UEVENT multicast group 2, where systemd-udevd re-sends each kernel event once
it has processed it. systemd 252's device_monitor_receive_device() (sd-device/device-monitor.c)
accepts a message there when it is at least 32 bytes, comes with SCM_CREDENTIALS of uid 0 (or
of the receiver's own uid), starts with "libudev\\0" and the magic 0xfeedcafe, has its
properties where properties_off says, and those properties (device_new_from_nulstr() in
device-private.c) are NUL-terminated KEY=VALUE strings that include ACTION (a known action),
DEVPATH, SUBSYSTEM and a SEQNUM above 0. Before that, the monitor's socket filter (BPF, from
filter_by()) drops every message whose subsystem hash is not MurmurHash2 of the subsystem.

What this module sends is byte for byte what udevd sent in a Linux 6.1 guest with systemd
252.39 (captured there from a socket bound to groups 1 and 2): the 40-byte header (sizes in
host byte order, magic and hashes big-endian, no devtype, no tags), then the kernel's
properties between UDEV_DATABASE_VERSION=1 and USEC_INITIALIZED (CLOCK_MONOTONIC in µs).

Multicast reaches only the sockets in the sender's network namespace. The emitter moves
itself into a new one before it opens its socket, and refuses to send unless the socket is
outside the namespace it started in, where this machine's own udev listeners are.
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import socket
import struct
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

NETLINK_KOBJECT_UEVENT = 15
UDEV_MONITOR_GROUP = 2  # MONITOR_GROUP_UDEV; 1 is the kernel's, whose senders must be the kernel
UDEV_MONITOR_MAGIC = 0xfeedcafe
CLONE_NEWNET = 0x40000000
SIOCGSKNS = 0x894C  # a descriptor of the network namespace a socket lives in
UDEV_HEADER_SIZE = 40
_PREFIX = b'libudev\0'
_MURMUR_M = 0x5bd1e995
_UINT32 = 0xffffffff

_libc = ctypes.CDLL(None, use_errno=True)


def murmurhash2(data: bytes, seed: int = 0) -> int:
    """Austin Appleby's 32-bit MurmurHash2 as systemd's string_hash32() uses it (seed 0,
    four-byte words read little-endian, as on the x86 hosts these tests run on)."""
    value = (seed ^ len(data)) & _UINT32
    whole = len(data) - len(data) % 4
    for (word,) in struct.iter_unpack('<I', data[:whole]):
        word = (word * _MURMUR_M) & _UINT32
        word ^= word >> 24
        value = ((value * _MURMUR_M) & _UINT32) ^ ((word * _MURMUR_M) & _UINT32)
    tail = data[whole:]
    if tail:
        for shift, byte in enumerate(tail):
            value ^= byte << (8 * shift)
        value = (value * _MURMUR_M) & _UINT32
    value ^= value >> 13
    value = (value * _MURMUR_M) & _UINT32
    return value ^ (value >> 15)


def udev_message(properties: Mapping[str, str]) -> bytes:
    """One monitor_netlink_header and the properties after it, for a device without DEVTYPE
    or tags (as udevd has memory blocks), so the devtype hash and the tag bloom are zero."""
    body = b''.join(f'{key}={value}'.encode() + b'\0' for key, value in properties.items())
    header = (_PREFIX + struct.pack('>I', UDEV_MONITOR_MAGIC)
              + struct.pack('=III', UDEV_HEADER_SIZE, UDEV_HEADER_SIZE, len(body))
              + struct.pack('>IIII', murmurhash2(properties['SUBSYSTEM'].encode()), 0, 0, 0))
    return header + body


def udev_properties(event: Mapping[str, str], initialized_usec: int) -> dict[str, str]:
    """What udevd forwards for a kernel event on a device with no udev rules or database."""
    return {'UDEV_DATABASE_VERSION': '1', **event, 'USEC_INITIALIZED': str(initialized_usec)}


def network_namespace_inode(path: str = '/proc/thread-self/ns/net') -> int:
    return os.stat(path).st_ino


def socket_network_namespace_inode(sock: socket.socket) -> int:
    descriptor = fcntl.ioctl(sock.fileno(), SIOCGSKNS)
    try:
        return os.fstat(descriptor).st_ino
    finally:
        os.close(descriptor)


def _setns(descriptor: int) -> None:
    if _libc.setns(descriptor, CLONE_NEWNET) != 0:
        code = ctypes.get_errno()
        raise OSError(code, f'setns(CLONE_NEWNET): {os.strerror(code)}')


@contextmanager
def entered_network_namespace(path: str | os.PathLike) -> Iterator[None]:
    """The calling thread in the network namespace at path, and back in its own afterwards.

    Sockets keep the namespace they were created in, so one opened inside stays there after
    the thread has left. Needs CAP_SYS_ADMIN.
    """
    own = os.open('/proc/thread-self/ns/net', os.O_RDONLY | os.O_CLOEXEC)
    try:
        target = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            _setns(target)
        finally:
            os.close(target)
        try:
            yield
        finally:
            _setns(own)
    finally:
        os.close(own)


class UdevNetlinkEmitter:
    """Sends uevents to udev monitors in a private network namespace, as udevd would.

    Creating one moves the calling thread into a new network namespace: call it in the main
    thread before any other thread starts, so that the whole process, /proc/PID/ns/net
    included, is in there. Needs CAP_SYS_ADMIN (unshare) and CAP_NET_ADMIN (sending to a
    multicast group).
    """

    def __init__(self) -> None:
        starting_namespace = network_namespace_inode()
        if _libc.unshare(CLONE_NEWNET) != 0:
            code = ctypes.get_errno()
            raise OSError(code, f'unshare(CLONE_NEWNET): {os.strerror(code)}')
        self.socket = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                                    NETLINK_KOBJECT_UEVENT)
        self.namespace_inode = socket_network_namespace_inode(self.socket)
        if self.namespace_inode == starting_namespace:
            self.socket.close()
            raise RuntimeError('the uevent socket is in the network namespace it must stay out of')
        self.socket.bind((0, 0))
        self.socket_inode = os.fstat(self.socket.fileno()).st_ino
        # Explicit credentials, as a udevd worker's: monitors ignore senders other than root.
        self._credentials = [(socket.SOL_SOCKET, socket.SCM_CREDENTIALS,
                              struct.pack('=iII', os.getpid(), 0, 0))]

    def send(self, event: Mapping[str, str]) -> None:
        """Multicast one kernel event (ACTION, DEVPATH, SUBSYSTEM, ..., SEQNUM) as udevd does.

        The kernel delivers it to every listener's queue before sendmsg returns, or marks the
        listener's socket with ENOBUFS where it does not fit. Like udevd's, the message also
        goes to port 0, the kernel's uevent socket, which ignores it as a malformed request.
        """
        properties = udev_properties(event, time.monotonic_ns() // 1000)
        self.socket.sendmsg([udev_message(properties)], self._credentials, 0,
                            (0, UDEV_MONITOR_GROUP))

    def close(self) -> None:
        self.socket.close()
