"""Quarantine replay: records quarantined by a too-strict validator land after the YAML is relaxed."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa

from syncd.config import load_config
from syncd.config.model import AppConfig, DatasetConfig
from syncd.gateway import Gateway
from syncd.mapping.compiler import LEFT_OUT
from syncd.ops.quarantine import find_entry, list_entries, replay_quarantine
from syncd.runner import run_dataset
from syncd.targets import StateStore, create_target_engine
from tests.e2e import SECRET, SECRET_ENV, ListSource, change_log, target_rows, write_config

HOUSEHOLD = "    source: householdSize\n    type: int\n    transforms: [null_if]\n"
STRICT = HOUSEHOLD + "    validators: [{range: {max: 3}}]\n"


@pytest.fixture
def gateway(monkeypatch: pytest.MonkeyPatch) -> Iterator[Gateway]:
    monkeypatch.setenv(SECRET_ENV, SECRET)
    gw = Gateway(records=200, seed=3, app_secret=SECRET)
    gw.start()
    try:
        yield gw
    finally:
        gw.stop()


def cli(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, SECRET_ENV: SECRET}
    return subprocess.run(
        [sys.executable, "-m", "syncd", "-c", str(config), "quarantine", *args],
        capture_output=True, text=True, env=env, check=False, timeout=60,
    )


def test_replay_lands_records_after_the_yaml_is_relaxed(
    tmp_path: Path, gateway: Gateway, db_url: str
) -> None:
    config = write_config(tmp_path, db_url=db_url, gateway_url=gateway.url, replace=[(HOUSEHOLD, STRICT)])
    strict = load_config(config)
    engine = create_target_engine(db_url)
    store = StateStore(engine, strict.target.table_prefix)
    try:
        first = run_dataset(strict, strict.datasets["residents"], store)
        assert first.ok, first.error
        held = first.counts.quarantined
        assert held >= 5
        entries = list_entries(store, "residents", limit=1000)
        assert len(entries) == held
        assert any("household_size" in e["reason"] for e in entries)
        one = entries[0]
        assert find_entry(store, "residents", one["raw_hash"][:10])[0]["raw_hash"] == one["raw_hash"]
        landed_before = set(target_rows(db_url))

        # the CLI shows them too
        shown = cli(config, "list", "residents", "--limit", "3")
        assert shown.returncode == 0, shown.stderr
        assert "3 quarantined record(s) shown" in shown.stdout
        detail = cli(config, "show", "residents", one["raw_hash"][:12])
        assert detail.returncode == 0 and "household_size" in detail.stdout
        assert f"row_key: {one['record_key']}" in detail.stdout  # the demo's key is the id as sent

        # relax the YAML and replay
        (tmp_path / "datasets" / "residents.yaml").write_text(
            (tmp_path / "datasets" / "residents.yaml").read_text(encoding="utf-8").replace(STRICT, HOUSEHOLD),
            encoding="utf-8",
        )
        relaxed = load_config(config)
        result = replay_quarantine(relaxed, relaxed.datasets["residents"], store)
        failing = sum(1 for e in entries if "household_size" not in e["reason"])
        assert result.examined == held
        assert result.inserted + result.deleted + result.unchanged == held - failing
        assert result.still_failing == failing
        assert len(list_entries(store, "residents", limit=1000)) == failing
        rows = target_rows(db_url)
        new_keys = set(rows) - landed_before
        assert len(new_keys) == result.inserted
        assert all(rows[k]["household_size"] is None or rows[k]["household_size"] > 3 for k in new_keys)
        inserts = [c for c in change_log(db_url) if c["run_id"] == result.run_id]
        assert len(inserts) == result.inserted + result.deleted
        runs = [r for r in store.last_runs("residents") if r["run_id"] == result.run_id]
        assert runs[0]["trigger"] == "replay" and runs[0]["status"] == "success"

        # a second replay changes nothing
        again = replay_quarantine(relaxed, relaxed.datasets["residents"], store)
        assert again.examined == failing and again.inserted == 0
    finally:
        engine.dispose()


def test_replay_via_cli_reports_counts(tmp_path: Path, gateway: Gateway, sqlite_url: str) -> None:
    config = write_config(tmp_path, db_url=sqlite_url, gateway_url=gateway.url, replace=[(HOUSEHOLD, STRICT)])
    app = load_config(config)
    engine = create_target_engine(sqlite_url)
    try:
        assert run_dataset(app, app.datasets["residents"], StateStore(engine)).ok
    finally:
        engine.dispose()
    path = tmp_path / "datasets" / "residents.yaml"
    path.write_text(path.read_text(encoding="utf-8").replace(STRICT, HOUSEHOLD), encoding="utf-8")
    done = cli(config, "replay", "residents")
    assert done.returncode == 0, done.stderr
    assert "replayed" in done.stdout and "inserted=" in done.stdout and "superseded=0" in done.stdout
    missing = cli(config, "show", "residents", "ffffffffffff")
    assert missing.returncode == 1 and "no record" in missing.stderr


def test_show_and_list_on_a_database_without_syncds_tables_say_so_in_one_line(
    tmp_path: Path, gateway: Gateway, sqlite_url: str
) -> None:
    """Before the first run there is no quarantine table: show printed a SQLAlchemy traceback."""
    config = write_config(tmp_path, db_url=sqlite_url, gateway_url=gateway.url)
    for args in (("show", "residents", "abcdef"), ("list", "residents")):
        done = cli(config, *args)
        assert done.returncode == 1, (args, done.stdout, done.stderr)
        assert "Traceback" not in done.stderr and "reading the quarantine of dataset residents" in done.stderr
        assert len(done.stderr.strip().splitlines()) == 1, done.stderr


def test_status_shows_the_watermark_after_a_replay(tmp_path: Path, gateway: Gateway, sqlite_url: str) -> None:
    """A replay leaves the watermark where it is and records it as its own: status, which shows
    the latest run's, said there was none."""
    import json

    config = write_config(tmp_path, db_url=sqlite_url, gateway_url=gateway.url, replace=[(HOUSEHOLD, STRICT)])
    app = load_config(config)
    engine = create_target_engine(sqlite_url)
    store = StateStore(engine)
    try:
        first = run_dataset(app, app.datasets["residents"], store)
        assert first.ok and first.watermark_after
        replayed = replay_quarantine(app, app.datasets["residents"], store)
        run = next(r for r in store.last_runs("residents") if r["run_id"] == replayed.run_id)
        assert run["watermark_before"] == first.watermark_after
    finally:
        engine.dispose()
    env = {**os.environ, SECRET_ENV: SECRET}
    status = subprocess.run(
        [sys.executable, "-m", "syncd", "-c", str(config), "status", "--json"],
        capture_output=True, text=True, env=env, check=True, timeout=60,
    )
    rows = json.loads(status.stdout)
    rows = rows if isinstance(rows, list) else rows.get("datasets", rows)
    (residents,) = [r for r in rows if r["dataset"] == "residents"]
    assert residents["watermark"] == first.watermark_after


def test_a_replay_of_records_that_still_fail_changes_neither_their_entries_nor_the_report(
    tmp_path: Path, gateway: Gateway, sqlite_url: str
) -> None:
    """Replaying without a fix: the entries keep their keys and counts (the replay wrote them back
    with no key and one more sighting), and the usage report counts nothing new as received or
    quarantined (a replay receives nothing from upstream)."""
    from datetime import UTC, datetime

    from syncd.ops.report import usage_report

    config = write_config(tmp_path, db_url=sqlite_url, gateway_url=gateway.url, replace=[(HOUSEHOLD, STRICT)])
    app = load_config(config)
    engine = create_target_engine(sqlite_url)
    store = StateStore(engine)
    month = datetime.now(UTC).astimezone(ZoneInfo(app.timezone)).strftime("%Y-%m")
    try:
        assert run_dataset(app, app.datasets["residents"], store).ok
        before = {e["raw_hash"]: e for e in list_entries(store, "residents", limit=1000)}
        assert before and all(e["record_key"] for e in before.values())
        (usage,) = [u for u in usage_report(app, engine, month) if u.dataset == "residents"]
        result = replay_quarantine(app, app.datasets["residents"], store)
        assert result.still_failing == len(before) and result.inserted == 0
        after = {e["raw_hash"]: e for e in list_entries(store, "residents", limit=1000)}
        assert {h: (e["record_key"], e["times"]) for h, e in after.items()} == {
            h: (e["record_key"], e["times"]) for h, e in before.items()
        }
        (again,) = [u for u in usage_report(app, engine, month) if u.dataset == "residents"]
        assert (again.fetched, again.quarantined) == (usage.fetched, usage.quarantined)
    finally:
        engine.dispose()


def test_quarantine_list_and_show_print_local_times(
    tmp_path: Path, gateway: Gateway, sqlite_url: str
) -> None:
    """Like status, runs and changes: the configured zone's time, not UTC without a label."""
    config = write_config(tmp_path, db_url=sqlite_url, gateway_url=gateway.url, replace=[(HOUSEHOLD, STRICT)])
    app = load_config(config)
    engine = create_target_engine(sqlite_url)
    try:
        assert run_dataset(app, app.datasets["residents"], StateStore(engine)).ok
        (entry,) = list_entries(StateStore(engine), "residents", limit=1)
    finally:
        engine.dispose()
    local = entry["last_seen"].astimezone(ZoneInfo("Asia/Shanghai"))
    shown = cli(config, "list", "residents", "--limit", "1")
    assert f"last={local:%Y-%m-%d %H:%M:%S}" in shown.stdout, shown.stdout
    detail = cli(config, "show", "residents", entry["raw_hash"][:12])
    assert f"last_seen: {local.isoformat(sep=' ')}" in detail.stdout, detail.stdout


def _people(*, strict: bool) -> tuple[AppConfig, DatasetConfig]:
    columns = {
        "pid": {"source": "id", "length": 32, "nullable": False},
        "name": {"source": "name", "length": 16, "transforms": [{"mask": "name"}]},
        "amount": {"source": "amount", "length": 32, "validators": [{"regex": "^[0-9]+$"}] if strict else []},
        "emergency": {"source": "contact.emergencyName", "length": 16, "transforms": [{"mask": "name"}]},
        "phone": {"source": "phones.0", "length": 16},
    }
    dataset = DatasetConfig.model_validate({
        "name": "people",
        "source": {"type": "sql", "connection": "qzk", "table": "people", "key": ["id"]},
        "authorization": {"approval_code": "测试〔2026〕2号", "valid_from": "2020-01-01",
                          "valid_until": "2099-12-31",
                          "fields": ["id", "name", "amount", "contact.emergencyName", "phones.0"]},
        "target": {"table": "people_local", "key": ["pid"]},
        "columns": columns,
    })
    app = AppConfig.model_validate({
        "target": {"url": "sqlite://"}, "connections": {"qzk": {"type": "sql", "url": "sqlite://"}},
        "datasets": {"people": dataset},
    })
    return app, dataset


def test_a_quarantined_record_keeps_only_the_fields_the_dataset_may_hold(sqlite_url: str) -> None:
    """Fields upstream sent beyond authorization.fields (top-level ones, the other fields of a
    partly authorized object, the other items of a list) are left out of the entry, counted;
    the masked ones are masked; a replay after the fix lands the record from what was kept."""
    app, dataset = _people(strict=True)
    record = {
        "id": "p1", "name": "张三丰", "amount": "not a number",
        "mobile": "13812345678", "religion": "某宗教",  # never authorized
        "contact": {"emergencyName": "李四", "phone": "13900000000"},
        "phones": ["0791-8888", "13700000000"],
    }
    good = [{"id": f"g{i}", "name": "王五", "amount": str(i)} for i in range(20)]
    store = StateStore(create_target_engine(sqlite_url))
    try:
        result = run_dataset(app, dataset, store, source_factory=lambda a, d: ListSource([[*good, record]]))
        assert result.ok, result.error
        assert result.counts.quarantined == 1
        (entry,) = list_entries(store, "people", limit=10)
        assert entry["raw"] == {
            "id": "p1", "name": "张**", "amount": "not a number",
            "contact": {"emergencyName": "李*"}, "phones": ["0791-8888", None],
            LEFT_OUT: 4,  # mobile, religion, contact.phone, phones.1
        }
        with store.engine.connect() as conn:
            stored = conn.execute(sa.text("SELECT raw, protected FROM syncd_quarantine")).one()
        for clear in ("13812345678", "某宗教", "13900000000", "13700000000", "三丰"):
            assert clear not in stored.raw and clear not in (stored.protected or ""), clear

        relaxed_app, relaxed = _people(strict=False)
        replayed = replay_quarantine(relaxed_app, relaxed, store)
        assert (replayed.inserted, replayed.still_failing) == (1, 0)
        with store.engine.connect() as conn:
            row = conn.execute(sa.text("SELECT * FROM people_local WHERE pid = 'p1'")).mappings().one()
        assert dict(row) == {"pid": "p1", "name": "张**", "amount": "not a number", "emergency": "李*",
                             "phone": "0791-8888"}
    finally:
        store.engine.dispose()
