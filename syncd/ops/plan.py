"""``syncd plan``: what a run of a dataset WOULD do, without writing anything.

The plan reads exactly what a run would read (same source, same window from the stored
watermark, lookback and safety lag), maps every record with the compiled mapping, and compares
the rows with the stored row hashes (:mod:`syncd.changes`) — the same classification the batch
writer makes — in batches of the dataset's batch size, with one read-only query per chunk of
keys. Update candidates are compared column by column with the current target row, as the
writer does, so a plan's "update" is a real change.

A full-snapshot dataset (``target.snapshot_delete``) also gets the deletes a sync would infer:
the keys the read saw go into a temporary table of the plan's own session, as a sync's do, and
the stored keys not among them are counted against the guard and the ``missing_runs`` streaks
(:meth:`~syncd.targets.snapshot.SnapshotDeletes.preview`), only read.

Nothing is written: no run record, no watermark, no table is created (a missing state or target
table simply means every row would be inserted; the seen-key table is temporary, visible to no
other session, and dropped when the plan ends). Memory grows only with the number of keys the
plan would change (to count a key seen twice in one pull once), never with unchanged rows.
A dataset whose key definition changed since its rows were synced is reported as refused, as a
run would be (:mod:`syncd.targets.keydef`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

import sqlalchemy as sa

from syncd.changes import DELETED_HASH, changed_indexes, classify, key_text, normaliser_for, row_hash
from syncd.config.model import AppConfig, DatasetConfig, ErrorLimit
from syncd.errors import AuthorizationError, RecordError, TargetError
from syncd.mapping import CompiledMapping, compile_mapping
from syncd.mapping.records import RecordSorter, delete_flag
from syncd.runner import check_authorization, resume_from, unsure_snapshot
from syncd.sources import Source, Window, build_source
from syncd.targets import StateStore, state_tables, target_table
from syncd.targets.dialects import chunked, param_budget
from syncd.targets.engine import describe_url
from syncd.targets.keydef import KeyDefinitionChanged, check_key_definition
from syncd.targets.schema import text_key_columns
from syncd.targets.snapshot import SnapshotDeletes, SnapshotPreview, missing_table
from syncd.targets.verify import KeyColumn, column_limits, key_columns
from syncd.targets.writer import failure_reason

__all__ = ["Category", "PlanResult", "plan_dataset", "plan_window"]

Row = tuple[Any, ...]
CATEGORIES = ("insert", "update", "delete", "unchanged", "quarantine")


@dataclass
class Category:
    """How many records fall into one category, and the first few of them."""

    count: int = 0
    samples: list[dict[str, Any]] = field(default_factory=list)

    def add(self, sample: dict[str, Any], limit: int) -> None:
        self.count += 1
        if len(self.samples) < limit:
            self.samples.append(sample)


@dataclass
class PlanResult:
    """The outcome of :func:`plan_dataset`."""

    dataset: str
    window: Window
    watermark: str | None
    fetched: int = 0
    reported_total: int | None = None
    categories: dict[str, Category] = field(default_factory=lambda: {c: Category() for c in CATEGORIES})
    refused: str | None = None
    warnings: list[str] = field(default_factory=list)
    snapshot: SnapshotPreview | None = None  # a snapshot dataset's inferred deletes (in "delete" too)
    missing_runs: int = 1  # target.snapshot_delete.missing_runs


@contextmanager
def _on_target(engine: sa.Engine, dataset: DatasetConfig, doing: str) -> Iterator[None]:
    """A database error of the block as a TargetError saying what the plan was doing (the CLI
    reports SyncdErrors; a traceback is no answer for an operator)."""
    try:
        yield
    except sa.exc.SQLAlchemyError as exc:
        where = describe_url(engine.url)
        raise TargetError(
            f"dataset {dataset.name}: {doing} in {where} failed: {failure_reason(exc)[:500]}"
        ) from exc


def _read_watermark(conn: sa.Connection, marks: sa.Table, dataset: str, exists: bool) -> str | None:
    if not exists:
        return None
    value = conn.execute(sa.select(marks.c.value).where(marks.c.dataset == dataset)).scalar()
    return None if value is None else str(value)


def plan_window(app: AppConfig, dataset: DatasetConfig, watermark: str | None, now: datetime) -> Window:
    """The window a run starting at ``now`` would read (the runner's rule, DESIGN §4.3)."""
    inc = getattr(dataset.source, "incremental", None)
    if inc is None:
        return Window(since=None, until=None)
    started = now.astimezone(ZoneInfo(app.timezone)).replace(tzinfo=None, microsecond=0)
    lag = inc.safety_lag if inc.safety_lag is not None else app.defaults.safety_lag
    return Window(since=resume_from(app, inc, watermark), until=started - lag)


class _Planner:
    """Classifies batches of mapped rows against the stored state, read-only."""

    def __init__(
        self, engine: sa.Engine, prefix: str, mapping: CompiledMapping, result: PlanResult, *,
        dataset: DatasetConfig, samples: int,
    ) -> None:
        self.engine = engine
        self.prefix = prefix
        self.ds = dataset
        self.mapping = mapping
        self.result = result
        self.samples = samples
        self.tables = state_tables(sa.MetaData(), prefix)
        self.target = target_table(sa.MetaData(), dataset, mapping)
        inspector = sa.inspect(engine)
        self.has_state = inspector.has_table(self.tables.row_state.name)
        self.has_target = inspector.has_table(self.target.name)
        self.columns = mapping.columns
        self.norms = tuple(normaliser_for(mapping.specs[c]) for c in self.columns)
        self.key_norms = tuple(self.norms[i] for i in mapping.key_indexes)
        soft = dataset.target.logical_delete
        self.soft = soft.soft_column if soft is not None and soft.mode == "soft" else None
        self.chunk = max(1, param_budget(engine) // max(1, len(mapping.key_indexes)) - 1)
        self.planned: dict[str, str] = {}  # row key → hash this plan would store (changed keys only)
        key_cols = [self.target.c[self.columns[i]] for i in mapping.key_indexes]
        self.key_expr: Any = key_cols[0] if len(key_cols) == 1 else sa.tuple_(*key_cols)

    def key_warnings(self) -> list[str]:
        """The key columns (target table, row_state, and snapshot_missing where ``missing_runs`` > 1
        uses it) whose keys the database would not tell apart exactly — MariaDB/MySQL tables made by
        an earlier version, a CHAR key column — with their fixes (as a sync warns of them)."""
        found: list[KeyColumn] = []
        if self.has_target:
            found += key_columns(self.engine, self.target.name, text_key_columns(self.ds)).values()
        own = [self.tables.row_state.name] if self.has_state else []
        snapshot = self.ds.target.snapshot_delete
        if snapshot is not None and snapshot.enabled and snapshot.missing_runs > 1:
            streaks = missing_table(sa.MetaData(), self.prefix).name
            if sa.inspect(self.engine).has_table(streaks):
                own.append(streaks)
        for name in own:
            found += key_columns(self.engine, name, ["row_key"], whole_table=True).values()
        return [key.describe() for key in found if key.problem is not None]

    def _add(self, category: str, sample: dict[str, Any]) -> None:
        self.result.categories[category].add(sample, self.samples)

    def key_of(self, row: Row) -> tuple[str, Row] | None:
        """(row key text, normalised key values) of a mapped row; None when a key value is null."""
        return self.key_of_values(tuple(row[i] for i in self.mapping.key_indexes))

    def key_of_values(self, values: Row) -> tuple[str, Row] | None:
        kv = tuple(n(v) for n, v in zip(self.key_norms, values, strict=True))
        return None if any(v is None for v in kv) else (key_text(kv), kv)

    def stored(self, conn: sa.Connection, keys: list[str]) -> dict[str, str]:
        found = {k: self.planned[k] for k in keys if k in self.planned}
        rest = [k for k in keys if k not in found]
        if not self.has_state or not rest:
            return found
        rs = self.tables.row_state
        query = sa.select(rs.c.row_key, rs.c.row_hash).where(rs.c.dataset == self.ds.name)
        for part in chunked(rest, self.chunk):
            found.update(dict(conn.execute(query.where(rs.c.row_key.in_(part))).tuples().all()))
        return found

    def current(self, conn: sa.Connection, keys: list[Row]) -> dict[str, Row]:
        if not self.has_target or not keys:
            return {}
        out_cols = [self.target.c[c] for c in self.columns]
        if self.soft:
            out_cols.append(self.target.c[self.soft])
        rows: dict[str, Row] = {}
        for part in chunked(keys, self.chunk):
            params = [k[0] if len(k) == 1 else k for k in part]
            for db_row in conn.execute(sa.select(*out_cols).where(self.key_expr.in_(params))):
                values = tuple(n(v) for n, v in zip(self.norms, db_row, strict=False))
                if self.soft:
                    values = (*values, bool(db_row[-1]))
                found = self.key_of(values[: len(self.columns)])
                if found is not None:
                    rows[found[0]] = values
        return rows

    def batch(self, rows: list[Row], deletes: list[Row]) -> list[str]:
        """Classify a batch; returns the row keys it stands for (of its rows and its deletes)."""
        by_key: dict[str, tuple[Row, Row]] = {}
        for row in rows:
            found = self.key_of(row)
            if found is None:
                self._add("quarantine", {"reason": "key column is empty (null)", "record_key": None})
                continue
            if found[0] in by_key:
                self._add("unchanged", {"key": found[0], "note": "superseded in the same batch"})
            by_key[found[0]] = (row, found[1])
        gone: dict[str, Row] = {}
        for kv in deletes:
            found = self.key_of_values(kv)
            if found is None or found[0] in gone:
                continue
            by_key.pop(found[0], None)
            gone[found[0]] = found[1]
        hashes = {k: row_hash(r) for k, (r, _) in by_key.items()}
        doing = f"comparing a batch with {self.tables.row_state.name} and {self.target.name}"
        with _on_target(self.engine, self.ds, doing), self.engine.connect() as conn:
            stored = self.stored(conn, [*hashes, *gone])
            verdict = classify(hashes, gone, stored)
            wanted = [by_key[k][1] for k in verdict.update_candidates] + [gone[k] for k in verdict.deletes]
            current = self.current(conn, wanted)
        self._classified(by_key, hashes, verdict.inserts, verdict.update_candidates, current)
        for key in verdict.unchanged:
            self._add("unchanged", {"key": key})
        for key in verdict.ignored_deletes:
            self._add("unchanged", {"key": key, "note": "delete of a row that is not stored"})
        for key in verdict.deletes:
            self.planned[key] = DELETED_HASH
            self._add("delete", {"key": key, "mode": "soft" if self.soft else "hard"})
        return [*by_key, *gone]

    def snapshot_deletes(self, preview: SnapshotPreview) -> None:
        """The deletes a sync would infer from a complete snapshot read (none when refused)."""
        category = self.result.categories["delete"]
        category.count += preview.due
        mode = "soft" if self.soft else "hard"
        for key in preview.keys[: max(0, self.samples - len(category.samples))]:
            category.samples.append({"key": key, "mode": mode, "why": "gone upstream (snapshot_delete)"})

    def _classified(self, by_key: dict[str, tuple[Row, Row]], hashes: dict[str, str], inserts: list[str],
                    candidates: list[str], current: dict[str, Row]) -> None:
        for key in inserts:
            self.planned[key] = hashes[key]
            self._add("insert", {"key": key, "row": dict(zip(self.columns, by_key[key][0], strict=True))})
        for key in candidates:
            self.planned[key] = hashes[key]
            new = tuple(n(v) for n, v in zip(self.norms, by_key[key][0], strict=True))
            if self.soft:
                new = (*new, False)
            old = current.get(key)
            if old is None:
                self._add("insert", {"key": key, "row": dict(zip(self.columns, by_key[key][0], strict=True))})
                continue
            positions = changed_indexes(old, new)
            if not positions:
                self._add("unchanged", {"key": key})
                continue
            names = (*self.columns, *((self.soft,) if self.soft else ()))
            change = {names[i]: {"old": old[i], "new": new[i]} for i in positions}
            self._add("update", {"key": key, "changes": change})


def plan_dataset(
    app: AppConfig,
    dataset: DatasetConfig,
    engine: sa.Engine,
    *,
    now: datetime | None = None,
    samples: int = 5,
    source_factory: Callable[[AppConfig, DatasetConfig], Source] = build_source,
) -> PlanResult:
    """Pull, map and classify ``dataset`` as a run would, writing nothing (see the module docstring)."""
    now = now or datetime.now(UTC)
    prefix = app.target.table_prefix
    marks = state_tables(sa.MetaData(), prefix).watermarks
    with _on_target(engine, dataset, f"reading the watermark from {marks.name}"), engine.connect() as conn:
        watermark = _read_watermark(conn, marks, dataset.name, sa.inspect(conn).has_table(marks.name))
    window = plan_window(app, dataset, watermark, now)
    result = PlanResult(dataset=dataset.name, window=window, watermark=watermark)
    local_today = now.astimezone(ZoneInfo(app.timezone)).date()
    try:
        days = check_authorization(dataset, local_today)
    except AuthorizationError as exc:
        result.refused = str(exc)
        return result
    try:  # a plan writes nothing: a missing definition is recorded by the next run, not here
        check_key_definition(StateStore(engine, prefix), dataset, app.code_tables, record=False)
    except KeyDefinitionChanged as exc:
        result.refused = str(exc)
        return result
    if days <= dataset.authorization.warn_days:
        result.warnings.append(f"authorization {dataset.authorization.approval_code} expires in {days} days")
    with _on_target(engine, dataset, "reading the columns of its table"):
        limits = column_limits(engine, dataset)  # as a sync maps: a value too big is quarantined
    mapping = compile_mapping(dataset, app.code_tables, today=local_today, limits=limits)
    with _on_target(engine, dataset, "reading its tables and their key columns"):
        planner = _Planner(engine, prefix, mapping, result, dataset=dataset, samples=samples)
        result.warnings.extend(planner.key_warnings())
    with _on_target(engine, dataset, "preparing the snapshot's seen-key table"):
        snapshot = _snapshot(app, planner, window)
    source: Source | None = None
    try:
        source = source_factory(app, dataset)
        _read(source, window, planner, snapshot, dataset.batch_size or app.defaults.batch_size)
        result.warnings.extend(source.stats.warnings)
        _check_error_limit(dataset.error_limit or app.defaults.error_limit, result)
        if not source.stats.complete:
            result.warnings.append("the source stopped before the end of the data: the plan is partial")
        elif snapshot is not None:
            _snapshot_deletes(snapshot, source, planner)
    finally:
        if snapshot is not None:
            snapshot.close()
        if source is not None:
            source.close()
    return result


def _read(
    source: Source, window: Window, planner: _Planner, snapshot: SnapshotDeletes | None, batch_size: int
) -> None:
    """Read the window, map each record and classify the rows a batch at a time."""
    mapping, result, samples = planner.mapping, planner.result, planner.samples
    is_deleted = delete_flag(planner.ds)
    upstream_key = RecordSorter(planner.ds, mapping).record_key  # as the quarantine stores it
    rows: list[Row] = []
    deletes: list[Row] = []
    for page in source.read(window):
        if page.reported_total is not None and result.reported_total is None:
            result.reported_total = page.reported_total
        for record in page.records:
            result.fetched += 1
            deleted = is_deleted is not None and is_deleted(record)
            try:
                # a deletion maps its key alone, as a sync does (RecordSorter.sort): a tombstone
                row = mapping.key_record(record) if deleted else mapping(record)
            except RecordError as exc:
                key = upstream_key(mapping.redact_raw(record))  # masked keys stay masked
                result.categories["quarantine"].add({"reason": str(exc), "record_key": key}, samples)
                if snapshot is not None:  # its stored row stands, as in a sync (runner._seen_keys)
                    snapshot.mark_seen(_quarantined_key(mapping, planner, record, key))
                continue
            if deleted:
                deletes.append(row)
            else:
                rows.append(row)
        if len(rows) + len(deletes) >= batch_size:
            seen = planner.batch(rows, deletes)
            if snapshot is not None:
                snapshot.mark_seen(seen)
            rows, deletes = [], []
    seen = planner.batch(rows, deletes)
    if snapshot is not None:
        snapshot.mark_seen(seen)


def _snapshot(app: AppConfig, planner: _Planner, window: Window) -> SnapshotDeletes | None:
    """The seen-key tracking of a snapshot dataset with stored rows (its table temporary, nothing
    else created), or None."""
    dataset = planner.ds
    cfg = dataset.target.snapshot_delete
    if cfg is None or not cfg.enabled or window.since is not None or not planner.has_state:
        return None
    planner.result.missing_runs = cfg.missing_runs
    store = StateStore(planner.engine, app.target.table_prefix)
    store.read_key_collation()  # the seen-key table must compare with row_state's keys (MariaDB)
    tracker = SnapshotDeletes(store, dataset, planner.mapping, "plan", cfg)
    tracker.prepare(dry_run=True)
    return tracker


def _quarantined_key(
    mapping: CompiledMapping, planner: _Planner, record: dict[str, Any], upstream: str | None
) -> list[str]:
    """The row key a quarantined record stands for: its key columns mapped, else upstream's key."""
    try:
        found = planner.key_of_values(mapping.key_record(record))
    except RecordError:
        found = None
    key = upstream if found is None else found[0]
    return [] if key is None else [key]


def _snapshot_deletes(snapshot: SnapshotDeletes, source: Source, planner: _Planner) -> None:
    """The deletes a sync would infer after this complete read, or the warning why it would not."""
    result = planner.result
    if not getattr(source, "snapshot_read", True):
        return  # a file source that found no file this time: a sync infers nothing either
    unsure = unsure_snapshot(source.stats)
    if unsure is not None:
        again = " (a sync reads it again and deletes only after a steady second read)" \
            if source.stats.total_changed else ""
        result.warnings.append(f"snapshot deletes are not planned: {unsure}{again}")
        return
    preview = snapshot.preview(planner.samples)
    result.snapshot = preview
    if preview.refused is not None:
        result.warnings.append(f"a sync would fail: {preview.refused}")
        return
    planner.snapshot_deletes(preview)


def _check_error_limit(limit: ErrorLimit, result: PlanResult) -> None:
    """A warning when the sync would fail on the error limit (the runner's rule at the run's end)."""
    held, read = result.categories["quarantine"].count, result.fetched
    if held > limit.count or (read and held / read > limit.ratio):
        result.warnings.append(
            f"a sync would fail: {held} of {read} records would be quarantined, over the error limit "
            f"(error_limit.count {limit.count}, error_limit.ratio {limit.ratio:.1%}); the batches "
            "written before it is reached would stay. Fix the mapping or the upstream data first"
        )

