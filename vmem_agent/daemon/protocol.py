"""The control socket's protocol (docs/control-protocol.md): one JSON line each way.

A client connects, sends one request object terminated by a newline, and reads one
reply object terminated by a newline; then the daemon closes the connection. Requests
are checked here completely, so that the daemon acts only on well-formed ones.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

PROTOCOL_VERSION = 1
MAX_REQUEST_BYTES = 64 * 1024
COMMANDS = ("status", "plan", "resize", "reconcile")

# Error codes of a reply ({"ok": false, "error": {"code": ..., "message": ..., "exit_code": ...}}).
BAD_REQUEST = "bad-request"
TOO_LARGE = "too-large"
UNSUPPORTED_VERSION = "unsupported-version"
UNKNOWN_COMMAND = "unknown-command"
PERMISSION_DENIED = "permission-denied"
TOO_MANY_CLIENTS = "too-many-clients"
TIMEOUT = "timeout"
USAGE = "usage"
BUSY = "busy"
FAILED = "failed"
STOPPING = "stopping"

_REQUEST_FIELDS = {
    "status": {},
    "reconcile": {},
    "plan": {"size": str},
    "resize": {"size": str, "clear": bool, "dry_run": bool},
}
_MAX_SIZE_TEXT = 64


class ProtocolError(Exception):
    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True, slots=True)
class Request:
    command: str
    size: str | None = None
    clear: bool = False
    dry_run: bool = False


def parse_request(line: bytes) -> Request:
    """One request line -> Request; ProtocolError says exactly what is wrong."""
    if len(line) > MAX_REQUEST_BYTES:
        raise ProtocolError(TOO_LARGE, f"request larger than {MAX_REQUEST_BYTES} bytes")
    try:
        document = json.loads(line.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise ProtocolError(BAD_REQUEST, "not a JSON object in UTF-8") from None
    if not isinstance(document, dict):
        raise ProtocolError(BAD_REQUEST, "the request must be a JSON object")
    version = document.get("version")
    if version != PROTOCOL_VERSION or isinstance(version, bool):
        raise ProtocolError(UNSUPPORTED_VERSION, f"protocol version {PROTOCOL_VERSION} expected")
    command = document.get("command")
    if not isinstance(command, str) or command not in _REQUEST_FIELDS:
        raise ProtocolError(UNKNOWN_COMMAND, f"command must be one of {', '.join(COMMANDS)}")
    allowed = _REQUEST_FIELDS[command]
    fields = {}
    for name, value in document.items():
        if name in ("version", "command"):
            continue
        kind = allowed.get(name)
        if kind is None:
            raise ProtocolError(BAD_REQUEST, f"unknown field {name[:40]!r} for {command}")
        if type(value) is not kind:
            raise ProtocolError(BAD_REQUEST, f"field {name!r} must be a {kind.__name__}")
        if kind is str and (len(value) > _MAX_SIZE_TEXT or not value.isprintable()):
            raise ProtocolError(BAD_REQUEST, f"field {name!r}: not a size")
        fields[name] = value
    request = Request(command, **fields)
    if command == "plan" and request.size is None:
        raise ProtocolError(BAD_REQUEST, "plan needs a size")
    if command == "resize" and (request.size is None) == (not request.clear):
        raise ProtocolError(BAD_REQUEST, "resize needs either a size or clear")
    if request.clear and request.dry_run:
        raise ProtocolError(BAD_REQUEST, "clear has no dry run")
    return request


def encode_request(request: Request) -> bytes:
    document = {"version": PROTOCOL_VERSION, "command": request.command}
    if request.size is not None:
        document["size"] = request.size
    if request.clear:
        document["clear"] = True
    if request.dry_run:
        document["dry_run"] = True
    return _line(document)


def ok_reply(result: dict) -> bytes:
    return _line({"version": PROTOCOL_VERSION, "ok": True, "result": result})


def error_reply(code: str, message: str, exit_code: int) -> bytes:
    return _line({"version": PROTOCOL_VERSION, "ok": False, "error": {"code": code, "message": message, "exit_code": exit_code}})


def _line(document: dict) -> bytes:
    return json.dumps(document, separators=(",", ":")).encode() + b"\n"
