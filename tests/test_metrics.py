"""Metrics (own registry, observe_run duck type) and the real /metrics + /healthz server.

The exposition is checked with ``promtool check metrics`` when promtool is available ($PROMTOOL,
PATH, or .ci/cache/prometheus from .ci/check-metrics); otherwise those tests are skipped, unless
SYNCD_REQUIRE_TOOLS=1 makes a missing tool a failure.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import socket
import subprocess
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from types import SimpleNamespace as NS
from typing import Any

import prometheus_client
import pytest
import structlog
from prometheus_client.parser import text_string_to_metric_families

from syncd import __version__
from syncd.daemon.http import DEFAULT_HOST, DEFAULT_PORT, HealthServer
from syncd.metrics import CONTENT_TYPE, OPS, OUTCOMES, Metrics
from syncd.runner import RunResult
from syncd.targets.records import RunCounts

REPO = Path(__file__).resolve().parents[1]
REQUIRE_TOOLS = os.environ.get("SYNCD_REQUIRE_TOOLS") == "1"
NOW = 1_800_000_000.0


def samples(metrics: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Parse the rendered exposition back: {(sample name, sorted labels): value}."""
    out = {}
    for family in text_string_to_metric_families(metrics.render().decode("utf-8")):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(metrics: Metrics, name: str, **labels: str) -> float | None:
    return samples(metrics).get((name, tuple(sorted(labels.items()))))


def run(dataset: str = "residents", status: str = "success", duration: float = 4.0, **extra: Any) -> NS:
    extra.setdefault(
        "counts", NS(inserted=10, updated=3, deleted=1, unchanged=86, quarantined=2, requests=5, retries=1)
    )
    return NS(dataset=dataset, status=status, duration=duration, **extra)


@pytest.fixture
def metrics() -> Metrics:
    return Metrics(clock=lambda: NOW)


def promtool() -> str:
    candidates = [
        os.environ.get("PROMTOOL"),
        shutil.which("promtool"),
        str(REPO / ".ci/cache/prometheus/usr/bin/promtool"),
    ]
    for c in candidates:
        if c and os.access(c, os.X_OK):
            return c
    msg = "promtool not found (run .ci/check-metrics once to fetch it into .ci/cache/)"
    if REQUIRE_TOOLS:
        pytest.fail(f"{msg}; SYNCD_REQUIRE_TOOLS=1 makes this a failure", pytrace=False)
    pytest.skip(msg)


def promtool_check(body: bytes) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [promtool(), "check", "metrics"], input=body.decode("utf-8"), capture_output=True, text=True,
        timeout=30, check=False,
    )


# --------------------------------------------------------------------------- Metrics


def test_successful_run(metrics: Metrics) -> None:
    metrics.observe_run(run(freshness_lag_s=90.5, days_left=30, warnings=["total changed", "deferred"]))
    s = samples(metrics)
    ds = (("dataset", "residents"),)
    assert s[("syncd_runs_total", (*ds, ("outcome", "success")))] == 1
    assert s[("syncd_runs_total", (*ds, ("outcome", "failed")))] == 0
    for op, n in {"insert": 10, "update": 3, "delete": 1, "unchanged": 86}.items():
        assert s[("syncd_rows_total", (*ds, ("op", op)))] == n
    assert s[("syncd_quarantined_records_total", ds)] == 2
    assert s[("syncd_upstream_requests_total", ds)] == 5
    assert s[("syncd_upstream_retries_total", ds)] == 1
    assert s[("syncd_run_warnings_total", ds)] == 2
    assert s[("syncd_run_duration_seconds_count", ds)] == 1
    assert s[("syncd_run_duration_seconds_sum", ds)] == 4.0
    assert s[("syncd_run_duration_seconds_bucket", (*ds, ("le", "2.5")))] == 0
    assert s[("syncd_run_duration_seconds_bucket", (*ds, ("le", "5.0")))] == 1
    assert s[("syncd_last_success_timestamp_seconds", ds)] == NOW
    assert s[("syncd_last_run_timestamp_seconds", ds)] == NOW
    assert s[("syncd_watermark_lag_seconds", ds)] == 90.5
    assert s[("syncd_authorization_remaining_seconds", ds)] == 30 * 86400


def test_counters_accumulate_over_runs(metrics: Metrics) -> None:
    metrics.observe_run(run())
    metrics.observe_run(run(duration=0.05))
    assert value(metrics, "syncd_runs_total", dataset="residents", outcome="success") == 2
    assert value(metrics, "syncd_rows_total", dataset="residents", op="insert") == 20
    assert value(metrics, "syncd_run_duration_seconds_bucket", dataset="residents", le="0.1") == 1
    assert value(metrics, "syncd_run_duration_seconds_bucket", dataset="residents", le="3600.0") == 2


def test_failed_run_updates_last_run_but_not_last_success() -> None:
    clock = iter([100.0, 200.0])
    m = Metrics(clock=lambda: next(clock))
    m.observe_run(run(status="success"))
    m.observe_run(run(status="failed"))
    assert value(m, "syncd_last_success_timestamp_seconds", dataset="residents") == 100.0
    assert value(m, "syncd_last_run_timestamp_seconds", dataset="residents") == 200.0
    assert value(m, "syncd_runs_total", dataset="residents", outcome="failed") == 1
    assert value(m, "syncd_run_duration_seconds_count", dataset="residents") == 2


def test_run_times_restored_from_the_runs_table_never_go_back(metrics: Metrics) -> None:
    """At start and on reload the daemon gives each scheduled dataset's last run and success from
    the runs table: the gauges take them, unless this process already shows a later run."""
    metrics.restore_run_times("residents", last_run=NOW - 60, last_success=NOW - 3600)
    assert value(metrics, "syncd_last_run_timestamp_seconds", dataset="residents") == NOW - 60
    assert value(metrics, "syncd_last_success_timestamp_seconds", dataset="residents") == NOW - 3600
    metrics.restore_run_times("households", last_run=NOW - 60, last_success=None)  # never succeeded
    assert value(metrics, "syncd_last_success_timestamp_seconds", dataset="households") is None
    metrics.observe_run(run(status="success"))  # at NOW
    metrics.restore_run_times("residents", last_run=NOW - 10, last_success=NOW - 10)  # a reload
    assert value(metrics, "syncd_last_run_timestamp_seconds", dataset="residents") == NOW
    assert value(metrics, "syncd_last_success_timestamp_seconds", dataset="residents") == NOW
    metrics.clear_run_times("residents")  # no longer scheduled
    assert value(metrics, "syncd_last_run_timestamp_seconds", dataset="residents") is None
    assert value(metrics, "syncd_last_success_timestamp_seconds", dataset="residents") is None
    assert value(metrics, "syncd_runs_total", dataset="residents", outcome="success") == 1
    metrics.restore_run_times("residents", last_run=NOW - 10, last_success=NOW - 10)  # scheduled again
    assert value(metrics, "syncd_last_success_timestamp_seconds", dataset="residents") == NOW - 10


def test_refused_and_skipped_runs_do_not_skew_durations(metrics: Metrics) -> None:
    metrics.observe_run(run(status="refused", duration=0.001, counts=NS(), days_left=-3))
    metrics.observe_run(run(dataset="households", status="skipped_locked", duration=0.0, counts=NS()))
    assert value(metrics, "syncd_runs_total", dataset="residents", outcome="refused") == 1
    assert value(metrics, "syncd_run_duration_seconds_count", dataset="residents") == 0
    assert value(metrics, "syncd_authorization_remaining_seconds", dataset="residents") == -3 * 86400
    assert value(metrics, "syncd_last_run_timestamp_seconds", dataset="residents") == NOW
    assert value(metrics, "syncd_runs_total", dataset="households", outcome="skipped_locked") == 1
    assert value(metrics, "syncd_run_duration_seconds_count", dataset="households") == 0
    # another node ran it: this node did not run the dataset
    assert value(metrics, "syncd_last_run_timestamp_seconds", dataset="households") is None
    assert value(metrics, "syncd_last_success_timestamp_seconds", dataset="households") is None


def test_an_interrupted_run_is_counted_with_what_it_committed(metrics: Metrics) -> None:
    """A run cut off by a stop or restart was left out of the metrics: the rows its whole batches had
    committed were missing from syncd_rows_total, and nothing showed how often stops cut runs off."""
    assert "interrupted" in OUTCOMES
    metrics.register_dataset("residents")
    assert value(metrics, "syncd_runs_total", dataset="residents", outcome="interrupted") == 0
    metrics.observe_run(run(status="interrupted", duration=12.0))
    assert value(metrics, "syncd_runs_total", dataset="residents", outcome="interrupted") == 1
    assert value(metrics, "syncd_rows_total", dataset="residents", op="insert") == 10
    assert value(metrics, "syncd_upstream_requests_total", dataset="residents") == 5
    assert value(metrics, "syncd_last_run_timestamp_seconds", dataset="residents") == NOW
    assert value(metrics, "syncd_last_success_timestamp_seconds", dataset="residents") is None
    assert value(metrics, "syncd_run_duration_seconds_count", dataset="residents") == 0  # cut short
    metrics.forget_dataset("residents")
    assert 'dataset="residents"' not in metrics.render().decode()


def test_scheduled_runs_that_never_started_are_counted_by_outcome(metrics: Metrics) -> None:
    metrics.run_skipped("residents", "skipped_running")
    metrics.run_skipped("residents", "skipped_running")
    metrics.run_skipped("households", "skipped_missed")
    assert value(metrics, "syncd_runs_total", dataset="residents", outcome="skipped_running") == 2
    assert value(metrics, "syncd_runs_total", dataset="residents", outcome="skipped_missed") == 0
    assert value(metrics, "syncd_runs_total", dataset="households", outcome="skipped_missed") == 1
    # nothing ran: no run time, no duration
    assert value(metrics, "syncd_last_run_timestamp_seconds", dataset="residents") is None
    assert value(metrics, "syncd_run_duration_seconds_count", dataset="residents") == 0


def test_duck_type_defaults(metrics: Metrics) -> None:
    # counts without attributes count as 0; optional result attributes absent → gauges absent
    metrics.observe_run(NS(dataset="bare", status="success", duration=1.0, counts=NS(inserted=None)))
    s = samples(metrics)
    assert s[("syncd_rows_total", (("dataset", "bare"), ("op", "insert")))] == 0
    assert s[("syncd_run_warnings_total", (("dataset", "bare"),))] == 0
    assert ("syncd_watermark_lag_seconds", (("dataset", "bare"),)) not in s
    assert ("syncd_authorization_remaining_seconds", (("dataset", "bare"),)) not in s


def test_observes_the_runners_real_run_result(metrics: Metrics) -> None:
    counts = RunCounts(
        fetched=7, inserted=4, updated=2, deleted=0, unchanged=1, quarantined=0,
        reported_total=7, requests=2, retries=0, pages=1,
    )
    result = RunResult(dataset="residents", run_id="r1", status="success", counts=counts, duration=2.0)
    metrics.observe_run(result)
    assert value(metrics, "syncd_rows_total", dataset="residents", op="insert") == 4
    assert value(metrics, "syncd_upstream_requests_total", dataset="residents") == 2


def test_register_dataset_creates_zero_series(metrics: Metrics) -> None:
    metrics.register_dataset("households")
    metrics.register_dataset("households")  # idempotent
    s = samples(metrics)
    ds = ("dataset", "households")
    for outcome in OUTCOMES:
        assert s[("syncd_runs_total", (ds, ("outcome", outcome)))] == 0
    for op in OPS:
        assert s[("syncd_rows_total", (ds, ("op", op)))] == 0
    assert s[("syncd_run_duration_seconds_count", (ds,))] == 0
    assert s[("syncd_run_warnings_total", (ds,))] == 0
    assert metrics.datasets == frozenset({"households"})


def test_forget_dataset_removes_all_its_series(metrics: Metrics) -> None:
    metrics.observe_run(run(dataset="residents", freshness_lag_s=1, days_left=9))
    metrics.observe_run(run(dataset="households", freshness_lag_s=1, days_left=9))
    metrics.forget_dataset("residents")
    metrics.forget_dataset("never_seen")  # harmless
    text = metrics.render().decode()
    assert 'dataset="residents"' not in text
    assert 'dataset="households"' in text
    assert metrics.datasets == frozenset({"households"})
    # a dataset that comes back starts from zero
    metrics.observe_run(run(dataset="residents"))
    assert value(metrics, "syncd_runs_total", dataset="residents", outcome="success") == 1


@pytest.mark.parametrize(
    ("series", "count"),
    [
        ("syncd_changes_pruned_total", Metrics.changes_pruned_by_retention),
        ("syncd_runs_pruned_total", Metrics.runs_pruned_by_retention),
    ],
)
def test_deletes_of_the_daemons_retention(
    metrics: Metrics, series: str, count: Callable[[Metrics, str, int], None]
) -> None:
    """Change entries (changes.retention_days) and runs (runs.retention_days) the daemon pruned."""
    metrics.register_dataset("residents")
    assert value(metrics, series, dataset="residents") == 0  # exported from the start
    count(metrics, "residents", 10_000)
    count(metrics, "residents", 345)
    assert value(metrics, series, dataset="residents") == 10_345
    count(metrics, "gone", 7)  # removed by a reload while it was pruned
    assert 'dataset="gone"' not in metrics.render().decode()
    metrics.forget_dataset("residents")
    assert f"{series}{{" not in metrics.render().decode()


def test_daemon_state_gauges(metrics: Metrics) -> None:
    metrics.config_reloaded(False, errors=3)
    assert value(metrics, "syncd_config_reload_success") == 0
    assert value(metrics, "syncd_config_errors") == 3
    assert value(metrics, "syncd_config_reload_timestamp_seconds") == NOW
    metrics.config_reloaded(True)
    assert value(metrics, "syncd_config_reload_success") == 1
    assert value(metrics, "syncd_config_errors") == 0
    metrics.heartbeat()
    assert value(metrics, "syncd_heartbeat_timestamp_seconds") == NOW
    import platform

    from syncd.build import SOURCE_DIGEST

    labels = {"version": __version__, "python": platform.python_version(), "source": SOURCE_DIGEST}
    assert value(metrics, "syncd_build_info", **labels) == 1


def test_process_series_for_long_running_watch(metrics: Metrics) -> None:
    """RSS and open files of the daemon itself: how a slow leak shows up in monitoring."""
    rss = value(metrics, "process_resident_memory_bytes")
    fds = value(metrics, "process_open_fds")
    assert rss is not None and rss > 10 * 2**20
    assert fds is not None and fds >= 3


def test_own_registry_and_no_created_series() -> None:
    a, b = Metrics(), Metrics()
    a.observe_run(run())
    assert value(b, "syncd_runs_total", dataset="residents", outcome="success") is None
    assert b"syncd_" not in prometheus_client.generate_latest(prometheus_client.REGISTRY)
    assert b"_created" not in a.render()


def test_sample_exposition_passes_promtool(metrics: Metrics) -> None:
    for outcome in OUTCOMES:
        metrics.observe_run(run(status=outcome, freshness_lag_s=12.0, days_left=100))
    metrics.register_dataset("never_ran")
    metrics.config_reloaded(True)
    metrics.heartbeat()
    result = promtool_check(metrics.render())
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


def test_promtool_rejects_a_bad_exposition() -> None:
    # proves the check above can fail: promtool wants base units and help texts
    result = promtool_check(b"# TYPE syncd_age_days gauge\nsyncd_age_days 1\n")
    assert result.returncode != 0
    assert "base unit" in result.stdout + result.stderr


def test_check_metrics_script() -> None:
    tool = promtool()
    env = {**os.environ, "PROMTOOL": tool}
    ok = subprocess.run([str(REPO / ".ci/check-metrics")], capture_output=True, text=True, env=env,
                        timeout=60, check=False)
    assert ok.returncode == 0, ok.stderr
    assert ok.stderr == ""
    assert "check-metrics: OK" in ok.stdout


def test_check_metrics_script_fails_on_lint_output(tmp_path: Path) -> None:
    bad = tmp_path / "bad.prom"
    bad.write_text("# HELP syncd_x_total x\n# TYPE syncd_x_total counter\nsyncd_x_total 1\n"
                   "# TYPE syncd_age_days gauge\nsyncd_age_days 1\n")
    env = {**os.environ, "PROMTOOL": promtool()}
    res = subprocess.run([str(REPO / ".ci/check-metrics"), str(bad)], capture_output=True, text=True,
                         env=env, timeout=60, check=False)
    assert res.returncode == 1
    assert "syncd_age_days" in res.stderr


# --------------------------------------------------------------------------- HealthServer


class Health:
    """A controllable health function."""

    def __init__(self) -> None:
        self.ok = True
        self.details: dict[str, Any] = {"datasets": 2}
        self.raise_error = False

    def __call__(self) -> tuple[bool, Mapping[str, Any]]:
        if self.raise_error:
            raise RuntimeError("boom")
        return self.ok, self.details


@pytest.fixture
def health() -> Health:
    return Health()


@pytest.fixture
def server(metrics: Metrics, health: Health) -> Iterator[HealthServer]:
    srv = HealthServer(metrics, health, port=0)
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


def request(
    srv: HealthServer, method: str, path: str, host: str = "127.0.0.1"
) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection(host, srv.port, timeout=5)
    try:
        conn.request(method, path)
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def test_defaults() -> None:
    srv = HealthServer(Metrics(), Health())
    assert (srv.host, srv.port) == (DEFAULT_HOST, DEFAULT_PORT) == ("127.0.0.1", 9464)
    assert not srv.running


def test_metrics_endpoint(server: HealthServer, metrics: Metrics) -> None:
    metrics.observe_run(run(freshness_lag_s=3.0, days_left=10))
    status, headers, body = request(server, "GET", "/metrics")
    assert status == 200
    assert headers["content-type"] == CONTENT_TYPE == "text/plain; version=0.0.4; charset=utf-8"
    assert int(headers["content-length"]) == len(body)
    assert b'syncd_runs_total{dataset="residents",outcome="success"} 1.0' in body
    assert request(server, "GET", "/metrics?name[]=x")[0] == 200
    result = promtool_check(body)
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


def test_healthz_ok(server: HealthServer) -> None:
    status, headers, body = request(server, "GET", "/healthz")
    assert status == 200
    assert headers["content-type"] == "application/json; charset=utf-8"
    assert json.loads(body) == {"status": "ok", "datasets": 2}


def test_healthz_unhealthy(server: HealthServer, health: Health) -> None:
    health.ok = False
    reasons = ["scheduler heartbeat is 400 s old (调度器无心跳)"]
    health.details = {"reasons": reasons, "status": "ignored"}
    status, _, body = request(server, "GET", "/healthz")
    assert status == 503
    assert json.loads(body) == {"status": "unhealthy", "reasons": reasons}
    health.details = {}
    status, _, body = request(server, "GET", "/healthz")
    assert (status, json.loads(body)) == (503, {"status": "unhealthy", "reasons": []})


def test_healthz_when_the_health_function_raises(server: HealthServer, health: Health) -> None:
    health.raise_error = True
    status, _, body = request(server, "GET", "/healthz")
    assert status == 503
    assert json.loads(body) == {"status": "unhealthy", "reasons": ["health check failed (RuntimeError)"]}


@pytest.mark.parametrize("path", ["/", "/metrics/", "/healthz/x", "/favicon.ico", "/../etc/passwd"])
def test_other_paths_are_404(server: HealthServer, path: str) -> None:
    assert request(server, "GET", path)[0] == 404


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD"])
def test_other_methods_are_405(server: HealthServer, method: str) -> None:
    status, headers, body = request(server, method, "/metrics")
    assert status == 405
    assert headers["allow"] == "GET"
    if method == "HEAD":
        assert body == b""


def test_binds_only_loopback_by_default(server: HealthServer) -> None:
    assert server.host == "127.0.0.1"
    assert server.url == f"http://127.0.0.1:{server.port}"
    # find an address of this machine that is not loopback; nothing must answer there
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        probe.connect(("192.0.2.1", 9))  # no packet is sent: this only selects a source address
        own = probe.getsockname()[0]
    except OSError:
        own = ""
    finally:
        probe.close()
    if not own or own.startswith("127."):
        pytest.skip("this machine has no non-loopback IPv4 address to probe")
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((own, server.port), timeout=2).close()


def test_ipv6_loopback(metrics: Metrics, health: Health) -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    srv = HealthServer(metrics, health, host="::1", port=0)
    try:
        srv.start()
    except OSError as exc:
        pytest.skip(f"IPv6 loopback unavailable: {exc}")
    try:
        assert srv.url == f"http://[::1]:{srv.port}"
        assert request(srv, "GET", "/healthz", host="::1")[0] == 200
    finally:
        srv.stop()


def test_port_in_use_gives_a_clear_error(server: HealthServer, metrics: Metrics, health: Health) -> None:
    other = HealthServer(metrics, health, port=server.port)
    message = rf"cannot listen on 127\.0\.0\.1:{server.port} for /metrics and /healthz"
    with pytest.raises(OSError, match=message):
        other.start()
    assert not other.running


def test_requests_are_logged_at_debug_and_never_to_stderr(
    server: HealthServer, capfd: pytest.CaptureFixture[str]
) -> None:
    capfd.readouterr()
    with structlog.testing.capture_logs() as logs:
        request(server, "GET", "/metrics")
        request(server, "GET", "/nope")
        request(server, "POST", "/healthz")
        # a client that connects and hangs up without a request, and a malformed request
        socket.create_connection(("127.0.0.1", server.port), timeout=2).close()
        with socket.create_connection(("127.0.0.1", server.port), timeout=2) as raw:
            raw.sendall(b"NOT A REQUEST HTTP/1.1\r\n\r\n")
            assert raw.recv(100).startswith(b"HTTP/1.0 400")
        request(server, "GET", "/healthz")  # the earlier handler threads are done by now
    out, err = capfd.readouterr()
    assert (out, err) == ("", "")
    # a client hanging up mid-response may add an http.connection_error: also at debug only
    assert {e["log_level"] for e in logs} == {"debug"}
    assert {e["event"] for e in logs} <= {"http.request", "http.connection_error"}
    messages = [e["message"] for e in logs if e["event"] == "http.request"]
    assert any('"GET /nope HTTP/1.1" 404' in m for m in messages)
    assert any("400" in m for m in messages)


def test_stop_is_idempotent_and_releases_the_port(metrics: Metrics, health: Health) -> None:
    with HealthServer(metrics, health, port=0) as srv:
        port = srv.port
        assert srv.running
        assert request(srv, "GET", "/healthz")[0] == 200
    assert not srv.running
    srv.stop()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    again = HealthServer(metrics, health, port=port)  # the port is free again
    again.start()
    again.stop()
