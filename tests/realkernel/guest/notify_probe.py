"""(guest) A minimal Type=notify service that onlines hot-added memory blocks.

    ExecStart=/usr/bin/python3 notify_probe.py

Stands in for a real daemon in tests of the harness under systemd: sends
READY=1, WATCHDOG=1 every tick (WatchdogSec= must be set), RELOADING=1 and
READY=1 around a SIGHUP reload, STOPPING=1 on SIGTERM, and writes
``online_movable`` to every block that appears after its start.  It logs one
line per event to stdout (the journal).  Stdlib only; runs with Debian's python3.
"""
import glob
import os
import signal
import socket
import time

MEMORY = "/sys/devices/system/memory"
TICK = 0.2  # seconds: how fast new blocks are seen


def notify(message: str) -> None:
    address = os.environ["NOTIFY_SOCKET"]
    if address.startswith("@"):  # abstract namespace
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.connect(address)
        sock.sendall(message.encode())


def blocks() -> set[int]:
    return {int(path.rsplit("memory", 1)[1]) for path in glob.glob(f"{MEMORY}/memory[0-9]*")}


def main() -> None:
    pending = {"reload": False, "stop": False}
    signal.signal(signal.SIGHUP, lambda *_: pending.update(reload=True))
    signal.signal(signal.SIGTERM, lambda *_: pending.update(stop=True))
    tick = min(TICK, int(os.environ["WATCHDOG_USEC"]) / 2e6)
    known = blocks()
    reloads = 0
    notify("READY=1\nSTATUS=watching memory blocks")
    print(f"ready: {len(known)} blocks at start", flush=True)
    while not pending["stop"]:
        if pending["reload"]:
            pending["reload"] = False
            notify("RELOADING=1")
            reloads += 1
            print(f"reloaded {reloads}", flush=True)
            notify("READY=1")
        for block in sorted(blocks() - known):
            with open(f"{MEMORY}/memory{block}/state", "w") as state:
                state.write("online_movable")
            known.add(block)
            print(f"onlined memory{block} movable", flush=True)
        notify("WATCHDOG=1")
        time.sleep(tick)
    notify("STOPPING=1")
    print("stopping", flush=True)


if __name__ == "__main__":
    main()
