"""Quarantine entries never outlive the record they stand for, and replay writes what a sync writes.

A quarantined record is the latest version of its key only until upstream sends that key again.
Each case runs through the runner against a scripted loopback gateway (the demo dataset's wire
format) into a real database, then relaxes the YAML and replays:

- a newer valid version, a delete flag, a full-snapshot delete, or the same version read again
  unchanged supersedes the entry: replay must not write the old version back (an ``update`` going
  back in time, or a row deleted upstream brought back);
- within one read the last record of a key decides, whatever batch or process maps it;
- the stored payload is redacted (hashed/masked source fields): replay takes the stored hash of a
  hashed key instead of hashing the hash, so it writes the key a sync writes, not a second row.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from syncd.changes.keys import row_key_function
from syncd.config import load_config
from syncd.config.model import AppConfig
from syncd.errors import RunLockLost
from syncd.gateway import RecordFactory
from syncd.mapping import compile_mapping
from syncd.ops.quarantine import ReplayResult, list_entries, replay_quarantine
from syncd.runner import RunResult, run_dataset
from syncd.targets import StateStore, create_target_engine
from syncd.targets.prune import FeedPruner, PruneBound
from tests.e2e import (
    SECRET,
    SECRET_ENV,
    change_log,
    read_whole_with_snapshot_deletes,
    target_rows,
    write_config,
)
from tests.http_server import ScriptedResidents

HOUSEHOLD = "    source: householdSize\n    type: int\n    transforms: [null_if]\n"
STRICT = HOUSEHOLD + "    validators: [{range: {max: 3}}]\n"
GOOD, BAD, BAD_TOO = 2, 5, 6  # household sizes: BAD ones fail STRICT, and land once it is relaxed
SALT_ENV = "SYNCD_TEST_KEY_SALT"
HASHED_KEY = (
    "  resident_id:\n    source: id\n    type: string\n    length: 16\n    nullable: false\n",
    "  resident_id:\n    source: id\n    type: string\n    length: 64\n    nullable: false\n"
    f'    transforms: [strip, lower, {{hash: "${{{SALT_ENV}}}"}}]\n',
)
KEY = HASHED_KEY[0]
CHECKED_KEY = KEY + '    validators: [{regex: "^Z"}]\n'  # fails every key the tests send
CHECKED_PHONE = (
    "    transforms: [strip, halfwidth, null_if, {mask: phone}]\n",
    '    transforms: [strip, halfwidth, null_if, {mask: phone}]\n    validators: [{regex: "^1[0-9]{10}$"}]\n',
)


class Upstream(ScriptedResidents):
    """A loopback gateway serving the pages the test sets, whatever the window asked for."""

    def serve(self, *records: dict[str, Any], page_size: int = 100) -> None:
        listed = list(records)
        self.pages = [listed[i : i + page_size] for i in range(0, len(listed), page_size)]


@pytest.fixture
def upstream(monkeypatch: pytest.MonkeyPatch) -> Iterator[Upstream]:
    monkeypatch.setenv(SECRET_ENV, SECRET)
    monkeypatch.setenv(SALT_ENV, "county-salt-9f3")
    up = Upstream()
    try:
        yield up
    finally:
        up.server.stop()
    assert not up.server.errors


FACTORY = RecordFactory(23)


def record(key: str, household: int = GOOD, **changes: Any) -> dict[str, Any]:
    """A valid demo record of ``key`` (its household size: GOOD, or BAD under STRICT)."""
    r = FACTORY.make("2026-11-02 08:00:00")
    r.update(id=key, householdSize=household, phone="13812345678", isDeleted="0", remark=f"v{household}")
    r.update(changes)
    return r


class Site:
    """The demo dataset under ``root``, strict about household sizes, synced into ``db_url``."""

    def __init__(
        self,
        root: Path,
        db_url: str,
        upstream: Upstream,
        *,
        replace: tuple[tuple[str, str], ...] = (),
        page_size: int = 100,
    ) -> None:
        self.root, self.db_url = root, db_url
        self.config = write_config(
            root,
            db_url=db_url,
            gateway_url=upstream.server.url,
            page_size=page_size,
            batch_size=3,
            replace=[(HOUSEHOLD, STRICT), *replace],
        )
        # no run fails on its share of quarantined records: a few records make the cases here
        text = self.config.read_text(encoding="utf-8")
        self.config.write_text(text.replace("ratio: 0.5", "ratio: 1.0"), encoding="utf-8")
        self.engine = create_target_engine(db_url)
        self.store = StateStore(self.engine)

    def app(self) -> AppConfig:
        return load_config(self.config)

    def sync(self) -> RunResult:
        app = self.app()
        result = run_dataset(app, app.datasets["residents"], self.store)
        assert result.ok, result.error
        return result

    def relax(self) -> None:
        path = self.root / "datasets" / "residents.yaml"
        path.write_text(path.read_text(encoding="utf-8").replace(STRICT, HOUSEHOLD), encoding="utf-8")

    def replay(self) -> ReplayResult:
        app = self.app()
        return replay_quarantine(app, app.datasets["residents"], self.store)

    def entries(self) -> dict[str | None, dict[str, Any]]:
        """The quarantine entries by the key upstream sent."""
        return {e["record_key"]: e for e in list_entries(self.store, "residents", limit=1000)}

    def rows(self) -> dict[str, dict[str, Any]]:
        return target_rows(self.db_url)

    def replayed_changes(self, result: ReplayResult) -> list[dict[str, Any]]:
        return [c for c in change_log(self.db_url) if c["run_id"] == result.run_id]

    def set_worker(self, mode: str) -> None:
        text = self.config.read_text(encoding="utf-8")
        self.config.write_text(text.replace("defaults:\n", f"defaults:\n  read_worker: {mode}\n", 1), "utf-8")

    def close(self) -> None:
        self.engine.dispose()


@pytest.fixture
def site(tmp_path: Path, db_url: str, upstream: Upstream) -> Iterator[Site]:
    s = Site(tmp_path, db_url, upstream)
    try:
        yield s
    finally:
        s.close()


# --------------------------------------------------------------------------- superseded entries


def test_a_newer_version_supersedes_the_quarantined_one(site: Site, upstream: Upstream) -> None:
    """K fails in run 1, a newer valid K is written in run 2: replay must not write run 1's K over it."""
    upstream.serve(record("R1", BAD), record("R2"))
    assert site.sync().counts.quarantined == 1
    assert set(site.entries()) == {"R1"}
    upstream.serve(record("R1", GOOD, remark="newer"), record("R2"))
    second = site.sync()
    assert second.counts.inserted == 1
    assert site.entries() == {}, "the newer version of R1 supersedes its quarantine entry"

    site.relax()
    result = site.replay()
    assert (result.examined, result.inserted, result.updated) == (0, 0, 0)
    assert site.replayed_changes(result) == []
    assert site.rows()["R1"]["remark"] == "newer"
    assert site.rows()["R1"]["household_size"] == GOOD


def test_a_newer_version_of_an_existing_row_supersedes_the_quarantined_one(
    site: Site, upstream: Upstream
) -> None:
    upstream.serve(record("R1", remark="first"))
    site.sync()
    upstream.serve(record("R1", BAD, remark="failed"))
    assert site.sync().counts.quarantined == 1
    upstream.serve(record("R1", GOOD, remark="newest"))
    assert site.sync().counts.updated == 1
    assert site.entries() == {}

    site.relax()
    result = site.replay()
    assert result.examined == 0 and site.replayed_changes(result) == []
    assert site.rows()["R1"]["remark"] == "newest"


def test_a_delete_flag_supersedes_the_quarantined_version(site: Site, upstream: Upstream) -> None:
    upstream.serve(record("R1"), record("R2"))
    site.sync()
    upstream.serve(record("R1", BAD))
    assert site.sync().counts.quarantined == 1
    upstream.serve(record("R1", isDeleted="1"))
    assert site.sync().counts.deleted == 1
    assert site.entries() == {}

    site.relax()
    result = site.replay()
    assert result.examined == 0 and site.replayed_changes(result) == []
    assert "R1" not in site.rows(), "replay brought back a row deleted upstream"


def test_a_version_read_again_unchanged_supersedes_the_quarantined_one(
    site: Site, upstream: Upstream
) -> None:
    """The failing version came between two identical ones: the second is skipped unmapped as
    unchanged (its digest is the stored one), which supersedes the entry all the same."""
    first, other = record("R1", remark="stays"), record("R2")
    upstream.serve(first, other)
    site.sync()
    upstream.serve({**first, "householdSize": BAD, "remark": "failed"}, other)
    assert site.sync().counts.quarantined == 1
    upstream.serve(first, other)
    again = site.sync()
    assert (again.counts.inserted, again.counts.updated, again.counts.quarantined) == (0, 0, 0)
    assert site.entries() == {}

    site.relax()
    result = site.replay()
    assert result.examined == 0 and site.replayed_changes(result) == []
    assert site.rows()["R1"]["remark"] == "stays"


def test_a_snapshot_delete_supersedes_the_quarantined_version(
    tmp_path: Path, db_url: str, upstream: Upstream
) -> None:
    """Upstream drops R1 after its last version failed, and R9, whose only version failed: replay
    must bring back neither."""
    site = Site(tmp_path, db_url, upstream)
    read_whole_with_snapshot_deletes(tmp_path, max_ratio=0.5)
    try:
        others = [record(f"R{i}") for i in range(2, 5)]
        upstream.serve(record("R1"), *others)
        site.sync()
        upstream.serve(record("R1", BAD), record("R9", BAD), *others)
        kept = site.sync()
        assert (kept.counts.quarantined, kept.counts.deleted) == (2, 0)  # R1 failed: its row stays
        assert set(site.entries()) == {"R1", "R9"}
        upstream.serve(*others)
        gone = site.sync()
        assert gone.counts.deleted == 1
        assert site.entries() == {}

        site.relax()
        result = site.replay()
        assert result.examined == 0 and site.replayed_changes(result) == []
        assert set(site.rows()) == {"R2", "R3", "R4"}
    finally:
        site.close()


def test_an_entry_of_a_row_waiting_out_missing_runs_stays_with_its_row(
    tmp_path: Path, db_url: str, upstream: Upstream
) -> None:
    """With ``missing_runs: 2`` a row missing once stands (upstream may send it again), and so does
    the entry of its latest version: it went with the first miss, and a replay after that could no
    longer restore the row's newer version. It goes with the row, when the second miss deletes it."""
    site = Site(tmp_path, db_url, upstream)
    read_whole_with_snapshot_deletes(tmp_path, max_ratio=0.5)
    dataset = tmp_path / "datasets" / "residents.yaml"
    text = dataset.read_text(encoding="utf-8")
    text = text.replace("{max_ratio: 0.5}", "{max_ratio: 0.5, missing_runs: 2}")
    dataset.write_text(text, encoding="utf-8")
    try:
        others = [record(f"R{i}") for i in range(2, 5)]
        upstream.serve(record("R1"), *others)
        site.sync()
        upstream.serve(record("R1", BAD), *others)
        site.sync()
        assert set(site.entries()) == {"R1"}
        upstream.serve(*others)
        once = site.sync()
        assert once.counts.deleted == 0 and "R1" in site.rows()
        assert set(site.entries()) == {"R1"}, "the entry of a row that still stands was dropped"
        twice = site.sync()
        assert twice.counts.deleted == 1 and "R1" not in site.rows()
        assert site.entries() == {}
    finally:
        site.close()


def test_an_empty_answer_keeps_the_entries_of_a_dataset_with_no_rows(
    tmp_path: Path, db_url: str, upstream: Upstream
) -> None:
    """Every record of the dataset failed its mapping: no live rows, so the delete guard has nothing
    to measure an empty answer against. An empty answer (a gateway fault as often as not) must not
    empty the quarantine, which holds the only trace of those records."""
    site = Site(tmp_path, db_url, upstream)
    read_whole_with_snapshot_deletes(tmp_path, max_ratio=0.5)
    try:
        upstream.serve(record("R8", BAD), record("R9", BAD))
        site.sync()
        assert set(site.entries()) == {"R8", "R9"} and site.rows() == {}
        upstream.serve()
        site.sync()
        assert set(site.entries()) == {"R8", "R9"}
        upstream.serve(record("R9", BAD))  # a real answer without R8: R8's entry goes
        site.sync()
        assert set(site.entries()) == {"R9"}
    finally:
        site.close()


@pytest.mark.parametrize("worker", ["never", "always"])
def test_the_last_record_of_a_key_decides_within_a_read(
    tmp_path: Path, sqlite_url: str, upstream: Upstream, worker: str
) -> None:
    """Records of one key within one read, in one batch or across batches, mapped in this process
    or by the read worker, on a first load and on a re-sync: a failing record after the key's row
    stays quarantined (it is the newest), one before it does not."""
    site = Site(tmp_path, sqlite_url, upstream, page_size=4)
    site.set_worker(worker)
    try:
        a_good, b_good = record("RA", remark="a"), record("RB", remark="b")
        upstream.serve(
            a_good, record("RA", BAD), record("RB", BAD), b_good, record("RC", BAD), record("RD"), page_size=4
        )
        site.sync()
        entries = site.entries()
        assert set(entries) == {"RA", "RC"}
        assert entries["RA"]["raw"]["householdSize"] == BAD

        # a re-sync: RA as stored (skipped unmapped), then a newer failing RA; RB failing, then RB
        # as stored; RC valid at last
        upstream.serve(
            a_good, record("RA", BAD_TOO), record("RB", BAD), b_good, record("RC", remark="c"), record("RD"),
            page_size=4,
        )
        site.sync()
        entries = site.entries()
        assert set(entries) == {"RA"}, "one entry per key: its newest failing record"
        assert entries["RA"]["raw"]["householdSize"] == BAD_TOO
        assert site.rows()["RB"]["remark"] == "b" and site.rows()["RC"]["remark"] == "c"

        site.relax()
        result = site.replay()
        assert (result.examined, result.updated) == (1, 1)
        assert site.rows()["RA"]["household_size"] == BAD_TOO
    finally:
        site.close()


def test_an_entry_stored_without_its_row_key_is_not_replayed_over_a_later_write(
    site: Site, upstream: Upstream
) -> None:
    """Entries an older syncd stored have no row_key, so no later write found them: replay checks
    the change feed instead, and skips (and removes) an entry whose key was written after it."""
    upstream.serve(record("R1", BAD), record("R2", BAD))
    assert site.sync().counts.quarantined == 2
    with site.engine.begin() as conn:  # as syncd before row_key stored them
        conn.execute(sa.text("UPDATE syncd_quarantine SET row_key = NULL, protected = NULL"))
    upstream.serve(record("R1", GOOD, remark="newer"))
    site.sync()
    assert set(site.entries()) == {"R1", "R2"}  # not found by key

    site.relax()
    result = site.replay()
    assert (result.examined, result.superseded, result.inserted) == (2, 1, 1)
    assert site.rows()["R1"]["remark"] == "newer"
    assert site.rows()["R2"]["household_size"] == BAD
    assert site.entries() == {}


def test_an_entry_without_its_row_key_is_not_replayed_once_the_feed_was_pruned_past_it(
    site: Site, upstream: Upstream
) -> None:
    """Replay skips an entry stored without its row key only when the change feed shows its key
    written after it; retention deleted that change entry, and replay wrote the 90-day-old record
    over the newer row. An entry the feed was pruned past stays unreplayed (its last_seen kept, so
    again next time) with a reason that says what to do; one seen after the pruned entries is
    replayed as before."""
    now = datetime.now(UTC)
    upstream.serve(record("R1", BAD), record("R2", BAD), record("R3", BAD))
    assert site.sync().counts.quarantined == 3
    q = site.store.tables.quarantine
    with site.engine.begin() as conn:  # as syncd before row_key stored them, 90 (R3: 10) days ago
        conn.execute(sa.update(q).values(row_key=None, protected=None))
        for key, days in (("R1", 90), ("R2", 90), ("R3", 10)):
            seen = now - timedelta(days=days)
            conn.execute(sa.update(q).where(q.c.record_key == key).values(first_seen=seen, last_seen=seen))
    upstream.serve(record("R1", GOOD, remark="newer"))  # 60 days ago: upstream corrected R1
    site.sync()
    ch = site.store.tables.changes
    with site.engine.begin() as conn:
        conn.execute(sa.update(ch).values(changed_at=now - timedelta(days=60)))
    upstream.serve(record("R4", GOOD))  # yesterday
    site.sync()
    # the daily retention, changes.retention_days: 30
    assert FeedPruner(site.store).prune("residents", PruneBound(before=now - timedelta(days=30))).deleted == 1

    site.relax()
    result = site.replay()
    assert site.rows()["R1"]["remark"] == "newer", "replay wrote the 90-day-old record over the newer row"
    assert (result.examined, result.superseded, result.inserted) == (3, 0, 1)
    assert (result.unverified, result.still_failing) == (2, 2)
    assert site.rows()["R3"]["household_size"] == BAD and "R2" not in site.rows()
    entries = site.entries()
    assert set(entries) == {"R1", "R2"}
    for entry in entries.values():
        assert entry["reason"].startswith("not replayed: stored without its row key")
        assert "syncd sync residents --full" in entry["reason"] and "row_key IS NULL" in entry["reason"]
        assert entry["row_key"] is None and entry["times"] == 1
        assert abs(entry["last_seen"] - (now - timedelta(days=90))) < timedelta(seconds=1)
    assert list(result.reasons.values()) == [2]
    again = site.replay()
    assert (again.unverified, again.inserted, again.updated) == (2, 0, 0)
    assert site.rows()["R1"]["remark"] == "newer"


def test_a_replay_that_still_fails_keeps_when_an_entry_without_its_row_key_was_last_seen(
    site: Site, upstream: Upstream
) -> None:
    """An entry without its row key is checked against the change feed since it was last seen. A
    replay in which it still failed with another reason (its key columns failing too) wrote it back
    as seen now, one more time: the next replay looked at the feed only from then, missed the
    write of its key in between, and wrote the 10-day-old record over the newer row. A replay
    sees nothing upstream: only the reason changes."""
    now = datetime.now(UTC)
    upstream.serve(record("R1", BAD))
    assert site.sync().counts.quarantined == 1
    q, ch = site.store.tables.quarantine, site.store.tables.changes
    ten_days_ago = now - timedelta(days=10)
    with site.engine.begin() as conn:  # stored without its row key (older syncd), 10 days ago
        seen = {"first_seen": ten_days_ago, "last_seen": ten_days_ago}
        conn.execute(sa.update(q).values(row_key=None, protected=None, **seen))
    upstream.serve(record("R1", GOOD, remark="newer"))
    site.sync()
    with site.engine.begin() as conn:  # 5 days ago: upstream corrected R1
        conn.execute(sa.update(ch).values(changed_at=now - timedelta(days=5)))
    before = site.entries()["R1"]

    dataset = site.root / "datasets" / "residents.yaml"
    plain = dataset.read_text(encoding="utf-8")
    dataset.write_text(plain.replace(KEY, CHECKED_KEY), encoding="utf-8")  # its key fails now too
    first = site.replay()
    assert (first.still_failing, first.superseded, first.inserted, first.updated) == (1, 0, 0, 0)
    entry = site.entries()["R1"]
    assert entry["reason"] != before["reason"] and "resident_id" in entry["reason"]
    assert (entry["row_key"], entry["times"], entry["run_id"]) == (None, 1, before["run_id"])
    assert abs(entry["last_seen"] - ten_days_ago) < timedelta(seconds=1), "a replay counted as a sighting"
    assert abs(entry["first_seen"] - ten_days_ago) < timedelta(seconds=1)

    dataset.write_text(plain, encoding="utf-8")
    site.relax()
    second = site.replay()
    assert site.rows()["R1"]["remark"] == "newer", "replay wrote the 10-day-old record over the newer row"
    assert (second.superseded, second.updated) == (1, 0)
    assert site.entries() == {}


def test_a_still_failing_entry_under_an_older_hash_moves_to_its_hash_as_it_was_seen(
    site: Site, upstream: Upstream
) -> None:
    """An entry stored under another raw hash (an older hashing) comes back under its hash, with
    its sightings as they were: a replay is no sighting."""
    now = datetime.now(UTC)
    upstream.serve(record("R1", BAD))
    site.sync()
    q = site.store.tables.quarantine
    seen = now - timedelta(days=10)
    (digest,) = [e["raw_hash"] for e in site.entries().values()]
    with site.engine.begin() as conn:
        conn.execute(sa.update(q).values(raw_hash="0" * 32, first_seen=seen, last_seen=seen, times=3))
    assert site.replay().still_failing == 1
    (entry,) = site.entries().values()
    assert (entry["raw_hash"], entry["times"]) == (digest, 3)
    assert abs(entry["last_seen"] - seen) < timedelta(seconds=1)


def _older_copy(site: Site, seen: datetime) -> dict[str, Any]:
    """Store a copy of the dataset's one entry as an older syncd stored it: under another raw hash
    (an older hashing), without its row key and the values of its masked/hashed columns, seen
    ``seen`` (twice). Returns the entry under its hash as it is now."""
    q = site.store.tables.quarantine
    (entry,) = site.entries().values()
    with site.engine.begin() as conn:
        (stored,) = conn.execute(sa.select(q)).mappings().all()
        copy = {**stored, "raw_hash": "0" * 32, "row_key": None, "protected": None}
        conn.execute(sa.insert(q), [{**copy, "first_seen": seen, "last_seen": seen, "times": 2}])
    return entry


def test_an_older_copy_of_an_entry_does_not_rewrite_the_entry_under_its_hash(
    tmp_path: Path, db_url: str, upstream: Upstream
) -> None:
    """The same record stored twice: by an older syncd under an older hashing (no row key, no stored
    hash of its hashed key, so replay cannot key it) and again since under its hash, with both. The
    copy moving to its hash rewrote that entry's reason ("only hashed") and row key (None): a later
    write of the key no longer superseded the entry. The copy is superseded instead."""
    site = Site(tmp_path, db_url, upstream, replace=(HASHED_KEY,))
    try:
        upstream.serve(record("R1", BAD))
        assert site.sync().counts.quarantined == 1
        entry = _older_copy(site, datetime.now(UTC) - timedelta(days=10))
        assert entry["row_key"] is not None and entry["protected"] is not None

        result = site.replay()  # the YAML unchanged: the entry still fails as it did
        (left,) = site.entries().values()
        assert (left["row_key"], left["reason"]) == (entry["row_key"], entry["reason"])
        assert left == entry, "the older copy rewrote the entry under its hash"
        assert (result.examined, result.superseded, result.still_failing) == (2, 1, 1)

        upstream.serve(record("R1", GOOD, remark="newer"))  # a later write of its key supersedes it
        site.sync()
        assert site.entries() == {}
    finally:
        site.close()


def test_an_older_copy_of_a_replayed_entry_does_not_come_back_under_its_hash(
    tmp_path: Path, db_url: str, upstream: Upstream
) -> None:
    """As above, the YAML relaxed: the entry under its hash lands; its older copy (which cannot
    be keyed, so no key supersedes it) came back under the hash that just landed, as a still
    failing entry of a record already written."""
    site = Site(tmp_path, db_url, upstream, replace=(HASHED_KEY,))
    try:
        upstream.serve(record("R1", BAD))
        site.sync()
        _older_copy(site, datetime.now(UTC) - timedelta(days=10))
        site.relax()
        result = site.replay()
        assert (result.examined, result.superseded, result.inserted, result.still_failing) == (2, 1, 1, 0)
        assert site.entries() == {}, "the older copy of a replayed record stayed in the quarantine"
        (row,) = site.rows().values()
        assert row["household_size"] == BAD
    finally:
        site.close()


def _copy_holding_the_key(site: Site, seen: datetime) -> tuple[dict[str, Any], str]:
    """Store a copy of the dataset's one entry under another raw hash (an older hashing), seen
    ``seen``, holding its row key and stored values, and take both from the entry under its hash
    (stored when its key column failed before its hash). Returns the copy as stored and the hash."""
    q = site.store.tables.quarantine
    with site.engine.begin() as conn:
        (stored,) = conn.execute(sa.select(q)).mappings().all()
        assert stored["protected"] is not None and stored["row_key"] is not None
        copy = {**stored, "raw_hash": "0" * 32, "first_seen": seen, "last_seen": seen}
        conn.execute(sa.insert(q), [copy])
        under_hash = sa.update(q).where(q.c.raw_hash == stored["raw_hash"])
        conn.execute(under_hash.values(row_key=None, protected=None))
    return copy, str(stored["raw_hash"])


def test_an_older_copy_holding_the_only_hashed_key_value_lands(
    tmp_path: Path, db_url: str, upstream: Upstream
) -> None:
    """R1 quarantined twice: under an older hashing with its row key and the stored value of its
    hashed key, and under its hash without them. Replay kept the entry under the hash, which can
    never be written ("only hashed"), and removed the copy, the only entry that could: with the
    YAML fixed R1 never landed. The entry that maps stands, and lands."""
    site = Site(tmp_path, db_url, upstream, replace=(HASHED_KEY,))
    try:
        upstream.serve(record("R1", BAD))
        assert site.sync().counts.quarantined == 1
        copy, _digest = _copy_holding_the_key(site, datetime.now(UTC) - timedelta(days=10))
        site.relax()
        result = site.replay()
        assert (result.examined, result.superseded, result.inserted, result.still_failing) == (2, 1, 1, 0)
        assert site.entries() == {}
        (key,) = site.rows()
        assert key == copy["row_key"], "written under another key than a sync writes"
        assert site.rows()[key]["household_size"] == BAD
    finally:
        site.close()


def test_an_older_copy_holding_the_hashed_key_value_gives_it_to_the_entry_that_stands(
    tmp_path: Path, db_url: str, upstream: Upstream
) -> None:
    """As above with the YAML unchanged: the record still fails. It stays under its hash with the
    copy's row key and stored values (the copy removed), and its own reason and sightings; a
    later replay with the YAML fixed writes it, and a later write of its key supersedes it."""
    site = Site(tmp_path, db_url, upstream, replace=(HASHED_KEY,))
    try:
        upstream.serve(record("R1", BAD))
        assert site.sync().counts.quarantined == 1
        (entry,) = site.entries().values()
        copy, digest = _copy_holding_the_key(site, datetime.now(UTC) - timedelta(days=10))
        result = site.replay()
        assert (result.examined, result.superseded, result.still_failing, result.inserted) == (2, 1, 1, 0)
        (left,) = site.entries().values()
        assert (left["raw_hash"], left["row_key"]) == (digest, copy["row_key"])
        assert left["protected"] == entry["protected"] and left["reason"] == entry["reason"]
        assert (left["first_seen"], left["last_seen"], left["times"]) == (
            entry["first_seen"], entry["last_seen"], entry["times"],
        )

        upstream.serve(record("R1", GOOD, remark="newer"))  # found by its row key now
        site.sync()
        assert site.entries() == {}
        site.relax()
        assert site.replay().examined == 0
        assert site.rows()[copy["row_key"]]["remark"] == "newer"
    finally:
        site.close()


class _LostAtFirstPage:
    """A run lock that holds at the forced check before the superseded entries are removed, and is
    lost at the first page's check."""

    def check(self, *, force: bool = False) -> None:
        if not force:
            raise RunLockLost("the dataset lock is gone", reason="test")


@pytest.mark.parametrize("kept_under", ["its hash", "an older hash"])
def test_a_replay_stopped_after_removing_a_copy_keeps_what_only_the_copy_held(
    tmp_path: Path, db_url: str, upstream: Upstream, kept_under: str
) -> None:
    """The copy holding R1's row key and the stored hash of its hashed key was removed in its own
    transaction, the entry that stands given them in memory only: the run lock lost before the first
    page, the entry left could never be written ("only hashed"), and R1 never landed. The entry that
    stands is stored with them (under its hash, when it stood under an older one too) as the copy is
    removed, so the next replay lands R1."""
    site = Site(tmp_path, db_url, upstream, replace=(HASHED_KEY,))
    try:
        upstream.serve(record("R1", BAD))
        assert site.sync().counts.quarantined == 1
        (entry,) = site.entries().values()
        copy, digest = _copy_holding_the_key(site, datetime.now(UTC) - timedelta(days=10))
        if kept_under == "an older hash":  # no entry under its hash: the newer copy stands
            q = site.store.tables.quarantine
            with site.engine.begin() as conn:
                conn.execute(sa.update(q).where(q.c.raw_hash == digest).values(raw_hash="1" * 32))
        site.relax()
        app = site.app()
        with pytest.raises(RunLockLost):
            replay_quarantine(app, app.datasets["residents"], site.store, lock=_LostAtFirstPage())
        assert site.rows() == {}
        (left,) = site.entries().values()
        assert (left["raw_hash"], left["row_key"]) == (digest, copy["row_key"])
        assert left["protected"] == entry["protected"]
        assert (left["last_seen"], left["times"]) == (entry["last_seen"], entry["times"])

        result = site.replay()  # the lock back
        assert (result.examined, result.superseded, result.inserted, result.still_failing) == (1, 0, 1, 0)
        assert site.entries() == {}
        assert site.rows()[copy["row_key"]]["household_size"] == BAD
    finally:
        site.close()


def test_a_replay_killed_after_writing_a_record_whose_copy_held_its_key_leaves_no_entry(
    tmp_path: Path, db_url: str, upstream: Upstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As above, the process dies between the page's write and settling its entries: the entry that
    stands was stored without the row key it was given in memory, so the writer could not remove it
    by key, and every later replay kept it as a still failing entry of a record already written
    ("only hashed"). Stored with its key, the write removes it."""
    site = Site(tmp_path, db_url, upstream, replace=(HASHED_KEY,))
    try:
        upstream.serve(record("R1", BAD))
        site.sync()
        copy, _digest = _copy_holding_the_key(site, datetime.now(UTC) - timedelta(days=10))
        site.relax()

        def killed(*_args: object) -> None:
            raise RuntimeError("the process dies right after the page's write commits")

        with monkeypatch.context() as patch, pytest.raises(RuntimeError, match="the process dies"):
            patch.setattr("syncd.ops.quarantine._settle", killed)
            site.replay()
        assert set(site.rows()) == {copy["row_key"]}
        assert site.entries() == {}, "the writer removes the entry it finds by key"
        result = site.replay()
        assert (result.examined, result.inserted, result.updated, result.still_failing) == (0, 0, 0, 0)
        assert site.entries() == {} and site.rows()[copy["row_key"]]["household_size"] == BAD
    finally:
        site.close()


def test_entries_of_one_record_each_holding_part_of_its_stored_values_land_as_one(
    tmp_path: Path, db_url: str, upstream: Upstream
) -> None:
    """The entry under the hash holds the stored hash of the key, an older copy the stored masked
    phone (whose validator saw the clear number): neither maps alone, the two together do."""
    site = Site(tmp_path, db_url, upstream, replace=(HASHED_KEY, CHECKED_PHONE))
    try:
        upstream.serve(record("R1", BAD))
        assert site.sync().counts.quarantined == 1
        q = site.store.tables.quarantine
        with site.engine.begin() as conn:
            (stored,) = conn.execute(sa.select(q)).mappings().all()
            protected = json.loads(stored["protected"])
            assert {"resident_id", "phone"} <= set(protected)
            seen = datetime.now(UTC) - timedelta(days=10)
            copy = {**stored, "raw_hash": "0" * 32, "row_key": None, "first_seen": seen, "last_seen": seen}
            del protected["resident_id"]
            conn.execute(sa.insert(q), [{**copy, "protected": json.dumps(protected)}])
            key_only = json.dumps({"resident_id": json.loads(stored["protected"])["resident_id"]})
            conn.execute(sa.update(q).where(q.c.raw_hash == stored["raw_hash"]).values(protected=key_only))
        site.relax()
        result = site.replay()
        assert (result.examined, result.superseded, result.inserted, result.still_failing) == (2, 1, 1, 0)
        assert site.entries() == {}
        assert site.rows()[stored["row_key"]]["phone"] == "138****5678"
    finally:
        site.close()


def test_an_older_entry_without_its_row_key_goes_when_a_newer_one_of_its_key_lands(
    tmp_path: Path, db_url: str, upstream: Upstream
) -> None:
    """Two versions of R1 quarantined, the older stored without its row key (so the second did not
    supersede it). The YAML is relaxed enough for the newer one: it lands, and the older one, which
    still fails, must not stay as an entry of R1 (given R1's row key, a later replay with the YAML
    relaxed further would write it over the newer row). Replay keys it and supersedes it."""
    site = Site(tmp_path, db_url, upstream)
    try:
        upstream.serve(record("R1", BAD_TOO, remark="older"))
        site.sync()
        q = site.store.tables.quarantine
        ten_days_ago = datetime.now(UTC) - timedelta(days=10)
        with site.engine.begin() as conn:  # as an older syncd stored it, 10 days ago
            conn.execute(sa.update(q).values(row_key=None, first_seen=ten_days_ago, last_seen=ten_days_ago))
        upstream.serve(record("R1", BAD, remark="newer"))
        site.sync()
        assert len(list_entries(site.store, "residents")) == 2

        dataset = site.root / "datasets" / "residents.yaml"
        text = dataset.read_text(encoding="utf-8")
        dataset.write_text(text.replace("{max: 3}", f"{{max: {BAD}}}"), encoding="utf-8")
        result = site.replay()
        assert (result.examined, result.superseded, result.inserted, result.still_failing) == (2, 1, 1, 0)
        assert site.entries() == {}
        assert site.rows()["R1"]["remark"] == "newer"

        site.relax()
        again = site.replay()
        assert (again.examined, again.inserted, again.updated) == (0, 0, 0)
        assert site.rows()["R1"]["remark"] == "newer"
    finally:
        site.close()


def test_a_replay_killed_between_its_write_and_settling_its_entries_converges_when_run_again(
    site: Site, upstream: Upstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A page is written (rows, change feed) in one transaction and its entries settled (replayed
    ones removed, still failing ones given their new reason) in the next. The process dies in
    between: the next replay ends where one uninterrupted replay would have — each row written
    once, one change entry each, the entry that still fails with its new reason and sightings."""
    upstream.serve(record("R1", BAD), record("R2", BAD), record("R3", BAD_TOO))
    site.sync()
    q = site.store.tables.quarantine
    ten_days_ago = datetime.now(UTC) - timedelta(days=10)
    with site.engine.begin() as conn:
        conn.execute(  # R2 as an older syncd stored it: the writer cannot find it by its key
            sa.update(q).where(q.c.record_key == "R2").values(row_key=None, protected=None)
        )
        conn.execute(sa.update(q).values(first_seen=ten_days_ago, last_seen=ten_days_ago, times=2))
    before = site.entries()
    dataset = site.root / "datasets" / "residents.yaml"
    text = dataset.read_text(encoding="utf-8")
    dataset.write_text(text.replace("{max: 3}", f"{{max: {BAD}}}"), encoding="utf-8")

    def killed(*_args: object) -> None:
        raise RuntimeError("the process dies right after the page's write commits")

    with monkeypatch.context() as patch, pytest.raises(RuntimeError, match="the process dies"):
        patch.setattr("syncd.ops.quarantine._settle", killed)
        site.replay()
    assert set(site.rows()) == {"R1", "R2"}
    assert set(site.entries()) == {"R2", "R3"}, "the writer removes the entries it finds by key"

    result = site.replay()
    assert (result.examined, result.inserted, result.updated, result.still_failing) == (2, 0, 0, 1)
    assert site.replayed_changes(result) == []
    changes = [(c["op"], c["row_key"]) for c in change_log(site.db_url)]
    assert sorted(changes) == [("insert", "R1"), ("insert", "R2")]
    assert {k: r["household_size"] for k, r in site.rows().items()} == {"R1": BAD, "R2": BAD}
    (left,) = site.entries().values()
    assert left["record_key"] == "R3" and left["reason"] != before["R3"]["reason"]
    assert (left["times"], left["run_id"], left["row_key"]) == (2, before["R3"]["run_id"], "R3")
    assert abs(left["last_seen"] - ten_days_ago) < timedelta(seconds=1)
    assert site.replay().examined == 1 and site.entries() == {"R3": left}


def test_a_replay_interrupted_with_ctrl_c_is_not_recorded_as_a_success(
    tmp_path: Path, sqlite_url: str, upstream: Upstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C after a page's write committed, before its entries were settled: the audit trail
    (the runs table, trigger ``replay``) recorded the replay as a success."""
    site = Site(tmp_path, sqlite_url, upstream)
    try:
        upstream.serve(record("R1", BAD))
        site.sync()
        site.relax()

        def interrupted(*_args: object) -> None:
            raise KeyboardInterrupt

        with monkeypatch.context() as patch, pytest.raises(KeyboardInterrupt):
            patch.setattr("syncd.ops.quarantine._settle", interrupted)
            site.replay()
        (run,) = [r for r in site.store.last_runs("residents") if r["trigger"] == "replay"]
        assert (run["status"], run["error"]) == ("failed", "KeyboardInterrupt")
        assert site.replay().examined == 0  # the writer removed the entry it found by key
    finally:
        site.close()


# --------------------------------------------------------------------------- redacted fields


def test_replay_of_a_hashed_key_writes_the_key_a_sync_writes(
    tmp_path: Path, db_url: str, upstream: Upstream
) -> None:
    """The key column hashes ``id`` (after ``lower``); the quarantine keeps ``id`` hashed. Replay
    must write each record under the key a sync of the clear record writes (not the hash of the
    hash: a second row), and the masked phone whose validator saw the clear number lands too."""
    site = Site(tmp_path, db_url, upstream, replace=(HASHED_KEY, CHECKED_PHONE))
    try:
        records = [record("R1", BAD), record("R2"), record("R3", BAD_TOO), record("R4", BAD)]
        upstream.serve(*records)
        assert site.sync().counts.quarantined == 3
        assert all(re.fullmatch(r"[0-9a-f]{64}", str(k)) for k in site.entries()), "stored hashed"
        # R4 as an older syncd stored it: without the hash computed from the clear id
        r4 = _entry_of(site, records[3])
        with site.engine.begin() as conn:
            forget = sa.text("UPDATE syncd_quarantine SET protected = NULL WHERE raw_hash = :h")
            conn.execute(forget, {"h": r4})
        site.relax()
        result = site.replay()
        assert (result.inserted, result.still_failing) == (2, 1)
        (left,) = site.entries().values()
        assert left["raw_hash"] == r4 and "only hashed" in left["reason"]

        app = site.app()
        mapping = compile_mapping(app.datasets["residents"], app.code_tables)
        rows = site.rows()
        for r in records[:3]:
            expected = dict(zip(mapping.columns, mapping(r), strict=True))
            got = rows[expected["resident_id"]]
            assert got["phone"] == expected["phone"] == "138****5678"
            assert got["household_size"] == r["householdSize"]
        assert len(rows) == 3, "replay wrote a row under another key"

        # a sync of the same records finds the replayed rows as it would have written them
        upstream.serve(*records[:3])
        again = site.sync()
        assert (again.counts.inserted, again.counts.updated) == (0, 0)
    finally:
        site.close()


def _entry_of(site: Site, raw: dict[str, Any]) -> str:
    app = site.app()
    mapping = compile_mapping(app.datasets["residents"], app.code_tables)
    key = row_key_function([mapping.specs["resident_id"]])(mapping.key_record(raw))
    query = sa.text("SELECT raw_hash FROM syncd_quarantine WHERE row_key = :k")
    with site.engine.connect() as conn:
        return str(conn.execute(query, {"k": key}).scalar_one())
