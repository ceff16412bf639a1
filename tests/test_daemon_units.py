"""The daemon's pure pieces: config checking, the socket protocol, the target file, sd_notify,
and the decision to let the kernel online. No fake kernel needed."""

from __future__ import annotations

import json
import os
import re
import socket
import tomllib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vmem_agent.core.model import KernelParams
from vmem_agent.core.onlining import kernel_onlining_plan, kernel_parameter, onliner_description
from vmem_agent.daemon.config import KEYS, DaemonConfig, parse_config, render_default_config
from vmem_agent.daemon.notify import Notifier
from vmem_agent.daemon.protocol import (
    MAX_REQUEST_BYTES, ProtocolError, Request, encode_request, parse_request,
)
from vmem_agent.daemon.target_store import (
    StoredTarget, TargetFileError, effective_target, load_target, store_target, target_file,
)
from vmem_agent.errors import ConfigError

GIB = 1 << 30
KERNEL_6_1 = KernelParams(online_policy="contig-zones", auto_movable_ratio=301, auto_movable_numa_aware=True,
                          memmap_on_memory=False)


# -- config ------------------------------------------------------------------------------------------


def test_the_installed_config_file_parses_to_the_defaults():
    text = render_default_config()
    assert parse_config(tomllib.loads(text)) == DaemonConfig()
    for key in KEYS:
        assert f"#{key.name} = " in text
    uncommented = re.sub(r"^#(?=[a-z_]+ = )", "", text, flags=re.MULTILINE)
    assert parse_config(tomllib.loads(uncommented)).target_bytes == 6 * GIB  # every example value is valid


@pytest.mark.parametrize("document, field, value", [
    ({"target": "6G"}, "target_bytes", 6 * GIB),
    ({"target": "1.5g"}, "target_bytes", 3 * GIB // 2),
    ({"zone": "movable"}, "zone", "movable"),
    ({"movable_ratio": 0}, "movable_ratio", 0),
    ({"reserve": "0"}, "reserve_bytes", 0),
    ({"block_timeout": 5}, "block_timeout", 5.0),
    ({"settle": 0}, "settle", 0.0),
    ({"kdump_command": "kdump-config reload"}, "kdump_command", ("kdump-config", "reload")),
    ({"kdump_command": ["/bin/sh", "-c", "a b"]}, "kdump_command", ("/bin/sh", "-c", "a b")),
    ({"event_source": "udev"}, "event_source", "udev"),
])
def test_good_values(document, field, value):
    assert getattr(parse_config(document), field) == value


@pytest.mark.parametrize("document, fragment", [
    ({"target": "0"}, "key 'target': expected a size above 0"),
    ({"target": "-1G"}, "key 'target'"),
    ({"target": True}, "key 'target'"),
    ({"movable_ratio": True}, "key 'movable_ratio'"),
    ({"movable_ratio": 1.5}, "key 'movable_ratio'"),
    ({"movable_ratio": -1}, "key 'movable_ratio'"),
    ({"block_timeout": float("inf")}, "key 'block_timeout'"),
    ({"timeout": 0}, "key 'timeout'"),
    ({"timeout": 10**12}, "key 'timeout'"),
    ({"kdump_command": ""}, "key 'kdump_command': expected a non-empty command"),
    ({"kdump_command": ["a", 1]}, "key 'kdump_command'"),
    ({"kdump_command": "a\0b"}, "key 'kdump_command'"),
    ({"socket_group": ""}, "key 'socket_group'"),
    ({"log_level": "verbose"}, "key 'log_level': expected one of debug, info, warning, error"),
    ({"kernel_onlining": {"a": 1}}, "key 'kernel_onlining'"),
    ({"Target": "6G"}, "unknown key 'Target' (did you mean 'target'?)"),
    ({"x" * 1000: 1}, "unknown key"),
])
def test_bad_values_name_the_key(document, fragment):
    with pytest.raises(ConfigError) as caught:
        parse_config(document, "/etc/vmem-agent/config.toml")
    message = str(caught.value)
    assert fragment in message and message.startswith("/etc/vmem-agent/config.toml: ")
    assert "\n" not in message and len(message) < 400


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.text(max_size=20), st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3),
    max_leaves=5), max_size=4))
def test_any_document_is_a_config_or_one_clean_config_error(document):
    try:
        config = parse_config(document, "config.toml")
    except ConfigError as exc:
        assert "\n" not in str(exc) and len(str(exc)) < 400
    else:
        assert isinstance(config, DaemonConfig)


# -- protocol -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("request_", [
    Request("status"), Request("reconcile"), Request("plan", size="6G"), Request("resize", size="-512M"),
    Request("resize", size="6G", dry_run=True), Request("resize", clear=True),
])
def test_requests_round_trip(request_):
    line = encode_request(request_)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert parse_request(line[:-1]) == request_


@pytest.mark.parametrize("line, code", [
    (b"", "bad-request"),
    (b"\xff\xfe", "bad-request"),
    (b"[]", "bad-request"),
    (b'{"command": "status"}', "unsupported-version"),
    (b'{"version": true, "command": "status"}', "unsupported-version"),
    (b'{"version": 2, "command": "status"}', "unsupported-version"),
    (b'{"version": 1, "command": "reboot"}', "unknown-command"),
    (b'{"version": 1, "command": ["status"]}', "unknown-command"),
    (b'{"version": 1, "command": "plan"}', "bad-request"),
    (b'{"version": 1, "command": "plan", "size": 6}', "bad-request"),
    (b'{"version": 1, "command": "resize"}', "bad-request"),
    (b'{"version": 1, "command": "resize", "size": "6G", "clear": true}', "bad-request"),
    (b'{"version": 1, "command": "resize", "clear": true, "dry_run": true}', "bad-request"),
    (b'{"version": 1, "command": "resize", "size": "6G", "dry_run": 1}', "bad-request"),
    (b'{"version": 1, "command": "status", "extra": 1}', "bad-request"),
    (b'{"version": 1, "command": "plan", "size": "\\u001b[2J"}', "bad-request"),
    (b'{"version": 1, "command": "plan", "size": "' + b"9" * 100 + b'"}', "bad-request"),
    (b"[" * 100000, "too-large"),
    (b"[" * 50000, "bad-request"),
])
def test_malformed_requests_are_refused_with_a_code(line, code):
    with pytest.raises(ProtocolError) as caught:
        parse_request(line)
    assert caught.value.code == code


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200) | st.text(max_size=200).map(str.encode))
def test_any_bytes_are_a_request_or_a_protocol_error(line):
    try:
        request = parse_request(line)
    except ProtocolError as exc:
        assert exc.code and exc.message
    else:
        assert request.command in ("status", "plan", "resize", "reconcile")


def test_the_request_limit_is_64_kib():
    assert MAX_REQUEST_BYTES == 64 * 1024


# -- the target file -------------------------------------------------------------------------------------


def test_target_round_trip_and_atomic_replacement(tmp_path):
    state = str(tmp_path / "state")
    assert load_target(state) is None
    store_target(state, StoredTarget(6 * GIB, None))
    assert load_target(state) == StoredTarget(6 * GIB, None)
    store_target(state, StoredTarget(None, 4 * GIB))
    assert load_target(state) == StoredTarget(None, 4 * GIB)
    assert os.listdir(state) == ["target.json"]  # no temp file left behind


@pytest.mark.parametrize("content", [b"", b"{", b"[]", b'{"version": 2}', b'{"version": 1, "target_bytes": -5}',
                                     b'{"version": 1, "target_bytes": true}', b"x" * 10000])
def test_a_damaged_target_file_is_one_clear_error(tmp_path, content):
    with open(target_file(str(tmp_path)), "wb") as handle:
        handle.write(content)
    with pytest.raises(TargetFileError) as caught:
        load_target(str(tmp_path))
    assert "target.json" in str(caught.value) and "\n" not in str(caught.value)


@pytest.mark.parametrize("stored, config, expected", [
    (None, None, None),
    (None, 6 * GIB, 6 * GIB),
    (StoredTarget(4 * GIB, None), None, 4 * GIB),
    (StoredTarget(None, 6 * GIB), 6 * GIB, None),  # cleared with resize --clear: stays cleared
    (StoredTarget(4 * GIB, 6 * GIB), 8 * GIB, 8 * GIB),  # the config's target changed since: it wins
])
def test_which_target_holds(stored, config, expected):
    assert effective_target(stored, config) == expected


# -- sd_notify -----------------------------------------------------------------------------------------------


def test_notify_reaches_path_and_abstract_sockets(tmp_path):
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(str(tmp_path / "notify"))
    Notifier({"NOTIFY_SOCKET": str(tmp_path / "notify")}).ready("all\nfine")
    assert listener.recv(4096) == b"READY=1\nSTATUS=all fine"
    abstract = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    name = f"vmem-agent-test-{os.getpid()}"
    abstract.bind("\0" + name)
    Notifier({"NOTIFY_SOCKET": "@" + name}).stopping()
    assert abstract.recv(4096) == b"STOPPING=1"


def test_without_notify_socket_nothing_is_sent_and_nothing_fails():
    notifier = Notifier({})
    assert not notifier.enabled
    notifier.ready("x")
    Notifier({"NOTIFY_SOCKET": "/nonexistent/socket"}).ready("x")  # systemd gone: logged, not raised


@pytest.mark.parametrize("environ, interval", [
    ({"WATCHDOG_USEC": "30000000"}, 15.0),
    ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}, 15.0),
    ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}, None),
    ({"WATCHDOG_USEC": "0"}, None),
    ({"WATCHDOG_USEC": "soon"}, None),
    ({}, None),
])
def test_watchdog_interval(environ, interval):
    assert Notifier(environ).watchdog_interval == interval


# -- letting the kernel online -----------------------------------------------------------------------------


def test_auto_zone_maps_to_the_kernels_auto_movable_policy_with_the_ratio():
    plan = kernel_onlining_plan("auto", 301, KERNEL_6_1, "offline", "console=ttyS0 quiet")
    assert [value for _path, value in plan.settings] == ["auto-movable", "301", "online"]
    assert plan.settings[-1][0].endswith("auto_online_blocks")  # auto-online last: no block onlined half-set


@pytest.mark.parametrize("zone, value", [("movable", "online_movable"), ("normal", "online_kernel")])
def test_forced_zones_map_to_forced_auto_online(zone, value):
    assert kernel_onlining_plan(zone, 301, KERNEL_6_1, "offline", "").settings == (
        ("sys/devices/system/memory/auto_online_blocks", value),)


@pytest.mark.parametrize("params, auto_online, cmdline, why", [
    (KERNEL_6_1, "offline", "quiet memhp_default_state=offline", "memhp_default_state=offline"),
    (KERNEL_6_1, "offline", "quiet memhp-default-state=offline", "memhp_default_state=offline"),  # - is _
    (KERNEL_6_1, None, "", "no auto_online_blocks"),
    (KernelParams(), "offline", "", "no auto-movable online policy"),
])
def test_the_kernel_is_left_alone_when_it_cannot_or_must_not_do_it(params, auto_online, cmdline, why):
    plan = kernel_onlining_plan("auto", 301, params, auto_online, cmdline)
    assert plan.settings == () and why in plan.reason


def test_cmdline_takes_the_last_value_like_the_kernel():
    assert kernel_parameter("a memhp_default_state=online b memhp_default_state=offline", "memhp_default_state") == "offline"
    assert kernel_parameter("memhp_default_statex=1", "memhp_default_state") is None
    assert kernel_parameter(None, "memhp_default_state") is None


def test_onliner_description():
    assert onliner_description("offline", "", False) is None
    assert "set by the vmem-agent daemon" in onliner_description("online", "", True)
    assert "memhp_default_state=online" in onliner_description("online", "memhp_default_state=online", False)


def test_json_of_a_request_is_compact_and_one_line():
    assert json.loads(encode_request(Request("plan", size="6G"))) == {"version": 1, "command": "plan", "size": "6G"}
