"""Defaults and the vocabulary of settings, in one dependency-free module.

The CLI shows them as option defaults and the daemon checks its config file against
them without importing the policy, the executor or tenacity (start-up time, and the
daemon's resident memory); the engine and the policy use the same values.
"""

# Offline writes that do not return by then are interrupted (the kernel returns EINTR).
OFFLINE_BLOCK_TIMEOUT_S = 30.0
# The whole resize/online/offline run.
RESIZE_TIMEOUT_S = 600.0

ZONE_MODES = ("auto", "movable", "normal")
# What a shrink takes back whole: a DIMM (what the host can eject), or single blocks.
SHRINK_BY_DIMM = "dimm"
SHRINK_BY_BLOCK = "block"
SHRINK_UNITS = (SHRINK_BY_DIMM, SHRINK_BY_BLOCK)
DEFAULT_MOVABLE_RATIO = 301  # the kernel's auto_movable_ratio default
# When to reload kdump after a change: "auto" only if a crash kernel is loaded, "always", or "never".
KDUMP_MODES = ("auto", "always", "never")
# The longest deadline or wait any setting takes: bigger ones are typos, and overflow timers.
MAX_SECONDS = 7 * 24 * 3600.0
# auto_movable_ratio is a percentage; the kernel takes any uint, the agent up to this.
MAX_MOVABLE_RATIO = 100_000
