"""pytest fixtures for the fake kernel; tests/conftest.py registers this plugin.

`fake_kernel` mounts the spec of the test's `@pytest.mark.fake_kernel(spec, netlink=False)`
marker, or TreeSpec.vm() without one; `make_fake_kernel(spec, netlink=False)` mounts more. All
are closed (unmounted) after the test. Where FUSE cannot work, or netlink=True and this process
may not make network namespaces, tests using them are skipped, or fail when
VMEM_AGENT_REQUIRE_FAKE_KERNEL=1 (CI sets it).
"""

from __future__ import annotations

import importlib.util
import os
import shutil

import pytest

from .kernel import FakeKernel
from .spec import TreeSpec


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        'markers', 'fake_kernel(spec, netlink=False): the TreeSpec the fake_kernel fixture mounts, '
        'and whether it multicasts uevents to udev monitors in its own network namespace')


def fuse_unavailable_reason() -> str | None:
    if importlib.util.find_spec('mfusepy') is None:  # e.g. Debian's python3, in the package build
        return 'mfusepy is not installed'
    if not os.path.exists('/dev/fuse'):
        return 'there is no /dev/fuse'
    if os.geteuid() != 0 and shutil.which('fusermount3') is None:
        return 'fusermount3 is not installed'
    return None


def netlink_unavailable_reason() -> str | None:
    """unshare(CLONE_NEWNET) needs CAP_SYS_ADMIN, multicasting to udev's group CAP_NET_ADMIN;
    and libudev quietly gives a udev monitor no multicast group unless /run/udev/control
    exists or /dev is a devtmpfs (device_monitor_new_full(): "udev service seems not to be
    active"), as in most containers."""
    with open('/proc/self/status') as status:
        effective = int(next(line for line in status if line.startswith('CapEff:')).split()[1], 16)
    missing = [name for name, bit in (('CAP_SYS_ADMIN', 21), ('CAP_NET_ADMIN', 12))
               if not effective >> bit & 1]
    if missing:
        return f'this process lacks {" and ".join(missing)}'
    if not os.path.exists('/run/udev/control') and not _is_devtmpfs('/dev'):
        return 'libudev disables udev monitors here: no /run/udev/control and /dev is no devtmpfs'
    return None


def _is_devtmpfs(path: str) -> bool:
    with open('/proc/self/mountinfo') as mountinfo:
        fstypes = [line.split(' - ')[1].split()[0] for line in mountinfo if line.split()[4] == path]
    return bool(fstypes) and fstypes[-1] == 'devtmpfs'


def require(feature: str, reason: str | None) -> None:
    """Skip the test for the reason, or fail it when VMEM_AGENT_REQUIRE_FAKE_KERNEL=1."""
    if reason:
        if os.environ.get('VMEM_AGENT_REQUIRE_FAKE_KERNEL') == '1':
            pytest.fail(f'{feature} is unavailable ({reason}) and VMEM_AGENT_REQUIRE_FAKE_KERNEL=1')
        pytest.skip(f'{feature} is unavailable: {reason}')


def require_fuse() -> None:
    require('FUSE', fuse_unavailable_reason())


@pytest.fixture
def make_fake_kernel():
    kernels: list[FakeKernel] = []

    def make(spec: TreeSpec | None = None, netlink: bool = False) -> FakeKernel:
        require_fuse()
        if netlink:
            require('netlink uevents', netlink_unavailable_reason())
        kernels.append(FakeKernel(spec, netlink=netlink))
        return kernels[-1]

    yield make
    for kernel in kernels:
        kernel.close()


@pytest.fixture
def fake_kernel(request: pytest.FixtureRequest, make_fake_kernel) -> FakeKernel:
    marker = request.node.get_closest_marker('fake_kernel')
    if marker is None:
        return make_fake_kernel()
    return make_fake_kernel(*marker.args, **marker.kwargs)
