"""The source contract: every source kind, driven by the real runner, keeps the same promises.

Kinds (one adapter class each, same interface): ``http`` (the simulated gateway on loopback),
``sql`` with a SQLite, PostgreSQL or MariaDB front-end database (前置库), and ``file`` drops
in CSV (GB18030, UTF-8 with BOM), XLSX and JSONL. The target is always a fresh SQLite file.

Every case runs unchanged for every kind:

* batches and paging — more records than a page and a batch land exactly once;
* incremental resume — the second run starts from the watermark (http, sql) or takes only
  the new file (file kinds);
* crash and resume — a run stopped between batches, then re-run: target equals upstream and
  the change log holds one insert per key;
* empty source — a run succeeds with 0 rows and deletes nothing;
* rows changing while being read — neither lost nor duplicated after the next run;
* rare characters — 𠮷 (outside the BMP) and full-width digits survive end to end.

The dataset is a small mapping written as YAML: id, name, amount (decimal), updated_at
(datetime), loaded with :func:`syncd.config.load_config` like an operator's config.
"""

from __future__ import annotations

import csv
import gc
import json
import os
import sys
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa
from openpyxl import Workbook

from syncd.config import load_config
from syncd.config.model import AppConfig, DatasetConfig
from syncd.gateway import Gateway, ResidentStore
from syncd.runner import WATERMARK_FORMAT, RunResult, run_dataset
from syncd.sources import Page, ReadStats, Source, Window, build_source
from syncd.targets import StateStore, create_target_engine
from tests.e2e import SECRET, SECRET_ENV

ZONE = ZoneInfo("Asia/Shanghai")
T0 = datetime(2026, 3, 1, 8, 0, 0)  # naive local time of the first seeded row
TIME_FORMAT = "%Y-%m-%d %H:%M:%S"
DATASET = "people"
TABLE = "people_local"


@dataclass(frozen=True, slots=True)
class Rec:
    """One upstream row, as the target should end up holding it."""

    id: str
    name: str
    amount: Decimal
    updated: datetime


def recs(n: int, *, start: int = 0, when: datetime = T0) -> list[Rec]:
    """``n`` rows p{start:05d}…, one second apart from ``when``, with two-decimal amounts."""
    return [
        Rec(f"p{i:05d}", f"名{i}", Decimal(f"{i}.{i % 100:02d}"), when + timedelta(seconds=i - start))
        for i in range(start, start + n)
    ]


def at(local: datetime) -> datetime:
    """A naive Asia/Shanghai time as the aware ``now`` the runner expects."""
    return local.replace(tzinfo=ZONE)


# --------------------------------------------------------------------------- adapters


class Upstream(ABC):
    """One source kind: seeds and changes its upstream, writes the config that reads it."""

    kind: str
    incremental: bool  # True: reads a window from the watermark; False: takes new files
    time_field: str  # the upstream name of the update time

    def __init__(self, root: Path) -> None:
        self.root = root
        self.model: dict[str, Rec] = {}

    # -- the contract interface

    def seed(self, records: Iterable[Rec]) -> None:
        """Add rows upstream (a file kind drops them as one new file, even when empty)."""
        batch = list(records)
        self.model.update({r.id: r for r in batch})
        self._write(batch)

    def update(self, ids: Iterable[str], *, when: datetime, **fields: Any) -> None:
        """Change existing rows upstream, stamping their update time ``when``."""
        batch = [replace(self.model[i], updated=when, **fields) for i in ids]
        self.model.update({r.id: r for r in batch})
        self._write(batch)

    def expected(self) -> dict[str, tuple[str, Decimal, datetime]]:
        return {r.id: (r.name, r.amount, r.updated) for r in self.model.values()}

    def config(self, *, page_size: int, batch_size: int, lookback: str = "0s") -> Path:
        """Write syncd.yaml and datasets/people.yaml under the adapter's root; return syncd.yaml."""
        (self.root / "datasets").mkdir(parents=True, exist_ok=True)
        fields = ", ".join(["id", "name", "amount", self.time_field])
        dataset = f"""
name: {DATASET}
source:
{self.source_yaml(page_size)}
authorization:
  approval_code: 测试〔2026〕1号
  valid_from: 2020-01-01
  valid_until: 2099-12-31
  fields: [{fields}]
target:
  table: {TABLE}
  key: [pid]
  create: true
columns:
  pid: {{source: id, type: string, length: 32, nullable: false}}
  name: {{source: name, type: string, length: 64}}
  amount: {{source: amount, type: decimal, precision: 14, scale: 2}}
  updated_at: {{source: {self.time_field}, type: datetime}}
"""
        (self.root / "datasets" / f"{DATASET}.yaml").write_text(dataset, encoding="utf-8")
        main = f"""
timezone: Asia/Shanghai
target:
  url: sqlite:///{self.root / "target.db"}
connections:
{self.connection_yaml() or "  {}"}
defaults:
  batch_size: {batch_size}
  lookback: {lookback}
  safety_lag: 0s
"""
        path = self.root / "syncd.yaml"
        path.write_text(main, encoding="utf-8")
        return path

    def close(self) -> None:  # noqa: B027 - a drop folder holds nothing to release
        """Release what the adapter started."""

    # -- per kind

    @abstractmethod
    def _write(self, batch: list[Rec]) -> None: ...

    @abstractmethod
    def source_yaml(self, page_size: int) -> str: ...

    def connection_yaml(self) -> str:
        return ""


class HttpUpstream(Upstream):
    kind = "http"
    incremental = True
    time_field = "updateTime"

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.gateway = Gateway(ResidentStore(), app_key="demo-app", app_secret=SECRET)
        self.gateway.start()

    def _write(self, batch: list[Rec]) -> None:
        for r in batch:  # amounts as text, as many gateways send them
            self.gateway.store.put(
                {
                    "id": r.id,
                    "name": r.name,
                    "amount": str(r.amount),
                    "updateTime": r.updated.strftime(TIME_FORMAT),
                }
            )

    def connection_yaml(self) -> str:
        return f"""  gw:
    type: http
    base_url: {self.gateway.url}
    auth: {{type: token, url: /auth/token, app_key: demo-app, app_secret: "${{{SECRET_ENV}}}"}}
    envelope:
      success_codes: ["0"]
      auth_expired_codes: ["40101"]
      records_path: data.list
      total_path: data.total
    timeout: {{connect: 2s, read: 5s}}
    retry: {{attempts: 3, backoff_initial: 10ms, backoff_max: 100ms, deadline: 10s}}"""

    def source_yaml(self, page_size: int) -> str:
        return f"""  type: http
  connection: gw
  path: /api/residents/query
  pagination: {{type: page_number, page_param: pageNo, size_param: pageSize, page_size: {page_size}}}
  incremental:
    field: updateTime
    start_param: updateTimeStart
    end_param: updateTimeEnd"""

    def close(self) -> None:
        self.gateway.stop()


class SqlUpstream(Upstream):
    kind = "sql"
    incremental = True
    time_field = "upd"

    def __init__(self, root: Path, url: str) -> None:
        super().__init__(root)
        self.url = url
        self.engine = sa.create_engine(url)
        self.sqlite = self.engine.dialect.name == "sqlite"
        meta = sa.MetaData()
        self.table = sa.Table(
            "people",
            meta,
            sa.Column("id", sa.String(32), primary_key=True),
            sa.Column("name", sa.String(64)),
            # SQLite has no exact decimal: it keeps amounts as REAL (the source reads floats)
            sa.Column("amount", sa.Float if self.sqlite else sa.Numeric(14, 2)),
            sa.Column("upd", sa.DateTime),
            mysql_charset="utf8mb4",
            mysql_collate="utf8mb4_bin",
        )
        meta.create_all(self.engine)

    def _write(self, batch: list[Rec]) -> None:
        if not batch:
            return
        rows = [
            {
                "id": r.id,
                "name": r.name,
                "amount": float(r.amount) if self.sqlite else r.amount,
                "upd": r.updated,
            }
            for r in batch
        ]
        with self.engine.begin() as conn:  # one upstream transaction: replace the rows
            conn.execute(self.table.delete().where(self.table.c.id.in_([r.id for r in batch])))
            conn.execute(self.table.insert(), rows)

    def end_leaked_sessions(self) -> int:
        """End the front-end sessions other than ours (the read an interrupted run left open)."""
        name = self.engine.dialect.name
        if name == "sqlite":
            return 0
        with self.engine.connect() as conn:
            if name == "postgresql":
                query = (
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND pid <> pg_backend_pid()"
                )
                return len(conn.execute(sa.text(query)).all())
            ids = (
                conn.execute(
                    sa.text(
                        "SELECT id FROM information_schema.processlist "
                        "WHERE db = DATABASE() AND id <> CONNECTION_ID()"
                    )
                )
                .scalars()
                .all()
            )
            for session in ids:
                conn.execute(sa.text(f"KILL {int(session)}"))
            return len(ids)

    def connection_yaml(self) -> str:
        return f'  qzk: {{type: sql, url: "{self.url}"}}'

    def source_yaml(self, page_size: int) -> str:
        return f"""  type: sql
  connection: qzk
  table: people
  key: [id]
  page_size: {page_size}
  incremental: {{field: upd}}"""

    def close(self) -> None:
        self.end_leaked_sessions()  # so the fixture can drop the database even after a failure
        self.engine.dispose()


class FileUpstream(Upstream):
    """A drop folder (落地目录): every seed/update drops one new complete file (with its marker)."""

    incremental = False
    time_field = "updated"
    suffix = ""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.drop = root / "drop"
        self.drop.mkdir()
        self.dropped: list[Path] = []

    def _write(self, batch: list[Rec]) -> None:
        path = self.drop / f"{len(self.dropped) + 1:03d}{self.suffix}"
        self.write_file(path, batch)
        path.with_name(path.name + ".ok").touch()
        self.dropped.append(path)

    @abstractmethod
    def write_file(self, path: Path, batch: list[Rec]) -> None: ...

    def source_yaml(self, page_size: int) -> str:
        return f"""  type: file
  path: {self.drop}
  pattern: "*{self.suffix}"
  page_size: {page_size}"""


class CsvUpstream(FileUpstream):
    suffix = ".csv"

    def __init__(self, root: Path, encoding: str) -> None:
        super().__init__(root)
        self.encoding = encoding
        self.kind = f"csv-{encoding}"

    def write_file(self, path: Path, batch: list[Rec]) -> None:
        with path.open("w", encoding=self.encoding, newline="") as fh:
            out = csv.writer(fh)
            out.writerow(["id", "name", "amount", "updated"])
            out.writerows([r.id, r.name, str(r.amount), r.updated.strftime(TIME_FORMAT)] for r in batch)


class XlsxUpstream(FileUpstream):
    kind = "xlsx"
    suffix = ".xlsx"

    def write_file(self, path: Path, batch: list[Rec]) -> None:
        book = Workbook()
        sheet = book.active
        assert sheet is not None
        sheet.append(["id", "name", "amount", "updated"])
        for r in batch:  # numbers and date-times as real cells, as Excel keeps them
            sheet.append([r.id, r.name, float(r.amount), r.updated])
        book.save(path)


class JsonlUpstream(FileUpstream):
    kind = "jsonl"
    suffix = ".jsonl"

    def write_file(self, path: Path, batch: list[Rec]) -> None:
        lines = [
            json.dumps(
                {
                    "id": r.id,
                    "name": r.name,
                    "amount": float(r.amount),
                    "updated": r.updated.strftime(TIME_FORMAT),
                },
                ensure_ascii=False,
            )
            for r in batch
        ]
        path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")


KINDS = [
    "http",
    "sql-sqlite",
    pytest.param("sql-postgresql", marks=pytest.mark.postgres),
    pytest.param("sql-mariadb", marks=pytest.mark.mariadb),
    "csv-gb18030",
    "csv-utf-8-sig",
    "xlsx",
    "jsonl",
]


@pytest.fixture(params=KINDS)
def upstream(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Upstream]:
    kind: str = request.param
    adapter: Upstream
    if kind == "http":
        adapter = HttpUpstream(tmp_path)
    elif kind == "sql-sqlite":
        adapter = SqlUpstream(tmp_path, f"sqlite:///{tmp_path / 'front.db'}")
    elif kind == "sql-postgresql":
        adapter = SqlUpstream(tmp_path, request.getfixturevalue("pg_url"))
    elif kind == "sql-mariadb":
        adapter = SqlUpstream(tmp_path, request.getfixturevalue("mariadb_url"))
    elif kind.startswith("csv-"):
        adapter = CsvUpstream(tmp_path, kind.removeprefix("csv-"))
    elif kind == "xlsx":
        adapter = XlsxUpstream(tmp_path)
    else:
        adapter = JsonlUpstream(tmp_path)
    try:
        yield adapter
    finally:
        adapter.close()


# --------------------------------------------------------------------------- running and checking


class Syncer:
    """Loads the adapter's config and runs the dataset against its SQLite target."""

    def __init__(self, config: Path) -> None:
        self.app: AppConfig = load_config(config, env={**os.environ, SECRET_ENV: SECRET})
        self.dataset: DatasetConfig = self.app.datasets[DATASET]
        self.store = StateStore(
            create_target_engine(self.app.target.url.get_secret_value()), self.app.target.table_prefix
        )

    def run(
        self,
        now: datetime,
        *,
        should_stop: Callable[[], bool] | None = None,
        source_factory: Callable[[AppConfig, DatasetConfig], Source] = build_source,
    ) -> RunResult:
        return run_dataset(
            self.app,
            self.dataset,
            self.store,
            now=at(now),
            should_stop=should_stop,
            source_factory=source_factory,
        )

    def target(self) -> dict[str, tuple[str, Decimal, datetime]]:
        with self.store.engine.connect() as conn:
            rows = conn.execute(sa.text(f"SELECT pid, name, amount, updated_at FROM {TABLE}")).all()  # noqa: S608
        return {str(pid): (name, _decimal(amount), _datetime(upd)) for pid, name, amount, upd in rows}

    def changes(self) -> list[tuple[str, str, str | None, str | None]]:
        query = sa.text(
            "SELECT row_key, op, new_values, old_values FROM syncd_changes WHERE dataset = :d ORDER BY id"
        )
        with self.store.engine.connect() as conn:
            return [tuple(r) for r in conn.execute(query, {"d": DATASET}).all()]

    def close(self) -> None:
        self.store.engine.dispose()


def _decimal(value: Any) -> Decimal:
    return (Decimal(repr(value)) if isinstance(value, float) else Decimal(str(value))).quantize(
        Decimal("0.01")
    )


def _datetime(value: Any) -> datetime:
    return value if isinstance(value, datetime) else datetime.fromisoformat(str(value))


@pytest.fixture
def syncers() -> Iterator[list[Syncer]]:
    made: list[Syncer] = []
    yield made
    for s in made:
        s.close()


def syncer_for(upstream: Upstream, syncers: list[Syncer], **config: Any) -> Syncer:
    s = Syncer(upstream.config(**config))
    syncers.append(s)
    return s


def assert_converged(s: Syncer, upstream: Upstream) -> None:
    """Target equals upstream; one insert per key; no change entry repeated."""
    assert s.target() == upstream.expected()
    log = s.changes()
    inserts = Counter(key for key, op, _, _ in log if op == "insert")
    assert set(inserts) == set(upstream.model), "every key has its insert"
    assert max(inserts.values(), default=1) == 1, [k for k, n in inserts.items() if n > 1]
    repeated = [entry for entry, n in Counter(log).items() if n > 1]
    assert not repeated, repeated[:3]
    assert not any(op == "delete" for _, op, _, _ in log)


def wm(moment: datetime) -> str:
    return moment.strftime(WATERMARK_FORMAT)


class Hooked:
    """A source wrapper: calls ``hook`` once between page ``after`` and the next page."""

    def __init__(self, inner: Source, after: int, hook: Callable[[], None]) -> None:
        self._inner = inner
        self._after = after
        self._hook = hook
        self.fired = False

    @property
    def stats(self) -> ReadStats:
        return self._inner.stats

    @stats.setter
    def stats(self, value: ReadStats) -> None:
        self._inner.stats = value

    def read(self, window: Window) -> Iterator[Page]:
        for page in self._inner.read(window):
            yield page
            if page.number == self._after and not self.fired:
                self.fired = True
                self._hook()

    def update_time(self, record: dict[str, Any]) -> datetime | None:
        return self._inner.update_time(record)

    def close(self) -> None:
        self._inner.close()

    def __getattr__(self, name: str) -> Any:  # finish(), snapshot_read of the file source
        return getattr(self._inner, name)


# --------------------------------------------------------------------------- the contract


def test_more_records_than_a_page_and_a_batch_land_exactly_once(
    upstream: Upstream, syncers: list[Syncer]
) -> None:
    upstream.seed(recs(57))
    s = syncer_for(upstream, syncers, page_size=10, batch_size=25)
    result = s.run(T0 + timedelta(hours=1))
    assert result.ok, result.error
    c = result.counts
    assert (c.fetched, c.inserted, c.updated, c.unchanged, c.deleted) == (57, 57, 0, 0, 0)
    assert c.pages >= 6, "the source read in pages"
    assert_converged(s, upstream)
    assert len(s.changes()) == 57
    again = s.run(T0 + timedelta(hours=2))
    assert again.ok and again.counts.inserted == again.counts.updated == 0
    assert len(s.changes()) == 57, "a second run adds no change entries"


def test_the_next_run_resumes_where_the_last_one_ended(upstream: Upstream, syncers: list[Syncer]) -> None:
    upstream.seed(recs(30))
    s = syncer_for(upstream, syncers, page_size=7, batch_size=10)
    first = s.run(T0 + timedelta(hours=1))
    assert first.ok, first.error
    assert first.counts.inserted == 30
    later = T0 + timedelta(hours=1, minutes=5)
    upstream.update(["p00003", "p00017"], when=later, amount=Decimal("999.99"))
    upstream.seed(recs(2, start=100, when=later))
    second = s.run(T0 + timedelta(hours=2))
    assert second.ok, second.error
    c = second.counts
    assert (c.inserted, c.updated, c.deleted) == (2, 2, 0)
    if upstream.incremental:
        # from the watermark (the newest row of the first run, inclusive with lookback 0s) on
        assert first.watermark_after == wm(T0 + timedelta(seconds=29))
        assert (c.fetched, c.unchanged) == (5, 1), "the second run re-read from the start"
        assert second.watermark_after == wm(later + timedelta(seconds=1))  # the newest new row
    else:
        assert (c.fetched, c.unchanged) == (4, 0), "the first file was read again"
        assert isinstance(upstream, FileUpstream)
        processed = upstream.drop / "processed"
        assert sorted(p.name for p in processed.glob(f"*{upstream.suffix}")) == [
            p.name for p in upstream.dropped
        ]
    assert_converged(s, upstream)


def test_a_run_stopped_between_batches_resumes_without_loss_or_duplicates(
    upstream: Upstream, syncers: list[Syncer]
) -> None:
    upstream.seed(recs(60))
    s = syncer_for(upstream, syncers, page_size=10, batch_size=10)

    def stop_after_some_batches() -> bool:
        # by what committed, not by counting polls: a source asks too (an http one before each
        # request and retry, from its read-ahead thread)
        return len(s.target()) >= 20

    stopped = s.run(T0 + timedelta(hours=1), should_stop=stop_after_some_batches)
    assert stopped.status == "interrupted", stopped.summary()
    committed = len(s.target())
    assert 0 < committed < 60
    assert stopped.watermark_after is None, "an interrupted run does not move the watermark"
    if isinstance(upstream, FileUpstream):
        assert all(p.exists() for p in upstream.dropped), "the file stays for the next run"
    resumed = s.run(T0 + timedelta(hours=1, minutes=1))
    assert resumed.ok, resumed.error
    assert (resumed.counts.inserted, resumed.counts.unchanged) == (60 - committed, committed)
    assert_converged(s, upstream)
    assert len(s.changes()) == 60


def test_an_empty_source_is_a_successful_run_that_deletes_nothing(
    upstream: Upstream, syncers: list[Syncer]
) -> None:
    if isinstance(upstream, FileUpstream):
        upstream.seed([])  # a file with the header row only
    s = syncer_for(upstream, syncers, page_size=10, batch_size=10)
    empty = s.run(T0 + timedelta(hours=1))
    assert empty.ok, empty.error
    c = empty.counts
    assert (c.fetched, c.inserted, c.updated, c.deleted, c.quarantined) == (0, 0, 0, 0, 0)
    assert empty.watermark_after is None
    assert s.target() == {} and s.changes() == []
    upstream.seed(recs(5))
    assert s.run(T0 + timedelta(hours=2)).ok
    quiet = s.run(T0 + timedelta(hours=3))  # nothing new upstream
    assert quiet.ok, quiet.error
    assert (quiet.counts.inserted, quiet.counts.updated, quiet.counts.deleted) == (0, 0, 0)
    assert_converged(s, upstream)


def test_rows_changing_while_being_read_are_neither_lost_nor_duplicated(
    upstream: Upstream, syncers: list[Syncer]
) -> None:
    upstream.seed(recs(40))
    # the lookback covers the changes: offset-paged gateways shift rows when one moves (DESIGN §4.3)
    s = syncer_for(upstream, syncers, page_size=10, batch_size=10, lookback="10m")
    changed_at = T0 + timedelta(minutes=2)

    def change_upstream() -> None:  # p00005 was read already, p00030 not yet
        upstream.update(["p00005", "p00030"], when=changed_at, name="改名")
        upstream.seed([Rec("p09999", "新增", Decimal("1.00"), changed_at)])

    hooked: list[Hooked] = []

    def factory(app: AppConfig, dataset: DatasetConfig) -> Source:
        source = Hooked(build_source(app, dataset), 2, change_upstream)
        hooked.append(source)
        return source

    during = s.run(T0 + timedelta(hours=1), source_factory=factory)
    assert during.ok, during.error
    assert hooked[0].fired, "the upstream changed in the middle of the read"
    after = s.run(T0 + timedelta(hours=1, minutes=5))
    assert after.ok, after.error
    assert_converged(s, upstream)
    assert s.target()["p00005"][0] == "改名" and s.target()["p00030"][0] == "改名"


RARE = ["𠮷野家", "张三１２３号", "Ｌｉ　四０", "𪚥𠀀"]


def test_rare_characters_and_full_width_digits_survive_end_to_end(
    upstream: Upstream, syncers: list[Syncer]
) -> None:
    upstream.seed(replace(r, name=name) for r, name in zip(recs(len(RARE)), RARE, strict=True))
    s = syncer_for(upstream, syncers, page_size=3, batch_size=3)
    result = s.run(T0 + timedelta(hours=1))
    assert result.ok, result.error
    assert result.counts.quarantined == 0
    assert sorted(name for name, _, _ in s.target().values()) == sorted(RARE)
    assert_converged(s, upstream)


@pytest.mark.postgres
def test_an_interrupted_run_closes_its_front_end_cursor(
    pg_url: str, tmp_path: Path, syncers: list[Syncer]
) -> None:
    upstream = SqlUpstream(tmp_path, pg_url)
    leaked: list[str] = []
    hook = sys.unraisablehook
    sys.unraisablehook = lambda u: leaked.append(f"{u.exc_type.__name__}: {u.exc_value}")
    try:
        upstream.seed(recs(30))
        s = syncer_for(upstream, syncers, page_size=10, batch_size=10)
        polls = iter(range(100))
        stopped = s.run(T0 + timedelta(hours=1), should_stop=lambda: next(polls) >= 3)
        assert stopped.status == "interrupted"
        gc.collect()  # whatever the run left unclosed is finalized now
    finally:
        sys.unraisablehook = hook
        upstream.close()
    assert not leaked, leaked
