"""``syncd demo``: the whole product on one machine in a few seconds.

Starts the bundled simulated provincial gateway on loopback, syncs its residents into a local
SQLite file with the bundled configuration (``syncd/demo/syncd.yaml``), changes some records
upstream (updates, new residents, logical deletes), syncs again and shows what changed.
"""

from __future__ import annotations

import json
import os
import secrets
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

__all__ = ["DEMO_CONFIG", "run_demo"]

DEMO_CONFIG = Path(__file__).with_name("syncd.yaml")


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, default=str)


def _print_changes(rows: list[dict[str, Any]]) -> None:
    for row in rows:
        cols = ",".join(row.get("changed_columns") or [])
        new, old = _json(row.get("new_values")), _json(row.get("old_values"))
        detail = new if row["op"] == "insert" else old if row["op"] == "delete" else f"{old} -> {new}"
        if len(detail) > 150:
            detail = detail[:147] + "..."
        print(f"  #{row['id']:<5} {row['op']:<7} key={row['row_key']:<10} columns={cols}")
        print(f"         {detail}")


def run_demo(workdir: Path, *, records: int = 500) -> int:
    from syncd.config import load_config
    from syncd.gateway import Gateway
    from syncd.logs import configure_logging
    from syncd.runner import run_dataset
    from syncd.targets import StateStore, create_target_engine

    workdir.mkdir(parents=True, exist_ok=True)
    db_path = (workdir / "demo.db").resolve()
    if db_path.exists():
        db_path.unlink()
    app_secret = secrets.token_urlsafe(16)
    zone = ZoneInfo("Asia/Shanghai")

    with Gateway(records=records, seed=20261129, app_key="demo-app", app_secret=app_secret) as gw:
        os.environ.update(
            SYNCD_DEMO_GATEWAY=gw.url,
            SYNCD_DEMO_APP_KEY="demo-app",
            SYNCD_DEMO_APP_SECRET=app_secret,
            SYNCD_DEMO_DB=f"sqlite:///{db_path}",
        )
        app = load_config(DEMO_CONFIG)
        configure_logging(app.logging.level, app.logging.format)
        dataset = app.datasets["residents"]
        engine = create_target_engine(app.target.url.get_secret_value())
        store = StateStore(engine, app.target.table_prefix)
        print("syncd 演示 / demo")
        print(f"  模拟省级网关 simulated gateway: {gw.url}  ({records} 条户籍记录 resident records)")
        print(f"  目标库 target: {db_path}")
        print()
        print("第 1 次同步 / first sync (full load):")
        first = run_dataset(app, dataset, store)
        print("  " + first.summary())

        # upstream changes, stamped a minute ago so they are inside the next run's window
        gw.store.set_time(datetime.now(zone).replace(tzinfo=None, microsecond=0) - timedelta(minutes=1))
        ids = sorted(r["id"] for r in gw.store.records() if r.get("isDeleted") != "1")
        gw.store.update(ids[:5], remark="已核实（demo 更新）")
        gw.store.update(ids[5:7], phone="13900001111")
        new_ids = gw.store.insert(3)
        gw.store.logical_delete(ids[7:9])
        print()
        print(
            "上游变化 / upstream changes: 7 条更新 updated, 3 条新增 inserted, 2 条逻辑删除 logically deleted"
        )
        print()
        print("第 2 次同步 / second sync (incremental):")
        second = run_dataset(app, dataset, store)
        print("  " + second.summary())
        print()
        print("第 3 次同步 / third sync (no upstream change → nothing written):")
        third = run_dataset(app, dataset, store)
        print("  " + third.summary())
        print()
        print("变更日志（最近 12 条）/ change log (latest 12):")
        _print_changes(list(reversed(store.changes(dataset.name, limit=12, newest_first=True))))
        engine.dispose()
        print()
        print(f"新增记录 new upstream ids: {', '.join(new_ids)}")
        inspect = "SELECT * FROM resident_info LIMIT 5"
        print(f"用 sqlite3 查看 / inspect: sqlite3 {db_path} '{inspect}'")
    return 0 if first.ok and second.ok and third.ok else 1
