"""End to end: the simulated gateway over real loopback HTTP → runner → SQLite / PostgreSQL / MariaDB."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from structlog.testing import capture_logs

from syncd.gateway import Gateway
from syncd.runner import Progress
from tests.e2e import SECRET, Syncer, change_log, demo_gateway, target_rows, upstream_active, write_config

ZONE = ZoneInfo("Asia/Shanghai")


def local_now() -> datetime:
    return datetime.now(ZONE).replace(tzinfo=None, microsecond=0)


@pytest.fixture
def gateway(monkeypatch: pytest.MonkeyPatch) -> Iterator[Gateway]:
    with demo_gateway(monkeypatch, records=600, seed=7) as gw:
        yield gw


@pytest.fixture
def syncer(tmp_path: Path, gateway: Gateway, db_url: str) -> Iterator[Syncer]:
    s = Syncer(write_config(tmp_path, db_url=db_url, gateway_url=gateway.url))
    try:
        yield s
    finally:
        s.close()


def assert_target_equals_upstream(db_url: str, gateway: Gateway) -> None:
    rows = target_rows(db_url)
    upstream = upstream_active(gateway.store)
    assert set(rows) == set(upstream)
    for rid, rec in upstream.items():
        assert rows[rid]["name"] == rec["name"].strip().strip("\u3000")


def assert_no_duplicate_changes(db_url: str) -> None:
    """Each key has at most one insert, and no op repeats for the same key and content."""
    log = change_log(db_url)
    inserts = Counter(r["row_key"] for r in log if r["op"] == "insert")
    assert max(inserts.values(), default=0) <= 1, [k for k, n in inserts.items() if n > 1][:5]
    seen = Counter((r["row_key"], r["op"], r["new_values"], r["old_values"]) for r in log)
    assert max(seen.values(), default=0) == 1


def test_initial_full_sync_then_idempotent(syncer: Syncer, gateway: Gateway, db_url: str) -> None:
    first = syncer.run()
    assert first.ok, first.error
    active = upstream_active(gateway.store)
    assert first.counts.fetched == len(gateway.store.records())
    assert first.counts.inserted == len(active)
    assert first.counts.reported_total == first.counts.fetched
    assert_target_equals_upstream(db_url, gateway)
    assert len(change_log(db_url)) == len(active)

    second = syncer.run()
    assert second.ok, second.error
    assert (second.counts.inserted, second.counts.updated, second.counts.deleted) == (0, 0, 0)
    assert len(change_log(db_url)) == len(active), "an unchanged upstream must add no change entry"


def test_inserts_updates_and_logical_deletes_give_exact_change_entries(
    syncer: Syncer, gateway: Gateway, db_url: str
) -> None:
    assert syncer.run().ok
    before = len(change_log(db_url))
    gateway.store.set_time(local_now() - timedelta(minutes=1))
    ids = sorted(upstream_active(gateway.store))
    gateway.store.update(ids[:4], remark="已核实")
    new_ids = gateway.store.insert(3)
    gateway.store.logical_delete(ids[10:12])

    result = syncer.run()
    assert result.ok, result.error
    assert (result.counts.inserted, result.counts.updated, result.counts.deleted) == (3, 4, 2)
    new_entries = change_log(db_url)[before:]
    assert Counter(e["op"] for e in new_entries) == {"insert": 3, "update": 4, "delete": 2}
    updates = [e for e in new_entries if e["op"] == "update"]
    for e in updates:
        # the upstream update also moved updateTime, which the dataset maps to updated_at
        assert sorted(json.loads(e["changed_columns"])) == ["remark", "updated_at"]
        assert json.loads(e["new_values"])["remark"] == "已核实"
        assert json.loads(e["old_values"])["remark"] != "已核实"
    assert {e["row_key"] for e in new_entries if e["op"] == "insert"} == set(new_ids)
    assert {e["row_key"] for e in new_entries if e["op"] == "delete"} == set(ids[10:12])
    assert_target_equals_upstream(db_url, gateway)
    # and once more: nothing new
    again = syncer.run()
    assert (again.counts.inserted, again.counts.updated, again.counts.deleted) == (0, 0, 0)


def test_boundary_second_and_late_rows_are_not_lost(
    tmp_path: Path, gateway: Gateway, sqlite_url: str
) -> None:
    # lookback 0: only the inclusive boundary second protects rows stamped in the watermark's second
    s = Syncer(write_config(tmp_path / "a", db_url=sqlite_url, gateway_url=gateway.url, lookback="0s"))
    try:
        first = s.run()
        assert first.ok
        watermark = datetime.strptime(first.watermark_after or "", "%Y-%m-%d %H:%M:%S")
        template = dict(next(iter(upstream_active(gateway.store).values())))
        same_second = {**template, "id": "R90000001", "updateTime": watermark.strftime("%Y-%m-%d %H:%M:%S")}
        gateway.store.put(same_second)
        second = s.run()
        assert second.counts.inserted == 1
        assert "R90000001" in target_rows(sqlite_url)
    finally:
        s.close()

    # a row committed late upstream, stamped 5 minutes in the past, is inside a 10-minute lookback
    s = Syncer(write_config(tmp_path / "b", db_url=sqlite_url, gateway_url=gateway.url, lookback="10m"))
    try:
        wm = datetime.strptime(s.run().watermark_after or "", "%Y-%m-%d %H:%M:%S")
        late = {
            **template,
            "id": "R90000002",
            "updateTime": (wm - timedelta(minutes=5)).strftime("%Y-%m-%d %H:%M:%S"),
        }
        gateway.store.put(late)
        third = s.run()
        assert third.counts.inserted == 1
        assert "R90000002" in target_rows(sqlite_url)
    finally:
        s.close()


def test_token_expiring_mid_run_is_refreshed(syncer: Syncer, gateway: Gateway, db_url: str) -> None:
    # the token is revoked while the run pages through the data: refreshed once, then the run goes on
    gateway.faults.fail_next("token_expire", 1)
    result = syncer.run()
    assert result.ok, result.error
    assert gateway.faults.injected["token_expire"] == 1
    assert_target_equals_upstream(db_url, gateway)
    # revoked again between runs: the cached token is refused once and replaced
    gateway.expire_tokens()
    assert syncer.run().ok


@pytest.mark.parametrize("kind", ["http_502", "http_429", "busy", "truncated", "invalid_json", "reset"])
def test_upstream_faults_are_recovered(tmp_path: Path, gateway: Gateway, sqlite_url: str, kind: str) -> None:
    s = Syncer(write_config(tmp_path, db_url=sqlite_url, gateway_url=gateway.url))
    try:
        gateway.faults.fail_next(kind, 2)
        result = s.run()
        assert result.ok, result.error
        assert result.counts.retries >= 2
        assert_target_equals_upstream(sqlite_url, gateway)
    finally:
        s.close()


def test_bad_records_are_quarantined_and_the_rest_land(
    tmp_path: Path, gateway: Gateway, sqlite_url: str
) -> None:
    ids = sorted(upstream_active(gateway.store))
    gateway.store.update(ids[:3], idCard="3.30102E+17")  # Excel-damaged ID numbers
    gateway.store.update(ids[3:4], birthDate="2024年13月45日")  # impossible date
    s = Syncer(write_config(tmp_path, db_url=sqlite_url, gateway_url=gateway.url))
    try:
        result = s.run()
        assert result.ok, result.error
        assert result.counts.quarantined == 4
        rows = target_rows(sqlite_url)
        assert not set(ids[:4]) & set(rows)
        assert len(rows) == len(upstream_active(gateway.store)) - 4
        quarantined = s.store.quarantined("residents")
        assert {q["record_key"] for q in quarantined} == set(ids[:4])
        reasons = " ".join(q["reason"] for q in quarantined)
        assert "Excel" in reasons
        assert "birth_date" in reasons
        # a re-run quarantines the same records again without duplicating the entries
        s.run()
        assert len(s.store.quarantined("residents")) == 4
    finally:
        s.close()


def test_expired_authorization_does_not_run(tmp_path: Path, gateway: Gateway, sqlite_url: str) -> None:
    cfg = write_config(
        tmp_path,
        db_url=sqlite_url,
        gateway_url=gateway.url,
        replace=[
            ("valid_until: 2027-12-31", "valid_until: 2025-12-31"),
            ("valid_from: 2026-01-01", "valid_from: 2025-01-01"),
        ],
    )
    s = Syncer(cfg)
    try:
        result = s.run()
        assert result.status == "refused"
        assert "expired on 2025-12-31" in (result.error or "")
        assert gateway.request_log == []
    finally:
        s.close()


def test_secret_never_in_logs(
    tmp_path: Path, gateway: Gateway, sqlite_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from syncd.logs import configure_logging

    configure_logging("DEBUG", "json")
    gateway.faults.fail_next("token_expire", 1)
    gateway.faults.fail_next("http_502", 1)
    s = Syncer(write_config(tmp_path, db_url=sqlite_url, gateway_url=gateway.url))
    try:
        assert s.run().ok
    finally:
        s.close()
    out = capsys.readouterr()
    assert "sync.finish" in out.err
    assert SECRET not in out.err + out.out


def test_stop_request_ends_the_run_between_batches(tmp_path: Path, gateway: Gateway, sqlite_url: str) -> None:
    s = Syncer(
        write_config(tmp_path, db_url=sqlite_url, gateway_url=gateway.url, page_size=100, batch_size=100)
    )

    def stop_after_two_batches() -> bool:
        # by what committed, not by counting polls: the http source asks too, before each request
        return len(target_rows(sqlite_url)) >= 200

    try:
        stopped = s.run(should_stop=stop_after_two_batches)
        assert stopped.status == "interrupted"
        assert stopped.watermark_after is None  # the watermark did not move
        assert len(target_rows(sqlite_url)) == 200  # two whole batches committed, the third not started
        resumed = s.run()
        assert resumed.ok
        assert_target_equals_upstream(sqlite_url, gateway)
        assert_no_duplicate_changes(sqlite_url)
    finally:
        s.close()


def test_a_record_shifted_off_its_page_by_an_update_is_not_lost(
    tmp_path: Path, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An incremental read pages a window that ends when the run started. A record updated during
    the read leaves the window (its update time is now later than the end), and every later record
    moves up one place: the first record of a later page lands on a page already read. Its update
    time is old, far below the new watermark minus the lookback, so no later incremental run would
    read it: it would be missing until a full backfill. The total changed between pages, so the
    run reads the window again and finds it."""
    with demo_gateway(monkeypatch, records=450, seed=5) as gateway:
        syncer = Syncer(write_config(tmp_path, db_url=db_url, gateway_url=gateway.url, page_size=100))
        try:
            early = gateway.store.ids()[0]  # first in (updateTime, id) order: page 1

            def update_during_the_read(progress: Progress) -> None:
                if progress.pages == 1:  # page 2 may already be read ahead; pages 3-5 shift
                    gateway.store.set_time(local_now() + timedelta(hours=1))  # after the window's end
                    gateway.store.update([early], remark="读取期间修改")

            with capture_logs() as logs:
                first = syncer.run(on_progress=update_during_the_read)
            assert first.ok, first.error
            assert "sync.reread" in [e["event"] for e in logs]
            # every record of the window is there: the skipped one too (without the second read,
            # one record of the window would be missing here and after the next run)
            assert set(target_rows(db_url)) == set(upstream_active(gateway.store))
            again = syncer.run()
            assert again.ok and set(target_rows(db_url)) == set(upstream_active(gateway.store))
        finally:
            syncer.close()



def test_a_record_moved_to_the_end_by_an_update_is_not_lost_where_the_window_has_no_end(
    tmp_path: Path, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A gateway without an end bound for the window (``end_param: null``) keeps a record updated
    during the read in the result, moved to its end (ordered by update time): the total stays the
    same, but every record after its old place moves up one, and the first record of a later page
    lands on a page already read. Its update time is old, so no later incremental run would read
    it. A read that met an update time at or after the run's start reads the window again."""
    with demo_gateway(monkeypatch, records=450, seed=5) as gateway:
        cfg = write_config(tmp_path, db_url=db_url, gateway_url=gateway.url, page_size=100,
                           replace=[("    end_param: updateTimeEnd", "    end_param: null")])
        syncer = Syncer(cfg)
        try:
            early = gateway.store.ids()[0]  # first in (updateTime, id) order: page 1

            def update_during_the_read(progress: Progress) -> None:
                if progress.pages == 1:  # page 2 may already be read ahead; pages 3-5 shift
                    gateway.store.set_time(local_now() + timedelta(minutes=1))
                    gateway.store.update([early], remark="读取期间修改")

            with capture_logs() as logs:
                first = syncer.run(on_progress=update_during_the_read)
            assert first.ok, first.error
            rereads = [e for e in logs if e["event"] == "sync.reread"]
            assert rereads and "after the run started" in rereads[0]["reason"]
            assert not any(e["event"] == "sync.read_unstable" for e in logs)
            assert set(target_rows(db_url)) == set(upstream_active(gateway.store))
            with capture_logs() as logs:
                again = syncer.run()
            assert again.ok and set(target_rows(db_url)) == set(upstream_active(gateway.store))
        finally:
            syncer.close()
