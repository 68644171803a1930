"""The key definition of a dataset, remembered so that a changed key is refused, not flooded in.

``row_state`` holds each row's key as the configuration made it (``row_key``). When an operator
changes how keys are made — adds or removes a ``target.key`` column, changes a key column's
``source``, transforms (a ``hash`` salt included), type or decimal scale, or a code table a key
column looks up — the next run computes a different key for every record: every record would be
an insert (the old rows stay beside the new ones; an incremental dataset never removes them, a
snapshot dataset deletes and re-inserts everything). So the first run records
:func:`key_definition` per dataset (``{prefix}key_defs``) and every later run, plan and
quarantine replay compares it first (:func:`check_key_definition`): on a difference the dataset
is refused with :class:`KeyDefinitionChanged`, naming the file, the line of ``target.key`` and
the two ways out — revert the change, or ``syncd reset DATASET`` (the next run loads everything
again under the new key).

The target table is part of it too: rows synced into table A and remembered in ``row_state``
are not in table B, and a run into B would write only the records that changed upstream. When
``target.table`` changed, the dataset is refused the same way, unless the old table is gone and
the new one holds the rows (renamed in the database, the rows with it: at least as many rows as
``row_state`` has keys of the dataset, and not none; recorded, ``state.table_renamed``). Where
the database compares table names without regard to case (SQLite always; MariaDB/MySQL with
``lower_case_table_names`` other than 0), a change of ``target.table``'s letter case alone names
the same table and is no change (PostgreSQL: syncd quotes its names, so ``ResidentInfo`` and
``residentinfo`` are two tables). A target table that no longer exists while ``row_state``
remembers rows synced into it (dropped) is refused too: created again empty, it would only ever
get the records that change upstream.

The definition is JSON of the table name and short digests (one of the key column list, one per
key column); a salt only ever enters a digest, never the text. A transform enters it as it runs,
its options' defaults filled in (:func:`syncd.mapping.transforms.with_defaults`): writing a
default out, or leaving it out, is the same definition.

A code table a key column looks up with ``unknown: quarantine`` (or ``null`` with no ``default``
after it: a key is never NULL) made no row for a code it has no entry for: adding an entry makes
only new rows, from records that were quarantined. Such a table is stored as one short digest per
entry (``entries``, by ``column.transform index``) instead of inside the column's digest: an
added entry passes (the definition is recorded again); a removed or changed one is a key change,
and so is an added entry that takes a value another entry matched before (`` 1`` beside ``1``:
the look-up tries the value as it is before stripping it). With ``unknown: keep`` the code itself
became the key of a code without an entry, so any change of the table is a key change.

Non-key columns, validators, lengths and ``nullable`` are not in it: they do not change a key
(other mapping changes re-map through the mapping fingerprint,
:attr:`syncd.mapping.CompiledMapping.fingerprint`). A database written by an earlier syncd has no
definition stored: the next run records it and goes on.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any, Protocol

import structlog
from pydantic import SecretStr

from syncd.config.loader import config_issue
from syncd.config.model import ColumnConfig, DatasetConfig, TransformConfig
from syncd.config.positions import Position, parse_yaml
from syncd.errors import ConfigIssue, SyncdError
from syncd.mapping.base import STRIP_CHARS
from syncd.mapping.transforms import with_defaults

__all__ = ["KeyDefinitionChanged", "KeyStore", "check_key_definition", "key_definition"]

log = structlog.get_logger(__name__)

SCHEME = 1
"""Bumped only when the digests below are computed differently (a stored older scheme is then
re-recorded, never refused)."""

ENTRY_DIGEST_BYTES = 4
"""Of one code-table entry (``entries``): 8 hex characters each, a table of 5,000 entries in 40,000;
a removed entry goes unnoticed only if another entry shares its digest (about 1 in 860,000 then)."""


class KeyDefinitionChanged(SyncdError):
    """The dataset's key is made differently from when its rows were synced: the run is refused."""

    def __init__(self, issue: ConfigIssue) -> None:
        self.issue = issue
        super().__init__(str(issue))


def _plain(value: Any) -> Any:
    if isinstance(value, SecretStr):
        return value.get_secret_value()  # into a digest only
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def _digest(value: Any) -> str:
    text = json.dumps(_plain(value), sort_keys=True, default=repr, ensure_ascii=False)
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).hexdigest()


def _entries_only(spec: ColumnConfig, at: int, transform: TransformConfig) -> bool:
    """Whether only the entries the code table of transform ``at`` has had matter to the keys
    of the rows synced: a value without an entry never got a row (``unknown: quarantine``; or
    ``null`` with no ``default`` after it: a key is never NULL, the record was quarantined), so
    an added entry makes only new rows. ``unknown: keep`` made the value itself the key: an added
    entry changes the key of rows synced."""
    if transform.unknown == "quarantine":
        return True
    return transform.unknown == "null" and not any(t.type == "default" for t in spec.transforms[at + 1 :])


def _entry_tables(
    dataset: DatasetConfig, code_tables: Mapping[str, Mapping[str, str]]
) -> dict[str, Mapping[str, str]]:
    """The code tables of key columns whose entries are compared one by one (see
    :func:`_entries_only`), by place: ``column.transform index``."""
    found: dict[str, Mapping[str, str]] = {}
    for name in dataset.target.key:
        spec = dataset.columns[name]
        for at, given in enumerate(spec.transforms):
            t = with_defaults(given)
            if t.type != "code_table" or not _entries_only(spec, at, t):
                continue
            table = code_tables.get(t.table) if isinstance(t.table, str) else t.table
            if table is not None:
                found[f"{name}.{at}"] = table
    return found


def _entry_digest(code: str, value: str) -> str:
    text = json.dumps([code, value], ensure_ascii=False)
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=ENTRY_DIGEST_BYTES).hexdigest()


def _entry_digests(table: Mapping[str, str]) -> str:
    """The digests of a code table's entries, sorted and joined (fixed width, no separator)."""
    return "".join(sorted({_entry_digest(str(k), str(v)) for k, v in table.items()}))


def _split_digests(text: Any) -> set[str] | None:
    width = 2 * ENTRY_DIGEST_BYTES
    if not isinstance(text, str) or len(text) % width:
        return None
    return {text[i : i + width] for i in range(0, len(text), width)}


def _entries_kept(stored: Any, table: Mapping[str, str]) -> bool:
    """Whether ``table`` still maps every value as the stored entries did: none of them removed
    or changed, and no entry added that takes a value the stored ones matched. The look-up
    tries the value as it is, then stripped (:mod:`syncd.mapping.transforms`): an added `` 1``
    would take the value `` 1`` that entry ``1`` mapped before."""
    old = _split_digests(stored)
    if old is None:
        return False
    entries = {str(k): str(v) for k, v in table.items()}
    new = {_entry_digest(k, v): k for k, v in entries.items()}
    if not old <= new.keys():
        return False  # an entry was removed or maps to another value
    for digest, code in new.items():
        bare = code.strip(STRIP_CHARS)
        if digest in old or bare == code or bare not in entries:
            continue
        if entries[bare] != entries[code] and _entry_digest(bare, entries[bare]) in old:
            return False
    return True


def _column_part(
    name: str, spec: ColumnConfig, code_tables: Mapping[str, Mapping[str, str]], by_entry: Collection[str]
) -> dict[str, Any]:
    """What of a key column decides its key values: where the value comes from, how it is
    transformed, and how it is normalised (type; scale for decimals; the bool words). The
    transforms as they run, their options' defaults filled in: writing a default out (``hash``
    ``algorithm: sha256``, ``code_table`` ``unknown: keep``) is no change. A code table whose
    entries are compared one by one (``by_entry``: its place) is left out: they are stored
    beside (``entries``)."""
    transforms = []
    named: set[str] = set()
    for at, t in enumerate(spec.transforms):
        dump = with_defaults(t).model_dump(exclude_none=True)
        if t.type == "code_table":
            if f"{name}.{at}" in by_entry:
                dump["table"] = {"entries": t.table if isinstance(t.table, str) else None}
            elif isinstance(t.table, str):
                named.add(t.table)
        transforms.append(dump)
    part: dict[str, Any] = {"source": spec.source, "type": spec.type, "transforms": transforms}
    if named:
        part["code_tables"] = {table: code_tables.get(table) for table in sorted(named)}
    if spec.type == "decimal":
        part["scale"] = spec.scale
    if spec.type == "bool":
        part["bool"] = [spec.true_values, spec.false_values]
    return part


def key_definition(dataset: DatasetConfig, code_tables: Mapping[str, Mapping[str, str]]) -> str:
    """The dataset's key definition as stored in ``key_defs`` (see the module docstring)."""
    by_entry = _entry_tables(dataset, code_tables)
    columns = {
        k: _digest(_column_part(k, dataset.columns[k], code_tables, by_entry)) for k in dataset.target.key
    }
    definition: dict[str, Any] = {
        "v": SCHEME,
        "table": dataset.target.table,
        "key": _digest(list(dataset.target.key)),
        "columns": columns,
    }
    if by_entry:
        definition["entries"] = {place: _entry_digests(table) for place, table in by_entry.items()}
    return json.dumps(definition, sort_keys=True)


def _parsed(stored: str | None) -> dict[str, Any] | None:
    """A stored definition of this scheme as a dict; None when there is none, or it is of
    another scheme (re-recorded, never refused)."""
    if stored is None:
        return None
    try:
        found = json.loads(stored)
    except ValueError:
        return None
    return found if isinstance(found, dict) and found.get("v") == SCHEME else None


def _changed(
    old: dict[str, Any], current: str, by_entry: Mapping[str, Mapping[str, str]]
) -> list[str]:
    """What differs between two definitions, for the operator: ``target.key`` and/or the key
    columns whose definition changed; a code table compared by entry (``by_entry``, the current
    tables by place) differs only when :func:`_entries_kept` says so. Empty when nothing that
    makes keys differs (``old`` is the stored one, :func:`_parsed`)."""
    new = json.loads(current)
    if old.get("key") != new["key"]:
        return ["target.key (the key columns)"]
    old_columns = old.get("columns") or {}
    changed = {name for name, digest in new["columns"].items() if old_columns.get(name) != digest}
    old_entries = old.get("entries") or {}
    for place in set(old_entries) | set(by_entry):
        table = by_entry.get(place)
        if table is None or not _entries_kept(old_entries.get(place), table):
            changed.add(place.rpartition(".")[0])
    return [f"columns.{name}" for name in new["columns"] if name in changed]


def _table_refusal(dataset: DatasetConfig, old_table: str, store: KeyStore) -> KeyDefinitionChanged:
    """``target.table`` names another table than the one the dataset's rows were synced into."""
    name, table, table_prefix = dataset.name, dataset.target.table, store.prefix
    rename = f"ALTER TABLE {store.quote(old_table)} RENAME TO {store.quote(table)}"
    message = (
        f"dataset {name}: target.table is now {table}, but its rows were synced into table {old_table} "
        f"and {table_prefix}row_state remembers them there: records that did not change upstream would "
        f"never be written into {table}, which would stay incomplete. The dataset does not run until "
        f"either: revert target.table to {old_table}; or, to keep the rows, rename the table in the "
        f"database ({rename}; syncd then goes on where it was); or "
        f"load {table} from scratch with `syncd reset {name} --yes` (forgets the row state and the "
        f"watermark; table {old_table} is left as it is)"
    )
    return _table_issue(dataset, message)


def _table_issue(dataset: DatasetConfig, message: str) -> KeyDefinitionChanged:
    """A refusal at ``target.table`` of the dataset's file."""
    unnamed = f"the file of dataset {dataset.name}"
    path = ("target", "table")
    issue = config_issue(dataset.source_file, path, message, unnamed=unnamed, on_key=True)
    return KeyDefinitionChanged(issue)


def _positions(file: str, changed: list[str]) -> tuple[Position, dict[str, int]]:
    """Where ``target.key`` is written in ``file``, and the line of each changed column."""
    try:
        doc = parse_yaml(Path(file).read_text(encoding="utf-8-sig"), file)
    except (OSError, UnicodeError, SyncdError):
        return Position(0, 0), {}
    lines = {}
    for item in changed:
        if item.startswith("columns."):
            lines[item] = doc.position(("columns", item.removeprefix("columns.")), on_key=True).line
    return doc.position(("target", "key"), on_key=True), lines


def _refusal(dataset: DatasetConfig, changed: list[str], table_prefix: str) -> KeyDefinitionChanged:
    file = dataset.source_file or f"the file of dataset {dataset.name}"
    at, lines = _positions(dataset.source_file, changed) if dataset.source_file else (Position(0, 0), {})
    what = ", ".join(f"{c} (line {lines[c]})" if lines.get(c) else c for c in changed) or "the key"
    name = dataset.name
    message = (
        f"dataset {name}: its key is made differently from when its rows were synced ({what} changed). "
        f"{table_prefix}row_state holds the keys made the old way, so every record would look new: an "
        f"insert for every row, the old rows left beside the new ones in table {dataset.target.table}. "
        f"The dataset does not run until either: revert the change; or start it over under the new key "
        f"with `syncd reset {name} --yes` (forgets its row state and watermark so that the next run "
        f"loads everything again; add --truncate-target to empty table {dataset.target.table} as well)"
    )
    return KeyDefinitionChanged(ConfigIssue(file, at.line, at.column, "target.key", message))


class KeyStore(Protocol):
    """What :func:`check_key_definition` needs of :class:`~syncd.targets.state.StateStore`."""

    @property
    def prefix(self) -> str: ...

    def quote(self, name: str) -> str: ...
    def key_definition(self, dataset: str) -> str | None: ...
    def record_key_definition(self, dataset: str, definition: str) -> None: ...
    def has_row_state(self, dataset: str) -> bool: ...
    def has_table(self, name: str) -> bool: ...
    def same_table(self, a: str, b: str) -> bool: ...
    def table_rows(self, name: str) -> int | None: ...
    def row_state_keys(self, dataset: str) -> int: ...
    def get_watermark(self, dataset: str) -> str | None: ...


def check_key_definition(
    store: KeyStore,
    dataset: DatasetConfig,
    code_tables: Mapping[str, Mapping[str, str]],
    *,
    record: bool = True,
) -> None:
    """Raise :class:`KeyDefinitionChanged` when the stored key definition of ``dataset`` differs
    from its configuration while rows made under the stored one remain (row state or a
    watermark); otherwise, when ``record``, store the current one (a first run, a database of
    an earlier syncd, a dataset just reset). ``record=False``: a plan,
    which writes nothing."""
    current = key_definition(dataset, code_tables)
    stored = store.key_definition(dataset.name)
    old = _parsed(stored)
    name = dataset.name
    table = dataset.target.table
    old_table = old.get("table") if old is not None else None
    old_table = old_table if isinstance(old_table, str) else None
    if (old_table is None or store.same_table(old_table, table)) and not store.has_table(table):
        # a changed target.table is refused below (the table message)
        keys = store.row_state_keys(name)
        if keys:
            raise _missing_table_refusal(dataset, keys, store.prefix)
    if stored == current:
        return
    renamed = respelled = False
    if old is not None and (store.has_row_state(name) or store.get_watermark(name) is not None):
        if old_table is not None and old_table != table:
            # only the letter case changed, in a database where that names the same table (SQLite;
            # MariaDB/MySQL with lower_case_table_names): the rows are where they were
            respelled = store.same_table(old_table, table)
            # the table was renamed in the database (the rows went with it): the row state still
            # describes them; anything else leaves the new table without the rows synced before
            renamed = not respelled and not store.has_table(old_table) and _holds_the_rows(store, dataset)
            if not (renamed or respelled):
                raise _table_refusal(dataset, old_table, store)
        # what else differs: the key columns, or the entries of a code table (added ones pass)
        changed = _changed(old, current, _entry_tables(dataset, code_tables))
        if changed:
            raise _refusal(dataset, changed, store.prefix)
    if record:
        store.record_key_definition(name, current)
        if renamed:
            log.warning("state.table_renamed", dataset=name, old_table=old_table, table=table)
        else:
            log.info("state.key_definition_recorded", dataset=name, replaced=stored is not None)


def _holds_the_rows(store: KeyStore, dataset: DatasetConfig) -> bool:
    """Whether the target table holds the rows ``row_state`` remembers: at least one row per key
    (``row_state`` has one per live row; soft-deleted rows stay in the table), and not none."""
    rows = store.table_rows(dataset.target.table)
    return rows is not None and rows > 0 and rows >= store.row_state_keys(dataset.name)


def _missing_table_refusal(dataset: DatasetConfig, keys: int, table_prefix: str) -> KeyDefinitionChanged:
    """The target table does not exist, yet ``row_state`` remembers rows synced into it."""
    name, table = dataset.name, dataset.target.table
    message = (
        f"dataset {name}: table {table} does not exist but {table_prefix}row_state remembers {keys} rows "
        f"synced into it: restore the table (or rename it back), or `syncd reset {name} --yes` to load "
        f"it again (created again empty, it would only get the records that change upstream)"
    )
    return _table_issue(dataset, message)
