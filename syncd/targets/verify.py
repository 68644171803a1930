"""Check an existing target table against the mapping, and say exactly what to fix.

The table found in the database (reflected) must have every mapped column with a compatible
type, the key columns as its primary key or a unique key, and no extra NOT NULL column without
a default (syncd could not insert rows). Every problem is listed, each with a statement that
fixes it, plus the alternative of letting syncd create a new table.

:func:`key_columns` reads how the database compares a table's key columns (MariaDB/MySQL: their
collation; a fixed-length CHAR type on MariaDB/MySQL and PostgreSQL): syncd warns about keys that
do not compare exactly, with the ``ALTER TABLE`` that fixes them.

:func:`column_limits` reads what an existing table's columns hold where that is less than the
mapping's types say (a VARCHAR(10) for a ``string`` without ``length``, a 32-bit INTEGER for
``int``): the casts take them, so a value too big for its column is quarantined, not a batch that
fails on every run.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.schema import CreateColumn, CreateTable

from syncd.config.model import ColumnConfig, DatasetConfig
from syncd.errors import TargetError
from syncd.mapping.casts import KEY_TEXT_LENGTH, ColumnLimit
from syncd.targets.engine import describe_url, dialect_family
from syncd.targets.sqltypes import declared_type, key_collation_problem, mysql_key_collation

__all__ = [
    "KeyColumn",
    "TargetSchemaError",
    "column_limits",
    "incompatibility",
    "key_columns",
    "missing_table_error",
    "verify_target_table",
]


class TargetSchemaError(TargetError):
    """The target table does not fit the mapping. ``missing``, ``incompatible`` and
    ``key_problem`` hold the individual findings; the message lists them and the fixes."""

    def __init__(
        self,
        message: str,
        *,
        table: str,
        missing: Sequence[str] = (),
        incompatible: Sequence[str] = (),
        key_problem: str | None = None,
    ) -> None:
        self.table = table
        self.missing = tuple(missing)
        self.incompatible = tuple(incompatible)
        self.key_problem = key_problem
        super().__init__(message)


def _sql_type(type_: sa.types.TypeEngine[Any], dialect: sa.Dialect) -> str:
    try:
        return str(type_.compile(dialect=dialect))
    except Exception:  # noqa: BLE001 - a reflected type the dialect cannot render: show its class
        return type(type_).__name__.upper()


def _string(spec: ColumnConfig, actual: sa.types.TypeEngine[Any]) -> str | None:
    if not isinstance(actual, sa.String):
        return "not a text type"
    if spec.length is not None and actual.length is not None and actual.length < spec.length:
        return f"shorter than the declared length {spec.length}"
    return None


def _int(spec: ColumnConfig, actual: sa.types.TypeEngine[Any]) -> str | None:
    if isinstance(actual, sa.Integer):
        return None
    if isinstance(actual, sa.Numeric) and not isinstance(actual, sa.Float) and actual.scale == 0:
        return None
    return "not an integer type"


def _decimal(spec: ColumnConfig, actual: sa.types.TypeEngine[Any]) -> str | None:
    if isinstance(actual, sa.Integer) and spec.scale == 0:
        return None
    if isinstance(actual, sa.Float) or not isinstance(actual, sa.Numeric):
        return "not an exact decimal type"
    if actual.scale is not None and actual.scale < spec.scale:
        return f"has fewer decimal places ({actual.scale}) than declared ({spec.scale})"
    digits = None if actual.precision is None else actual.precision - (actual.scale or 0)
    if digits is not None and digits < spec.precision - spec.scale:
        return f"has fewer integer digits ({digits}) than declared ({spec.precision - spec.scale})"
    return None


def _date(spec: ColumnConfig, actual: sa.types.TypeEngine[Any]) -> str | None:
    return None if isinstance(actual, sa.Date) else "not a DATE type"


def _datetime(spec: ColumnConfig, actual: sa.types.TypeEngine[Any]) -> str | None:
    if not isinstance(actual, sa.DateTime):
        return "not a timestamp type"
    if actual.timezone:
        return "a timestamp WITH time zone, while syncd writes local times without a zone"
    return None


def _bool(spec: ColumnConfig, actual: sa.types.TypeEngine[Any]) -> str | None:
    return None if isinstance(actual, sa.Boolean | sa.Integer) else "not a boolean or integer type"


_CHECKS: dict[str, Callable[[ColumnConfig, sa.types.TypeEngine[Any]], str | None]] = {
    "string": _string,
    "int": _int,
    "decimal": _decimal,
    "date": _date,
    "datetime": _datetime,
    "bool": _bool,
}


def incompatibility(spec: ColumnConfig, actual: sa.types.TypeEngine[Any]) -> str | None:
    """Why a database column of type ``actual`` cannot hold the mapped column, or None."""
    if isinstance(actual, sa.types.NullType):
        return "a type syncd does not recognise"
    return _CHECKS[spec.type](spec, actual)


def missing_table_error(engine: sa.Engine, table: sa.Table, dataset: DatasetConfig) -> TargetSchemaError:
    ddl = str(CreateTable(table).compile(dialect=engine.dialect)).strip()
    return TargetSchemaError(
        f"dataset {dataset.name}: table {table.name} does not exist in {describe_url(engine.url)} and "
        f"target.create is false. Create it, for example with:\n{ddl};\n"
        "or set target.create: true and syncd creates it.",
        table=table.name,
    )


@dataclass(slots=True)
class _Findings:
    missing: list[str] = field(default_factory=list)
    incompatible: list[str] = field(default_factory=list)
    key_problem: str | None = None
    fixes: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.missing or self.incompatible or self.key_problem)


@dataclass(slots=True)
class _Reflected:
    engine: sa.Engine
    name: str
    columns: dict[str, Any]
    pk: tuple[str, ...]

    def uniques(self) -> list[tuple[str, ...]]:
        """The unique constraints' and unique indexes' columns: read only when the primary key is
        not the mapping's key (two catalogue reads a run saved in the usual case)."""
        with _quiet_reflection():
            name, inspector = self.name, sa.inspect(self.engine)
            found = [tuple(u["column_names"]) for u in inspector.get_unique_constraints(name)]
            indexes = inspector.get_indexes(name)
            found += [tuple(str(c) for c in i["column_names"]) for i in indexes if i.get("unique")]
        return found


@contextmanager
def _quiet_reflection() -> Iterator[None]:
    """Reflect without SQLAlchemy's warnings: a type it does not know becomes NullType, and the
    column checks say what is wrong with it."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", sa.exc.SAWarning)
        yield


def _reflect(engine: sa.Engine, name: str) -> _Reflected:
    if dialect_family(engine) == "postgresql":
        found = _reflect_postgresql(engine, name)
        if found is not None:
            return found
    with _quiet_reflection():
        inspector = sa.inspect(engine)
        if engine.dialect.name == "sqlite":
            name = _sqlite_spelling(inspector, name)
        columns = {c["name"]: c for c in inspector.get_columns(name)}
        pk = tuple(inspector.get_pk_constraint(name).get("constrained_columns") or ())
    return _Reflected(engine, name, columns, pk)


def _sqlite_spelling(inspector: sa.Inspector, name: str) -> str:
    """The name table ``name`` was created under: SQLite finds Resident_Info as resident_info, but
    SQLAlchemy reads its primary key by the exact name (``sqlite_master``: NoSuchTableError)."""
    names = inspector.get_table_names()
    if name in names:
        return name
    return next((n for n in names if n.lower() == name.lower()), name)


# PostgreSQL: the table's columns and primary key in one catalogue query, instead of SQLAlchemy's
# reflection, which builds and compiles large catalogue queries (domains, enums, columns with
# identity and default subqueries, constraints) the first time a process reflects: 45-55 ms of a
# fresh process's run (``syncd sync``; a re-sync of 1,000 changed rows takes ~0.2 s) against
# 1-5 ms. Only what the checks here read is taken: name, type, NOT NULL, whether there is a
# default, the primary key's columns in key order. The relation is found as an unqualified name
# is (search_path), among the kinds SQLAlchemy reflects.
_PG_COLUMNS = sa.text(
    "SELECT a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull, a.atthasdef,"
    " a.attidentity <> '' OR a.attgenerated <> '',"
    " CASE WHEN a.attcollation <> 0 AND a.attcollation <> t.typcollation THEN"
    " (SELECT collname FROM pg_catalog.pg_collation WHERE oid = a.attcollation) END,"
    " (SELECT array_position(i.indkey::int2[], a.attnum) FROM pg_catalog.pg_index i"
    " WHERE i.indrelid = a.attrelid AND i.indisprimary)"
    " FROM pg_catalog.pg_attribute a"
    " JOIN pg_catalog.pg_class c ON c.oid = a.attrelid AND c.relkind IN ('r', 'p', 'f', 'v', 'm')"
    " JOIN pg_catalog.pg_type t ON t.oid = a.atttypid"
    " WHERE a.attrelid = to_regclass(quote_ident(:table)) AND a.attnum > 0 AND NOT a.attisdropped"
    " ORDER BY a.attnum"
)
# the types syncd's checks tell apart, as format_type() names them, and the SQLAlchemy type
# reflection would give (tests/test_targets_schema.py compares the two); any other type (arrays,
# domains, enums, time, json, …) and identity or generated columns take SQLAlchemy's reflection
_PG_PLAIN_TYPES: dict[str, Callable[[], sa.types.TypeEngine[Any]]] = {
    "text": postgresql.TEXT,
    "smallint": postgresql.SMALLINT,
    "integer": postgresql.INTEGER,
    "bigint": postgresql.BIGINT,
    "real": postgresql.REAL,
    "double precision": lambda: postgresql.DOUBLE_PRECISION(53),
    "date": postgresql.DATE,
    "boolean": postgresql.BOOLEAN,
    "numeric": postgresql.NUMERIC,
}
_PG_TYPE = re.compile(
    r"timestamp(?:\((?P<precision>\d+)\))? (?P<zone>with|without) time zone"
    r"|numeric\((?P<digits>\d+),(?P<scale>\d+)\)"
    r"|(?P<text>character varying|character)(?:\((?P<length>\d+)\))?"
)


def _pg_type(text: str, collation: str | None) -> sa.types.TypeEngine[Any] | None:
    """The SQLAlchemy type of a ``format_type()`` text, or None for a type left to SQLAlchemy."""
    plain = _PG_PLAIN_TYPES.get(text)
    if plain is not None:
        return plain() if text != "text" or collation is None else postgresql.TEXT(collation=collation)
    match = _PG_TYPE.fullmatch(text)
    if match is None:
        return None
    if match["zone"]:
        precision = match["precision"]
        return postgresql.TIMESTAMP(
            timezone=match["zone"] == "with", precision=None if precision is None else int(precision)
        )
    if match["digits"]:
        return postgresql.NUMERIC(int(match["digits"]), int(match["scale"]))
    string = postgresql.VARCHAR if match["text"] == "character varying" else postgresql.CHAR
    length = match["length"]
    return string(None if length is None else int(length), collation=collation)


def _reflect_postgresql(engine: sa.Engine, name: str) -> _Reflected | None:
    """The table as :func:`_reflect` reads it, or None where SQLAlchemy's reflection must:
    a column of another type, an identity or generated column, no such relation, or a catalogue
    this query cannot read."""
    try:
        with engine.connect() as conn:
            rows = conn.execute(_PG_COLUMNS, {"table": name}).all()
    except sa.exc.DBAPIError:
        return None
    columns: dict[str, Any] = {}
    pk: list[tuple[int, str]] = []
    for column, type_text, not_null, has_default, special, collation, pk_position in rows:
        type_ = None if special else _pg_type(type_text, collation)
        if type_ is None:
            return None
        columns[column] = {
            "name": column,
            "type": type_,
            "nullable": not not_null,
            "default": "" if has_default else None,  # the checks ask only whether there is one
            "autoincrement": False,
        }
        if pk_position is not None:
            pk.append((pk_position, column))
    if not columns:
        return None
    return _Reflected(engine, name, columns, tuple(column for _, column in sorted(pk)))


def _alter_fix(
    engine: sa.Engine, table: sa.Table, column: sa.Column[Any], *, retype: bool, drop_not_null: bool
) -> list[str]:
    dialect, family = engine.dialect, dialect_family(engine)
    prep = dialect.identifier_preparer
    qtable, qcol = prep.quote(table.name), prep.quote(column.name)
    if family == "postgresql":
        fixes = (
            [f"ALTER TABLE {qtable} ALTER COLUMN {qcol} TYPE {_sql_type(column.type, dialect)};"]
            if retype
            else []
        )
        if drop_not_null:
            fixes.append(f"ALTER TABLE {qtable} ALTER COLUMN {qcol} DROP NOT NULL;")
        return fixes
    if family == "mysql":
        return [f"ALTER TABLE {qtable} MODIFY COLUMN {CreateColumn(column).compile(dialect=dialect)};"]
    return [f"-- SQLite cannot change the type of {qcol}: rebuild {qtable} (see below)"]


def _check_columns(
    engine: sa.Engine, table: sa.Table, dataset: DatasetConfig, db: _Reflected, found: _Findings
) -> None:
    dialect = engine.dialect
    qtable = dialect.identifier_preparer.quote(table.name)
    by_lower = {name.lower(): col for name, col in db.columns.items()}
    for column in table.columns:
        actual = db.columns.get(column.name) or by_lower.get(column.name.lower())
        if actual is None:
            found.missing.append(column.name)
            ddl = CreateColumn(column).compile(dialect=dialect)
            found.fixes.append(f"ALTER TABLE {qtable} ADD COLUMN {ddl};")
            continue
        spec = dataset.columns.get(column.name)
        wanted = "bool (the soft-delete flag)"
        if spec is None:  # the soft-delete flag, which only syncd writes
            spec = ColumnConfig(source="-", type="bool", nullable=False)
        else:
            wanted = declared_type(spec)
        actual_sql = _sql_type(actual["type"], dialect)
        why = incompatibility(spec, actual["type"])
        retype = why is not None
        # a column of the table's own (mismatching) primary key is NOT NULL by nature: the key
        # problem reported below covers it
        drop_not_null = (
            not column.primary_key
            and bool(column.nullable)
            and not actual["nullable"]
            and column.name not in db.pk
        )
        if why is None and drop_not_null:
            why = "NOT NULL, while the mapping allows empty values (nullable: true)"
            actual_sql += " NOT NULL"
        if why is not None:
            found.incompatible.append(
                f"column {column.name} is {actual_sql} in the database but the mapping declares {wanted} "
                f"({why})"
            )
            found.fixes += _alter_fix(engine, table, column, retype=retype, drop_not_null=drop_not_null)


def _check_extra_columns(engine: sa.Engine, table: sa.Table, db: _Reflected, found: _Findings) -> None:
    prep = engine.dialect.identifier_preparer
    expected = {c.name.lower() for c in table.columns}
    for name, col in db.columns.items():
        if name.lower() in expected or col["nullable"] or col.get("default") is not None:
            continue
        if col.get("autoincrement") is True or name in db.pk:
            continue
        found.incompatible.append(
            f"column {name} is not in the mapping and is NOT NULL without a default, "
            "so syncd cannot insert rows"
        )
        if dialect_family(engine) == "postgresql":
            qtable, qcol = prep.quote(table.name), prep.quote(name)
            found.fixes.append(f"ALTER TABLE {qtable} ALTER COLUMN {qcol} DROP NOT NULL;")
        else:
            found.fixes.append(f"-- give {prep.quote(name)} a default value or make it nullable")


def _check_key(engine: sa.Engine, table: sa.Table, db: _Reflected, found: _Findings) -> None:
    prep = engine.dialect.identifier_preparer
    key = tuple(c.name for c in table.primary_key.columns)
    wanted = {k.lower() for k in key}
    if {c.lower() for c in db.pk} == wanted:
        return
    if any({c.lower() for c in cols} == wanted for cols in db.uniques() if cols):
        return
    shown = f"({', '.join(db.pk)})" if db.pk else "missing"
    found.key_problem = (
        f"the primary key is {shown} in the database but target.key is ({', '.join(key)}), "
        "and no unique key covers exactly those columns"
    )
    cols = ", ".join(prep.quote(k) for k in key)
    index = prep.quote(f"ux_{table.name}_key")
    found.fixes.append(f"CREATE UNIQUE INDEX {index} ON {prep.quote(table.name)} ({cols});")


def verify_target_table(engine: sa.Engine, table: sa.Table, dataset: DatasetConfig) -> None:
    """Raise TargetSchemaError listing every way the existing ``table`` differs from ``dataset``."""
    db = _reflect(engine, table.name)
    found = _Findings()
    _check_columns(engine, table, dataset, db, found)
    _check_extra_columns(engine, table, db, found)
    _check_key(engine, table, db, found)
    if not found:
        return
    where = f" ({dataset.source_file})" if dataset.source_file else ""
    lines = [
        f"dataset {dataset.name}{where}: table {table.name} in {describe_url(engine.url)} "
        "does not match the mapping:"
    ]
    lines += [f"  - column {name} is missing" for name in found.missing]
    lines += [f"  - {text}" for text in found.incompatible]
    if found.key_problem:
        lines.append(f"  - {found.key_problem}")
    lines.append("Fix the table, for example with:")
    lines += [f"  {fix}" for fix in found.fixes]
    sqlite_note = "; SQLite cannot alter column types, so that is the way there"
    lines.append(
        "or point target.table at a new table name and let syncd create it (target.create: true)"
        + (sqlite_note if dialect_family(engine) == "sqlite" else "")
        + f", then `syncd reset {dataset.name} --yes` so that its next run loads every row into the "
        "new table (rows that did not change upstream would not be written there otherwise)."
    )
    raise TargetSchemaError(
        "\n".join(lines),
        table=table.name,
        missing=found.missing,
        incompatible=found.incompatible,
        key_problem=found.key_problem,
    )


# --------------------------------------------------------------------------- column limits

_INT_BITS = {"TINYINT": 8, "MEDIUMINT": 24}  # MariaDB/MySQL's, beside SMALLINT, INTEGER and BIGINT


def _int_range(actual: sa.types.TypeEngine[Any]) -> tuple[int, int] | None:
    """The values an integer (or NUMERIC(p,0)) column holds; None for another type."""
    if isinstance(actual, sa.Integer):
        if isinstance(actual, sa.BigInteger):
            bits = 64
        elif isinstance(actual, sa.SmallInteger):
            bits = 16
        else:
            bits = _INT_BITS.get(type(actual).__name__.upper(), 32)
        if getattr(actual, "unsigned", False):
            return 0, 2**bits - 1
        return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    if not isinstance(actual, sa.Numeric) or isinstance(actual, sa.Float):
        return None
    if actual.precision and not actual.scale:
        most = 10 ** actual.precision - 1
        return -most, most
    return None


def _limit(
    dataset: DatasetConfig, where: str, name: str, spec: ColumnConfig, actual: sa.types.TypeEngine[Any]
) -> ColumnLimit | None:
    """The limit of mapped column ``name`` (``where``: "column … of table … is TYPE"), or None."""
    replay = f"then `syncd quarantine replay {dataset.name}`"
    if spec.type == "string":
        length = actual.length if isinstance(actual, sa.String) else None
        if length is None or (spec.length is not None and spec.length <= length):
            return None
        if name in dataset.target.key and length == KEY_TEXT_LENGTH:  # the key column syncd created
            fix = (
                f"a text key column without `length:` is VARCHAR({length}): set `length:` to the longest "
                f"key upstream sends and widen the column (ALTER TABLE, as `syncd check` shows), {replay}"
            )
            return ColumnLimit(fix, length=length)
        return ColumnLimit(f"{where}: widen it (ALTER TABLE), {replay}", length=length)
    if spec.type in ("int", "decimal"):
        found = _int_range(actual) if spec.type == "int" or isinstance(actual, sa.Integer) else None
        if found is None or (found[0] <= -(2**63) and found[1] >= 2**63 - 1):
            return None
        fix = f"{where}: change it to BIGINT (ALTER TABLE), {replay}"
        return ColumnLimit(fix, low=found[0], high=found[1])
    return None


def column_limits(engine: sa.Engine, dataset: DatasetConfig) -> dict[str, ColumnLimit] | None:
    """The mapped columns of ``dataset``'s existing target table that hold less than the mapping's
    types (see the module docstring), for :func:`syncd.mapping.compile_mapping`; None when the table
    does not exist yet (syncd creates it as the mapping says). SQLite's integers are 64-bit whatever
    the declared type; its declared text lengths count, as on every database (a dataset behaves
    alike on all three). Raises SQLAlchemy's DBAPIError."""
    name = dataset.target.table
    if not sa.inspect(engine).has_table(name):
        return None
    db = _reflect(engine, name)
    by_lower = {column.lower(): col for column, col in db.columns.items()}
    sqlite = dialect_family(engine) == "sqlite"
    limits: dict[str, ColumnLimit] = {}
    for column, spec in dataset.columns.items():
        actual = db.columns.get(column) or by_lower.get(column.lower())
        if actual is None or (sqlite and spec.type != "string"):
            continue
        where = f"column {column} of table {db.name} is {_sql_type(actual['type'], engine.dialect)}"
        found = _limit(dataset, where, column, spec, actual["type"])
        if found is not None:
            limits[column] = found
    return limits


# --------------------------------------------------------------------------- key collations

_MYSQL_KEY_COLUMNS = sa.text(
    "SELECT column_name, collation_name, column_type, is_nullable, column_default, column_comment "
    "FROM information_schema.columns "
    "WHERE table_schema = DATABASE() AND table_name = :table AND column_name IN :columns"
).bindparams(sa.bindparam("columns", expanding=True))


@dataclass(frozen=True, slots=True)
class KeyColumn:
    """A text key column of a MariaDB/MySQL or PostgreSQL table, as the catalogue describes it."""

    table: str
    column: str
    collation: str | None  # None: not a text column (MariaDB/MySQL), or PostgreSQL
    problem: str | None  # why its keys do not compare exactly (key_collation_problem, CHAR), or None
    fix: str | None  # the ALTER TABLE making its keys exact; None: none exists (no NO PAD collation)

    def describe(self) -> str:
        """The problem in one line for the operator, with the fix."""
        text = f"table {self.table}, key column {self.column}: {self.problem}"
        if self.fix:
            return f"{text}. Run, with syncd stopped (the table is rebuilt): {self.fix}"
        return (
            f"{text}. This server has no NO PAD binary collation (MariaDB 10.2 and MySQL 8.0.17 have "
            "one): if upstream keys can end in spaces, give the key column transforms: [strip]"
        )


def _sql_quoted(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "''") + "'"


def key_columns(
    engine: sa.Engine, table: str, columns: Sequence[str], *, whole_table: bool = False
) -> dict[str, KeyColumn]:
    """``columns`` of ``table`` (those that exist) as the database compares them: on MariaDB/MySQL
    their collation and type, on PostgreSQL their type (a fixed-length ``character(n)`` key column
    ignores trailing spaces; its deterministic collations compare equal text exactly otherwise);
    {} on SQLite, which compares text byte for byte whatever the declared type.

    A CHAR key column never keeps keys apart that differ only in trailing spaces, whatever its
    collation: its fix changes it to VARCHAR of the same length. The fix of a MariaDB/MySQL column
    is a ``MODIFY`` that keeps its NOT NULL, default and comment (``MODIFY`` replaces the whole
    column definition); with ``whole_table`` (syncd's own tables) it converts every text column of
    the table and its default collation (``CONVERT TO``): a packed ``row_state`` look-up puts the
    key and the hashes into one ``JSON_ARRAY``, which refuses text of two collations. syncd made
    its own tables' keys VARCHAR, so on PostgreSQL ``whole_table`` reads nothing. One catalogue
    query. Raises SQLAlchemy's DBAPIError."""
    family = dialect_family(engine)
    if not columns:
        return {}
    if family == "postgresql":
        return {} if whole_table else _pg_key_columns(engine, table, columns)
    if family != "mysql":
        return {}
    dialect = engine.dialect
    target = mysql_key_collation(dialect)
    exact = key_collation_problem(target) is None
    prep = dialect.identifier_preparer
    found: dict[str, KeyColumn] = {}
    with engine.connect() as conn:
        rows = conn.execute(_MYSQL_KEY_COLUMNS, {"table": table, "columns": list(columns)}).all()
    mariadb = bool(getattr(dialect, "is_mariadb", False))
    for found_name, found_collation, column_type, nullable, default, comment in rows:
        name, collation = str(found_name), None if found_collation is None else str(found_collation)
        problem = key_collation_problem(collation)
        char = _CHAR.fullmatch(str(column_type))
        if char is not None:
            problems = (problem, _char_problem(str(column_type)))
            problem = "; and ".join(p for p in problems if p is not None)
        fix = None
        if problem is not None and exact and whole_table and char is None:
            fix = f"ALTER TABLE {prep.quote(table)} CONVERT TO CHARACTER SET utf8mb4 COLLATE {target};"
        elif problem is not None and exact:
            kind = str(column_type) if char is None else f"VARCHAR({char['length']})"
            parts = [
                f"ALTER TABLE {prep.quote(table)} MODIFY {prep.quote(name)} {kind} "
                f"CHARACTER SET utf8mb4 COLLATE {target}",
                "NOT NULL" if nullable == "NO" else "NULL",
            ]
            if default is not None:  # MariaDB: an SQL expression ('x', NULL); MySQL: the bare value
                parts.append(f"DEFAULT {default if mariadb else _sql_quoted(str(default))}")
            if comment:
                parts.append(f"COMMENT {_sql_quoted(str(comment))}")
            fix = " ".join(parts) + ";"
        found[name] = KeyColumn(table, name, collation, problem, fix)
    return found


_CHAR = re.compile(r"(?:char|character)\((?P<length>\d+)\)", re.IGNORECASE)
"""A fixed-length text type as MariaDB/MySQL (``char(32)``) and PostgreSQL (``character(32)``)
name it."""

# PostgreSQL: the key columns of type character(n) (bpchar), found as an unqualified name is
# (search_path); pg_class/pg_attribute read the same way on every PostgreSQL-speaking database
_PG_CHAR_KEY_COLUMNS = sa.text(
    "SELECT a.attname, format_type(a.atttypid, a.atttypmod)"
    " FROM pg_catalog.pg_attribute a JOIN pg_catalog.pg_class c ON c.oid = a.attrelid"
    " WHERE c.relname = :table AND pg_catalog.pg_table_is_visible(c.oid) AND a.attnum > 0"
    " AND NOT a.attisdropped AND a.atttypid = 'pg_catalog.bpchar'::pg_catalog.regtype"
    " AND a.attname IN :columns"
).bindparams(sa.bindparam("columns", expanding=True))


def _char_problem(type_text: str) -> str:
    return (
        f"{type_text} is fixed-length (CHAR): the database pads its values with spaces and ignores "
        "trailing spaces when it compares them, whatever the collation, so keys that differ only in "
        "trailing spaces ('A001' and 'A001 ') are one key"
    )


def _pg_key_columns(engine: sa.Engine, table: str, columns: Sequence[str]) -> dict[str, KeyColumn]:
    """The ``character(n)`` columns among ``columns`` of a PostgreSQL ``table``, with the ALTER
    TABLE that makes them VARCHAR of the same length (or text, without a length)."""
    prep = engine.dialect.identifier_preparer
    with engine.connect() as conn:
        rows = conn.execute(_PG_CHAR_KEY_COLUMNS, {"table": table, "columns": list(columns)}).all()
    found: dict[str, KeyColumn] = {}
    for name, type_text in rows:
        char = _CHAR.fullmatch(str(type_text))
        kind = "text" if char is None else f"varchar({char['length']})"
        fix = f"ALTER TABLE {prep.quote(table)} ALTER COLUMN {prep.quote(str(name))} TYPE {kind};"
        found[str(name)] = KeyColumn(table, str(name), None, _char_problem(str(type_text)), fix)
    return found
