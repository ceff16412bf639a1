"""Settings as the user gives them (CLI options, config keys) -> the engine's option objects.

One place for the rule that unset zone-ratio settings follow the kernel's own
(auto_movable_ratio, auto_movable_numa_aware), so that the CLI and the daemon agree.
The daemon calls these in its writer children only: its own process stays small.
"""

from __future__ import annotations

from ..core.model import KernelParams
from ..core.onlining import movable_ratio_for
from ..core.policy import PolicyConfig
from ..limits import SHRINK_BY_DIMM


def policy_config(zone: str, movable_ratio: int | None, reserve_bytes: int | None, min_online_bytes: int,
                  params: KernelParams, shrink_unit: str = SHRINK_BY_DIMM) -> PolicyConfig:
    numa_aware = params.auto_movable_numa_aware if params.auto_movable_numa_aware is not None else True
    return PolicyConfig(zone_mode=zone, movable_ratio=movable_ratio_for(movable_ratio, params), numa_aware=numa_aware,
                        reserve_bytes=reserve_bytes, min_online_bytes=min_online_bytes, shrink_unit=shrink_unit)


def daemon_run_options(config, params: KernelParams, dry_run: bool = False):
    """RunOptions for a run the daemon makes, from its DaemonConfig."""
    from .kdump import KdumpConfig
    from .runner import RunOptions

    return RunOptions(
        policy=policy_config(config.zone, config.movable_ratio, config.reserve_bytes, config.min_online_bytes, params,
                             config.shrink_unit),
        kdump=KdumpConfig(mode=config.kdump, command=config.kdump_command),
        block_timeout=config.block_timeout, timeout=config.timeout, dry_run=dry_run,
    )
