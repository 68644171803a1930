"""``syncd report``: the monthly usage report is built from the runs table and the authorization."""

from __future__ import annotations

import csv
import io
import os
import subprocess
import sys
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from syncd.config import load_config
from syncd.gateway import Gateway
from syncd.ops.report import month_bounds, render_csv, render_markdown, usage_report
from syncd.runner import run_dataset
from syncd.targets import StateStore, create_target_engine
from tests.e2e import SECRET, SECRET_ENV, ListSource, write_config
from tests.sources_kit import make_app, store_for


def test_month_bounds_follow_the_configured_zone() -> None:
    start, end = month_bounds("2026-12", "Asia/Shanghai")
    assert start.isoformat() == "2026-11-30T16:00:00+00:00"
    assert end.isoformat() == "2026-12-31T16:00:00+00:00"
    with pytest.raises(ValueError, match="write YYYY-MM"):
        month_bounds("2026/11")


def test_report_counts_runs_records_and_authorization(
    tmp_path: Path, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(SECRET_ENV, SECRET)
    with Gateway(records=150, seed=9, app_secret=SECRET) as gw:
        config = write_config(tmp_path, db_url=db_url, gateway_url=gw.url)
        app = load_config(config)
        engine = create_target_engine(db_url)
        store = StateStore(engine, app.target.table_prefix)
        try:
            ds = app.datasets["residents"]
            first = run_dataset(app, ds, store)
            second = run_dataset(app, ds, store)
            refused = run_dataset(app, ds, store, now=datetime(2028, 6, 1, tzinfo=ZoneInfo("UTC")))
            assert first.ok and second.ok and refused.status == "refused"
            month = datetime.now(ZoneInfo(app.timezone)).strftime("%Y-%m")
            items = usage_report(app, engine, month)
            empty = usage_report(app, engine, "2001-01")
        finally:
            engine.dispose()
        env = {**os.environ, SECRET_ENV: SECRET}
        cli = subprocess.run(
            [sys.executable, "-m", "syncd", "-c", str(config), "report", "--month", month, "--format", "csv"],
            capture_output=True, text=True, env=env, check=False, timeout=60,
        )
    (item,) = items
    assert item.runs == {"success": 2}  # the refused run is dated 2028
    assert item.fetched == first.counts.fetched + second.counts.fetched
    assert item.inserted == first.counts.inserted and item.quarantined == first.counts.quarantined
    assert item.approval_code == ds.authorization.approval_code
    assert item.resource_code == "330000-RK-0001" and item.valid_until == "2027-12-31"
    assert item.first_run is not None and item.last_run is not None and item.first_run <= item.last_run
    assert empty[0].total_runs == 0 and empty[0].approval_code == ds.authorization.approval_code
    markdown = render_markdown(month, items)
    assert "审批单号" in markdown and ds.authorization.approval_code in markdown
    assert cli.returncode == 0, cli.stderr
    rows = list(csv.DictReader(io.StringIO(cli.stdout)))
    assert rows[0]["dataset"] == "residents" and rows[0]["inserted"] == str(item.inserted)
    assert cli.stdout == render_csv(items)


def test_a_month_under_an_older_approval_reports_the_approval_its_runs_recorded(sqlite_url: str) -> None:
    """After the authorization is renewed (a new 审批单号), the report shows what each run recorded:
    one line per approval, the configured resource code and validity only on the current one's."""
    src = {"type": "sql", "connection": "qzk", "table": "people", "key": ["id"]}
    app, ds = make_app(sqlite_url, src, connections={"qzk": {"type": "sql", "url": "sqlite://"}})
    auth = ds.authorization.model_copy(update={"purpose": "旧用途"})
    old = ds.model_copy(update={"authorization": auth})
    renewed = ds.model_copy(update={"authorization": auth.model_copy(update={
        "approval_code": "测试〔2027〕9号", "purpose": "新用途", "resource_code": "330000-RK-0009"})})
    app_now = app.model_copy(update={"datasets": {"people": renewed}})
    store = store_for(sqlite_url)
    try:
        for dataset in (old, old, renewed):
            rows = [[{"id": "p1", "name": "a", "amount": 1}]]
            assert run_dataset(app, dataset, store, source_factory=lambda a, d, r=rows: ListSource(r)).ok
        month = datetime.now(ZoneInfo(app.timezone)).strftime("%Y-%m")
        before, now = usage_report(app_now, store.engine, month)
        (never,) = usage_report(app_now, store.engine, "2001-01")
    finally:
        store.engine.dispose()
    assert (before.approval_code, before.purpose, before.total_runs) == ("测试〔2026〕1号", "旧用途", 2)
    assert (before.resource_code, before.valid_from, before.valid_until) == ("", "", "")
    assert (now.approval_code, now.purpose, now.total_runs) == ("测试〔2027〕9号", "新用途", 1)
    assert (now.resource_code, now.valid_until) == ("330000-RK-0009", "2099-12-31")
    assert (never.approval_code, never.purpose, never.total_runs) == ("测试〔2027〕9号", "新用途", 0)
    assert render_csv([before, now]).count("people,") == 2
