"""Hostile and malformed records, end to end over real HTTP into real databases (DESIGN §4.6, §4.8).

Property-based (hypothesis, derandomized, bounded): pages of the demo dataset's records with hostile
values put in any field — wrong types, huge strings, control characters, characters outside the BMP,
SQL-looking strings, deep nesting — and keys repeated inside a page and across pages. The oracle:
the run never crashes; every record either lands exactly (the target row equals what the compiled
mapping makes of it, the last occurrence of a key winning) or is quarantined with a reason.
"""

from __future__ import annotations

import datetime as dt
import json
import tempfile
import uuid
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from syncd.changes.keys import row_key_function
from syncd.config import load_config
from syncd.errors import RecordError
from syncd.gateway import RecordFactory
from syncd.mapping import compile_mapping
from syncd.runner import run_dataset
from syncd.targets import StateStore, create_target_engine
from tests.conftest import PG_ADMIN_URL
from tests.e2e import SECRET, SECRET_ENV, write_config
from tests.http_server import ScriptedResidents

SQLISH = [
    "'; DROP TABLE resident_info; --",
    "1' OR '1'='1",
    "\\'; SELECT pg_sleep(5); --",
    "`resident_info`",
    '"); DELETE FROM syncd_changes; --',
    "%s %(x)s :name ?",
]
RARE = "𠮷𡈽𪚥丂\u3000\ufeff\u200b\u202e"
CONTROL = "".join(chr(c) for c in range(1, 32)) + "\x7f"
FIELDS = [
    "name",
    "idCard",
    "gender",
    "birthDate",
    "phone",
    "ethnicity",
    "education",
    "maritalStatus",
    "householdId",
    "income",
    "householdSize",
    "registerDate",
    "remark",
    "updateTime",
    "address",
    "contact",
]
KEYS = ["R1", "R2", "R3", "𠮷1", "1' OR '1'='1", "R" + "9" * 20, " R4 ", "R\x00"]


def nested(depth: int) -> Any:
    value: Any = "deep"
    for i in range(depth):
        value = {"detail": value, "divisionCode": i} if i % 2 else [value]
    return value


texts = st.text(
    alphabet=st.one_of(
        st.characters(blacklist_categories=("Cs",)), st.sampled_from(RARE), st.sampled_from(CONTROL)
    ),
    max_size=80,
)
hostile = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    texts,
    st.sampled_from(SQLISH),
    st.sampled_from(["A" * 100_000, "𠮷" * 5000, "9" * 400]),
    st.builds(nested, st.integers(min_value=1, max_value=60)),
    st.lists(texts, max_size=3),
    st.dictionaries(texts, texts, max_size=3),
)
record_plan = st.tuples(st.sampled_from(KEYS), st.dictionaries(st.sampled_from(FIELDS), hostile, max_size=3))
records_plan = st.lists(record_plan, min_size=1, max_size=14)  # pages of PAGE: keys repeat within and across
PAGE = 6

FACTORY = RecordFactory(7)


def build_pages(plan: list[tuple[str, dict[str, Any]]]) -> list[list[dict[str, Any]]]:
    records = []
    for key, overrides in plan:
        record = FACTORY.make("2026-11-02 08:00:00")
        record.update(overrides)
        record["id"] = key
        record["isDeleted"] = "0"
        records.append(record)
    return [records[i : i + PAGE] for i in range(0, len(records), PAGE)]


Upstream = ScriptedResidents


@pytest.fixture(scope="module")
def upstream() -> Iterator[Upstream]:
    up = Upstream()
    try:
        yield up
    finally:
        up.server.stop()
    assert not up.server.errors


def _normal(value: Any) -> Any:
    if isinstance(value, Decimal):
        return value.normalize()
    if isinstance(value, dt.datetime):
        return value.replace(tzinfo=None)
    return value


def check_run(upstream: Upstream, url: str, root: Path, plan: list[tuple[str, dict[str, Any]]]) -> None:
    pages = build_pages(plan)
    upstream.pages = pages
    cfg = write_config(root, db_url=url, gateway_url=upstream.server.url, page_size=PAGE, batch_size=4)
    cfg.write_text(cfg.read_text(encoding="utf-8").replace("ratio: 0.5", "ratio: 1.0"), encoding="utf-8")
    app = load_config(cfg)
    dataset = app.datasets["residents"]
    engine = create_target_engine(url)
    try:
        result = run_dataset(app, dataset, StateStore(engine, app.target.table_prefix))
        assert result.ok, result.error  # hostile records are quarantined, never a failed run
        mapping = compile_mapping(dataset, app.code_tables)
        row_key = row_key_function([mapping.specs[mapping.columns[i]] for i in mapping.key_indexes])
        expected: dict[Any, tuple[Any, ...]] = {}
        # the quarantine keeps, of each key, its last record when that one failed (a later record of
        # a key supersedes the entry of an earlier one), and every failing record without a key
        last_bad: dict[str, str] = {}
        keyless: set[str] = set()
        for record in (r for page in pages for r in page):
            try:
                row = mapping(record)
            except RecordError:
                text = json.dumps(mapping.redact_raw(record), sort_keys=True, ensure_ascii=False)
                try:
                    key = row_key(mapping.key_record(record))
                except RecordError:
                    key = None
                if key is None:
                    keyless.add(text)
                else:
                    last_bad[key] = text
                continue
            expected[mapping.key_of(row)[0]] = tuple(_normal(v) for v in row)
            last_bad.pop(str(row_key(mapping.key_of(row))), None)
        with engine.connect() as conn:
            table = sa.Table("resident_info", sa.MetaData(), autoload_with=conn)
            query = sa.select(*(table.c[c] for c in mapping.columns))
            got = {r[0]: tuple(_normal(v) for v in r) for r in conn.execute(query)}
            quarantine = conn.execute(sa.text("SELECT reason, raw FROM syncd_quarantine")).all()
        assert got == expected, "a record did not land exactly as mapped"
        assert len(quarantine) == len(keyless | set(last_bad.values()))
        assert all(reason for reason, _ in quarantine), "a quarantine entry without its reason"
    finally:
        engine.dispose()


SETTINGS = settings(
    derandomize=True,
    max_examples=30,
    deadline=None,
    database=None,
    phases=[Phase.explicit, Phase.generate],  # no shrinking: a failure prints its example as found
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@SETTINGS
@given(plan=records_plan)
def test_hostile_records_land_exactly_or_are_quarantined_sqlite(
    upstream: Upstream, monkeypatch_module: None, plan: list[tuple[str, dict[str, Any]]]
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        check_run(upstream, f"sqlite:///{tmp}/t.db", Path(tmp), plan)


@pytest.mark.postgres
@settings(SETTINGS, max_examples=15)
@given(plan=records_plan)
def test_hostile_records_land_exactly_or_are_quarantined_postgres(
    upstream: Upstream, monkeypatch_module: None, pg_admin: sa.Engine, plan: list[tuple[str, dict[str, Any]]]
) -> None:
    name = f"syncd_h_{uuid.uuid4().hex[:10]}"
    with pg_admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    try:
        with tempfile.TemporaryDirectory() as tmp:
            url = sa.make_url(PG_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
            check_run(upstream, url, Path(tmp), plan)
    finally:
        with pg_admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(scope="module")
def monkeypatch_module() -> Iterator[None]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(SECRET_ENV, SECRET)
        yield


@pytest.fixture(scope="module")
def pg_admin() -> Iterator[sa.Engine]:
    engine = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect():
            pass
    except Exception as exc:  # noqa: BLE001
        pytest.skip(f"PostgreSQL is not reachable ({exc})")
    yield engine
    engine.dispose()


def test_nul_characters_are_quarantined_not_a_failed_batch(
    upstream: Upstream, db_url: str, tmp_path: Path
) -> None:
    """Regression: PostgreSQL cannot store NUL; one such record used to fail its batch on every run."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(SECRET_ENV, SECRET)
        check_run(upstream, db_url, tmp_path, [("R\x00", {}), ("R1", {"name": "a\x00b"}), ("R2", {})])
