"""Deletions sent as tombstones: the key, the delete flag and every other field empty.

A record flagged deleted (``target.logical_delete``) needs only its key mapped: a tombstone whose
other fields would fail their checks (``required``, ``nullable: false``, a validator) deletes its
row; only a tombstone whose key cannot be mapped is quarantined. A soft delete sets the flag
column alone, so a tombstone's empty fields never blank the row's other columns.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from syncd.config import load_config
from syncd.gateway import Gateway
from syncd.ops.plan import plan_dataset
from syncd.ops.quarantine import replay_quarantine
from syncd.runner import run_dataset
from syncd.targets import StateStore, create_target_engine
from tests.e2e import ListSource, demo_gateway, sync_once, target_rows, write_config
from tests.sources_kit import make_app, store_for

NOW = datetime(2026, 3, 1, 12, 0, 0)
COLUMNS: dict[str, Any] = {
    "pid": {"source": "id", "type": "string", "length": 32, "nullable": False},
    "name": {"source": "name", "type": "string", "length": 64, "validators": ["required"]},
    "amount": {"source": "amount", "type": "int", "nullable": False},
}
LIVE = [{"id": f"p{i}", "name": "张三", "amount": i, "gone": "0"} for i in range(20)]


def _rows(store: StateStore) -> dict[str, tuple[Any, ...]]:
    with store.engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT * FROM people_local")).mappings().all()
    return {str(r["pid"]): (r["name"], r["amount"], r.get("is_deleted")) for r in rows}


@pytest.mark.parametrize("mode", ["hard", "soft"])
def test_a_tombstone_deletes_its_row_and_blanks_nothing(db_url: str, mode: str) -> None:
    app, ds = make_app(
        db_url, {"type": "sql", "connection": "qzk", "table": "people", "key": ["id"]},
        connections={"qzk": {"type": "sql", "url": "sqlite://"}},
        target={"logical_delete": {"field": "gone", "mode": mode}}, columns=COLUMNS,
    )
    store = store_for(db_url)
    try:
        first = run_dataset(app, ds, store, now=NOW, source_factory=lambda a, d: ListSource([list(LIVE)]))
        assert first.ok, first.error
        # required name missing, amount not a number and not nullable: none of it matters to a delete
        tombstones = [
            {"id": "p0", "name": None, "amount": None, "gone": "1"},
            {"id": "p1", "name": "", "amount": "", "gone": "1"},
            {"id": "p2", "gone": "1"},
        ]
        second = run_dataset(app, ds, store, now=NOW, source_factory=lambda a, d: ListSource([tombstones]))
        assert second.ok, second.error
        assert (second.counts.deleted, second.counts.quarantined) == (3, 0)
        rows = _rows(store)
        if mode == "hard":
            assert not {"p0", "p1", "p2"} & set(rows)
        else:  # the flag alone is set: the row keeps its other values
            assert [rows[k][:2] for k in ("p0", "p1", "p2")] == [("张三", 0), ("张三", 1), ("张三", 2)]
            assert [bool(rows[k][2]) for k in ("p0", "p1", "p2", "p3")] == [True, True, True, False]
        assert len(rows) == (17 if mode == "hard" else 20)
    finally:
        store.engine.dispose()


def test_a_tombstone_without_its_key_is_quarantined(sqlite_url: str) -> None:
    app, ds = make_app(
        sqlite_url, {"type": "sql", "connection": "qzk", "table": "people", "key": ["id"]},
        connections={"qzk": {"type": "sql", "url": "sqlite://"}},
        target={"logical_delete": {"field": "gone"}}, columns=COLUMNS,
    )
    store = store_for(sqlite_url)
    try:
        page = [*LIVE, {"id": None, "name": None, "gone": "1"}, {"id": "k" * 40, "gone": "1"}]
        result = run_dataset(app, ds, store, now=NOW, source_factory=lambda a, d: ListSource([page]))
        assert result.ok, result.error
        assert (result.counts.inserted, result.counts.quarantined) == (20, 2)
        with store.engine.connect() as conn:
            reasons = sorted(conn.execute(sa.text("SELECT reason FROM syncd_quarantine")).scalars())
        assert reasons[0].startswith("pid: ") and "too long (40 > 32)" in reasons[0]
        assert reasons[1].startswith("pid: required value missing")
    finally:
        store.engine.dispose()


def test_a_tombstone_an_older_syncd_quarantined_is_deleted_by_replay(sqlite_url: str) -> None:
    """Before the delete flag was read first, a tombstone sat in the quarantine ("required value
    missing"): ``syncd quarantine replay`` deletes its row now. Here the entry is made as it was
    then: by the dataset without its logical_delete rule, which replay runs with."""
    source = {"type": "sql", "connection": "qzk", "table": "people", "key": ["id"]}
    plain_app, plain = make_app(sqlite_url, source, connections={"qzk": {"type": "sql", "url": "sqlite://"}},
                                columns=COLUMNS)
    app, ds = make_app(sqlite_url, source, connections={"qzk": {"type": "sql", "url": "sqlite://"}},
                       target={"logical_delete": {"field": "gone"}}, columns=COLUMNS)
    store = store_for(sqlite_url)
    try:
        live = run_dataset(plain_app, plain, store, now=NOW, source_factory=lambda a, d: ListSource([LIVE]))
        assert live.ok, live.error
        tombstone = [{"id": "p0", "name": None, "amount": None, "gone": "1"}]
        held = run_dataset(
            plain_app, plain, store, now=NOW, source_factory=lambda a, d: ListSource([tombstone])
        )
        assert held.counts.quarantined == 1
        result = replay_quarantine(app, ds, store)
        assert (result.deleted, result.still_failing) == (1, 0)
        assert "p0" not in _rows(store) and len(_rows(store)) == 19
        with store.engine.connect() as conn:
            assert conn.execute(sa.text("SELECT count(*) FROM syncd_quarantine")).scalar_one() == 0
    finally:
        store.engine.dispose()


@pytest.mark.parametrize("worker", ["never", "always"])
def test_a_gateway_tombstone_deletes_the_demo_row(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sqlite_url: str, worker: str
) -> None:
    """The demo dataset's id_number is ``required``: a tombstone without it still deletes its row,
    mapped in the run's own process or in the read worker, re-synced with its digest compared."""
    with demo_gateway(monkeypatch, records=120, seed=3) as gateway:
        cfg = write_config(tmp_path, db_url=sqlite_url, gateway_url=gateway.url)
        text = cfg.read_text(encoding="utf-8")
        cfg.write_text(text.replace("defaults:\n", f"defaults:\n  read_worker: {worker}\n", 1), "utf-8")
        first = sync_once(cfg)
        assert first.ok, first.error
        rows = target_rows(sqlite_url)
        victims = sorted(rows)[:3]
        _tombstone(gateway, victims)
        planned = _plan(cfg, sqlite_url)
        assert (planned["delete"], planned["quarantine"]) == (3, 0)
        second = sync_once(cfg)
        assert second.ok, second.error
        assert (second.counts.deleted, second.counts.quarantined) == (3, 0)
        assert set(target_rows(sqlite_url)) == set(rows) - set(victims)


def _tombstone(gateway: Gateway, ids: list[str]) -> None:
    empty = dict.fromkeys((
        "name", "idCard", "gender", "birthDate", "phone", "address", "ethnicity", "education",
        "maritalStatus", "householdId", "relation", "income", "householdSize", "registerDate",
        "remark", "contact",
    ))
    gateway.store.update(ids, isDeleted="1", **empty)


def _plan(cfg: Path, url: str) -> dict[str, int]:
    app = load_config(cfg)
    engine = create_target_engine(url)
    try:
        result = plan_dataset(app, app.datasets["residents"], engine, samples=1)
    finally:
        engine.dispose()
    return {name: c.count for name, c in result.categories.items()}
