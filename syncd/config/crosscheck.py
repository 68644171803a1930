"""Checks that span several parts of the configuration, run after each file validated.

- the target database URL parses and names a database kind SQLAlchemy knows (a URL that cannot be
  read is reported without quoting it: it holds the password); its TLS options
  mean what they say (:func:`syncd.targets.dbtls.tls_url_problem`), and a connection to another
  machine that would not check the server's certificate is logged as a warning with its line
  (``config.database_tls_unverified``, showing the URL as written, references and not values;
  the same for ``type: sql`` connections);
- an http connection that does not check the gateway's certificate (``verify_tls: false`` without a
  ``ca_bundle``) is logged as a warning with its line (``config.http_tls_unverified``);
- a signing auth scheme's ``recipe`` compiles (templates, placeholders, SM3 on this host), as the
  http source would compile it (:func:`syncd.sources.http.auth.signing.recipe_problems`);
- a dataset's ``source.connection`` exists in ``connections:`` and is of the source's type
  (file sources have none); ``type: sql`` connection URLs name a database kind SQLAlchemy knows;
- a SQL source (前置库) reads plain columns: every mapped source path is one column name;
- code tables referenced by name exist under ``code_tables:``;
- the mapping compiles (:func:`syncd.mapping.compile_mapping`), which also yields every source
  path the mapping reads;
- authorization (授权): every source path read — by a column, ``source.incremental.field``,
  ``target.logical_delete.field`` or a SQL source's ``key`` — is covered by
  ``authorization.fields`` (the path itself or one of its dotted prefixes, so ``address``
  covers ``address.code``);
- target tables stay clear of syncd's own tables (``target.table_prefix``) and of each other;
- dataset names are unique; column names do not differ only in letter case;
- an incremental dataset's lookback covers the clock shift where the time zone has daylight saving
  (a warning, ``config.lookback_under_dst``);
- on an SQLite target, a decimal column whose values can have more significant digits than SQLite
  stores exactly (15; a whole number: 64 bits) is a warning (``config.sqlite_decimal_digits``): the
  writer quarantines such a record rather than store it rounded.
- a dataset that masks a column and whose source has no secret stores no record digests
  (a warning, ``config.record_digest_off``: :mod:`syncd.changes.digestkey`).

Every issue is positioned in the file the operator has to change.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path as FsPath
from pathlib import PurePosixPath
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

import structlog

from syncd.config.messages import locate
from syncd.config.model import AppConfig, DatasetConfig
from syncd.config.positions import Document, Path, format_path
from syncd.errors import ConfigIssue

if TYPE_CHECKING:
    from sqlalchemy.engine import URL

    from syncd.mapping import CompiledMapping

__all__ = ["Loaded", "check_app", "check_dataset", "check_unique"]

log = structlog.get_logger(__name__)

# a host name or an IP address (IPv6 without its brackets): anything else came from a URL that was
# not what it seemed (e.g. a password with an unencoded `@`) and may hold part of a secret
_HOST = re.compile(r"[A-Za-z0-9._\-]+|[0-9A-Fa-f:.]+")
_BAD_URL = (
    "this database URL cannot be read (a port that is not a number, or a `@`, `:`, `/` or `%` of a "
    "password written inside the URL itself?): write the password as its own reference after the user "
    "name, as it is, without escaping — e.g. {example} — syncd encodes it; a whole URL kept in one "
    "variable or credential must have its password percent-encoded (@ → %40, : → %3A, / → %2F, % → %25)"
)


@dataclass(frozen=True, slots=True)
class Loaded:
    """A validated dataset and the document it came from (None: known from elsewhere, not reported)."""

    dataset: DatasetConfig
    doc: Document | None


def _issue(doc: Document, model_path: Path, message: str, *, on_key: bool = False) -> ConfigIssue:
    where = locate(DatasetConfig, doc.data, model_path, pydantic_loc=False)
    return doc.issue(where.path, message, on_key=on_key)


def _warn(doc: Document, at: Path, event: str, **fields: object) -> None:
    """A configuration warning (the load goes on) with the file, line and field it is about."""
    log.warning(event, file=doc.file, line=doc.position(at).line, field=format_path(at), **fields)


def _hint(name: str, known: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.6)
    return f"did you mean `{close[0]}`? " if close else ""


def check_app(app: AppConfig, doc: Document) -> list[ConfigIssue]:
    """The main file: the target and front-end database URLs, the connections' signature recipes."""
    _http_tls(app, doc)
    return _target_url(app, doc) + _sql_connections(app, doc) + _signature_recipes(app, doc)


def _target_url(app: AppConfig, doc: Document) -> list[ConfigIssue]:
    """The target URL must be one SQLAlchemy can open. Never quotes the URL."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    try:
        url = make_url(app.target.url.get_secret_value())
    except ArgumentError:
        return [doc.issue(("target", "url"), "this is not a database URL: write it like "
                          "sqlite:////var/lib/syncd/syncd.db or postgresql+psycopg://syncd:${DB_PASSWORD}@host/db")]
    except ValueError:  # e.g. int() of a "port" that is part of a password; the message quotes it
        return [doc.issue(("target", "url"), _BAD_URL.format(
            example="postgresql+psycopg://syncd:${credential:db_password}@127.0.0.1:5432/jcsj"))]
    try:
        url.get_dialect()
    except NoSuchModuleError:
        return [doc.issue(("target", "url"), f"unknown database kind `{url.drivername}`: use sqlite:////…, "
                          "postgresql+psycopg://… or mysql+pymysql://… (MariaDB)")]
    _sqlite_relative(doc, ("target", "url"), url)
    return _tls(doc, ("target", "url"), url)


def _sqlite_relative(doc: Document, at: Path, url: URL) -> None:
    """Warn about an SQLite file named by a relative path (``sqlite:///var/lib/…``, three slashes):
    it resolves against the working directory of whoever runs syncd (``/`` under systemd, the
    operator's own elsewhere), so `syncd check` or `plan` run from a shell reads another file."""
    name = url.database
    if url.get_backend_name() != "sqlite" or not name or name == ":memory:" or name.startswith("file:"):
        return
    if PurePosixPath(name).is_absolute():
        return
    here, under_systemd = FsPath.cwd() / name, FsPath("/") / name  # systemd starts services in /
    _warn(doc, at, "config.sqlite_path_relative", path=name,
          reason=f"the SQLite file {name} is a relative path: it resolves against the working directory "
          f"(here {here}; under systemd {under_systemd}), so syncd run from another directory opens "
          "another database",
          fix=f"write an absolute path, with four slashes: sqlite:///{under_systemd}")


def _signature_recipes(app: AppConfig, doc: Document) -> list[ConfigIssue]:
    """A signing auth scheme's recipe must compile: its templates parse, name known placeholders,
    and its algorithm is one this host's OpenSSL has (SM3). The source would find these only when
    built for a run."""
    from syncd.sources.http.auth.signing import recipe_problems

    issues = []
    for name, conn in app.connections.items():
        recipe = getattr(conn.auth, "recipe", None) if conn.type == "http" else None
        if recipe is not None:
            at: Path = ("connections", name, "auth", "recipe")
            issues += [doc.issue((*at, *where), message) for where, message in recipe_problems(recipe)]
    return issues


def _tls(doc: Document, at: Path, url: URL) -> list[ConfigIssue]:
    """A TLS option the driver would misread is an error; a connection to another machine that would
    not check the server's certificate is a warning (the operator may accept it, e.g. a 前置库
    without TLS in a closed network, by saying sslmode=disable / ssl_disabled=true)."""
    from syncd.targets.dbtls import tls_url_problem, unverified_tls

    problem = tls_url_problem(url)
    if problem is not None:
        return [doc.issue(at, problem)]
    reason = unverified_tls(url)
    if reason is not None:
        _warn(doc, at, "config.database_tls_unverified", host=_shown_host(url.host),
              url=_shown_url(doc, at, url), reason=reason)
    return []


def _shown_host(host: str | None) -> str | None:
    """``host`` when it is a host name or an address; otherwise it came from a URL that did not read as
    written and may hold part of a password: not shown."""
    return host if host is None or _HOST.fullmatch(host) else "(not shown: not a host name)"


def _shown_url(doc: Document, at: Path, url: URL) -> str:
    """The URL as the operator wrote it: its ``${...}`` references (names, not values) or, when
    written literally, the URL without its password."""
    written = doc.written.get(at)
    return written if written is not None else url.render_as_string(hide_password=True)


def _http_tls(app: AppConfig, doc: Document) -> None:
    """``verify_tls: false`` without a ``ca_bundle``: anyone on the path can read and change the data
    and the credentials. Allowed (a test gateway), but said at every load with what to do instead."""
    for name, conn in app.connections.items():
        if conn.type == "http" and not conn.verify_tls and conn.ca_bundle is None:
            _warn(doc, ("connections", name, "verify_tls"), "config.http_tls_unverified", connection=name,
                  fix="remove verify_tls: false and set ca_bundle: to the PEM file of the CA that signed "
                  "the gateway's certificate (政务外网 CA, e.g. /etc/syncd/ca.pem): without a check, anyone "
                  "on the network path can read the credentials and change the data")


def _sql_connections(app: AppConfig, doc: Document) -> list[ConfigIssue]:
    """Front-end database (前置库) URLs must parse and name a known kind. Never quotes the URL."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    issues = []
    for name, conn in app.connections.items():
        if conn.type != "sql":
            continue
        at = ("connections", name, "url")
        try:
            url = make_url(conn.url.get_secret_value())
        except ArgumentError:
            issues.append(doc.issue(at, "this is not a database URL: write it like "
                                    "postgresql+psycopg://user:${credential:qzk_password}@host:5432/db"))
            continue
        except ValueError:  # e.g. int() of a "port" that is part of a password; the message quotes it
            issues.append(doc.issue(at, _BAD_URL.format(
                example="postgresql+psycopg://user:${credential:qzk_password}@host:5432/db")))
            continue
        if url.get_backend_name() in ("postgresql", "mysql", "mariadb") and "+" not in url.drivername:
            issues += _tls(doc, at, url)
            continue  # syncd picks psycopg / PyMySQL itself
        try:
            url.get_dialect()
        except NoSuchModuleError:
            issues.append(doc.issue(at, f"unknown database kind `{url.drivername}`: use "
                                    "postgresql+psycopg://… (also KingbaseES, openGauss), "
                                    "mysql+pymysql://… (MariaDB, OceanBase) "
                                    "or sqlite:////…; DM (达梦) needs its own SQLAlchemy dialect installed"))
            continue
        _sqlite_relative(doc, at, url)
        issues += _tls(doc, at, url)
    return issues


def check_dataset(dataset: DatasetConfig, app: AppConfig, doc: Document) -> list[ConfigIssue]:
    """Everything about one dataset that needs the main file (connections, code tables, prefix)."""
    # imported here: syncd.mapping imports syncd.config.model, which runs this package's __init__
    from syncd.mapping import MappingSpecError, compile_mapping

    issues = _connection(dataset, app, doc) + _code_tables(dataset, app, doc) + _sql_columns(dataset, doc)
    compiled_paths: frozenset[str] = frozenset()
    try:
        mapping = compile_mapping(dataset, app.code_tables)
    except MappingSpecError as exc:
        issue = _issue(doc, exc.path, exc.message)
        if all(i.path != issue.path for i in issues):
            issues.append(issue)
    else:
        compiled_paths = mapping.source_paths
        if not issues:
            _record_digest_off(dataset, app, doc, mapping)
    issues += _authorization(dataset, doc, compiled_paths)
    _lookback_across_dst(dataset, app, doc)
    _sqlite_decimals(dataset, app, doc)
    prefix = app.target.table_prefix
    if dataset.target.table.lower().startswith(prefix.lower()):
        issues.append(_issue(doc, ("target", "table"), (
            f"table `{dataset.target.table}` starts with `{prefix}`, the prefix of syncd's own state "
            "tables (target.table_prefix in the main file): choose another table name")))
    seen: dict[str, str] = {}
    for column in dataset.columns:
        first = seen.setdefault(column.lower(), column)
        if first != column:
            issues.append(_issue(doc, ("columns", column), (
                f"columns `{first}` and `{column}` differ only in letter case: databases treat them "
                "as the same column, rename one"), on_key=True))
    return issues


def _record_digest_off(
    dataset: DatasetConfig, app: AppConfig, doc: Document, mapping: CompiledMapping
) -> None:
    """A masked dataset whose source has no secret stores no record digests (a digest of the clear
    record, keyed from the YAML alone, would give the masked characters away: syncd.changes.digestkey).
    A warning at its first mask, saying what it costs and how to get them back."""
    from syncd.changes.digestkey import record_digest_key

    if record_digest_key(app, dataset, mapping) is not None:
        return
    column, at = next(
        (name, i)
        for name, cfg in dataset.columns.items()
        for i, t in enumerate(cfg.transforms)
        if t.type == "mask"
    )
    _warn(
        doc,
        ("columns", column, "transforms", at),
        "config.record_digest_off",
        reason="the dataset masks a column and its source connection has no secret (no auth secret, no "
        "database password) to key record digests with: a digest keyed from the YAML alone would let "
        "anyone who reads the target database recover the masked characters by trying every value",
        effect="no record digest is stored: every record is mapped and compared by row hash on every run "
        "(a re-sync is slower; its result is the same)",
        fix="give the source connection its secret (e.g. the database password as ${credential:NAME}), "
        "or accept the slower re-syncs",
    )


def _dst_shift(zone_name: str) -> timedelta:
    """How far the zone's clocks move at a daylight-saving change (zero in Asia/Shanghai)."""
    zone = ZoneInfo(zone_name)
    year = datetime.now(UTC).year
    offsets = [datetime(year, month, 1, tzinfo=zone).utcoffset() or timedelta() for month in (1, 7)]
    return abs(offsets[0] - offsets[1])


def _lookback_across_dst(dataset: DatasetConfig, app: AppConfig, doc: Document) -> None:
    """Windows and watermarks are local times: where clocks go back (daylight saving ends), the
    repeated hour's records carry times below a watermark set just before the change. A lookback
    shorter than the shift can miss them; a warning with the line to change."""
    inc = getattr(dataset.source, "incremental", None)
    if inc is None:
        return
    shift = _dst_shift(app.timezone)
    lookback = inc.lookback if inc.lookback is not None else app.defaults.lookback
    if shift and lookback < shift:
        at: Path = ("source", "incremental")
        if inc.lookback is not None:
            at = (*at, "lookback")
        _warn(
            doc,
            at,
            "config.lookback_under_dst",
            timezone=app.timezone,
            lookback_s=lookback.total_seconds(),
            fix=f"set source.incremental.lookback to at least {shift} (clocks in {app.timezone} go back "
            f"{shift} when daylight saving ends; records of the repeated hour could be missed)",
        )


def _sqlite_decimals(dataset: DatasetConfig, app: AppConfig, doc: Document) -> None:
    """SQLite keeps 15 significant digits of a number with decimals (it stores a REAL): a warning with
    the line of each decimal column that admits more (:func:`syncd.targets.sqltypes.sqlite_decimal_limit`)."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    from syncd.targets.sqltypes import SQLITE_EXACT_DIGITS, sqlite_decimal_limit

    try:
        if make_url(app.target.url.get_secret_value()).get_backend_name() != "sqlite":
            return
    except (ArgumentError, ValueError):
        return  # reported by _target_url
    for name, cfg in dataset.columns.items():
        if cfg.type != "decimal" or sqlite_decimal_limit(cfg.precision, cfg.scale) is None:
            continue
        at: Path = ("columns", name)
        if "precision" in cfg.model_fields_set:
            at = (*at, "precision")
        _warn(
            doc,
            at,
            "config.sqlite_decimal_digits",
            precision=cfg.precision,
            scale=cfg.scale,
            fix=f"an SQLite target stores {SQLITE_EXACT_DIGITS} significant digits of a number with "
            f"decimals exactly: set columns.{name}.precision to at most {SQLITE_EXACT_DIGITS} (the default "
            f"is 18), or scale: 0 with precision at most 18, or use PostgreSQL or MariaDB as the target; "
            f"until then a record whose {name} has more than {SQLITE_EXACT_DIGITS} significant digits is "
            "quarantined, not stored rounded",
        )


def _sql_columns(dataset: DatasetConfig, doc: Document) -> list[ConfigIssue]:
    """A SQL source selects columns by name: a dotted path cannot name one."""
    if dataset.source.type != "sql":
        return []
    return [
        _issue(doc, ("columns", column, "source"), (
            f"`{cfg.source}` is not a column name: a SQL source (前置库) reads table columns, "
            "write the column name itself (letters, digits, underscores)"))
        for column, cfg in dataset.columns.items()
        if cfg.source is not None and "." in cfg.source
    ]


def _connection(dataset: DatasetConfig, app: AppConfig, doc: Document) -> list[ConfigIssue]:
    if dataset.source.type == "file":
        return []  # a drop folder needs no connection
    name = dataset.source.connection
    connection = app.connections.get(name)
    if connection is None:
        known = ", ".join(f"`{n}`" for n in app.connections)
        where = f"connections defined in the main file: {known}" if known else (
            "no connection is defined: add one under `connections:` in the main file")
        return [_issue(doc, ("source", "connection"),
                       f"unknown connection `{name}`: {_hint(name, app.connections)}{where}")]
    have: str = connection.type  # one kind each today; the check keeps new kinds honest
    want: str = dataset.source.type
    if have != want:
        return [_issue(doc, ("source", "connection"), (
            f"connection `{name}` is of type {have} but this source is of type {want}: "
            f"use a connection of type {want}"))]
    return []


def _code_tables(dataset: DatasetConfig, app: AppConfig, doc: Document) -> list[ConfigIssue]:
    issues = []
    for column, cfg in dataset.columns.items():
        for i, t in enumerate(cfg.transforms):
            if t.type == "code_table" and isinstance(t.table, str) and t.table not in app.code_tables:
                known = ", ".join(f"`{n}`" for n in app.code_tables) or "none are defined"
                issues.append(_issue(doc, ("columns", column, "transforms", i, "table"), (
                    f"unknown code table `{t.table}`: {_hint(t.table, app.code_tables)}code tables are "
                    f"defined under `code_tables:` in the main file (known: {known}), or write the "
                    "mapping inline")))
    return issues


def _authorization(dataset: DatasetConfig, doc: Document, compiled: frozenset[str]) -> list[ConfigIssue]:
    allowed = set(dataset.authorization.fields)

    def covered(path: str) -> bool:
        parts = path.split(".")
        return any(".".join(parts[:n]) in allowed for n in range(1, len(parts) + 1))

    reads: dict[str, tuple[Path, str]] = {}  # source path → (where it is written, what to remove)
    for column, cfg in dataset.columns.items():
        if cfg.source is not None:
            reads.setdefault(cfg.source, (("columns", column, "source"), "remove this column"))
        for i, t in enumerate(cfg.transforms):
            for j, f in enumerate(t.fields or ()):
                reads.setdefault(f, (("columns", column, "transforms", i, "fields", j), "remove this field"))
    if dataset.source.type != "file" and dataset.source.incremental is not None:
        reads.setdefault(dataset.source.incremental.field,
                         (("source", "incremental", "field"), "choose another update-time field"))
    if dataset.source.type == "sql":
        for i, key in enumerate(dataset.source.key):
            reads.setdefault(key, (("source", "key", i), "choose other key columns"))
    if dataset.target.logical_delete is not None:
        reads.setdefault(dataset.target.logical_delete.field,
                         (("target", "logical_delete", "field"), "remove logical_delete"))
    for path in compiled - reads.keys():
        reads[path] = (("authorization", "fields"), "remove what reads it")
    return [
        _issue(doc, at, f"field `{path}` is not in authorization.fields (授权字段): syncd only writes "
               f"fields the approval covers; ask the data bureau to extend the approval or {fix}")
        for path, (at, fix) in reads.items()
        if not covered(path)
    ]


def check_unique(loaded: Sequence[Loaded]) -> list[ConfigIssue]:
    """Dataset names and target tables must be unique; reported at the later file, naming the first."""
    issues: list[ConfigIssue] = []
    names: dict[str, DatasetConfig] = {}
    tables: dict[str, DatasetConfig] = {}
    for item in loaded:
        ds = item.dataset
        first = names.setdefault(ds.name, ds)
        if first is not ds and item.doc is not None:
            issues.append(_issue(item.doc, ("name",), (
                f"dataset name `{ds.name}` is already used by {first.source_file or 'another dataset'}: "
                "dataset names must be unique (a file without `name:` is named after the file)")))
            continue
        first = tables.setdefault(ds.target.table.lower(), ds)
        if first is not ds and item.doc is not None:
            issues.append(_issue(item.doc, ("target", "table"), (
                f"table `{ds.target.table}` is already written by dataset `{first.name}` "
                f"({first.source_file or 'loaded earlier'}): two datasets must not write the same table")))
    return issues
