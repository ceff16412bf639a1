"""Bad input to the daemon: its config file, its control socket, its runtime files; and bad replies to its clients.

- The config file: `vmem-agent daemon --check-config` and a real start on the fake
  kernel end with exit 78 and one line naming the file and the key, before anything is
  written (the fake kernel's write log stays empty).
- The control socket: one daemon on a fake kernel with nothing to do (all memory online,
  kernel_onlining never), so that its write log must stay empty whatever it is sent.
  Every request gets one JSON line back with a documented error code and exit code, and
  the daemon answers status after all of them.
- A daemon's reply is input too: `vmem-agent status` and `plan` against a stand-in
  daemon that answers garbage end by the contract of tests/badinput.py.
"""

from __future__ import annotations

import json
import os
import socket
import threading

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.badinput import DIMM_TREE, Expect, check, copy_tree, run_all, run_capped
from tests.daemon_harness import DaemonProcess, raw_exchange
from tests.fakesysfs import FakeKernel, TreeSpec
from tests.fakesysfs.plugin import require_fuse
from vmem_agent import paths
from vmem_agent.daemon import protocol
from vmem_agent.daemon.kernel_onlining import SAVED_SETTINGS_NAME

CONFIG = 78
ESC = "\\u001b]0;pwned\\u0007\\u009b2J"  # in TOML: a terminal title and C1 CSI
NOTHING_TO_DO = TreeSpec.vm(boot_gib=2)  # all memory online: a daemon that writes nothing
QUIET = 'event_source = "udev"\nkdump = "never"\nkernel_onlining = "never"\n'
ERROR_CODES = {protocol.BAD_REQUEST, protocol.TOO_LARGE, protocol.UNSUPPORTED_VERSION, protocol.UNKNOWN_COMMAND,
               protocol.PERMISSION_DENIED, protocol.TOO_MANY_CLIENTS, protocol.TIMEOUT, protocol.USAGE,
               protocol.BUSY, protocol.FAILED, protocol.STOPPING}
REPLY_EXIT_CODES = {1, 2, 4, 64}

# -- the config file --------------------------------------------------------------------------------

CONFIG_CASES = [
    ("unquoted-size", "target = 6G\n", "invalid TOML"),
    ("bad-size", 'target = "6X"\n', "key 'target': '6X': expected a number"),
    ("zero-target", 'target = "0"\n', "key 'target': expected a size above 0"),
    ("number-target", "target = 6\n", "key 'target': expected a size in quotes"),
    ("relative-target", 'target = "+1G"\n', "key 'target'"),
    ("huge-target", 'target = "99999E"\n', "larger than 64 bits"),
    ("fullwidth-target", 'target = "６G"\n', "key 'target'"),
    ("zone", 'zone = "sideways"\n', "key 'zone': expected one of auto, movable, normal"),
    ("ratio-negative", "movable_ratio = -1\n", "key 'movable_ratio': expected a whole percentage"),
    ("ratio-float", "movable_ratio = 1e3\n", "key 'movable_ratio'"),
    ("ratio-string", 'movable_ratio = "301"\n', "key 'movable_ratio'"),
    ("ratio-bool", "movable_ratio = true\n", "key 'movable_ratio'"),
    ("ratio-huge", "movable_ratio = 100001\n", "key 'movable_ratio'"),
    ("reserve-relative", 'reserve = "-1G"\n', "key 'reserve'"),
    ("reserve-nan", 'reserve = "nan"\n', "key 'reserve'"),
    ("min-online", "min_online = 0\n", "key 'min_online': expected a size in quotes"),
    ("block-timeout-nan", "block_timeout = nan\n", "key 'block_timeout': expected a number of seconds from 0.1"),
    ("block-timeout-inf", "block_timeout = inf\n", "key 'block_timeout'"),
    ("block-timeout-negative", "block_timeout = -1\n", "key 'block_timeout'"),
    ("block-timeout-tiny", "block_timeout = 0.01\n", "key 'block_timeout'"),
    ("block-timeout-huge", "block_timeout = 1e30\n", "key 'block_timeout'"),
    ("block-timeout-string", 'block_timeout = "30"\n', "key 'block_timeout'"),
    ("timeout-bool", "timeout = true\n", "key 'timeout'"),
    ("timeout-bigint", "timeout = 9999999999999999999\n", "key 'timeout': expected a number of seconds"),
    ("reconcile", "reconcile_interval = 0.5\n", "key 'reconcile_interval'"),
    ("settle", "settle = -1\n", "key 'settle'"),
    ("kernel-onlining", 'kernel_onlining = "sometimes"\n', "key 'kernel_onlining'"),
    ("event-source", 'event_source = "dbus"\n', "key 'event_source': expected one of kernel, udev"),
    ("uevent-buffer", 'uevent_buffer = "0"\n', "key 'uevent_buffer': expected a size above 0"),
    ("kdump", 'kdump = "maybe"\n', "key 'kdump'"),
    ("kdump-command-unclosed", 'kdump_command = "kdumpctl \\"reload"\n', "key 'kdump_command': cannot split"),
    ("kdump-command-empty", 'kdump_command = ""\n', "key 'kdump_command': expected a non-empty command"),
    ("kdump-command-empty-list", "kdump_command = []\n", "key 'kdump_command'"),
    ("kdump-command-numbers", "kdump_command = [1]\n", "key 'kdump_command'"),
    ("kdump-command-nul", 'kdump_command = ["a\\u0000b"]\n', "NUL"),
    ("group-empty", 'socket_group = ""\n', "key 'socket_group': expected a group name"),
    ("group-escape", f'socket_group = "{ESC}"\n', "key 'socket_group'"),
    ("group-long", f'socket_group = "{"g" * 100}"\n', "key 'socket_group'"),
    ("log-level", 'log_level = "loud"\n', "key 'log_level'"),
    ("typo", 'targte = "6G"\n', "unknown key 'targte' (did you mean 'target'?)"),
    ("escape-key", f'"{ESC}" = 1\n', "unknown key '\\x1b]0;pwned\\x07\\x9b2J'"),
    ("long-key", f'{"k" * 5000} = 1\n', "characters)"),
    ("section", '[daemon]\ntarget = "6G"\n', "unknown key 'daemon'"),
    ("duplicate", 'target = "6G"\ntarget = "7G"\n', "invalid TOML"),
    ("deep-array", "a = " + "[" * 5000 + "]" * 5000 + "\n", "nested too deeply"),
    ("deep-table", "a = " + "{b=" * 3000 + "1" + "}" * 3000 + "\n", "nested too deeply"),
]
SPECIAL_FILES = [
    ("binary", lambda path: path.write_bytes(b"\xff\xfe\x00garbage"), "not UTF-8"),
    ("huge", lambda path: path.write_text("#" * (2 << 20)), "larger than 1M"),
    ("directory", lambda path: path.mkdir(), "Is a directory"),
    ("fifo", lambda path: os.mkfifo(path), "not a regular file"),
    ("missing", lambda path: None, "no such file"),
]


@pytest.fixture(scope="module")
def config_table(tmp_path_factory):
    directory = tmp_path_factory.mktemp("configs")
    cases = []
    for name, text, fragment in CONFIG_CASES:
        (directory / f"{name}.toml").write_text(text)
        cases.append((name, fragment))
    for name, make, fragment in SPECIAL_FILES:
        make(directory / f"{name}.toml")
        cases.append((name, fragment))
    results = run_all([lambda name=name: run_capped(DIMM_TREE, "daemon", "--check-config", "--config",
                                                    str(directory / f"{name}.toml")) for name, _ in cases])
    return directory, dict(zip((name for name, _ in cases), results))


@pytest.mark.parametrize("name, fragment", [(n, f) for n, _, f in CONFIG_CASES] + [(n, f) for n, _, f in SPECIAL_FILES],
                         ids=[n for n, _, _ in CONFIG_CASES] + [n for n, _, _ in SPECIAL_FILES])
def test_bad_config_files(config_table, name, fragment):
    directory, results = config_table
    line = check(results[name], Expect(CONFIG, fragment))
    assert f"{directory / name}.toml" in line, line


TOML_VALUE = st.one_of(
    st.integers(), st.floats(), st.booleans(), st.text(max_size=20),
    st.lists(st.one_of(st.text(max_size=8), st.integers()), max_size=3),
    st.sampled_from(["6G", "-1G", "0", "nan", "auto", "udev", "never", "kdumpctl reload", "'", ""]),
)
TOML_KEY = st.one_of(st.sampled_from(["target", "zone", "movable_ratio", "reserve", "min_online", "block_timeout",
                                      "timeout", "reconcile_interval", "settle", "kernel_onlining", "event_source",
                                      "uevent_buffer", "kdump", "kdump_command", "socket_group", "log_level"]),
                     st.text(min_size=1, max_size=12))


def _toml(document: dict) -> str:
    return "".join(f"{json.dumps(key)} = {_toml_value(value)}\n" for key, value in document.items())


def _toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return {"nan": "nan", "inf": "inf", "-inf": "-inf"}.get(repr(value), repr(value))
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(item) for item in value) + "]"
    return json.dumps(value) if isinstance(value, str) else str(value)


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                HealthCheck.function_scoped_fixture])
@given(documents=st.lists(st.dictionaries(TOML_KEY, TOML_VALUE, max_size=4), min_size=8, max_size=8))
def test_generated_config_files(tmp_path_factory, documents):
    """Any document: the effective values (exit 0) or one line naming the file (exit 78)."""
    directory = tmp_path_factory.mktemp("generated-configs")
    for number, document in enumerate(documents):
        (directory / f"{number}.toml").write_text(_toml(document))
    results = run_all([lambda number=number: run_capped(DIMM_TREE, "daemon", "--check-config", "--config",
                                                        str(directory / f"{number}.toml"))
                       for number in range(len(documents))])
    for proc in results:
        assert proc.returncode in (0, CONFIG), proc
        check(proc, Expect(proc.returncode, "config" if proc.returncode else None))


# -- a real daemon with a bad config, or bad files of its own ---------------------------------------


@pytest.fixture
def daemons():
    started: list[DaemonProcess] = []
    yield started
    for daemon in started:
        daemon.close()


@pytest.mark.parametrize("config, fragment", [
    ('zone = "fast"\n', "key 'zone'"),
    ("block_timeout = nan\n", "key 'block_timeout'"),
    ('kdump_command = "\'unclosed"\n', "cannot split"),
    ('socket_group = "no-such-group-here"\n', "socket_group 'no-such-group-here': no such group"),
    ("a = " + "[" * 5000 + "]" * 5000 + "\n", "nested too deeply"),
], ids=["zone", "nan", "command", "group", "deep"])
def test_a_daemon_with_a_bad_config_exits_78_before_any_write(make_fake_kernel, daemons, config, fragment):
    kernel = make_fake_kernel(TreeSpec.vm(boot_gib=2, dimm_gib=(0.5,)))  # a DIMM it would online
    daemon = DaemonProcess(kernel, config)
    daemons.append(daemon)
    daemon.start(wait_ready=False)
    assert daemon.process.wait(30) == CONFIG
    lines = [line for line in daemon.log().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("vmem-agent: ") and fragment in lines[0], lines
    assert kernel.writes() == []


@pytest.mark.parametrize("saved", [
    "path",  # a file the daemon does not set (here: one outside the root): never written
    b'{"sys/devices/system/memory/auto_online_blocks": "\\u001b[2J"}',  # not a value it can hold
    b"[" * 5000,
    b"\xff\xfe",
], ids=["path", "value", "deep", "binary"])
def test_damaged_saved_kernel_settings_are_ignored(make_fake_kernel, daemons, tmp_path, saved):
    """A kernel-onlining.json in the runtime directory that vmem-agent did not write: one warning,
    nothing written anywhere, and the daemon runs."""
    kernel = make_fake_kernel(NOTHING_TO_DO)
    victim = tmp_path / "victim"
    victim.write_text("intact\n")
    if saved == "path":
        saved = json.dumps({os.path.relpath(victim, kernel.root): "pwned"}).encode()
    runtime = paths.runtime_dir(str(kernel.root))
    os.makedirs(runtime, exist_ok=True)
    with open(os.path.join(runtime, SAVED_SETTINGS_NAME), "wb") as handle:
        handle.write(saved)
    daemon = DaemonProcess(kernel, QUIET)
    daemons.append(daemon)
    daemon.start()
    assert daemon.status()["pid"] == daemon.process.pid
    assert kernel.writes() == [] and victim.read_text() == "intact\n"
    assert "ignoring" in daemon.log()


# -- the control socket -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def quiet_daemon():
    require_fuse()
    with FakeKernel(NOTHING_TO_DO, netlink=False) as kernel:
        daemon = DaemonProcess(kernel, QUIET)
        try:
            daemon.start()
            yield kernel, daemon
        finally:
            daemon.close()


def check_reply(raw: bytes, code: str | None = None) -> dict:
    """One JSON line; an error with a documented code and exit code, its message one clean line."""
    assert raw.endswith(b"\n") and raw.count(b"\n") == 1, raw[:200]
    document = json.loads(raw)
    assert document["version"] == protocol.PROTOCOL_VERSION and isinstance(document["ok"], bool), document
    if document["ok"]:
        assert code is None, document
        return document
    error = document["error"]
    assert error["code"] in ERROR_CODES and error["exit_code"] in REPLY_EXIT_CODES, error
    assert "\n" not in error["message"] and len(error["message"]) <= 600, error
    if code is not None:
        assert error["code"] == code, error
    return document


def request(**fields) -> bytes:
    return json.dumps({"version": 1, **fields}).encode() + b"\n"


SOCKET_CASES = [
    ("empty-line", b"\n", protocol.BAD_REQUEST),
    ("empty-object", b"{}\n", protocol.UNSUPPORTED_VERSION),
    ("null", b"null\n", protocol.BAD_REQUEST),
    ("string", b'"status"\n', protocol.BAD_REQUEST),
    ("no-command", b'{"version":1}\n', protocol.UNKNOWN_COMMAND),
    ("version-string", b'{"version":"1","command":"status"}\n', protocol.UNSUPPORTED_VERSION),
    ("version-true", b'{"version":true,"command":"status"}\n', protocol.UNSUPPORTED_VERSION),
    ("version-2", b'{"version":2,"command":"status"}\n', protocol.UNSUPPORTED_VERSION),
    ("command-number", request(command=1), protocol.UNKNOWN_COMMAND),
    ("command-unknown", request(command="shutdown"), protocol.UNKNOWN_COMMAND),
    ("command-escape", request(command="\x1b[2J"), protocol.UNKNOWN_COMMAND),
    ("unknown-field", request(command="status", force=True), protocol.BAD_REQUEST),
    ("escape-field", request(command="status", **{"\x1b]0;x\x07" * 20: 1}), protocol.BAD_REQUEST),
    ("size-number", request(command="plan", size=6), protocol.BAD_REQUEST),
    ("size-long", request(command="plan", size="1" * 65), protocol.BAD_REQUEST),
    ("size-control", request(command="plan", size="6G\x1b"), protocol.BAD_REQUEST),
    ("plan-no-size", request(command="plan"), protocol.BAD_REQUEST),
    ("resize-nothing", request(command="resize"), protocol.BAD_REQUEST),
    ("resize-both", request(command="resize", size="2G", clear=True), protocol.BAD_REQUEST),
    ("clear-dry-run", request(command="resize", clear=True, dry_run=True), protocol.BAD_REQUEST),
    ("clear-string", request(command="resize", clear="yes"), protocol.BAD_REQUEST),
    ("dry-run-number", request(command="resize", size="2G", dry_run=1), protocol.BAD_REQUEST),
    ("plan-nan", request(command="plan", size="nan"), protocol.USAGE),
    ("plan-inf", request(command="plan", size="inf"), protocol.USAGE),
    ("plan-fullwidth", request(command="plan", size="６G"), protocol.USAGE),
    ("plan-spaces", request(command="plan", size="4 5"), protocol.USAGE),
    ("plan-huge", request(command="plan", size="99999999999999999999P"), protocol.USAGE),
    ("plan-zero", request(command="plan", size="0"), protocol.USAGE),
    ("dry-run-too-big", request(command="resize", size="999T", dry_run=True), protocol.USAGE),
    ("dry-run-negative", request(command="resize", size="-99T", dry_run=True), protocol.USAGE),
    ("not-utf8", b'{"version":1,"command":"\xff"}\n', protocol.BAD_REQUEST),
    ("control-bytes", b"\x00\x01\x02\n", protocol.BAD_REQUEST),
    ("deep-array", b"[" * 10000 + b"\n", protocol.BAD_REQUEST),
    ("deep-object", b'{"a":' * 5000 + b"\n", protocol.BAD_REQUEST),
    ("duplicate-key", b'{"version":1,"command":"status","version":2}\n', protocol.UNSUPPORTED_VERSION),
    ("two-requests", request(command="status") * 2, None),  # the first line is the request
    ("huge-number", b'{"version":1' + b"0" * 5000 + b',"command":"status"}\n', protocol.BAD_REQUEST),
    ("too-large", b"x" * (protocol.MAX_REQUEST_BYTES + 10), protocol.TOO_LARGE),
]


@pytest.fixture(scope="module")
def socket_table(quiet_daemon):
    kernel, daemon = quiet_daemon
    root = str(kernel.root)
    return dict(zip((name for name, _, _ in SOCKET_CASES),
                    run_all([lambda data=data: raw_exchange(root, data, shutdown=len(data) <= protocol.MAX_REQUEST_BYTES)
                             for _, data, _ in SOCKET_CASES])))


@pytest.mark.parametrize("name, data, code", SOCKET_CASES, ids=[name for name, _, _ in SOCKET_CASES])
def test_bad_requests(quiet_daemon, socket_table, name, data, code):
    kernel, daemon = quiet_daemon
    check_reply(socket_table[name], code)
    assert kernel.writes() == []
    assert daemon.process.poll() is None


def test_a_request_that_never_ends_times_out_and_the_daemon_goes_on(quiet_daemon):
    kernel, daemon = quiet_daemon
    check_reply(raw_exchange(str(kernel.root), b'{"version":1,', shutdown=False), protocol.TIMEOUT)
    assert daemon.status()["pid"] == daemon.process.pid and kernel.writes() == []


REQUEST_FIELDS = st.dictionaries(
    st.sampled_from(["version", "command", "size", "clear", "dry_run", "x", "\x1b"]),
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12)
    | st.sampled_from(["status", "plan", "resize", "reconcile", 1, "6G", "-1G", "+0", "nan", "3G"]),
    max_size=5)


def _harmless(document: dict) -> dict:
    """What the daemon may run without writing: resize only as a dry run, no reconcile (it rescans)."""
    if document.get("command") == "resize" and document.get("clear") is not True:
        document["dry_run"] = True
    if document.get("command") == "reconcile":
        document["command"] = "status"
    if document.get("command") == "resize" and document.get("clear") is True:
        document["clear"] = "no"  # clearing the target is a write of the state file
    return document


@settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck), database=None)
@given(line=st.one_of(REQUEST_FIELDS.map(lambda d: json.dumps(_harmless(d)).encode()),
                      st.binary(max_size=300).filter(lambda b: b"\n" not in b)))
def test_generated_requests(quiet_daemon, line):
    kernel, daemon = quiet_daemon
    check_reply(raw_exchange(str(kernel.root), line + b"\n"))
    assert kernel.writes() == []


def test_the_daemon_still_answers_after_all_of_them(quiet_daemon):
    kernel, daemon = quiet_daemon
    assert daemon.status()["pid"] == daemon.process.pid
    assert kernel.writes() == []


@pytest.mark.parametrize("args, expect", [
    (("plan", "4 5"), Expect(2, "invalid size '4 5'")),  # refused before the daemon is asked
    (("resize", "--zone", "normal", "2G"), Expect(2, "--zone: a vmem-agent daemon runs")),
    (("resize", "--dry-run", "999T"), Expect(2, "daemon: target 999T is more than")),
    (("plan", "999T"), Expect(2, "daemon: target 999T is more than")),
    (("status", "--json"), Expect(0)),
], ids=["size", "option", "too-big", "plan-too-big", "status"])
def test_the_cli_through_the_daemon(quiet_daemon, args, expect):
    kernel, daemon = quiet_daemon
    check(run_capped(kernel.root, *args), expect)
    assert kernel.writes() == []


# -- a stand-in daemon that answers garbage ---------------------------------------------------------


class GarbageDaemon:
    """Listens on the root's control socket and answers every request with `reply` (None: hangs up)."""

    def __init__(self, root: str, reply: bytes | None):
        self.path = paths.control_socket_path(root)
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        self.reply = reply
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(self.path)
        self.listener.listen(8)
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                connection, _ = self.listener.accept()
            except OSError:
                return
            with connection:
                connection.settimeout(2)
                try:
                    connection.recv(65536)
                    if self.reply is not None:
                        connection.sendall(self.reply)
                except OSError:
                    pass

    def close(self) -> None:
        self.listener.close()
        os.unlink(self.path)


def failure(message: str, exit_code) -> bytes:
    return json.dumps({"version": 1, "ok": False, "error": {"code": "x", "message": message,
                                                            "exit_code": exit_code}}).encode() + b"\n"


def success(result) -> bytes:
    return json.dumps({"version": 1, "ok": True, "result": result}).encode() + b"\n"


GARBAGE_REPLIES = [  # name, reply, the line's fragment, plan's exit code
    ("not-json", b"garbage\n", "without a complete reply", 1),
    ("wrong-version", b'{"version":7,"ok":true,"result":{}}\n', "does not understand", 1),
    ("not-an-object", b"[1,2,3]\n", "does not understand", 1),
    ("deep", b"[" * 100000 + b"\n", "without a complete reply", 1),
    ("hang-up", None, "without a complete reply", 1),
    ("exit-999", failure("no", 999), "daemon: no", 1),
    ("exit-string", failure("no", "2"), "daemon: no", 1),
    ("escape", failure("\x1b]0;pwned\x07\x9b2J", 2), "daemon: \\x1b]0;pwned\\x07\\x9b2J", 2),
    ("long", failure("m" * 100_000, 2), "characters)", 2),
    ("result-not-dict", success(5), "daemon: request failed", 1),
    ("result-empty", success({}), "does not understand", 1),
    ("result-wrong-types", success({"text": 1, "json": None, "exit_code": 300, "daemon": {"pid": "x"}}),
     "does not understand", 1),
]


@pytest.mark.parametrize("name, reply, fragment, plan_code", GARBAGE_REPLIES, ids=[name for name, *_ in GARBAGE_REPLIES])
def test_garbage_from_the_daemon(tmp_path, name, reply, fragment, plan_code):
    """status still shows the tree, with one warning; plan fails with one line."""
    root = copy_tree(DIMM_TREE, tmp_path / "root")
    stand_in = GarbageDaemon(str(root), reply)
    try:
        status, plan = run_all([lambda: run_capped(root, "status"), lambda: run_capped(root, "plan", "2G")])
    finally:
        stand_in.close()
    check(status, Expect(0, "vmem-agent: warning: "))
    assert b"RANGE" in status.stdout
    check(plan, Expect(plan_code, fragment))
