"""Default deadlines of a writing run, in one dependency-free module.

The CLI shows them as option defaults without importing the executor (and tenacity)
at start-up; the executor and engine use the same values.
"""

# Offline writes that do not return by then are interrupted (the kernel returns EINTR).
OFFLINE_BLOCK_TIMEOUT_S = 30.0
# The whole resize/online/offline run.
RESIZE_TIMEOUT_S = 600.0
