"""Helpers for the source tests: an app config around one dataset, and an upstream table."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from syncd.config.model import AppConfig, DatasetConfig
from syncd.targets import StateStore, create_target_engine

AUTH = {
    "approval_code": "测试〔2026〕1号",
    "fields": ["id", "name", "amount", "upd", "gone"],
    "valid_from": "2020-01-01",
    "valid_until": "2099-12-31",
}
COLUMNS: dict[str, Any] = {
    "pid": {"source": "id", "type": "string", "length": 32, "nullable": False},
    "name": {"source": "name", "type": "string", "length": 64},
    "amount": {"source": "amount", "type": "int"},
}


def make_app(
    target_url: str,
    source: dict[str, Any],
    *,
    connections: dict[str, Any] | None = None,
    target: dict[str, Any] | None = None,
    batch_size: int = 50,
    columns: dict[str, Any] | None = None,
) -> tuple[AppConfig, DatasetConfig]:
    dataset = DatasetConfig.model_validate({
        "name": "people",
        "source": source,
        "authorization": AUTH,
        "target": {"table": "people_local", "key": ["pid"], **(target or {})},
        "columns": COLUMNS if columns is None else columns,
        "batch_size": batch_size,
    })
    app = AppConfig.model_validate({
        "target": {"url": target_url},
        "connections": connections or {},
        "defaults": {"safety_lag": "0s", "lookback": "1m"},
        "datasets": {"people": dataset},
    })
    return app, dataset


def store_for(url: str) -> StateStore:
    return StateStore(create_target_engine(url))


def local_rows(store: StateStore, table: str = "people_local") -> dict[str, tuple[Any, ...]]:
    with store.engine.connect() as conn:
        rows = conn.execute(sa.text(f"SELECT pid, name, amount FROM {table}")).all()  # noqa: S608
    return {str(r[0]): (r[1], r[2]) for r in rows}


def upstream_table(engine: sa.Engine, rows: int, *, when: datetime) -> sa.Table:
    """``people(id, name, amount, upd)`` with ``rows`` rows, ids p00000…"""
    meta = sa.MetaData()
    table = sa.Table(
        "people",
        meta,
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("name", sa.String(64)),
        sa.Column("amount", sa.Integer),
        sa.Column("upd", sa.DateTime),
        mysql_charset="utf8mb4",
        mysql_collate="utf8mb4_bin",
    )
    meta.drop_all(engine)
    meta.create_all(engine)
    if rows:
        with engine.begin() as conn:
            conn.execute(table.insert(), [
                {"id": f"p{i:05d}", "name": f"名{i}", "amount": i, "upd": when} for i in range(rows)
            ])
    return table


def file_config(root: Path, db_url: str, drop: Path, *, page_size: int = 100, batch_size: int = 100) -> Path:
    """``syncd.yaml`` and ``datasets/people.yaml`` under ``root``: dataset people reads the CSV files
    dropped into ``drop`` (the columns of :data:`COLUMNS`) into ``people_local``; returns syncd.yaml."""
    (root / "datasets").mkdir(parents=True)
    (root / "datasets" / "people.yaml").write_text(
        f"""name: people
source:
  type: file
  path: {drop}
  pattern: "*.csv"
  page_size: {page_size}
authorization:
  approval_code: 测试〔2026〕1号
  fields: [id, name, amount]
  valid_from: 2020-01-01
  valid_until: 2099-12-31
target:
  table: people_local
  key: [pid]
columns:
  pid: {{source: id, type: string, length: 32, nullable: false}}
  name: {{source: name, type: string, length: 64}}
  amount: {{source: amount, type: int}}
batch_size: {batch_size}
""",
        encoding="utf-8",
    )
    path = root / "syncd.yaml"
    path.write_text(f"timezone: Asia/Shanghai\ntarget:\n  url: {db_url}\n", encoding="utf-8")
    return path
