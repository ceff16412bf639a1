"""pytest fixtures for the fake kernel; tests/conftest.py registers this plugin.

`fake_kernel` mounts the spec of the test's `@pytest.mark.fake_kernel(spec)` marker, or
TreeSpec.vm() without one; `make_fake_kernel(spec)` mounts more. All are closed (unmounted)
after the test. Where FUSE cannot work, tests using them are skipped, or fail when
VMEM_AGENT_REQUIRE_FAKE_KERNEL=1 (CI sets it).
"""

from __future__ import annotations

import os
import shutil

import pytest

from .kernel import FakeKernel
from .spec import TreeSpec


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        'markers', 'fake_kernel(spec): the TreeSpec the fake_kernel fixture mounts')


def fuse_unavailable_reason() -> str | None:
    if not os.path.exists('/dev/fuse'):
        return 'there is no /dev/fuse'
    if os.geteuid() != 0 and shutil.which('fusermount3') is None:
        return 'fusermount3 is not installed'
    return None


def require_fuse() -> None:
    """Skip the test where FUSE cannot work, or fail it when VMEM_AGENT_REQUIRE_FAKE_KERNEL=1."""
    reason = fuse_unavailable_reason()
    if reason:
        if os.environ.get('VMEM_AGENT_REQUIRE_FAKE_KERNEL') == '1':
            pytest.fail(f'FUSE is unavailable ({reason}) and VMEM_AGENT_REQUIRE_FAKE_KERNEL=1')
        pytest.skip(f'FUSE is unavailable: {reason}')


@pytest.fixture
def make_fake_kernel():
    kernels: list[FakeKernel] = []

    def make(spec: TreeSpec | None = None) -> FakeKernel:
        require_fuse()
        kernels.append(FakeKernel(spec))
        return kernels[-1]

    yield make
    for kernel in kernels:
        kernel.close()


@pytest.fixture
def fake_kernel(request: pytest.FixtureRequest, make_fake_kernel) -> FakeKernel:
    marker = request.node.get_closest_marker('fake_kernel')
    return make_fake_kernel(marker.args[0] if marker else None)
