"""The `vmem-agent` command: a thin click shell over the gateway and the engine.

Heavy modules are imported inside the commands so that `--help` starts fast.
Every `VmemError` becomes one line on stderr and its exit code; no tracebacks.
"""

from __future__ import annotations

import sys

import click

from .errors import EXIT_FAILURE, EXIT_OK, EXIT_PARTIAL, EXIT_UNSUPPORTED, EXIT_USAGE, EXIT_BUSY, VmemError

EXIT_CODES_HELP = f"""\b
Exit codes:
  {EXIT_OK}   done: the target or the requested state was reached
  {EXIT_FAILURE}   failed: nothing could be done (or an unexpected error)
  {EXIT_USAGE}   usage error: bad size, block list or option
  {EXIT_UNSUPPORTED}   no memory-block sysfs under the root (wrong --sysfs-root, or no hotplug)
  {EXIT_BUSY}   another vmem-agent writer holds the lock (see --wait)
  {EXIT_PARTIAL}  partial: some blocks changed, the target was not fully reached
"""


class AgentGroup(click.Group):
    """Turns our errors into one line and an exit code, for every subcommand."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except VmemError as exc:
            click.echo(f"vmem-agent: {exc}", err=True)
            ctx.exit(exc.exit_code)
        except KeyboardInterrupt:
            click.echo("vmem-agent: interrupted", err=True)
            ctx.exit(130)


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
    from .sysfs import Sysfs

    return Sysfs(ctx.obj["sysfs_root"])


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print a JSON document (top-level key \"memory\", see docs/json.md).")
@click.option("--blocks", "per_block", is_flag=True, help="One row per block instead of merged ranges.")
@click.option("--no-summary", is_flag=True, help="Table only, without the summary lines.")
@click.pass_context
def status(ctx: click.Context, as_json: bool, per_block: bool, no_summary: bool) -> None:
    """Show memory blocks, zones, nodes and hotplug settings (reads only)."""
    from . import report

    state = _gateway(ctx).snapshot()
    for warning in state.warnings:
        click.echo(f"vmem-agent: warning: {warning}", err=True)
    if as_json:
        click.echo(report.render_json(report.status_document(state)))
        return
    click.echo(report.render_table(state, per_block=per_block))
    if not no_summary:
        click.echo()
        click.echo(report.render_summary(state))
