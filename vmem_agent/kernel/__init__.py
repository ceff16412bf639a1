"""The kernel layer: the only code that reads or writes files under the system root.

`sysfs.Sysfs` is the gateway (every OSError becomes a typed `SysfsError` there);
`snapshot` builds frozen `MemoryState`s through it; `offline_child` runs the one write
that can block forever in a child process; the format modules parse kernel files (pure).
"""
