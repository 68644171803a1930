"""The dataset scheduler: APScheduler 3 jobs built from the YAML, plus a heartbeat.

One job per scheduled dataset (id = dataset name) in a :class:`MemoryJobStore` — nothing is
pickled, the YAML is the only source of jobs. Every trigger gets the configured time zone
explicitly; every job has ``coalesce=True`` (a backlog of missed runs becomes one run),
``max_instances=1`` (never two runs of one dataset at once in this process) and a generous
``misfire_grace_time`` (APScheduler's default of 1 s silently skips a run that starts late, e.g.
because every worker was busy). Dataset runs share a pool of ``max_concurrent`` worker threads;
the heartbeat has an executor of its own so busy workers never delay it.

A job added when the daemon starts (or a reload adds a dataset) takes the dataset's last run into
account (the ``last_started`` times given to :meth:`DatasetScheduler.apply`, which the daemon reads
from the runs table beforehand: any node, also ``syncd sync``; the scheduler itself never waits on a
database), so a restart never starves a dataset: an interval dataset runs ``every`` after its last
run started, at once when that is past or it never ran; a cron dataset whose scheduled time passed
since its last run (the daemon was down at 02:00) runs at once, and otherwise waits for its next
scheduled time, as does a cron dataset that never ran (cron is chosen for the hours the gateway
allows). A last run that started after now (more than :data:`FUTURE_TOLERANCE`: stamped by a clock
that was ahead, typically a hardware clock in Beijing time read as UTC until NTP corrected it) says
nothing of when the dataset really ran: it runs at once (``schedule.last_run_in_future``). With no
times given (the runs could not be read), a new job takes its trigger's first time. A catch-up run starts
within the schedule's ``jitter`` (or :data:`CATCH_UP_SPREAD`), so many datasets due after a long
stop do not all hit the gateway in the same second (an interval dataset within one interval at
most, when that is shorter).

Besides the datasets, :meth:`DatasetScheduler.set_daily` keeps the daemon's own daily jobs (the
retention of the change feed and of the runs table, :data:`PRUNE_JOB`): ids starting with
``syncd:``, which no dataset name can, in an executor of their own (one thread), so they never
take a dataset's worker.

The heartbeat proves the scheduler thread still dispatches jobs: :meth:`heartbeat_age` grows
when it stops (DESIGN §6: a job-store error can kill the thread while the scheduler still says
RUNNING), and :attr:`alive` checks the thread itself.

Clock steps. APScheduler plans on the wall clock: when the system clock is stepped (NTP correcting
a bad RTC, a VM restored from a snapshot, ``date -s``) its jobs keep the times computed before.
Stepped back an hour, every job, the heartbeat too, would wait an extra hour (the daemon then exited
as ``daemon.scheduler_dead``); stepped forward, the jobs it jumped over would be skipped as missed.
Before each look for due jobs the scheduler thread compares the wall clock with a clock that no one
sets (``CLOCK_BOOTTIME``, which also counts a suspend, so a suspended machine is not a step) and,
when they moved apart by :data:`CLOCK_STEP_THRESHOLD` or more since the last look, re-arms the jobs
(:meth:`DatasetScheduler.check_clock`, logged as ``daemon.clock_step``):

* stepped back: an interval job runs as much later as it would have (its next run time moves back by
  the step); a cron job gets its next time in the new wall time (a cron time the clock went back over
  comes again and its run is repeated: harmless, an unchanged row is not written again);
* stepped forward: a job whose time the clock jumped over runs once now, within the catch-up spread,
  as after a restart (it would otherwise be skipped as missed); later ones keep their time. Not the
  daemon's own daily jobs (the retention): one the clock jumped over takes its next
  time in the new clock, as if the day had passed without it. A clock set wrong forward would
  otherwise make the retention run at once, with a cut-off computed from the wrong time.

:meth:`DatasetScheduler.since_clock_step` says how long ago the last step was noticed (on the steady
clock): the daemon does not prune the change feed nor the runs table within a day of one
(:mod:`syncd.daemon.service`).
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta, tzinfo
from typing import Any
from zoneinfo import ZoneInfo

import structlog
from apscheduler.events import EVENT_JOB_MAX_INSTANCES, EVENT_JOB_MISSED, JobEvent
from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.jobstores.memory import MemoryJobStore
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

from syncd.config.model import CronSchedule, IntervalSchedule
from syncd.daemon.cron import cron_trigger
from syncd.daemon.interval import GridIntervalTrigger
from syncd.targets.history import FUTURE_TOLERANCE

__all__ = [
    "CLOCK_STEP_THRESHOLD",
    "HEARTBEAT_JOB",
    "PRUNE_JOB",
    "DatasetScheduler",
    "SchedulePlan",
    "build_trigger",
]

log = structlog.get_logger(__name__)

HEARTBEAT_JOB = "syncd:heartbeat"
PRUNE_JOB = "syncd:changes-prune"
_OWN_JOBS = "syncd:"  # the prefix of the daemon's own jobs: a dataset name cannot hold a colon
Schedule = CronSchedule | IntervalSchedule
CATCH_UP_SPREAD = timedelta(seconds=30)
"""Catch-up runs of datasets without a ``jitter`` start within this long after they are due (an
interval dataset within one interval, when that is shorter)."""
CLOCK_STEP_THRESHOLD = timedelta(seconds=2)
"""A wall clock that moved this much (or more) against the steady clock between two looks of the
scheduler is a step: the jobs are re-armed (module docstring). Slewing (NTP's gradual correction,
at most 0.5 ms a second) stays far below."""


def _steady() -> float:
    """Seconds on a clock that is never set: ``CLOCK_BOOTTIME`` (Linux: it runs on while the machine
    is suspended, as the wall clock does), else the monotonic clock."""
    boottime = getattr(time, "CLOCK_BOOTTIME", None)
    return time.clock_gettime(boottime) if boottime is not None else time.monotonic()


class _CheckedScheduler(BackgroundScheduler):  # type: ignore[misc] # APScheduler 3 has no type hints
    """A BackgroundScheduler that calls ``before_processing()`` each time its thread is about to look
    for due jobs (APScheduler 3 has no hook there; ``_process_jobs`` is the one method its thread
    calls on each wake-up). An exception of the hook is logged and never kills the thread."""

    def __init__(self, before_processing: Callable[[], object], **options: Any) -> None:
        self._before_processing = before_processing
        super().__init__(**options)

    def _process_jobs(self) -> float | None:
        try:
            self._before_processing()
        except Exception as exc:  # the scheduler thread must survive: the jobs still run
            log.error("daemon.clock_check_failed", error=f"{type(exc).__name__}: {exc}", exc_info=True)
        wait: float | None = super()._process_jobs()
        return wait


def build_trigger(schedule: Schedule, timezone: str | tzinfo) -> BaseTrigger:
    """The APScheduler trigger of a dataset's schedule, always in ``timezone``."""
    zone = ZoneInfo(timezone) if isinstance(timezone, str) else timezone
    jitter = int(schedule.jitter.total_seconds()) if schedule.jitter else None
    if isinstance(schedule, CronSchedule):
        trigger = cron_trigger(schedule.cron, zone)
        trigger.jitter = jitter
        return trigger
    # each run's jitter from its planned time, not from the previous jittered one (syncd.daemon.interval)
    return GridIntervalTrigger(seconds=schedule.every.total_seconds(), timezone=zone, jitter=jitter)


@dataclass(frozen=True)
class SchedulePlan:
    """What :meth:`DatasetScheduler.apply` changed."""

    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    rescheduled: list[str] = field(default_factory=list)


class DatasetScheduler:
    """A BackgroundScheduler running ``run_fn(dataset)`` on each dataset's schedule."""

    def __init__(
        self,
        run_fn: Callable[[str], None],
        *,
        timezone: str,
        max_concurrent: int = 4,
        misfire_grace_time: timedelta = timedelta(minutes=10),
        heartbeat_interval: timedelta = timedelta(seconds=10),
        on_heartbeat: Callable[[], None] | None = None,
        on_skipped: Callable[[str, str], None] | None = None,
        clock_step_threshold: timedelta = CLOCK_STEP_THRESHOLD,
    ) -> None:
        """``on_skipped(dataset, outcome)`` hears of each scheduled run that did not start
        (``skipped_running`` or ``skipped_missed``, see :meth:`_skipped`)."""
        self._run_fn = run_fn
        self._on_skipped = on_skipped
        self._zone = ZoneInfo(timezone)
        self._grace = max(1, int(misfire_grace_time.total_seconds()))
        self._beat_every = heartbeat_interval.total_seconds()
        self._on_heartbeat = on_heartbeat
        self._schedules: dict[str, Schedule] = {}
        self._lock = threading.RLock()  # the schedules, and the jobs' times (apply, check_clock)
        self._last_beat = time.monotonic()
        self._step_threshold = clock_step_threshold.total_seconds()
        self._clock_offset = self._wall_offset()
        self._stepped_at: float | None = None  # _steady() when the last step was noticed
        self._scheduler = _CheckedScheduler(
            self.check_clock,
            jobstores={"default": MemoryJobStore()},
            executors={
                "default": ThreadPoolExecutor(max_concurrent),
                "heartbeat": ThreadPoolExecutor(1),
                "maintenance": ThreadPoolExecutor(1),
            },
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": self._grace},
            timezone=self._zone,
            daemon=True,
        )
        self._scheduler.add_listener(self._skipped, EVENT_JOB_MAX_INSTANCES | EVENT_JOB_MISSED)

    # ------------------------------------------------------------------ life cycle

    def start(self) -> None:
        self._beat()
        with self._lock:
            self._clock_offset = self._wall_offset()  # a step before the start is no step for the jobs
        self._scheduler.add_job(
            self._beat,
            IntervalTrigger(seconds=self._beat_every, timezone=self._zone),
            id=HEARTBEAT_JOB,
            name=HEARTBEAT_JOB,
            executor="heartbeat",
        )
        self._scheduler.start()

    def shutdown(self) -> None:
        """Stop dispatching; running jobs go on (the daemon waits for them with its own timeout)."""
        if self._scheduler.running:
            self._scheduler.shutdown(wait=False)

    @property
    def alive(self) -> bool:
        """The scheduler says it runs AND its thread is alive."""
        thread: threading.Thread | None = getattr(self._scheduler, "_thread", None)
        return bool(self._scheduler.running and thread is not None and thread.is_alive())

    def heartbeat_age(self) -> float:
        """Seconds since the heartbeat job last ran."""
        return time.monotonic() - self._last_beat

    def _job(self, name: str) -> None:
        """Every dataset job starts and ends with an empty log context: worker threads are reused,
        and a context variable bound by one run must never show up in the next one's log lines."""
        structlog.contextvars.clear_contextvars()
        try:
            self._run_fn(name)
        finally:
            structlog.contextvars.clear_contextvars()

    def _skipped(self, event: JobEvent) -> None:
        """A scheduled run that did not start. APScheduler's own warning says only that a job was
        skipped or missed; this names the dataset, why, and what to change, for the log and the
        ``syncd_runs_total`` outcomes. Still running: the dataset's previous run had not ended
        (``max_instances=1``). Missed: it was due more than ``misfire_grace_time`` ago when a
        worker became free (every worker busy, the machine suspended, the clock stepped)."""
        name = event.job_id
        if name.startswith(_OWN_JOBS):  # a stalled heartbeat shows in heartbeat_age; a daily job runs again
            return
        times = getattr(event, "scheduled_run_times", None) or [getattr(event, "scheduled_run_time", None)]
        due = times[-1]
        if event.code == EVENT_JOB_MAX_INSTANCES:
            outcome = "skipped_running"
            hint = (
                "the dataset's previous run had not finished: a run takes longer than its schedule "
                "allows; give it a longer interval (or cron) if this repeats"
            )
        else:
            outcome = "skipped_missed"
            hint = (
                f"it could not start within daemon.misfire_grace_time ({self._grace} s) of its time: "
                "every worker was busy (daemon.max_concurrent_runs) or the machine was suspended; "
                "the next run of the dataset reads what this one would have"
            )
        log.warning(
            "schedule.skipped",
            dataset=name,
            outcome=outcome,
            due=due.isoformat() if isinstance(due, datetime) else None,
            hint=hint,
        )
        if self._on_skipped is not None:
            self._on_skipped(name, outcome)

    # ------------------------------------------------------------------ clock steps

    def _now(self) -> datetime:
        return datetime.now(self._zone)

    def _wall_offset(self) -> float:
        return self._now().timestamp() - _steady()

    def check_clock(self) -> float | None:
        """Re-arm the jobs when the wall clock was stepped since the last check (module docstring);
        the step in seconds (negative: back), or None. The scheduler thread calls it before each look
        for due jobs, :meth:`apply` before it adds jobs."""
        with self._lock:
            offset = self._wall_offset()
            step, self._clock_offset = offset - self._clock_offset, offset
            if abs(step) < self._step_threshold:
                return None
            self._stepped_at = _steady()
            now = self._now()
            moved: dict[str, str] = {}
            for job in self._scheduler.get_jobs():
                when = self._rearmed(job, step, now)
                if when is not None:
                    self._scheduler.modify_job(job.id, next_run_time=when)
                    if job.id != HEARTBEAT_JOB:
                        moved[job.id] = when.isoformat()
        log.warning(
            "daemon.clock_step",
            step_s=round(step, 1),
            now=now.isoformat(),
            rescheduled=moved,
            hint=(
                "the system clock was set back; interval datasets keep their pace, cron datasets "
                "follow the new time"
                if step < 0
                else "the system clock was set forward; datasets whose time it jumped over run now"
            )
            + "; no retention (changes.retention_days, runs.retention_days) runs within 24 hours of a "
            "step: check "
            "the server's time synchronisation (NTP, 时钟同步) if this repeats",
        )
        return step

    def since_clock_step(self) -> float | None:
        """Seconds since :meth:`check_clock` last noticed a step (on the steady clock, so a step does
        not shift it); None when it never did."""
        stepped = self._stepped_at
        return None if stepped is None else _steady() - stepped

    def _rearmed(self, job: Any, step: float, now: datetime) -> datetime | None:
        """The next run time of ``job`` after a clock step of ``step`` seconds, or None to keep it."""
        old: datetime | None = job.next_run_time
        if old is None:  # paused
            return None
        if step > 0 and old > now:  # forward, not jumped over
            return None
        if step < 0 and isinstance(job.trigger, IntervalTrigger):  # back: interval jobs keep their pace
            return max(now, old + timedelta(seconds=step))
        if job.id == HEARTBEAT_JOB:
            return now
        schedule = self._schedules.get(job.id)
        if step < 0 or schedule is None:
            # back: a cron job follows the new wall time; forward: the daemon's own daily job the clock
            # jumped over is never caught up (module docstring), it takes its next time in the new clock
            when: datetime | None = job.trigger.get_next_fire_time(None, now)
            return when
        return self._catch_up(schedule, now)

    def _beat(self) -> None:
        self._last_beat = time.monotonic()
        if self._on_heartbeat is not None:
            self._on_heartbeat()

    # ------------------------------------------------------------------ jobs

    def apply(
        self, schedules: Mapping[str, Schedule], last_started: Mapping[str, datetime] | None = None
    ) -> SchedulePlan:
        """Make the jobs match ``schedules`` exactly: add, remove and reschedule. A job added plans its
        first run from ``last_started`` (when each dataset's latest run started; a dataset missing
        never ran), or from its trigger alone when that is None (module docstring). Read no database
        under ``self._lock``: the scheduler thread takes it before each look for due jobs."""
        plan = SchedulePlan()
        with self._lock:
            self.check_clock()  # the jobs already there follow a step before new ones are planned
            for name in sorted(set(self._schedules) - set(schedules)):
                self._scheduler.remove_job(name)
                del self._schedules[name]
                plan.removed.append(name)
            for name, schedule in sorted(schedules.items()):
                old = self._schedules.get(name)
                if old == schedule:
                    continue
                trigger = build_trigger(schedule, self._zone)
                if old is None:
                    first = None if last_started is None else self._first_run(
                        name, schedule, trigger, last_started.get(name)
                    )
                    when = {} if first is None else {"next_run_time": first}
                    self._scheduler.add_job(
                        self._job, trigger, args=[name], id=name, name=name, executor="default", **when
                    )
                    plan.added.append(name)
                else:
                    self._scheduler.reschedule_job(name, trigger=trigger)
                    plan.rescheduled.append(name)
                self._schedules[name] = schedule
        return plan

    def _first_run(
        self, name: str, schedule: Schedule, trigger: BaseTrigger, last: datetime | None
    ) -> datetime | None:
        """The first run time of a job added now, from when the dataset's last run started (module
        docstring); None leaves it to the trigger."""
        now = self._now()
        catch_up = self._catch_up(schedule, now)
        if last is not None and last > now + FUTURE_TOLERANCE:
            log.warning(
                "schedule.last_run_in_future",
                dataset=name,
                last_started=last.isoformat(),
                now=now.isoformat(),
                first_run=catch_up.isoformat(),
                hint="the runs table holds a run of this dataset that started after now: the clock was "
                "ahead when it ran (often a hardware clock kept in Beijing time and read as UTC, until "
                "NTP corrected it); the dataset runs now instead of waiting for that time. Check the "
                "server's time synchronisation (timedatectl, chrony / NTP) and that the hardware clock "
                "is in UTC (timedatectl set-local-rtc 0)",
            )
            return catch_up
        if isinstance(schedule, IntervalSchedule):
            due = None if last is None else last.astimezone(self._zone) + schedule.every
            first = catch_up if due is None or due <= now else due
        else:
            if last is None:
                return None
            missed = trigger.get_next_fire_time(None, last.astimezone(self._zone))
            if missed is None or missed > now:
                return None
            first = catch_up
        log.info(
            "schedule.first_run",
            dataset=name,
            last_started=None if last is None else last.isoformat(),
            first_run=first.isoformat(),
            catch_up=first is catch_up,
        )
        return first

    @staticmethod
    def _catch_up(schedule: Schedule, now: datetime) -> datetime:
        """A run "at once" of a dataset that is overdue: within its jitter (or :data:`CATCH_UP_SPREAD`,
        an interval dataset within one interval at most) after ``now``."""
        spread = (schedule.jitter or CATCH_UP_SPREAD).total_seconds()
        if isinstance(schedule, IntervalSchedule):  # a short interval starts within one interval
            spread = min(spread, schedule.every.total_seconds())
        return now + timedelta(seconds=random.uniform(0, spread))  # noqa: S311 - spreading, not security

    def next_run_times(self) -> dict[str, datetime | None]:
        """Next fire time of every dataset job (None while paused)."""
        out: dict[str, datetime | None] = {}
        for job in self._scheduler.get_jobs():
            if not job.id.startswith(_OWN_JOBS):
                out[job.id] = job.next_run_time
        return out

    def set_daily(self, job_id: str, fn: Callable[[], None], at: tuple[int, int] | None) -> datetime | None:
        """Run ``fn`` every day at ``at`` (hour, minute) in the configured zone, in the maintenance
        executor; ``at`` None removes the job. Returns the next run time (None: no job). Setting the
        same time again leaves the job alone."""
        if not job_id.startswith(_OWN_JOBS):
            raise ValueError(f"the daemon's own job ids start with {_OWN_JOBS!r}: {job_id!r}")
        with self._lock:
            job = self._scheduler.get_job(job_id)
            if at is None:
                if job is not None:
                    self._scheduler.remove_job(job_id)
                return None
            hour, minute = at
            trigger = CronTrigger(hour=hour, minute=minute, timezone=self._zone)
            if job is None:
                job = self._scheduler.add_job(fn, trigger, id=job_id, name=job_id, executor="maintenance")
            elif str(job.trigger) != str(trigger):
                job = self._scheduler.reschedule_job(job_id, trigger=trigger)
            when: datetime | None = getattr(job, "next_run_time", None)  # a pending job has none yet
            if when is None and not self._scheduler.running:  # computed when the scheduler starts
                when = trigger.get_next_fire_time(None, datetime.now(self._zone))
            return when

    @property
    def datasets(self) -> list[str]:
        with self._lock:
            return sorted(self._schedules)

    def job_options(self, name: str) -> dict[str, Any]:
        """The options APScheduler holds for a job (for tests and diagnostics)."""
        job = self._scheduler.get_job(name)
        if job is None:
            raise KeyError(name)
        return {
            "coalesce": job.coalesce,
            "max_instances": job.max_instances,
            "misfire_grace_time": job.misfire_grace_time,
            "trigger": job.trigger,
        }
