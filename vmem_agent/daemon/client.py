"""The CLI's side of the control socket: ask the running daemon, or learn that none runs."""

from __future__ import annotations

import json
import socket
import time

from ..errors import EXIT_FAILURE, VmemError
from ..paths import control_socket_path
from .protocol import PROTOCOL_VERSION, Request, encode_request

MAX_REPLY_BYTES = 256 << 20  # a resize of every block of a huge guest, block by block
CONNECT_TIMEOUT_S = 5.0


class DaemonError(VmemError):
    """The daemon refused or failed the request; its reply carries the exit code."""

    def __init__(self, message: str, exit_code: int = EXIT_FAILURE, code: str = ""):
        super().__init__(message)
        self.exit_code = exit_code
        self.code = code


class DaemonAccessDenied(VmemError):
    """A daemon runs, but this user may not use its socket."""


def running(sysfs_root: str) -> bool:
    """Whether a daemon listens on this root's control socket (one that refuses us counts too)."""
    connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        connection.settimeout(CONNECT_TIMEOUT_S)
        connection.connect(control_socket_path(sysfs_root))
    except PermissionError:
        return True
    except OSError:
        return False
    finally:
        connection.close()
    return True


def ask(sysfs_root: str, request: Request, timeout: float) -> dict | None:
    """The daemon's result for `request`, or None when no daemon runs for this root."""
    path = control_socket_path(sysfs_root)
    connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        connection.settimeout(CONNECT_TIMEOUT_S)
        try:
            connection.connect(path)
        except (FileNotFoundError, ConnectionRefusedError, NotADirectoryError):
            return None
        except PermissionError:
            raise DaemonAccessDenied(f"a daemon runs, but {path} is not accessible to this user (root or its socket group)") from None
        except OSError as exc:
            raise VmemError(f"cannot connect to the daemon at {path}: {exc.strerror}") from None
        reply = _exchange(connection, encode_request(request), timeout, path)
    finally:
        connection.close()
    if not isinstance(reply, dict) or reply.get("version") != PROTOCOL_VERSION:
        raise VmemError(f"the daemon at {path} sent a reply this vmem-agent does not understand")
    if reply.get("ok") is True and isinstance(reply.get("result"), dict):
        return reply["result"]
    error = reply.get("error") if isinstance(reply.get("error"), dict) else {}
    exit_code = error.get("exit_code")
    raise DaemonError(
        f"daemon: {error.get('message') or 'request failed'}",
        exit_code if isinstance(exit_code, int) and 0 < exit_code < 256 else EXIT_FAILURE,
        str(error.get("code", "")),
    )


def _exchange(connection: socket.socket, data: bytes, timeout: float, path: str):
    deadline = time.monotonic() + timeout
    try:
        connection.sendall(data)
        received = bytearray()
        while not received.endswith(b"\n"):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise socket.timeout()
            connection.settimeout(remaining)
            chunk = connection.recv(1 << 20)
            if not chunk:
                break
            received += chunk
            if len(received) > MAX_REPLY_BYTES:
                raise VmemError(f"the daemon at {path} sent a reply larger than {MAX_REPLY_BYTES} bytes")
    except socket.timeout:
        raise VmemError(f"the daemon at {path} did not answer within {timeout:g}s") from None
    except OSError as exc:
        raise VmemError(f"lost the connection to the daemon at {path}: {exc.strerror}") from None
    try:
        return json.loads(received)
    except (ValueError, RecursionError):
        raise VmemError(f"the daemon at {path} closed the connection without a complete reply") from None


def daemon_facts(sysfs_root: str, timeout: float = 5.0) -> tuple[dict | None, bool, int | None, list[str]]:
    """(the running daemon's status or None, whether its socket is accessible, the stored target,
    warnings): what `status` and `doctor` say about the daemon."""
    from .. import paths
    from .protocol import Request
    from .target_store import TargetFileError, load_target

    warnings = []
    daemon, accessible = None, True
    try:
        answer = ask(sysfs_root, Request("status"), timeout)
        if answer is not None:
            daemon = checked_status(answer, paths.control_socket_path(sysfs_root))["daemon"]
    except DaemonAccessDenied:
        accessible = False
    except VmemError as exc:
        warnings.append(str(exc))
    stored_target = None
    try:
        stored = load_target(paths.state_dir(sysfs_root))
        stored_target = stored.target_bytes if stored else None
    except TargetFileError as exc:
        warnings.append(str(exc))
    return daemon, accessible, stored_target, warnings


def _is_int(value, low: int = 0, high: int | None = None) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= low and (high is None or value <= high)


def checked_output(result: dict, path: str) -> dict:
    """A plan/resize/reconcile result as the CLI prints it: text, JSON text and an exit code, or VmemError."""
    if not (isinstance(result.get("text"), str) and isinstance(result.get("json"), str)
            and _is_int(result.get("exit_code"), 0, 255)):
        raise VmemError(f"the daemon at {path} sent a result this vmem-agent does not understand")
    return result


def checked_status(result: dict, path: str) -> dict:
    """The daemon's status, checked in the fields `status` and `doctor` word (pid, onlining, target, job, failed blocks)."""
    daemon = result.get("daemon")
    job = daemon.get("job") if isinstance(daemon, dict) else None
    failed = daemon.get("blocks_failed") if isinstance(daemon, dict) else None
    if not (isinstance(daemon, dict) and _is_int(daemon.get("pid"), 1) and isinstance(daemon.get("onlining"), str)
            and "target_bytes" in daemon and (daemon["target_bytes"] is None or _is_int(daemon["target_bytes"]))
            and (job is None or isinstance(job, dict) and isinstance(job.get("kind"), str)
                 and isinstance(job.get("seconds"), (int, float)) and not isinstance(job.get("seconds"), bool))
            and (failed is None or isinstance(failed, list) and all(_is_int(index) for index in failed))):
        raise VmemError(f"the daemon at {path} sent a status this vmem-agent does not understand")
    return result
