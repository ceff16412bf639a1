"""pytest fixtures for the real-kernel (QEMU) suite.

Fixtures
--------
realkernel_prereqs  (session)  Prerequisites (qemu, kernel, busybox); skips the
                               test when one is missing (see below).
vm_config           (module)   VMConfig for ``vm``; override it in a test module:
                                   @pytest.fixture(scope="module")
                                   def vm_config():
                                       return VMConfig(virtio_mem=VirtioMem("4G"))
vm                  (module)   a booted GuestVM shared by the tests of one module.
                               Tests must not assume a pristine VM: compare
                               against state read at the start of the test.
boot_vm             (function) factory: ``boot_vm(VMConfig(...)) -> GuestVM`` for
                               a fresh VM per test (closed at test teardown).

Missing prerequisites skip the tests, unless VMEM_AGENT_REQUIRE_REALKERNEL=1,
which turns them into failures (CI sets it so a broken image cannot silently
skip the suite).

When a test using a VM fails, the tail of that VM's serial console (and, for an
init="systemd" guest, of its journal) is added to the report ("guest console" /
"guest journal" sections), and the console log, ``journalctl -b -o
short-monotonic`` and ``dmesg`` read at the failure are saved together when the
VM closes (/tmp/vmx-logs/, or $VMEM_AGENT_REALKERNEL_LOGDIR).
"""

from __future__ import annotations

import compileall
import os

import pytest

from .vm import (REPO_ROOT, GuestVM, PrerequisiteMissing, VMConfig, check_prerequisites)

REQUIRE_ENV = "VMEM_AGENT_REQUIRE_REALKERNEL"


def _required() -> bool:
    return os.environ.get(REQUIRE_ENV, "").strip().lower() in ("1", "true", "yes")


VM_FIXTURES = {"vm", "boot_vm", "realkernel_prereqs"}
JOURNAL_TAIL_LINES = 80


@pytest.hookimpl(tryfirst=True)  # before `-m realkernel` deselects
def pytest_collection_modifyitems(config, items):
    # Any test that boots a VM is a realkernel test, marked or not.
    for item in items:
        if (VM_FIXTURES & set(getattr(item, "fixturenames", ()))
                and not item.get_closest_marker("realkernel")):
            item.add_marker(pytest.mark.realkernel)


@pytest.fixture(scope="session")
def realkernel_prereqs():
    try:
        prereqs = check_prerequisites()
    except PrerequisiteMissing as e:
        if _required():
            pytest.fail(f"real-kernel prerequisite missing ({REQUIRE_ENV}=1): {e}",
                        pytrace=False)
        pytest.skip(f"real-kernel prerequisite missing: {e}")
    compile_checkout()
    return prereqs


def compile_checkout() -> None:
    """Byte-compile the checkout on the host, once per session.

    Guests read it over a read-only 9p root with PYTHONDONTWRITEBYTECODE=1, so without
    these files every agent run (and every daemon writer child) in a guest compiles the
    modules it imports again, under TCG. Both guest Pythons (the venv's and Debian's)
    are 3.11 and share the cpython-311 files; py_compile writes them atomically, so
    concurrent sessions do not clash.
    """
    for package in ("vmem_agent", "tests/realkernel"):
        compileall.compile_dir(REPO_ROOT / package, quiet=1, workers=1)


@pytest.fixture(scope="module")
def vm_config() -> VMConfig:
    """Default VM for a test module: 2G boot memory, 8 DIMM slots,
    maxmem 16G, crashkernel=256M.  Override per module."""
    return VMConfig(crashkernel="256M")


@pytest.fixture(scope="module")
def vm(realkernel_prereqs, vm_config, request):
    name = request.module.__name__.rsplit(".", 1)[-1]
    guest = GuestVM(vm_config, name=name)
    with guest:
        yield guest


@pytest.fixture
def boot_vm(realkernel_prereqs, request):
    """Factory for per-test VMs: ``vm = boot_vm(VMConfig(dimms=["1G"]))``."""
    started: list[GuestVM] = []
    request.node._vmx_vms = started

    def boot(config: VMConfig | None = None, **kw) -> GuestVM:
        g = GuestVM(config, name=request.node.name[:40], **kw)
        started.append(g)
        g.__enter__()
        return g

    yield boot
    failed = getattr(request.node, "_vmx_failed", False)
    for g in reversed(started):
        g.close(failed=failed)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if not rep.failed:
        return
    item._vmx_failed = True
    candidates = [*getattr(item, "funcargs", {}).values(), *getattr(item, "_vmx_vms", [])]
    # one VM may sit behind several fixtures
    vms = list({id(v): v for v in candidates if isinstance(v, GuestVM)}.values())
    for v in vms:
        v.mark_failed()
        tail = v.console_tail(80)
        if tail:
            rep.sections.append((f"guest console ({v.name}, tail)", tail))
        journal = v.diagnostics.get("journal", "")
        if journal:
            rep.sections.append((f"guest journal ({v.name}, tail)",
                                 "\n".join(journal.splitlines()[-JOURNAL_TAIL_LINES:])))
