"""Helper scripts that run INSIDE the QEMU guest (via the 9p host root).

Run them with the project python in the guest, e.g.
    vm.run([vm.python, f"{GUEST_HELPERS}/blocks.py", "--json"])
Stdlib only; they must never be run on the host (they write guest sysfs).
"""
