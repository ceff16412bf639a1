"""The `vmem-agent` command: a thin click shell over the gateway and the engine.

Heavy modules are imported inside the commands so that `--help` starts fast.
Every `VmemError` becomes one line on stderr and its exit code; no tracebacks.
"""

from __future__ import annotations

import sys

import click

from ..errors import EXIT_BUSY, EXIT_FAILURE, EXIT_OK, EXIT_PARTIAL, EXIT_UNSUPPORTED, EXIT_USAGE, VmemError
from ..limits import OFFLINE_BLOCK_TIMEOUT_S, RESIZE_TIMEOUT_S

EXIT_CODES_HELP = f"""\b
Exit codes:
  {EXIT_OK}   done: the target or the requested state was reached
  {EXIT_FAILURE}   failed: nothing could be done (or an unexpected error)
  {EXIT_USAGE}   usage error: bad size, block list or option
  {EXIT_UNSUPPORTED}   no memory-block sysfs under the root (wrong --sysfs-root, or no hotplug)
  {EXIT_BUSY}   another vmem-agent writer holds the lock (see --wait)
  {EXIT_PARTIAL}  partial: some blocks changed, the target was not fully reached
  130 143  interrupted by SIGINT / SIGTERM (a running offline writer is stopped first)
"""


class Terminated(BaseException):
    """SIGTERM (systemd stop): unwinds like Ctrl-C so that writers and locks are cleaned up."""


def _raise_terminated(signum, frame):
    raise Terminated()


class AgentGroup(click.Group):
    """Turns our errors into one line and an exit code, for every subcommand."""

    def invoke(self, ctx: click.Context):
        import signal

        signal.signal(signal.SIGTERM, _raise_terminated)
        try:
            return super().invoke(ctx)
        except VmemError as exc:
            click.echo(f"vmem-agent: {exc}", err=True)
            ctx.exit(exc.exit_code)
        except KeyboardInterrupt:
            click.echo("vmem-agent: interrupted", err=True)
            ctx.exit(128 + signal.SIGINT)
        except Terminated:
            click.echo("vmem-agent: terminated", err=True)
            ctx.exit(128 + signal.SIGTERM)
        except (click.exceptions.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise
        except Exception as exc:  # a bug of ours: still one line, the traceback only with -vv
            import logging

            logging.getLogger(__name__).debug("internal error", exc_info=True)
            click.echo(f"vmem-agent: internal error: {type(exc).__name__}: {exc} (run with -vv for details)", err=True)
            ctx.exit(EXIT_FAILURE)


@click.group(cls=AgentGroup, epilog=EXIT_CODES_HELP, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--sysfs-root",
    envvar="VMEM_AGENT_SYSFS_ROOT",
    default="/",
    show_default=True,
    metavar="DIR",
    help="System root holding sys/devices/system/memory (like lsmem --sysroot); env VMEM_AGENT_SYSFS_ROOT.",
)
@click.option("-v", "--verbose", count=True, help="Log more (repeat for debug).")
@click.version_option(package_name="vmem-agent")
@click.pass_context
def main(ctx: click.Context, sysfs_root: str, verbose: int) -> None:
    """Online and offline hot-plugged memory blocks of a Linux guest."""
    import logging

    logging.basicConfig(
        level=logging.WARNING - 10 * min(verbose, 2),
        format="vmem-agent: %(levelname)s: %(message)s",
        stream=sys.stderr,
    )
    ctx.obj = {"sysfs_root": sysfs_root}


def _gateway(ctx: click.Context):
    from ..kernel.sysfs import Sysfs

    return Sysfs(ctx.obj["sysfs_root"])


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print a JSON document (top-level key \"memory\", see docs/json.md).")
@click.option("--blocks", "per_block", is_flag=True, help="One row per block instead of merged ranges.")
@click.option("--no-summary", is_flag=True, help="Table only, without the summary lines.")
@click.option("--legacy", is_flag=True, help="Also read removable and phys_device of every block (JSON only).")
@click.pass_context
def status(ctx: click.Context, as_json: bool, per_block: bool, no_summary: bool, legacy: bool) -> None:
    """Show memory blocks, zones, nodes and hotplug settings (reads only)."""
    from . import report

    state = _gateway(ctx).snapshot(legacy=legacy)
    for warning in state.warnings:
        click.echo(f"vmem-agent: warning: {warning}", err=True)
    if as_json:
        click.echo(report.render_status_json(state, legacy))
        return
    click.echo(report.render_table(state, per_block=per_block))
    if not no_summary:
        click.echo()
        click.echo(report.render_summary(state))


class SizeType(click.ParamType):
    """A size option (`512M`, `1G`), parsed by the one size parser."""

    name = "SIZE"

    def convert(self, value, param, ctx):
        if isinstance(value, int):
            return value
        from ..core.sizes import parse_size

        try:
            return parse_size(value, allow_relative=False).bytes
        except VmemError as exc:
            self.fail(str(exc), param, ctx)


def policy_options(command):
    """Options shared by the commands that plan: zone choice and the offline floor."""
    options = [
        click.option("--zone", type=click.Choice(["auto", "movable", "normal"]), default="auto", show_default=True,
                     envvar="VMEM_AGENT_ZONE",
                     help="auto: Movable while the ratio rule allows, else Normal; movable/normal: force the zone."),
        click.option("--movable-ratio", type=click.IntRange(min=0), default=None, metavar="PERCENT",
                     envvar="VMEM_AGENT_MOVABLE_RATIO",
                     help="Movable memory allowed, in percent of boot kernel memory (default: the kernel's "
                          "auto_movable_ratio, else 301)."),
        click.option("--reserve", type=SizeType(), default=None, envvar="VMEM_AGENT_RESERVE",
                     help="MemAvailable that must remain after offlining (default: max(256M, 5% of MemTotal))."),
        click.option("--min-online", type=SizeType(), default=0, envvar="VMEM_AGENT_MIN_ONLINE",
                     help="Never offline below this much online memory."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def write_options(command):
    """Options shared by the commands that write: deadlines, lock, kdump, output."""
    options = [
        click.option("--timeout", type=click.FloatRange(min=0.1), default=RESIZE_TIMEOUT_S, show_default=True, metavar="SECONDS",
                     help="Overall deadline for the run."),
        click.option("--block-timeout", type=click.FloatRange(min=0.1), default=OFFLINE_BLOCK_TIMEOUT_S, show_default=True,
                     metavar="SECONDS", envvar="VMEM_AGENT_BLOCK_TIMEOUT",
                     help="Interrupt an offline write that has not finished by then and try another block."),
        click.option("--wait", "lock_wait", type=click.FloatRange(min=0), default=0.0, metavar="SECONDS",
                     help="Wait this long for another vmem-agent writer to finish instead of failing at once."),
        click.option("--lock-file", default=None, envvar="VMEM_AGENT_LOCK_FILE", metavar="PATH",
                     help="Lock file (default: /run/vmem-agent/lock, or one per --sysfs-root)."),
        click.option("--kdump", "kdump_mode", type=click.Choice(["auto", "always", "never"]), default="auto",
                     show_default=True, envvar="VMEM_AGENT_KDUMP",
                     help="Reload kdump after a change: auto = only if a crash kernel is loaded and the kernel "
                          "does not update it itself (crash_hotplug)."),
        click.option("--kdump-command", default=None, envvar="VMEM_AGENT_KDUMP_COMMAND", metavar="COMMAND",
                     help="Reload command, split like a shell would but run without one (default: kdumpctl "
                          "reload, kdump-config reload or systemctl try-restart kdump.service)."),
        click.option("--json", "as_json", is_flag=True, help="Print the result as JSON."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def _policy_config(state_params, kw):
    """PolicyConfig from the policy options; unset ratio settings follow the kernel's."""
    from ..core.policy import DEFAULT_MOVABLE_RATIO, PolicyConfig

    movable_ratio = kw["movable_ratio"]
    if movable_ratio is None:
        kernel_ratio = state_params.auto_movable_ratio
        movable_ratio = DEFAULT_MOVABLE_RATIO if kernel_ratio is None else kernel_ratio
    numa_aware = state_params.auto_movable_numa_aware if state_params.auto_movable_numa_aware is not None else True
    return PolicyConfig(zone_mode=kw["zone"], movable_ratio=movable_ratio, numa_aware=numa_aware,
                        reserve_bytes=kw["reserve"], min_online_bytes=kw["min_online"],
                        shrink_unit="block" if kw.get("per_block") else "dimm")


def _run_options(sysfs, kw, dry_run=False):
    import shlex

    from ..engine.runner import RunOptions
    from ..engine.kdump import KdumpConfig

    command = tuple(shlex.split(kw["kdump_command"])) if kw.get("kdump_command") else None
    if kw.get("kdump_command") is not None and not command:
        raise click.BadParameter("empty command", param_hint="--kdump-command")
    return RunOptions(
        policy=_policy_config(sysfs.kernel_params(), kw),
        kdump=KdumpConfig(mode=kw["kdump_mode"], command=command),
        block_timeout=kw["block_timeout"],
        timeout=kw["timeout"],
        lock_path=kw["lock_file"],
        lock_wait=kw["lock_wait"],
        dry_run=dry_run,
    )


def _finish(ctx: click.Context, result, as_json: bool) -> None:
    from . import report

    wire = result.to_json()
    if as_json:
        click.echo(report.render_json(report.result_document(wire)))
    else:
        click.echo(report.render_run(wire))
    ctx.exit(result.exit_code)


per_block_option = click.option(
    "--per-block", is_flag=True, envvar="VMEM_AGENT_PER_BLOCK",
    help="Shrink block by block (any DIMM or virtio-mem block, Movable first, highest first) instead of in whole "
         "DIMMs; the host may then be able to unplug nothing.")


# ignore_unknown_options: `-512M` is a relative size, not an unknown option.
@main.command(context_settings={"ignore_unknown_options": True})
@click.argument("size")
@policy_options
@per_block_option
@write_options
@click.option("--dry-run", is_flag=True, help="Plan and print, write nothing.")
@click.pass_context
def resize(ctx: click.Context, size: str, dry_run: bool, **kw) -> None:
    """Bring online memory to SIZE (6G, 6GiB, 1.5G, 6442450944) or change it by +SIZE/-SIZE.

    Grows by onlining the lowest offline blocks (zone by the kernel's auto-movable rule),
    shrinks by offlining whole DIMMs (Movable ones first) so that the host can unplug
    them; virtio-mem memory is given back by lowering the device's requested-size on the
    host, not by offlining. Never boot memory or memory of unknown origin, never below
    the reserve. Sizes are binary (G = GiB) and round up to whole blocks.
    """
    from ..engine import runner as engine

    sysfs = _gateway(ctx)
    result = engine.resize(sysfs, size, _run_options(sysfs, kw, dry_run))
    _finish(ctx, result, kw["as_json"])


@main.command(context_settings={"ignore_unknown_options": True})
@click.argument("size")
@policy_options
@per_block_option
@click.option("--json", "as_json", is_flag=True, help="Print the plan as JSON.")
@click.pass_context
def plan(ctx: click.Context, size: str, as_json: bool, **kw) -> None:
    """Show which blocks `resize SIZE` would change, in order, into which zone, and why."""
    from . import report
    from ..engine import runner as engine

    sysfs = _gateway(ctx)
    config = _policy_config(sysfs.kernel_params(), kw)
    state, target, planned = engine.plan_resize(sysfs, size, engine.RunOptions(policy=config))
    if as_json:
        click.echo(report.render_json(report.plan_document(planned, target.note, state)))
        return
    if target.note:
        click.echo(f"note: {target.note}")
    click.echo(report.render_plan(planned, state.block_size, state))


@main.command()
@click.argument("blocks_or_size", metavar="BLOCKS|SIZE")
@policy_options
@write_options
@click.option("--dry-run", is_flag=True, help="Plan and print, write nothing.")
@click.pass_context
def online(ctx: click.Context, blocks_or_size: str, dry_run: bool, **kw) -> None:
    """Online blocks by index (12, 12-20, 3,5-7) or an amount of memory (1G: lowest offline first)."""
    from ..engine import runner as engine

    sysfs = _gateway(ctx)
    result = engine.change_blocks(sysfs, "online", blocks_or_size, _run_options(sysfs, kw, dry_run))
    _finish(ctx, result, kw["as_json"])


@main.command()
@click.argument("blocks_or_size", metavar="BLOCKS|SIZE")
@policy_options
@per_block_option
@write_options
@click.option("--dry-run", is_flag=True, help="Plan and print, write nothing.")
@click.option("--force", is_flag=True,
              help="Allow named boot blocks and blocks of unknown origin, and ignore the reserve and --min-online "
                   "(the kernel still refuses what it must).")
@click.pass_context
def offline(ctx: click.Context, blocks_or_size: str, dry_run: bool, force: bool, **kw) -> None:
    """Offline blocks by index (12, 12-20) or an amount of memory (512M: whole DIMMs, Movable first)."""
    from ..engine import runner as engine

    sysfs = _gateway(ctx)
    result = engine.change_blocks(sysfs, "offline", blocks_or_size, _run_options(sysfs, kw, dry_run), force=force)
    _finish(ctx, result, kw["as_json"])
