"""The example configurations (config/examples/*) load and sync against the simulated gateway.

Each style is run the way the daemon runs it: ``load_config`` with the secrets in a systemd
credentials directory and the addresses in the environment, then ``run_dataset`` into SQLite.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from syncd.config import load_config
from syncd.gateway import Gateway
from syncd.runner import run_dataset
from syncd.targets import StateStore, create_target_engine

EXAMPLES = Path(__file__).resolve().parent.parent / "config" / "examples"
RECORDS = 240

CREDENTIALS = {
    "gateway_app_secret": "tok-secret-Q1",
    "sd_secret": "sd-secret-Q2",
    "irs_app_secret": "zj-secret-Q3",
    "id_hash_salt": "salt-Q4",
}

# style directory → (dataset, table, key column, soft-delete column or None)
STYLES = {
    "token-paging": ("residents", "resident_info", "resident_id", None),
    "hmac-offset": ("rkxx", "rkxx", "id", "is_deleted"),
    "two-tier-md5": ("irs_residents", "irs_resident", "resident_id", None),
}


@pytest.fixture(scope="module")
def gateway() -> Iterator[Gateway]:
    gw = Gateway(
        records=RECORDS,
        seed=11,
        app_secret=CREDENTIALS["gateway_app_secret"],
        sd_secret=CREDENTIALS["sd_secret"],
        zj_app_secret=CREDENTIALS["irs_app_secret"],
    )
    gw.start()
    try:
        yield gw
    finally:
        gw.stop()


@pytest.fixture
def env(tmp_path: Path, gateway: Gateway, monkeypatch: pytest.MonkeyPatch) -> Path:
    creds = tmp_path / "credentials"
    creds.mkdir()
    for name, value in CREDENTIALS.items():
        (creds / name).write_text(value + "\n", encoding="utf-8")
        (creds / name).chmod(0o600)
    creds.chmod(0o700)
    db = tmp_path / "target.db"
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    monkeypatch.setenv("SYNCD_GATEWAY_URL", gateway.url)
    monkeypatch.setenv("SYNCD_TARGET_URL", f"sqlite:///{db}")
    return db


@pytest.mark.parametrize("style", sorted(STYLES))
def test_example_syncs_against_the_simulated_gateway(style: str, env: Path, gateway: Gateway) -> None:
    dataset, table, key, soft = STYLES[style]
    app = load_config(EXAMPLES / style / "syncd.yaml")
    assert list(app.datasets) == [dataset]
    engine = create_target_engine(app.target.url.get_secret_value())
    try:
        store = StateStore(engine, app.target.table_prefix)
        result = run_dataset(app, app.datasets[dataset], store)
        assert result.status == "success", result.error
        assert result.counts.fetched == RECORDS
        assert result.counts.requests >= 2  # auth plus data, or several pages
        with engine.connect() as conn:
            rows = conn.execute(sa.text(f"SELECT * FROM {table}")).mappings().all()  # noqa: S608
        upstream = gateway.store.records()
        deleted = {r["id"] for r in upstream if str(r.get("isDeleted", "0")) == "1"}
        landed = {r[key] for r in rows}
        if soft is None:
            assert landed.isdisjoint(deleted)
        else:
            assert {r[key] for r in rows if r[soft]} <= deleted
        assert len(landed) + result.counts.quarantined + (0 if soft else len(deleted)) >= RECORDS - 5
        assert len(landed) >= RECORDS * 0.8
        again = run_dataset(app, app.datasets[dataset], store)
        assert again.status == "success", again.error
        assert again.counts.inserted == again.counts.updated == again.counts.deleted == 0
    finally:
        engine.dispose()


def test_every_example_directory_is_tested() -> None:
    assert {p.name for p in EXAMPLES.iterdir() if p.is_dir()} == set(STYLES)
