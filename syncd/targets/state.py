"""The state store: runs, watermarks, the change feed and the quarantine, in the target database.

One StateStore per target database and table prefix. It creates syncd's tables
(:meth:`ensure_schema`, safe when processes race), records each run's start and end (the
audit trail, 使用留痕), keeps the watermark of each dataset (advanced in the same transaction
that closes the run, and only when the runner passes one), and hands out a
:class:`~syncd.targets.writer.BatchWriter` per dataset.

Timestamps are stored as UTC and returned as aware UTC datetimes.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
import structlog

from syncd.config.model import DatasetConfig
from syncd.errors import TargetError
from syncd.mapping.casts import ColumnLimit
from syncd.targets.dialects import upsert_statement
from syncd.targets.engine import describe_url, write_engine
from syncd.targets.history import FUTURE_TOLERANCE, RunTimes, read_run_times, statement_timeout
from syncd.targets.records import ResetCounts, RunCounts, RunInfo
from syncd.targets.schema import (
    ADDED_QUARANTINE_COLUMNS,
    ADDED_STATE_COLUMNS,
    MappingShape,
    add_missing_columns,
    create_tables,
    ensure_target_table,
    state_tables,
    warn_inexact_keys,
)
from syncd.targets.sqltypes import MYSQL_NAMES
from syncd.targets.verify import column_limits, key_columns
from syncd.targets.writer import BatchWriter, failure_reason

__all__ = ["StateStore"]

log = structlog.get_logger(__name__)

_ERROR_LIMIT = 20_000  # characters of a run's error message kept in the runs table
_TEXT_LIMIT = {"watermark": 64, "run_id": 32, "status": 16, "trigger": 16}


def _check_length(name: str, value: str | None) -> None:
    limit = _TEXT_LIMIT[name]
    if value is not None and len(value) > limit:
        raise ValueError(f"{name} {value[:80]!r} is longer than {limit} characters")


def _decode(text: str | None) -> Any:
    return None if text is None else json.loads(text)


class StateStore:
    """syncd's own tables in the target database (see the module docstring)."""

    def __init__(self, engine: sa.Engine, prefix: str = "syncd_") -> None:
        self.engine = engine
        self.prefix = prefix
        self.metadata = sa.MetaData()
        self.tables = state_tables(self.metadata, prefix)
        self._writes = write_engine(engine)
        self._where = describe_url(engine.url)
        self._schema_ready = False
        self.row_key_collation: str | None = None
        """MariaDB/MySQL: the collation ``row_state.row_key`` has in the database (read by
        :meth:`ensure_schema`), which the run's seen-key table and JSON_TABLE look-ups must use:
        MariaDB refuses to compare columns of two collations. None elsewhere."""
        # dataset name -> (the configuration it was built from, its target table definition)
        self._targets: dict[str, tuple[DatasetConfig, sa.Table]] = {}
        self._names_fold: bool | None = None  # table names compare without case (same_table)

    def __repr__(self) -> str:
        return f"StateStore({self._where}, prefix={self.prefix!r})"

    def _fail(self, doing: str, exc: sa.exc.SQLAlchemyError) -> TargetError:
        return TargetError(f"{doing} in {self._where} failed: {failure_reason(exc)[:500]}")

    # ------------------------------------------------------------------ schema

    def ensure_schema(self) -> None:
        """Create the state tables and indexes that are missing, and add the columns a database
        made by an older syncd lacks. Safe when processes race.

        On MariaDB/MySQL also reads the collation of ``row_state.row_key`` (one catalogue query)
        and warns when keys there do not compare exactly (a table an earlier version made)."""
        q = self.tables.quarantine
        # before create_tables: an older quarantine table needs its row_key before the index on it
        added = {name: q.c[name].type for name in ADDED_QUARANTINE_COLUMNS}
        for column in add_missing_columns(self.engine, q, added, only_existing=True):
            log.info("state.column_added", table=q.name, column=column)
        create_tables(self.engine, self.tables.all())
        rs = self.tables.row_state
        for column in add_missing_columns(self.engine, rs, ADDED_STATE_COLUMNS):
            log.info("state.column_added", table=rs.name, column=column)
        self.read_key_collation(warn=True)
        self._schema_ready = True

    def read_key_collation(self, *, warn: bool = False) -> None:
        """Set :attr:`row_key_collation` from the database (MariaDB/MySQL; nothing is created: a
        plan, which writes nothing, calls this instead of :meth:`ensure_schema`); ``warn`` about
        key columns of ``row_state`` that do not compare exactly."""
        rs = self.tables.row_state
        try:
            keys = key_columns(self.engine, rs.name, ["row_key"], whole_table=True)
        except sa.exc.DBAPIError as exc:
            raise TargetError(f"cannot inspect table {rs.name} in {self._where}: {exc.orig}") from exc
        if "row_key" in keys:
            self.row_key_collation = keys["row_key"].collation
            if warn:
                warn_inexact_keys(self.engine, keys.values())

    def column_limits(self, dataset: DatasetConfig) -> dict[str, ColumnLimit] | None:
        """What the columns of ``dataset``'s existing target table hold where it is less than the
        mapping's types (:func:`syncd.targets.verify.column_limits`), for the mapping's casts;
        None before the table exists."""
        try:
            return column_limits(self.engine, dataset)
        except sa.exc.DBAPIError as exc:
            raise TargetError(
                f"dataset {dataset.name}: cannot inspect table {dataset.target.table} in "
                f"{describe_url(self.engine.url)}: {failure_reason(exc)[:500]}"
            ) from exc

    def writer(self, dataset: DatasetConfig, shape: MappingShape) -> BatchWriter:
        """A writer for ``dataset``; creates or verifies its target table (TargetSchemaError)."""
        if not self._schema_ready:
            self.ensure_schema()
        cached = self._targets.get(dataset.name)
        known = cached[1] if cached is not None and cached[0] == dataset else None
        table = ensure_target_table(self.engine, dataset, shape, table=known)
        self._targets[dataset.name] = (dataset, table)
        collation = self.row_key_collation
        return BatchWriter(self.engine, self.tables, dataset, shape, table, key_collation=collation)

    # ------------------------------------------------------------------ runs

    def begin_run(self, run: RunInfo) -> None:
        """Record a run as ``running``; older ``running`` rows of the dataset become ``abandoned``
        (their process died without finishing: kill -9, power loss)."""
        _check_length("run_id", run.run_id)
        _check_length("trigger", run.trigger)
        _check_length("watermark", run.watermark_before)
        runs = self.tables.runs
        now = datetime.now(UTC)
        try:
            with self._writes.begin() as conn:
                older = sa.update(runs).where(
                    runs.c.dataset == run.dataset, runs.c.status == "running", runs.c.run_id != run.run_id
                )
                abandoned = conn.execute(older.values(status="abandoned", finished_at=now)).rowcount
                conn.execute(
                    sa.insert(runs).values(
                        run_id=run.run_id,
                        dataset=run.dataset,
                        started_at=run.started_at,
                        status="running",
                        fetched=0,
                        inserted=0,
                        updated=0,
                        deleted=0,
                        unchanged=0,
                        quarantined=0,
                        requests=0,
                        retries=0,
                        pages=0,
                        watermark_before=run.watermark_before,
                        approval_code=run.approval_code,
                        purpose=run.purpose,
                        node=run.node,
                        trigger=run.trigger,
                    )
                )
        except sa.exc.SQLAlchemyError as exc:
            doing = f"recording the start of run {run.run_id} of dataset {run.dataset}"
            raise self._fail(doing, exc) from exc
        if abandoned:
            log.warning(
                "run.abandoned_found",
                dataset=run.dataset,
                count=abandoned,
                hint="an earlier run of this dataset stopped without finishing",
            )

    def finish_run(
        self,
        run_id: str,
        dataset: str,
        *,
        status: str,
        counts: RunCounts,
        error: str | None,
        watermark: str | None,
    ) -> None:
        """Close the run and, when ``watermark`` is given, advance the dataset's watermark —
        both in ONE transaction, so the watermark never moves without its run record."""
        _check_length("status", status)
        _check_length("watermark", watermark)
        runs, marks = self.tables.runs, self.tables.watermarks
        now = datetime.now(UTC)
        values: dict[str, Any] = {
            "finished_at": now,
            "status": status,
            **counts.as_dict(),
            "error": None if error is None else error[:_ERROR_LIMIT],
            # the watermark in force after the run: the new one, else the one it started from
            "watermark_after": watermark if watermark is not None else runs.c.watermark_before,
        }
        try:
            with self._writes.begin() as conn:
                found = conn.execute(
                    sa.update(runs).where(runs.c.run_id == run_id, runs.c.dataset == dataset).values(values)
                ).rowcount
                if not found:
                    raise TargetError(
                        f"run {run_id} of dataset {dataset} is not in {runs.name}: begin_run must come first"
                    )
                if watermark is not None:
                    stmt = upsert_statement(conn, marks, ("dataset",), ["value", "updated_at"])
                    conn.execute(stmt, [{"dataset": dataset, "value": watermark, "updated_at": now}])
        except sa.exc.SQLAlchemyError as exc:
            raise self._fail(f"recording the end of run {run_id} of dataset {dataset}", exc) from exc

    def get_watermark(self, dataset: str) -> str | None:
        marks = self.tables.watermarks
        try:
            with self.engine.connect() as conn:
                value = conn.execute(sa.select(marks.c.value).where(marks.c.dataset == dataset)).scalar()
        except sa.exc.SQLAlchemyError as exc:
            raise self._fail(f"reading the watermark of dataset {dataset}", exc) from exc
        return None if value is None else str(value)

    # ------------------------------------------------------------------ key definition and reset

    def key_definition(self, dataset: str) -> str | None:
        """The key definition stored for ``dataset`` (:mod:`syncd.targets.keydef`); None when none
        is, also when the table does not exist yet (a plan before the first run writes nothing)."""
        kd = self.tables.key_defs
        query = sa.select(kd.c.definition).where(kd.c.dataset == dataset)
        try:
            with self.engine.connect() as conn:
                if not self._schema_ready and not sa.inspect(conn).has_table(kd.name):
                    return None
                value = conn.execute(query).scalar()
        except sa.exc.SQLAlchemyError as exc:
            raise self._fail(f"reading the key definition of dataset {dataset}", exc) from exc
        return None if value is None else str(value)

    def record_key_definition(self, dataset: str, definition: str) -> None:
        kd = self.tables.key_defs
        try:
            with self._writes.begin() as conn:
                stmt = upsert_statement(conn, kd, ("dataset",), ["definition", "updated_at"])
                now = datetime.now(UTC)
                conn.execute(stmt, [{"dataset": dataset, "definition": definition, "updated_at": now}])
        except sa.exc.SQLAlchemyError as exc:
            raise self._fail(f"recording the key definition of dataset {dataset}", exc) from exc

    def reset_counts(self, dataset: DatasetConfig) -> ResetCounts:
        """What :meth:`reset_dataset` would remove for ``dataset``. Reads only: nothing is written
        or created (``syncd reset`` without ``--yes``); a state table that does not exist yet
        counts as empty."""
        rs, marks, q = self.tables.row_state, self.tables.watermarks, self.tables.quarantine
        ledger = _files_table(self.prefix)
        count = sa.select(sa.func.count()).select_from
        name = dataset.name
        try:
            with self.engine.connect() as conn:
                present = set(sa.inspect(conn).get_table_names()) if not self._schema_ready else None

                def exists(table: sa.Table) -> bool:
                    return present is None or table.name in present

                keys = conn.execute(count(rs).where(rs.c.dataset == name)).scalar() if exists(rs) else 0
                mark = (
                    conn.execute(sa.select(marks.c.value).where(marks.c.dataset == name)).scalar()
                    if exists(marks) else None
                )
                quarantined = conn.execute(count(q).where(q.c.dataset == name)).scalar() if exists(q) else 0
                files = (  # the file source's ledger, created by its first run
                    conn.execute(count(ledger).where(ledger.c.dataset == name)).scalar()
                    if sa.inspect(conn).has_table(ledger.name) else 0
                )
                rows = _table_rows(conn, dataset.target.table)
        except sa.exc.SQLAlchemyError as exc:
            raise self._fail(f"counting the state of dataset {name}", exc) from exc
        return ResetCounts(
            int(keys or 0), None if mark is None else str(mark), int(quarantined or 0), rows, int(files or 0)
        )

    def reset_dataset(self, dataset: DatasetConfig, *, truncate_target: bool = False) -> ResetCounts:
        """Forget what syncd knows of ``dataset``'s rows, in ONE transaction: its row state, its
        watermark, its stored key definition, its snapshot miss counts and, for a file source, its
        processed files in the file ledger (so that the files dropped again load again);
        quarantined records stay (replay re-maps them) but lose their row key (made the old way).
        With ``truncate_target`` the rows of its target table are deleted too. The change feed is
        left as it is. Returns what there was."""
        if not self._schema_ready:
            self.ensure_schema()
        counts = self.reset_counts(dataset)
        from syncd.targets.snapshot import missing_table  # snapshot imports this module

        t = self.tables
        missing = missing_table(sa.MetaData(), self.prefix)
        name = dataset.name
        try:
            with self._writes.begin() as conn:
                for table in (t.row_state, t.watermarks, t.key_defs):
                    conn.execute(sa.delete(table).where(table.c.dataset == name))
                q = t.quarantine
                conn.execute(sa.update(q).where(q.c.dataset == name).values(row_key=None))
                for table in (missing, _files_table(self.prefix)):  # created on their first use
                    if sa.inspect(conn).has_table(table.name):
                        conn.execute(sa.delete(table).where(table.c.dataset == name))
                if truncate_target and counts.target_rows is not None:
                    conn.execute(sa.delete(sa.table(dataset.target.table)))
        except sa.exc.SQLAlchemyError as exc:
            raise self._fail(f"resetting dataset {name}", exc) from exc
        log.warning(
            "dataset.reset",
            dataset=name,
            row_keys=counts.row_keys,
            watermark=counts.watermark,
            target_table=dataset.target.table,
            target_rows_deleted=counts.target_rows if truncate_target else 0,
            files_forgotten=counts.files,
        )
        return counts

    # ------------------------------------------------------------------ reads for operators and apps

    def _rows(self, query: sa.Select[Any], doing: str) -> list[dict[str, Any]]:
        try:
            with self.engine.connect() as conn:
                return [dict(r) for r in conn.execute(query).mappings()]
        except sa.exc.SQLAlchemyError as exc:
            raise self._fail(doing, exc) from exc

    def quote(self, name: str) -> str:
        """``name`` as a statement printed for the operator must write it in this database: quoted
        the way syncd's own statements quote it (only when needed: ``ResidentInfo`` and reserved
        words are, a lower-case name stays as it is)."""
        return str(self.engine.dialect.identifier_preparer.quote(name))

    def same_table(self, a: str, b: str) -> bool:
        """Whether table names ``a`` and ``b`` name the same table in the target database: equal,
        or differing in letter case only where the database compares table names without regard
        to it (SQLite always; MariaDB/MySQL when ``lower_case_table_names`` is not 0). PostgreSQL
        and the others: exactly (syncd quotes its table names)."""
        if a == b:
            return True
        if a.lower() != b.lower():
            return False
        if self._names_fold is None:
            self._names_fold = self._table_names_fold()
        return self._names_fold

    def _table_names_fold(self) -> bool:
        name = self.engine.dialect.name
        if name == "sqlite":
            return True
        if name not in MYSQL_NAMES:
            return False
        try:
            with self.engine.connect() as conn:
                setting = conn.execute(sa.text("SELECT @@lower_case_table_names")).scalar()
        except sa.exc.SQLAlchemyError as exc:
            raise self._fail("reading lower_case_table_names", exc) from exc
        return str(setting) != "0"

    def has_table(self, name: str) -> bool:
        """Whether table ``name`` exists in the target database."""
        try:
            with self.engine.connect() as conn:
                return bool(sa.inspect(conn).has_table(name))
        except sa.exc.SQLAlchemyError as exc:
            raise self._fail(f"looking for table {name}", exc) from exc

    def table_rows(self, name: str) -> int | None:
        """How many rows table ``name`` of the target database holds; None when it does not exist."""
        try:
            with self.engine.connect() as conn:
                return _table_rows(conn, name)
        except sa.exc.SQLAlchemyError as exc:
            raise self._fail(f"counting the rows of table {name}", exc) from exc

    def row_state_keys(self, dataset: str) -> int:
        """How many keys ``row_state`` holds for ``dataset`` (one per live row); 0 also when the
        table does not exist yet (a plan before the first run writes nothing)."""
        rs = self.tables.row_state
        query = sa.select(sa.func.count()).select_from(rs).where(rs.c.dataset == dataset)
        try:
            with self.engine.connect() as conn:
                if not self._schema_ready and not sa.inspect(conn).has_table(rs.name):
                    return 0
                return int(conn.execute(query).scalar() or 0)
        except sa.exc.SQLAlchemyError as exc:
            raise self._fail(f"counting the row state of dataset {dataset}", exc) from exc

    def has_row_state(self, dataset: str) -> bool:
        """Whether ``row_state`` holds any key of ``dataset`` (a first load has none)."""
        rs = self.tables.row_state
        query = sa.select(rs.c.row_key).where(rs.c.dataset == dataset).limit(1)
        try:
            with self.engine.connect() as conn:
                return conn.execute(query).first() is not None
        except sa.exc.SQLAlchemyError as exc:
            raise self._fail(f"reading the row state of dataset {dataset}", exc) from exc

    def run_times(self, *, timeout: timedelta, now: datetime | None = None) -> dict[str, RunTimes]:
        """The latest runs of every dataset (any node), in one query cancelled after ``timeout``
        where the database can (:mod:`syncd.targets.history`); runs stamped after ``now`` (+ a
        minute) only in :attr:`RunTimes.future`. A dataset that never ended a run is missing."""
        moment = datetime.now(UTC) if now is None else now
        limit = timeout.total_seconds()
        try:
            with self.engine.connect() as conn, statement_timeout(conn, timeout):
                return read_run_times(conn, self.tables.runs, moment)
        except sa.exc.SQLAlchemyError as exc:
            runs = self.tables.runs.name
            doing = f"reading the latest runs of every dataset from {runs} (limit {limit:g} s)"
            raise self._fail(doing, exc) from exc

    def last_started(self, dataset: str) -> datetime | None:
        """When the dataset's latest run that ended (success, failed or refused: not interrupted,
        abandoned or still running) started, in UTC; None when it never ran. On any node. A run
        stamped after now (+ a minute: a clock that was ahead) is not counted."""
        runs = self.tables.runs
        bound = datetime.now(UTC) + FUTURE_TOLERANCE
        # newest first through the (dataset, started_at) index, stopping at the first ended run: the
        # runs of years stay in the table
        query = (
            sa.select(runs.c.started_at)
            .where(
                runs.c.dataset == dataset,
                runs.c.status.in_(("success", "failed", "refused")),
                runs.c.started_at <= bound,
            )
            .order_by(runs.c.started_at.desc())
            .limit(1)
        )
        try:
            with self.engine.connect() as conn:
                value: datetime | None = conn.execute(query).scalar()
        except sa.exc.SQLAlchemyError as exc:
            raise self._fail(f"reading the runs of dataset {dataset}", exc) from exc
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)

    def last_runs(self, dataset: str | None = None, limit: int = 20) -> list[dict[str, Any]]:
        """The latest runs (of one dataset, or of all), newest first."""
        runs = self.tables.runs
        query = sa.select(runs).order_by(runs.c.started_at.desc(), runs.c.run_id.desc()).limit(limit)
        if dataset is not None:
            query = query.where(runs.c.dataset == dataset)
        return self._rows(query, "reading the runs")

    def changes(
        self,
        dataset: str,
        since: datetime | None = None,
        limit: int = 1000,
        *,
        after_id: int | None = None,
        newest_first: bool = False,
    ) -> list[dict[str, Any]]:
        """Change entries of ``dataset`` in feed order (by id; ``newest_first`` reverses it), from
        ``since`` (changed_at, inclusive) and/or after entry ``after_id``. JSON columns are decoded."""
        ch = self.tables.changes
        order = ch.c.id.desc() if newest_first else ch.c.id
        query = sa.select(ch).where(ch.c.dataset == dataset).order_by(order).limit(limit)
        if since is not None:
            query = query.where(ch.c.changed_at >= since)
        if after_id is not None:
            query = query.where(ch.c.id > after_id)
        rows = self._rows(query, f"reading the changes of dataset {dataset}")
        for row in rows:
            for name in ("changed_columns", "old_values", "new_values"):
                row[name] = _decode(row[name])
        return rows

    def quarantined_by_hash(self, dataset: str, hash_prefix: str, limit: int = 5) -> list[dict[str, Any]]:
        """Quarantined records of ``dataset`` whose raw hash starts with ``hash_prefix`` (lowercase
        hex); ``raw`` is decoded."""
        q = self.tables.quarantine
        query = sa.select(q).where(q.c.dataset == dataset, q.c.raw_hash.like(hash_prefix + "%")).limit(limit)
        rows = self._rows(query, f"reading the quarantine of dataset {dataset}")
        for row in rows:
            row["raw"] = _decode(row["raw"])
        return rows

    def quarantined(self, dataset: str, limit: int = 100) -> list[dict[str, Any]]:
        """Quarantined records of ``dataset``, most recently seen first; ``raw`` is decoded."""
        q = self.tables.quarantine
        query = sa.select(q).where(q.c.dataset == dataset)
        query = query.order_by(q.c.last_seen.desc(), q.c.raw_hash).limit(limit)
        rows = self._rows(query, f"reading the quarantine of dataset {dataset}")
        for row in rows:
            row["raw"] = _decode(row["raw"])
        return rows


def _files_table(prefix: str) -> sa.Table:
    """The file source's ledger (``{prefix}files``, :mod:`syncd.sources.files.ledger`)."""
    from syncd.sources.files.ledger import files_table  # the file source builds on this package

    return files_table(sa.MetaData(), prefix)


def _table_rows(conn: sa.Connection, name: str) -> int | None:
    """Rows of table ``name`` (quoted as syncd creates it); None when it does not exist."""
    if not sa.inspect(conn).has_table(name):
        return None
    return int(conn.execute(sa.select(sa.func.count()).select_from(sa.table(name))).scalar() or 0)
