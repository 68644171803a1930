"""The file source: a drop folder (落地目录) of CSV, XLSX or JSONL files.

Each run:

1. lists the files matching ``pattern`` (oldest first) and takes only complete ones — with a
   marker file (``name.csv.ok``) no older than the file or, with ``complete_when: stable``,
   unmodified for ``stable_for`` — so a half-written file is never read; symbolic links are never
   followed (they go to ``failed/``). Completeness is checked again just before a file is read,
   and its size and time after: a file that changed meanwhile is left for the next run;
2. hashes each file (sha256) and skips content the ledger (``{prefix}files``) already holds,
   or that appeared twice in this run: a file dropped twice is processed once;
3. streams the records of each new file in pages of ``page_size``; the last page of a file
   carries its ledger entry as its checkpoint (:attr:`~syncd.sources.base.Page.checkpoint`),
   which the runner commits in the transaction of the batch holding the file's last record.

A file is thus in the ledger once all its rows committed, even if the run fails or is killed
later: the next run does not read it again (which would write rows a later file changed back to
this file's values), and moves it to ``processed/``. Nothing moves while the run is going. The
runner calls :meth:`FileSource.finish` once every batch committed: on success the files read are
moved to ``processed/`` with a ``name.reason.txt`` saying what happened (and recorded in the
ledger, those whose checkpoint the error limit deferred); files that could not be read go to
``failed/`` with the reason. After a failed run the files read stay in place: the next run reads
again those not in the ledger, and moves the others.
"""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import structlog

from syncd.config.model import AppConfig, DatasetConfig, FileSourceConfig
from syncd.errors import PermanentUpstreamError, TransientUpstreamError
from syncd.sources.base import Page, ReadStats, Window
from syncd.sources.files.ledger import FileLedger
from syncd.sources.files.readers import FileProblem, Inspected, inspect_file, name_text, read_records
from syncd.targets.engine import create_target_engine

__all__ = ["FileSource"]

log = structlog.get_logger(__name__)

PROCESSED = "processed"
FAILED = "failed"
REASON_SUFFIX = ".reason.txt"


@dataclass(frozen=True, slots=True)
class _Taken:
    path: Path
    sha256: str
    size: int
    records: int

    def entry(self) -> tuple[str, str, int, int]:
        """The file's ledger entry (FileLedger.record)."""
        return (self.sha256, self.path.name, self.size, self.records)


class FileSource:
    """A :class:`~syncd.sources.base.Source` reading the files dropped for one dataset."""

    def __init__(self, *, dataset: str, source: FileSourceConfig, ledger: FileLedger) -> None:
        self.name = dataset
        self.cfg = source
        self.stats = ReadStats()
        self.folder = Path(source.path)
        self._ledger = ledger
        self._taken: list[_Taken] = []
        self._skipped: list[tuple[Path, str]] = []  # duplicates → processed/
        self._recorded_before = False  # a file's content was in the ledger before this run
        self._failed: list[tuple[Path, str]] = []  # unreadable → failed/

    @classmethod
    def from_config(cls, app: AppConfig, dataset: DatasetConfig) -> FileSource:
        src = dataset.source
        if not isinstance(src, FileSourceConfig):
            raise TypeError(f"dataset {dataset.name} has a {src.type} source, not a file one")
        engine = create_target_engine(app.target.url.get_secret_value(), pool_size=1)
        ledger = FileLedger(engine, dataset.name, app.target.table_prefix)
        return cls(dataset=dataset.name, source=src, ledger=ledger)

    def __repr__(self) -> str:
        return f"FileSource({self.name}, {self.folder})"

    @property
    def snapshot_read(self) -> bool:
        """A run that took no file says nothing about deletions (snapshot delete detection), nor
        one that skipped a file recorded before: a snapshot dropped as several files, of which a
        run that failed committed some, or one of them unchanged, is not all read by this run."""
        return bool(self._taken) and not self._recorded_before

    # ------------------------------------------------------------------ discovery

    def _is_auxiliary(self, path: Path) -> bool:
        name = path.name
        return name.endswith((self.cfg.marker_suffix, REASON_SUFFIX)) or name.startswith(".")

    def _incomplete(self, path: Path, st: os.stat_result, now: float) -> str | None:
        """Why the file (as ``st`` saw it) is not known to be complete yet, or None when it is."""
        if self.cfg.complete_when == "marker":
            marker = path.with_name(path.name + self.cfg.marker_suffix)
            try:
                written = marker.lstat().st_mtime_ns
            except FileNotFoundError:
                return f"no marker {name_text(marker.name)} yet"
            if written < st.st_mtime_ns:  # left by an earlier delivery (e.g. kept by a failed run)
                return (f"the marker {name_text(marker.name)} is older than the file (the file was written "
                        "again after it): waiting for the sender to write the marker again")
            return None
        if now - st.st_mtime < self.cfg.stable_for.total_seconds():
            return f"modified less than stable_for ({self.cfg.stable_for}) ago"
        return None

    def candidates(self) -> list[Path]:
        """Complete files waiting in the folder, oldest first."""
        if not self.folder.is_dir():
            raise PermanentUpstreamError(
                f"drop folder {self.folder} does not exist or is not a folder "
                f"(source.path of dataset {self.name})"
            )
        try:  # Path.glob ignores a folder it may not list: every run would "succeed" reading nothing
            os.scandir(self.folder).close()
        except OSError as exc:
            raise PermanentUpstreamError(
                f"drop folder {self.folder} cannot be read: {exc.strerror} (source.path of dataset "
                f"{self.name}): the user syncd runs as must be able to list and enter it and to move "
                f"files out of it (e.g. give that user's group rwx on it)"
            ) from None
        now = time.time()
        found: list[tuple[float, str, Path, os.stat_result]] = []
        for path in self.folder.glob(self.cfg.pattern):
            if self._is_auxiliary(path):
                continue
            try:
                st = path.lstat()  # a link is judged as a link, never by what it points at
            except FileNotFoundError:
                continue  # moved away since the folder was listed
            if stat.S_ISLNK(st.st_mode) or stat.S_ISREG(st.st_mode):
                found.append((st.st_mtime, path.name, path, st))
        ready = []
        for _, _, path, st in sorted(found, key=lambda f: f[:2]):
            # a link is taken at once, never read: opening it fails and it goes to failed/ with the reason
            why = None if stat.S_ISLNK(st.st_mode) else self._incomplete(path, st, now)
            if why is None:
                ready.append(path)
            else:
                log.info("file.waiting", dataset=self.name, file=name_text(path.name),
                         until=self.cfg.complete_when, reason=why)
        return ready

    @staticmethod
    def _changed(path: Path, seen: os.stat_result) -> str | None:
        """Why ``path`` is no longer the file ``seen`` described (its size or time changed), or None."""
        try:
            st = path.lstat()
        except FileNotFoundError:
            return "it was removed while syncd read it"
        if (st.st_mode, st.st_size, st.st_mtime_ns) != (seen.st_mode, seen.st_size, seen.st_mtime_ns):
            return (f"it changed while syncd read it ({seen.st_size} → {st.st_size} bytes, modified "
                    f"{datetime.fromtimestamp(st.st_mtime, UTC).isoformat(timespec='seconds')})")
        return None

    # ------------------------------------------------------------------ Source protocol

    def read(self, window: Window) -> Iterator[Page]:
        del window  # a drop folder has no update-time window
        seen: dict[str, str] = {}
        for path in self.candidates():
            shown = name_text(path.name)  # a GBK name is not UTF-8: stored and logged as text
            inspected = self._inspect(path, shown)
            if inspected is None:
                continue
            st, info = inspected
            self.stats.bytes += info.size
            first = seen.get(info.sha256)
            if first is None:
                entry = self._ledger.processed(info.sha256)
                if entry is not None:
                    self._recorded_before = True
                    first = f"{entry['file_name']} at {entry['processed_at']}"
                    if entry["file_name"] == shown[:512]:
                        first += (f" ({entry['records']} records committed; a run that ended before "
                                  f"moving the file leaves it here)")
            if first is not None:
                self._skipped.append((path, f"duplicate: the same content (sha256 {info.sha256}) was "
                                            f"already processed as {first}; not read again"))
                log.info("file.duplicate", dataset=self.name, file=shown, sha256=info.sha256)
                continue
            seen[info.sha256] = shown
            log.info("file.reading", dataset=self.name, file=shown, enc=info.encoding, size=info.size)
            count = 0
            try:
                for page, last in self._pages(path, info.encoding):
                    count += len(page.records)
                    if last:  # read to its end: in the ledger once the batch of its last record commits
                        if (why := self._changed(path, st)) is not None:
                            # rows of a file being rewritten may have been written: the run must not
                            # succeed on them (nor infer snapshot deletes), nor the file enter the
                            # ledger; the next run reads the whole file again, and the rows already
                            # written are not written twice
                            raise TransientUpstreamError(
                                f"file {shown} was read, but {why}: it stays in place to be read again "
                                "whole next run, and this run fails"
                            )
                        taken = _Taken(path, info.sha256, info.size, count)
                        self._taken.append(taken)
                        page.checkpoint = partial(self._ledger.record_on, entries=[taken.entry()])
                    yield page
            except (FileProblem, OSError, UnicodeDecodeError) as exc:
                if (why := self._changed(path, st)) is not None:  # the sender's doing, not the file's
                    raise TransientUpstreamError(f"file {shown} could not be read to the end: {exc}; {why}: "
                                                 "it stays in place and the run fails") from exc
                self._fail(path, str(exc))
                raise PermanentUpstreamError(f"file {shown} could not be read to the end: {exc}; "
                                             f"it goes to {FAILED}/ and the run fails") from exc
        self.stats.complete = True

    def _inspect(self, path: Path, shown: str) -> tuple[os.stat_result, Inspected] | None:
        """The file's size and time, hash and encoding, checked again just before reading (the marker
        may be gone, the file written again since it was listed); None when it is not taken now."""
        try:
            st = path.lstat()
        except FileNotFoundError:
            return None  # moved away meanwhile
        why = None if stat.S_ISLNK(st.st_mode) else self._incomplete(path, st, time.time())
        if why is None:
            try:
                info = inspect_file(path, self.cfg)
            except (FileProblem, OSError) as exc:
                if (why := self._changed(path, st)) is None:
                    self._fail(path, str(exc))
                    return None
            else:
                if (why := self._changed(path, st)) is None:  # what was hashed is what is read
                    return st, info
        log.info("file.waiting", dataset=self.name, file=shown, until=self.cfg.complete_when, reason=why)
        return None

    def _pages(self, path: Path, encoding: str | None) -> Iterator[tuple[Page, bool]]:
        """The file's pages, each with whether it is the last (a file of no record: one empty page)."""
        size = self.cfg.page_size
        records: list[dict[str, Any]] = []
        rows = read_records(path, self.cfg, encoding)

        def following() -> dict[str, Any] | None:
            try:
                return next(rows, None)
            except (FileProblem, OSError, UnicodeDecodeError):
                raise
            except Exception as exc:
                # csv.Error (a cell over the field size limit), a damaged XLSX part (ParseError) …
                raise FileProblem(f"{type(exc).__name__}: {exc}") from exc

        record = following()
        if record is None:
            yield self._page([]), True
        while record is not None:
            records.append(record)
            record = following()  # read one ahead: a page knows whether it is the file's last
            if record is None or len(records) >= size:
                yield self._page(records), record is None
                records = []

    def _page(self, records: list[dict[str, Any]]) -> Page:
        self.stats.pages += 1
        self.stats.records += len(records)
        return Page(records=records, number=self.stats.pages)

    def _fail(self, path: Path, reason: str) -> None:
        log.warning("file.failed", dataset=self.name, file=name_text(path.name), reason=reason)
        self._failed.append((path, reason))

    def update_time(self, record: dict[str, Any]) -> datetime | None:
        return None

    def finish(self, success: bool) -> None:
        """Called by the runner after the run ended; ``success`` means every batch committed."""
        for path, reason in self._failed:
            _move(path, self.folder / FAILED, reason, self.cfg.marker_suffix)
        if not success:
            if self._taken:
                log.info("file.kept", dataset=self.name, files=[t.path.name for t in self._taken],
                         reason="the run did not succeed: the next run moves to processed/ the files whose "
                                "records all committed (they are in the ledger) and reads the others again")
            return
        # the files whose checkpoint the error limit deferred (the run ended within it after all)
        self._ledger.record([t.entry() for t in self._taken])
        for t in self._taken:
            _move(t.path, self.folder / PROCESSED, f"processed: {t.records} records, sha256 {t.sha256}",
                  self.cfg.marker_suffix)
        for path, reason in self._skipped:
            _move(path, self.folder / PROCESSED, reason, self.cfg.marker_suffix)

    def close(self) -> None:
        self._ledger.close()


def _move(path: Path, folder: Path, reason: str, marker_suffix: str) -> None:
    """Move ``path`` (and its marker) into ``folder`` with ``name.reason.txt`` beside it."""
    folder.mkdir(exist_ok=True)
    target = folder / path.name
    if target.exists():  # a same-named file was moved before: keep both
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%f")
        target = folder / f"{path.stem}.{stamp}{path.suffix}"
    when = datetime.now(UTC).isoformat(timespec="seconds")
    target.with_name(target.name + REASON_SUFFIX).write_text(f"{when} {reason}\n", encoding="utf-8",
                                                             errors="backslashreplace")
    path.replace(target)
    marker = path.with_name(path.name + marker_suffix)
    if marker.exists():
        marker.replace(target.with_name(target.name + marker_suffix))
    log.info("file.moved", file=name_text(path.name), to=name_text(str(target)), reason=reason)
