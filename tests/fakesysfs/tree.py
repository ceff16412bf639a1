"""The file layout of the fake sysroot, shared by the FUSE server and the static tree builder,
so that both present exactly the same files."""

from __future__ import annotations

import errno
import re
from collections.abc import Callable, Iterable
from typing import NamedTuple, Union

from vmem_agent.kernel.e820 import SETUP_E820_EXT

from .model import Caller, KernelModel, os_error

_BLOCK_NAME = re.compile(r'memory(0|[1-9][0-9]*)')
_ACPI_DIMM_NAME = re.compile(r'PNP0C80:([0-9a-f]{2,})')
# QEMU's ACPI memory hotplug: DIMM slot devices MPxx (PNP0C80) in the container \_SB.MHPC,
# which a Linux 6.1 QEMU pc guest numbers PNP0A06:04.
ACPI_DIMM_CONTAINER = 'LNXSYSTM:00/LNXSYBUS:00/PNP0A06:04'


class File(NamedTuple):
    mode: int
    read: Callable[[], str | bytes]  # bytes for binary attributes (boot_params)
    write: Callable[[str, Caller], None] | None = None


class Symlink(NamedTuple):
    target: str


class Dir:
    """A directory: fixed entries plus entries that come and go with the model."""

    def __init__(self, fixed: dict[str, Node], names: Callable[[], Iterable[str]] | None = None,
                 lookup: Callable[[str], Node | None] | None = None) -> None:
        self.fixed = fixed
        self._names = names
        self._lookup = lookup

    def entries(self) -> dict[str, Node]:
        entries = dict(self.fixed)
        if self._names is not None:
            for name in self._names():
                node = self._lookup(name)
                if node is not None:
                    entries[name] = node
        return entries

    def child(self, name: str) -> Node | None:
        node = self.fixed.get(name)
        if node is None and self._lookup is not None:
            node = self._lookup(name)
        return node


Node = Union[File, Symlink, Dir]


def resolve(root: Dir, path: str) -> Node:
    """The node at a sysroot-relative path such as /sys/devices/system/memory."""
    node: Node = root
    for name in filter(None, path.split('/')):
        if not isinstance(node, Dir):
            raise os_error(errno.ENOTDIR)
        node = node.child(name)
        if node is None:
            raise os_error(errno.ENOENT)
    return node


def sysroot(model: KernelModel) -> Dir:
    """Everything the agent reads under --sysfs-root, laid out as Linux 6.x does."""
    spec = model.spec
    memory = {
        'block_size_bytes': _read_only(f'{spec.block_size:x}\n'),
        'auto_online_blocks': File(0o644, lambda: f'{model.auto_online_blocks}\n',
                                   lambda text, caller: model.write_auto_online_blocks(text)),
        'uevent': File(0o644, _constant(''), lambda text, caller: model.synthesize_uevent(None, text)),
    }
    if spec.crash_hotplug is not None:
        memory['crash_hotplug'] = File(0o444, lambda: f'{model.crash_hotplug}\n')
    parameters = {
        'online_policy': File(0o644, lambda: f'{model.online_policy}\n',
                              lambda text, caller: model.write_online_policy(text)),
        'auto_movable_ratio': File(0o644, lambda: f'{model.auto_movable_ratio}\n',
                                   lambda text, caller: model.write_auto_movable_ratio(text)),
        'auto_movable_numa_aware': File(0o644, lambda: _yes_no(model.auto_movable_numa_aware),
                                        lambda text, caller: model.write_auto_movable_numa_aware(text)),
        'memmap_on_memory': _read_only(_yes_no(spec.memmap_on_memory)),
    }

    def acpi_dimm_names() -> Iterable[str]:
        return (_acpi_dimm_name(slot) for slot in model.dimm_slots())

    def acpi_bus_link(name: str) -> Symlink | None:
        if _dimm_slot(model, name) is None:
            return None
        return Symlink(f'../../../devices/{ACPI_DIMM_CONTAINER}/{name}')

    return Dir({
        'sys': Dir({
            'devices': Dir({
                'system': Dir({
                    'memory': Dir(memory, lambda: (f'memory{index}' for index in model.present_indexes()),
                                  lambda name: _block_dir(model, name)),
                    'node': Dir({f'node{node}': _node_dir(model, node) for node in range(spec.nodes)}),
                }),
                **_nest(ACPI_DIMM_CONTAINER, Dir({}, acpi_dimm_names, lambda name: _acpi_dimm_dir(model, name))),
            }),
            'bus': Dir({'acpi': Dir({'devices': Dir({}, acpi_dimm_names, acpi_bus_link)})}),
            'module': Dir({'memory_hotplug': Dir({'parameters': Dir(parameters)})}),
            'kernel': Dir({'kexec_crash_loaded': File(0o444, lambda: f'{int(model.kexec_crash_loaded)}\n'),
                           **_boot_params(model)}),
        }),
        'proc': Dir({
            'meminfo': File(0o444, model.meminfo_text),
            'iomem': File(0o444, model.iomem_text),
        }),
    })


def _boot_params(model: KernelModel) -> dict[str, Dir]:
    """boot_params/data (struct boot_params with the boot E820 table) and, for the entries
    beyond the table, setup_data/0 of type SETUP_E820_EXT; nothing for a machine without."""
    if not model.spec.boot_e820:
        return {}
    data, extension = model.boot_params_e820()
    entries: dict[str, Node] = {'data': File(0o444, _constant(data))}
    if extension:
        entries['setup_data'] = Dir({'0': Dir({'type': _read_only(f'0x{SETUP_E820_EXT:x}\n'),
                                               'data': File(0o444, _constant(extension))})})
    return {'boot_params': Dir(entries)}


def _block_dir(model: KernelModel, name: str) -> Dir | None:
    """memoryN/ with the attributes of drivers/base/memory.c and its links."""
    match = _BLOCK_NAME.fullmatch(name)
    placement = match and model.block_placement(int(match[1]))
    if not placement:
        return None
    index = int(match[1])
    node, group = placement
    entries: dict[str, Node] = {
        'state': File(0o644, lambda: model.state_text(index),
                      lambda text, caller: model.write_state(index, text, caller)),
        'online': File(0o644, lambda: model.online_text(index),
                       lambda text, caller: model.write_online(index, text, caller)),
        'valid_zones': File(0o444, lambda: model.valid_zones_text(index)),
        'phys_index': _read_only(f'{index:08x}\n'),
        'phys_device': _PHYS_DEVICE,
        'removable': _REMOVABLE,
        'uevent': File(0o644, _constant(''), lambda text, caller: model.synthesize_uevent(index, text)),
        f'node{node}': Symlink(f'../../node/node{node}'),
    }
    if group is not None and group[0] == 'dimm':
        entries['firmware_node'] = Symlink(f'../../../{ACPI_DIMM_CONTAINER}/{_acpi_dimm_name(group[1])}')
    return Dir(entries)


def _node_dir(model: KernelModel, node: int) -> Dir:
    """nodeX/ with a memoryN link for each block on the node."""
    def lookup(name: str) -> Symlink | None:
        match = _BLOCK_NAME.fullmatch(name)
        placement = match and model.block_placement(int(match[1]))
        if placement and placement[0] == node:
            return Symlink(f'../../memory/{name}')
        return None
    return Dir({}, lambda: (f'memory{index}' for index in model.node_block_indexes(node)), lookup)


def _acpi_dimm_dir(model: KernelModel, name: str) -> Dir | None:
    """A DIMM slot's ACPI device, what memoryN/firmware_node points at. With a DIMM in it,
    its status is 15 and it links back to the blocks: physical_node, physical_node1, ..."""
    slot = _dimm_slot(model, name)
    if slot is None:
        return None
    blocks = model.group_block_indexes(('dimm', slot))
    entries: dict[str, Node] = {
        'hid': _read_only('PNP0C80\n'),
        'modalias': _read_only('acpi:PNP0C80:\n' if blocks else ''),
        'path': _read_only(f'\\_SB_.MHPC.MP{slot:02X}\n'),
        'status': _read_only('15\n' if blocks else '0\n'),
        'uid': _read_only(f'0x{slot:02X}\n'),
    }
    for position, index in enumerate(blocks):
        entries[f'physical_node{position or ""}'] = Symlink(f'../../../../system/memory/memory{index}')
    return Dir(entries)


def _acpi_dimm_name(slot: int) -> str:
    return f'PNP0C80:{slot:02x}'


def _dimm_slot(model: KernelModel, name: str) -> int | None:
    """The DIMM slot an ACPI device name stands for, if the machine has it."""
    match = _ACPI_DIMM_NAME.fullmatch(name)
    slot = int(match[1], 16) if match else None
    if slot is None or name != _acpi_dimm_name(slot) or slot not in model.dimm_slots():
        return None
    return slot


def _nest(path: str, leaf: Dir) -> dict[str, Dir]:
    """{'a': Dir({'b': leaf})} for the path a/b."""
    first, _, rest = path.partition('/')
    return {first: Dir(_nest(rest, leaf)) if rest else leaf}


def _constant(text: str | bytes) -> Callable[[], str | bytes]:
    return lambda: text


def _read_only(text: str) -> File:
    return File(0o444, _constant(text))


def _yes_no(value: bool) -> str:
    return 'Y\n' if value else 'N\n'


_PHYS_DEVICE = _read_only('0\n')  # only s390x fills it in
_REMOVABLE = _read_only('1\n')  # always 1 on kernels that can offline memory
