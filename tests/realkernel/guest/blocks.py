"""(guest) Per memory block: state, zones, and every "where does it come from" signal.

    python blocks.py          # table
    python blocks.py --json   # {"block_size": N, "blocks": {"N": {...}}, "e820": [...], ...}

Signals per block: firmware_node target (ACPI PNP0C80 device = DIMM), the
top-level /proc/iomem resource containing the block start and its RAM child
(``System RAM`` / ``System RAM (virtio_mem)``), the virtio driver when that
top-level resource is a virtio device, whether the block is RAM in the E820
table the kernel booted with (/sys/kernel/boot_params/data, x86 only) and in
/sys/firmware/memmap.  Needs root (iomem addresses, boot_params).
"""
import json
import os
import re
import struct
import sys

M = "/sys/devices/system/memory"


def read(p):
    try:
        with open(p) as f:
            return f.read().strip()
    except OSError:
        return None


def iomem():
    top, cur = [], None
    with open("/proc/iomem") as f:
        for line in f:
            depth = (len(line) - len(line.lstrip(" "))) // 2
            rng, name = line.strip().split(" : ", 1)
            a, b = (int(x, 16) for x in rng.split("-"))
            if depth == 0:
                cur = {"start": a, "end": b, "name": name, "children": []}
                top.append(cur)
            elif depth == 1 and cur is not None:
                cur["children"].append({"start": a, "end": b, "name": name})
    return top


def e820_ram():
    try:
        with open("/sys/kernel/boot_params/data", "rb") as f:
            d = f.read()
    except OSError:
        return None
    n = d[0x1e8]
    out = []
    for i in range(n):
        addr, size, typ = struct.unpack_from("<QQI", d, 0x2d0 + 20 * i)
        if typ == 1:
            out.append((addr, addr + size - 1))
    return out


def firmware_memmap():
    base = "/sys/firmware/memmap"
    out = []
    if os.path.isdir(base):
        for e in sorted(os.listdir(base), key=int):
            out.append({"index": int(e), "start": int(read(f"{base}/{e}/start"), 16),
                        "end": int(read(f"{base}/{e}/end"), 16),
                        "type": read(f"{base}/{e}/type")})
    return out


def collect():
    bs = int(read(f"{M}/block_size_bytes"), 16)
    top = iomem()
    e820 = e820_ram()
    fmap = firmware_memmap()
    blocks = {}
    nums = sorted(int(d[6:]) for d in os.listdir(M) if re.fullmatch(r"memory\d+", d))
    for n in nums:
        d = f"{M}/memory{n}"
        start, end = n * bs, (n + 1) * bs - 1
        fw = None
        if os.path.lexists(f"{d}/firmware_node"):
            real = os.path.realpath(f"{d}/firmware_node")
            fw = {"name": os.path.basename(real), "hid": read(f"{real}/hid"),
                  "uid": read(f"{real}/uid"), "path": real}
        parent = next((r for r in top if r["start"] <= start <= r["end"]), None)
        child = None
        if parent:
            child = next((c["name"] for c in parent["children"]
                          if c["start"] <= start <= c["end"]), None)
        virtio_driver = None
        if parent and re.fullmatch(r"virtio\d+", parent["name"]):
            drv = f"/sys/bus/virtio/devices/{parent['name']}/driver"
            if os.path.lexists(drv):
                virtio_driver = os.path.basename(os.readlink(drv))
        nodes = [x for x in os.listdir(d) if re.fullmatch(r"node\d+", x)]
        blocks[n] = {
            "state": read(f"{d}/state"), "valid_zones": read(f"{d}/valid_zones"),
            "phys_device": read(f"{d}/phys_device"), "removable": read(f"{d}/removable"),
            "node": nodes[0] if nodes else None,
            "firmware_node": fw,
            "iomem_top": parent["name"] if parent else None,
            "iomem_child": child, "virtio_driver": virtio_driver,
            "in_boot_e820": None if e820 is None else any(a <= start and end <= b for a, b in e820),
            "in_boot_e820_any": None if e820 is None else any(a <= end and start <= b for a, b in e820),
            "in_firmware_memmap": any(m["type"] == "System RAM" and m["start"] <= start <= m["end"]
                                      for m in fmap),
        }
    return {"block_size": bs, "blocks": blocks, "e820_ram": e820, "firmware_memmap": fmap,
            "iomem_top": [{k: r[k] for k in ("start", "end", "name")} for r in top]}


def main(argv):
    info = collect()
    if "--json" in argv:
        print(json.dumps(info))
        return
    print(f"{'block':9} {'state':8} {'valid_zones':15} {'firmware_node':14} "
          f"{'iomem top / child':42} e820 memmap")
    for n, b in info["blocks"].items():
        fw = b["firmware_node"]["name"] if b["firmware_node"] else "-"
        io = f"{b['iomem_top']} / {b['iomem_child'] or '-'}"
        e = {True: "yes", False: "no", None: "?"}[b["in_boot_e820_any"]]
        print(f"memory{n:<3} {b['state']:8} {(b['valid_zones'] or '').replace(' ', ','):15} "
              f"{fw:14} {io:42} {e:4} {'yes' if b['in_firmware_memmap'] else 'no'}")


if __name__ == "__main__":
    main(sys.argv[1:])
