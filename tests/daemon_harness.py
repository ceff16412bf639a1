"""Run the real `vmem-agent daemon` against a fake kernel, and watch what it tells systemd.

The daemon runs as a subprocess with `--sysfs-root` on the fake tree, its own config
file, and NOTIFY_SOCKET pointing at a datagram socket of the test (what systemd would
receive). It runs in the fake kernel's network namespace when the fake kernel emits
netlink uevents (config `event_source = "udev"` to hear them), else in a private one.
Either way it hears no udev messages of this machine; kernel-source uevents reach every
namespace, so tests use the udev source.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from tests.helpers import agent_command
from vmem_agent import paths
from vmem_agent.daemon import client
from vmem_agent.daemon.protocol import Request

READY_TIMEOUT_S = 60.0
QUIET_CONFIG = 'kdump = "never"\nevent_source = "udev"\n'  # no kdump runs, and the fake kernel's events heard


class NotifyListener:
    """A stand-in for systemd's notify socket: collects every datagram's fields."""

    def __init__(self, directory: str):
        self.path = os.path.join(directory, "notify.sock")
        self.socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.socket.bind(self.path)
        self.socket.setblocking(False)
        self.messages: list[dict[str, str]] = []

    def collect(self) -> list[dict[str, str]]:
        while True:
            try:
                data = self.socket.recv(65536)
            except BlockingIOError:
                return self.messages
            self.messages.append(dict(line.split("=", 1) for line in data.decode().splitlines() if "=" in line))

    def wait_for(self, predicate, timeout: float = READY_TIMEOUT_S, what: str = "a notify message") -> dict:
        end = time.monotonic() + timeout
        seen = 0
        while time.monotonic() < end:
            for message in self.collect()[seen:]:
                seen += 1
                if predicate(message):
                    return message
            time.sleep(0.02)
        raise AssertionError(f"no {what} within {timeout}s; got {self.messages}")

    def close(self) -> None:
        self.socket.close()


class DaemonProcess:
    def __init__(self, kernel, config: str = "", env: dict | None = None, extra_args: tuple[str, ...] = ()):
        self.kernel = kernel
        self.root = str(kernel.root)
        self.workdir = tempfile.mkdtemp(prefix="vmem-daemon-test-")
        self.config_path = os.path.join(self.workdir, "config.toml")
        Path(self.config_path).write_text(config)
        self.notify = NotifyListener(self.workdir)
        self.log_path = os.path.join(self.workdir, "daemon.log")
        self.env = dict(os.environ, NOTIFY_SOCKET=self.notify.path, **(env or {}))
        self.env.pop("VMEM_AGENT_SYSFS_ROOT", None)
        self.extra_args = extra_args
        self.process: subprocess.Popen | None = None

    def command(self) -> list[str]:
        argv = [*agent_command(), "-v", "--sysfs-root", self.root, "daemon", "--config", self.config_path, *self.extra_args]
        if self.kernel.netns_path is not None:
            return self.kernel.in_netns(argv)
        return ["unshare", "--net", *argv]

    def start(self, wait_ready: bool = True) -> "DaemonProcess":
        self.notify.messages.clear()
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(self.command(), env=self.env, stdin=subprocess.DEVNULL,
                                            stdout=log, stderr=log)
        if wait_ready:
            self.wait_ready()
        return self

    def wait_ready(self, timeout: float = READY_TIMEOUT_S) -> dict:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            for message in self.notify.collect():
                if message.get("READY") == "1":
                    return message
            if self.process.poll() is not None:
                raise AssertionError(f"daemon exited with {self.process.returncode} before READY=1:\n{self.log()}")
            time.sleep(0.02)
        raise AssertionError(f"daemon not ready within {timeout}s:\n{self.log()}")

    def ask(self, request: Request, timeout: float = 60.0) -> dict:
        answer = client.ask(self.root, request, timeout)
        assert answer is not None, "the daemon does not answer"
        return answer

    def status(self) -> dict:
        return self.ask(Request("status"), timeout=10.0)["daemon"]

    def wait_until(self, predicate, timeout: float = 30.0, what: str = "the condition"):
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            value = predicate()
            if value:
                return value
            time.sleep(0.05)
        raise AssertionError(f"{what} not reached within {timeout}s; daemon log:\n{self.log()}")

    def stop(self, signum: int = signal.SIGTERM, timeout: float = 10.0) -> tuple[int, float]:
        """Signal the daemon and wait: (exit code, seconds it took)."""
        began = time.monotonic()
        self.process.send_signal(signum)
        code = self.process.wait(timeout)
        return code, time.monotonic() - began

    def log(self) -> str:
        try:
            return Path(self.log_path).read_text(errors="replace")
        except OSError:
            return ""

    def close(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        self.notify.close()
        shutil.rmtree(self.workdir, ignore_errors=True)
        shutil.rmtree(paths.runtime_dir(self.root), ignore_errors=True)


def raw_exchange(root: str, data: bytes, timeout: float = 10.0, shutdown: bool = True) -> bytes:
    """Send raw bytes to the root's control socket (half-closing unless told not to); all that comes back."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    sock.connect(paths.control_socket_path(root))
    try:
        sock.sendall(data)
        if shutdown:
            sock.shutdown(socket.SHUT_WR)
        received = b''
        while chunk := sock.recv(65536):
            received += chunk
        return received
    except (BrokenPipeError, ConnectionResetError):
        return b''
    finally:
        sock.close()


@pytest.fixture
def start_daemon():
    """start(kernel, config=QUIET_CONFIG, wait_ready=True, **DaemonProcess options): a started
    daemon, closed at the end of the test."""
    daemons: list[DaemonProcess] = []

    def start(kernel, config: str = QUIET_CONFIG, wait_ready: bool = True, **kw) -> DaemonProcess:
        daemon = DaemonProcess(kernel, config, **kw)
        daemons.append(daemon)
        return daemon.start(wait_ready)

    yield start
    for daemon in daemons:
        daemon.close()
