"""``syncd plan``: counts match what the next real run does, and nothing is written."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from syncd.commands.plan import render
from syncd.config import load_config
from syncd.gateway import Gateway
from syncd.ops.plan import plan_dataset
from syncd.runner import run_dataset
from syncd.targets import StateStore, create_target_engine
from tests.e2e import SECRET, SECRET_ENV, write_config
from tests.sources_kit import local_rows, make_app, store_for, upstream_table


@pytest.fixture
def gateway(monkeypatch: pytest.MonkeyPatch) -> Iterator[Gateway]:
    monkeypatch.setenv(SECRET_ENV, SECRET)
    gw = Gateway(records=300, seed=5, app_secret=SECRET)
    gw.start()
    try:
        yield gw
    finally:
        gw.stop()


def snapshot(engine: sa.Engine) -> dict[str, Any]:
    """Every table and every row of the database (what 'writes nothing' is checked against)."""
    inspector = sa.inspect(engine)
    out: dict[str, Any] = {}
    quote = engine.dialect.identifier_preparer.quote
    with engine.connect() as conn:
        for name in sorted(inspector.get_table_names()):
            rows = conn.execute(sa.text(f"SELECT * FROM {quote(name)}")).all()  # noqa: S608 - names from the DB
            out[name] = sorted(map(repr, rows))
    return out


def test_plan_predicts_the_run_and_writes_nothing(tmp_path: Path, gateway: Gateway, sqlite_url: str) -> None:
    app = load_config(write_config(tmp_path, db_url=sqlite_url, gateway_url=gateway.url, batch_size=120))
    ds = app.datasets["residents"]
    engine = create_target_engine(sqlite_url)
    store = StateStore(engine, app.target.table_prefix)
    try:
        # first plan on an empty database: everything would be inserted, no table gets created
        first = plan_dataset(app, ds, engine, samples=3)
        assert snapshot(engine) == {}
        assert first.watermark is None
        inserts = first.categories["insert"]
        assert inserts.count > 250 and len(inserts.samples) == 3
        assert "resident_id" in inserts.samples[0]["row"]
        assert first.categories["update"].count == 0

        done = run_dataset(app, ds, store)
        assert done.ok, done.error
        assert done.counts.inserted == inserts.count
        assert done.counts.quarantined == first.categories["quarantine"].count

        # change upstream: updates, logical deletes, new rows
        ids = gateway.store.ids()
        gateway.store.update(ids[:7], remark="地址变更")
        gateway.store.logical_delete(ids[10:13])
        gateway.store.insert(4)
        before = snapshot(engine)
        second = plan_dataset(app, ds, engine, samples=10)
        assert snapshot(engine) == before, "plan must not write anything"
        assert second.watermark == done.watermark_after
        cats = {name: c.count for name, c in second.categories.items()}
        assert cats["update"] >= 1 and cats["delete"] == 3 and cats["insert"] >= 1
        update = second.categories["update"].samples[0]
        assert update["changes"]["remark"]["new"] == "地址变更"

        rerun = run_dataset(app, ds, store)
        assert rerun.ok, rerun.error
        assert (rerun.counts.inserted, rerun.counts.updated, rerun.counts.deleted) == (
            cats["insert"], cats["update"], cats["delete"]
        )
    finally:
        engine.dispose()


def test_plan_shows_a_hashed_key_of_a_quarantined_record_hashed(
    tmp_path: Path, gateway: Gateway, sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The quarantine samples of a plan name the record's key as the quarantine itself stores it:
    a hashed key column's value hashed. plan printed the clear ID number."""
    monkeypatch.setenv("SALT", "pepper")
    household = "    source: householdSize\n    type: int\n    transforms: [null_if]\n"
    id_old = (
        "    length: 18\n    transforms: [strip, halfwidth, upper]\n"
        "    validators: [required, not_excel_damaged, id_number]\n"
    )
    id_new = (
        "    length: 64\n    nullable: false\n"
        "    transforms: [strip, halfwidth, upper, {hash: {salt: '${SALT}'}}]\n"
    )
    config = write_config(
        tmp_path,
        db_url=sqlite_url,
        gateway_url=gateway.url,
        replace=[
            (household, household + "    validators: [{range: {max: 3}}]\n"),  # quarantines many
            (id_old, id_new),
            ("key: [resident_id]", "key: [id_number]"),
        ],
    )
    app = load_config(config)
    engine = create_target_engine(sqlite_url)
    try:
        plan = plan_dataset(app, app.datasets["residents"], engine, samples=50)
    finally:
        engine.dispose()
    samples = plan.categories["quarantine"].samples
    assert samples and all(s["record_key"] for s in samples)
    clear = {str(r["idCard"]).strip().upper() for r in gateway.store.records()}
    assert not [s["record_key"] for s in samples if s["record_key"] in clear]
    assert all(re.fullmatch(r"[0-9a-f]{64}", s["record_key"]) for s in samples)


def test_plan_warns_when_a_sync_would_fail_on_the_error_limit(
    tmp_path: Path, gateway: Gateway, sqlite_url: str
) -> None:
    """plan said 'would insert' with no word of the quarantine share that makes the sync fail."""
    household = "    source: householdSize\n    type: int\n    transforms: [null_if]\n"
    strict = household + "    validators: [{range: {max: 2}}]\n"
    config = write_config(tmp_path, db_url=sqlite_url, gateway_url=gateway.url, replace=[(household, strict)])
    app = load_config(config)
    engine = create_target_engine(sqlite_url)
    try:
        plan = plan_dataset(app, app.datasets["residents"], engine, samples=1)
        done = run_dataset(app, app.datasets["residents"], StateStore(engine, app.target.table_prefix))
    finally:
        engine.dispose()
    assert not done.ok and "error limit" in (done.error or "")
    assert [w for w in plan.warnings if w.startswith("a sync would fail")], plan.warnings


def test_plan_on_a_missing_sqlite_file_creates_no_file(
    tmp_path: Path, gateway: Gateway, capsys: pytest.CaptureFixture[str]
) -> None:
    """`syncd plan` before the first run: everything would be inserted, and the dry run leaves no
    database file behind (connecting to SQLite would have created it, with its -wal and -shm)."""
    from syncd.cli import main

    db = tmp_path / "data" / "syncd.db"
    db.parent.mkdir()
    cfg = write_config(tmp_path, db_url=f"sqlite:///{db}", gateway_url=gateway.url)
    assert main(["-c", str(cfg), "plan", "residents", "--samples", "1"]) == 0
    out = capsys.readouterr().out
    assert "watermark: none (first run)" in out, out
    inserts = re.search(r"would insert \(新增\): (\d+)", out)
    assert inserts is not None and int(inserts.group(1)) > 250, out
    assert list(db.parent.iterdir()) == []


def test_plan_reports_a_database_error_in_one_line_not_a_traceback(
    tmp_path: Path, gateway: Gateway, db_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """`syncd plan` let SQLAlchemy's errors through (the CLI catches syncd's own): an operator got a
    traceback, with the SQL, for a table that did not fit (on MariaDB: key columns of two
    collations). It now says which dataset, what it was doing, where, and the database's words."""
    from syncd.cli import main

    cfg = write_config(tmp_path, db_url=db_url, gateway_url=gateway.url)
    assert main(["-c", str(cfg), "sync", "residents"]) == 0
    engine = create_target_engine(db_url)
    try:
        with engine.begin() as conn:  # a state table that no longer fits
            conn.exec_driver_sql("ALTER TABLE syncd_row_state DROP COLUMN row_hash")
    finally:
        engine.dispose()
    capsys.readouterr()
    assert main(["-c", str(cfg), "plan", "residents"]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith(
        "syncd plan: dataset residents: comparing a batch with syncd_row_state and resident_info in "
    ), err
    assert "failed: " in err and "row_hash" in err and err.count("\n") == 1, err
    assert "Traceback" not in err


def test_plan_of_an_expired_dataset_says_refused(tmp_path: Path, gateway: Gateway, sqlite_url: str) -> None:
    cfg = write_config(tmp_path, db_url=sqlite_url, gateway_url=gateway.url,
                       replace=[("valid_until: 2027-12-31", "valid_until: 2025-12-31"),
                                ("valid_from: 2026-01-01", "valid_from: 2025-01-01")])
    app = load_config(cfg)
    engine = create_target_engine(sqlite_url)
    try:
        result = plan_dataset(app, app.datasets["residents"], engine)
    finally:
        engine.dispose()
    assert result.refused is not None and "expired on 2025-12-31" in result.refused
    assert result.fetched == 0
    assert gateway.request_log == []


# --------------------------------------------------------------------------- full-snapshot deletes

NOW = datetime(2026, 3, 1, 12, 0, 0)


@pytest.fixture
def front(tmp_path: Path) -> Iterator[tuple[str, sa.Engine]]:
    url = f"sqlite:///{tmp_path / 'front.db'}"
    engine = sa.create_engine(url)
    yield url, engine
    engine.dispose()


def _snapshot_dataset(
    front_url: str, db_url: str, columns: dict[str, Any] | None = None, **snapshot_delete: Any
) -> tuple[Any, Any]:
    return make_app(
        db_url,
        {"type": "sql", "connection": "qzk", "table": "people", "key": ["id"], "page_size": 37},
        connections={"qzk": {"type": "sql", "url": front_url}},
        target={"snapshot_delete": {"max_ratio": 0.1, **snapshot_delete}},
        columns=columns,
    )


def test_plan_shows_the_snapshot_deletes_a_sync_would_make(
    front: tuple[str, sa.Engine], db_url: str
) -> None:
    """plan promised the inserts and updates of a full-snapshot dataset but not the rows a sync
    deletes as gone upstream: its counts differed from the sync's."""
    front_url, upstream = front
    table = upstream_table(upstream, 200, when=NOW)
    app, ds = _snapshot_dataset(front_url, db_url)
    store = store_for(db_url)
    try:
        assert run_dataset(app, ds, store, now=NOW).ok
        with upstream.begin() as conn:
            conn.execute(table.delete().where(table.c.id.in_(["p00150", "p00003"])))
            # a record that fails its mapping this time keeps its row, in a plan as in a sync
            conn.execute(table.update().where(table.c.id == "p00007").values(amount="七"))
        before = snapshot(store.engine)
        plan = plan_dataset(app, ds, store.engine, now=NOW, samples=5)
        assert snapshot(store.engine) == before, "plan must not write anything"
        deletes = plan.categories["delete"]
        assert deletes.count == 2
        assert [s["key"] for s in deletes.samples] == ["p00003", "p00150"]
        assert all(s["mode"] == "hard" and "snapshot_delete" in s["why"] for s in deletes.samples)
        assert plan.snapshot is not None and (plan.snapshot.live, plan.snapshot.missing) == (200, 2)
        assert plan.categories["quarantine"].count == 1
        text = render(plan)
        assert "would delete (删除): 2" in text and "of which gone upstream" in text and ": 2 of 200" in text

        done = run_dataset(app, ds, store, now=NOW)
        assert done.ok, done.error
        assert done.counts.deleted == deletes.count
        assert "p00007" in local_rows(store)
    finally:
        store.engine.dispose()


def test_plan_warns_when_the_snapshot_guard_would_fail_the_sync(
    front: tuple[str, sa.Engine], sqlite_url: str
) -> None:
    front_url, upstream = front
    table = upstream_table(upstream, 200, when=NOW)
    app, ds = _snapshot_dataset(front_url, sqlite_url)
    store = store_for(sqlite_url)
    try:
        assert run_dataset(app, ds, store, now=NOW).ok
        with upstream.begin() as conn:
            conn.execute(table.delete().where(table.c.id.in_([f"p{i:05d}" for i in range(180)])))
        plan = plan_dataset(app, ds, store.engine, now=NOW)
        done = run_dataset(app, ds, store, now=NOW)
    finally:
        store.engine.dispose()
    assert plan.categories["delete"].count == 0
    refused = "a sync would fail: snapshot delete refused: 180 of 200"
    assert [w for w in plan.warnings if w.startswith(refused)], plan.warnings
    assert not done.ok and "180 of 200" in (done.error or "")


def test_plan_counts_a_snapshot_delete_once_its_missing_runs_are_complete(
    front: tuple[str, sa.Engine], db_url: str
) -> None:
    front_url, upstream = front
    table = upstream_table(upstream, 100, when=NOW)
    app, ds = _snapshot_dataset(front_url, db_url, missing_runs=2)
    store = store_for(db_url)
    try:
        assert run_dataset(app, ds, store, now=NOW).ok
        with upstream.begin() as conn:
            conn.execute(table.delete().where(table.c.id == "p00010"))
        first = plan_dataset(app, ds, store.engine, now=NOW)
        assert first.categories["delete"].count == 0
        assert first.snapshot is not None and (first.snapshot.missing, first.snapshot.due) == (1, 0)
        assert "1 more stored rows were not in this read" in render(first)
        assert run_dataset(app, ds, store, now=NOW).counts.deleted == 0  # the streak starts
        second = plan_dataset(app, ds, store.engine, now=NOW)
        assert second.categories["delete"].count == 1
        assert [s["key"] for s in second.categories["delete"].samples] == ["p00010"]
        assert run_dataset(app, ds, store, now=NOW).counts.deleted == 1
    finally:
        store.engine.dispose()


def test_plan_shows_snapshot_deletes_of_a_hashed_key_hashed(
    front: tuple[str, sa.Engine], sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The keys come from the row state, which holds a hashed key column's values hashed."""
    front_url, upstream = front
    table = upstream_table(upstream, 50, when=NOW)
    columns = {
        "pid": {"source": "id", "type": "string", "length": 64, "nullable": False,
                "transforms": [{"hash": {"salt": "pepper"}}]},
        "name": {"source": "name", "type": "string", "length": 64},
    }
    app, ds = _snapshot_dataset(front_url, sqlite_url, columns=columns)
    store = store_for(sqlite_url)
    try:
        assert run_dataset(app, ds, store, now=NOW).ok
        with upstream.begin() as conn:
            conn.execute(table.delete().where(table.c.id == "p00042"))
        plan = plan_dataset(app, ds, store.engine, now=NOW)
        assert run_dataset(app, ds, store, now=NOW).counts.deleted == 1
    finally:
        store.engine.dispose()
    samples = plan.categories["delete"].samples
    assert len(samples) == 1 and re.fullmatch(r"[0-9a-f]{64}", samples[0]["key"])
    assert "p00042" not in render(plan)
