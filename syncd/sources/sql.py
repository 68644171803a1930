"""The SQL source: a front-end database (前置库) table, view or query, read with keyset paging.

Any SQLAlchemy URL works: PostgreSQL (also KingbaseES 人大金仓 and openGauss, through
``postgresql+psycopg://``), MariaDB/MySQL (also OceanBase in MySQL mode, ``mysql+pymysql://``),
SQLite; DM (达梦) needs its own dialect package (``dm+dmPython://``).

How it reads (DESIGN §4.3, §4.5):

* only the columns the dataset uses are selected (mapped columns, key, update column, delete
  flag), so nothing outside the approval (授权字段) is read;
* pages are ordered by (update column, key) for incremental reads and by the key otherwise, and
  the next page starts *after* the last row read: ``WHERE (upd, key) > (:last_upd, :last_key)``
  — keyset paging, never OFFSET, which skips or repeats rows while the table changes;
* the window bounds the update column: ``upd >= since`` and ``upd <= until`` (the runner's
  lookback and safety lag), all values as bound parameters, written as the column keeps its times
  (:meth:`SqlSource._times_kept`, once per source): a time type as times; text in one format that
  sorts like the times (``incremental.format``, or recognised from a value: ``2026-01-05
  08:00:00``, ``20260105080000``) as text in that format; numbers as epoch seconds or milliseconds
  (``incremental.unit``) or as the digits of a format; SQLite's ISO 8601 text as times, whatever
  its spelling (:class:`_IsoText`). The comparison stays on the column itself, so an index on it
  serves the window;
* each page is one short read-only transaction streamed with a server-side cursor
  (``stream_results``/``yield_per``): memory is bounded by the page size, never the table;
* the connection is read-only where the database supports it (PostgreSQL
  ``default_transaction_read_only``, MySQL ``SET SESSION TRANSACTION READ ONLY``, SQLite
  ``PRAGMA query_only``);
* the session's time zone is the app's (PostgreSQL ``TimeZone``, MySQL/MariaDB ``time_zone``), so a
  ``timestamptz``/``TIMESTAMP`` update column is compared with the local-time window in local time.
  A MySQL/MariaDB server without its time-zone tables cannot take a zone with daylight saving time:
  the session keeps the server's zone (a warning), and only a TIMESTAMP update column fails the read;
* a PostgreSQL or MySQL/MariaDB server gone silent mid-read (a firewall, a failover) is noticed
  within about a minute (TCP keepalive, :mod:`syncd.targets.deadpeer`): the read fails as a
  transient error instead of hanging.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, date, datetime, timedelta, tzinfo
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import sqlalchemy as sa
import structlog
from sqlalchemy import event

from syncd.config.loader import config_issue
from syncd.config.model import (
    AppConfig,
    DatasetConfig,
    SqlConnection,
    SqlIncrementalConfig,
    SqlSourceConfig,
)
from syncd.config.timeformat import TimeFormat, guess_time_format, time_format
from syncd.errors import (
    ConfigError,
    ConfigIssue,
    PermanentUpstreamError,
    TransientUpstreamError,
    UpstreamError,
)
from syncd.sources.base import Page, ReadStats, Window
from syncd.targets.dbtls import mysql_tls_args
from syncd.targets.deadpeer import detect_dead_peers
from syncd.targets.engine import describe_url, with_driver
from syncd.targets.writer import failure_reason

__all__ = ["SqlSource", "columns_read", "source_engine"]

log = structlog.get_logger(__name__)

_FETCH = 1000  # rows per server-side fetch (one Page)
_SAMPLES = 20  # values of a text update column at either end of its order that tell its format


def columns_read(dataset: DatasetConfig) -> tuple[str, ...]:
    """The upstream columns a dataset uses, in a stable order (mapped, key, update, delete flag)."""
    src = dataset.source
    if not isinstance(src, SqlSourceConfig):
        raise TypeError(f"dataset {dataset.name} has no SQL source")
    names: dict[str, None] = {}
    for cfg in dataset.columns.values():
        if cfg.source is not None:
            names[cfg.source.split(".")[0]] = None
        for t in cfg.transforms:
            for f in t.fields or ():
                names[f.split(".")[0]] = None
    for k in src.key:
        names[k] = None
    if src.incremental is not None:
        names[src.incremental.field] = None
    if dataset.target.logical_delete is not None:
        names[dataset.target.logical_delete.field.split(".")[0]] = None
    return tuple(names)


def source_engine(url: str, *, connect_timeout: float = 10.0, timezone: str | None = None) -> sa.Engine:
    """A small read-only engine for a front-end database; the password never reaches a message.

    The session's time zone is ``timezone`` (the app's): the window's bounds are bound as local
    times without a zone, which the server reads in the session's zone when it compares them with a
    ``timestamptz`` (PostgreSQL ``TimeZone``) or ``TIMESTAMP`` (MySQL/MariaDB ``time_zone``) column,
    and returns such a column's values in that zone (a server in UTC read 08:00 Shanghai as 16:00).
    MySQL/MariaDB know named zones only from their time-zone tables: without them a zone with no
    daylight saving time is set as its fixed offset (``+08:00``); for any other the session keeps
    the server's zone, with a warning once per process that says to load the tables, and the
    connection's ``info`` says why (:data:`_ZONE_UNSET`): DATETIME columns do not care, a windowed
    TIMESTAMP update column does (:func:`_mysql_time_zone`)."""
    try:
        parsed = sa.make_url(url)
    except (sa.exc.ArgumentError, ValueError):
        raise PermanentUpstreamError(
            "the front-end database URL cannot be parsed: write it like postgresql+psycopg://user:"
            "${credential:qzk_password}@host:5432/db or mysql+pymysql://user:…@host:3306/db"
        ) from None
    backend = parsed.get_backend_name()
    parsed = with_driver(parsed)
    timeout = max(1, round(connect_timeout))
    connect_args: dict[str, Any] = {}
    if backend == "postgresql":
        connect_args = {
            "connect_timeout": timeout,
            "application_name": "syncd",
            "options": "-c default_transaction_read_only=on"
            + (f" -c TimeZone={timezone}" if timezone else ""),
        }
    elif backend in ("mysql", "mariadb"):
        connect_args = {"connect_timeout": timeout, **mysql_tls_args(parsed)}
    engine = sa.create_engine(parsed, pool_size=1, pool_pre_ping=True, hide_parameters=True,
                              connect_args=connect_args)
    detect_dead_peers(engine)  # a front-end database behind a firewall that forgets idle connections
    if backend in ("mysql", "mariadb", "sqlite"):
        statement = "PRAGMA query_only = ON" if backend == "sqlite" else "SET SESSION TRANSACTION READ ONLY"
        zone = timezone if backend != "sqlite" else None
        where = describe_url(parsed)

        @event.listens_for(engine, "connect")
        def _session(dbapi_connection: Any, record: Any) -> None:
            cursor = dbapi_connection.cursor()
            try:
                cursor.execute(statement)
                if zone is not None:
                    unset = _mysql_time_zone(cursor, zone, engine.dialect.loaded_dbapi.Error)
                    if unset is not None:
                        record.info[_ZONE_UNSET] = unset
                        _warn_zone_kept(cursor, where, zone, unset)
            finally:
                cursor.close()

    return engine


_MYSQL_UNKNOWN_TIME_ZONE = 1298  # ER_UNKNOWN_TIME_ZONE: the server has no time-zone tables (or no such zone)
_MYSQL_TIMESTAMP = 7  # MYSQL_TYPE_TIMESTAMP, a result column's type code (PyMySQL, mysqlclient)
_ZONE_UNSET = "syncd_time_zone_unset"
"""Key of a MySQL/MariaDB connection's ``info``: why its session kept the server's time zone."""
_zone_warned: set[tuple[str, str]] = set()
_zone_warned_lock = threading.Lock()


def _mysql_time_zone(cursor: Any, zone: str, dbapi_error: type[Exception]) -> str | None:
    """Set a MySQL/MariaDB session's ``time_zone`` to ``zone``, or to its fixed offset when the
    server has no time-zone tables and the zone keeps one offset all year (Asia/Shanghai: ``+08:00``).
    A zone with daylight saving time has no such stand-in: the session keeps the server's zone, and
    the reason is returned (None: set). That matters only for TIMESTAMP columns, which the server
    converts to and from the session's zone: :meth:`SqlSource._times_kept` refuses to window a
    TIMESTAMP update column on such a session (:func:`_zone_error`)."""
    try:
        cursor.execute("SET time_zone = %s", (zone,))
        return None
    except dbapi_error as exc:
        if not exc.args or exc.args[0] != _MYSQL_UNKNOWN_TIME_ZONE:
            raise
    offset = _fixed_offset(zone)
    if offset is not None:
        try:
            cursor.execute("SET time_zone = %s", (offset,))
            return None
        except dbapi_error as exc:  # an offset outside the server's range (+14:00 on MariaDB)
            if not exc.args or exc.args[0] != _MYSQL_UNKNOWN_TIME_ZONE:
                raise
    return (f"{zone} has daylight saving time, so no fixed offset can stand in" if offset is None
            else f"the server does not take its fixed offset {offset} either")


_LOAD_ZONES = "Ask its DBA to load them: mysql_tzinfo_to_sql /usr/share/zoneinfo | mysql -u root mysql"


def _warn_zone_kept(cursor: Any, where: str, zone: str, why: str) -> None:
    """Log ``sync.source_time_zone_kept`` once per process for a front-end database and zone."""
    with _zone_warned_lock:
        if (where, zone) in _zone_warned:
            return
        _zone_warned.add((where, zone))
    try:
        cursor.execute("SELECT @@session.time_zone, @@system_time_zone")
        session_zone, system_zone = cursor.fetchone()
        kept = f"{system_zone}" if session_zone == "SYSTEM" else f"{session_zone}"
    except Exception:  # noqa: BLE001 - only the warning's detail: the session works as it is
        kept = None
    log.warning(
        "sync.source_time_zone_kept",
        database=where,
        timezone=zone,
        server_time_zone=kept,
        reason=f"its time-zone tables are not loaded (or lack this zone), and {why}",
        hint=(
            "the session keeps the server's time zone: DATETIME columns are read as stored, TIMESTAMP "
            "columns in the server's zone, and a TIMESTAMP update column (incremental.field) fails "
            f"the read. {_LOAD_ZONES}"
        ),
    )


def _zone_error(where: str, zone: str, why: str, field: str) -> PermanentUpstreamError:
    return PermanentUpstreamError(
        f"front-end database {where} does not know the time zone {zone!r} (timezone in syncd.yaml), "
        f"which its session needs to compare the TIMESTAMP update column {field} (incremental.field) "
        f"with the local-time window: its time-zone tables are not loaded (or lack this zone), and "
        f"{why}. {_LOAD_ZONES}"
    )


def _fixed_offset(zone: str) -> str | None:
    """``zone``'s UTC offset as ``+HH:MM`` when it is the same all through the last and the next
    year (no daylight saving time), else None."""
    tz = ZoneInfo(zone)
    now = datetime.now(UTC)
    offsets = {(now + timedelta(days=30 * m)).astimezone(tz).utcoffset() for m in range(-12, 13)}
    if len(offsets) != 1:
        return None
    offset = offsets.pop() or timedelta(0)
    minutes = round(offset.total_seconds() // 60)
    sign = "-" if minutes < 0 else "+"
    return f"{sign}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}"


class SqlSource:
    """A :class:`~syncd.sources.base.Source` reading one dataset from a front-end database."""

    def __init__(
        self,
        *,
        dataset: str,
        source: SqlSourceConfig,
        url: str,
        columns: tuple[str, ...],
        tz: tzinfo,
        connect_timeout: float = 10.0,
        config_file: str = "",
    ) -> None:
        self.name = dataset
        self.cfg = source
        self.stats = ReadStats()
        self._tz = tz
        self._config_file = config_file
        zone = getattr(tz, "key", None)  # a ZoneInfo's name (other tzinfo: the server's own zone)
        self._engine = source_engine(url, connect_timeout=connect_timeout, timezone=zone)
        self._where = describe_url(self._engine.url)
        self._mysql = self._engine.dialect.name in ("mysql", "mariadb")
        cols: list[sa.ColumnClause[Any]] = [sa.column(c) for c in columns]
        self._from: sa.TableClause | sa.Subquery
        if source.table is not None:
            self._from = sa.table(source.table, *cols, schema=source.schema_name)
        else:
            self._from = sa.text(source.query or "").columns(*cols).subquery("syncd_q")
        sel = self._from.c
        self._select = [sel[c] for c in columns]
        inc = source.incremental
        self._upd = None if inc is None else inc.field
        order_names = ([inc.field] if inc is not None else []) + list(source.key)
        self._order = [sel[c] for c in order_names]
        self._order_names = order_names
        self._keys = [sel[c] for c in source.key]
        # how the update column keeps its times, found on the first read (_times_kept)
        self._times: _Times | None = None
        # the rows of the current read whose update value is not written in the column's text form
        self._misfits = 0
        self._misfit: tuple[Any] | None = None  # the first such value
        self._time_of: Callable[[Any], datetime | None] = _Native(tz).time_of
        if self._upd is not None and self._engine.dialect.name == "sqlite":
            local = _sqlite_local_time(tz)

            @event.listens_for(self._engine, "connect")
            def _functions(dbapi_connection: Any, _record: Any) -> None:
                dbapi_connection.create_function(_LOCAL_TIME, 1, local, deterministic=True)

    @classmethod
    def from_config(cls, app: AppConfig, dataset: DatasetConfig) -> SqlSource:
        """Build the source of ``dataset``, resolving its ``type: sql`` connection."""
        src = dataset.source
        if not isinstance(src, SqlSourceConfig):
            raise TypeError(f"dataset {dataset.name} has a {src.type} source, not a sql one")
        connection = app.connections.get(src.connection)
        if not isinstance(connection, SqlConnection):  # the load's cross-check refuses this already
            raise ConfigError([config_issue(
                dataset.source_file, ("source", "connection"),
                f"connection {src.connection!r} is not a `type: sql` connection under connections: in "
                f"{app.source_file or 'the main file'}: name one that is",
                unnamed="the dataset's file",
            )])
        return cls(
            dataset=dataset.name,
            source=src,
            url=connection.url.get_secret_value(),
            columns=columns_read(dataset),
            tz=ZoneInfo(app.timezone),
            connect_timeout=connection.connect_timeout.total_seconds(),
            config_file=dataset.source_file,  # where source.incremental is written
        )

    def __repr__(self) -> str:
        return f"SqlSource({self.name}, {self._where})"

    # ------------------------------------------------------------------ Source protocol

    def _in_window(
        self, window: Window, times: _Times | None, after: Any = None, *, dated: bool = False
    ) -> sa.Select[Any]:
        """``since <= upd <= until``, the bounds written as the update column keeps its times
        (``times``, see :meth:`_times_kept`); a full read (no ``since``) also takes the rows without
        an update time, unless ``dated``. ``after``: the update value the keyset read stands at,
        which may raise the lower bound the index range starts from (:meth:`_Times.floor`)."""
        query = sa.select(*self._select).select_from(self._from)
        if self._upd is not None and times is not None:
            upd = self._from.c[self._upd]
            lower = times.floor(upd, window.since, after)
            upper = times.upper(upd, window.until) if window.until is not None else []
            query = query.where(*lower)
            if dated:
                query = query.where(*upper, upd.is_not(None))
            elif upper:
                bound = sa.and_(*upper)
                # a full read takes the rows that have no update time too (see read())
                query = query.where(bound if window.since is not None else sa.or_(bound, upd.is_(None)))
        return query

    def _keyset(
        self,
        query: Callable[[tuple[Any, ...] | None], sa.Select[Any]],
        order: Sequence[sa.ColumnElement[Any]],
        names: Sequence[str],
    ) -> Iterator[Page]:
        """The rows of ``query(after)`` in keyset pages ordered by ``order`` (whose values are never
        NULL); ``after`` is where the read stands (None before the first page)."""
        after: tuple[Any, ...] | None = None
        limit = self.cfg.page_size
        while True:
            paged = query(after)
            if after is not None:
                if len(order) == 1:
                    paged = paged.where(order[0] > after[0])
                else:
                    paged = paged.where(sa.tuple_(*order) > sa.tuple_(*after))
            seen = 0
            for page in self._pages(paged.order_by(*order).limit(limit)):
                seen += len(page.records)
                after = tuple(page.records[-1][c] for c in names)
                yield page
            if seen < limit:
                break

    def read(self, window: Window) -> Iterator[Page]:
        """Pages of records (dicts by column name) in keyset order, then the window's rows with a
        NULL key (the mapping quarantines them); ``stats.complete`` at the end.

        Keyset paging needs every ordering value: a NULL compares as unknown, so a page ending on
        one hid the rows after it (SQLite, MariaDB sort NULLs first) or failed (column > NULL).
        Rows with a NULL key are read apart, after the others. So are a full read's rows with no
        update time (a legacy front-end table whose update column was added later, or is filled by
        only some of its writers): they are part of the dataset, but no window can select them, so
        an incremental run never reads them again; the read warns how many there are. The same
        goes for the rows of a text update column whose value is not written in its form (an
        empty text, another format): no text comparison can place them in a window, so a full
        read takes them wherever they sort (:meth:`_misfits_above`) and any read counts them."""
        times = self._times_kept() if self._upd is not None else None
        self._misfits, self._misfit = 0, None
        in_window = self._in_window(window, times)
        keyed = [key.is_not(None) for key in self._keys]
        with_keys = in_window.where(*keyed)
        if self._upd is None:
            yield from self._keyset(lambda _: with_keys, self._order, self._order_names)
        else:
            upd = self._from.c[self._upd]

            def dated(after: tuple[Any, ...] | None) -> sa.Select[Any]:
                # the window again for each page, its lower bound raised to where the read stands
                # (an index range that starts there instead of at the window's start)
                position = None if after is None else after[0]
                return self._in_window(window, times, position, dated=True).where(*keyed)

            if times is not None and times.form is not None:
                yield from self._counted(self._keyset(dated, self._order, self._order_names), times)
                if window.since is None and window.until is not None:
                    yield from self._misfits_above(window, times, keyed)
            else:
                yield from self._keyset(dated, self._order, self._order_names)
            if self._misfits and times is not None:
                self._warn_misfits(times, full=window.since is None)
            if window.since is None:
                undated = 0
                undated_query = with_keys.where(upd.is_(None))
                for page in self._keyset(lambda _: undated_query, self._keys, list(self.cfg.key)):
                    undated += len(page.records)
                    yield page
                if undated:
                    self._warn_undated(undated)
        null_keys = sa.or_(*(key.is_(None) for key in self._keys))
        yield from self._pages(in_window.where(null_keys))
        self.stats.complete = True

    def _counted(self, pages: Iterator[Page], times: _Times) -> Iterator[Page]:
        """``pages``, their update values not written in the column's text form counted."""
        upd, time_of = self._upd or "", times.time_of
        for page in pages:
            for record in page.records:
                value = record.get(upd)
                if value is not None and time_of(value) is None:
                    self._misfits += 1
                    self._misfit = self._misfit or (value,)
            yield page

    def _misfits_above(
        self, window: Window, times: _Times, keyed: Sequence[sa.ColumnElement[bool]]
    ) -> Iterator[Page]:
        """A full read's rows above the window's upper bound whose update value is not written in the
        column's text form ('2026/03/01' sorts after every '2026-…' bound): part of the dataset, which
        no window selects. The rows there in the form are newer than the window, left for the next
        run as always; the text comparison serves the index range (usually a few rows)."""
        upd = self._from.c[self._upd or ""]
        newer = times.above(upd, window.until or datetime.max)
        above = sa.select(*self._select).select_from(self._from).where(*newer, upd.is_not(None), *keyed)
        for page in self._counted(self._keyset(lambda _: above, self._order, self._order_names), times):
            odd = [r for r in page.records if times.time_of(r[self._upd or ""]) is None]
            self.stats.records -= len(page.records) - len(odd)
            if odd:
                yield Page(records=odd, number=page.number)

    def _warn_misfits(self, times: _Times, *, full: bool) -> None:
        count, example = self._misfits, (self._misfit or ("",))[0]
        log.warning("sync.rows_with_unreadable_update_time", dataset=self.name, field=self._upd,
                    form=times.form, rows=count, example=example)
        took = ("this full read took them, but incremental runs" if full else
                "this run took those its window's text comparison selected, but incremental runs")
        self.stats.warnings.append(
            f"{count} rows of {self._what} have an update time not written as {times.form} (such as "
            f"{self._upd} = {example!r}): {took} compare the column as text in that form and cannot tell "
            f"which window such a value belongs in, so their changes are read reliably only by a full "
            f"read (syncd sync {self.name} --full, e.g. on a weekly timer). Have upstream write them as "
            f"the others, or convert the column to a time in `query:` ({_CONVERT})"
        )

    def _times_kept(self) -> _Times:
        """How the update column keeps its times, found once per source: from the column's type
        as the driver describes it (a query that returns no row), and for a column that is not a
        time type from one of its values (SQLite's columns have no fixed type) and
        ``incremental.format``/``unit``. Its window is then bound in that form, its values read
        back in it (:meth:`update_time`)."""
        if self._times is None:
            upd = self._from.c[self._upd or ""]
            values = sa.select(upd).select_from(self._from)
            conn = self._connect()
            try:
                with conn:
                    self.stats.requests += 1
                    described = conn.execute(values.where(sa.false()))
                    columns = described.cursor.description
                    type_code = columns[0][1] if columns else None
                    kind = _kind(self._engine.dialect.loaded_dbapi, type_code)
                    described.close()
                    unset = conn.info.get(_ZONE_UNSET)
                    if unset is not None and type_code == _MYSQL_TIMESTAMP and self._mysql:
                        # compared in the server's zone, the window would be shifted by its offset
                        zone = getattr(self._tz, "key", str(self._tz))
                        raise _zone_error(self._where, zone, unset, self._upd or "")
                    type_name = _type_name(self._engine.dialect.name, type_code)
                    samples = [] if kind == "time" else self._samples(conn, values, upd)
            except sa.exc.SQLAlchemyError as exc:
                raise self._read_failed(exc) from exc
            self._times = self._times_for(kind, samples)
            self._time_of = self._times.time_of
            if kind == "time" or (samples and isinstance(samples[-1], datetime | date)):
                self._warn_ignored(type_name)
        return self._times

    def _warn_ignored(self, type_name: str | None) -> None:
        """``incremental.format``/``unit`` given for an update column of a time type, which the
        database compares with the window as times: they have nothing to say about it. A warning,
        not an error: such a dataset read right before (the settings were ignored), and an upgrade
        must not stop it; the operator learns where the line is that misleads the next reader."""
        inc = self._inc
        for name, value in (("format", inc.format), ("unit", inc.unit)):
            if value is None:
                continue
            kind = f"a {type_name} (a time type)" if type_name else "of a time type"
            issue = self._issue(name, (
                f"ignored: the update column {self._upd} of {self._what} is {kind}, and syncd reads its "
                f"values as times (`{name}:` is for times kept as text or numbers). "
                f"Remove `{name}: {value!r}`"))
            log.warning("sync.update_column_setting_ignored", dataset=self.name, file=issue.file,
                        line=issue.line, field=issue.path, column_type=type_name,
                        hint=f"remove `{name}:` from source.incremental")
            self.stats.warnings.append(str(issue))

    def _samples(self, conn: sa.Connection, values: sa.Select[Any], upd: sa.ColumnElement[Any]) -> list[Any]:
        """Values of the update column that tell how it keeps its times: the lowest and the highest
        :data:`_SAMPLES` in the column's own order, the one the window compares in (a value written
        another way, or an empty text, tends to sort at either end; an index on the column serves
        both). One value, whatever the database returned first, was all there was: an empty text
        failed the read, and a format recognised from it left the rows written another way to
        chance."""
        present = values.where(upd.is_not(None))
        self.stats.requests += 2
        low = conn.execute(present.order_by(upd).limit(_SAMPLES)).scalars().all()
        high = conn.execute(present.order_by(upd.desc()).limit(_SAMPLES)).scalars().all()
        return [*low, *reversed(high)]

    def _times_for(self, kind: str | None, samples: list[Any]) -> _Times:
        """The :class:`_Times` of an update column of driver type ``kind`` holding ``samples``
        (:meth:`_samples`, lowest first); a value's type is the highest's (the latest writer's)."""
        if not samples:  # no value yet: no window selects a row, whatever its bounds' form
            return self._times_by_kind(kind)
        sample = samples[-1]
        if isinstance(sample, datetime | date):
            return _Native(self._tz)  # format and unit have nothing to say about a time column
        if isinstance(sample, str):
            return self._text_times([v.strip() for v in samples if isinstance(v, str)])
        if isinstance(sample, int | float | Decimal) and not isinstance(sample, bool):
            return self._number_times(sample)
        raise self._config_error("field", (
            f"the update column {self._upd} of {self._what} holds {type(sample).__name__} values "
            f"({sample!r}), not times: name a column of times, text or numbers in `incremental.field`"))

    def _times_by_kind(self, kind: str | None) -> _Times:
        inc = self._inc
        if kind == "number":
            if inc.unit is not None:
                return _Epoch(inc.unit, self._tz, 0)
            declared = time_format(inc.format) if inc.format is not None else None
            if declared is None or not declared.digits:
                raise self._config_error("unit", self._numbers_are("", None))
            return _Digits(declared)
        if self._engine.dialect.name == "sqlite":
            return _IsoText(self._tz)
        if kind == "text":
            if inc.unit is not None:
                raise self._unit_on_text(None)
            return _Text(time_format(inc.format or "%Y-%m-%d %H:%M:%S"))
        return _Native(self._tz)

    def _unit_on_text(self, value: str | None) -> ConfigError:
        seen = "" if value is None else f" ({value!r})"
        return self._config_error("unit", (
            f"`unit: {self._inc.unit}` is for a number column, but the update column {self._upd} of "
            f"{self._what} holds text{seen}: leave `unit:` out, or convert the column in `query:` "
            f"(CAST({self._upd} AS BIGINT) AS {self._upd})"))

    def _text_times(self, values: list[str]) -> _Times:
        """A text update column holding ``values``: in ``incremental.format``, when one of them is
        written in it (the others are counted by the read, :meth:`_misfits_above`), or in the one
        format they all are written in. An empty text is no time (a writer's "none"): it decides
        nothing, and the read counts it too."""
        inc = self._inc
        written = [v for v in values if v]
        if inc.unit is not None:
            raise self._unit_on_text((written or values)[-1])
        if inc.format is not None:
            declared = time_format(inc.format)
            if written and not any(declared.matches(v) for v in written):
                raise self._config_error("format", (
                    f"{declared.text!r} does not match the update column {self._upd} of {self._what}, "
                    f"which holds values like {written[-1]!r}: write the format they are written in "
                    f"(year first, zero-padded), or convert the column to a time in `query:` ({_CONVERT})"))
            return _Text(declared)
        sqlite = self._engine.dialect.name == "sqlite"
        if not written:
            return _IsoText(self._tz) if sqlite else _Text(time_format("%Y-%m-%d %H:%M:%S"))
        iso = [v[4:5] == "-" and _local_time(v, self._tz) is not None for v in written]
        pairs = zip(iso, written, strict=True)
        if sqlite and any(iso) and all(ok or guess_time_format(v) is None for ok, v in pairs):
            # ISO 8601 text, spelled in any of its ways (SQLite); a placeholder no format reads
            # decides nothing (the read counts its rows)
            return _IsoText(self._tz)
        ways: dict[str, tuple[str, TimeFormat | None]] = {}  # format (or "") -> the first value so
        for value in written:
            guessed = guess_time_format(value)
            ways.setdefault("" if guessed is None else guessed.text, (value, guessed))
        if len(ways) > 1 and "" in ways:
            # a placeholder no time format reads ('0000-00-00 00:00:00' written as text, 'null',
            # '-') beside values in one format decides nothing, as an empty text does: the read
            # counts such rows (sync.rows_with_unreadable_update_time); two formats still conflict
            del ways[""]
        if len(ways) > 1:
            seen = ", ".join(f"{v!r} (as {f.text!r})" if f is not None else
                             f"{v!r} (in no way that sorts like the times)" for v, f in ways.values())
            raise self._config_error("format", (
                f"the update column {self._upd} of {self._what} holds times written in more than one "
                f"way: {seen}, so no one text comparison can window them: say how the column writes its "
                "times with `format:` (a row written another way is then read by full reads only, with "
                f"a warning that counts them), or convert the column to a time in `query:` ({_CONVERT})"))
        value, guessed = next(iter(ways.values()))
        if guessed is None:
            raise self._config_error("field", (
                f"the update column {self._upd} of {self._what} holds text like {value!r}, which does "
                "not sort like the times it writes, so the window cannot be compared with it: times "
                "kept as text must be written the same way, year first and zero-padded "
                "(2026-01-05 08:00:00, 2026/01/05 08:00, 20260105080000…). Convert the column to a "
                f"time in `query:` ({_CONVERT})"))
        return _Text(guessed)

    def _number_times(self, value: int | float | Decimal) -> _Times:
        inc = self._inc
        if inc.unit is not None:
            return _Epoch(inc.unit, self._tz, value)
        if inc.format is None:
            raise self._config_error("unit", self._numbers_are("", value))
        declared = time_format(inc.format)
        whole = _whole(value)
        if not declared.digits or whole is None or not declared.matches(str(whole)):
            lead = f"{declared.text!r} does not match them: "
            raise self._config_error("format", self._numbers_are(lead, value))
        return _Digits(declared)

    @property
    def _inc(self) -> SqlIncrementalConfig:
        inc = self.cfg.incremental
        if inc is None:
            raise TypeError(f"dataset {self.name} has no update column")
        return inc

    @property
    def _what(self) -> str:
        return self.cfg.table or "the query"

    def _numbers_are(self, lead: str, sample: Any) -> str:
        """What to say about an update column of numbers whose meaning is not (rightly) given."""
        seen = "" if sample is None else f" (such as {sample!r})"
        return (
            f"the update column {self._upd} of {self._what} holds numbers{seen}: {lead}say what they are "
            "with `unit: s` (seconds since 1970-01-01 UTC), `unit: ms` (milliseconds) or `format: "
            "'%Y%m%d%H%M%S'` (the digits of the local time, or fewer of them: '%Y%m%d')"
            f"{_looks_like(sample, self._tz)}"
        )

    def _issue(self, field: str, message: str) -> ConfigIssue:
        """An issue with ``source.incremental.<field>``, at its line of the dataset's file."""
        return config_issue(self._config_file, ("source", "incremental", field), message,
                            unnamed="the dataset's file")

    def _config_error(self, field: str, message: str) -> ConfigError:
        return ConfigError([self._issue(field, message)])

    def _warn_undated(self, count: int) -> None:
        log.warning("sync.rows_without_update_time", dataset=self.name, field=self._upd, rows=count)
        self.stats.warnings.append(
            f"{count} rows of {self.cfg.table or 'the query'} have no update time ({self._upd} is NULL): "
            "this full read took them, but incremental runs cannot select them, so their later changes "
            f"are only read by a full read (syncd sync {self.name} --full, e.g. on a weekly timer) or "
            f"once upstream fills {self._upd}"
        )

    def _connect(self) -> sa.Connection:
        """A connection to the front-end database; TransientUpstreamError (retried) when unreachable."""
        try:
            return self._engine.connect()
        except sa.exc.SQLAlchemyError as exc:
            raise TransientUpstreamError(
                f"front-end database {self._where} is unreachable: {failure_reason(exc)[:500]}"
            ) from exc

    def _pages(self, query: sa.Select[Any]) -> Iterator[Page]:
        """The rows of one query, streamed in pages of at most the fetch size."""
        conn = self._connect()
        try:
            with conn:
                self.stats.requests += 1
                streamed = conn.execution_options(
                    stream_results=True, yield_per=min(self.cfg.page_size, _FETCH)
                )
                result = streamed.execute(query).mappings()
                try:
                    for part in result.partitions():
                        records = [dict(r) for r in part]
                        self.stats.pages += 1
                        self.stats.records += len(records)
                        yield Page(records=records, number=self.stats.pages)
                finally:
                    # a run that stops early (stop request, guard, failed batch) closes this
                    # generator: close the server-side cursor now, not at garbage collection
                    result.close()
        except sa.exc.SQLAlchemyError as exc:
            raise self._read_failed(exc) from exc

    def _read_failed(self, exc: sa.exc.SQLAlchemyError) -> UpstreamError:
        """The error of a read that failed: the connection lost mid-read (the server restarted or
        ended the session, the network went silent: syncd.targets.deadpeer) is transient, and says
        so; anything else is a problem with the table or query."""
        reason = failure_reason(exc)[:500]
        if isinstance(exc, sa.exc.DBAPIError) and exc.connection_invalidated:
            return TransientUpstreamError(
                f"the connection to front-end database {self._where} was lost while reading {self._what}: "
                f"{reason}. The batches already written stay and the watermark did not move: the next "
                "run reads the rest; if this repeats, check the network to the front-end database and "
                "the server's logs (a restart, a killed session, an idle timeout)"
            )
        return PermanentUpstreamError(
            f"reading {self._what} from {self._where} failed: {reason}. "
            "Check the table/query and that every column the dataset maps exists"
        )

    def update_time(self, record: dict[str, Any]) -> datetime | None:
        if self._upd is None:
            return None
        return self._time_of(record.get(self._upd))

    def close(self) -> None:
        self._engine.dispose()


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
_CONVERT = (
    "PostgreSQL to_timestamp(upd, 'YYYY/MM/DD HH24:MI:SS')::timestamp AS upd, MySQL/MariaDB "
    "STR_TO_DATE(upd, '%Y/%m/%d %H:%i:%s') AS upd, with the pattern of its values; see docs/sources.md"
)


_MYSQL_TIME_TYPES = {7: "TIMESTAMP", 10: "DATE", 11: "TIME", 12: "DATETIME", 13: "YEAR", 14: "DATE"}


def _type_name(dialect: str, type_code: Any) -> str | None:
    """The database's name of a time type a result column's type code stands for (PostgreSQL
    ``TIMESTAMPTZ``, MySQL/MariaDB ``DATETIME``), None when not known."""
    if not isinstance(type_code, int):
        return None
    if dialect in ("mysql", "mariadb"):
        return _MYSQL_TIME_TYPES.get(type_code)
    if dialect == "postgresql":
        try:
            from psycopg.postgres import types
        except ImportError:  # another driver: no name, the message says "a time type"
            return None
        info = types.get(type_code)
        return None if info is None else info.name.upper()
    return None


def _kind(dbapi: Any, type_code: Any) -> str | None:
    """``time``, ``text`` or ``number`` for a result column's type as the driver describes it (the
    PEP 249 type objects: psycopg and PyMySQL have them), None when it does not say (SQLite)."""
    if type_code is None:
        return None
    for kind, name in (("time", "DATETIME"), ("time", "DATE"), ("text", "STRING"), ("number", "NUMBER")):
        described = getattr(dbapi, name, None)
        try:
            if described is not None and described == type_code:
                return kind
        except TypeError:  # a driver whose type objects compare otherwise
            continue
    return None


def _whole(value: int | float | Decimal) -> int | None:
    """``value`` as an int when it is a whole number."""
    if isinstance(value, int):
        return value
    try:
        return int(value) if value == int(value) else None
    except (ValueError, OverflowError):  # NaN, infinity
        return None


def _looks_like(sample: Any, tz: tzinfo) -> str:
    """A hint at what a number of an update column may be (by its digits), or ''."""
    whole = _whole(sample) if isinstance(sample, int | float | Decimal) else None
    if whole is None or whole <= 0:
        return ""
    if len(str(whole)) in (8, 12, 14):
        fmt = {8: "%Y%m%d", 12: "%Y%m%d%H%M", 14: "%Y%m%d%H%M%S"}[len(str(whole))]
        if time_format(fmt).matches(str(whole)):
            return f"; {whole} looks like format: '{fmt}'"
    for unit, per_second in (("s", 1), ("ms", 1000)):
        try:
            when = datetime.fromtimestamp(whole / per_second, tz).replace(tzinfo=None)
        except (OverflowError, OSError, ValueError):
            continue
        if 1990 <= when.year <= 2100:
            return f"; {whole} looks like unit: {unit} ({when:%Y-%m-%d %H:%M:%S} local time)"
    return ""


class _Times:
    """How an update column keeps its times: the window's bounds written in that form (a list of
    conditions on the column) and a value read back as a local time (for the watermark)."""

    form: str | None = None  # a text form: what its values are written as (a value not so: no time)

    def lower(self, upd: sa.ColumnElement[Any], since: datetime) -> list[sa.ColumnElement[bool]]:
        return [upd >= since]

    def upper(self, upd: sa.ColumnElement[Any], until: datetime) -> list[sa.ColumnElement[bool]]:
        return [upd <= until]

    def floor(
        self, upd: sa.ColumnElement[Any], since: datetime | None, after: Any
    ) -> list[sa.ColumnElement[bool]]:
        """The lower bound of a keyset page whose read stands at update value ``after`` (None: the
        first page): the window's, unless a form needs the position to start its index range."""
        return self.lower(upd, since) if since is not None else []

    def above(self, upd: sa.ColumnElement[Any], until: datetime) -> list[sa.ColumnElement[bool]]:
        """The values :meth:`upper` does not take (not NULL): those that sort after the window."""
        return [sa.not_(sa.and_(*self.upper(upd, until)))]

    def time_of(self, value: Any) -> datetime | None:
        raise NotImplementedError


class _Native(_Times):
    """A time type (timestamp, DATETIME, date): compared with the bounds by the database."""

    def __init__(self, tz: tzinfo) -> None:
        self._tz = tz

    def time_of(self, value: Any) -> datetime | None:
        if isinstance(value, str):  # a text column (SQLite keeps times as text): with an offset or not
            return _local_time(value, self._tz)
        if isinstance(value, datetime):
            when: datetime = value
            return when if when.tzinfo is None else when.astimezone(self._tz).replace(tzinfo=None)
        if isinstance(value, date):
            return datetime(value.year, value.month, value.day)
        return None


class _IsoText(_Native):
    """SQLite's ISO 8601 text times, in whatever spelling the writer chose ('2026-01-01 08:00:00',
    '2026-01-01T08:00:00', '…08:00:00.000', '…+08:00'): the column's local time in one fixed form
    (:data:`_LOCAL_TIME`) is compared with the bounds in that form; a text range on the column
    itself (two days wider, for the offsets) keeps an index on it usable."""

    form = "an ISO 8601 time"

    def lower(self, upd: sa.ColumnElement[Any], since: datetime) -> list[sa.ColumnElement[bool]]:
        return self.floor(upd, since, None)

    def floor(
        self, upd: sa.ColumnElement[Any], since: datetime | None, after: Any
    ) -> list[sa.ColumnElement[bool]]:
        """SQLite takes one lower bound of the column for its index range, and the keyset's
        ``(upd, key) > (…)`` is not it: every page scanned the range from the window's start and
        called :data:`_LOCAL_TIME` on each row before its place (quadratic: 10⁵ rows in pages of
        1,000 cost 50 calls a row). The keyset implies ``upd >= after`` (the same text order), so
        the one text bound is the higher of the window's and the read's position."""
        bounds = [] if since is None else [(since - _MARGIN).date().isoformat()]
        if isinstance(after, str):
            bounds.append(after)
        out: list[sa.ColumnElement[bool]] = [upd >= max(bounds)] if bounds else []
        if since is not None:
            out.append(getattr(sa.func, _LOCAL_TIME)(upd) >= _time_text(since))
        return out

    def upper(self, upd: sa.ColumnElement[Any], until: datetime) -> list[sa.ColumnElement[bool]]:
        local = getattr(sa.func, _LOCAL_TIME)(upd)
        return [upd < (until + _MARGIN + timedelta(days=1)).date().isoformat(), local <= _time_text(until)]

    def above(self, upd: sa.ColumnElement[Any], until: datetime) -> list[sa.ColumnElement[bool]]:
        """Not :meth:`upper`, with the local time asked only of the values within the margin: a value
        before it is either a time whose local one is before ``until`` too, or no ISO time at all,
        kept as it is by :data:`_LOCAL_TIME` and so taken by :meth:`upper` (a full scan called it on
        every row)."""
        high = (until + _MARGIN + timedelta(days=1)).date().isoformat()
        local = getattr(sa.func, _LOCAL_TIME)(upd)
        near = sa.and_(upd >= (until - _MARGIN).date().isoformat(), local > _time_text(until))
        return [sa.or_(upd >= high, near)]


class _Text(_Times):
    """Text in one format that sorts like the times (:mod:`syncd.config.timeformat`): the bounds
    written in it, compared as text, so an index on the column serves the window. A seconds format
    may carry fractions of a second in some values and not in others: the lower bound is written
    in its shortest form ('…08:00:00', '…08:00:00.5'), which sorts before every spelling of that
    instant; the upper one with nine digits ('…10:00:00.000000000'), which sorts after them."""

    def __init__(self, fmt: TimeFormat) -> None:
        self._fmt = fmt
        self._read = fmt.read
        self.form = repr(fmt.text)

    def lower(self, upd: sa.ColumnElement[Any], since: datetime) -> list[sa.ColumnElement[bool]]:
        fmt = self._fmt
        text = fmt.render(since)
        if fmt.fraction is not None:
            if since.microsecond:
                text += fmt.fraction + f"{since.microsecond:06d}".rstrip("0")
            return [upd >= text]
        return [upd >= text] if fmt.truncate(since) == since else [upd > text]

    def upper(self, upd: sa.ColumnElement[Any], until: datetime) -> list[sa.ColumnElement[bool]]:
        fmt = self._fmt
        text = fmt.render(until)
        if fmt.fraction is not None:
            text += fmt.fraction + f"{until.microsecond:06d}000"
        return [upd <= text]

    def time_of(self, value: Any) -> datetime | None:
        if isinstance(value, str):
            # strictly in the format: a value written otherwise has no place in the text order
            return self._read(value.strip())  # strip: PostgreSQL pads char(n) with spaces
        return None


class _Digits(_Times):
    """A number column holding the digits of the local time (20260105080000 for '%Y%m%d%H%M%S')."""

    def __init__(self, fmt: TimeFormat) -> None:
        self._fmt = fmt
        self._parse = fmt.parse

    def lower(self, upd: sa.ColumnElement[Any], since: datetime) -> list[sa.ColumnElement[bool]]:
        digits = int(self._fmt.render(since))
        return [upd >= digits] if self._fmt.truncate(since) == since else [upd > digits]

    def upper(self, upd: sa.ColumnElement[Any], until: datetime) -> list[sa.ColumnElement[bool]]:
        return [upd <= int(self._fmt.render(until))]

    def time_of(self, value: Any) -> datetime | None:
        if isinstance(value, int | Decimal | float) and not isinstance(value, bool):
            try:
                return self._parse(str(value if isinstance(value, int) else int(value)))
            except (ValueError, OverflowError):
                return None
        return None


class _Epoch(_Times):
    """A number column holding epoch times (``unit``: s or ms since 1970-01-01 UTC): the bounds, local
    times of ``tz``, as the same numbers. Whole numbers (an integer column, as ``sample`` shows) get
    whole bounds, rounded inwards, so the comparison stays integer and an index on it usable."""

    def __init__(self, unit: str, tz: tzinfo, sample: int | float | Decimal) -> None:
        self._tz = tz
        self._per_unit = 1_000_000 if unit == "s" else 1_000  # microseconds
        self._per_second = 1 if unit == "s" else 1000
        self._bound: Callable[[int, bool], int | float | Decimal]
        if isinstance(sample, int):
            self._bound = self._whole
        elif isinstance(sample, Decimal):
            self._bound = lambda us, _up: Decimal(us) / self._per_unit
        else:
            self._bound = lambda us, _up: us / self._per_unit

    def _whole(self, us: int, up: bool) -> int:
        return us // self._per_unit if up else -(-us // self._per_unit)

    def _micros(self, local: datetime) -> int:
        return (local.replace(tzinfo=self._tz) - _EPOCH) // _MICROSECOND

    def lower(self, upd: sa.ColumnElement[Any], since: datetime) -> list[sa.ColumnElement[bool]]:
        return [upd >= self._bound(self._micros(since), False)]

    def upper(self, upd: sa.ColumnElement[Any], until: datetime) -> list[sa.ColumnElement[bool]]:
        return [upd <= self._bound(self._micros(until), True)]

    def time_of(self, value: Any) -> datetime | None:
        if isinstance(value, int | Decimal | float) and not isinstance(value, bool):
            try:
                when = datetime.fromtimestamp(float(value) / self._per_second, self._tz)
            except (OverflowError, OSError, ValueError):
                return None
            return when.replace(tzinfo=None)
        return None


_LOCAL_TIME = "syncd_local_time"  # the SQLite function giving a text time as local time in one form
_MARGIN = timedelta(days=2)  # a text time's own date is at most this far from its local one (offsets ≤ 14 h)


def _local_time(text: str, tz: tzinfo) -> datetime | None:
    """An ISO 8601 text time as a local time without a zone (one with an offset converted to
    ``tz``); None when it is not one."""
    try:
        value = datetime.fromisoformat(text.strip())
        if value.tzinfo is not None:
            value = value.astimezone(tz).replace(tzinfo=None)
    except (ValueError, OverflowError):
        return None
    return value


def _time_text(value: datetime) -> str:
    """A local time in the one text form whose order is the times' order."""
    return value.isoformat(sep=" ", timespec="microseconds")


def _sqlite_local_time(tz: tzinfo) -> Any:
    """The SQLite function :data:`_LOCAL_TIME`: a text time in the form of :func:`_time_text`;
    any other value (a text that is no ISO time, a number, NULL) as it is, compared as before."""

    def local_time(value: Any) -> Any:
        if isinstance(value, str):
            parsed = _local_time(value, tz)
            if parsed is not None:
                return _time_text(parsed)
        return value

    return local_time

