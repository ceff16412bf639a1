"""The daemon: one thread, one selector, decisions from fresh snapshots, writes in children.

What wakes the loop: udev memory events, the signal wake-up fd (SIGTERM, SIGINT,
SIGHUP, SIGCHLD), control-socket clients, a writer child's result pipe, and timers
(settling a burst, the periodic reconcile, the watchdog, slow clients). Events are
hints: after a burst settles the daemon takes one snapshot, decides once and runs one
job, so the 512 `add`s of a 64 GiB DIMM cost one plan and one kdump reload, its own
writes cause no feedback (a snapshot at the goal plans nothing), and lost events cost a
rescan. Modes:

- no target: every hot-added block is onlined, zone by the policy. Where the kernel can
  do exactly that itself (core.onlining), the daemon configures it and restores the
  admin's settings when it stops. Blocks someone else took offline stay offline.
- target: online memory is held at the target (resize SIZE, or the config's `target`):
  onlined up to it, hot-added memory beyond it left offline, offlined down to it with
  the engine's safety (reserve, floor, Movable first).
"""

from __future__ import annotations

import logging
import os
import selectors
import signal
import socket
import time
from collections import deque
from typing import Callable

from .. import paths
from ..core.model import OFFLINE, ONLINE, ORIGIN_VIRTIO_MEM, MemoryState, format_block_list
from ..core.onlining import kernel_onlining_plan, movable_ratio_for, onliner_description
from ..core.sizes import format_size, resolve_resize_target
from ..errors import EXIT_BUSY, EXIT_FAILURE, EXIT_OK, EXIT_USAGE, UsageError, VmemError
from ..logformat import set_log_level
from ..kernel.sysfs import Sysfs
from .children import WriterChild
from .config import DaemonConfig
from .control import Connection, ControlServer
from .kernel_onlining import KernelOnlining
from .notify import Notifier
from .protocol import BUSY, FAILED, STOPPING, USAGE, Request, error_reply, ok_reply
from .target_store import StoredTarget, TargetFileError, effective_target, load_target, store_target
from .uevents import MemoryEvents

log = logging.getLogger("vmem_agent.daemon")

KERNEL_ONLINING_GRACE_S = 5.0  # when the kernel onlines, the daemon keeps out of its way this long
KDUMP_SETTLE_S = 1.0  # quiet time after the last memory change before kdump is reloaded
LOCK_RETRY_S = 1.0  # another writer (a CLI run) holds the lock: try again after this
ERROR_RETRY_S = 10.0  # a snapshot failed: try again after this
MAX_QUERIES = 4  # plans and dry runs being made at once, each in a child of its own
HANDLED_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD)


class Daemon:
    def __init__(self, sysfs: Sysfs, config: DaemonConfig, reload_config: Callable[[], DaemonConfig],
                 notifier: Notifier | None = None, clock: Callable[[], float] = time.monotonic):
        self.sysfs = sysfs
        self.config = config
        self.reload_config = reload_config
        self.notifier = notifier or Notifier({})
        self.clock = clock
        self.runtime_dir = paths.runtime_dir(sysfs.root)
        self.state_dir = paths.state_dir(sysfs.root)
        self.selector = selectors.DefaultSelector()
        self.started_at = time.time()
        self.stopping = False
        self.ready = False
        self.pending_signals: set[int] = set()
        # What is to be held, and what the kernel does for us.
        self.stored: StoredTarget | None = None
        self.target: int | None = None
        self.kernel_onlining = KernelOnlining(sysfs, self.runtime_dir)
        self.onlining_note = ""
        self.cmdline: str | None = None
        # The picture: block -> state at the last decision, and what that teaches.
        self.picture: dict[int, str] = {}
        self.left_offline: set[int] = set()  # no target: blocks someone else took offline
        self.failed: set[int] = set()  # not retried before the next periodic reconcile
        self.paused = False  # the last job fell short: wait for the reconcile, a new target or new memory
        # When to decide, and what is running.
        now = clock()
        self.dirty = True
        self.dirty_since = now
        self.last_event_at = -1e9
        self.events_resume_at: float | None = None  # while a burst collects in the socket buffer
        self.next_reconcile_at = now + config.reconcile_interval
        self.retry_at: float | None = None
        self.next_watchdog_at = now
        self.job: WriterChild | None = None
        self.job_request: tuple[Connection, Request] | None = None
        self.job_events: set[tuple[int, str]] = set()
        self.expected_events: set[tuple[int, str]] = set()
        self.requests: deque[tuple[Connection, Request]] = deque()
        # Children whose result only needs handing on: plans and dry runs (to their client), the
        # udev rules check (to the warnings). Each with what to do with its result.
        self.tasks: dict[WriterChild, Callable[[dict | None], None]] = {}
        self.other_onliners: list[str] = []
        self.reconcile_waiters: list[Connection] = []
        # kdump
        self.kdump_pending = False
        self.last_change_at = -1e9
        self.reload: WriterChild | None = None
        # Counters for status.
        self.counters = {"jobs": 0, "kdump_reloads": 0, "rescans": 0, "decisions": 0}
        self.last_run: dict | None = None
        self.last_kdump: dict | None = None
        self.warnings: list[str] = []

    # -- start and stop ------------------------------------------------------------------------

    def run(self) -> int:
        """Serve until SIGTERM/SIGINT; the exit code (0 after a clean stop)."""
        self.sysfs.block_size()  # UnsupportedSystemError (exit 3) before anything is changed
        group_gid = _group_id(self.config.socket_group)  # ConfigError (exit 78) likewise
        os.makedirs(self.runtime_dir, mode=0o755, exist_ok=True)
        wake_read, wake_write = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        for end in (wake_read, wake_write):
            end.setblocking(False)
        previous_handlers = {signum: signal.signal(signum, self._on_signal) for signum in HANDLED_SIGNALS}
        previous_wakeup = signal.set_wakeup_fd(wake_write.fileno(), warn_on_full_buffer=False)
        self.selector.register(wake_read, selectors.EVENT_READ, lambda mask: self._drain_wakeups(wake_read))
        control = None
        try:
            self.kernel_onlining.restore_leftovers()
            self.events = MemoryEvents(self.config.event_source, self.config.uevent_buffer_bytes)
            self.selector.register(self.events.fileno(), selectors.EVENT_READ, self._on_uevents)
            control = self.control = ControlServer(
                self.selector, paths.control_socket_path(self.sysfs.root), group_gid,
                self._on_request, self.clock,
            )
            self.cmdline = self.sysfs.kernel_cmdline()
            self._load_target()
            self._apply_onlining_mode()
            self._check_other_onliners()
            log.info("started: %s; %s", self._mode_text(), self.onlining_note)
            while not self.stopping:
                self._turn()
            return EXIT_OK
        finally:
            self.notifier.stopping()
            self._stop_children()
            if control is not None:
                control.close(error_reply(STOPPING, "the daemon is stopping", EXIT_FAILURE))
            if self.kernel_onlining.engaged:
                self.kernel_onlining.release()
            signal.set_wakeup_fd(previous_wakeup)
            for signum, handler in previous_handlers.items():
                signal.signal(signum, handler)
            self.selector.close()
            wake_read.close()
            wake_write.close()
            log.info("stopped")

    def _stop_children(self) -> None:
        for child in self._children():
            self._unwatch(child)
            child.stop()
            log.info("%s child %d stopped: %s", child.kind, child.pid, (child.result or {}).get("error", "done"))
        self.job = self.reload = None
        self.tasks.clear()

    def _load_target(self) -> None:
        try:
            self.stored = load_target(self.state_dir)
        except TargetFileError as exc:
            log.error("%s; holding the config's target instead", exc)
            self.warnings.append(str(exc))
            self.stored = None
        self.target = effective_target(self.stored, self.config.target_bytes)

    def _apply_onlining_mode(self) -> None:
        """Let the kernel online (no target, equivalent settings) or take it back (target mode)."""
        plan = None
        if self.target is None and self.config.kernel_onlining == "auto":
            params = self.sysfs.kernel_params()
            plan = kernel_onlining_plan(self.config.zone, movable_ratio_for(self.config.movable_ratio, params), params,
                                        self.sysfs.auto_online_blocks(), self.cmdline)
        if plan is not None and plan.settings:
            problem = self.kernel_onlining.engage(plan.settings)
            self.onlining_note = f"the kernel onlines hot-added memory ({plan.reason})" if problem is None else (
                f"the daemon onlines hot-added memory (cannot configure the kernel: {problem})")
            return
        if self.kernel_onlining.engaged:
            self.kernel_onlining.release()
        if self.target is not None:
            why = "a target is set"
        elif self.config.kernel_onlining == "never":
            why = "kernel_onlining = never"
        else:
            why = plan.reason if plan is not None else "no equivalent kernel setting"
        external = onliner_description(self.sysfs.auto_online_blocks(), self.cmdline, False)
        self.onlining_note = f"the daemon onlines hot-added memory ({why})"
        if external:
            self.onlining_note += f"; note: {external} also onlines it"

    # -- the loop ------------------------------------------------------------------------------

    def _turn(self) -> None:
        timeout = max(0.0, self._next_wakeup() - self.clock())
        for key, mask in self.selector.select(timeout):
            key.data(mask)
        self._handle_signals()
        if self.stopping:
            return
        now = self.clock()
        self.control.expire(now)
        if self.events_resume_at is not None and now >= self.events_resume_at:
            self._resume_uevents()
            now = self.clock()
        if self.notifier.watchdog_interval and now >= self.next_watchdog_at:
            self.notifier.watchdog()
            self.next_watchdog_at = now + self.notifier.watchdog_interval
        if now >= self.next_reconcile_at:
            self.next_reconcile_at = now + self.config.reconcile_interval
            self._mark_dirty(now, retry=True)
        if self.job is None:
            if self.retry_at is not None and now >= self.retry_at:
                self.retry_at = None
                self.dirty = True
            if self.requests:
                self._start_request_job(*self.requests.popleft())
            elif self.dirty and self.retry_at is None and self.events_resume_at is None and now >= self._decide_at():
                self._decide()
        if self.job is None and self.reload is None and self.kdump_pending and now >= self.last_change_at + KDUMP_SETTLE_S:
            self._start_reload()

    def _next_wakeup(self) -> float:
        now = self.clock()
        times = [self.next_reconcile_at]
        if self.events_resume_at is not None:
            times.append(self.events_resume_at)
        if self.notifier.watchdog_interval:
            times.append(self.next_watchdog_at)
        if self.job is None:
            if self.requests:
                times.append(now)
            elif self.retry_at is not None:
                times.append(self.retry_at)
            elif self.dirty and self.events_resume_at is None:
                times.append(self._decide_at())
        if self.job is None and self.reload is None and self.kdump_pending:
            times.append(self.last_change_at + KDUMP_SETTLE_S)
        client_deadline = self.control.next_deadline()
        if client_deadline is not None:
            times.append(client_deadline)
        return min(times)

    def _settle(self) -> float:
        """How long a burst must be quiet before it is decided (the kernel gets its chance first)."""
        if self.kernel_onlining.engaged:
            return max(self.config.settle, KERNEL_ONLINING_GRACE_S)
        return self.config.settle

    def _decide_at(self) -> float:
        """A burst is decided once it has been quiet for the settle time."""
        return max(self.last_event_at + self._settle(), self.dirty_since)

    def _mark_dirty(self, now: float, retry: bool = False) -> None:
        if not self.dirty:
            self.dirty, self.dirty_since = True, now
        if retry:
            self.failed.clear()
            self.paused = False

    # -- inputs --------------------------------------------------------------------------------

    def _on_signal(self, signum, frame) -> None:
        self.pending_signals.add(signum)

    @staticmethod
    def _drain_wakeups(wake_read: socket.socket) -> None:
        try:
            while wake_read.recv(4096):
                pass
        except (BlockingIOError, InterruptedError):
            pass

    def _handle_signals(self) -> None:
        pending, self.pending_signals = self.pending_signals, set()
        stop = pending & {signal.SIGTERM, signal.SIGINT}
        if stop:
            log.info("stopping on %s", " and ".join(signal.Signals(signum).name for signum in sorted(stop)))
            self.stopping = True
            return
        if signal.SIGCHLD in pending:
            for child in self._children():
                if child.reap():
                    self._child_done(child)
        if signal.SIGHUP in pending:
            self._reload_configuration()

    def _on_uevents(self, _mask: int) -> None:
        """The first event of a burst: stop listening for the settle time and let the kernel's
        socket buffer collect the rest, so that a 512-block burst costs the loop one wake-up
        and one drain instead of 512 (on a one-CPU guest the kernel's own onlining then has the
        CPU to itself); then take them all at once."""
        self.selector.unregister(self.events.fileno())
        self.events_resume_at = self.clock() + self._settle()

    def _resume_uevents(self) -> None:
        self.events_resume_at = None
        self.selector.register(self.events.fileno(), selectors.EVENT_READ, self._on_uevents)
        self._take_uevents()

    def _take_uevents(self) -> None:
        batch = self.events.drain()
        if batch.empty:
            return
        now = self.clock()
        self.last_event_at = now
        log.debug("uevents: %s%s", batch.counts, " (events lost)" if batch.lost else "")
        if batch.lost:
            self.counters["rescans"] += 1
            log.info("uevents were lost: rescanning")
            self._external_change(now)
        for index, action in batch.state_changes:
            if self.job is not None:
                self.job_events.add((index, action))
            elif (index, action) in self.expected_events:
                self.expected_events.discard((index, action))
            else:
                self._external_change(now)
        if batch.counts.get("add") or batch.counts.get("remove"):
            self._mark_dirty(now, retry=True)  # new memory (or less): failed blocks and short targets get another try
        if batch.counts.get("remove"):
            self._external_change(now)  # removed memory must leave the crash kernel's map

    def _external_change(self, now: float) -> None:
        """Memory changed by someone else (the kernel, an admin): reload kdump, and look again."""
        self.kdump_pending = True
        self.last_change_at = now
        self._mark_dirty(now)

    def _reload_configuration(self) -> None:
        self.notifier.reloading()
        try:
            config = self.reload_config()
        except VmemError as exc:
            log.error("configuration not reloaded, the old one stays in force: %s", exc)
            self.notifier.ready(f"configuration error, old configuration in force: {exc}")
            return
        target_before = self.target
        self.config = config
        set_log_level(config.log_level)
        self.target = effective_target(self.stored, config.target_bytes)
        if self.target != target_before:
            self.paused = False
        self._apply_onlining_mode()
        self._check_other_onliners()
        self.next_reconcile_at = min(self.next_reconcile_at, self.clock() + config.reconcile_interval)
        self._mark_dirty(self.clock(), retry=True)
        log.info("configuration reloaded: %s; %s", self._mode_text(), self.onlining_note)
        self.notifier.ready(self._status_line())

    # -- control requests ------------------------------------------------------------------------

    def _on_request(self, connection: Connection, request: Request) -> bytes | None:
        """Answer now (status), soon (plans and dry runs, made in a child), or after a job."""
        if request.command == "status":
            return ok_reply({"daemon": self.status()})
        if request.command == "plan" or (request.command == "resize" and request.dry_run):
            if sum(1 for child in self.tasks if child.kind in ("plan", "resize")) >= MAX_QUERIES:
                return error_reply(BUSY, f"{MAX_QUERIES} plans are being made already; ask again", EXIT_BUSY)
            task = (_plan_task if request.command == "plan" else _dry_run_task)(self.sysfs, self.config, request.size)
            self._start_task(request.command, task, lambda result: self.control.reply(connection, _reply_for(result)))
            return None
        if request.command == "reconcile":
            self.reconcile_waiters.append(connection)
            self._mark_dirty(self.clock(), retry=True)
            return None
        self.requests.append((connection, request))
        return None

    def _start_request_job(self, connection: Connection, request: Request) -> None:
        """A resize: resolve and persist the new target first, then run it like a direct resize."""
        if connection.closed:
            return
        try:
            if request.clear:
                new_target, size_text = None, None
            else:
                state = self.sysfs.snapshot()
                new_target = resolve_resize_target(state, request.size).bytes
                size_text = request.size
            self.stored = StoredTarget(new_target, self.config.target_bytes)
            store_target(self.state_dir, self.stored)
        except UsageError as exc:
            self.control.reply(connection, error_reply(USAGE, str(exc), EXIT_USAGE))
            return
        except VmemError as exc:
            self.control.reply(connection, error_reply(FAILED, str(exc), exc.exit_code))
            return
        changed = new_target != self.target
        self.target = new_target
        self.paused = False
        if changed:
            self._apply_onlining_mode()
            log.info("new target: %s", self._mode_text())
        if size_text is None:
            state = self.sysfs.snapshot()
            self._learn(state)
            indexes = self._blocks_to_online(state)
            if not indexes:
                self.control.reply(connection, ok_reply(_message_output(f"target cleared: {self._status_line(state)}")))
                return
            self._start_job("resize", _online_task(self.sysfs, self.config, indexes, state), (connection, request))
            return
        self._start_job("resize", _resize_task(self.sysfs, self.config, size_text, state), (connection, request))

    # -- deciding and running jobs ---------------------------------------------------------------

    def _decide(self) -> None:
        """One snapshot, one decision: a job that brings memory to the mode or target, or nothing."""
        self.dirty = False
        self.counters["decisions"] += 1
        try:
            state = self.sysfs.snapshot()
        except VmemError as exc:
            log.error("cannot read memory blocks: %s", exc)
            self.retry_at = self.clock() + ERROR_RETRY_S
            return
        self._learn(state)
        self.expected_events.clear()  # every event of the last job has arrived by now
        job = None
        if not self.paused:
            if self.target is None:
                indexes = self._blocks_to_online(state)
                if indexes:
                    job = _online_task(self.sysfs, self.config, indexes, state)
            elif indexes := self._blocks_to_online(state, virtio_mem_only=True):
                # The host sizes virtio-mem memory: kept offline it gives the host nothing back
                # and stalls the driver's next plug. Online it, and meet the target with the rest.
                job = _online_task(self.sysfs, self.config, indexes, state)
            elif self._target_reachable(state):
                reachable = min(self.target, state.block_size * len(state.blocks))  # memory may have been unplugged
                job = _resize_task(self.sysfs, self.config, str(reachable), state)
        if job is not None:
            self._start_job("hold", job, None)
            return
        self._settled(state)

    def _learn(self, state: MemoryState) -> None:
        """What the snapshot says happened since the last one: blocks someone else took offline."""
        present = set()
        for block in state.blocks:
            present.add(block.index)
            if block.state == ONLINE:
                self.left_offline.discard(block.index)
            elif block.state == OFFLINE and self.picture.get(block.index) == ONLINE and self.target is None:
                self.left_offline.add(block.index)
                log.info("memory block %d was taken offline by someone else: leaving it offline", block.index)
        self.left_offline &= present
        self.failed &= present
        self.picture = {block.index: block.state for block in state.blocks}

    def _blocks_to_online(self, state: MemoryState, virtio_mem_only: bool = False) -> list[int]:
        skip = self.left_offline | self.failed
        return [block.index for block in state.blocks if block.state == OFFLINE and block.index not in skip
                and (not virtio_mem_only or block.origin == ORIGIN_VIRTIO_MEM)]

    def _target_reachable(self, state: MemoryState) -> bool:
        present = state.block_size * len(state.blocks)
        return state.online_bytes < min(self.target, present) or state.online_bytes > self.target

    def _settled(self, state: MemoryState) -> None:
        line = self._status_line(state)
        for connection in self.reconcile_waiters:
            self.control.reply(connection, ok_reply(_message_output(f"nothing to do: {line}")))
        self.reconcile_waiters.clear()
        if not self.ready:
            self.ready = True
            self.notifier.ready(line)
            log.info("ready: %s", line)
        else:
            self.notifier.status(line)

    def _start_job(self, kind: str, task: Callable[[], dict], request: tuple[Connection, Request] | None) -> None:
        self.counters["jobs"] += 1
        self.job_request = request
        self.job_events.clear()
        self.job = self._spawn(kind, task)
        log.info("%s job started (writer pid %d)", kind, self.job.pid)

    def _start_task(self, kind: str, task: Callable[[], dict], done: Callable[[dict | None], None]) -> None:
        self.tasks[self._spawn(kind, task)] = done

    def _check_other_onliners(self) -> None:
        """Who else onlines hot-added memory (udev rules, the admin's kernel auto-online): read in a
        child (the rules parser is big, and reading many rules files takes a while), then reported."""
        def done(result: dict | None) -> None:
            if not (result or {}).get("ok"):
                log.warning("cannot check the udev rules: %s", (result or {}).get("error", "no result"))
                return
            self.other_onliners = result["result"]["onliners"]
            for onliner in self.other_onliners:
                log.warning("%s also onlines hot-added memory: it wins the race for each new block and picks "
                            "its zone%s (vmem-agent doctor says how to remove it)", onliner,
                            "; holding a target then undoes its work" if self.target is not None else "")

        self._start_task("onliners", _other_onliners_task(self.sysfs, self.cmdline), done)

    def _start_reload(self) -> None:
        self.kdump_pending = False
        self.reload = self._spawn("kdump", _kdump_task(self.sysfs, self.config))

    def _spawn(self, kind: str, task: Callable[[], dict]) -> WriterChild:
        """Fork a writer child and watch its result pipe. The child closes the loop's sockets and
        the result pipes of the other children."""
        inherited = [self.events.fileno(), *self.control.fds(), *(child.fd for child in self._children())]
        child = WriterChild(kind, task, inherited)
        self.selector.register(child.fd, selectors.EVENT_READ, lambda mask: self._child_readable(child))
        return child

    def _children(self) -> list[WriterChild]:
        return [child for child in (self.job, self.reload, *self.tasks) if child is not None]

    def _unwatch(self, child: WriterChild) -> None:
        try:
            self.selector.unregister(child.fd)
        except (KeyError, ValueError):
            pass

    def _child_readable(self, child: WriterChild) -> None:
        if child.on_readable():
            self._child_done(child)

    def _child_done(self, child: WriterChild) -> None:
        self._unwatch(child)
        child.close()
        now = self.clock()
        if child is self.reload:
            self.reload = None
            self._kdump_done(child.result)
            return
        if child in self.tasks:
            self.tasks.pop(child)(child.result)
            return
        self.job = None
        request, self.job_request = self.job_request, None
        document = child.result or {}
        if document.get("ok"):
            output = document["result"]
            run = output.get("run") or {}
            self._record_run(child.kind, run, now)
        else:
            message = document.get("error", "failed")
            exit_code = document.get("exit_code", EXIT_FAILURE)
            busy = exit_code == EXIT_BUSY
            (log.info if busy else log.error)("%s job: %s", child.kind, message)
            self.last_run = {"kind": child.kind, "exit_code": exit_code, "error": message, "finished": time.time()}
            if busy:
                self.retry_at = now + LOCK_RETRY_S
            else:
                self.paused = True
        if request is not None:
            self.control.reply(request[0], _reply_for(document))
        for connection in self.reconcile_waiters:
            self.control.reply(connection, ok_reply(document.get("result") or _message_output(document.get("error", ""))))
        self.reconcile_waiters.clear()
        self._mark_dirty(now)

    def _record_run(self, kind: str, run: dict, now: float) -> None:
        own = set()
        for block in run.get("blocks", ()):
            if block.get("outcome") == "done":
                own.add((block["index"], "offline" if block.get("operation") == "offline" else "online"))
            elif block.get("outcome") in ("failed", "timed-out"):
                self.failed.add(block["index"])
        external = self.job_events - own
        self.expected_events = own - self.job_events
        self.job_events.clear()
        if external:
            self._external_change(now)
        if not run.get("reached", True):
            self.paused = True
        if run.get("kdump"):
            self.last_kdump = run["kdump"]
            if run["kdump"].get("action") == "reloaded":
                self.counters["kdump_reloads"] += 1
        self.last_run = {"kind": kind, "exit_code": run.get("exit_code"), "blocks": len(run.get("blocks", ())),
                         "final_online_bytes": run.get("final_online_bytes"), "reached": run.get("reached"),
                         "notes": run.get("notes", [])[:10], "finished": time.time()}
        log.info("%s job done: %s, %d block(s) written, online %s", kind,
                 "reached" if run.get("reached") else "short", len(own), format_size(run.get("final_online_bytes") or 0))

    def _kdump_done(self, document: dict | None) -> None:
        outcome = (document or {}).get("result") if (document or {}).get("ok") else {
            "action": "failed", "reason": (document or {}).get("error", "unknown")}
        self.last_kdump = outcome
        if outcome.get("action") == "reloaded":
            self.counters["kdump_reloads"] += 1
        level = logging.WARNING if outcome.get("action") == "failed" else logging.INFO
        log.log(level, "kdump reload %s: %s", outcome.get("action"), outcome.get("reason"))

    # -- reporting -----------------------------------------------------------------------------

    def _mode_text(self) -> str:
        return "no target: every hot-added block is onlined" if self.target is None else f"target {format_size(self.target)}"

    def _status_line(self, state: MemoryState | None = None) -> str:
        online = f"{format_size(state.online_bytes)} online" if state is not None else ""
        parts = [self._mode_text(), online]
        if state is not None and self.target is not None and state.online_bytes != self.target:
            parts.append(f"{format_size(abs(self.target - state.online_bytes))} "
                         f"{'short of' if state.online_bytes < self.target else 'above'} the target")
        if self.failed:
            parts.append(f"blocks {format_block_list(self.failed)} failed (retried at the next reconcile)")
        return ", ".join(part for part in parts if part)

    def status(self) -> dict:
        cpu = os.times()
        return {
            "pid": os.getpid(),
            "started": self.started_at,
            "uptime_seconds": round(time.time() - self.started_at, 3),
            "config": self.config.path,
            "mode": "no-target" if self.target is None else "target",
            "target_bytes": self.target,
            "target_source": None if self.target is None else (
                "resize" if self.stored is not None and self.stored.target_bytes == self.target else "config"),
            "onlining": "kernel" if self.kernel_onlining.engaged else "daemon",
            "onlining_detail": self.onlining_note,
            "ready": self.ready,
            "job": None if self.job is None else {"kind": self.job.kind, "pid": self.job.pid,
                                                  "seconds": round(self.clock() - self.job.started, 3)},
            "last_run": self.last_run,
            "blocks_failed": sorted(self.failed),
            "blocks_left_offline": sorted(self.left_offline),
            "kdump": {"pending": self.kdump_pending, "reloading": self.reload is not None, "last": self.last_kdump},
            "uevents": {"source": self.config.event_source, "received": self.events.received, "lost": self.events.losses},
            "counters": dict(self.counters),
            "rss_bytes": _resident_bytes(),
            "cpu_seconds": round(cpu.user + cpu.system, 3),
            "other_onliners": list(self.other_onliners),
            "warnings": list(self.warnings),
        }


# -- what writer children run: the engine is imported there, never in the daemon itself ---------------


def _run_task(sysfs: Sysfs, config: DaemonConfig, run: Callable, dry_run: bool = False) -> Callable[[], dict]:
    """A task that calls `run(runner, options)` in the child and returns its output and result.

    A run the daemon decides on is given the snapshot it decided from (`state=`): the child
    is forked moments after it, and on a big guest a scan is the run's largest cost."""

    def task() -> dict:
        from ..cli import report
        from ..engine import runner
        from ..engine.settings import daemon_run_options

        result = run(runner, daemon_run_options(config, sysfs.kernel_params(), dry_run))
        return {**report.run_output(result), "run": result.to_json()}

    return task


def _resize_task(sysfs: Sysfs, config: DaemonConfig, size_text: str, state: MemoryState | None = None) -> Callable[[], dict]:
    return _run_task(sysfs, config, lambda runner, options: runner.resize(sysfs, size_text, options, state=state))


def _dry_run_task(sysfs: Sysfs, config: DaemonConfig, size_text: str) -> Callable[[], dict]:
    return _run_task(sysfs, config, lambda runner, options: runner.resize(sysfs, size_text, options), dry_run=True)


def _online_task(sysfs: Sysfs, config: DaemonConfig, indexes: list[int], state: MemoryState | None = None,
                 ) -> Callable[[], dict]:
    blocks = format_block_list(indexes)
    return _run_task(sysfs, config,
                     lambda runner, options: runner.change_blocks(sysfs, "online", blocks, options, state=state))


def _plan_task(sysfs: Sysfs, config: DaemonConfig, size_text: str) -> Callable[[], dict]:
    def task() -> dict:
        from ..cli import report
        from ..engine import runner
        from ..engine.settings import daemon_run_options

        options = daemon_run_options(config, sysfs.kernel_params())
        state, target, plan = runner.plan_resize(sysfs, size_text, options)
        return report.plan_output(plan, state.block_size, target.note, state)

    return task


def _kdump_task(sysfs: Sysfs, config: DaemonConfig) -> Callable[[], dict]:
    def task() -> dict:
        from ..engine.kdump import KdumpConfig, reload_after_change

        return reload_after_change(sysfs, KdumpConfig(mode=config.kdump, command=config.kdump_command)).to_json()

    return task


def _other_onliners_task(sysfs: Sysfs, cmdline: str | None) -> Callable[[], dict]:
    def task() -> dict:
        from ..core.onlining import kernel_parameter
        from ..core.udev_rules import EFFECT_ONLINE, ONLINE_STATES, systemd_architecture
        from ..kernel.setup import read_rule_effects

        effects, _unreadable = read_rule_effects(sysfs, systemd_architecture(sysfs.kernel_arch()))
        onliners = [f"the udev rule {effect.where}" for effect in effects if effect.kind == EFFECT_ONLINE]
        state = kernel_parameter(cmdline, "memhp_default_state")
        if state in ONLINE_STATES:
            onliners.insert(0, f"the kernel (memhp_default_state={state} on the command line)")
        return {"onliners": onliners}

    return task


def _reply_for(document: dict | None) -> bytes:
    """A child's result as the socket's reply: its output, or its error with the exit code a direct run has."""
    document = document or {}
    if document.get("ok"):
        return ok_reply(document["result"])
    exit_code = document.get("exit_code", EXIT_FAILURE)
    code = USAGE if exit_code == EXIT_USAGE else BUSY if exit_code == EXIT_BUSY else FAILED
    if document.get("terminated"):
        code = STOPPING
    return error_reply(code, document.get("error", "failed"), exit_code)


def _resident_bytes() -> int:
    """This process's resident memory, from /proc/self/statm (psutil would cost more than it measures)."""
    try:
        with open("/proc/self/statm", "rb") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def _message_output(text: str) -> dict:
    import json

    return {"text": text, "json": json.dumps({"message": text}), "exit_code": EXIT_OK}


def _group_id(name: str | None) -> int | None:
    if name is None:
        return None
    import grp

    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        from ..errors import ConfigError

        raise ConfigError(f"socket_group {name!r}: no such group") from None


