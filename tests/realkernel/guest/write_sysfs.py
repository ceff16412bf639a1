"""(guest) Write values to sysfs files and report the outcome per write.

    python write_sysfs.py [--json] PATH=VALUE [PATH=VALUE ...]

Each write is one os.write() on a fresh fd.  Reports ok or the errno name,
and the block's state / valid_zones after the write.  Exit status 0.
"""
import errno
import json
import os
import sys


def read(path):
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def write(path, value):
    before = read(path)
    try:
        fd = os.open(path, os.O_WRONLY)
        try:
            os.write(fd, value.encode())
            res = "ok"
        finally:
            os.close(fd)
    except OSError as e:
        res = errno.errorcode.get(e.errno, str(e.errno))
    d = os.path.dirname(path)
    return {"path": path, "block": os.path.basename(d), "value": value,
            "before": before, "result": res, "state": read(d + "/state"),
            "valid_zones": read(d + "/valid_zones")}


def main(argv):
    as_json = "--json" in argv
    out = []
    for arg in argv:
        if arg == "--json":
            continue
        path, value = arg.split("=", 1)
        r = write(path, value)
        out.append(r)
        if not as_json:
            print(f"{r['block']}: {r['before']} --write {value!r}--> {r['result']}; "
                  f"state now {r['state']}; valid_zones {r['valid_zones']}", flush=True)
    if as_json:
        print(json.dumps(out))


if __name__ == "__main__":
    main(sys.argv[1:])
