"""OS errors become typed exceptions that read as one line naming block, path and errno."""

from __future__ import annotations

import errno

import pytest

from vmem_agent import errors


@pytest.mark.parametrize(
    "code,kind",
    [
        (errno.EBUSY, errors.BlockBusyError),
        (errno.EAGAIN, errors.BlockBusyError),
        (errno.EINVAL, errors.InvalidRequestError),
        (errno.EINTR, errors.WriteInterruptedError),
        (errno.ENOENT, errors.BlockVanishedError),
        (errno.EPERM, errors.PermissionDeniedError),
        (errno.EACCES, errors.PermissionDeniedError),
        (errno.EROFS, errors.PermissionDeniedError),
        (errno.ENOMEM, errors.SysfsError),
    ],
)
def test_errno_maps_to_type_with_fields(code, kind):
    exc = errors.sysfs_error(OSError(code, "x"), "/sys/devices/system/memory/memory7/state", 7, "write 'offline'")
    assert type(exc) is kind
    assert (exc.errno, exc.block, exc.path) == (code, 7, "/sys/devices/system/memory/memory7/state")
    text = str(exc)
    assert "\n" not in text and text.startswith("memory block 7: write 'offline' failed:")
    assert errno.errorcode[code] in text


def test_error_without_block_names_the_path():
    exc = errors.sysfs_error(OSError(errno.EIO, "x"), "/sys/kernel/kexec_crash_loaded")
    assert str(exc).startswith("/sys/kernel/kexec_crash_loaded: access failed")


def test_offline_timeout_message():
    exc = errors.OfflineTimeoutError("/x/state", 9, 2.5, writer_stuck_pid=1234)
    assert exc.errno == errno.EINTR and isinstance(exc, errors.WriteInterruptedError)
    assert str(exc) == "memory block 9: offline did not finish within 2.5s; interrupted (writer pid 1234 is still stuck in the kernel)"
