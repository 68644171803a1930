"""`syncd status`, `syncd runs` and `syncd changes` against a target database that one sync filled."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from syncd.cli import main
from syncd.config import load_config
from syncd.gateway import Gateway
from syncd.runner import run_dataset
from syncd.targets import RunCounts, RunInfo, StateStore, create_target_engine
from tests.daemon_proc import daemon_config
from tests.e2e import SECRET, SECRET_ENV


@pytest.fixture
def config(tmp_path: Path, sqlite_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.setenv(SECRET_ENV, SECRET)
    with Gateway(records=120, seed=9, app_secret=SECRET) as gw:
        path = daemon_config(tmp_path, db_url=sqlite_url, gateway_url=gw.url, every="15m")
        assert main(["-c", str(path), "--log-format", "json", "sync", "residents"]) == 0
        yield path


def test_status_table_and_json(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    assert main(["-c", str(config), "status"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split()[:3] == ["dataset", "status", "last_run"]
    assert "residents" in out and "success" in out
    assert main(["-c", str(config), "status", "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)["datasets"]
    assert row["status"] == "success" and row["inserted"] == row["fetched"] > 0
    assert row["watermark"] and row["next_run"] and row["days_left"] > 0


def _store(config: Path) -> StateStore:
    app = load_config(config)
    return StateStore(create_target_engine(app.target.url.get_secret_value()), app.target.table_prefix)


def _status(config: Path, capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    capsys.readouterr()
    assert main(["-c", str(config), "status", "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)["datasets"]
    return dict(row)


def test_a_refused_run_records_and_status_keeps_showing_the_watermark_in_force(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A refusal (authorization expired, key definition changed) moves no watermark: its run row
    records the one in force, and `syncd status` still shows it (it showed none, as if lost)."""
    app, store = load_config(config), _store(config)
    try:
        mark = store.get_watermark("residents")
        refused = run_dataset(app, app.datasets["residents"], store, now=datetime(2099, 6, 1, tzinfo=UTC))
        (row,) = store.last_runs("residents", limit=1)
    finally:
        store.engine.dispose()
    assert mark and refused.status == "refused"
    assert (row["status"], row["watermark_before"], row["watermark_after"]) == ("refused", mark, mark)
    status = _status(config, capsys)
    assert (status["status"], status["watermark"]) == ("refused", mark)


def test_status_shows_the_stored_watermark_whatever_the_last_run_row_says(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A run row without watermarks (a refusal recorded by an earlier syncd) hides nothing."""
    store = _store(config)
    try:
        mark = store.get_watermark("residents")
        old = RunInfo.create("residents", approval_code="x")
        store.begin_run(old)
        store.finish_run(
            old.run_id, "residents", status="refused", counts=RunCounts(), error="x", watermark=None
        )
    finally:
        store.engine.dispose()
    assert mark and _status(config, capsys)["watermark"] == mark


def test_runs_history(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["-c", str(config), "sync", "residents"]) == 0
    capsys.readouterr()
    assert main(["-c", str(config), "runs", "residents", "--limit", "5", "--json"]) == 0
    runs = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["status"] for r in runs] == ["success", "success"]
    assert runs[0]["inserted"] == 0 and runs[1]["inserted"] > 0  # newest first
    assert main(["-c", str(config), "runs", "nosuch"]) == 2


def test_runs_limit_past_64_bits_is_the_usage_error_changes_gives(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    capsys.readouterr()
    for command in (["runs", "residents"], ["changes", "residents", "--after-id", "0"]):
        for limit in ("99999999999999999999", "0"):
            assert main(["-c", str(config), *command, "--limit", limit]) == 2
            assert "--limit must be between 1 and 9223372036854775807" in capsys.readouterr().err


def test_runs_table_names_the_run_id_of_change_entries_its_approval_and_local_times(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """docs/changes.md §2: a change entry's run_id is looked up with `syncd runs DATASET`."""
    store = _store(config)
    try:
        run_id = store.changes("residents", limit=1)[0]["run_id"]
        (run,) = store.last_runs("residents")
    finally:
        store.engine.dispose()
    capsys.readouterr()
    assert main(["-c", str(config), "runs", "residents"]) == 0
    header, line = capsys.readouterr().out.splitlines()
    assert header.split()[:6] == ["run_id", "started_at", "finished_at", "status", "trigger", "approval_code"]
    local = run["started_at"].astimezone(ZoneInfo("Asia/Shanghai")).isoformat(sep=" ", timespec="seconds")
    assert line.startswith(f"{run_id}  {local}") and f" {run['approval_code']} " in line, line


def test_changes_feed(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    assert (
        main(["-c", str(config), "changes", "residents", "--since", "2000-01-01", "--format", "jsonl"]) == 0
    )
    feed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert feed and {c["op"] for c in feed} == {"insert"}
    assert (
        main(
            [
                "-c",
                str(config),
                "changes",
                "residents",
                "--after-id",
                str(feed[-3]["id"]),
                "--format",
                "jsonl",
            ]
        )
        == 0
    )
    assert [json.loads(x)["id"] for x in capsys.readouterr().out.splitlines()] == [c["id"] for c in feed[-2:]]
    assert main(["-c", str(config), "changes", "residents", "--since", "2000-01-01", "--limit", "3"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["id", "changed_at", "op", "row_key", "changed_columns", "run_id"]
    assert len(table) == 4
    assert main(["-c", str(config), "changes", "residents"]) == 2
    assert main(["-c", str(config), "changes", "residents", "--since", "yesterday"]) == 2


def test_changes_of_a_dataset_never_configured_nor_written_is_a_usage_error(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A typo printed '(none)' with exit 0, as if the dataset had no changes (runs says exit 2)."""
    capsys.readouterr()
    assert main(["-c", str(config), "changes", "residentz", "--after-id", "0"]) == 2
    err = capsys.readouterr().err
    assert "residentz" in err and "residents" in err


def test_report_defaults_to_this_month_where_the_unit_is(config: Path) -> None:
    """The default month is the configured zone's, not the server clock's: 20:00 UTC on 30 November
    is already December in Asia/Shanghai."""
    from datetime import UTC, datetime

    from syncd.commands.report import this_month

    assert this_month("Asia/Shanghai", datetime(2026, 11, 30, 20, tzinfo=UTC)) == "2026-12"
    assert this_month("UTC", datetime(2026, 11, 30, 20, tzinfo=UTC)) == "2026-11"
    assert main(["-c", str(config), "report"]) == 0


def test_a_report_of_a_month_the_runs_retention_may_have_pruned_says_so(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """With runs.retention_days the daemon deletes old runs: the report of such a month counted fewer
    runs with no word of it (a monthly report filed with the data bureau). It warns on stderr, the
    report itself (CSV for a spreadsheet) unchanged."""
    from syncd.commands.report import pruned_month_warning

    now = datetime(2026, 12, 8, 1, tzinfo=UTC)
    app = load_config(config)
    assert pruned_month_warning(app, "2025-01", now) is None  # runs are kept forever by default
    config.write_text(config.read_text(encoding="utf-8") + "runs: {retention_days: 400}\n", encoding="utf-8")
    app = load_config(config)
    warning = pruned_month_warning(app, "2025-10", now)  # before the cut-off of 2025-11-03
    assert warning is not None and "runs.retention_days is 400" in warning
    assert "2025-11-03 09:00 (Asia/Shanghai)" in warning and "--month 2025-10 --format csv" in warning
    assert pruned_month_warning(app, "2025-11", now) is not None  # its first days are before it
    assert pruned_month_warning(app, "2025-12", now) is None

    capsys.readouterr()
    assert main(["-c", str(config), "report", "--month", "2025-10", "--format", "csv"]) == 0
    captured = capsys.readouterr()
    assert "warning: runs.retention_days is 400" in captured.err and "warning" not in captured.out
    assert main(["-c", str(config), "report", "--format", "csv"]) == 0  # this month: nothing to say
    assert "warning" not in capsys.readouterr().err
