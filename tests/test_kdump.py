"""kdump reload decisions, with the sysfs reads and the command injected."""

from __future__ import annotations

import subprocess

import pytest

from vmem_agent.engine.kdump import KdumpConfig, detect_reload_command, reload_after_change


class FakeCrashSysfs:
    def __init__(self, loaded, crash_hotplug_reads):
        self.loaded = loaded
        self.reads = list(crash_hotplug_reads)

    def kexec_crash_loaded(self):
        return self.loaded

    def crash_hotplug(self):
        return self.reads.pop(0) if len(self.reads) > 1 else self.reads[0]


class Recorder:
    def __init__(self, returncode=0, stderr=""):
        self.calls = []
        self.returncode = returncode
        self.stderr = stderr

    def __call__(self, argv, **kwargs):
        self.calls.append((argv, kwargs))
        return subprocess.CompletedProcess(argv, self.returncode, "", self.stderr)


def run(sysfs, config=KdumpConfig(command=("reload-it",)), recorder=None, which=lambda name: None):
    recorder = recorder or Recorder()
    sleeps = []
    outcome = reload_after_change(sysfs, config, run=recorder, sleep=sleeps.append, which=which)
    return outcome, recorder, sleeps


def test_reloads_once_when_crash_kernel_loaded_and_no_crash_hotplug():
    outcome, recorder, _ = run(FakeCrashSysfs(True, [None]))
    assert outcome.action == "reloaded"
    assert len(recorder.calls) == 1
    argv, kwargs = recorder.calls[0]
    assert argv == ["reload-it"] and kwargs["timeout"] > 0 and "shell" not in kwargs


def test_skips_when_kernel_updates_crash_image():
    outcome, recorder, _ = run(FakeCrashSysfs(True, [True]))
    assert outcome.action == "skipped" and "crash_hotplug=1" in outcome.reason and not recorder.calls


def test_rereads_crash_hotplug_once_after_a_pause_when_it_reads_0():
    outcome, recorder, sleeps = run(FakeCrashSysfs(True, [False, True]))
    assert outcome.action == "skipped" and len(sleeps) == 1 and not recorder.calls


def test_reloads_when_crash_hotplug_stays_0():
    outcome, recorder, sleeps = run(FakeCrashSysfs(True, [False, False]))
    assert outcome.action == "reloaded" and len(sleeps) == 1 and len(recorder.calls) == 1


def test_skips_without_crash_kernel_in_auto_mode_but_not_in_always_mode():
    outcome, recorder, _ = run(FakeCrashSysfs(False, [None]))
    assert outcome.action == "skipped" and "no crash kernel" in outcome.reason and not recorder.calls
    outcome, recorder, _ = run(FakeCrashSysfs(False, [None]), KdumpConfig(mode="always", command=("x",)))
    assert outcome.action == "reloaded"


def test_never_mode_does_nothing():
    outcome, recorder, _ = run(FakeCrashSysfs(True, [None]), KdumpConfig(mode="never", command=("x",)))
    assert outcome.action == "skipped" and not recorder.calls


def test_failure_is_reported_with_last_stderr_line():
    outcome, _, _ = run(FakeCrashSysfs(True, [None]), recorder=Recorder(3, "warming up\nno kernel image\n"))
    assert outcome.action == "failed" and outcome.returncode == 3 and outcome.reason == "exit code 3: no kernel image"


def test_timeout_and_missing_program_are_failures():
    def timing_out(argv, **kwargs):
        raise subprocess.TimeoutExpired(argv, kwargs["timeout"])

    def missing(argv, **kwargs):
        raise FileNotFoundError(2, "No such file or directory")

    assert "timed out" in reload_after_change(FakeCrashSysfs(True, [None]), KdumpConfig(command=("x",), timeout=3), run=timing_out).reason
    assert "cannot run" in reload_after_change(FakeCrashSysfs(True, [None]), KdumpConfig(command=("x",)), run=missing).reason


@pytest.mark.parametrize(
    "available,expected",
    [
        ({"kdumpctl", "systemctl"}, ("kdumpctl", "reload")),
        ({"kdump-config", "systemctl"}, ("kdump-config", "reload")),
        ({"systemctl"}, ("systemctl", "try-restart", "kdump.service")),
        (set(), None),
    ],
)
def test_detects_the_distribution_command(available, expected):
    assert detect_reload_command(lambda name: f"/usr/bin/{name}" if name in available else None) == expected


def test_no_command_found_is_a_failure():
    outcome, _, _ = run(FakeCrashSysfs(True, [None]), KdumpConfig())
    assert outcome.action == "failed" and "no kdump reload command" in outcome.reason
