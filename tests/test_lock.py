"""The writer lock: one holder at a time, a clear busy error, optional waiting."""

from __future__ import annotations

import os
import threading
import time

import pytest

from vmem_agent.errors import EXIT_BUSY, LockBusyError
from vmem_agent.engine.lock import WriterLock
from vmem_agent.paths import lock_path as default_lock_path


def test_second_holder_gets_busy_with_pid(tmp_path):
    path = str(tmp_path / "lock")
    with WriterLock(path):
        with pytest.raises(LockBusyError) as caught:
            WriterLock(path).__enter__()
    assert caught.value.exit_code == EXIT_BUSY
    assert f"pid {os.getpid()}" in str(caught.value) and "--wait" in str(caught.value)


def test_lock_is_free_again_after_release(tmp_path):
    path = str(tmp_path / "lock")
    with WriterLock(path):
        pass
    with WriterLock(path):
        pass


def test_wait_gets_the_lock_once_released(tmp_path):
    path = str(tmp_path / "lock")
    holder = WriterLock(path).__enter__()
    threading.Timer(0.3, holder.__exit__, args=(None, None, None)).start()
    began = time.monotonic()
    with WriterLock(path, wait=5):
        waited = time.monotonic() - began
    assert 0.2 < waited < 5


def test_wait_gives_up_at_its_limit(tmp_path):
    path = str(tmp_path / "lock")
    with WriterLock(path):
        with pytest.raises(LockBusyError, match="waited 0.3s"):
            WriterLock(path, wait=0.3).__enter__()


def test_lock_path_is_shared_for_the_real_root_and_separate_per_fake_root():
    assert default_lock_path("/") == "/run/vmem-agent/lock"
    assert default_lock_path("/tmp/a") != default_lock_path("/tmp/b")
    assert default_lock_path("/tmp/a") == default_lock_path("/tmp/a/")
