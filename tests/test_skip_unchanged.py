"""Records whose digest is unchanged are not mapped again (row_state.record_digest).

The fast path of a re-sync: a record whose digest (over the fields the mapping reads, keyed
with the mapping's fingerprint) equals the one stored for its key maps to the row already
written, so the runner counts it unchanged without mapping, hashing or writing it. These
tests prove it is skipped when it may be and never when it may not: a changed field, a
changed configuration (code table, salt), a key twice in one batch, an older database.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from syncd.changes import record_digester
from syncd.config import load_config
from syncd.config.model import AppConfig, DatasetConfig
from syncd.gateway import Gateway
from syncd.mapping import CompiledMapping, compile_mapping
from syncd.runner import Backfill, RunResult, run_dataset
from syncd.targets import StateStore, create_target_engine
from tests.e2e import (
    SECRET_ENV,
    ListSource,
    change_log,
    demo_gateway,
    target_rows,
    upstream_active,
    write_config,
)


@pytest.fixture
def gateway(monkeypatch: pytest.MonkeyPatch) -> Iterator[Gateway]:
    with demo_gateway(monkeypatch, records=400, seed=11) as gw:
        yield gw


class CountingSync:
    """`syncd sync residents --full`, counting the records the compiled mapping maps."""

    def __init__(self, config: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.config = config
        self.mapped = 0
        self.app = load_config(config)
        self.engine = create_target_engine(self.app.target.url.get_secret_value())
        self.store = StateStore(self.engine, self.app.target.table_prefix)

        def counting_compile(dataset: DatasetConfig, tables: Any = None, **kw: Any) -> CompiledMapping:
            mapping = compile_mapping(dataset, tables, **kw)
            inner = mapping.map_record

            def map_record(record: Any) -> tuple[Any, ...]:
                self.mapped += 1
                return inner(record)

            return dataclasses.replace(mapping, map_record=map_record)

        monkeypatch.setattr("syncd.runner.compile_mapping", counting_compile)

    def reload(self) -> None:
        self.app = load_config(self.config)

    def run(self, **kw: Any) -> RunResult:
        self.mapped = 0
        result = run_dataset(
            self.app, self.app.datasets["residents"], self.store, backfill=Backfill(full=True), **kw
        )
        assert result.ok, result.error
        return result


def counting_sync(
    tmp_path: Path, gateway: Gateway, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[CountingSync]:
    """A :class:`CountingSync` of the e2e configuration against ``gateway``; its engine is
    disposed afterwards (the body of the ``sync`` fixtures here and in tests/test_upgrade.py)."""
    s = CountingSync(write_config(tmp_path, db_url=db_url, gateway_url=gateway.url), monkeypatch)
    try:
        yield s
    finally:
        s.engine.dispose()


@pytest.fixture
def sync(
    tmp_path: Path, gateway: Gateway, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[CountingSync]:
    yield from counting_sync(tmp_path, gateway, db_url, monkeypatch)


def never_skipped(gateway: Gateway, result: RunResult) -> int:
    """Records mapped on every run: quarantined ones and logically deleted ones (no live state)."""
    flagged = len(gateway.store.records()) - len(upstream_active(gateway.store))
    return result.counts.quarantined + flagged


def test_a_resync_maps_only_the_changed_records(sync: CountingSync, gateway: Gateway, db_url: str) -> None:
    first = sync.run()
    assert sync.mapped == first.counts.fetched  # a first load maps everything
    entries = len(change_log(db_url))

    second = sync.run()
    assert second.counts.fetched == first.counts.fetched
    assert (second.counts.inserted, second.counts.updated, second.counts.deleted) == (0, 0, 0)
    assert sync.mapped == never_skipped(gateway, second)
    assert len(change_log(db_url)) == entries

    ids = sorted(upstream_active(gateway.store))[:5]
    gateway.store.update(ids, remark="已核实")
    third = sync.run()
    assert (third.counts.inserted, third.counts.updated, third.counts.deleted) == (0, 5, 0)
    assert sync.mapped == never_skipped(gateway, third) + 5
    new = change_log(db_url)[entries:]
    assert sorted(e["row_key"] for e in new) == ids
    assert all(json.loads(e["new_values"])["remark"] == "已核实" for e in new)
    assert {k: r["remark"] for k, r in target_rows(db_url).items() if k in ids} == dict.fromkeys(
        ids, "已核实"
    )


def test_a_field_the_mapping_does_not_read_costs_one_mapping_and_no_change(
    sync: CountingSync, gateway: Gateway, db_url: str
) -> None:
    sync.run()
    entries = len(change_log(db_url))
    ids = sorted(upstream_active(gateway.store))[:5]
    for rid in ids:  # `relation` is authorized but not mapped; the update time stays
        record = gateway.store.get(rid)
        assert record is not None
        gateway.store.update([rid], relation="99", updateTime=record["updateTime"])
    # the records' texts changed, so their digests did (hashing.py): mapped once, rows unchanged
    again = sync.run()
    assert (again.counts.inserted, again.counts.updated) == (0, 0)
    assert sync.mapped == never_skipped(gateway, again) + len(ids)
    assert len(change_log(db_url)) == entries
    # and their new digests were stored: skipped from then on
    steady = sync.run()
    assert sync.mapped == never_skipped(gateway, steady)


def test_digests_stored_by_values_cost_one_mapping_each_after_the_upgrade(
    sync: CountingSync, gateway: Gateway, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rows loaded while records were digested by their values (before pysimdjson, or without it):
    the first re-sync digests their texts, finds no stored equal, maps each record once, writes
    no change and stores the new digests; the next one skips them (hashing.py, docs/upgrade.md)."""
    with monkeypatch.context() as before:
        before.setattr("syncd.sources.http.texts.AVAILABLE", False)
        first = sync.run()
    entries = len(change_log(db_url))
    upgraded = sync.run()
    assert sync.mapped == first.counts.fetched
    assert (upgraded.counts.inserted, upgraded.counts.updated, upgraded.counts.deleted) == (0, 0, 0)
    assert len(change_log(db_url)) == entries
    steady = sync.run()
    assert sync.mapped == never_skipped(gateway, steady)
    assert steady.counts.unchanged == upgraded.counts.unchanged


def test_a_changed_code_table_remaps_every_record(
    sync: CountingSync, gateway: Gateway, db_url: str, tmp_path: Path
) -> None:
    sync.run()
    before = target_rows(db_url)
    graduates = sorted(k for k, r in before.items() if r["education"] == "大学本科")
    assert graduates, "the generated data has no 大学本科 record; pick another code"
    main = tmp_path / "syncd.yaml"
    main.write_text(
        main.read_text(encoding="utf-8").replace('"20": 大学本科', '"20": 本科'), encoding="utf-8"
    )
    sync.reload()

    changed = sync.run()
    assert sync.mapped == changed.counts.fetched, "a new mapping must not trust digests made by the old one"
    assert changed.counts.updated == len(graduates)
    after = target_rows(db_url)
    assert sorted(k for k, r in after.items() if r["education"] == "本科") == graduates
    steady = sync.run()
    assert steady.counts.updated == 0
    assert sync.mapped == never_skipped(gateway, steady)


def _salted_dataset(salt: str) -> DatasetConfig:
    return DatasetConfig.model_validate(
        {
            "name": "people",
            "source": {"type": "http", "connection": "gw", "path": "/p"},
            "authorization": {
                "approval_code": "T-1",
                "fields": ["id", "card"],
                "valid_from": "2026-01-01",
                "valid_until": "2027-12-31",
            },
            "target": {"table": "people", "key": ["pid"]},
            "columns": {
                "pid": {"source": "id"},
                "card": {"source": "card", "length": 64, "transforms": [{"hash": {"salt": salt}}]},
            },
        }
    )


def test_the_fingerprint_follows_every_input_of_the_mapping() -> None:
    base = compile_mapping(_salted_dataset("salt-one"))
    assert base.fingerprint == compile_mapping(_salted_dataset("salt-one")).fingerprint
    assert base.fingerprint != compile_mapping(_salted_dataset("salt-two")).fingerprint
    assert (
        base.fingerprint != compile_mapping(_salted_dataset("salt-one"), {"unused": {"1": "a"}}).fingerprint
    )
    assert base.record_fields == ("card", "id")
    assert "salt-one" not in repr(base)


def test_the_record_digest_is_exact_about_values_and_types() -> None:
    digest = record_digester(["a", "b"], b"k" * 16)
    other_key = record_digester(["a", "b"], b"j" * 16)
    one = digest({"a": "1", "b": {"x": 1, "y": 2}})
    assert one is not None and len(one) == 32
    # pinned: stored digests must survive a faster implementation (all fields present, or some
    # missing, or a single field read)
    assert one == "632a58a5f29a6324b2333f492ffed7c1"
    assert digest({"a": "1", "b": None}) == digest({"a": "1"})
    assert record_digester(["a"], b"k" * 16)({"a": "1"}) == "063db3ee6ba83a78961c258ff71fc8a2"
    assert digest({"b": {"y": 2, "x": 1}, "a": "1", "unread": 5}) == one  # order and unread fields
    assert other_key({"a": "1", "b": {"x": 1, "y": 2}}) != one
    variants = [
        {"a": 1},
        {"a": "1"},
        {"a": 1.0},
        {"a": True},
        {"a": None},
        {},
        {"a": "2024-01-02"},
        {"a": datetime(2024, 1, 2).date()},
        {"a": "1.50"},
        {"a": __import__("decimal").Decimal("1.50")},
        {"a": __import__("decimal").Decimal("1.5")},
    ]
    digests = [digest(v) for v in variants]
    assert digests[4] == digests[5], "a missing field reads as null, as the mapping reads it"
    del digests[5]
    assert len(set(digests)) == len(digests)
    assert digest(["not", "an", "object"]) is None
    assert digest({"a": 2**70}) is None  # mapped every time instead


def test_a_key_twice_in_one_batch_still_ends_with_the_last_record(
    tmp_path: Path, gateway: Gateway, sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    sync = CountingSync(write_config(tmp_path, db_url=sqlite_url, gateway_url=gateway.url), monkeypatch)
    sync.run()
    record = next(r for r in gateway.store.records() if r["id"] in upstream_active(gateway.store))
    stale = dict(record, remark="旧备注")
    synced_remark = target_rows(sqlite_url)[record["id"]]["remark"]

    def pages(*batch: dict[str, Any]) -> Callable[..., ListSource]:
        return lambda app, ds: ListSource([list(batch)])

    # the stored state is `record`: the later, different record wins although the first one is unchanged
    result = sync.run(source_factory=pages(record, stale))
    assert result.counts.updated == 1
    assert target_rows(sqlite_url)[record["id"]]["remark"] == "旧备注"
    # and back: the first is the changed one, the last equals what is now stored
    result = sync.run(source_factory=pages(record, stale))
    assert (result.counts.updated, result.counts.unchanged) == (0, 2)
    result = sync.run(source_factory=pages(stale, record))
    assert result.counts.updated == 1
    assert target_rows(sqlite_url)[record["id"]]["remark"] == synced_remark
    sync.engine.dispose()


def test_an_older_row_state_gets_its_record_digest_column(db_url: str) -> None:
    engine = create_target_engine(db_url)
    try:
        with engine.begin() as conn:  # the row_state of syncd 0.1 databases
            conn.exec_driver_sql(
                "CREATE TABLE syncd_row_state (dataset VARCHAR(64) NOT NULL, row_key VARCHAR(512) NOT NULL, "
                "row_hash CHAR(32) NOT NULL, PRIMARY KEY (dataset, row_key))"
            )
            conn.exec_driver_sql("INSERT INTO syncd_row_state VALUES ('d', 'k', 'h')")
        StateStore(engine).ensure_schema()
        columns = {c["name"] for c in sa.inspect(engine).get_columns("syncd_row_state")}
        assert {"seen_run", "record_digest"} <= columns
        with engine.connect() as conn:
            row = conn.exec_driver_sql("SELECT row_key, record_digest, seen_run FROM syncd_row_state").one()
        assert tuple(row) == ("k", None, None)
        StateStore(engine).ensure_schema()  # and again: nothing left to add
    finally:
        engine.dispose()


def test_every_live_row_keeps_its_digest(sync: CountingSync, db_url: str) -> None:
    sync.run()
    engine = sa.create_engine(db_url)
    try:
        with engine.connect() as conn:
            digests = [d for (d,) in conn.exec_driver_sql("SELECT record_digest FROM syncd_row_state")]
    finally:
        engine.dispose()
    assert digests and all(d is not None and re.fullmatch(r"[0-9a-f]{32}", d) for d in digests)


def test_a_resync_writes_once_per_batch_of_changed_rows_not_per_batch_read(
    tmp_path: Path, gateway: Gateway, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """400 records read in batches of 50, five of them changed, one in each of five batches: the
    five updates are written in one transaction at the end, not in five (a snapshot re-sync of 1 %
    changes wrote a transaction of ten rows per thousand records read)."""
    from syncd.targets.writer import BatchWriter

    config = write_config(tmp_path, db_url=db_url, gateway_url=gateway.url, page_size=50, batch_size=50)
    sync = CountingSync(config, monkeypatch)
    try:
        sync.run()
        writes: list[int] = []
        write = BatchWriter.write

        def counting(self: BatchWriter, run_id: str, rows: Any, *args: Any, **kw: Any) -> Any:
            writes.append(len(rows))
            return write(self, run_id, rows, *args, **kw)

        monkeypatch.setattr(BatchWriter, "write", counting)
        active = sorted(upstream_active(gateway.store))
        ids = active[:: len(active) // 5][:5]
        gateway.store.update(ids, remark="已核实")
        result = sync.run()
        assert (result.counts.updated, result.counts.inserted) == (5, 0)
        assert writes == [5]
        assert {k: r["remark"] for k, r in target_rows(db_url).items() if k in ids} == dict.fromkeys(
            ids, "已核实"
        )
        assert sorted(e["row_key"] for e in change_log(db_url) if e["op"] == "update") == sorted(ids)
    finally:
        sync.engine.dispose()


def test_a_record_after_a_pending_change_of_its_key_is_never_skipped(
    tmp_path: Path, gateway: Gateway, sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A changed record's row waits to be written while more records are read; a later record of the
    same key that equals what is still stored must not be skipped, or the pending row would win."""
    config = write_config(tmp_path, db_url=sqlite_url, gateway_url=gateway.url, batch_size=10)
    sync = CountingSync(config, monkeypatch)
    try:
        everything = gateway.store.records()
        # loaded from the same kind of source as the re-sync: their digests are of one kind
        # (records by their values, hashing.py; the gateway's pages would give text digests)
        first = [everything[i : i + 100] for i in range(0, len(everything), 100)]
        sync.run(source_factory=lambda app, ds: ListSource(first))
        stored = target_rows(sqlite_url)
        records = [r for r in everything if r["id"] in upstream_active(gateway.store)]
        record = records[0]
        changed = dict(record, remark="临时备注")
        filler = records[1:41]  # unchanged: four batches resolved between the two

        def pages(app: Any, ds: Any) -> ListSource:
            return ListSource([[changed], filler[:20], filler[20:], [record]])

        entries = len(change_log(sqlite_url))
        result = sync.run(source_factory=pages)
        assert target_rows(sqlite_url)[record["id"]]["remark"] == stored[record["id"]]["remark"]
        assert result.counts.unchanged == 42  # the filler, and the key whose last record is what is stored
        assert len(change_log(sqlite_url)) == entries  # the net change of the run: none
    finally:
        sync.engine.dispose()


def test_a_rotated_source_secret_maps_every_record_once_and_changes_nothing(
    sync: CountingSync, gateway: Gateway, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The demo dataset masks columns: its record digests are keyed with the gateway's app secret
    too (syncd.changes.digestkey), so a digest cannot be recomputed from the YAML. Rotating the
    secret costs one mapping of every record; the row hashes find them unchanged."""
    first = sync.run()
    assert sync.mapped == first.counts.fetched
    entries = len(change_log(db_url))
    steady = sync.run()
    assert sync.mapped == never_skipped(gateway, steady)

    gateway.token_style._app_secret = b"rotated-Secret-4242"  # the gateway's side
    monkeypatch.setenv(SECRET_ENV, "rotated-Secret-4242")
    sync.reload()
    rotated = sync.run()
    assert sync.mapped == rotated.counts.fetched, "digests keyed with the old secret must not be trusted"
    assert (rotated.counts.inserted, rotated.counts.updated, rotated.counts.deleted) == (0, 0, 0)
    assert len(change_log(db_url)) == entries
    again = sync.run()
    assert sync.mapped == never_skipped(gateway, again)  # the new digests were stored


MASKED_ID = {
    "pid": {"source": "id", "type": "string", "length": 32, "nullable": False},
    "id_masked": {"source": "card", "type": "string", "length": 18,
                  "transforms": ["strip", {"mask": "id_number"}], "validators": ["id_number"]},
}


def _masked_people(sqlite_url: str, connection_url: str) -> tuple[AppConfig, DatasetConfig]:
    from tests.sources_kit import make_app

    return make_app(sqlite_url, {"type": "sql", "connection": "qzk", "table": "people", "key": ["id"]},
                    connections={"qzk": {"type": "sql", "url": connection_url}}, columns=MASKED_ID)


def test_a_masked_id_number_cannot_be_recovered_from_the_record_digest(sqlite_url: str) -> None:
    """With the dataset YAML and read access to the target database, the 8 hidden digits of a
    masked ID number (a birth date) must not be found by trying every date against the stored
    digest. A source without a secret stores none; one with a password keys it with it."""
    from datetime import date, timedelta

    clear = "330102198503013526"
    records = [{"id": "p1", "card": clear}]
    # with a password first: the second run, without one, must clear the digest the first stored
    for url, digested in (("postgresql+psycopg://u:pw-7Kq@127.0.0.1/none", True), ("sqlite://", False)):
        app, ds = _masked_people(sqlite_url, url)
        store = StateStore(create_target_engine(sqlite_url))
        try:
            result = run_dataset(app, ds, store, backfill=Backfill(full=True),
                                 source_factory=lambda a, d: ListSource([list(records)]))
            assert result.ok, result.error
            with store.engine.connect() as conn:
                masked = conn.execute(sa.text("SELECT id_masked FROM people_local")).scalar_one()
                stored = conn.execute(sa.text("SELECT record_digest FROM syncd_row_state")).scalar_one()
            again = run_dataset(app, ds, store, backfill=Backfill(full=True),
                                source_factory=lambda a, d: ListSource([list(records)]))
            assert again.ok and (again.counts.unchanged, again.counts.updated) == (1, 0)
        finally:
            store.engine.dispose()
        assert masked == "330102********3526"
        assert (stored is not None) is digested
        # the "attacker": the dataset YAML and what the target database holds
        mapping = compile_mapping(ds)
        guess = record_digester(mapping.record_fields, mapping.fingerprint)
        assert guess(records[0]) != stored
        day = date(1900, 1, 1)
        while day <= date(2026, 3, 1):
            candidate = masked[:6] + day.strftime("%Y%m%d") + masked[-4:]
            assert guess({"id": "p1", "card": candidate}) != stored, "the masked digits were recovered"
            day += timedelta(days=1)
