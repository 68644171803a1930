"""The SQL source (前置库) against real SQLite, PostgreSQL and MariaDB front-end databases."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa
from structlog.testing import capture_logs

from syncd.errors import PermanentUpstreamError, TransientUpstreamError
from syncd.runner import Backfill, run_dataset
from syncd.sources import Window
from syncd.sources.sql import SqlSource
from tests.sources_kit import local_rows, make_app, store_for, upstream_table

T0 = datetime(2026, 3, 1, 8, 0, 0)


@pytest.fixture
def front(db_url: str) -> Iterator[sa.Engine]:
    engine = sa.create_engine(db_url)
    yield engine
    engine.dispose()


def _source(url: str, incremental: bool, page_size: int = 10, **extra: Any) -> dict[str, Any]:
    src: dict[str, Any] = {"type": "sql", "connection": "qzk", "table": "people", "key": ["id"],
                           "page_size": page_size, **extra}
    if incremental:
        src["incremental"] = {"field": "upd", "lookback": "0s", "safety_lag": "0s"}
    return src


def _build(front_url: str, target_url: str, incremental: bool, page_size: int = 10) -> tuple[Any, Any]:
    return make_app(target_url, _source(front_url, incremental, page_size),
                    connections={"qzk": {"type": "sql", "url": front_url}})


def test_keyset_paging_neither_loses_nor_repeats_rows_while_the_table_changes(
    front: sa.Engine, db_url: str
) -> None:
    table = upstream_table(front, 95, when=T0)
    app, ds = _build(db_url, db_url.replace("/", "/", 1), incremental=True)
    src = SqlSource.from_config(app, ds)
    window = Window(since=T0 - timedelta(hours=1), until=T0 + timedelta(hours=1))
    got: list[tuple[str, str]] = []
    try:
        for n, page in enumerate(src.read(window)):
            got += [(r["id"], r["name"]) for r in page.records]
            if n == 2:  # mid-read: delete rows already read, update and insert rows not yet read
                with front.begin() as conn:
                    conn.execute(table.delete().where(table.c.id.in_(["p00000", "p00001", "p00002"])))
                    conn.execute(table.update().where(table.c.id == "p00090").values(name="改", upd=T0))
                    conn.execute(table.insert(), [{"id": "p99999", "name": "新", "amount": 1, "upd": T0}])
    finally:
        src.close()
    ids = [i for i, _ in got]
    assert len(ids) == len(set(ids)), "a row was read twice"
    assert set(ids) == {f"p{i:05d}" for i in range(95)} | {"p99999"}, "a row was skipped"
    assert dict(got)["p00090"] == "改"
    assert src.stats.complete and src.stats.records == 96


def test_incremental_runs_resume_from_the_watermark(front: sa.Engine, db_url: str, sqlite_url: str) -> None:
    table = upstream_table(front, 30, when=T0)
    app, ds = _build(db_url, sqlite_url, incremental=True, page_size=7)
    store = store_for(sqlite_url)
    try:
        first = run_dataset(app, ds, store, now=T0 + timedelta(minutes=5))
        assert first.ok, first.error
        assert first.counts.inserted == 30 and first.watermark_after == "2026-03-01 08:00:00"
        later = T0 + timedelta(minutes=10)
        with front.begin() as conn:
            conn.execute(table.update().where(table.c.id == "p00004").values(amount=444, upd=later))
            conn.execute(table.insert(), [{"id": "p00100", "name": "𠮷野", "amount": 5, "upd": later}])
        second = run_dataset(app, ds, store, now=T0 + timedelta(minutes=20))
        assert second.ok, second.error
        # since = watermark (lookback 0s), inclusive: the rows at the watermark are read again, unchanged
        c = second.counts
        assert (c.fetched, c.inserted, c.updated, c.unchanged) == (31, 1, 1, 29)
        rows = local_rows(store)
        assert rows["p00004"] == ("名4", 444) and rows["p00100"] == ("𠮷野", 5) and len(rows) == 31
    finally:
        store.engine.dispose()


def test_a_text_update_column_with_an_offset_is_read_in_the_app_zone(tmp_path: Path, sqlite_url: str) -> None:
    """A front-end table keeping its update time as text with an offset (SQLite has no datetime
    type): the time is converted to the app's zone like a datetime value with one. It was
    compared as an aware time with naive ones, and every run failed after writing its rows."""
    url = f"sqlite:///{tmp_path / 'front.db'}"
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE people (id TEXT PRIMARY KEY, name TEXT, amount INTEGER, upd TEXT)")
        conn.exec_driver_sql(
            "INSERT INTO people VALUES ('p1', '张三', 1, '2026-10-31T08:00:00+08:00'), "
            "('p2', '李四', 2, '2026-10-31T09:00:00+09:00'), ('p3', '王五', 3, '2026-10-31 07:00:00')"
        )
    engine.dispose()
    source = {"type": "sql", "connection": "qzk", "table": "people", "key": ["id"]}
    source["incremental"] = {"field": "upd"}
    app, ds = make_app(sqlite_url, source, connections={"qzk": {"type": "sql", "url": url}})
    store = store_for(sqlite_url)
    try:
        result = run_dataset(app, ds, store, now=datetime(2026, 11, 1, 10, tzinfo=ZoneInfo("Asia/Shanghai")))
        assert result.ok, result.error
        assert result.counts.inserted == 3
        assert result.watermark_after == "2026-10-31 08:00:00"  # 09:00+09:00 is 08:00 here too
    finally:
        store.engine.dispose()


def test_a_text_update_column_is_windowed_as_times_on_sqlite(tmp_path: Path, sqlite_url: str) -> None:
    """SQLite keeps times as text, in whatever form the writer chose; the window compared that text
    with its bounds as text, so a row exactly at a bound was read or not by its spelling ('T' or a
    space, fractional seconds, an offset): from 08:00 to 10:00 only '10:00:00.0' was read. Both
    bounds are inclusive, as for a timestamp column."""
    url = f"sqlite:///{tmp_path / 'front.db'}"
    engine = sa.create_engine(url)
    rows = {  # id: (update time as the front-end wrote it, inside 08:00-10:00 Shanghai?)
        "space": ("2026-01-01 08:00:00", True), "t": ("2026-01-01T08:00:00", True),
        "fraction": ("2026-01-01 08:00:00.000", True), "minutes": ("2026-01-01 08:00", True),
        "before": ("2026-01-01T07:59:59.999", False), "before_space": ("2026-01-01 07:59:59", False),
        "end_t": ("2026-01-01T10:00:00", True), "end_fraction": ("2026-01-01 10:00:00.0", True),
        "after": ("2026-01-01 10:00:00.5", False), "offset": ("2026-01-01T03:00:00+03:00", True),
        "utc_after": ("2026-01-01T02:00:01Z", False), "utc_end": ("2026-01-01T02:00:00Z", True),
        "day_before_in": ("2025-12-31T19:30:00-05:00", True),
        "day_before_out": ("2025-12-31T18:30:00-05:00", False),
    }
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE people (id TEXT PRIMARY KEY, name TEXT, amount INTEGER, upd TEXT)")
        conn.exec_driver_sql("CREATE INDEX people_upd ON people (upd, id)")
        for n, (key, (upd, _)) in enumerate(rows.items()):
            conn.exec_driver_sql("INSERT INTO people VALUES (?, ?, ?, ?)", (key, "名", n, upd))
    engine.dispose()
    source = {"type": "sql", "connection": "qzk", "table": "people", "key": ["id"], "page_size": 3}
    source["incremental"] = {"field": "upd"}
    app, ds = make_app(sqlite_url, source, connections={"qzk": {"type": "sql", "url": url}})
    src = SqlSource.from_config(app, ds)
    try:
        window = Window(since=datetime(2026, 1, 1, 8), until=datetime(2026, 1, 1, 10))
        read = [r for page in src.read(window) for r in page.records]
        # a bound with fractional seconds: the same instant written with fewer digits is at it
        ten = datetime(2026, 1, 1, 10)
        fraction = Window(since=ten + timedelta(seconds=0.5), until=ten + timedelta(seconds=0.9))
        after = [r["id"] for page in src.read(fraction) for r in page.records]
    finally:
        src.close()
    assert sorted(r["id"] for r in read) == sorted(k for k, (_, inside) in rows.items() if inside)
    assert len(read) == len({r["id"] for r in read})
    times = [src.update_time(r) for r in read]
    assert all(t is not None and datetime(2026, 1, 1, 8) <= t <= datetime(2026, 1, 1, 10) for t in times)
    assert after == ["after"]


def test_a_timestamptz_window_is_read_in_the_apps_zone_whatever_the_servers(pg_url: str) -> None:
    """The window's bounds are local times without a zone; PostgreSQL compares them with a
    timestamptz column in the session's TimeZone. With the server in UTC and the app in
    Asia/Shanghai a window from 09:00 read as 17:00 Shanghai, and a row at 09:30 was never read."""
    engine = sa.create_engine(pg_url)
    with engine.connect() as conn:
        server_zone = conn.exec_driver_sql("SHOW TimeZone").scalar()
    china = ("Asia/Shanghai", "PRC", "Asia/Chongqing")
    zone = "Asia/Shanghai" if server_zone not in china else "Europe/Berlin"  # any zone but the server's
    local = ZoneInfo(zone)
    metadata = sa.MetaData()
    table = sa.Table(
        "people_tz", metadata, sa.Column("id", sa.String(16), primary_key=True),
        sa.Column("name", sa.String(16)), sa.Column("amount", sa.Integer),
        sa.Column("upd", sa.DateTime(timezone=True)),
    )
    metadata.drop_all(engine)
    metadata.create_all(engine)
    with engine.begin() as conn:
        conn.execute(table.insert(), [
            {"id": "early", "name": "早", "amount": 1, "upd": datetime(2026, 3, 1, 8, 30, tzinfo=local)},
            {"id": "late", "name": "晚", "amount": 2, "upd": datetime(2026, 3, 1, 9, 30, tzinfo=local)},
        ])
    source = {"type": "sql", "connection": "qzk", "table": "people_tz", "key": ["id"]}
    source["incremental"] = {"field": "upd"}
    app, ds = make_app("sqlite://", source, connections={"qzk": {"type": "sql", "url": pg_url}})
    app = app.model_copy(update={"timezone": zone})
    src = SqlSource.from_config(app, ds)
    try:
        window = Window(since=datetime(2026, 3, 1, 9, 0), until=datetime(2026, 3, 1, 10, 0))
        read = [r["id"] for page in src.read(window) for r in page.records]
    finally:
        src.close()
        metadata.drop_all(engine)
        engine.dispose()
    assert read == ["late"]


@pytest.mark.parametrize("incremental", [True, False], ids=["incremental", "full"])
def test_rows_with_a_null_key_are_read_after_the_others_and_hide_none(
    front: sa.Engine, db_url: str, incremental: bool
) -> None:
    """Keyset paging compares the last key read: a page ending on a NULL key matched nothing after
    it (SQLite and MariaDB sort NULLs first: the rows after it at the same time were silently lost)
    or failed (key > NULL). Rows with a NULL key are read apart, after the others, for the mapping
    to quarantine."""
    metadata = sa.MetaData()
    table = sa.Table(
        "people_nullkey", metadata, sa.Column("id", sa.String(32), nullable=True),
        sa.Column("name", sa.String(16)), sa.Column("amount", sa.Integer), sa.Column("upd", sa.DateTime),
        mysql_charset="utf8mb4", mysql_collate="utf8mb4_bin",
    )
    metadata.drop_all(front)
    metadata.create_all(front)
    t1 = T0 + timedelta(minutes=5)
    rows = [{"id": "x1", "upd": T0}, {"id": None, "upd": t1}, {"id": None, "upd": t1}]
    rows += [{"id": f"p{i}", "upd": t1} for i in range(5)]
    with front.begin() as conn:
        conn.execute(table.insert(), [{"name": "n", "amount": 1, **r} for r in rows])
    source = {"type": "sql", "connection": "qzk", "table": "people_nullkey", "key": ["id"], "page_size": 2}
    if incremental:
        source["incremental"] = {"field": "upd"}
    app, ds = make_app("sqlite://", source, connections={"qzk": {"type": "sql", "url": db_url}})
    src = SqlSource.from_config(app, ds)
    try:
        hour = timedelta(hours=1)
        window = Window(T0 - hour, T0 + hour) if incremental else Window(None, None)
        read = [r["id"] for page in src.read(window) for r in page.records]
        assert src.stats.complete
    finally:
        src.close()
        metadata.drop_all(front)
    assert sorted(i for i in read if i is not None) == ["p0", "p1", "p2", "p3", "p4", "x1"]
    assert read[-2:] == [None, None]


def _server_has_time_zone_tables(engine: sa.Engine) -> bool:
    with engine.connect() as conn:
        converted = conn.exec_driver_sql("SELECT CONVERT_TZ('2026-03-01 00:00:00', 'UTC', 'Asia/Shanghai')")
        return converted.scalar() is not None


def test_a_mysql_timestamp_window_is_read_in_the_apps_zone_whatever_the_servers(mariadb_url: str) -> None:
    """MySQL/MariaDB convert a TIMESTAMP column to and from the session's time_zone. A server in UTC
    compared the window's local bounds (09:00-10:00 Shanghai) with UTC times (00:30, 01:30): the
    09:30 row was not read. The source's session is in the app's zone (without the server's
    time-zone tables Asia/Shanghai is set as +08:00), and gives the row's time back as 09:30."""
    engine = sa.create_engine(mariadb_url)
    with engine.begin() as conn:
        conn.exec_driver_sql(
            "CREATE TABLE people_ts (id VARCHAR(16) PRIMARY KEY, name VARCHAR(16), amount INT,"
            " upd TIMESTAMP NULL DEFAULT NULL)"
        )
        conn.exec_driver_sql("SET time_zone = '+00:00'")
        conn.exec_driver_sql(
            "INSERT INTO people_ts VALUES ('early', '早', 1, '2026-03-01 00:30:00'),"
            " ('late', '晚', 2, '2026-03-01 01:30:00')"  # 08:30 and 09:30 in Shanghai
        )
    named = _server_has_time_zone_tables(engine)
    engine.dispose()
    # a server whose time_zone is UTC, whatever this one's is: the URL's init_command sets it at connect
    front = sa.make_url(mariadb_url).update_query_dict({"init_command": "SET time_zone = '+00:00'"})
    source = {"type": "sql", "connection": "qzk", "table": "people_ts", "key": ["id"]}
    source["incremental"] = {"field": "upd"}
    app, ds = make_app("sqlite://", source, connections={
        "qzk": {"type": "sql", "url": front.render_as_string(hide_password=False)}
    })
    assert app.timezone == "Asia/Shanghai"
    src = SqlSource.from_config(app, ds)
    try:
        window = Window(since=datetime(2026, 3, 1, 9, 0), until=datetime(2026, 3, 1, 10, 0))
        read = [r for page in src.read(window) for r in page.records]
        with src._engine.connect() as conn:
            zone = conn.exec_driver_sql("SELECT @@session.time_zone").scalar()
    finally:
        src.close()
    assert [r["id"] for r in read] == ["late"]
    assert src.update_time(read[0]) == datetime(2026, 3, 1, 9, 30)
    assert zone == ("Asia/Shanghai" if named else "+08:00")


def _no_time_zone_tables(mariadb_url: str, upd: str | None) -> None:
    """people(id, name, upd) on a server without its time-zone tables (else the test is skipped)."""
    engine = sa.create_engine(mariadb_url)
    try:
        if _server_has_time_zone_tables(engine):
            pytest.skip("this server has its time-zone tables loaded")
        with engine.begin() as conn:
            column = "" if upd is None else f", upd {upd} NULL DEFAULT NULL"
            conn.exec_driver_sql(f"CREATE TABLE people (id VARCHAR(16) PRIMARY KEY, "
                                 f"name VARCHAR(16){column})")
            if upd is None:
                conn.exec_driver_sql("INSERT INTO people VALUES ('a', 'x')")
            else:
                conn.exec_driver_sql("INSERT INTO people VALUES ('a', 'x', %s), ('b', 'y', NULL)", (T0,))
    finally:
        engine.dispose()


def _dst_source(mariadb_url: str, incremental: bool) -> SqlSource:
    columns = {"pid": {"source": "id", "type": "string", "length": 16, "nullable": False},
               "name": {"source": "name", "type": "string", "length": 16}}
    source = {"type": "sql", "connection": "qzk", "table": "people", "key": ["id"]}
    if incremental:
        source["incremental"] = {"field": "upd"}
    app, ds = make_app("sqlite://", source, connections={"qzk": {"type": "sql", "url": mariadb_url}},
                       columns=columns)
    return SqlSource.from_config(app.model_copy(update={"timezone": "Europe/Berlin"}), ds)


def test_a_dst_zone_without_the_mysql_time_zone_tables_fails_a_timestamp_update_column(
    mariadb_url: str,
) -> None:
    """Without the server's time-zone tables a zone with daylight saving time has no fixed offset
    to stand in for it: a TIMESTAMP update column would be compared with the window in the server's
    zone, so the read fails and says how to load them (rather than read shifted windows)."""
    _no_time_zone_tables(mariadb_url, "TIMESTAMP")
    src = _dst_source(mariadb_url, incremental=True)
    try:
        expected = r"TIMESTAMP update column upd.*daylight saving time.*mysql_tzinfo_to_sql"
        with pytest.raises(PermanentUpstreamError, match=expected):
            list(src.read(Window(since=T0 - timedelta(hours=1), until=T0 + timedelta(hours=1))))
    finally:
        src.close()


@pytest.mark.parametrize("upd", [None, "DATETIME"], ids=["no-update-column", "DATETIME-update-column"])
def test_a_dst_zone_without_the_mysql_time_zone_tables_reads_what_has_no_timestamp_window(
    mariadb_url: str, upd: str | None
) -> None:
    """Every read of such a front-end failed, though the session's zone changes nothing for DATETIME
    columns (or a source without an update column): now the session keeps the server's zone, with
    a warning once per process."""
    _no_time_zone_tables(mariadb_url, upd)
    window = Window(None, T0 + timedelta(hours=1)) if upd else Window(None, None)
    read: list[list[str]] = []
    with capture_logs() as logs:
        for _ in range(2):  # two runs of the daemon's process
            src = _dst_source(mariadb_url, incremental=upd is not None)
            try:
                read.append(sorted(r["id"] for page in src.read(window) for r in page.records))
                with src._engine.connect() as conn:
                    zone = conn.exec_driver_sql("SELECT @@session.time_zone").scalar()
            finally:
                src.close()
    expected = ["a", "b"] if upd else ["a"]
    assert read == [expected, expected]
    assert zone == "SYSTEM"
    (kept,) = [e for e in logs if e["event"] == "sync.source_time_zone_kept"]
    assert kept["log_level"] == "warning" and kept["timezone"] == "Europe/Berlin"
    assert "daylight saving time" in kept["reason"] and "mysql_tzinfo_to_sql" in kept["hint"]
    assert kept["server_time_zone"] and kept["database"].startswith("mysql+pymysql://")


@pytest.mark.parametrize(("zone", "offset"), [
    ("Asia/Shanghai", "+08:00"), ("Asia/Kolkata", "+05:30"), ("America/Bogota", "-05:00"), ("UTC", "+00:00"),
    ("Europe/Berlin", None), ("Australia/Sydney", None),
])
def test_the_fixed_offset_standing_in_for_a_zone(zone: str, offset: str | None) -> None:
    from syncd.sources.sql import _fixed_offset

    assert _fixed_offset(zone) == offset


def test_an_empty_table_is_a_complete_empty_read(front: sa.Engine, db_url: str) -> None:
    upstream_table(front, 0, when=T0)
    app, ds = _build(db_url, db_url, incremental=False)
    src = SqlSource.from_config(app, ds)
    try:
        assert list(src.read(Window(None, None))) == []
        assert src.stats.complete
    finally:
        src.close()


def test_the_connection_is_read_only(front: sa.Engine, db_url: str) -> None:
    upstream_table(front, 1, when=T0)
    app, ds = _build(db_url, db_url, incremental=False)
    src = SqlSource.from_config(app, ds)
    try:
        with src._engine.connect() as conn, pytest.raises(sa.exc.DBAPIError):
            conn.execute(sa.text("DELETE FROM people"))
    finally:
        src.close()
    with front.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM people")).scalar() == 1


def test_a_query_source_binds_the_window_and_selects_only_mapped_columns(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'front.db'}"
    engine = sa.create_engine(url)
    upstream_table(engine, 12, when=T0)
    engine.dispose()
    src_cfg = _source(url, True, query="SELECT id, name, amount, upd, 'x' AS secret_col FROM people "
                                       "WHERE amount % 2 = 0")
    del src_cfg["table"]
    app, ds = make_app(url, src_cfg, connections={"qzk": {"type": "sql", "url": url}})
    src = SqlSource.from_config(app, ds)
    try:
        records = [r for p in src.read(Window(T0 - timedelta(seconds=1), T0)) for r in p.records]
    finally:
        src.close()
    assert [r["amount"] for r in records] == [0, 2, 4, 6, 8, 10]
    assert set(records[0]) == {"id", "name", "amount", "upd"}
    assert src.update_time(records[0]) == T0


def test_a_missing_column_is_a_clear_permanent_error(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'front.db'}"
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE people (id TEXT PRIMARY KEY, name TEXT)"))
    engine.dispose()
    app, ds = make_app(url, _source(url, False), connections={"qzk": {"type": "sql", "url": url}})
    src = SqlSource.from_config(app, ds)
    try:
        with pytest.raises(PermanentUpstreamError, match="Check the table/query"):
            list(src.read(Window(None, None)))
    finally:
        src.close()


def test_a_full_read_takes_the_rows_without_an_update_time_and_warns(
    front: sa.Engine, db_url: str, sqlite_url: str
) -> None:
    """Rows whose update column is NULL (a legacy table whose update column was added later) are
    part of the dataset: no window selects them, so the first load and ``--full`` read them apart,
    in key order, and warn that incremental runs will not see their changes. Before, the window's
    ``upd <= until`` dropped them from every read, the first load included."""
    table = upstream_table(front, 13, when=T0)
    with front.begin() as conn:
        conn.execute(table.update().where(table.c.id.in_(["p00002", "p00005", "p00006", "p00011"]))
                     .values(upd=None))
        conn.execute(table.update().where(table.c.id == "p00003").values(upd=T0 - timedelta(days=400)))
    app, ds = _build(db_url, sqlite_url, incremental=True, page_size=3)
    store = store_for(sqlite_url)
    try:
        first = run_dataset(app, ds, store, now=T0 + timedelta(minutes=5))
        assert first.ok, first.error
        assert first.counts.inserted == 13 and len(local_rows(store)) == 13
        assert any("4 rows of people have no update time (upd is NULL)" in w for w in first.warnings)
        assert first.watermark_after == "2026-03-01 08:00:00"  # the undated rows do not move it
        with front.begin() as conn:
            conn.execute(table.update().where(table.c.id == "p00005").values(amount=555))
            later = T0 + timedelta(minutes=7)
            conn.execute(table.update().where(table.c.id == "p00007").values(amount=777, upd=later))
        second = run_dataset(app, ds, store, now=T0 + timedelta(minutes=20))
        assert second.ok, second.error
        assert not any("no update time" in w for w in second.warnings)  # an incremental read: not read
        assert local_rows(store)["p00007"] == ("名7", 777) and local_rows(store)["p00005"] == ("名5", 5)
        full = run_dataset(app, ds, store, now=T0 + timedelta(minutes=30), backfill=Backfill(full=True))
        assert full.ok, full.error
        assert full.counts.fetched == 13 and full.counts.updated == 1
        assert local_rows(store)["p00005"] == ("名5", 555)
    finally:
        store.engine.dispose()


def test_the_undated_rows_page_by_key_and_a_windowed_read_skips_them(front: sa.Engine, db_url: str) -> None:
    table = upstream_table(front, 10, when=T0)
    with front.begin() as conn:
        conn.execute(table.update().where(table.c.id >= "p00003").values(upd=None))
    app, ds = _build(db_url, db_url, incremental=True, page_size=2)
    src = SqlSource.from_config(app, ds)
    try:
        full = [r["id"] for page in src.read(Window(None, T0 + timedelta(hours=1))) for r in page.records]
        assert full == [f"p{i:05d}" for i in range(10)], "dated rows first, then the undated ones by key"
        assert src.stats.complete and len(src.stats.warnings) == 1
        src.stats = type(src.stats)()
        windowed = [r["id"] for page in src.read(Window(T0, T0 + timedelta(hours=1))) for r in page.records]
        assert windowed == ["p00000", "p00001", "p00002"] and src.stats.warnings == []
    finally:
        src.close()


@pytest.mark.parametrize("full", [True, False], ids=["first-load", "window"])
def test_sqlite_text_times_are_converted_once_per_row_not_once_per_page(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, full: bool
) -> None:
    """SQLite takes one lower bound of the update column for its index range, and the keyset's
    ``(upd, id) > (…)`` was not it: every page scanned from the window's start (or, in a full read,
    from the first row) and converted each row before its place to local time again — 10⁵ rows in
    pages of 1,000 cost 50 Python calls a row (seconds became minutes). The read's position now
    raises the text bound, so each row is converted about once per bound."""
    import syncd.sources.sql as sql_module

    rows, base = 3000, datetime(2026, 1, 1)
    path = tmp_path / "front.db"
    engine = sa.create_engine(f"sqlite:///{path}")
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE people (id TEXT PRIMARY KEY, name TEXT, amount INTEGER, upd TEXT)")
        times = [(base + timedelta(seconds=37 * i)).isoformat(sep=" ") for i in range(rows)]
        conn.execute(sa.text("INSERT INTO people VALUES (:id, 'n', 1, :upd)"), [
            {"id": f"p{i:05d}", "upd": upd} for i, upd in enumerate(times)
        ])
        conn.exec_driver_sql("CREATE INDEX people_upd ON people (upd)")
    engine.dispose()
    calls = [0]
    convert = sql_module._sqlite_local_time

    def counting(tz: Any) -> Any:
        local = convert(tz)

        def counted(value: Any) -> Any:
            calls[0] += 1
            return local(value)

        return counted

    monkeypatch.setattr(sql_module, "_sqlite_local_time", counting)
    app, ds = make_app("sqlite://", _source("", True, page_size=100),
                       connections={"qzk": {"type": "sql", "url": f"sqlite:///{path}"}})
    src = SqlSource.from_config(app, ds)
    until = base + timedelta(days=30)
    try:
        window = Window(None, until) if full else Window(base - timedelta(days=1), until)
        ids = [r["id"] for page in src.read(window) for r in page.records]
    finally:
        src.close()
    assert len(ids) == len(set(ids)) == rows
    per_row = calls[0] / rows
    assert per_row < (1.2 if full else 2.2), f"{per_row:.1f} conversions a row: pages scanned from the start"


@pytest.mark.postgres
def test_a_connection_lost_mid_read_is_transient_and_says_so(pg_url: str) -> None:
    """A front-end session ended mid-read (a restart, a DBA's kill, a silent network noticed by
    syncd.targets.deadpeer) is not a problem with the table or query."""
    front = sa.create_engine(pg_url)
    upstream_table(front, 30, when=T0)
    app, ds = _build(pg_url, pg_url, incremental=False, page_size=10)
    src = SqlSource.from_config(app, ds)
    pages = src.read(Window(None, None))
    try:
        next(pages)
        with front.connect() as conn:  # end the source's session, as a DBA's kill would
            ended = conn.execute(sa.text(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = current_database()"
                " AND pid <> pg_backend_pid() AND application_name = 'syncd'"
            )).scalars().all()
        assert ended == [True]
        with pytest.raises(TransientUpstreamError, match="was lost while reading") as caught:
            list(pages)
        assert "Check the table/query" not in str(caught.value)
    finally:
        src.close()
        front.dispose()
