"""The long-running daemon behind ``syncd run``: supervision, reload, stop, metrics and health.

Threads and who owns what:

* the MAIN thread owns signals, reloads, supervision and systemd notifications. Signal handlers
  only set flags and wake it up; it polls once a second;
* the scheduler thread dispatches jobs; dataset runs execute in its worker pool
  (``daemon.max_concurrent_runs``), each wrapped by :meth:`Daemon.run_job`; the change feed's
  retention (``changes.retention_days``) and the runs table's (``runs.retention_days``) run once a
  day at ``changes.prune_at`` in a thread of its own (:meth:`Daemon.prune_job`), when any dataset's
  entries or runs expire — never within a day of a clock step, nor while this machine's clock and
  the database server's disagree (:mod:`syncd.ops.prune`);
* the HTTP thread serves ``/metrics`` and ``/healthz``.

At start the daemon waits for the target database (:meth:`Daemon._wait_for_target`), retrying
with backoff, instead of exiting: systemd's start limit would otherwise leave it failed for good
after a few minutes of database outage at boot.

Exit codes of :meth:`Daemon.serve`: 0 after a clean stop (SIGTERM/SIGINT: no new runs start,
running ones end between batches with status ``interrupted``); 1 when the scheduler died
(``daemon.scheduler_dead``: thread gone or heartbeat stale), the start failed
(``daemon.start_failed``), the main thread met an unexpected error (``daemon.failed``) or runs did
not end within ``daemon.stop_timeout`` — systemd then restarts the service. Whatever ends
:meth:`Daemon.serve`, once the monitoring server started it goes through the same stop
(:meth:`Daemon._shutdown`): STOPPING=1, no new runs, running ones asked to stop and waited for,
the monitoring server, the dataset locks and the connection pool closed.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import threading
import time
import weakref
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import FrameType
from typing import Any
from zoneinfo import ZoneInfo

import structlog

from syncd.config import load_config
from syncd.config.model import AppConfig
from syncd.daemon.http import HealthServer
from syncd.daemon.locks import DatasetLocker
from syncd.daemon.notify import SystemdNotifier
from syncd.daemon.scheduler import PRUNE_JOB, DatasetScheduler, Schedule
from syncd.daemon.state import RunBook
from syncd.errors import ConfigError, SyncdError, TargetError
from syncd.metrics import Metrics
from syncd.ops.prune import prune_datasets, prune_runs, retention_bounds, runs_before
from syncd.runner import RunResult, run_dataset
from syncd.targets import RunCounts, RunTimes, StateStore, create_target_engine
from syncd.targets.engine import pool_overflow
from syncd.targets.prune import PruneBound

__all__ = ["Daemon", "schedules_of"]

log = structlog.get_logger(__name__)


def _close_fds(*fds: int) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


EXIT_FAILED = 1  # systemd restarts the service (Restart=on-failure); syncd.commands.common agrees
_TICK = 1.0  # seconds between supervision checks of the main thread
_STATUS_EVERY = 10.0  # seconds between STATUS= refreshes when nothing else changed
_TARGET_RETRY_FIRST = 2.0  # seconds before the second try to reach the target database at start
_TARGET_RETRY_MAX = 60.0  # the wait doubles up to this
PRUNE_QUIET_AFTER_STEP = timedelta(hours=24)
"""The daemon does not prune the change feed nor the runs table this long after a clock step
(:meth:`Daemon.prune_job`)."""
RUN_TIMES_TIMEOUT = timedelta(seconds=10)
"""The longest the main thread waits for the runs table at start and on a reload
(:meth:`Daemon._read_run_times`); with the 10 s connect timeout it stays well inside the 30 s between
two watchdog pings (WatchdogSec=60)."""


def schedules_of(app: AppConfig) -> dict[str, Schedule]:
    """The datasets that get a job: enabled and with a schedule."""
    return {n: d.schedule for n, d in app.datasets.items() if d.enabled and d.schedule is not None}


def _started(times: dict[str, RunTimes] | None) -> dict[str, datetime] | None:
    """What :meth:`DatasetScheduler.apply` plans first runs from: when each dataset's latest run
    started, one stamped after now first (the scheduler warns about it and runs the dataset now)."""
    if times is None:
        return None
    out: dict[str, datetime] = {}
    for name, t in times.items():
        when = t.future or t.started
        if when is not None:
            out[name] = when
    return out


def _unix(when: datetime | None) -> float | None:
    return None if when is None else when.timestamp()


class Daemon:
    """``Daemon(path, app).serve()`` runs until stopped; see the module docstring."""

    def __init__(self, config_path: Path, app: AppConfig, *, notifier: SystemdNotifier | None = None) -> None:
        self.config_path = config_path
        self.app = app
        self.notifier = notifier if notifier is not None else SystemdNotifier(unset_environment=True)
        d = app.daemon
        self.metrics = Metrics()
        self.book = RunBook(d.unhealthy_after_failures)
        url = app.target.url.get_secret_value()
        pool_size = max(app.target.pool_size, d.max_concurrent_runs + 1)
        self.engine = create_target_engine(
            url, pool_size=pool_size, max_overflow=pool_overflow(pool_size, d.max_concurrent_runs)
        )
        self.store = StateStore(self.engine, app.target.table_prefix)
        self.locker = DatasetLocker(url)
        self.scheduler = DatasetScheduler(
            self.run_job,
            timezone=app.timezone,
            max_concurrent=d.max_concurrent_runs,
            misfire_grace_time=d.misfire_grace_time,
            heartbeat_interval=d.heartbeat_interval,
            on_heartbeat=self.metrics.heartbeat,
            on_skipped=self.metrics.run_skipped,
        )
        self.server: HealthServer | None = None
        if d.metrics_port:
            self.server = HealthServer(self.metrics, self.health, host=d.metrics_host, port=d.metrics_port)
        self._stop = threading.Event()  # running jobs poll it (should_stop); set by the main loop
        # what the signal handlers set: plain flags and a byte down a pipe, never a lock
        self._stop_asked = False
        self._reload_asked = False
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        weakref.finalize(self, _close_fds, self._wake_r, self._wake_w)  # open while anyone can poke
        self._active: set[str] = set()
        self._active_cv = threading.Condition()
        self._target_problem: str | None = None  # while waiting for the target database at start
        # a run's outcome is recorded, and a reload forgets removed datasets (_adopt), one at a time
        self._adopt_lock = threading.Lock()
        self._scheduled: frozenset[str] = frozenset()  # the datasets with a job (_adopt)
        self._doing = "start"  # what the main thread does, for daemon.failed

    # ------------------------------------------------------------------ signals

    # A signal handler runs in the main thread between two bytecodes of whatever it was doing,
    # also inside the handler of a signal that came just before. It must not take a lock:
    # Event.set here deadlocked the daemon when a SIGTERM landed while the main loop held the
    # same event's lock in Event.wait, or while the first of two quick SIGTERMs was in Event.set.

    # A repeated signal returns at once: a flood of them (kill in a loop) otherwise nests handler
    # in handler until the recursion limit.

    def _on_stop(self, signum: int, _frame: FrameType | None) -> None:
        if self._stop_asked:
            return
        self._stop_asked = True
        self._poke()

    def _on_reload(self, signum: int, _frame: FrameType | None) -> None:
        if self._reload_asked:  # the reload asked for has not started yet: it covers this one too
            return
        self._reload_asked = True
        self._poke()

    def _poke(self) -> None:
        """Wake the main loop (a full pipe already will)."""
        try:  # noqa: SIM105 - a signal handler: as few bytecodes as possible, no context manager
            os.write(self._wake_w, b"\0")
        except OSError:  # BlockingIOError included
            pass

    def _sleep(self, seconds: float) -> None:
        """Wait until poked or ``seconds`` passed; empty the pipe."""
        with contextlib.suppress(InterruptedError, OSError, ValueError):
            select.select([self._wake_r], [], [], seconds)
        with contextlib.suppress(BlockingIOError, OSError):
            while os.read(self._wake_r, 4096):
                pass

    def request_stop(self) -> None:
        """Ask :meth:`serve` to stop (what SIGTERM does)."""
        self._on_stop(signal.SIGTERM, None)

    def request_reload(self) -> None:
        """Ask :meth:`serve` to reload the configuration (what SIGHUP does)."""
        self._on_reload(signal.SIGHUP, None)

    def _install_signals(self) -> dict[int, Any]:
        """Route SIGTERM/SIGINT/SIGHUP to flags; return the previous handlers (restored on exit)."""
        if threading.current_thread() is not threading.main_thread():
            return {}
        previous: dict[int, Any] = {}
        for signum, handler in (
            (signal.SIGTERM, self._on_stop),
            (signal.SIGINT, self._on_stop),
            (signal.SIGHUP, self._on_reload),
        ):
            previous[signum] = signal.signal(signum, handler)
        return previous

    # ------------------------------------------------------------------ the main loop

    def serve(self, *, then_exit: bool = False) -> int:
        """Start everything, supervise until stopped; return the process exit code.

        ``then_exit``: the process exits right after (``syncd run``). SIGTERM and SIGINT are then
        ignored from the end of the stop on, instead of getting their previous handlers back: a
        second SIGTERM during the last steps (or the interpreter's shutdown, which resets Python
        handlers to the default) would otherwise kill the process, exit status -15."""
        previous = self._install_signals()
        try:
            return self._serve()
        finally:
            for signum, handler in previous.items():
                ignore = then_exit and signum in (signal.SIGTERM, signal.SIGINT)
                signal.signal(signum, signal.SIG_IGN if ignore else handler)

    def _serve(self) -> int:
        try:
            if not self._start():
                return self._shutdown(0, "signal")
        except Exception as exc:  # noqa: BLE001 - logged by _failed; what did start is stopped in order
            self._failed("daemon.start_failed", exc)
            return self._shutdown(EXIT_FAILED, "start_failed")
        try:
            code = self._supervise()
        except Exception as exc:  # noqa: BLE001 - logged by _failed; stop in order, systemd restarts us
            self._failed("daemon.failed", exc, during=self._doing)
            return self._shutdown(EXIT_FAILED, "failed")
        return self._shutdown(code, "scheduler_dead" if code else "signal")

    def _failed(self, event: str, exc: Exception, **fields: Any) -> None:
        """Log what ended the daemon: an operator's problem (a busy port, an unreachable database:
        :class:`SyncdError`, :class:`OSError`) as its message, anything else with its traceback."""
        expected = isinstance(exc, SyncdError | OSError)
        log.critical(
            event,
            **fields,
            error=str(exc),
            error_type=type(exc).__name__,
            hint="stopping in order (running datasets end between batches); systemd restarts syncd",
            exc_info=not expected,
        )

    def _start(self) -> bool:
        """Everything up to READY=1; False when a stop came while waiting for the target database."""
        if self.server is not None:
            self.server.start()
        if not self._wait_for_target():
            return False
        self.metrics.config_reloaded(True)
        times = self._read_run_times(self.app)
        self._adopt(self.app, times)
        self.scheduler.start()
        plan = self.scheduler.apply(schedules_of(self.app), _started(times))
        log.info(
            "daemon.started",
            config=str(self.config_path),
            datasets=sorted(self.app.datasets),
            scheduled=plan.added,
            timezone=self.app.timezone,
            max_concurrent_runs=self.app.daemon.max_concurrent_runs,
            changes_prune_next=self._schedule_retention(self.app),
        )
        self.notifier.ready(self._status())
        return True

    def _wait_for_target(self) -> bool:
        """Create or check the state tables; while the target database cannot be reached (at boot it
        may still be starting) try again after 2 s, 4 s, … up to every minute, logging each attempt,
        with READY=1 and a STATUS= that says so (systemd neither times the start out nor restarts us
        into its start limit), watchdog pings, and ``/healthz`` unhealthy. False when a stop (SIGTERM)
        came meanwhile. A SIGHUP waits: it is handled once the daemon runs."""
        delay = _TARGET_RETRY_FIRST
        watchdog_every = self.notifier.watchdog_interval() or _TARGET_RETRY_MAX
        attempt = 0
        while True:
            attempt += 1
            try:
                self.store.ensure_schema()
            except TargetError as exc:
                self._target_problem = str(exc)
            else:
                if attempt > 1:
                    log.info("daemon.target_reachable", attempts=attempt)
                self._target_problem = None
                return True
            log.warning(
                "daemon.target_unreachable",
                attempt=attempt,
                retry_in_s=delay,
                error=self._target_problem,
                hint="waiting for the target database; no dataset runs until it answers",
            )
            status = f"waiting for the target database (attempt {attempt}, next in {delay:.0f}s): "
            if attempt == 1:
                self.notifier.ready(status + self._target_problem)
            else:
                self.notifier.status(status + self._target_problem)
            deadline = time.monotonic() + delay
            while (left := deadline - time.monotonic()) > 0:
                self._sleep(min(left, watchdog_every))
                if self._stop_asked:
                    return False
                self.notifier.watchdog()
            delay = min(delay * 2, _TARGET_RETRY_MAX)

    def _supervise(self) -> int:
        watchdog_every = self.notifier.watchdog_interval()
        last_ping = last_status = 0.0
        timeout = self.app.daemon.heartbeat_timeout.total_seconds()
        while True:
            self._doing = "supervision"
            self._sleep(_TICK)
            if self._stop_asked:
                return 0
            if self._reload_asked:
                self._reload_asked = False
                self._doing = "reload"
                self.reload()
                self._doing = "supervision"
                last_status = time.monotonic()
            age = self.scheduler.heartbeat_age()
            if not self.scheduler.alive or age > timeout:
                log.critical(
                    "daemon.scheduler_dead",
                    thread_alive=self.scheduler.alive,
                    heartbeat_age_s=round(age, 1),
                    hint="the scheduler stopped dispatching jobs; exiting so that systemd restarts syncd",
                )
                return 1
            now = time.monotonic()
            if watchdog_every is not None and now - last_ping >= watchdog_every:
                self.notifier.watchdog()  # only reached while the heartbeat is fresh
                last_ping = now
            if now - last_status >= _STATUS_EVERY:
                self.notifier.status(self._status())
                last_status = now

    def _shutdown(self, code: int, reason: str) -> int:
        """Stop in order and return the exit code: each step runs even when one before it failed (a
        failed step is logged as ``daemon.stop_step_failed`` and makes the exit code non-zero)."""
        self._stop.set()  # running jobs see it through should_stop and end between batches

        def step(name: str, fn: Callable[[], object]) -> None:
            nonlocal code
            try:
                fn()
            except Exception as exc:  # the remaining steps must still run
                log.error(
                    "daemon.stop_step_failed", step=name, error=f"{type(exc).__name__}: {exc}", exc_info=True
                )
                code = code or EXIT_FAILED

        waiting = "stopping: waiting for running datasets to finish their batch"
        step("notify", lambda: self.notifier.stopping(waiting))
        log.info("daemon.stopping", reason=reason, running=sorted(self._active))
        step("scheduler", self.scheduler.shutdown)
        deadline = time.monotonic() + self.app.daemon.stop_timeout.total_seconds()
        with self._active_cv:
            while self._active and time.monotonic() < deadline:
                self._active_cv.wait(min(0.5, max(0.0, deadline - time.monotonic())))
            left = sorted(self._active)
        if left:
            log.error(
                "daemon.stop_timeout", running=left, stop_timeout_s=self.app.daemon.stop_timeout.seconds
            )
            code = code or EXIT_FAILED
        if self.server is not None:
            step("http", self.server.stop)
        step("locks", self.locker.close)
        step("engine", self.engine.dispose)
        log.info("daemon.stopped", exit_code=code)
        return code

    @property
    def unfinished(self) -> list[str]:
        """Datasets whose run was still going when :meth:`serve` returned."""
        with self._active_cv:
            return sorted(self._active)

    # ------------------------------------------------------------------ one job

    def run_job(self, name: str) -> None:
        """The scheduler's job: one run of ``name`` under its lock; never raises."""
        structlog.contextvars.clear_contextvars()  # pool threads are reused: start clean
        try:
            app = self.app  # one consistent configuration for the whole run
            ds = app.datasets.get(name)
            if ds is None or not ds.enabled or self._stop.is_set():
                return
            with self._active_cv:
                self._active.add(name)
            try:
                result = self._locked_run(app, name)
            finally:
                with self._active_cv:
                    self._active.discard(name)
                    self._active_cv.notify_all()
            with self._adopt_lock:  # a reload may have removed the dataset meanwhile: leave it removed
                if name in self.app.datasets:
                    self.metrics.observe_run(result)  # interrupted too: its batches committed
                    if name not in self._scheduled:  # taken out of service meanwhile (_adopt)
                        self.metrics.clear_run_times(name)
                    self.book.record(name, result.status)  # counts only while scheduled
                    self._set_days_left(self.app, name)
        finally:
            structlog.contextvars.clear_contextvars()

    def _locked_run(self, app: AppConfig, name: str) -> RunResult:
        started = time.monotonic()
        try:
            with self.locker.take(name) as held:
                if held is not None:
                    return run_dataset(
                        app,
                        app.datasets[name],
                        self.store,
                        trigger="schedule",
                        # the Event itself: a source retrying a stalled upstream wakes from its backoff
                        should_stop=self._stop,
                        lock=held,  # checked between batches: a lock lost mid-run fails the run
                    )
            log.info(
                "sync.skipped_locked",
                dataset=name,
                hint="another syncd process is running this dataset (another node, or a command run by hand)",
            )
            return RunResult(name, "", "skipped_locked", RunCounts(), time.monotonic() - started)
        except Exception as exc:  # a job must never kill its worker; the run is reported as failed
            log.error("daemon.job_failed", dataset=name, error=f"{type(exc).__name__}: {exc}", exc_info=True)
            return RunResult(name, "", "failed", RunCounts(), time.monotonic() - started, error=str(exc))

    # ------------------------------------------------------------------ retention: change feed, runs

    def _schedule_retention(self, app: AppConfig) -> str | None:
        """The daily prune at ``changes.prune_at`` while any dataset's change entries expire or runs
        do (``runs.retention_days``), else no such job; returns its next run time (ISO 8601) or None."""
        expiring = any(app.retention_days(d) is not None for d in app.datasets.values())
        expiring = expiring or app.run_retention_days() is not None
        when = self.scheduler.set_daily(PRUNE_JOB, self.prune_job, app.changes.at() if expiring else None)
        return None if when is None else when.isoformat()

    def prune_job(self) -> None:
        """The scheduler's daily job: delete the change entries older than their dataset's retention,
        then the records of runs older than ``runs.retention_days`` (syncd.ops.prune), stopping
        between batches when the daemon stops; never raises (a failure is logged as
        ``changes.prune_failed`` or ``runs.prune_failed``, and one does not keep the other from
        running). Not within a day of a clock step (:meth:`_clock_stepped`)."""
        structlog.contextvars.clear_contextvars()
        try:
            app = self.app
            now = datetime.now(UTC)
            bounds = retention_bounds(app, now)
            runs_cutoff = runs_before(app, now)
            due = (["changes"] if bounds else []) + (["runs"] if runs_cutoff is not None else [])
            if not due or self._stop.is_set() or self._clock_stepped(due):
                return
            with self._active_cv:
                self._active.add(PRUNE_JOB)
            try:
                if bounds:
                    self._prune_changes(app, bounds)
                if runs_cutoff is not None and not self._stop.is_set():
                    self._prune_runs(app, runs_cutoff)
            finally:
                with self._active_cv:
                    self._active.discard(PRUNE_JOB)
                    self._active_cv.notify_all()
        except Exception as exc:  # a job must never kill its worker; tomorrow is another try
            log.error("changes.prune_failed", error=f"{type(exc).__name__}: {exc}", exc_info=True)
        finally:
            structlog.contextvars.clear_contextvars()

    def _prune_changes(self, app: AppConfig, bounds: dict[str, PruneBound]) -> None:
        """The change feed's part of :meth:`prune_job`; never raises (``changes.prune_failed``)."""
        try:
            prune_datasets(
                self.store,
                self.locker,
                bounds,
                should_stop=self._stop.is_set,
                on_batch=self.metrics.changes_pruned_by_retention,
                zone=ZoneInfo(app.timezone),
            )
        except Exception as exc:  # the runs' prune goes on; tomorrow is another try
            log.error("changes.prune_failed", error=f"{type(exc).__name__}: {exc}", exc_info=True)

    def _prune_runs(self, app: AppConfig, before: datetime) -> None:
        """The runs table's part of :meth:`prune_job`: every configured dataset's runs that started
        before ``before``; never raises (``runs.prune_failed``)."""
        try:
            prune_runs(
                self.store,
                self.locker,
                sorted(app.datasets),
                before,
                should_stop=self._stop.is_set,
                on_batch=self.metrics.runs_pruned_by_retention,
                zone=ZoneInfo(app.timezone),
            )
        except Exception as exc:  # tomorrow is another try
            log.error("runs.prune_failed", error=f"{type(exc).__name__}: {exc}", exc_info=True)

    def _clock_stepped(self, due: list[str]) -> bool:
        """Whether the system clock was stepped within :data:`PRUNE_QUIET_AFTER_STEP` (logged, as
        ``changes.prune_skipped`` and/or ``runs.prune_skipped``, for each of ``due``): a time bound
        is computed from the clock, and entries and runs are stamped by it, so the daemon does not
        prune until the clock has held for a day."""
        since = self.scheduler.since_clock_step()
        quiet = PRUNE_QUIET_AFTER_STEP.total_seconds()
        if since is None or since >= quiet:
            return False
        events = {"changes": ("changes.prune_skipped", "entries"), "runs": ("runs.prune_skipped", "runs")}
        for kind in due:
            event, what = events[kind]
            log.warning(
                event,
                reason="clock_step",
                since_step_s=round(since),
                hint=f"the system clock was stepped {round(since / 3600, 1)} h ago (daemon.clock_step): "
                "the retention does not prune within 24 hours of a step, as its cut-off comes from the "
                f"clock and {what} written while it was wrong carry wrong times. Nothing was "
                "deleted; the daily prune goes on once the clock has held for a day. Check the server's "
                "time synchronisation (timedatectl, chrony / NTP)",
            )
        return True

    # ------------------------------------------------------------------ configuration

    def _adopt(self, app: AppConfig, times: dict[str, RunTimes] | None = None) -> None:
        """Metrics series, run book and authorization gauges for the datasets of ``app`` (already
        ``self.app``): a run of a removed dataset that ends later records nothing (:meth:`run_job`).
        Only scheduled datasets count for health (the run book forgets one taken out of service) and
        have the last-run / last-success gauges, which start from ``times`` (the runs table; None:
        unreadable, the gauges keep what they show)."""
        scheduled = frozenset(schedules_of(app))
        with self._adopt_lock:
            self._scheduled = scheduled
            for name in self.metrics.datasets - set(app.datasets):
                self.metrics.forget_dataset(name)
            for name in app.datasets:
                self.metrics.register_dataset(name)
                self._set_days_left(app, name)
                last = None if times is None else times.get(name)
                if name not in scheduled:
                    self.metrics.clear_run_times(name)
                elif last is not None:
                    self.metrics.restore_run_times(
                        name, last_run=_unix(last.finished), last_success=_unix(last.succeeded)
                    )
            self.book.track(scheduled)

    def _read_run_times(self, app: AppConfig) -> dict[str, RunTimes] | None:
        """Every dataset's latest runs from the runs table, waiting at most :data:`RUN_TIMES_TIMEOUT`
        (never under the scheduler's lock: its thread would stop, and the heartbeat with it). None,
        logged, when they cannot be read: the start or reload goes on without them."""
        try:
            return self.store.run_times(timeout=RUN_TIMES_TIMEOUT)
        except TargetError as exc:
            log.warning(
                "schedule.last_run_unknown",
                error=str(exc),
                datasets=sorted(schedules_of(app)),
                hint="the last runs could not be read from the runs table, so datasets added now are "
                "planned from their schedule alone: an interval dataset first runs one `every` from now, "
                "a cron dataset at its next time; syncd_last_run_timestamp_seconds and "
                "syncd_last_success_timestamp_seconds show only runs of this process. Nothing else is "
                "affected; check the target database if this repeats",
            )
            return None

    def _set_days_left(self, app: AppConfig, name: str) -> None:
        ds = app.datasets.get(name)
        if ds is not None:
            today = datetime.now(UTC).astimezone(ZoneInfo(app.timezone)).date()
            self.metrics.set_authorization_days(name, (ds.authorization.valid_until - today).days)

    def reload(self) -> bool:
        """Re-read and validate the configuration; apply it whole, or keep the old one. True when applied."""
        self.notifier.reloading("reloading the configuration")
        log.info("config.reloading", config=str(self.config_path))
        try:
            new = load_config(self.config_path)
            if new.target != self.app.target:
                raise ValueError("the target section changed; restart syncd to use another target database")
        except (ConfigError, ValueError) as exc:
            issues = [str(i) for i in exc.issues] if isinstance(exc, ConfigError) else [str(exc)]
            log.error("config.reload_failed", config=str(self.config_path), errors=len(issues), issues=issues)
            self.metrics.config_reloaded(False, errors=len(issues))
            self.book.reload_problem = (
                f"reload failed with {len(issues)} error(s), running the previous configuration: {issues[0]}"
            )
            self.notifier.ready(self._status())
            return False
        restart_only = [
            k for k in ("daemon", "timezone", "logging") if getattr(new, k) != getattr(self.app, k)
        ]
        if restart_only:  # they apply at the next restart, whole: the running ones stay in force
            new = new.model_copy(update={k: getattr(self.app, k) for k in restart_only})
        times = self._read_run_times(new)  # before the scheduler's lock is taken (apply)
        self.app = new
        plan = self.scheduler.apply(schedules_of(new), _started(times))
        self._schedule_retention(new)
        self._adopt(new, times)
        self.metrics.config_reloaded(True)
        self.book.reload_problem = None
        log.info(
            "config.reloaded",
            config=str(self.config_path),
            datasets=len(new.datasets),
            added=plan.added,
            removed=plan.removed,
            rescheduled=plan.rescheduled,
        )
        if restart_only:
            log.warning(
                "config.restart_needed", sections=restart_only, hint="these take effect after a restart"
            )
        self.notifier.ready(self._status())
        return True

    # ------------------------------------------------------------------ reporting

    def _status(self) -> str:
        return self.book.status_line(len(self.scheduler.datasets))

    def health(self) -> tuple[bool, dict[str, Any]]:
        problem = self._target_problem
        if problem is not None:  # still starting: the scheduler has no heartbeat yet
            return False, {"reasons": [f"waiting for the target database: {problem}"]}
        ok, details = self.book.health(
            self.scheduler.heartbeat_age(), self.app.daemon.heartbeat_timeout.total_seconds()
        )
        return ok, dict(details)
