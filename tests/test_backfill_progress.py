"""Backfill (`syncd sync --from/--to/--full`) and progress output of long manual runs."""

from __future__ import annotations

import io
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from syncd.gateway import Gateway
from syncd.progress import ProgressReporter, format_progress
from syncd.runner import Backfill, Progress
from tests.e2e import SECRET, SECRET_ENV, Syncer, syncd_cli, target_rows, upstream_active, write_config

FMT = "%Y-%m-%d %H:%M:%S"


@pytest.fixture
def gateway(monkeypatch: pytest.MonkeyPatch) -> Iterator[Gateway]:
    monkeypatch.setenv(SECRET_ENV, SECRET)
    with Gateway(records=300, seed=21, app_key="demo-app", app_secret=SECRET) as gw:
        yield gw


def test_full_backfill_of_unchanged_data_writes_nothing(
    tmp_path: Path, gateway: Gateway, sqlite_url: str
) -> None:
    s = Syncer(write_config(tmp_path, db_url=sqlite_url, gateway_url=gateway.url))
    try:
        first = s.run()
        again = s.run(backfill=Backfill(full=True), trigger="backfill")
        assert again.ok, again.error
        assert again.counts.fetched == len(gateway.store.records())
        assert (again.counts.inserted, again.counts.updated, again.counts.deleted) == (0, 0, 0)
        assert again.watermark_after == first.watermark_after
        assert s.store.last_runs("residents", limit=1)[0]["trigger"] == "backfill"
    finally:
        s.close()


def test_window_backfill_picks_up_a_row_changed_behind_the_watermark(
    tmp_path: Path, gateway: Gateway, sqlite_url: str
) -> None:
    """A row changed upstream but stamped long before the lookback is found only by a backfill."""
    s = Syncer(write_config(tmp_path, db_url=sqlite_url, gateway_url=gateway.url, lookback="1m"))
    try:
        first = s.run()
        watermark = datetime.strptime(first.watermark_after or "", FMT)
        victim = sorted(upstream_active(gateway.store))[0]
        old_time = (watermark - timedelta(hours=1)).strftime(FMT)
        gateway.store.put({**gateway.store.get(victim), "remark": "补录", "updateTime": old_time})

        missed = s.run()
        assert missed.counts.updated == 0  # outside watermark - lookback: the normal run cannot see it
        window = Backfill(since=watermark - timedelta(hours=2), until=watermark - timedelta(minutes=30))
        back = s.run(backfill=window, trigger="backfill")
        assert back.ok, back.error
        assert back.counts.updated == 1
        assert target_rows(sqlite_url)[victim]["remark"] == "补录"
        assert back.watermark_after == first.watermark_after  # never moved backwards
    finally:
        s.close()


def test_a_window_backfill_that_starts_after_the_watermark_keeps_it(
    tmp_path: Path, gateway: Gateway, sqlite_url: str
) -> None:
    """``--from`` later than where the next regular run starts leaves the records between them
    unread: the backfill keeps the watermark, and the next regular run still reads them."""
    s = Syncer(write_config(tmp_path, db_url=sqlite_url, gateway_url=gateway.url))
    try:
        first = s.run()
        watermark = datetime.strptime(first.watermark_after or "", FMT)
        early, late = sorted(upstream_active(gateway.store))[:2]
        for key, hours in ((early, 1), (late, 3)):  # changed 1 h and 3 h after the watermark
            stamp = (watermark + timedelta(hours=hours)).strftime(FMT)
            gateway.store.put({**gateway.store.get(key), "remark": f"+{hours}h", "updateTime": stamp})
        zone = ZoneInfo("Asia/Shanghai")
        back = s.run(
            backfill=Backfill(since=watermark + timedelta(hours=2)),
            trigger="backfill",
            now=(watermark + timedelta(hours=4)).replace(tzinfo=zone),
        )
        assert back.ok, back.error
        assert back.counts.updated == 1  # the later change only
        assert back.watermark_after == first.watermark_after  # kept: the earlier change is not read yet
        regular = s.run(now=(watermark + timedelta(hours=5)).replace(tzinfo=zone))
        assert regular.ok, regular.error
        rows = target_rows(sqlite_url)
        assert (rows[early]["remark"], rows[late]["remark"]) == ("+1h", "+3h")
        assert regular.watermark_after == (watermark + timedelta(hours=3)).strftime(FMT)
    finally:
        s.close()


def test_incremental_initial_with_an_offset_starts_at_that_instant() -> None:
    """``initial: 2026-11-01T08:00:00+09:00`` starts at 07:00 in Asia/Shanghai (the offset was
    dropped: 08:00 local, an hour of records never read)."""
    from syncd.config.model import AppConfig, DatasetConfig
    from syncd.ops.plan import plan_window

    app = AppConfig.model_validate(
        {"target": {"url": "sqlite://"}, "connections": {"gw": {"type": "http", "base_url": "http://127.0.0.1:1"}},
         "timezone": "Asia/Shanghai"}
    )

    def start(initial: str) -> datetime | None:
        ds = DatasetConfig.model_validate(
            {
                "name": "people",
                "source": {"type": "http", "connection": "gw", "path": "/p",
                           "incremental": {"field": "updateTime", "initial": initial}},
                "authorization": {"approval_code": "T-1", "fields": ["id", "updateTime"],
                                  "valid_from": "2026-01-01", "valid_until": "2027-12-31"},
                "target": {"table": "people", "key": ["id"]},
                "columns": {"id": {"source": "id", "length": 8}},
            }
        )
        now = datetime(2026, 11, 2, 10, tzinfo=ZoneInfo("Asia/Shanghai"))
        return plan_window(app, ds, None, now).since

    assert start("2026-11-01T08:00:00+09:00") == datetime(2026, 11, 1, 7)
    assert start("2026-11-01T08:00:00Z") == datetime(2026, 11, 1, 16)
    assert start("2026-11-01 08:00:00") == datetime(2026, 11, 1, 8)  # no offset: local time as written


def test_cli_backfill_flags(tmp_path: Path, gateway: Gateway, sqlite_url: str) -> None:
    cfg = str(write_config(tmp_path, db_url=sqlite_url, gateway_url=gateway.url, page_size=50))
    both = syncd_cli("-c", cfg, "sync", "residents", "--full", "--from", "2026-01-01")
    assert both.returncode == 2
    assert "--full re-reads everything" in both.stderr
    bad = syncd_cli("-c", cfg, "sync", "residents", "--from", "yesterday")
    assert bad.returncode == 2
    assert "is not a time" in bad.stderr
    full = syncd_cli("-c", cfg, "sync", "residents", "--full", "--progress", "lines")
    assert full.returncode == 0, full.stderr
    assert f"inserted={len(upstream_active(gateway.store))}" in full.stdout


def test_backfill_times_with_an_offset_are_that_instant_in_the_app_zone() -> None:
    """--from/--to written with an offset mean that instant: 10:00 UTC is 18:00 in Asia/Shanghai
    (the offset was dropped, and eight hours were silently left out of the backfill)."""
    from syncd.commands.sync import _time

    assert _time("--to", "2026-11-01T10:00:00+00:00", "Asia/Shanghai") == datetime(2026, 11, 1, 18)
    assert _time("--from", "2026-11-01 08:00:00", "Asia/Shanghai") == datetime(2026, 11, 1, 8)
    assert _time("--from", "2026-11-01", "Asia/Shanghai") == datetime(2026, 11, 1)


def test_progress_lines_and_live_line() -> None:
    p = Progress("residents", pages=3, records=3000, reported_total=12000, elapsed=2.0)
    assert format_progress(p) == "residents: page 3, 3,000 records, 1,500/s, 25% of 12,000, ETA 0:00:06"
    assert format_progress(Progress("x", 1, 10, None, 0.0)) == "x: page 1, 10 records, 0/s"

    now = [0.0]
    out = io.StringIO()
    lines = ProgressReporter(out, live=False, every=10, clock=lambda: now[0])
    lines(p)  # within the first 10 s: nothing yet
    now[0] = 10.5
    lines(p)
    now[0] = 12.0
    lines(p)  # too soon again
    assert out.getvalue().count("\n") == 1

    live_out = io.StringIO()
    live = ProgressReporter(live_out, live=True)
    live(p)
    live(Progress("residents", 4, 4000, 12000, 2.5))
    live.done()
    text = live_out.getvalue()
    assert text.startswith("\rresidents: page 3") and "\rresidents: page 4" in text and text.endswith("\n")
