"""Helpers for end-to-end tests: a config directory pointing at a live gateway and a target DB."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from syncd.config import load_config
from syncd.gateway import Gateway
from syncd.runner import RunResult, run_dataset
from syncd.sources import Page, ReadStats, Window
from syncd.targets import StateStore, create_target_engine

ROOT = Path(__file__).resolve().parent.parent
DEMO_DATASETS = ROOT / "syncd" / "demo" / "datasets"
SECRET = "s3cr3t-Vx9-never-logged"
SECRET_ENV = "SYNCD_TEST_GW_SECRET"


def syncd_cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """``python -m syncd ARGS`` as an operator runs it, from the checkout, with the test gateway's
    secret in the environment (``env`` adds to or overrides the variables)."""
    return subprocess.run(
        [sys.executable, "-m", "syncd", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env={**os.environ, SECRET_ENV: SECRET, **(env or {})},
        cwd=ROOT,
    )


class Syncer:
    """Runs the residents dataset the way `syncd sync` does, against one target database."""

    def __init__(self, config: Path) -> None:
        self.app = load_config(config)
        self.engine = create_target_engine(self.app.target.url.get_secret_value())
        self.store = StateStore(self.engine, self.app.target.table_prefix)

    def run(self, **kw: Any) -> RunResult:
        return run_dataset(self.app, self.app.datasets["residents"], self.store, **kw)

    def close(self) -> None:
        self.engine.dispose()


def sync_once(config: Path, **kw: Any) -> RunResult:
    """One run of the residents dataset with a fresh configuration load and engine."""
    syncer = Syncer(config)
    try:
        return syncer.run(**kw)
    finally:
        syncer.close()


@contextmanager
def demo_gateway(monkeypatch: pytest.MonkeyPatch, *, records: int, seed: int) -> Iterator[Gateway]:
    """A started simulated gateway whose app secret the configs of :func:`write_config` read."""
    monkeypatch.setenv(SECRET_ENV, SECRET)
    gw = Gateway(records=records, seed=seed, app_key="demo-app", app_secret=SECRET)
    gw.start()
    try:
        yield gw
    finally:
        gw.stop()


def write_config(
    root: Path,
    *,
    db_url: str,
    gateway_url: str,
    page_size: int = 100,
    batch_size: int = 250,
    lookback: str = "10m",
    safety_lag: str = "0s",
    retry: str = "{attempts: 6, backoff_initial: 10ms, backoff_max: 200ms, deadline: 30s}",
    read_timeout: str = "5s",
    replace: Iterable[tuple[str, str]] = (),
) -> Path:
    """Write syncd.yaml + datasets/residents.yaml (the demo dataset, adjusted) under ``root``."""
    (root / "datasets").mkdir(parents=True, exist_ok=True)
    text = (DEMO_DATASETS / "residents.yaml").read_text(encoding="utf-8")
    text = re.sub(r"page_size: \d+", f"page_size: {page_size}", text)
    for old, new in replace:
        assert old in text, old
        text = text.replace(old, new)
    (root / "datasets" / "residents.yaml").write_text(text, encoding="utf-8")
    main = f"""
timezone: Asia/Shanghai
target:
  url: {db_url}
connections:
  province_gateway:
    type: http
    base_url: {gateway_url}
    auth:
      type: token
      url: /auth/token
      app_key: demo-app
      app_secret: ${{{SECRET_ENV}}}
    envelope:
      success_codes: ["0"]
      transient_codes: ["50001"]
      auth_expired_codes: ["40101"]
      records_path: data.list
      total_path: data.total
    timeout: {{connect: 2s, read: {read_timeout}}}
    retry: {retry}
defaults:
  batch_size: {batch_size}
  lookback: {lookback}
  safety_lag: {safety_lag}
  error_limit: {{count: 1000, ratio: 0.5}}
logging: {{level: INFO, format: json}}
code_tables:
  ethnicity: {{"01": 汉族, "02": 蒙古族, "03": 回族}}
  education: {{"10": 研究生, "20": 大学本科}}
  marital_status: {{"10": 未婚, "20": 已婚}}
"""
    path = root / "syncd.yaml"
    path.write_text(main, encoding="utf-8")
    return path


def read_whole_with_snapshot_deletes(root: Path, max_ratio: float = 0.1) -> None:
    """Turn the residents dataset :func:`write_config` wrote under ``root`` into a full-snapshot one:
    no ``incremental:`` block (every run reads everything) and ``target.snapshot_delete``."""
    dataset = root / "datasets" / "residents.yaml"
    text = re.sub(r"\n  incremental:.*?\n(?=\S)", "\n", dataset.read_text(encoding="utf-8"), flags=re.S)
    assert "incremental:" not in text
    text = text.replace("  create: true", f"  create: true\n  snapshot_delete: {{max_ratio: {max_ratio}}}", 1)
    dataset.write_text(text, encoding="utf-8")


def target_rows(db_url: str, table: str = "resident_info") -> dict[str, dict[str, Any]]:
    engine = sa.create_engine(db_url)
    try:
        with engine.connect() as conn:
            query = sa.text(f"SELECT * FROM {table}")  # noqa: S608 - table names come from the tests
            rows = conn.execute(query).mappings().all()
    finally:
        engine.dispose()
    return {r["resident_id"]: dict(r) for r in rows}


def change_log(db_url: str, dataset: str = "residents") -> list[dict[str, Any]]:
    engine = sa.create_engine(db_url)
    try:
        with engine.connect() as conn:
            rows = (
                conn.execute(
                    sa.text("SELECT * FROM syncd_changes WHERE dataset = :d ORDER BY id"), {"d": dataset}
                )
                .mappings()
                .all()
            )
    finally:
        engine.dispose()
    return [dict(r) for r in rows]


def upstream_active(store: Any) -> dict[str, dict[str, Any]]:
    return {r["id"]: r for r in store.records() if str(r.get("isDeleted", "0")) != "1"}


class ListSource:
    """A source of fixed pages (the runner's contract, no upstream)."""

    snapshot_read = True

    def __init__(self, pages: list[list[dict[str, Any]]]) -> None:
        self.pages = pages
        self.stats = ReadStats()

    def read(self, window: Window) -> Iterator[Page]:
        for n, records in enumerate(self.pages, 1):
            yield Page(records=records, number=n)
        self.stats.complete = True

    def update_time(self, record: dict[str, Any]) -> datetime | None:
        return None

    def close(self) -> None:
        pass
