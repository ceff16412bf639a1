"""A fake Linux kernel for memory hotplug, seen through a sysroot (sys/ and proc/).

FakeKernel serves it over FUSE, with the kernel's errnos, blocking and signals;
build_static_tree writes it as plain files. See README.md.
"""

from .kernel import FakeKernel
from .model import FakeKernelError
from .spec import GiB, KiB, MiB, BlockSpec, TreeSpec
from .static import build_static_tree

__all__ = ['BlockSpec', 'FakeKernel', 'FakeKernelError', 'GiB', 'KiB', 'MiB', 'TreeSpec',
           'build_static_tree']
