"""The last record of a key in a read wins, a row or an upstream delete flag, wherever the runner's
batches end: a key flagged deleted and then sent live again (or the other way round) ends as its
last record says, in process and through the read worker."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import orjson
import pytest
import sqlalchemy as sa
from http_server import LoopbackServer, Reply, connection, serve

from syncd.config.model import AppConfig, DatasetConfig
from syncd.runner import run_dataset
from syncd.targets import StateStore, create_target_engine
from tests.e2e import ListSource
from tests.sources_kit import make_app, store_for

NOW = datetime(2026, 3, 1, 12, 0, 0)

DELETED_THEN_LIVE = [{"id": "p0", "name": "gone", "gone": "1"}, {"id": "p0", "name": "back", "gone": "0"}]
LIVE_THEN_DELETED = [{"id": "p0", "name": "back", "gone": "0"}, {"id": "p0", "name": "gone", "gone": "1"}]
BOTH_ORDERS = pytest.mark.parametrize(
    ("records", "expected"),
    [(DELETED_THEN_LIVE, "back"), (LIVE_THEN_DELETED, None)],
    ids=["deleted-then-live", "live-then-deleted"],
)


def _names(engine: sa.Engine, table: str) -> dict[str, str]:
    with engine.connect() as conn:
        rows = conn.execute(sa.select(sa.column("pid"), sa.column("name")).select_from(sa.table(table)))
        return dict(rows.tuples().all())


@pytest.mark.parametrize("batch_size", [1, 2, 50])
@BOTH_ORDERS
def test_the_last_record_of_a_key_wins_wherever_the_batches_end(
    db_url: str, batch_size: int, records: list[dict[str, str]], expected: str | None
) -> None:
    app, ds = make_app(
        db_url,
        {"type": "sql", "connection": "qzk", "table": "people", "key": ["id"]},
        connections={"qzk": {"type": "sql", "url": "sqlite://"}},
        target={"logical_delete": {"field": "gone"}},
        batch_size=batch_size,
    )
    store = store_for(db_url)
    try:
        base = [{"id": f"p{i}", "name": "n", "gone": "0"} for i in range(5)]
        assert run_dataset(app, ds, store, now=NOW, source_factory=lambda a, d: ListSource([base])).ok
        for pages in ([[dict(r) for r in records]], [[dict(r)] for r in records]):  # one page, one a page
            result = run_dataset(app, ds, store, now=NOW, source_factory=lambda a, d, p=pages: ListSource(p))
            assert result.ok, result.error
            assert _names(store.engine, "people_local").get("p0") == expected, (batch_size, len(pages))
            # and back to the starting point for the next shape
            back = [[{"id": "p0", "name": "n", "gone": "0"}]]
            assert run_dataset(app, ds, store, now=NOW, source_factory=lambda a, d, p=back: ListSource(p)).ok
    finally:
        store.engine.dispose()


@pytest.fixture
def server() -> Iterator[LoopbackServer]:
    yield from serve()


@BOTH_ORDERS
def test_the_read_worker_keeps_each_delete_at_its_place(
    server: LoopbackServer, tmp_path: Path, records: list[dict[str, str]], expected: str | None
) -> None:
    """``read_worker: always``: the worker sends a page's rows and deletes apart, each delete with
    its place among the rows; on a re-sync they wait for the digest look-up in that order."""
    url = f"sqlite:///{tmp_path / 'target.db'}"
    app = AppConfig.model_validate(
        {
            "target": {"url": url},
            "connections": {"gw": connection(server.url)},
            "timezone": "Asia/Shanghai",
            "defaults": {"read_worker": "always"},
        }
    )
    dataset = DatasetConfig.model_validate(
        {
            "name": "people",
            "source": {"type": "http", "connection": "gw", "path": "/p"},
            "authorization": {
                "approval_code": "T-1",
                "fields": ["id", "name", "gone"],
                "valid_from": "2026-01-01",
                "valid_until": "2027-12-31",
            },
            "target": {"table": "people", "key": ["pid"], "logical_delete": {"field": "gone"}},
            "columns": {"pid": {"source": "id", "length": 8}, "name": {"source": "name", "length": 16}},
        }
    )
    base = [{"id": f"p{i}", "name": "n", "gone": "0"} for i in range(3)]

    def body(page: list[dict[str, str]]) -> bytes:
        return orjson.dumps({"code": "0", "msg": "ok", "data": {"total": len(page), "list": page}})

    bodies = iter([body(base), body([*base[1:], *records])])
    server.handler = lambda req: Reply(body=next(bodies), headers={"Content-Type": "application/json"})
    engine = create_target_engine(url)
    try:
        store = StateStore(engine, app.target.table_prefix)
        assert run_dataset(app, dataset, store).ok
        result = run_dataset(app, dataset, store)
        assert result.ok, result.error
        names = _names(engine, "people")
    finally:
        engine.dispose()
    assert names.get("p0") == expected
    assert names["p1"] == names["p2"] == "n"
