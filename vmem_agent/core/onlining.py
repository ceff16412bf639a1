"""Who onlines hot-added memory, and whether the kernel can do the daemon's job itself. Pure.

With no target, the daemon's job is "online every added block, zone by the policy" —
exactly what the kernel's own auto-online does when `auto_online_blocks` is `online`
and `online_policy` is `auto-movable` with the same ratio (or `online_movable` /
`online_kernel` for a forced zone). The kernel onlines inside the hot-add itself, which
no userspace onliner can beat, so the daemon configures it where that is equivalent and
restores the previous settings when it stops. The admin's own choice of kernel
auto-online (`memhp_default_state=` on the command line) is never overwritten.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..limits import DEFAULT_MOVABLE_RATIO
from .model import KernelParams

AUTO_ONLINE_OFFLINE = "offline"
KERNEL_AUTO_MOVABLE = "auto-movable"
CMDLINE_DEFAULT_STATE = "memhp_default_state"

# Kernel files the daemon may set, relative to the root, in the order they are written:
# the zone rule first, auto-online last, so that no block is onlined under half a setting.
ONLINE_POLICY = "sys/module/memory_hotplug/parameters/online_policy"
AUTO_MOVABLE_RATIO = "sys/module/memory_hotplug/parameters/auto_movable_ratio"
AUTO_ONLINE_BLOCKS = "sys/devices/system/memory/auto_online_blocks"


def movable_ratio_for(configured: int | None, params: KernelParams) -> int:
    """The ratio the zone rule uses: the configured one, else the kernel's auto_movable_ratio, else 301."""
    if configured is not None:
        return configured
    return params.auto_movable_ratio if params.auto_movable_ratio is not None else DEFAULT_MOVABLE_RATIO


def kernel_parameters(cmdline: str | None) -> list[tuple[str, str | None]]:
    """(name, value) of each kernel parameter in order; names as the kernel compares them (- is _).

    Quotes group a value with spaces (`param="a b"`); everything after `--` goes to init.
    """
    if not cmdline:
        return []
    words: list[str] = []
    current: list[str] = []
    quoted = False
    for char in cmdline.strip() + " ":
        if char == '"':
            quoted = not quoted
        elif char.isspace() and not quoted:
            if current:
                words.append("".join(current))
                current = []
        else:
            current.append(char)
    parameters = []
    for word in words:
        if word == "--":
            break
        name, equals, value = word.partition("=")
        parameters.append((name.replace("-", "_"), value if equals else None))
    return parameters


def kernel_parameter(cmdline: str | None, name: str) -> str | None:
    """The value the kernel uses: the last occurrence wins."""
    value = None
    for key, found in kernel_parameters(cmdline):
        if key == name:
            value = found if found is not None else ""
    return value


@dataclass(frozen=True, slots=True)
class KernelOnliningPlan:
    """The kernel settings that make kernel auto-online do the daemon's job, or why it cannot."""

    settings: tuple[tuple[str, str], ...]  # (file relative to the root, value), in write order
    reason: str


def kernel_onlining_plan(
    zone_mode: str, movable_ratio: int, params: KernelParams, auto_online_blocks: str | None, cmdline: str | None,
) -> KernelOnliningPlan:
    """What to write so that the kernel onlines like the policy; no settings when it cannot or must not."""
    admin_state = kernel_parameter(cmdline, CMDLINE_DEFAULT_STATE)
    if admin_state is not None:
        return KernelOnliningPlan((), f"{CMDLINE_DEFAULT_STATE}={admin_state} on the kernel command line is the admin's choice")
    if auto_online_blocks is None:
        return KernelOnliningPlan((), "the kernel has no auto_online_blocks")
    if zone_mode == "movable":
        return KernelOnliningPlan(((AUTO_ONLINE_BLOCKS, "online_movable"),), "zone movable: auto_online_blocks online_movable")
    if zone_mode == "normal":
        return KernelOnliningPlan(((AUTO_ONLINE_BLOCKS, "online_kernel"),), "zone normal: auto_online_blocks online_kernel")
    if params.online_policy is None or params.auto_movable_ratio is None:
        return KernelOnliningPlan((), "the kernel has no auto-movable online policy (Linux 5.16 and later)")
    settings = ((ONLINE_POLICY, KERNEL_AUTO_MOVABLE), (AUTO_MOVABLE_RATIO, str(movable_ratio)), (AUTO_ONLINE_BLOCKS, "online"))
    return KernelOnliningPlan(settings, f"auto_online_blocks online with online_policy auto-movable at ratio {movable_ratio}%")


def onliner_description(auto_online_blocks: str | None, cmdline: str | None, daemon_configured: bool) -> str | None:
    """Who the kernel says onlines added memory: a phrase, or None when the kernel leaves it to userspace."""
    if auto_online_blocks in (None, AUTO_ONLINE_OFFLINE):
        return None
    if daemon_configured:
        return f"the kernel (auto_online_blocks {auto_online_blocks}, set by the vmem-agent daemon)"
    admin_state = kernel_parameter(cmdline, CMDLINE_DEFAULT_STATE)
    if admin_state is not None:
        return f"the kernel (auto_online_blocks {auto_online_blocks}, {CMDLINE_DEFAULT_STATE}={admin_state} on the command line)"
    return f"the kernel (auto_online_blocks {auto_online_blocks})"
