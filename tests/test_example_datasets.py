"""The shipped 前置库 and file-drop example datasets (config/datasets/) really sync."""

from __future__ import annotations

import sqlite3
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import sqlalchemy as sa

from syncd.config import load_config
from syncd.gateway.codes import id_check_digit
from syncd.runner import run_dataset
from syncd.targets import StateStore, create_target_engine

ROOT = Path(__file__).resolve().parent.parent


def _id_number(body17: str) -> str:
    return body17 + id_check_digit(body17)


def test_front_end_database_and_file_drop_examples_sync(tmp_path: Path) -> None:
    stamp = (datetime.now(ZoneInfo("Asia/Shanghai")) - timedelta(hours=1)).strftime("%Y-%m-%d %H:%M:%S")
    qzk = tmp_path / "qzk.db"
    with sqlite3.connect(qzk) as conn:
        conn.execute(
            "CREATE TABLE t_household (HH_ID TEXT PRIMARY KEY, HZXM TEXT, HJDZ TEXT, RKS INTEGER, GXSJ TEXT)"
        )
        conn.executemany(
            "INSERT INTO t_household VALUES (?, ?, ?, ?, ?)",
            [
                ("H001", " 张三 ", "西湖区文三路1号", 3, stamp),
                ("H002", "𠮷田", "无", 1, stamp),
                ("H003", "李四", "上城区解放路2号", 5, stamp),
            ],
        )
    drop = tmp_path / "drop" / "subsidies"
    drop.mkdir(parents=True)
    ids = [_id_number("33010219900307123"), _id_number("33010619851111002")]
    csv = f"证件号码,姓名,金额\n{ids[0]},王五,1200.50\n{ids[1]},赵六,800\n"
    (drop / "名单.csv").write_bytes(csv.encode("gb18030"))
    (drop / "名单.csv.ok").write_text("")
    creds = tmp_path / "credentials"
    creds.mkdir(mode=0o700)
    (creds / "gateway_app_secret").write_text("example-secret\n")
    (creds / "gateway_app_secret").chmod(0o600)
    target = f"sqlite:///{tmp_path / 'target.db'}"
    env = {
        "SYNCD_TARGET_URL": target,
        "SYNCD_QZK_URL": f"sqlite:///{qzk}",
        "SYNCD_DROP_DIR": str(tmp_path / "drop"),
        "CREDENTIALS_DIRECTORY": str(creds),
    }
    app = load_config(ROOT / "config" / "syncd.yaml", env=env)
    engine = create_target_engine(target)
    try:
        store = StateStore(engine)
        households = run_dataset(app, app.datasets["qzk_households"], store)
        assert households.ok, households.error
        assert households.counts.inserted == 3
        subsidies = run_dataset(app, app.datasets["drop_subsidies"], store)
        assert subsidies.ok, subsidies.error
        assert subsidies.counts.inserted == 2
        with engine.connect() as conn:
            heads = dict(conn.execute(sa.text("SELECT household_id, head_name FROM household_info")).all())
            amounts = dict(conn.execute(sa.text("SELECT id_number, amount FROM subsidy_list")).all())
    finally:
        engine.dispose()
    assert heads == {"H001": "张三", "H002": "𠮷田", "H003": "李四"}
    assert set(amounts) == set(ids)
    assert (drop / "processed" / "名单.csv").exists()
