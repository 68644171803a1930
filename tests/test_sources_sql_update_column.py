"""The SQL source's update column kept as text or as numbers, on real SQLite, PostgreSQL and MariaDB.

Legacy front-end tables keep their update time as VARCHAR ('2026-03-01 08:00:00.000',
'20260301080000') or as BIGINT (epoch seconds or milliseconds from Java systems, or the digits of
the local time). The window was bound as a timestamp: PostgreSQL failed every run (text >=
timestamp), MySQL/MariaDB compared the text with the driver's spelling of the bound (a row at the
bound written with '.000' was skipped; '20260301…' matched no window at all) and SQLite compared
numbers with text (nothing matched). The window is now bound in the column's own form.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa
from pydantic import ValidationError
from sqlalchemy.dialects import mysql

from syncd.config.loader import load_dataset_file
from syncd.config.model import SqlIncrementalConfig
from syncd.errors import ConfigError
from syncd.ops.plan import plan_dataset
from syncd.runner import run_dataset
from syncd.sources import Window
from syncd.sources.sql import SqlSource
from syncd.targets import create_target_engine
from tests.sources_kit import local_rows, make_app, store_for

T = datetime(2026, 3, 1, 8, 0, 0)  # local time of the app's zone
ZONE = ZoneInfo("Asia/Shanghai")
MS = timedelta(milliseconds=1)
S = timedelta(seconds=1)


def _epoch(when: datetime, unit: timedelta) -> int:
    return (when.replace(tzinfo=ZONE) - datetime(1970, 1, 1, tzinfo=UTC)) // unit


def _java_text(when: datetime, java: bool) -> str:
    """'yyyy-MM-dd HH:mm:ss' or, from writers that add them, with milliseconds ('.SSS')."""
    text = when.strftime("%Y-%m-%d %H:%M:%S")
    return text + f".{when.microsecond // 1000:03d}" if java or when.microsecond else text


# name: (column type, the time as the front-end writes it, incremental settings, keeps milliseconds)
FORMS: dict[str, tuple[Any, Callable[[datetime, bool], Any], dict[str, str], bool]] = {
    "text": (sa.String(32), _java_text, {}, True),
    "text_compact": (sa.String(20), lambda w, _: w.strftime("%Y%m%d%H%M%S"), {}, False),
    "text_compact_declared": (sa.CHAR(14), lambda w, _: w.strftime("%Y%m%d%H%M%S"),
                              {"format": "%Y%m%d%H%M%S"}, False),
    "epoch_s": (sa.BigInteger, lambda w, _: _epoch(w, S), {"unit": "s"}, False),
    "epoch_ms": (sa.BigInteger, lambda w, _: _epoch(w, MS), {"unit": "ms"}, True),
    "digits": (sa.BigInteger, lambda w, _: int(w.strftime("%Y%m%d%H%M%S")),
               {"format": "%Y%m%d%H%M%S"}, False),
}

# id: (update time, inside the window T..T+2h, written with milliseconds by a 'text' writer)
ROWS = {
    "before": (T - S, False, False),
    "before_ms": (T - MS, False, True),
    "at_since": (T, True, False),
    "inside": (T + timedelta(hours=1), True, True),
    "at_until": (T + timedelta(hours=2), True, True),
    "after_ms": (T + timedelta(hours=2) + MS, False, True),
    "after": (T + timedelta(hours=2) + S, False, False),
}


@pytest.fixture
def front(db_url: str) -> Iterator[sa.Engine]:
    engine = sa.create_engine(db_url)
    yield engine
    engine.dispose()


def _table(engine: sa.Engine, upd_type: Any) -> sa.Table:
    meta = sa.MetaData()
    table = sa.Table(
        "people_upd", meta,
        sa.Column("id", sa.String(32), primary_key=True), sa.Column("name", sa.String(64)),
        sa.Column("amount", sa.Integer), sa.Column("upd", upd_type),
        mysql_charset="utf8mb4", mysql_collate="utf8mb4_general_ci",  # a legacy table's usual collation
    )
    meta.drop_all(engine)
    meta.create_all(engine)
    return table


def _fill(engine: sa.Engine, table: sa.Table, form: str) -> dict[str, datetime]:
    _, spell, _, millis = FORMS[form]
    rows = {k: v for k, v in ROWS.items() if millis or v[0].microsecond == 0}
    with engine.begin() as conn:
        conn.execute(table.insert(), [
            {"id": k, "name": "名", "amount": n, "upd": spell(when, java)}
            for n, (k, (when, _, java)) in enumerate(rows.items())
        ])
    return {k: when for k, (when, _, _) in rows.items()}


def _source(url: str, form: str, **extra: Any) -> dict[str, Any]:
    inc = {"field": "upd", "lookback": "0s", "safety_lag": "0s", **FORMS[form][2]}
    return {"type": "sql", "connection": "qzk", "table": "people_upd", "key": ["id"], "page_size": 2,
            "incremental": inc, **extra}


def _app(front_url: str, target_url: str, source: dict[str, Any]) -> tuple[Any, Any]:
    return make_app(target_url, source, connections={"qzk": {"type": "sql", "url": front_url}})


@pytest.mark.parametrize("form", list(FORMS))
def test_the_window_is_bound_in_the_update_columns_own_form(front: sa.Engine, db_url: str, form: str) -> None:
    """Rows exactly at either bound are read, rows a second (or a millisecond) outside are not,
    with whole-second bounds and with bounds that carry fractions of a second; the times read back
    (for the watermark) are the local times written."""
    table = _table(front, FORMS[form][0])
    app, ds = _app(db_url, "sqlite://", _source(db_url, form))
    window = Window(since=T, until=T + timedelta(hours=2))
    empty = SqlSource.from_config(app, ds)
    try:  # an empty table: nothing to read, and no error (PostgreSQL: text >= timestamp)
        assert [r for page in empty.read(window) for r in page.records] == []
    finally:
        empty.close()
    written = _fill(front, table, form)
    src = SqlSource.from_config(app, ds)
    try:
        read = [r for page in src.read(window) for r in page.records]
        fractions = Window(since=T - MS / 2, until=T + timedelta(hours=2) + MS / 2)
        read_fractions = [r["id"] for page in src.read(fractions) for r in page.records]
    finally:
        src.close()
    inside = sorted(k for k in written if ROWS[k][1])
    assert sorted(r["id"] for r in read) == inside
    assert sorted(read_fractions) == inside
    assert len(read) == len({r["id"] for r in read}), "a row was read twice"
    assert {r["id"]: src.update_time(r) for r in read} == {k: written[k] for k in inside}


@pytest.mark.parametrize("form", list(FORMS))
def test_incremental_runs_resume_from_the_watermark(
    front: sa.Engine, db_url: str, sqlite_url: str, form: str
) -> None:
    table = _table(front, FORMS[form][0])
    written = _fill(front, table, form)
    spell = FORMS[form][1]
    app, ds = _app(db_url, sqlite_url, _source(db_url, form))
    store = store_for(sqlite_url)
    try:
        first = run_dataset(app, ds, store, now=T + timedelta(hours=3))
        assert first.ok, first.error
        assert first.counts.inserted == len(written)
        assert first.watermark_after == "2026-03-01 10:00:01"
        later = T + timedelta(hours=2, minutes=30)
        with front.begin() as conn:
            changed = table.update().where(table.c.id == "inside")
            conn.execute(changed.values(amount=999, upd=spell(later, True)))
            conn.execute(table.insert(), [{"id": "new", "name": "新", "amount": 7,
                                           "upd": spell(later, False)}])
        second = run_dataset(app, ds, store, now=T + timedelta(hours=4))
        assert second.ok, second.error
        # from the watermark (lookback 0s), inclusive: the row at it again (unchanged), and the two newer
        c = second.counts
        assert (c.fetched, c.inserted, c.updated, c.unchanged) == (3, 1, 1, 1)
        assert second.watermark_after == "2026-03-01 10:30:00"
        rows = local_rows(store)
        assert rows["inside"][1] == 999 and rows["new"] == ("新", 7) and len(rows) == len(written) + 1
    finally:
        store.engine.dispose()


# case: (column type, value, incremental settings, the error's path and words)
MISTAKES: dict[str, tuple[Any, Any, dict[str, str], str]] = {
    "text_not_zero_padded": (sa.String(32), "2026/3/1 8:00", {},
                             r"incremental\.field: .*'2026/3/1 8:00'.*does not sort like the times"
                             r".*`query:`"),
    "text_day_first": (sa.String(32), "01/03/2026 08:00:00", {},
                            r"incremental\.field: .*does not sort like the times.*STR_TO_DATE"),
    "numbers_without_a_unit": (sa.BigInteger, _epoch(T, MS), {},
                               r"incremental\.unit: .*holds numbers.*`unit: s`.*looks like unit: ms "
                               r"\(2026-03-01 08:00:00 local time\)"),
    "format_not_matching": (sa.String(32), "2026-03-01 08:00:00", {"format": "%Y%m%d%H%M%S"},
                            r"incremental\.format: '%Y%m%d%H%M%S' does not match .*'2026-03-01 08:00:00'"),
    "unit_on_text": (sa.String(32), "2026-03-01 08:00:00", {"unit": "ms"},
                     r"incremental\.unit: `unit: ms` is for a number column"),
    "separators_on_numbers": (sa.BigInteger, 20260301080000, {"format": "%Y-%m-%d"},
                              r"incremental\.format: .*'%Y-%m-%d' does not match them"),
}


@pytest.mark.parametrize("case", list(MISTAKES))
def test_an_update_column_that_cannot_be_windowed_is_a_clear_error(db_url: str, case: str) -> None:
    """Text that does not sort like the times, or numbers whose meaning is not given: the read
    fails naming the dataset's file and field and the fix, instead of reading no row (SQLite,
    MariaDB: the watermark never moved) or failing with the database's own words (PostgreSQL)."""
    upd_type, value, inc, words = MISTAKES[case]
    engine = sa.create_engine(db_url)
    try:
        table = _table(engine, upd_type)
        with engine.begin() as conn:
            conn.execute(table.insert(), [{"id": "p1", "name": "名", "amount": 1, "upd": value}])
    finally:
        engine.dispose()
    source = _source(db_url, "text")
    source["incremental"] = {**source["incremental"], **inc}
    app, ds = _app(db_url, "sqlite://", source)
    src = SqlSource.from_config(app, ds)
    try:
        with pytest.raises(ConfigError, match=words):
            list(src.read(Window(since=T, until=T + timedelta(hours=1))))
    finally:
        src.close()


@pytest.mark.parametrize(("fmt", "words"), [
    ("%d/%m/%Y %H:%M", "%d is out of order"),
    ("%Y/%m/%d %I:%M %p", "%I does not sort like the times"),
    ("%Y-%m-%d %H:%M:%S%z", "%z is not supported"),
    ("%Y年%m月%d日", "nothing may follow the last field"),
    ("%Y%m", "give at least the date"),
])
def test_a_format_that_does_not_sort_like_the_times_is_refused_with_the_way_out(fmt: str, words: str) -> None:
    with pytest.raises(ValidationError, match=rf"(?s){words}.*convert the column to a time in `query:`"):
        SqlIncrementalConfig.model_validate({"field": "upd", "format": fmt})
    with pytest.raises(ValidationError, match="not both"):
        SqlIncrementalConfig.model_validate({"field": "upd", "format": "%Y%m%d%H%M%S", "unit": "ms"})


_DATASET_YAML = """\
name: upd_people
source:
  type: sql
  connection: qzk
  table: people_upd
  key: [id]
  page_size: 2
  incremental:
    field: upd
    lookback: 0s
    safety_lag: 0s
{setting}
authorization:
  approval_code: 测试〔2026〕1号
  fields: [id, name, amount, upd]
  valid_from: 2020-01-01
  valid_until: 2099-12-31
target: {{table: upd_people_local, key: [pid]}}
columns:
  pid: {{source: id, type: string, length: 32, nullable: false}}
  name: {{source: name, type: string, length: 64}}
"""


def _dataset_file(tmp_path: Path, front_url: str, setting: str) -> tuple[Any, Any, str, int]:
    """A dataset written in a real file (the messages name its lines) around ``people_upd``;
    also the file's name and the line of ``setting``."""
    app, _ = _app(front_url, "sqlite://", _source(front_url, "text"))
    file = tmp_path / "upd_people.yaml"
    file.write_text(_DATASET_YAML.format(setting=f"    {setting}"), encoding="utf-8")
    line = file.read_text(encoding="utf-8").splitlines().index(f"    {setting or 'field: upd'}") + 1
    return app, load_dataset_file(file, app, env={}), str(file), line


# id: (database, column type, the type's name in the warning)
TIME_TYPES: dict[str, tuple[str, Any, str]] = {
    "pg_timestamp": ("pg_url", sa.DateTime, "TIMESTAMP"),
    "pg_timestamptz": ("pg_url", sa.DateTime(timezone=True), "TIMESTAMPTZ"),
    "pg_date": ("pg_url", sa.Date, "DATE"),
    "mariadb_datetime": ("mariadb_url", sa.DateTime, "DATETIME"),
    "mariadb_timestamp": ("mariadb_url", mysql.TIMESTAMP, "TIMESTAMP"),
}


@pytest.mark.parametrize("setting", ["format: '%Y%m%d%H%M%S'", "unit: ms"])
@pytest.mark.parametrize("case", list(TIME_TYPES))
def test_format_or_unit_on_a_time_column_is_a_positioned_warning(
    request: pytest.FixtureRequest, tmp_path: Path, case: str, setting: str
) -> None:
    """`format:`/`unit:` on an update column of a time type were silently ignored. They still do not
    change the read (the database compares times: such a dataset read right before), but the run,
    and a plan, warn with the file, the line and the field, and the fix."""
    fixture, upd_type, type_name = TIME_TYPES[case]
    url = request.getfixturevalue(fixture)
    front = sa.create_engine(url)
    try:
        table = _table(front, upd_type)
        with front.begin() as conn:
            conn.execute(table.insert(), [
                {"id": "p1", "name": "名", "amount": 1, "upd": T},
                {"id": "p2", "name": "名", "amount": 2, "upd": T - timedelta(days=1)},
            ])
    finally:
        front.dispose()
    app, ds, file, line = _dataset_file(tmp_path, url, setting)
    field = setting.split(":", maxsplit=1)[0]
    words = (rf"^{re.escape(file)}:{line}:\d+: source\.incremental\.{field}: ignored: the update column upd "
             rf"of people_upd is a {type_name} \(a time type\).*Remove `{re.escape(field)}: ")
    src = SqlSource.from_config(app, ds)
    try:
        # wide enough for a timestamptz written in the test session's zone (UTC)
        window = Window(since=T - timedelta(hours=9), until=T + timedelta(hours=9))
        read = [r["id"] for page in src.read(window) for r in page.records]
    finally:
        src.close()
    assert read == ["p1"]  # read as times, as before
    assert len(src.stats.warnings) == 1
    assert re.search(words, src.stats.warnings[0]), src.stats.warnings
    engine = create_target_engine("sqlite://")
    try:
        plan = plan_dataset(app, ds, engine, now=datetime(2026, 3, 2, tzinfo=ZONE))
    finally:
        engine.dispose()
    assert plan.categories["insert"].count == 2
    assert any(re.search(words, w) for w in plan.warnings), plan.warnings


def _text_rows(url: str, rows: dict[str, str]) -> None:
    """``people_upd`` with a text update column holding ``rows`` (id: value), inserted in order."""
    engine = sa.create_engine(url)
    try:
        table = _table(engine, sa.String(32))
        with engine.begin() as conn:
            for n, (key, value) in enumerate(rows.items()):
                conn.execute(table.insert(), [{"id": key, "name": "名", "amount": n, "upd": value}])
    finally:
        engine.dispose()


def _read_ids(src: SqlSource, window: Window) -> list[str]:
    return sorted(r["id"] for page in src.read(window) for r in page.records)


def test_text_written_more_than_one_way_is_an_error_that_asks_for_the_format(
    db_url: str, tmp_path: Path
) -> None:
    """The text format was recognised from one value: the rows written the other way were then
    selected or not by chance (as text, '2026/…' sorts after every '2026-…' bound). Values sampled
    from both ends of the column must agree, or the read asks for `format:`."""
    _text_rows(db_url, {"p1": "2026-03-01 08:00:00", "p2": "2026-03-01 09:00:00",
                        "p3": "2026/03/01 09:30:00"})
    app, ds, file, line = _dataset_file(tmp_path, db_url, "")
    src = SqlSource.from_config(app, ds)
    try:
        with pytest.raises(ConfigError, match=(
            rf"^{re.escape(file)}:{line}:\d+: source\.incremental\.format: the update column upd of "
            r"people_upd holds times written in more than one way: '2026-03-01 0\d:00:00' \(as "
            r"'%Y-%m-%d %H:%M:%S'\), '2026/03/01 09:30:00' \(as '%Y/%m/%d %H:%M:%S'\).*"
            r"say how the column writes its times with `format:`"
        )):
            src.read(Window(since=T, until=T + timedelta(hours=2))).__next__()
    finally:
        src.close()


@pytest.mark.parametrize("placeholder", ["", "0000-00-00 00:00:00", "null", "-"])
def test_an_empty_text_or_a_placeholder_does_not_decide_the_format(
    db_url: str, tmp_path: Path, placeholder: str
) -> None:
    """An empty text (what many legacy writers store for "no time") was the one value the format
    was recognised from: the read failed. Neither it nor a placeholder no time format reads (a
    MySQL zero date kept as text, 'null', '-'), sorting at one end of the column where the format
    is sampled, is a time: the format comes from the others, and a full read takes the row with a
    warning that counts it, as it does with a NULL."""
    _text_rows(db_url, {"a0": placeholder, "p1": "2026-03-01 08:00:00", "p2": "2026-03-01 09:00:00"})
    app, ds, _, _ = _dataset_file(tmp_path, db_url, "")
    src = SqlSource.from_config(app, ds)
    try:
        assert _read_ids(src, Window(since=None, until=T + timedelta(hours=2))) == ["a0", "p1", "p2"]
        assert _read_ids(src, Window(since=T, until=T + timedelta(hours=2))) == ["p1", "p2"]
    finally:
        src.close()
    assert len(src.stats.warnings) == 1, src.stats.warnings
    assert re.search(r"^1 rows of people_upd have an update time not written as .*\(such as upd = "
                     + re.escape(repr(placeholder)) + r"\): this full read took them, but incremental runs",
                     src.stats.warnings[0])


def test_values_not_in_the_declared_format_are_read_by_a_full_read_and_counted(
    db_url: str, tmp_path: Path
) -> None:
    """With `format:` given, rows written otherwise were left to the text comparison: '2026/03/01
    09:30:00' sorts after the window's upper bound, so even a full read skipped it, silently. A
    full read now takes every such row (and not the rows that are merely newer than the window),
    says how many there were, and never takes their time for the watermark."""
    _text_rows(db_url, {"p1": "2026-03-01 08:00:00", "odd": "2026/03/01 09:30:00", "blank": "",
                        "p2": "2026-03-01 09:00:00", "later": "2026-03-01 12:00:00"})
    app, ds, _, _ = _dataset_file(tmp_path, db_url, "format: '%Y-%m-%d %H:%M:%S'")
    src = SqlSource.from_config(app, ds)
    try:
        full = [r for page in src.read(Window(None, T + timedelta(hours=2))) for r in page.records]
        assert sorted(r["id"] for r in full) == ["blank", "odd", "p1", "p2"]
        assert {r["id"]: src.update_time(r) for r in full if r["id"] in ("odd", "blank")} == {
            "odd": None, "blank": None}
        assert src.stats.records == 4
        assert _read_ids(src, Window(since=T, until=T + timedelta(hours=2))) == ["p1", "p2"]
    finally:
        src.close()
    assert len(src.stats.warnings) == 1, src.stats.warnings
    assert re.search(r"^2 rows of people_upd have an update time not written as '%Y-%m-%d %H:%M:%S' "
                     r"\(such as upd = ('2026/03/01 09:30:00'|'')\): this full read took them",
                     src.stats.warnings[0])


def test_a_value_written_otherwise_that_the_samples_miss_is_still_read_and_counted(
    db_url: str, tmp_path: Path
) -> None:
    """The samples are the column's ends; a value written otherwise in its middle ('… 9:00', hour
    not zero-padded: as text after every '… 1x:…', so after the window's end) is not among them. A
    full read takes it all the same (SQLite: its local-time function is asked only near the end)."""
    rows = {f"p{i:02d}": (T - timedelta(minutes=i)).strftime("%Y-%m-%d %H:%M:%S") for i in range(30)}
    later = {f"q{i:02d}": (T + timedelta(days=1, minutes=i)).strftime("%Y-%m-%d %H:%M:%S") for i in range(30)}
    _text_rows(db_url, {**rows, "odd": "2026-03-01 9:00", **later})
    app, ds, _, _ = _dataset_file(tmp_path, db_url, "")
    src = SqlSource.from_config(app, ds)
    try:  # the rows of the next day are after the window: left for a later run, as always
        assert _read_ids(src, Window(None, T + timedelta(hours=2))) == sorted([*rows, "odd"])
    finally:
        src.close()
    assert len(src.stats.warnings) == 1, src.stats.warnings
    assert re.search(r"^1 rows of people_upd .*\(such as upd = '2026-03-01 9:00'\)", src.stats.warnings[0])
