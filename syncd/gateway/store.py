"""The simulated gateway's upstream table: resident records by id, thread-safe and mutable.

Records are kept as their orjson encoding (``bytes``), so a page is rendered by joining bytes
and 10**6 records stay in a few hundred MB. A sorted index of ``(updateTime, id)`` answers a
range query with two bisections and a page with one slice; a mutation fixes the index in place
(bisect) or, for large batches, re-sorts it once.

Every mutation stamps ``updateTime`` with the store clock unless the caller gives one, bumps
:attr:`ResidentStore.version` (the servers' page caches key on it) and is atomic under the
store's lock.
"""

from __future__ import annotations

import random
import threading
from bisect import bisect_left, bisect_right, insort
from collections.abc import Callable, Iterable
from datetime import datetime
from operator import itemgetter
from typing import Any
from zoneinfo import ZoneInfo

import orjson

from syncd.gateway.data import TIME_FORMAT, RecordFactory, format_time

__all__ = ["Clock", "Query", "ResidentStore", "shanghai_now"]

Clock = Callable[[], datetime]
_SHANGHAI = ZoneInfo("Asia/Shanghai")
_BULK_REINDEX = 256  # more changes than this in one mutation: re-sort instead of bisecting
_time_of = itemgetter(0)


def shanghai_now() -> datetime:
    """Now in Asia/Shanghai as a naive datetime, truncated to seconds (the default store clock)."""
    return datetime.now(_SHANGHAI).replace(tzinfo=None, microsecond=0)


def _local(when: datetime) -> datetime:
    """Naive Asia/Shanghai time to the second (aware datetimes are converted first)."""
    if when.tzinfo is not None:
        when = when.astimezone(_SHANGHAI).replace(tzinfo=None)
    return when.replace(microsecond=0)


def _check_time(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(f"updateTime must be a 'YYYY-MM-DD HH:MM:SS' string, not {type(value).__name__}")
    try:
        canonical = format_time(datetime.strptime(value, TIME_FORMAT))
    except ValueError:
        canonical = None
    if canonical != value:
        raise ValueError(f"updateTime {value!r} is not in the form YYYY-MM-DD HH:MM:SS")
    return value


class Query:
    """The answer to one page query: the matching total and the page's encoded records."""

    __slots__ = ("rows", "total")

    def __init__(self, total: int, rows: list[bytes]) -> None:
        self.total = total
        self.rows = rows


class ResidentStore:
    """Resident records by ``id``, ordered by ``(updateTime, id)``.

    Build it empty, from ``records``, or with :meth:`generate`. ``clock`` (settable) returns the
    naive local time used to stamp mutations; :meth:`set_time` pins it.
    """

    def __init__(
        self, records: Iterable[dict[str, Any]] = (), *, seed: int = 1, clock: Clock | None = None
    ) -> None:
        self.clock: Clock = clock or shanghai_now
        self._lock = threading.RLock()
        self._rows: dict[str, bytes] = {}
        self._index: list[tuple[str, str]] = []
        self._factory = RecordFactory(seed)
        self._version = 0
        self._load(records)

    # ------------------------------------------------------------------ building

    def generate(self, n: int, start_time: datetime, *, bad_ratio: float = 0.0) -> list[str]:
        """Add ``n`` generated records with update times from ``start_time`` on; returns their ids.

        Later :meth:`insert` calls continue the same id sequence and keep ``bad_ratio``.
        """
        if n < 0:
            raise ValueError("the number of records cannot be negative")
        with self._lock:
            self._factory.bad_ratio = bad_ratio
            return self._load(self._factory.stream(n, start_time))

    def _load(self, records: Iterable[dict[str, Any]]) -> list[str]:
        added: list[tuple[str, str]] = []
        checked = ""  # generated records share stamps: parse each distinct one once
        with self._lock:
            for record in records:
                rid = record["id"]
                if not isinstance(rid, str) or not rid:
                    raise ValueError("every record needs a non-empty string 'id'")
                if rid in self._rows:
                    raise ValueError(f"duplicate record id {rid!r}")
                stamp = record["updateTime"]
                if stamp != checked:
                    checked = _check_time(stamp)
                key = (stamp, rid)
                self._rows[rid] = _encode(record)
                added.append(key)
            self._reindex([], added)
            self._version += 1
        return [rid for _, rid in added]

    # ------------------------------------------------------------------ reading

    @property
    def version(self) -> int:
        """Increases with every mutation (page caches compare it)."""
        return self._version

    def __len__(self) -> int:
        return len(self._rows)

    def __contains__(self, record_id: object) -> bool:
        return record_id in self._rows

    def get(self, record_id: str) -> dict[str, Any] | None:
        """A copy of one record, or None."""
        raw = self._rows.get(record_id)
        return None if raw is None else _decode(raw)

    def records(self) -> list[dict[str, Any]]:
        """A snapshot of every record (copies), in ``(updateTime, id)`` order."""
        with self._lock:
            raws = [self._rows[rid] for _, rid in self._index]
        return [_decode(raw) for raw in raws]

    def ids(self) -> list[str]:
        """Every id, in ``(updateTime, id)`` order."""
        with self._lock:
            return [rid for _, rid in self._index]

    def _bounds(self, start: str | None, end: str | None) -> tuple[int, int]:
        """Positions in the time index of the first record of the window and one past its last
        (the caller holds the lock)."""
        index = self._index
        lo = 0 if start is None else bisect_left(index, start, key=_time_of)
        hi = len(index) if end is None else bisect_right(index, end, key=_time_of)
        return lo, max(hi, lo)

    def span(self, start: str | None, end: str | None) -> tuple[int, int, int]:
        """(version, first, end) of the records ``query(start, end, …)`` would page through now:
        two windows with the same span hold the same records in the same order (a page cache's
        key: a first load's window ends "now", a different text every second, over the same records)."""
        with self._lock:
            return (self._version, *self._bounds(start, end))

    def query(self, start: str | None, end: str | None, offset: int, limit: int) -> Query:
        """Records with ``start <= updateTime <= end`` (either bound optional), sorted, sliced.

        ``start``/``end`` are ``YYYY-MM-DD HH:MM:SS`` strings (they sort like the times).
        """
        if offset < 0 or limit < 0:
            raise ValueError("offset and limit cannot be negative")
        with self._lock:
            index = self._index
            lo, hi = self._bounds(start, end)
            total = hi - lo
            first = lo + offset
            last = min(first + limit, hi)
            rows = self._rows
            page = [rows[rid] for _, rid in index[first:last]] if first < last else []
        return Query(total, page)

    # ------------------------------------------------------------------ mutating

    def set_time(self, when: datetime) -> None:
        """Pin the clock: every later mutation is stamped ``when`` (naive local time)."""
        pinned = _local(when)
        self.clock = lambda: pinned

    def _now(self) -> str:
        return format_time(_local(self.clock()))

    def insert(self, n: int) -> list[str]:
        """Add ``n`` new generated records stamped with the clock; returns their ids."""
        if n < 0:
            raise ValueError("the number of records cannot be negative")
        with self._lock:
            stamp = self._now()
            made: list[dict[str, Any]] = []
            while len(made) < n:
                record = self._factory.make(stamp)
                if record["id"] not in self._rows:  # a store loaded from foreign records may clash
                    made.append(record)
            return self._load(made)

    def update(
        self,
        ids: Iterable[str],
        fn: Callable[[dict[str, Any]], dict[str, Any] | None] | None = None,
        /,
        **fields: Any,
    ) -> None:
        """Change records: ``fn(record)`` (edit in place or return a new dict), then ``fields``.

        ``updateTime`` becomes the clock unless ``fields`` sets it or ``fn`` changed it.
        Unknown ids raise KeyError before anything changes.
        """
        with self._lock:
            targets = list(dict.fromkeys(ids))
            missing = [rid for rid in targets if rid not in self._rows]
            if missing:
                raise KeyError(f"no such record(s): {', '.join(missing[:5])}")
            stamp = self._now()
            changed: list[dict[str, Any]] = []
            for rid in targets:
                record = _decode(self._rows[rid])
                before = record["updateTime"]
                if fn is not None:
                    result = fn(record)
                    record = record if result is None else result
                record.update(fields)
                record["id"] = rid
                if "updateTime" not in fields and record.get("updateTime") == before:
                    record["updateTime"] = stamp
                changed.append(record)
            self._replace(changed)

    def logical_delete(self, ids: Iterable[str]) -> None:
        """Flag records deleted (``isDeleted = "1"``), stamped with the clock."""
        self.update(ids, isDeleted="1")

    def hard_delete(self, ids: Iterable[str]) -> None:
        """Remove records outright (as if the upstream row vanished). Unknown ids are ignored."""
        with self._lock:
            removed: list[tuple[str, str]] = []
            for rid in ids:
                raw = self._rows.pop(rid, None)
                if raw is not None:
                    removed.append((orjson.loads(raw)["updateTime"], rid))
            self._reindex(removed, [])
            self._version += 1

    def put(self, record: dict[str, Any]) -> None:
        """Insert or replace one record exactly as given, keeping its ``updateTime`` (late rows)."""
        with self._lock:
            self._replace([record])

    def _replace(self, records: list[dict[str, Any]]) -> None:
        removed: list[tuple[str, str]] = []
        added: list[tuple[str, str]] = []
        encoded: dict[str, bytes] = {}  # validate and encode everything before changing anything
        for record in records:
            rid = record.get("id")
            if not isinstance(rid, str) or not rid:
                raise ValueError("every record needs a non-empty string 'id'")
            if rid in encoded:
                raise ValueError(f"record {rid!r} given twice in one change")
            added.append((_check_time(record.get("updateTime")), rid))
            encoded[rid] = _encode(record)
        for rid, raw in encoded.items():
            old = self._rows.get(rid)
            if old is not None:
                removed.append((orjson.loads(old)["updateTime"], rid))
            self._rows[rid] = raw
        self._reindex(removed, added)
        self._version += 1

    def _reindex(self, removed: list[tuple[str, str]], added: list[tuple[str, str]]) -> None:
        index = self._index
        if len(removed) + len(added) <= _BULK_REINDEX:
            for key in removed:
                at = bisect_left(index, key)
                if at == len(index) or index[at] != key:  # pragma: no cover - would be a store bug
                    raise RuntimeError(f"store index out of step with the records at {key!r}")
                del index[at]
            for key in added:
                insort(index, key)
            return
        if removed:
            gone = set(removed)
            index = [key for key in index if key not in gone]
        index.extend(added)
        index.sort()
        self._index = index

    # ------------------------------------------------------------------ demo churn

    def churn(self, n: int, rng: random.Random) -> dict[str, int]:
        """A round of realistic upstream activity: ~n updates, n/5 inserts, n/10 logical deletes."""
        with self._lock:
            live = [rid for _, rid in self._index]
            picked = rng.sample(live, min(n, len(live)))
            cut = len(picked) // 10
            deleted, updated = picked[:cut], picked[cut:]

            def touch(record: dict[str, Any]) -> None:
                record["phone"] = f"1{rng.choice('3589')}{rng.randrange(10**9):09d}"
                record["remark"] = rng.choice(("无", "/", "", None, "信息已核实", "地址变更"))

            self.update(updated, touch)
            self.logical_delete(deleted)
            inserted = self.insert(max(n // 5, 0))
        return {"updated": len(updated), "deleted": len(deleted), "inserted": len(inserted)}


def _encode(record: dict[str, Any]) -> bytes:
    # orjson returns its working buffer shrunk in place; keeping millions of those fragments the
    # heap (about 8 KB of address space per record). An exact-size copy keeps memory at ~1x.
    return bytes(memoryview(orjson.dumps(record)))


def _decode(raw: bytes) -> dict[str, Any]:
    record = orjson.loads(raw)
    if not isinstance(record, dict):  # pragma: no cover - only dicts are ever stored
        raise TypeError("stored record is not an object")
    return record
