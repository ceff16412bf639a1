"""Where vmem-agent keeps its files, in one place: config, runtime dir, lock, socket, state.

Production (`--sysfs-root /`) uses the FHS paths the systemd unit sets up
(RuntimeDirectory=vmem-agent, StateDirectory=vmem-agent). Any other root gets a runtime
directory of its own, named after the root, so that tests on separate fake trees never
share a lock or a daemon, and nothing of theirs lands in the production paths.
"""

from __future__ import annotations

import errno
import os
import stat
import zlib

CONFIG_PATH = "/etc/vmem-agent/config.toml"
RUNTIME_DIR = "/run/vmem-agent"
STATE_DIR = "/var/lib/vmem-agent"
LOCK_NAME = "lock"
CONTROL_SOCKET_NAME = "control.sock"
TARGET_FILE_NAME = "target.json"


def _is_production(sysfs_root: str) -> bool:
    return os.path.abspath(sysfs_root) == "/"


def default_config_path(sysfs_root: str) -> str | None:
    """The config file that belongs to this root: /etc/vmem-agent/config.toml for `/`, none for others."""
    return CONFIG_PATH if _is_production(sysfs_root) else None


def runtime_dir(sysfs_root: str) -> str:
    """/run/vmem-agent for the real root; /run/vmem-agent-<CRC-32 of the root> for any other.

    (CRC-32, not a cryptographic hash: hashlib would load OpenSSL, 3.7 MiB of the daemon's
    resident memory, to name test directories.)
    """
    if _is_production(sysfs_root):
        return RUNTIME_DIR
    return f"{RUNTIME_DIR}-{zlib.crc32(os.path.abspath(sysfs_root).encode()):08x}"


def lock_path(sysfs_root: str) -> str:
    return os.path.join(runtime_dir(sysfs_root), LOCK_NAME)


def control_socket_path(sysfs_root: str) -> str:
    return os.path.join(runtime_dir(sysfs_root), CONTROL_SOCKET_NAME)


def state_dir(sysfs_root: str) -> str:
    """/var/lib/vmem-agent for the real root; inside the runtime dir for any other (tests)."""
    if _is_production(sysfs_root):
        return STATE_DIR
    return os.path.join(runtime_dir(sysfs_root), "state")


def read_regular_file(path: str, limit: int) -> bytes:
    """Up to `limit` bytes of one of our own files; OSError (EINVAL) when it is no regular file.

    Opened without blocking: a FIFO or a device put in a file's place must not hang the agent.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as handle:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file")
        return handle.read(limit)


def replace_file(path: str, data: bytes, mode: int = 0o644) -> None:
    """Replace one of our own files atomically and durably: a temporary file, fsync, rename,
    fsync of the directory. OSError on failure, with the temporary file removed."""
    temporary = f"{path}.{os.getpid()}.tmp"
    try:
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temporary, path)
        directory = os.open(os.path.dirname(path) or ".", os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
    except OSError:
        try:
            os.unlink(temporary)
        except OSError:
            pass
        raise
