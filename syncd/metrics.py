"""Prometheus metrics of the syncd daemon.

:class:`Metrics` owns its own :class:`~prometheus_client.CollectorRegistry` (never the global
one, so tests and several instances never collide) and is what ``GET /metrics`` renders (see
:mod:`syncd.daemon.http`). Exported series (all ``dataset``-labelled unless noted):

=========================================== =========  ==============================================
``syncd_runs_total{dataset,outcome}``       counter    outcome: success | failed | refused | interrupted
                                                       (cut off by a stop: ended between batches) |
                                                       skipped_locked | skipped_running | skipped_missed
                                                       (scheduled runs that did not start:
                                                       :meth:`run_skipped`)
``syncd_rows_total{dataset,op}``            counter    op: insert | update | delete | unchanged (what
                                                       committed, interrupted runs included)
``syncd_quarantined_records_total``         counter    records sent to quarantine (隔离区)
``syncd_upstream_requests_total``           counter    HTTP requests made to the gateway
``syncd_upstream_retries_total``            counter    of which were retries
``syncd_run_duration_seconds``              histogram  runs that did work (success and failed; not
                                                       interrupted ones, cut short by the stop)
``syncd_last_success_timestamp_seconds``    gauge      Unix time of the last successful run
``syncd_last_run_timestamp_seconds``        gauge      Unix time of the last run (any outcome but
                                                       the skipped ones)
``syncd_watermark_lag_seconds``             gauge      how far the data lags behind now (freshness)
``syncd_authorization_remaining_seconds``   gauge      time until the authorization (授权) expires, in
                                                       whole days × 86400 (negative once expired)
``syncd_changes_pruned_total``              counter    change-feed entries deleted by the daemon's
                                                       retention (``changes.retention_days``)
``syncd_runs_pruned_total``                 counter    records of runs deleted by the daemon's
                                                       retention (``runs.retention_days``)
``syncd_config_reload_success``             gauge      no label: 1 after a good reload, 0 after a bad one
``syncd_config_reload_timestamp_seconds``   gauge      no label: time of the last reload attempt
``syncd_config_errors``                     gauge      no label: positioned errors of the last bad reload
``syncd_heartbeat_timestamp_seconds``       gauge      no label: last heartbeat of the scheduler
``syncd_build_info{version,python,source}`` gauge      no ``dataset`` label; always 1; ``source``:
                                                       :data:`syncd.build.SOURCE_DIGEST`
``process_resident_memory_bytes``, ``process_open_fds`` …  the standard process series of
                                                       prometheus_client (RSS, open files, CPU time,
                                                       start time): a daemon running for years is
                                                       watched for slow growth with them
=========================================== =========  ==============================================

``observe_run(result)`` takes any object shaped like :class:`syncd.runner.RunResult` (duck type):

* ``result.dataset: str``, ``result.status: str`` (one of :data:`OUTCOMES`), ``result.duration: float``
  (seconds) and ``result.counts`` — all required;
* ``counts.inserted / updated / deleted / unchanged / quarantined / requests / retries`` — ints,
  each read with ``getattr(counts, name, 0)``, so a missing one counts as 0;
* ``result.warnings`` — optional, a sequence; its length is added to the warnings counter;
* ``result.freshness_lag_s: float | None`` and ``result.days_left: int | None`` — optional
  (``getattr(result, name, None)``); when present and not None they set the two gauges.

Two deliberate deviations from prometheus_client defaults: the ``*_created`` series that it
adds to every counter and histogram are not exported (to Prometheus' text format they are just
extra gauge series — one more per label set, for hundreds of datasets); and the authorization
gauge is in seconds, not days, because ``promtool check metrics`` requires base units (alert
with ``syncd_authorization_remaining_seconds < 30 * 86400``).

When the daemon loads its configuration it should call :meth:`Metrics.register_dataset` for each
dataset (so every counter exists at 0 before the first run and ``rate()``/``increase()`` see the
first increment) and :meth:`Metrics.forget_dataset` for each dataset removed by a reload.

The two timestamp gauges outlive the process through the runs table: at start and on each reload the
daemon gives each scheduled dataset's latest run and success from there (any node, also ``syncd
sync``) to :meth:`Metrics.restore_run_times`, so a stale-data alert on
``syncd_last_success_timestamp_seconds`` keeps firing across restarts; a dataset no longer scheduled
loses both (:meth:`Metrics.clear_run_times`), as a dataset that never ran has none.
"""

from __future__ import annotations

import platform
import threading
import time
from collections.abc import Callable, Iterator
from typing import Final, Protocol

import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, generate_latest
from prometheus_client.metrics_core import Metric

from syncd import __version__
from syncd.build import SOURCE_DIGEST

__all__ = ["CONTENT_TYPE", "DURATION_BUCKETS", "OPS", "OUTCOMES", "Metrics", "RunResultLike"]

log = structlog.get_logger(__name__)

#: Content type of :meth:`Metrics.render` (text exposition format 0.0.4, read by every Prometheus).
CONTENT_TYPE: Final = CONTENT_TYPE_PLAIN_0_0_4

OUTCOMES: Final = (
    "success", "failed", "refused", "interrupted", "skipped_locked", "skipped_running", "skipped_missed"
)
OPS: Final = ("insert", "update", "delete", "unchanged")
#: Run durations from 0.1 s (an empty incremental pull) to 1 h (a full snapshot of 10⁷ rows).
DURATION_BUCKETS: Final = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1200, 1800, 3600)

_COUNT_FIELDS: Final = (("insert", "inserted"), ("update", "updated"), ("delete", "deleted"),
                        ("unchanged", "unchanged"))
_DID_WORK: Final = frozenset({"success", "failed"})
_SECONDS_PER_DAY: Final = 86400


class _WithoutCreated:
    """Collector exposing another registry's metrics without their ``*_created`` samples."""

    def __init__(self, source: CollectorRegistry) -> None:
        self._source = source

    def collect(self) -> Iterator[Metric]:
        for metric in self._source.collect():
            kept = Metric(metric.name, metric.documentation, metric.type, metric.unit)
            kept.samples = [s for s in metric.samples if not s.name.endswith("_created")]
            yield kept


class RunResultLike(Protocol):
    """The attributes :meth:`Metrics.observe_run` requires (optional ones are read with getattr)."""

    @property
    def dataset(self) -> str: ...
    @property
    def status(self) -> str: ...
    @property
    def duration(self) -> float: ...
    @property
    def counts(self) -> object: ...


class Metrics:
    """The daemon's metrics, in a registry of their own. Thread-safe (prometheus_client locks)."""

    def __init__(self, *, version: str = __version__, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._datasets: set[str] = set()
        self._times: dict[tuple[str, str], float] = {}  # ("run" | "success", dataset) -> the time shown
        reg = CollectorRegistry(auto_describe=True)  # where the metric objects live
        #: what is exported: ``reg`` without the ``*_created`` series
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_WithoutCreated(reg))
        ds = ("dataset",)
        self.runs = Counter("syncd_runs", "Dataset runs by outcome.", ("dataset", "outcome"), registry=reg)
        self.rows = Counter(
            "syncd_rows", "Target rows by operation (insert/update/delete/unchanged).",
            ("dataset", "op"), registry=reg,
        )
        self.quarantined = Counter(
            "syncd_quarantined_records", "Upstream records sent to quarantine (隔离区).", ds, registry=reg
        )
        self.upstream_requests = Counter(
            "syncd_upstream_requests", "Requests made to the upstream gateway.", ds, registry=reg
        )
        self.upstream_retries = Counter(
            "syncd_upstream_retries", "Upstream requests that were retries.", ds, registry=reg
        )
        self.run_warnings = Counter(
            "syncd_run_warnings",
            "Warnings of finished runs: upstream total changed while paging (the window read again), "
            "snapshot deletes deferred, totals that do not match, an authorization about to expire.",
            ds, registry=reg,
        )
        self.run_duration = Histogram(
            "syncd_run_duration_seconds", "Duration of dataset runs that did work (success or failed).",
            ds, buckets=DURATION_BUCKETS, registry=reg,
        )
        self.last_success = Gauge(
            "syncd_last_success_timestamp_seconds", "Unix time of the last successful run.", ds, registry=reg
        )
        self.last_run = Gauge(
            "syncd_last_run_timestamp_seconds",
            "Unix time of the last run on this node, whatever its outcome (skipped runs excepted).",
            ds, registry=reg,
        )
        self.watermark_lag = Gauge(
            "syncd_watermark_lag_seconds", "How far the synced data lags behind the current time.", ds,
            registry=reg,
        )
        self.changes_pruned = Counter(
            "syncd_changes_pruned",
            "Change-feed entries deleted by the daemon's retention (changes.retention_days).",
            ds, registry=reg,
        )
        self.runs_pruned = Counter(
            "syncd_runs_pruned",
            "Records of runs deleted by the daemon's retention (runs.retention_days).",
            ds, registry=reg,
        )
        self.authorization_remaining = Gauge(
            "syncd_authorization_remaining_seconds",
            "Time until the dataset's authorization (授权) expires, in whole days (x 86400).",
            ds, registry=reg,
        )
        self.config_reload_success = Gauge(
            "syncd_config_reload_success", "1 when the last configuration (re)load succeeded, else 0.",
            registry=reg,
        )
        self.config_reload_timestamp = Gauge(
            "syncd_config_reload_timestamp_seconds", "Unix time of the last configuration (re)load attempt.",
            registry=reg,
        )
        self.config_errors = Gauge(
            "syncd_config_errors", "Number of configuration errors found by the last failed (re)load.",
            registry=reg,
        )
        self.heartbeat_timestamp = Gauge(
            "syncd_heartbeat_timestamp_seconds", "Unix time of the scheduler's last heartbeat.", registry=reg
        )
        self.build_info = Gauge(
            "syncd_build_info",
            "syncd build information (source: digest of its source files, as syncd --version); always 1.",
            ("version", "python", "source"),
            registry=reg,
        )
        self.build_info.labels(version=version, python=platform.python_version(), source=SOURCE_DIGEST).set(1)
        ProcessCollector(registry=reg)  # process_resident_memory_bytes, process_open_fds, … (Linux)

    # ------------------------------------------------------------------ datasets

    def register_dataset(self, name: str) -> None:
        """Create the dataset's counters at 0 (idempotent); call when the config is (re)loaded."""
        with self._lock:
            if name in self._datasets:
                return
            self._datasets.add(name)
        for outcome in OUTCOMES:
            self.runs.labels(name, outcome)
        for op in OPS:
            self.rows.labels(name, op)
        for counter in (
            self.quarantined, self.upstream_requests, self.upstream_retries, self.run_warnings,
            self.changes_pruned, self.runs_pruned,
        ):
            counter.labels(name)
        self.run_duration.labels(name)

    def forget_dataset(self, name: str) -> None:
        """Remove every series of a dataset (it was removed from the configuration)."""
        with self._lock:
            self._datasets.discard(name)
        for outcome in OUTCOMES:
            self.runs.remove(name, outcome)
        for op in OPS:
            self.rows.remove(name, op)
        for metric in (
            self.quarantined, self.upstream_requests, self.upstream_retries, self.run_warnings,
            self.changes_pruned, self.runs_pruned, self.run_duration, self.watermark_lag,
            self.authorization_remaining,
        ):
            metric.remove(name)
        self.clear_run_times(name)

    @property
    def datasets(self) -> frozenset[str]:
        """Names of the datasets that currently have series."""
        with self._lock:
            return frozenset(self._datasets)

    # ------------------------------------------------------------------ runs

    def observe_run(self, result: RunResultLike) -> None:
        """Record one finished run (see the module docstring for the duck type)."""
        name: str = result.dataset
        status: str = result.status
        if status not in OUTCOMES:
            log.warning("metrics.unknown_outcome", dataset=name, outcome=status, known=list(OUTCOMES))
        self.register_dataset(name)
        self.runs.labels(name, status).inc()
        counts = result.counts
        for op, attr in _COUNT_FIELDS:
            n = getattr(counts, attr, 0) or 0
            if n:
                self.rows.labels(name, op).inc(n)
        for counter, attr in (
            (self.quarantined, "quarantined"),
            (self.upstream_requests, "requests"),
            (self.upstream_retries, "retries"),
        ):
            n = getattr(counts, attr, 0) or 0
            if n:
                counter.labels(name).inc(n)
        warnings = len(getattr(result, "warnings", None) or ())
        if warnings:
            self.run_warnings.labels(name).inc(warnings)
        now = self._clock()
        if status in _DID_WORK:
            self.run_duration.labels(name).observe(max(0.0, float(result.duration)))
        if not status.startswith("skipped_"):
            self._set_time("run", name, now, later_only=False)
        if status == "success":
            self._set_time("success", name, now, later_only=False)
        lag = getattr(result, "freshness_lag_s", None)
        if lag is not None:
            self.set_watermark_lag(name, lag)
        days = getattr(result, "days_left", None)
        if days is not None:
            self.set_authorization_days(name, days)

    def restore_run_times(self, dataset: str, *, last_run: float | None, last_success: float | None) -> None:
        """The dataset's latest run and success as the runs table holds them (Unix times; None: none):
        each gauge takes its time unless it already shows a later one (a run of this process)."""
        for kind, when in (("run", last_run), ("success", last_success)):
            if when is not None:
                self._set_time(kind, dataset, when, later_only=True)

    def clear_run_times(self, dataset: str) -> None:
        """Remove the dataset's two timestamp gauges (it is no longer scheduled, or removed)."""
        with self._lock:
            for kind in ("run", "success"):
                if self._times.pop((kind, dataset), None) is not None:
                    self._time_gauge(kind).remove(dataset)

    def _time_gauge(self, kind: str) -> Gauge:
        return self.last_run if kind == "run" else self.last_success

    def _set_time(self, kind: str, dataset: str, when: float, *, later_only: bool) -> None:
        with self._lock:
            key = (kind, dataset)
            if later_only and self._times.get(key, when) > when:
                return
            self._times[key] = when
            self._time_gauge(kind).labels(dataset).set(when)

    def run_skipped(self, dataset: str, outcome: str) -> None:
        """A scheduled run that never started: ``skipped_running`` (the dataset's previous run was
        still running) or ``skipped_missed`` (it could not start within the misfire grace time)."""
        self.register_dataset(dataset)
        self.runs.labels(dataset, outcome).inc()

    def changes_pruned_by_retention(self, dataset: str, entries: int) -> None:
        """The daemon's retention deleted ``entries`` change-feed entries of a configured dataset."""
        if entries > 0 and dataset in self.datasets:  # one removed by a reload meanwhile gets no series
            self.changes_pruned.labels(dataset).inc(entries)

    def runs_pruned_by_retention(self, dataset: str, runs: int) -> None:
        """The daemon's retention deleted the records of ``runs`` runs of a configured dataset."""
        if runs > 0 and dataset in self.datasets:  # one removed by a reload meanwhile gets no series
            self.runs_pruned.labels(dataset).inc(runs)

    def set_watermark_lag(self, dataset: str, seconds: float) -> None:
        """Data freshness: seconds between now and the newest update time synced."""
        self.watermark_lag.labels(dataset).set(max(0.0, float(seconds)))

    def set_authorization_days(self, dataset: str, days: int) -> None:
        """Days left on the dataset's authorization (negative once expired), exported in seconds."""
        self.authorization_remaining.labels(dataset).set(days * _SECONDS_PER_DAY)

    # ------------------------------------------------------------------ daemon state

    def config_reloaded(self, ok: bool, errors: int = 0) -> None:
        """Record a configuration (re)load: ``ok`` and, when it failed, its number of errors."""
        self.config_reload_success.set(1 if ok else 0)
        self.config_reload_timestamp.set(self._clock())
        self.config_errors.set(0 if ok else max(0, errors))

    def heartbeat(self) -> None:
        """The scheduler is alive (called by the daemon's heartbeat job)."""
        self.heartbeat_timestamp.set(self._clock())

    # ------------------------------------------------------------------ exposition

    def render(self) -> bytes:
        """The text exposition format (content type :data:`CONTENT_TYPE`)."""
        return generate_latest(self.registry)
