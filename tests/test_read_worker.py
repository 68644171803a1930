"""The read worker (syncd.sources.worker): the first load of an http dataset is read, decoded and
mapped in a child process. These tests prove it writes exactly what the in-process path writes,
that every way it can end is reported and leaves no process behind, and that its log events reach
the run's log with the run's fields.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import random
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from structlog.testing import capture_logs

from syncd.config import load_config
from syncd.errors import UpstreamError
from syncd.gateway import FaultPlan, Gateway
from syncd.logs import configure_logging
from syncd.runner import Backfill
from syncd.sources.base import Window
from syncd.sources.worker import (
    PIPE_BYTES,
    MappedPage,
    ReadWorker,
    ReadWorkerError,
    _Channel,
    _decode_rows,
    _encode_rows,
    _rebuild,
)
from tests.e2e import (
    SECRET,
    SECRET_ENV,
    demo_gateway,
    read_whole_with_snapshot_deletes,
    sync_once,
    write_config,
)

RECORDS = 600


def _worker_config(root: Path, db_url: str, gateway_url: str, mode: str, prefix: str = "syncd_") -> Path:
    """The demo config with ``defaults.read_worker: mode``; another ``prefix`` also renames the
    target table (``resident_info_{prefix}``), so two configs can share one database."""
    table = _table(prefix)
    cfg = write_config(
        root,
        db_url=db_url,
        gateway_url=gateway_url,
        page_size=100,
        batch_size=250,
        replace=[("table: resident_info", f"table: {table}")],
    )
    text = cfg.read_text(encoding="utf-8").replace("defaults:\n", f"defaults:\n  read_worker: {mode}\n", 1)
    cfg.write_text(
        text.replace(f"  url: {db_url}\n", f"  url: {db_url}\n  table_prefix: {prefix}\n", 1), "utf-8"
    )
    return cfg


def _json_log() -> io.StringIO:
    stream = io.StringIO()
    configure_logging("INFO", "json", stream)
    return stream


def _events(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines() if line.startswith("{")]


def _worker_pid(events: list[dict[str, Any]]) -> int:
    started = [e for e in events if e["event"] == "sync.read_worker"]
    assert len(started) == 1, [e["event"] for e in events]
    return int(started[0]["pid"])


def _gone(pid: int, within: float = 10.0) -> bool:
    """Whether process ``pid`` has ended (reaped, or a zombie nobody waits for) within the time."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            if Path(f"/proc/{pid}/stat").read_text(encoding="ascii").split(")")[-1].split()[0] == "Z":
                return True
        except FileNotFoundError:
            return True
        time.sleep(0.05)
    return False


def _table(prefix: str) -> str:
    return "resident_info" if prefix == "syncd_" else f"resident_info_{prefix.strip('_')}"


def _select(db_url: str, sql: str) -> list[tuple[Any, ...]]:
    engine = sa.create_engine(db_url)
    try:
        with engine.connect() as conn:
            return sorted(tuple(r) for r in conn.execute(sa.text(sql)))
    finally:
        engine.dispose()


def _written(db_url: str, prefix: str) -> dict[str, list[tuple[Any, ...]]]:
    """Target rows, change feed, quarantine and row state written under ``prefix``."""
    queries = {  # names from this test only
        "rows": f"SELECT * FROM {_table(prefix)}",  # noqa: S608
        "changes": f"SELECT op, row_key, changed_columns, old_values, new_values FROM {prefix}changes",  # noqa: S608
        "quarantine": f"SELECT raw_hash, record_key, reason, raw FROM {prefix}quarantine",  # noqa: S608
        "state": f"SELECT row_key, row_hash, record_digest FROM {prefix}row_state",  # noqa: S608
    }
    return {part: _select(db_url, sql) for part, sql in queries.items()}


@pytest.fixture
def gateway(monkeypatch: pytest.MonkeyPatch) -> Iterator[Gateway]:
    with demo_gateway(monkeypatch, records=RECORDS, seed=23) as gw:
        yield gw


def _hand_over_after(page: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make ``auto``'s hand-over happen after ``page``: the run asks whether the held worker is
    ready once per page; the first ``page - 1`` answers are no, then it waits for the worker."""
    asked = iter(range(1, 10_000))
    ready = ReadWorker.wait_ready
    monkeypatch.setattr(
        ReadWorker, "wait_ready", lambda self, timeout=0.0: next(asked) >= page and ready(self, 60)
    )


@pytest.mark.parametrize("after_page", [1, 3])
def test_worker_writes_exactly_what_the_run_itself_writes(
    tmp_path: Path, gateway: Gateway, db_url: str, monkeypatch: pytest.MonkeyPatch, after_page: int
) -> None:
    """First load (auto → worker) and a re-sync through the worker (always) give the same rows,
    change feed, quarantine and row state, value for value, as the in-process path writing the
    same database under another prefix. The first load takes ``auto``'s path: the first pages
    read, mapped and written in this process while the worker starts, then the hand-over: the
    worker reads on from the next page (no page twice, none missed)."""
    monkeypatch.setattr("syncd.runner.WORKER_MIN_RECORDS", RECORDS // 2)
    _hand_over_after(after_page, monkeypatch)
    gateway.store.generate(30, gateway.store.clock() - timedelta(minutes=10), bad_ratio=1.0)  # unmappable
    worker_cfg = _worker_config(tmp_path / "w", db_url, gateway.url, "auto")
    inproc_cfg = _worker_config(tmp_path / "p", db_url, gateway.url, "never", prefix="ref_")

    log = _json_log()
    asked_before = len(gateway.request_log)
    first = sync_once(worker_cfg)
    assert first.ok, first.error
    assert first.counts.fetched == first.counts.reported_total == RECORDS + 30  # every record once
    # every page requested once: this process reads no page ahead while the worker may take over
    asked = [int(e.params["pageNo"]) for e in gateway.request_log[asked_before:]]
    assert sorted(asked) == list(range(1, 8)), asked
    took_over = [e for e in _events(log) if e["event"] == "sync.read_worker_took_over"]
    assert [(e["after_page"], e["records"]) for e in took_over] == [(after_page, after_page * 100)]
    pid = _worker_pid(_events(log))
    assert _gone(pid)
    # the worker's own peak memory, as it reported it (VmHWM: not the run's size it started from)
    assert first.worker_peak_rss_bytes is not None and 20 * 2**20 < first.worker_peak_rss_bytes < 1024 * 2**20
    done = [e for e in _events(log) if e["event"] == "sync.read_worker_done"]
    assert [e["peak_rss_mb"] for e in done] == [round(first.worker_peak_rss_bytes / 2**20, 1)]
    reference_first = sync_once(inproc_cfg)
    assert reference_first.ok and reference_first.worker_peak_rss_bytes is None
    assert [e["event"] for e in _events(log)].count("sync.read_worker") == 1  # "never": in-process
    assert first.counts.quarantined > 0 and first.counts.inserted > 0

    gateway.store.churn(120, random.Random(4))  # updates, logical deletes, new records
    always = worker_cfg.read_text(encoding="utf-8").replace("read_worker: auto", "read_worker: always")
    worker_cfg.write_text(always, encoding="utf-8")
    second = sync_once(worker_cfg, backfill=Backfill(full=True))  # every record read, most unchanged
    assert second.ok, second.error
    again = sync_once(inproc_cfg, backfill=Backfill(full=True))
    assert again.ok
    assert (second.counts.inserted, second.counts.updated, second.counts.deleted) == (
        again.counts.inserted,
        again.counts.updated,
        again.counts.deleted,
    )
    assert second.counts.unchanged == again.counts.unchanged > RECORDS // 2

    written, reference = _written(db_url, "syncd_"), _written(db_url, "ref_")
    assert len(written["rows"]) > RECORDS // 2 and written["quarantine"]
    for part in ("rows", "changes", "quarantine", "state"):
        assert written[part] == reference[part], part


@pytest.mark.parametrize("how", ["killed", "not started"])
def test_a_worker_that_fails_while_starting_leaves_the_read_in_the_run(
    tmp_path: Path, gateway: Gateway, sqlite_url: str, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    """``auto`` starts the worker held; one that dies before it is ready, or cannot be started at
    all, costs only the speed: the run reads on in its own process, says why in the log, and
    writes every record once."""

    class DiesAtStart(ReadWorker):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            os.kill(self.pid, signal.SIGKILL)

    def no_process(*args: Any, **kwargs: Any) -> Any:
        raise OSError(24, "Too many open files")

    monkeypatch.setattr("syncd.runner.WORKER_MIN_RECORDS", RECORDS // 2)
    monkeypatch.setattr("syncd.runner.READY_WAIT_S", 60.0)  # the run asks after page 1 and waits
    if how == "killed":
        monkeypatch.setattr("syncd.runner.ReadWorker", DiesAtStart)
    else:
        monkeypatch.setattr(subprocess, "Popen", no_process)
    log = _json_log()
    result = sync_once(_worker_config(tmp_path, sqlite_url, gateway.url, "auto"))
    assert result.ok, result.error
    assert result.counts.fetched == result.counts.reported_total == RECORDS
    assert result.counts.inserted + result.counts.quarantined + result.counts.deleted == RECORDS
    events = _events(log)
    unavailable = [e for e in events if e["event"] == "sync.read_worker_unavailable"]
    why = "killed by signal SIGKILL" if how == "killed" else "could not start the read worker"
    assert len(unavailable) == 1 and why in unavailable[0]["reason"], unavailable
    assert unavailable[0]["log.level"] == "warning" and unavailable[0]["run_id"] == result.run_id
    assert "sync.read_worker_took_over" not in [e["event"] for e in events]
    if how == "killed":
        assert _gone(_worker_pid(events))


def test_a_worker_not_ready_before_the_read_ends_is_ended(
    tmp_path: Path, gateway: Gateway, sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("syncd.runner.WORKER_MIN_RECORDS", RECORDS // 2)
    monkeypatch.setattr(ReadWorker, "wait_ready", lambda self, timeout=0.0: False)
    log = _json_log()
    result = sync_once(_worker_config(tmp_path, sqlite_url, gateway.url, "auto"))
    assert result.ok, result.error
    assert result.counts.fetched == RECORDS and result.worker_peak_rss_bytes is None
    events = _events(log)
    assert "sync.read_worker_took_over" not in [e["event"] for e in events]
    assert _gone(_worker_pid(events))


def test_worker_log_events_carry_the_run_fields(tmp_path: Path, gateway: Gateway, sqlite_url: str) -> None:
    gateway.faults.fail_next("busy")  # the worker's first data request: it retries, and logs it
    log = _json_log()
    result = sync_once(_worker_config(tmp_path, sqlite_url, gateway.url, "always"))
    assert result.ok, result.error
    events = _events(log)
    retry = [e for e in events if e["event"] == "http.retry"]
    assert retry, "the worker's own request log did not reach the run's log"
    assert retry[0]["run_id"] == result.run_id and retry[0]["dataset"] == "residents"
    assert retry[0]["log.logger"].startswith("syncd.sources.http")
    # the worker's token is fetched by the run's process (tests/test_worker_credentials.py)
    token = [e for e in events if e["event"] == "http.token_fetched"]
    assert len(token) == 1 and token[0]["run_id"] == result.run_id
    assert SECRET not in log.getvalue()
    assert not any(issued in log.getvalue() for issued in gateway.token_style._tokens)


def test_upstream_error_in_the_worker_fails_the_run_with_the_same_error(
    tmp_path: Path, gateway: Gateway, sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(SECRET_ENV, "a-wrong-secret")
    log = _json_log()
    result = sync_once(_worker_config(tmp_path, sqlite_url, gateway.url, "always"))
    assert result.status == "failed"
    events = _events(log)
    failed = [e for e in events if e["event"] == "sync.failed"]
    assert failed and failed[0]["error_type"] not in ("ReadWorkerError", "AttributeError"), failed
    assert "a-wrong-secret" not in log.getvalue()
    assert _gone(_worker_pid(events))
    assert result.watermark_after is None


def test_stop_request_ends_the_worker(
    tmp_path: Path, sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with demo_gateway(monkeypatch, records=3_000, seed=5) as gw:
        gw.latency = 0.05
        log = _json_log()
        pages: list[int] = []
        result = sync_once(
            _worker_config(tmp_path, sqlite_url, gw.url, "always"),
            should_stop=lambda: len(pages) >= 3,
            on_progress=lambda p: pages.append(p.pages),
        )
    assert result.status == "interrupted"
    assert 0 < result.counts.fetched < 3_000
    assert _gone(_worker_pid(_events(log)))


@pytest.mark.parametrize("mode", ["never", "always"])
def test_an_interrupted_run_counts_the_requests_it_sent(
    tmp_path: Path, sqlite_url: str, monkeypatch: pytest.MonkeyPatch, mode: str
) -> None:
    """The worker reports its requests with each page, not only at its end: a run stopped early
    (or failed) still records the traffic it caused, as it does without the worker."""
    with demo_gateway(monkeypatch, records=3_000, seed=5) as gw:
        gw.latency = 0.02
        pages: list[int] = []
        before = len(gw.request_log)
        result = sync_once(
            _worker_config(tmp_path, sqlite_url, gw.url, mode),
            should_stop=lambda: len(pages) >= 3,
            on_progress=lambda p: pages.append(p.pages),
        )
        sent = len(gw.request_log) - before  # its data requests (the token request is not logged)
    assert result.status == "interrupted"
    # a request is counted when it is sent: the token's, and read-ahead ones the stop cut short
    # before the gateway logged them, may come on top of what the gateway saw
    assert 3 <= result.counts.requests <= sent + 3, (result.counts.requests, sent)


def test_a_worker_that_dies_is_reported_by_signal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with demo_gateway(monkeypatch, records=2_000, seed=3) as gw:
        gw.latency = 0.05
        cfg = _worker_config(tmp_path, f"sqlite:///{tmp_path / 'x.db'}", gw.url, "always")
        app = load_config(cfg)
        worker = ReadWorker(app, app.datasets["residents"], Window(None, None))
        try:
            pages = worker.pages()
            first = next(pages)
            assert first.fetched == 100 and len(first.rows) + len(first.rejected) + len(first.deletes) == 100
            os.kill(worker.pid, signal.SIGKILL)
            with pytest.raises(ReadWorkerError, match="killed by signal SIGKILL"):
                for _ in pages:
                    pass
        finally:
            worker.close()
    assert _gone(worker.pid)


def test_the_pages_pipe_holds_several_pages(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Linux's default pipe (64 KiB) is smaller than one pickled page of 1,000 rows: the worker
    would wait for the run to unpickle each page before mapping the next. It asks for 1 MiB."""
    with demo_gateway(monkeypatch, records=300, seed=3) as gw:
        cfg = _worker_config(tmp_path, f"sqlite:///{tmp_path / 'x.db'}", gw.url, "always")
        app = load_config(cfg)
        worker = ReadWorker(app, app.datasets["residents"], Window(None, None))
        try:
            assert worker.pipe_bytes == PIPE_BYTES
            assert sum(page.fetched for page in worker.pages()) == 300
        finally:
            worker.close()


def test_the_worker_imports_neither_sqlalchemy_nor_the_yaml_loader(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the worker does before its first page (unpickle the config, compile the mapping,
    build the http source) needs neither SQLAlchemy nor ruamel.yaml and the config loader."""
    monkeypatch.setenv(SECRET_ENV, SECRET)
    cfg = _worker_config(tmp_path, f"sqlite:///{tmp_path / 'x.db'}", "http://127.0.0.1:9", "always")
    app = load_config(cfg)
    init = tmp_path / "init.pickle"
    init.write_bytes(pickle.dumps((app, app.datasets["residents"])))
    code = (
        "import pickle, sys\n"
        "import syncd.sources.worker\n"
        "from syncd.mapping import compile_mapping\n"
        "from syncd.sources import build_source\n"
        f"app, ds = pickle.loads(open({str(init)!r}, 'rb').read())\n"
        "compile_mapping(ds, app.code_tables)\n"
        "build_source(app, ds).close()\n"
        "print(sorted(m for m in ('sqlalchemy', 'ruamel', 'syncd.config.loader') if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-P", "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_worker_dies_with_a_killed_syncd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """kill -9 of `syncd sync` leaves no read worker behind (PR_SET_PDEATHSIG)."""
    with demo_gateway(monkeypatch, records=5_000, seed=9) as gw:
        gw.latency = 0.05
        cfg = _worker_config(tmp_path, f"sqlite:///{tmp_path / 'x.db'}", gw.url, "always")
        proc = subprocess.Popen(
            [sys.executable, "-m", "syncd", "-c", str(cfg), "sync", "residents"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, SECRET_ENV: SECRET},
        )
        assert proc.stderr is not None
        pid = None
        for line in proc.stderr:
            found = re.search(r'"event": "sync.read_worker".*?"pid": (\d+)', line)
            if found:
                pid = int(found.group(1))
                break
        assert pid is not None, "the run did not start a read worker"
        time.sleep(0.3)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        proc.stderr.close()
        assert _gone(pid), "the read worker outlived its killed parent"


def test_rebuild_keeps_syncd_errors_and_wraps_the_rest() -> None:
    import pickle

    err = UpstreamError("the gateway said no")
    assert _rebuild(pickle.dumps(err), "UpstreamError", str(err)) is not err
    rebuilt = _rebuild(pickle.dumps(err), "UpstreamError", str(err))
    assert isinstance(rebuilt, UpstreamError) and str(rebuilt) == "the gateway said no"
    other = _rebuild(None, "KeyError", "'x'")
    assert isinstance(other, ReadWorkerError) and "KeyError: 'x'" in str(other)


def _through_the_pipe(page: MappedPage) -> MappedPage:
    """What the parent reads when the child sends ``page`` (the channel's own pickling)."""
    out = io.BytesIO()
    _Channel(out).send(("page", page, (0, 0, 0)))
    kind, received, _traffic = pickle.loads(out.getvalue())  # noqa: S301 - the test's own bytes
    assert kind == "page" and isinstance(received, MappedPage)
    return received


def test_a_page_arrives_with_equal_values_of_the_same_classes() -> None:
    shanghai = timezone(timedelta(hours=8), "CST")
    rows: list[tuple[Any, ...]] = [
        (
            "R1",
            date(1990, 2, 28),
            datetime(2024, 5, 1, 8, 30, 0, 123456),
            Decimal("1234.50"),
            7,
            True,
            None,
            datetime(2024, 5, 1, 8, 30, tzinfo=shanghai),  # an aware value keeps its zone's name
            b"\x00raw",
            {"nested": [1, 2]},
        ),
        (
            "R2",
            date(5, 1, 1),
            datetime(2024, 11, 3, 1, 30, fold=1),  # the fold is not in isoformat(): sent as is
            Decimal("-0"),
            None,
            False,
            None,
            None,
            None,
            None,
        ),
        ("R3", None, None, Decimal("NaN"), 0, None, None, None, None, None),
        ("R4", None, None, Decimal("1E+3"), -1, None, None, None, None, None),
    ]
    page = MappedPage(
        number=3,
        reported_total=10,
        fetched=4,
        max_seen=datetime(2024, 5, 1),
        rows=rows,
        digests=["d1", None, "d3", "d4"],
        hashes=["h1", "h2", "h3", "h4"],
        keys=["R1", "R2", "R3", "R4"],
        deletes=[("R9",)],
        rejected=[({"id": "R8"}, "bad", "R8")],
    )
    got = _through_the_pipe(page)
    assert (got.number, got.reported_total, got.fetched, got.max_seen) == (3, 10, 4, datetime(2024, 5, 1))
    assert (got.digests, got.hashes, got.keys) == (page.digests, page.hashes, page.keys)
    assert (got.deletes, got.rejected) == (page.deletes, page.rejected)
    assert len(got.rows) == len(rows)
    for sent, arrived in zip(rows, got.rows, strict=True):
        assert isinstance(arrived, tuple)
        for a, b in zip(sent, arrived, strict=True):
            assert type(a) is type(b)
            if isinstance(a, Decimal):
                assert str(a) == str(b)  # NaN != NaN; the text is exact (scale, sign, exponent)
            else:
                assert a == b
            if isinstance(a, datetime):
                assert (a.tzinfo, a.fold) == (b.tzinfo, b.fold)
    assert got.rows[0][7].tzinfo.tzname(None) == "CST"
    assert got.rows[1][2].fold == 1


def test_dates_and_decimals_travel_as_text() -> None:
    """The point of the codec: no date, datetime or Decimal object is pickled one by one."""
    rows = [
        (f"R{i}", date(2000, 1, 1 + i % 28), datetime(2024, 1, 1, i % 24), Decimal(f"{i}.10"))
        for i in range(50)
    ]
    tags, columns = _encode_rows(rows)
    assert tags == ("", "date", "datetime", "decimal")
    assert all(isinstance(v, str) for column in columns[1:] for v in column)
    assert _decode_rows((tags, columns)) == rows
    # a column mixing classes (a datetime is a date) is sent as it is
    mixed = [(date(2000, 1, 1),), (datetime(2000, 1, 1, 5),)]
    assert _encode_rows(mixed)[0] == ("",)
    assert _decode_rows(_encode_rows(mixed)) == mixed
    assert _decode_rows(_encode_rows([])) == []


def test_auto_reads_a_small_first_load_in_process(tmp_path: Path, gateway: Gateway, sqlite_url: str) -> None:
    """Below WORKER_MIN_RECORDS the worker's start would cost more than it saves."""
    log = _json_log()
    result = sync_once(_worker_config(tmp_path, sqlite_url, gateway.url, "auto"))
    assert result.ok and result.counts.inserted > 0
    assert "sync.read_worker" not in [e["event"] for e in _events(log)]


def test_a_service_stop_sent_to_the_whole_group_interrupts_the_run(
    tmp_path: Path, sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """systemd's control-group kill (and Ctrl-C) signal the worker too: it ignores them, the daemon
    stops the run between batches (interrupted, not failed) and then ends the worker."""
    from tests.daemon_proc import DaemonProcess, daemon_config

    with demo_gateway(monkeypatch, records=4_000, seed=13) as gw:
        gw.latency = 0.03
        cfg = daemon_config(tmp_path, db_url=sqlite_url, gateway_url=gw.url, page_size=100, batch_size=100)
        cfg.write_text(
            cfg.read_text("utf-8").replace("defaults:\n", "defaults:\n  read_worker: always\n", 1), "utf-8"
        )
        daemon = DaemonProcess(cfg)
        try:
            started = daemon.wait_event("sync.read_worker")
            pid = int(started["pid"])
            base = len(gw.request_log)
            while len(gw.request_log) - base < 5:
                time.sleep(0.01)
            os.kill(pid, signal.SIGTERM)  # as the group signal reaches it
            os.kill(pid, signal.SIGINT)
            daemon.signal(signal.SIGTERM)
            code = daemon.proc.wait(30)
        finally:
            daemon.stop()
        assert code == 0, daemon.stderr_text()
        finish = daemon.wait_event("sync.finish")
        assert finish["status"] == "interrupted", finish
        assert _gone(pid)


def test_a_worker_killed_by_the_stop_itself_leaves_the_run_interrupted(
    tmp_path: Path, sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A control-group SIGTERM can reach the child in its first moments, before it ignores the
    signal, and end it; the daemon meanwhile asks the run to stop. The run is interrupted (as for
    any stop), not failed."""
    stop = {"now": False}

    class SignalledAtStart(ReadWorker):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            os.kill(self.pid, signal.SIGTERM)  # the group's signal reaches the fresh child
            stop["now"] = True  # and the daemon's handler asks the run to stop

    monkeypatch.setattr("syncd.runner.ReadWorker", SignalledAtStart)
    with demo_gateway(monkeypatch, records=300, seed=3) as gw:
        cfg = _worker_config(tmp_path, sqlite_url, gw.url, "always")
        result = sync_once(cfg, should_stop=lambda: stop["now"])
    assert result.status == "interrupted", (result.status, result.error)


def test_ctrl_c_right_after_the_worker_started_interrupts_the_run(
    tmp_path: Path, sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C in a terminal signals the whole foreground process group at once. The worker has a
    group of its own, so the signal cannot end it while it starts; the run stops between batches."""
    from tests.daemon_proc import daemon_config
    from tests.e2e import SECRET, SECRET_ENV

    with demo_gateway(monkeypatch, records=2_000, seed=13) as gw:
        gw.latency = 0.02
        cfg = daemon_config(tmp_path, db_url=sqlite_url, gateway_url=gw.url, page_size=100, batch_size=100)
        cfg.write_text(
            cfg.read_text("utf-8").replace("defaults:\n", "defaults:\n  read_worker: always\n", 1), "utf-8"
        )
        proc = subprocess.Popen(
            [sys.executable, "-m", "syncd.cli", "-c", str(cfg), "run"],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            start_new_session=True,  # a terminal's foreground group, syncd its leader
            env={**os.environ, SECRET_ENV: SECRET},
        )
        assert proc.stdout is not None
        events = []
        try:
            for line in proc.stdout:
                if line.startswith("{"):
                    events.append(json.loads(line))
                    if events[-1]["event"] == "sync.read_worker":
                        worker = int(events[-1]["pid"])
                        assert os.getpgid(worker) == worker  # a process group of its own
                        os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does
                        break
            rest, _ = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:  # a failed test leaves no daemon behind
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    events += [json.loads(line) for line in rest.splitlines() if line.startswith("{")]
    finish = [e for e in events if e["event"] == "sync.finish"]
    assert [e["status"] for e in finish] == ["interrupted"], finish


def test_the_worker_imports_the_same_syncd_without_shadowing_the_standard_library() -> None:
    from syncd.sources.worker import child_environment

    checkout = child_environment(Path("/src/syncd-checkout"), {"PATH": "/bin", "PYTHONPATH": "/extra"})
    assert checkout["PYTHONPATH"] == os.pathsep.join(["/src/syncd-checkout", "/extra"])
    assert checkout["PATH"] == "/bin"
    installed = child_environment(Path("/opt/venv/lib/python3.11/site-packages"), {"PATH": "/bin"})
    assert "PYTHONPATH" not in installed  # PYTHONPATH precedes the standard library


def test_a_total_that_changed_in_the_worker_makes_the_run_read_again(
    tmp_path: Path, gateway: Gateway, db_url: str
) -> None:
    """The worker's read statistics reach the run whole: a reported total that changed between
    pages (read in the worker) makes the run read the window a second time (in its own process),
    as a read in the run's own process does (tests/test_snapshot.py)."""
    cfg = _worker_config(tmp_path, db_url, gateway.url, "always")
    read_whole_with_snapshot_deletes(tmp_path)
    assert sync_once(cfg).ok
    gone = gateway.store.ids()[-1]
    gateway.store.hard_delete([gone])
    # page 1 says 7 fewer than the others: every record arrives (more than the first total), and
    # only the change of the total between pages tells that the result moved while it was paged
    gateway.faults = FaultPlan(drift=-7)
    gateway.faults.fail_next("total_drift")
    with capture_logs() as logs:
        drifted = sync_once(cfg)
    assert drifted.ok, drifted.error
    rereads = [e["event"] for e in logs if e["event"] in ("sync.reread", "sync.read_unstable")]
    assert rereads == ["sync.reread"]
    assert drifted.counts.deleted == 1  # the second, steady read allows the deletes
    assert drifted.counts.fetched == len(gateway.store.records())  # counted once, not per read
