"""The file ledger: which dropped files (by sha256 of their content) were processed, per dataset.

``{prefix}files`` lives in the target database beside syncd's other state tables. A file is
recorded in the transaction of the batch that commits its last record (the runner commits the
file source's page checkpoint with it, :meth:`FileLedger.record_on`), so a failure or a crash
after that never reads it again, and one before it reads again only that file (the row hashes
make the repeat free). Reading again a file whose rows a later file changed would write them back
to older values. A file whose content was recorded before is not read again, whatever its name.
``syncd reset`` forgets a dataset's entries (:meth:`StateStore.reset_dataset`).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from syncd.errors import TargetError
from syncd.sources.files.readers import name_text
from syncd.targets.dialects import upsert_statement
from syncd.targets.engine import describe_url, write_engine
from syncd.targets.schema import MYSQL_TABLE_OPTIONS, create_tables
from syncd.targets.sqltypes import UtcDateTime, exact_text

__all__ = ["FileLedger", "files_table"]


def files_table(metadata: sa.MetaData, prefix: str = "syncd_") -> sa.Table:
    """``{prefix}files``: (dataset, sha256) → the file's name, size and records when processed."""
    return sa.Table(
        f"{prefix}files",
        metadata,
        sa.Column("dataset", exact_text(64), primary_key=True),
        sa.Column("sha256", sa.CHAR(64), primary_key=True),
        sa.Column("file_name", sa.String(512), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("records", sa.BigInteger(), nullable=False),
        sa.Column("processed_at", UtcDateTime(), nullable=False),
        **MYSQL_TABLE_OPTIONS,
    )


class FileLedger:
    """Reads and records processed files of one dataset."""

    def __init__(self, engine: sa.Engine, dataset: str, prefix: str = "syncd_") -> None:
        self._engine = engine
        self._dataset = dataset
        self.table = files_table(sa.MetaData(), prefix)
        self._ready = False

    def _ensure(self) -> None:
        if not self._ready:
            create_tables(self._engine, [self.table])
            self._ready = True

    def processed(self, sha256: str) -> dict[str, Any] | None:
        """The ledger entry of content ``sha256``, or None when it was never processed."""
        self._ensure()
        t = self.table
        query = sa.select(t).where(t.c.dataset == self._dataset, t.c.sha256 == sha256)
        try:
            with self._engine.connect() as conn:
                row = conn.execute(query).mappings().first()
        except sa.exc.SQLAlchemyError as exc:
            raise TargetError(f"reading {t.name} in {describe_url(self._engine.url)} failed: {exc}") from exc
        return None if row is None else dict(row)

    def record(self, entries: list[tuple[str, str, int, int]]) -> None:
        """Record (sha256, file name, size, records) entries as processed, in one transaction of
        their own; an entry already recorded keeps its time."""
        if not entries:
            return
        self._ensure()
        try:
            with write_engine(self._engine).begin() as conn:
                self.record_on(conn, entries)
        except sa.exc.SQLAlchemyError as exc:
            where = describe_url(self._engine.url)
            raise TargetError(f"recording processed files in {where} failed: {exc}") from exc

    def record_on(self, conn: sa.Connection, entries: list[tuple[str, str, int, int]]) -> None:
        """Record the entries on ``conn``, in the caller's transaction (the batch that committed a
        file's last record); an entry already recorded keeps its time."""
        now = datetime.now(UTC)
        rows = [
            {"dataset": self._dataset, "sha256": sha, "file_name": name_text(name)[:512], "size": size,
             "records": n, "processed_at": now}
            for sha, name, size, n in entries
        ]
        conn.execute(upsert_statement(conn, self.table, ("dataset", "sha256"), []), rows)

    def close(self) -> None:
        self._engine.dispose()
