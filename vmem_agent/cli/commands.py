"""The `vmem-agent` command: a thin click shell over the gateway and the engine.

Heavy modules are imported inside the commands so that `--help` starts fast.
Every error, ours (`VmemError`) and click's own usage errors alike, becomes one line
`vmem-agent: ...` on stderr and its exit code; no tracebacks. Output errors are handled
in cli.streams.
"""

from __future__ import annotations

import sys

import click

from ..errors import (
    EXIT_BUSY, EXIT_CONFIG, EXIT_DOCTOR_ERRORS, EXIT_DOCTOR_WARNINGS, EXIT_FAILURE, EXIT_OK, EXIT_PARTIAL,
    EXIT_UNSUPPORTED, EXIT_USAGE, Terminated, UsageError, VmemError, raise_terminated,
)
from ..limits import (
    KDUMP_MODES, OFFLINE_BLOCK_TIMEOUT_S, RESIZE_TIMEOUT_S, SHRINK_BY_BLOCK, SHRINK_BY_DIMM, ZONE_MODES,
)
from .params import (
    BLOCKS_OR_SIZE, TARGET_SIZE, CommandType, LockFileType, PercentType, RootType, SecondsType, SizeArgumentCommand,
    SizeType,
)
from .streams import EXIT_BROKEN_PIPE, OutputError, error_line, install, output_error_exit_code

ROOT_VARIABLE = "VMEM_AGENT_SYSFS_ROOT"
STATUS_QUERY_TIMEOUT_S = 5.0  # the daemon answers status from its loop at once
DAEMON_RUN_TIMEOUT_S = 3600.0  # a resize through the daemon: its own deadlines end the run long before
# Options of a direct run that the daemon does not take: it plans and writes with its configuration.
DAEMON_CONFIGURED_OPTIONS = ("zone", "movable_ratio", "reserve", "min_online", "timeout", "block_timeout",
                             "lock_wait", "lock_file", "kdump_mode", "kdump_command", "per_block")

EXIT_CODES_HELP = f"""\b
Exit codes:
  {EXIT_OK}   done: the target or the requested state was reached
  {EXIT_FAILURE}   failed: nothing could be done, or a file under the root reads wrong
  {EXIT_USAGE}   usage error: bad size, block list, option or VMEM_AGENT_* variable
  {EXIT_UNSUPPORTED}   no memory-block sysfs under the root (wrong --sysfs-root, or no hotplug)
  {EXIT_BUSY}   another vmem-agent writer holds the lock (see --wait)
  {EXIT_DOCTOR_WARNINGS} {EXIT_DOCTOR_ERRORS}  doctor: warnings / errors found
  {EXIT_PARTIAL}  partial: some blocks changed, the target was not fully reached (or an error
       stopped the run after its writes)
  {EXIT_CONFIG}  daemon: invalid configuration file
  130 143  interrupted by SIGINT / SIGTERM (a running offline writer is stopped first)
  {EXIT_BROKEN_PIPE}  stdout was closed (| head); after writes to the kernel, the run's code
"""


class AgentGroup(click.Group):
    """Turns every error into one line and an exit code, for every subcommand and click's own parsing."""

    def main(self, args=None, prog_name=None, **extra):
        install()
        try:
            try:
                code = super().main(args, prog_name or "vmem-agent", standalone_mode=False, **extra)
            except click.ClickException as exc:
                error_line(_click_message(exc))
                code = exc.exit_code
            except click.Abort:
                error_line("aborted")
                code = EXIT_FAILURE
            sys.stdout.flush()
        except OutputError as exc:
            code = output_error_exit_code(exc)
        sys.exit(code if isinstance(code, int) else EXIT_OK)

    def invoke(self, ctx: click.Context):
        import signal

        signal.signal(signal.SIGTERM, raise_terminated)
        try:
            return super().invoke(ctx)
        except VmemError as exc:
            error_line(str(exc))
            ctx.exit(exc.exit_code)
        except KeyboardInterrupt:
            error_line("interrupted")
            ctx.exit(128 + signal.SIGINT)
        except Terminated:
            error_line("terminated")
            ctx.exit(128 + signal.SIGTERM)
        except (click.exceptions.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise
        except Exception as exc:  # a bug of ours: still one line, the traceback only with -vv
            import logging

            logging.getLogger(__name__).debug("internal error", exc_info=True)
            error_line(f"internal error: {type(exc).__name__}: {exc} (run with -vv for details)")
            ctx.exit(EXIT_FAILURE)


def _click_message(exc: click.ClickException) -> str:
    """click's message in our style: `resize: no such option '--sizee'; did you mean '--size'?; see ...`."""
    message = exc.format_message().replace(". (Did you mean", " (did you mean").replace(". Did you mean", "; did you mean")
    message = message.replace(" Did you mean", "; did you mean").rstrip(".")
    if message[1:2].islower() or message[1:2] == " ":
        message = message[:1].lower() + message[1:]
    ctx = getattr(exc, "ctx", None)
    if not isinstance(exc, click.UsageError) or ctx is None:
        return message
    command = ctx.command_path.partition(" ")[2]
    return f"{command + ': ' if command else ''}{message}; see '{ctx.command_path} --help'"


@click.group(cls=AgentGroup, epilog=EXIT_CODES_HELP, no_args_is_help=False,
             context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--sysfs-root",
    type=RootType(),
    envvar=ROOT_VARIABLE,
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
    import os

    from ..logformat import LineFormatter

    if os.environ.get(ROOT_VARIABLE) == "" and ctx.get_parameter_source("sysfs_root") is click.core.ParameterSource.DEFAULT:
        # click takes an empty variable for an unset one, which would mean the real root
        raise click.BadParameter(f"{ROOT_VARIABLE} is set but empty; unset it to mean /", param_hint="--sysfs-root")

    logging.raiseExceptions = False  # a log line that cannot be written is dropped, never a traceback
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(LineFormatter())
    logging.basicConfig(level=logging.WARNING - 10 * min(verbose, 2), handlers=[handler])
    ctx.obj = {"sysfs_root": sysfs_root, "verbose": verbose}


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
    """Show memory blocks, zones, nodes, hotplug settings, who onlines, and the daemon (reads only)."""
    from . import report

    sysfs = _gateway(ctx)
    state = sysfs.snapshot(legacy=legacy)
    for warning in state.warnings:
        error_line(f"warning: {warning}")
    onlining = _onlining_facts(sysfs, state)
    if as_json:
        click.echo(report.render_status_json(state, legacy, onlining))
        return
    click.echo(report.render_table(state, per_block=per_block))
    if not no_summary:
        click.echo()
        click.echo(report.render_summary(state, onlining))


def _onlining_facts(sysfs, state) -> dict:
    """Who onlines hot-added memory, and the daemon's own account when one runs (report.py words it)."""
    from ..core.onlining import onliner_description
    from ..daemon.client import daemon_facts

    daemon, accessible, stored_target, warnings = daemon_facts(sysfs.root, STATUS_QUERY_TIMEOUT_S)
    for warning in warnings:
        error_line(f"warning: {warning}")
    facts = {"daemon": daemon, "daemon_access": accessible, "stored_target_bytes": stored_target}
    kernel = onliner_description(state.auto_online_blocks, sysfs.kernel_cmdline(),
                                 bool(daemon and daemon.get("onlining") == "kernel"))
    if kernel:
        facts["onlined_by"] = kernel
    elif daemon:
        facts["onlined_by"] = f"the vmem-agent daemon (pid {daemon['pid']})"
    else:
        facts["onlined_by"] = None
    return facts


def policy_options(command):
    """Options shared by the commands that plan: zone choice and the offline floor."""
    options = [
        click.option("--zone", type=click.Choice(ZONE_MODES), default="auto", show_default=True,
                     envvar="VMEM_AGENT_ZONE",
                     help="auto: Movable while the ratio rule allows, else Normal; movable/normal: force the zone."),
        click.option("--movable-ratio", type=PercentType(), default=None, metavar="PERCENT",
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
        click.option("--timeout", type=SecondsType(0.1), default=RESIZE_TIMEOUT_S, show_default=True,
                     help="Overall deadline for the run: the lock wait, the writes and the kdump reload."),
        click.option("--block-timeout", type=SecondsType(0.1), default=OFFLINE_BLOCK_TIMEOUT_S, show_default=True,
                     envvar="VMEM_AGENT_BLOCK_TIMEOUT",
                     help="Interrupt an offline write that has not finished by then and try another block."),
        click.option("--wait", "lock_wait", type=SecondsType(0.0), default=0.0,
                     help="Wait this long (within --timeout) for another vmem-agent writer to finish instead of "
                          "failing at once."),
        click.option("--lock-file", type=LockFileType(), default=None, envvar="VMEM_AGENT_LOCK_FILE",
                     help="Lock file (default: /run/vmem-agent/lock, or one per --sysfs-root)."),
        click.option("--kdump", "kdump_mode", type=click.Choice(KDUMP_MODES), default="auto",
                     show_default=True, envvar="VMEM_AGENT_KDUMP",
                     help="Reload kdump after a change: auto = only if a crash kernel is loaded and the kernel "
                          "does not update it itself (crash_hotplug)."),
        click.option("--kdump-command", type=CommandType(), default=None, envvar="VMEM_AGENT_KDUMP_COMMAND",
                     help="Reload command, split like a shell would but run without one (default: kdumpctl "
                          "reload, kdump-config reload or systemctl try-restart kdump.service)."),
        click.option("--json", "as_json", is_flag=True, help="Print the result as JSON."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def _policy_config(state_params, kw):
    """PolicyConfig from the policy options; unset ratio settings follow the kernel's."""
    from ..engine.settings import policy_config

    return policy_config(kw["zone"], kw["movable_ratio"], kw["reserve"], kw["min_online"], state_params,
                         SHRINK_BY_BLOCK if kw.get("per_block") else SHRINK_BY_DIMM)


def _run_options(sysfs, kw, dry_run=False):
    from ..engine.runner import RunOptions
    from ..engine.kdump import KdumpConfig

    return RunOptions(
        policy=_policy_config(sysfs.kernel_params(), kw),
        kdump=KdumpConfig(mode=kw["kdump_mode"], command=kw["kdump_command"]),
        block_timeout=kw["block_timeout"],
        timeout=kw["timeout"],
        lock_path=kw["lock_file"],
        lock_wait=kw["lock_wait"],
        dry_run=dry_run,
    )


def _finish(ctx: click.Context, result, as_json: bool, error: VmemError | None = None) -> None:
    """Print a direct run's output and exit with its code; `error`: what stopped it after its writes."""
    from . import report

    _print_output(ctx, report.run_output(result), as_json, wrote=result.changed, error=error)


def _print_output(ctx: click.Context, output: dict, as_json: bool, wrote: bool | None = None,
                  error: VmemError | None = None) -> None:
    """Print a run's or plan's output dict, made here or by the daemon, and exit with its code.

    `wrote`: blocks were changed (None: as the daemon's run says). Then a stdout that fails
    still leaves the run's exit code, and an `error` after the writes is one line on stderr.
    """
    if wrote is None:
        wrote = any(block.get("outcome") == "done" for block in (output.get("run") or {}).get("blocks", ()))
    try:
        click.echo(output["json"] if as_json else output["text"])
    except OutputError as exc:
        exc.result_code = output["exit_code"] if wrote else None
        raise
    finally:
        if error is not None:
            error_line(str(error))
    ctx.exit(output["exit_code"])


def _run_engine(ctx: click.Context, run, as_json: bool):
    """The result of `run()`; a run that ended in an error after writes is printed as far as it got."""
    from ..engine.runner import StoppedAfterWrites

    try:
        return run()
    except StoppedAfterWrites as stopped:
        _finish(ctx, stopped.result, as_json, stopped)


def _ask_daemon(ctx: click.Context, request, timeout: float):
    """The daemon's output for `request`, or None when no daemon runs (then the command acts directly).

    Options that tune a direct run are refused while a daemon runs: it plans and writes with
    its own configuration, and silently ignoring them would be worse.
    """
    from ..daemon import client

    if not client.running(ctx.obj["sysfs_root"]):
        return None
    given = [param.opts[0] for param in ctx.command.params
             if param.name in DAEMON_CONFIGURED_OPTIONS
             and ctx.get_parameter_source(param.name) in (click.core.ParameterSource.COMMANDLINE,
                                                          click.core.ParameterSource.ENVIRONMENT)]
    if given:
        raise UsageError(f"{', '.join(given)}: a vmem-agent daemon runs and applies its own configuration "
                         "(/etc/vmem-agent/config.toml); change it there, or stop the daemon for a one-off run")
    output = client.ask(ctx.obj["sysfs_root"], request, timeout)
    if output is None:
        raise VmemError("the vmem-agent daemon stopped before it answered; nothing was asked of it")
    from .. import paths

    return client.checked_output(output, paths.control_socket_path(ctx.obj["sysfs_root"]))


per_block_option = click.option(
    "--per-block", is_flag=True, envvar="VMEM_AGENT_PER_BLOCK",
    help="Shrink block by block (any DIMM or virtio-mem block, Movable first, highest first) instead of in whole "
         "DIMMs; the host may then be able to unplug nothing.")


@main.command(cls=SizeArgumentCommand)
@click.argument("size", required=False, type=TARGET_SIZE)
@click.option("--clear", is_flag=True, help="Drop the target: the daemon onlines every hot-added block again.")
@policy_options
@per_block_option
@write_options
@click.option("--dry-run", is_flag=True, help="Plan and print, write nothing.")
@click.pass_context
def resize(ctx: click.Context, size: str | None, clear: bool, dry_run: bool, **kw) -> None:
    """Bring online memory to SIZE (6G, 6GiB, 1.5G, 6442450944) or change it by +SIZE/-SIZE.

    Grows by onlining the lowest offline blocks (zone by the kernel's auto-movable rule),
    shrinks by offlining whole DIMMs (Movable ones first) so that the host can unplug
    them; virtio-mem memory is given back by lowering the device's requested-size on the
    host, not by offlining. Never boot memory or memory of unknown origin, never below
    the reserve. Sizes are binary (G = GiB) and round up to whole blocks. The target is
    stored: a running daemon holds it (the command then goes through the daemon), and a
    daemon started later holds it too, also after a reboot.
    """
    from ..daemon.protocol import Request

    if (size is None) == (not clear):
        raise UsageError("resize needs a SIZE or --clear (not both)")
    if clear and dry_run:
        raise UsageError("--clear has no --dry-run")
    output = _ask_daemon(ctx, Request("resize", size=size, clear=clear, dry_run=dry_run), DAEMON_RUN_TIMEOUT_S)
    if output is not None:
        _print_output(ctx, output, kw["as_json"])
    sysfs = _gateway(ctx)
    if clear:
        if not _store_target(sysfs.root, None):
            ctx.exit(EXIT_FAILURE)
        output = {"text": "target cleared: a daemon started later onlines every hot-added block",
                  "json": '{"message":"target cleared"}', "exit_code": EXIT_OK}
        _print_output(ctx, output, kw["as_json"])
    from ..engine import runner as engine

    options = _run_options(sysfs, kw, dry_run)
    result = _run_engine(ctx, lambda: engine.resize(sysfs, size, options), kw["as_json"])
    if not dry_run:
        _store_target(sysfs.root, result.target_bytes)
    _finish(ctx, result, kw["as_json"])


def _store_target(sysfs_root: str, target_bytes: int | None) -> bool:
    """Persist a direct resize's target for a daemon started later (none runs now), as the daemon
    would; a state directory that cannot be written is a warning, never a hidden result."""
    from .. import paths
    from ..daemon.config import load_config
    from ..daemon.target_store import StoredTarget, TargetFileError, store_target

    config_path = paths.default_config_path(sysfs_root)
    try:
        config_target = load_config(config_path, required=False).target_bytes if config_path else None
    except VmemError:
        config_target = None  # a broken config: the daemon will say so; the config's target then applies
    try:
        store_target(paths.state_dir(sysfs_root), StoredTarget(target_bytes, config_target))
    except TargetFileError as exc:
        error_line(f"warning: target not stored, a daemon started later will not hold it: {exc}")
        return False
    return True


@main.command(cls=SizeArgumentCommand)
@click.argument("size", type=TARGET_SIZE)
@policy_options
@per_block_option
@click.option("--json", "as_json", is_flag=True, help="Print the plan as JSON.")
@click.pass_context
def plan(ctx: click.Context, size: str, as_json: bool, **kw) -> None:
    """Show which blocks `resize SIZE` would change, in order, into which zone, and why."""
    from ..daemon.protocol import Request

    output = _ask_daemon(ctx, Request("plan", size=size), STATUS_QUERY_TIMEOUT_S * 6)
    if output is None:
        from . import report
        from ..engine import runner as engine

        sysfs = _gateway(ctx)
        config = _policy_config(sysfs.kernel_params(), kw)
        state, target, planned = engine.plan_resize(sysfs, size, engine.RunOptions(policy=config))
        output = report.plan_output(planned, state.block_size, target.note, state)
    _print_output(ctx, output, as_json)


@main.command()
@click.argument("blocks_or_size", metavar="BLOCKS|SIZE", type=BLOCKS_OR_SIZE)
@policy_options
@write_options
@click.option("--dry-run", is_flag=True, help="Plan and print, write nothing.")
@click.pass_context
def online(ctx: click.Context, blocks_or_size: str, dry_run: bool, **kw) -> None:
    """Online blocks by index (12, 12-20, 3,5-7) or an amount of memory (1G: lowest offline first)."""
    from ..engine import runner as engine

    sysfs = _gateway(ctx)
    options = _run_options(sysfs, kw, dry_run)
    result = _run_engine(ctx, lambda: engine.change_blocks(sysfs, "online", blocks_or_size, options), kw["as_json"])
    _finish(ctx, result, kw["as_json"])


@main.command()
@click.argument("blocks_or_size", metavar="BLOCKS|SIZE", type=BLOCKS_OR_SIZE)
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
    options = _run_options(sysfs, kw, dry_run)
    result = _run_engine(ctx, lambda: engine.change_blocks(sysfs, "offline", blocks_or_size, options, force=force),
                         kw["as_json"])
    _finish(ctx, result, kw["as_json"])


@main.command()
@click.option("--config", "config_path", default=None, metavar="PATH",
              help="Configuration file (default: /etc/vmem-agent/config.toml; absent means built-in defaults).")
@click.option("--check-config", is_flag=True, help="Check the configuration, print the effective values, and exit.")
@click.pass_context
def daemon(ctx: click.Context, config_path: str | None, check_config: bool) -> None:
    """Run the agent as a service: online hot-added memory at once, hold the target, reload kdump.

    Watches udev memory events and answers `status`, `plan` and `resize` on a control
    socket under /run/vmem-agent. With no target every hot-added block is onlined (by the
    kernel itself where it can do the same); with one, online memory is held at it.
    Stops cleanly on SIGTERM, rereads the configuration on SIGHUP.
    """
    from .. import paths
    from ..daemon.main import run_daemon

    explicit = config_path is not None
    path = config_path or paths.CONFIG_PATH
    ctx.exit(run_daemon(ctx.obj["sysfs_root"], path, explicit, check_config, ctx.obj["verbose"]))


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.pass_context
def reconcile(ctx: click.Context, as_json: bool) -> None:
    """Ask the running daemon to rescan now and retry blocks that failed; print what it did."""
    from ..daemon.protocol import Request

    output = _ask_daemon(ctx, Request("reconcile"), DAEMON_RUN_TIMEOUT_S)
    if output is None:
        raise VmemError("no vmem-agent daemon is running for this root")
    _print_output(ctx, output, as_json)


@main.command(epilog=f"""\b
Exit codes:
  {EXIT_OK}    nothing wrong (notes only)
  {EXIT_UNSUPPORTED}    no memory-block sysfs under the root
  {EXIT_DOCTOR_WARNINGS}   warnings only
  {EXIT_DOCTOR_ERRORS}   at least one error
""")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON document (top-level key \"doctor\", see docs/json.md).")
@click.pass_context
def doctor(ctx: click.Context, as_json: bool) -> None:
    """Check the guest's memory-hotplug setup (reads only).

    Who else onlines hot-added memory (kernel auto-online, udev rules: file and line) and
    whether they conflict; online_policy and the Movable ratio; memmap_on_memory;
    hot-plugged memory in ZONE_NORMAL, DIMMs left partly offline, blocks of unknown origin;
    kdump: crash kernel, crashkernel=, reload command, crash_hotplug. Each finding has a
    severity (error, warning, info), what is wrong, and the command or file that fixes it.
    """
    from ..core.doctor import diagnose, exit_code
    from ..engine.kdump import detect_reload_command
    from ..kernel.setup import read_setup
    from . import doctor_report, report

    from ..core.doctor import DaemonFacts
    from ..daemon.client import daemon_facts

    sysfs = _gateway(ctx)
    daemon, accessible, stored_target, warnings = daemon_facts(sysfs.root, STATUS_QUERY_TIMEOUT_S)
    for warning in warnings:
        error_line(f"warning: {warning}")
    facts = DaemonFacts(
        running=daemon is not None or not accessible, accessible=accessible,
        pid=daemon["pid"] if daemon else None, target_bytes=daemon["target_bytes"] if daemon else None,
        onlining=daemon["onlining"] if daemon else None, stored_target_bytes=stored_target,
    )
    picture = read_setup(sysfs, reload_command=detect_reload_command(which=sysfs.find_program), daemon=facts)
    findings = diagnose(picture)
    code = exit_code(findings)
    if as_json:
        text = report.render_json(doctor_report.doctor_document(findings, code))
    else:
        text = doctor_report.render_doctor(findings)
    _print_output(ctx, {"text": text, "json": text, "exit_code": code}, False, wrote=False)
