"""(guest) Time from the first memory `add` uevent to the `online` of the last new block.

    python3 online_watch.py COUNT [TIMEOUT]

Listens to the kernel's uevents (raw netlink, NETLINK_KOBJECT_UEVENT group 1: the same
stream for every onliner under test, and no pyudev so that it costs the guest little),
writes "ready" to stdout once listening, then waits until COUNT blocks that were added
after it started are online. Prints one JSON line: seconds from the first `add` to the
last `online`, and the counts. Stdlib only, so that Debian's python3 runs it anywhere.
"""

import json
import socket
import sys
import time

NETLINK_KOBJECT_UEVENT = 15


def main() -> int:
    count = int(sys.argv[1])
    timeout = float(sys.argv[2]) if len(sys.argv) > 2 else 600.0
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_KOBJECT_UEVENT)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 << 20)
    sock.bind((0, 1))
    print("ready", flush=True)
    added: set[str] = set()
    onlined: set[str] = set()
    first_add = last_online = None
    end = time.monotonic() + timeout
    while len(onlined) < count and time.monotonic() < end:
        sock.settimeout(max(0.1, end - time.monotonic()))
        try:
            data = sock.recv(1 << 16)
        except socket.timeout:
            break
        now = time.monotonic()
        header, _, _rest = data.partition(b"\0")
        action, _, devpath = header.decode("ascii", "replace").partition("@")
        if not devpath.startswith("/devices/system/memory/memory"):
            continue
        if action == "add":
            added.add(devpath)
            first_add = now if first_add is None else first_add
        elif action == "online" and devpath in added:
            onlined.add(devpath)
            last_online = now
    seconds = None if first_add is None or last_online is None else last_online - first_add
    print(json.dumps({"seconds": seconds, "added": len(added), "onlined": len(onlined), "complete": len(onlined) >= count}))
    return 0 if len(onlined) >= count else 1


if __name__ == "__main__":
    raise SystemExit(main())
