"""The validated, frozen configuration model.

The YAML an operator writes is parsed by :mod:`syncd.config.loader` and validated here. Every
model is frozen and forbids unknown keys; every union is discriminated on ``type`` so an error
names the one variant the operator meant. Secret values are ``SecretStr`` and only ever come
from ``${ENV}`` or ``${credential:NAME}`` interpolation (the loader enforces that).
"""

from __future__ import annotations

import math
import re
import ssl
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    ValidationInfo,
    field_validator,
    model_validator,
)

from syncd.config.timeformat import time_format

__all__ = [
    "AppConfig",
    "AuthConfig",
    "AuthorizationConfig",
    "ChangesConfig",
    "ColumnConfig",
    "DaemonConfig",
    "DatasetChangesConfig",
    "DatasetConfig",
    "EnvelopeConfig",
    "FileSourceConfig",
    "HttpConnection",
    "HttpSourceConfig",
    "IncrementalConfig",
    "LocatedValueError",
    "PaginationConfig",
    "RunsConfig",
    "SignatureRecipe",
    "SnapshotDeleteConfig",
    "SqlConnection",
    "SqlIncrementalConfig",
    "SqlSourceConfig",
    "TargetTableConfig",
    "TransformConfig",
    "ValidatorConfig",
]

# --------------------------------------------------------------------------- shared types

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}
_MAX_DURATION_S = 100 * 365 * 86400.0  # a century: anything longer is a typo


class LocatedValueError(ValueError):
    """A model-validator error about one field of the model (``at`` is relative to the model).

    Pydantic positions a model validator's error on the whole mapping; the loader appends
    ``at`` so the operator is pointed at the line that must change.
    """

    def __init__(self, message: str, *, at: tuple[str | int, ...]) -> None:
        super().__init__(message)
        self.at = at


def _identifier(value: str) -> str:
    if not isinstance(value, str) or not _IDENT.match(value):
        raise ValueError(
            f"{value!r} is not a valid SQL identifier: use letters, digits and underscores, "
            "starting with a letter or underscore, at most 63 characters (e.g. resident_info)"
        )
    return value


def _duration(value: Any) -> timedelta:
    if isinstance(value, timedelta):
        return value
    seconds: float | None = None
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 30s, 5m, 2h or 1d")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        m = _DURATION.match(value)
        if m:
            seconds = float(m.group(1)) * _UNITS[m.group(2)]
    if seconds is None:
        raise ValueError(
            f"{value!r} is not a duration: write a number with a unit, such as 30s, 5m, 2h or 1d"
        )
    if not math.isfinite(seconds) or not 0 <= seconds <= _MAX_DURATION_S:
        raise ValueError(
            f"{value!r} is out of range: a duration is between 0 and 100 years (e.g. 30s, 5m, 2h, 1d)"
        )
    return timedelta(seconds=seconds)


Identifier = Annotated[str, AfterValidator(_identifier)]
"""A table or column name: validated so that it can be quoted into SQL safely."""

Duration = Annotated[timedelta, BeforeValidator(_duration)]
"""``30s``, ``5m``, ``2h``, ``1d``, ``250ms`` or a number of seconds."""

_MAX_RETENTION_DAYS = 36_500  # a century: anything longer is a typo


def _retention_days_of(what: str, everything: str) -> Callable[[Any], Any]:
    """The check of a retention in days for ``what`` (change entries, runs): a number of days (1 to a
    century), or ``forever`` (keeping ``everything``); worded for the operator."""

    def check(value: Any) -> Any:
        if value == "forever" and isinstance(value, str):
            return value
        if isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= _MAX_RETENTION_DAYS:
            return value
        if isinstance(value, int) and not isinstance(value, bool):
            raise ValueError(
                f"{value} is out of range: keep {what} for 1 to {_MAX_RETENTION_DAYS} days, "
                f"or write forever to keep {everything}"
            )
        raise ValueError(
            f"{value!r} is not a number of days: write a whole number such as 180, "
            f"or forever to keep {everything}"
        )

    return check


_RetentionBase = Annotated[int, Field(ge=1, le=_MAX_RETENTION_DAYS)] | Literal["forever"]

RetentionDays = Annotated[
    _RetentionBase, BeforeValidator(_retention_days_of("change entries", "every entry"))
]
"""How long change entries are kept: a number of days, or ``forever``."""

RunRetentionDays = Annotated[_RetentionBase, BeforeValidator(_retention_days_of("runs", "every run"))]
"""How long the records of ended runs are kept: a number of days, or ``forever`` (the same type as
:data:`RetentionDays`, its messages naming runs)."""

_CLOCK_TIME = re.compile(r"^([01]?\d|2[0-3]):([0-5]\d)$")


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=False)


def _shorthand(kind_key: str, single_arg: dict[str, str]) -> Any:
    """Accept ``- strip`` and ``- {null_if: [无, /]}`` as well as ``- {type: null_if, values: [...]}``.

    ``single_arg`` maps a type name to the field that a non-mapping argument fills.
    """

    def convert(value: Any) -> Any:
        if isinstance(value, str):
            return {kind_key: value}
        if isinstance(value, dict) and kind_key not in value and len(value) == 1:
            ((name, arg),) = value.items()
            if isinstance(arg, dict):
                return {kind_key: name, **arg}
            if arg is None:
                return {kind_key: name}
            field = single_arg.get(name)
            if field is None:
                raise ValueError(
                    f"{name!r} takes its options as a mapping, e.g. {{{name}: {{option: value}}}}"
                )
            if not field:
                raise ValueError(f"{name!r} takes no options: write just `- {name}`")
            return {kind_key: name, field: arg}
        return value

    return convert


# --------------------------------------------------------------------------- HTTP: auth


class SignatureRecipe(_Model):
    """A signature computed over an ordered list of parts (Zhejiang / Guangdong style gateways).

    ``parts`` items are literal strings with placeholders: ``{app_key}``, ``{secret}``,
    ``{timestamp}``, ``{nonce}``, ``{token}``, ``{client_id}``, ``{path}``, ``{body}``.
    They are concatenated with ``separator`` and hashed with ``algorithm``.
    """

    algorithm: Literal["md5", "sha1", "sha256", "hmac-sha256", "sm3"]
    parts: tuple[str, ...] = Field(min_length=1)
    separator: str = ""
    encoding: Literal["hex", "hex-upper", "base64"] = "hex"
    timestamp_unit: Literal["s", "ms"] = "ms"
    # where the signature, timestamp and nonce go, and under which names
    placement: Literal["header", "query"] = "header"
    signature_name: str = "sign"
    timestamp_name: str | None = "requestTime"
    nonce_name: str | None = None
    # static extra parameters sent with every request (e.g. appKey, x-tif-paasid)
    extra: dict[str, str] = Field(default_factory=dict)


class NoAuth(_Model):
    type: Literal["none"]


class StaticKeyAuth(_Model):
    """A fixed key sent with every request, in a header or a query parameter."""

    type: Literal["static_key"]
    name: str = Field(description="header or query parameter name, e.g. X-API-Key or appKey")
    value: SecretStr
    placement: Literal["header", "query"] = "header"
    prefix: str = ""


class TokenAuth(_Model):
    """appKey/appSecret exchanged for a bearer token at a token endpoint (most common style)."""

    type: Literal["token"]
    url: str = Field(description="token endpoint, absolute or relative to the connection base_url")
    method: Literal["GET", "POST"] = "POST"
    app_key: str
    app_secret: SecretStr
    key_field: str = "appKey"
    secret_field: str = "appSecret"  # noqa: S105 - the name of the body field, not a secret
    body_format: Literal["json", "form", "query"] = "json"
    token_path: str = "data.accessToken"  # noqa: S105 - a path in the response, not a secret
    expires_in_path: str | None = "data.expiresIn"
    default_ttl: Duration = timedelta(hours=1)
    refresh_before: Duration = timedelta(minutes=5)
    header: str = "Authorization"
    header_prefix: str = "Bearer "
    placement: Literal["header", "query"] = "header"
    query_param: str = "access_token"


class HmacHeadersAuth(_Model):
    """Shandong style: Base64(HmacSHA256(secret, clientId + timestamp + nonce)) in headers."""

    type: Literal["hmac_headers"]
    client_id: str
    secret: SecretStr
    client_id_header: str = "X-Client-Id"
    timestamp_header: str = "X-Timestamp"
    nonce_header: str = "X-Nonce"
    signature_header: str = "X-Signature"
    timestamp_unit: Literal["s", "ms"] = "ms"
    encoding: Literal["hex", "base64"] = "base64"


class SignedAuth(_Model):
    """A configurable signature recipe with a static secret (e.g. Guangdong TIF sha256)."""

    type: Literal["signed"]
    app_key: str = ""
    secret: SecretStr
    client_id: str = ""
    recipe: SignatureRecipe


class TwoTierSecretAuth(_Model):
    """Zhejiang IRS style: refresh secret (~48 h) and request secret (~15 min), md5-signed calls."""

    type: Literal["two_tier_secret"]
    app_key: str
    app_secret: SecretStr
    refresh_by_key_url: str = "/refreshTokenByKey"
    refresh_by_secret_url: str = "/refreshTokenBySec"  # noqa: S105 - an endpoint path
    payload_path: str = "datas"
    refresh_before: Duration = timedelta(minutes=2)
    recipe: SignatureRecipe = SignatureRecipe(
        algorithm="md5", parts=("{app_key}", "{secret}", "{timestamp}"), placement="query",
        signature_name="sign", timestamp_name="requestTime", extra={},
    )


AuthConfig = Annotated[
    NoAuth | StaticKeyAuth | TokenAuth | HmacHeadersAuth | SignedAuth | TwoTierSecretAuth,
    Field(discriminator="type"),
]

# --------------------------------------------------------------------------- HTTP: envelope, paging


class EnvelopeConfig(_Model):
    """How to read a gateway's JSON envelope, e.g. ``{code, msg, data: {total, list}}``.

    Paths are dotted (``data.list``); an empty records_path means the body itself is the list.
    """

    code_path: str | None = "code"
    success_codes: tuple[str, ...] = ("0", "00", "200", "0000")
    message_path: str | None = "msg"
    transient_codes: tuple[str, ...] = ()
    auth_expired_codes: tuple[str, ...] = ()
    records_path: str = "data.list"
    total_path: str | None = "data.total"
    cursor_path: str | None = None
    # paths whose value may be a JSON *string* to be decoded a second time (e.g. "data", "datas")
    decode_strings: tuple[str, ...] = ()
    # server clock (epoch ms or "%Y-%m-%d %H:%M:%S") reported by some gateways, for skew warnings
    server_time_path: str | None = None

    @field_validator("success_codes", "transient_codes", "auth_expired_codes", mode="before")
    @classmethod
    def _codes_as_strings(cls, v: Any) -> Any:
        if isinstance(v, list | tuple):
            return tuple(str(x) for x in v)
        if isinstance(v, str | int):
            return (str(v),)
        return v


class PageNumberPagination(_Model):
    type: Literal["page_number"]
    page_param: str = "pageNo"
    size_param: str = "pageSize"
    page_size: int = Field(100, ge=1, le=100_000)
    first_page: int = 1


class OffsetPagination(_Model):
    type: Literal["offset"]
    offset_param: str = "offset"
    limit_param: str = "limit"
    page_size: int = Field(100, ge=1, le=100_000)
    first_offset: int = 0  # Shandong STARTNUM is 1-based: set first_offset: 1


class CursorPagination(_Model):
    type: Literal["cursor"]
    cursor_param: str = "cursor"
    size_param: str | None = "pageSize"
    page_size: int = Field(100, ge=1, le=100_000)


PaginationConfig = Annotated[
    PageNumberPagination | OffsetPagination | CursorPagination, Field(discriminator="type")
]


class IncrementalConfig(_Model):
    """Incremental reads by an update-time range (DESIGN §4.3)."""

    field: str = Field(description="dotted path of the record's update time, e.g. updateTime")
    start_param: str = "updateTimeStart"
    end_param: str | None = "updateTimeEnd"
    format: str = Field("%Y-%m-%d %H:%M:%S", description="strftime format of the range parameters")
    # formats accepted when reading the record's update-time value (first match wins)
    value_formats: tuple[str, ...] = ("%Y-%m-%d %H:%M:%S", "%Y-%m-%d %H:%M:%S.%f", "%Y%m%d%H%M%S")
    lookback: Duration | None = None  # default: defaults.lookback
    safety_lag: Duration | None = None  # default: defaults.safety_lag
    initial: datetime | None = Field(None, description="where the first run starts; empty = everything")


class HttpSourceConfig(_Model):
    type: Literal["http"]
    connection: str = Field(description="name of a connection under `connections:` in syncd.yaml")
    path: str
    method: Literal["GET", "POST"] = "GET"
    params: dict[str, str | int | float | bool] = Field(default_factory=dict)
    body: dict[str, Any] | None = None  # POST: parameters go into a JSON body instead of the query
    pagination: PaginationConfig = PageNumberPagination(type="page_number")
    envelope: EnvelopeConfig | None = None  # default: the connection's envelope
    incremental: IncrementalConfig | None = None


_SOURCE_COLUMN = re.compile(r"^[^\W\d]\w{0,62}$")


def _source_column(value: str) -> str:
    """A column of a front-end database (前置库): letters (Chinese too), digits, underscores."""
    if not isinstance(value, str) or not _SOURCE_COLUMN.match(value):
        raise ValueError(
            f"{value!r} is not a column name: use letters, digits and underscores, starting with a "
            "letter, at most 63 characters"
        )
    return value


SourceColumn = Annotated[str, AfterValidator(_source_column)]
"""A column name in a front-end database; quoted by SQLAlchemy, never spliced as text."""


class SqlIncrementalConfig(_Model):
    """Incremental reads of a front-end database by an update-time column (keyset paged)."""

    field: SourceColumn = Field(description="the update-time column, e.g. update_time or GXSJ")
    format: str | None = Field(
        None,
        description="a text update column: how its times are written, e.g. '%Y-%m-%d %H:%M:%S' or "
        "'%Y%m%d%H%M%S' (year first, zero-padded, so that they sort like the times); a number column "
        "of such digits: '%Y%m%d%H%M%S'; empty = read from the column's values",
    )
    unit: Literal["s", "ms"] | None = Field(
        None, description="a number update column holding epoch times: s (seconds since 1970-01-01 UTC) or ms"
    )
    lookback: Duration | None = None  # default: defaults.lookback
    safety_lag: Duration | None = None  # default: defaults.safety_lag
    initial: datetime | None = Field(None, description="where the first run starts; empty = everything")

    @field_validator("format")
    @classmethod
    def _sorts_like_times(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                time_format(value)
            except ValueError as exc:
                raise ValueError(
                    f"{exc}. Times written another way cannot be windowed as text: convert the column "
                    "to a time in `query:` (PostgreSQL to_timestamp(upd, 'DD/MM/YYYY HH24:MI') AS upd, MySQL "
                    "STR_TO_DATE(upd, '%d/%m/%Y %H:%i') AS upd) and leave out `format:`"
                ) from None
        return value

    @model_validator(mode="after")
    def _format_or_unit(self) -> SqlIncrementalConfig:
        if self.format is not None and self.unit is not None:
            raise LocatedValueError(
                "give `format:` (times written as text, or as digits like 20260105080000) or `unit:` "
                "(epoch seconds or milliseconds), not both", at=("unit",)
            )
        return self


class SqlSourceConfig(_Model):
    """A front-end database (前置库): a table, a view or an operator-written query."""

    type: Literal["sql"]
    connection: str = Field(description="name of a `type: sql` connection under `connections:`")
    schema_name: Identifier | None = Field(None, alias="schema", description="database schema of `table`")
    table: Identifier | None = Field(None, description="table or view to read")
    query: str | None = Field(None, description="a SELECT written by the operator (trusted config)")
    key: tuple[SourceColumn, ...] = Field(min_length=1, description="unique key columns, for keyset paging")
    incremental: SqlIncrementalConfig | None = None
    page_size: int = Field(5000, ge=1, le=1_000_000)

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    @model_validator(mode="after")
    def _table_or_query(self) -> SqlSourceConfig:
        if (self.table is None) == (self.query is None):
            raise ValueError("give exactly one of `table:` (a table or view) and `query:` (a SELECT)")
        if self.query is not None and self.schema_name is not None:
            raise LocatedValueError("`schema:` goes with `table:`; write the schema inside the query",
                                    at=("schema",))
        return self


class FileSourceConfig(_Model):
    """A drop folder of CSV, XLSX or JSONL files; each file (by content hash) is taken once."""

    type: Literal["file"]
    path: str = Field(
        description="the drop folder, e.g. /srv/syncd-drop/residents; syncd moves each file it took into "
        "processed/ or failed/ under it, so it needs write access to it (docs/systemd.md, section 10)"
    )
    pattern: str = Field("*.csv", description="glob of the files to take, e.g. *.csv or 人口_*.xlsx")
    format: Literal["csv", "xlsx", "jsonl"] | None = Field(None, description="default: from the extension")
    encoding: str | None = Field(None, description="e.g. gb18030; default: UTF-8 (BOM) → UTF-8 → GB18030")
    delimiter: str = Field(",", min_length=1, max_length=1)
    header_row: int = Field(1, ge=1, le=1000, description="1-based row holding the column names")
    sheet: str | None = Field(None, description="XLSX sheet name; default: the first sheet")
    complete_when: Literal["marker", "stable"] = "marker"
    marker_suffix: str = Field(".ok", min_length=1, description="marker file: name.csv.ok")
    stable_for: Duration = timedelta(minutes=1)
    page_size: int = Field(1000, ge=1, le=100_000)

    @field_validator("encoding")
    @classmethod
    def _known_encoding(cls, v: str | None) -> str | None:
        import codecs

        if v is not None:
            try:
                codecs.lookup(v)
            except LookupError:
                raise ValueError(f"unknown encoding {v!r}: use utf-8, utf-8-sig, gbk or gb18030") from None
        return v


SourceConfig = Annotated[
    HttpSourceConfig | SqlSourceConfig | FileSourceConfig, Field(discriminator="type")
]

# --------------------------------------------------------------------------- mapping


_TRANSFORM_SHORTHAND = {
    "null_if": "values",
    "default": "value",
    "constant": "value",
    "date": "formats",
    "datetime": "formats",
    "code_table": "table",
    "regex_extract": "pattern",
    "concat": "fields",
    "mask": "kind",
    "hash": "salt",
    "upper": "",
    "lower": "",
}


class TransformConfig(_Model):
    """One step of a column's transform chain. ``type`` selects a function in the registry
    (:mod:`syncd.mapping.transforms`); the other keys are its options. Options that a transform
    does not use are rejected when the mapping is compiled, naming the transform.

    Known types: strip, halfwidth, upper, lower, null_if, default, constant, date, datetime,
    code_table, regex_extract, concat, mask, hash.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    type: str
    values: tuple[str, ...] | None = None  # null_if
    value: Any = None  # default / constant
    formats: tuple[str, ...] | None = None  # date / datetime
    table: dict[str, str] | str | None = None  # code_table: inline mapping, or name in code_tables:
    unknown: Literal["keep", "null", "quarantine"] | None = None  # code_table
    pattern: str | None = None  # regex_extract
    group: int | str | None = None  # regex_extract
    fields: tuple[str, ...] | None = None  # concat: dotted source paths
    separator: str | None = None  # concat
    kind: Literal["id_number", "phone", "name", "keep"] | None = None  # mask
    keep_first: int | None = None  # mask kind keep
    keep_last: int | None = None  # mask kind keep
    salt: SecretStr | None = None  # hash
    algorithm: Literal["sha256", "sm3"] | None = None  # hash


class ValidatorConfig(_Model):
    """A check on the column's final value; a failing record is quarantined with the reason.

    Known types: required, id_number, not_excel_damaged, regex, length, range. id_number and
    not_excel_damaged also reject a number that arrived as a float of 10^15 or more (e.g.
    1.10105194912159e17): it has lost digits, although its text would look whole.
    """

    type: str
    pattern: str | None = None  # regex
    min: Decimal | None = None  # length / range
    max: Decimal | None = None  # length / range
    message: str | None = None


ColumnType = Literal["string", "int", "decimal", "date", "datetime", "bool"]


class ColumnConfig(_Model):
    """One target column: where its value comes from and how it is cleaned and checked."""

    source: str | None = Field(
        None,
        description="dotted source path (a number part such as 2024 is a key in an object, "
        "an item in a list: phones.0); omit for constant/concat columns",
    )
    type: ColumnType = "string"
    length: int | None = Field(
        None,
        ge=1,
        le=65535,
        description=(
            "VARCHAR length for string columns; a longer value is quarantined. Without it a key column "
            "is VARCHAR(255) (longer keys are quarantined), other columns unbounded text (or, in an "
            "existing table, as long as its column)"
        ),
    )
    precision: int = Field(18, ge=1, le=65)
    scale: int = Field(2, ge=0, le=30)
    nullable: bool = True
    transforms: tuple[
        Annotated[TransformConfig, BeforeValidator(_shorthand("type", _TRANSFORM_SHORTHAND))], ...
    ] = ()
    validators: tuple[
        Annotated[ValidatorConfig, BeforeValidator(_shorthand("type", {"regex": "pattern"}))], ...
    ] = ()
    # bool columns: which source values mean true / false (after transforms)
    true_values: tuple[str, ...] = ("1", "true", "True", "TRUE", "是", "Y", "y")
    false_values: tuple[str, ...] = ("0", "false", "False", "FALSE", "否", "N", "n")

    @model_validator(mode="after")
    def _needs_input(self) -> ColumnConfig:
        generators = {"constant", "concat"}
        if self.source is None and not any(t.type in generators for t in self.transforms):
            raise ValueError(
                "a column needs `source:` (the upstream field) unless a `constant` or `concat` "
                "transform produces its value"
            )
        if self.type == "decimal" and self.scale > self.precision:
            raise LocatedValueError(
                f"scale {self.scale} is larger than precision {self.precision}: precision counts all "
                "digits, scale those after the decimal point (e.g. precision: 14, scale: 2)",
                at=("scale",),
            )
        return self


# --------------------------------------------------------------------------- dataset


class AuthorizationConfig(_Model):
    """The approval under which this dataset may be received (申请/审批), for enforcement and audit."""

    approval_code: str = Field(min_length=1, description="审批单号 / approval number")
    resource_code: str | None = Field(None, description="资源目录编码 / catalogue resource code")
    fields: tuple[str, ...] = Field(min_length=1, description="授权字段: the upstream fields approved")
    valid_from: date
    valid_until: date
    purpose: str | None = Field(None, description="用途 / power-matter code recorded with every run")
    warn_days: int = Field(30, ge=0)

    @model_validator(mode="after")
    def _ordered(self) -> AuthorizationConfig:
        if self.valid_until < self.valid_from:
            raise LocatedValueError(
                "valid_until is before valid_from: check the dates of the approval", at=("valid_until",)
            )
        return self


class LogicalDeleteConfig(_Model):
    """An upstream flag marking a record deleted (``isDeleted: "1"``, ``SCBZ``, ``yxbz``).

    A flagged record maps its key columns only: a tombstone (the key and the flag, its other fields
    empty) deletes its row, and is quarantined only when its key cannot be mapped. A soft delete
    sets ``soft_column`` alone: the row keeps its other values.
    """

    field: str = Field(description="dotted source path of the flag, e.g. isDeleted")
    values: tuple[str, ...] = ("1", "true", "Y")
    mode: Literal["hard", "soft"] = "hard"
    soft_column: Identifier = "is_deleted"

    @field_validator("values", mode="before")
    @classmethod
    def _as_strings(cls, v: Any) -> Any:
        if isinstance(v, list | tuple):
            return tuple(str(x).lower() if isinstance(x, bool) else str(x) for x in v)
        return v


class SnapshotDeleteConfig(_Model):
    """Full-snapshot delete detection: keys a complete full read did not see are deleted.

    Deletes are hard, or soft when ``target.logical_delete.mode`` is soft (its ``soft_column``).
    Guarded: a run that would delete more than ``max_ratio`` of the rows fails instead.
    """

    enabled: bool = True
    max_ratio: float = Field(0.1, ge=0.0, le=1.0, description="largest share of rows one run may delete")
    missing_runs: int = Field(1, ge=1, le=1000, description="complete runs a key must be missing in a row")


class TargetTableConfig(_Model):
    table: Identifier
    key: tuple[Identifier, ...] = Field(
        min_length=1,
        description="primary-key columns; a key column may be hashed (salted hash), never masked: "
        "different values with the same masked text would become one row",
    )
    create: bool = True  # create the table when absent; otherwise verify it
    logical_delete: LogicalDeleteConfig | None = None
    snapshot_delete: SnapshotDeleteConfig | None = None


class ErrorLimit(_Model):
    """The run fails when more records than this are quarantined (both limits apply)."""

    count: int = Field(1000, ge=0)
    ratio: float = Field(0.1, ge=0.0, le=1.0)


class CronSchedule(_Model):
    type: Literal["cron"]
    cron: str = Field(description="five fields: minute hour day month weekday, e.g. '0 2 * * *'")
    jitter: Duration | None = None

    @field_validator("cron")
    @classmethod
    def _valid_cron(cls, v: str) -> str:
        from syncd.daemon.cron import cron_trigger, never_fires

        try:
            trigger = cron_trigger(v, "UTC")
        except ValueError as exc:
            raise ValueError(
                f"{v!r} is not a cron expression ({exc}): write five fields, minute hour day month "
                "weekday, e.g. '0 2 * * *' for 02:00 every day"
            ) from exc
        if never_fires(trigger, datetime.now(UTC)):
            raise ValueError(
                f"{v!r} never fires: no month has the day its day-of-month and month fields ask for "
                "(such as 30 February or 31 April), so the dataset would never run: fix the day or "
                "the month field (e.g. '0 2 28 2 *' for 02:00 on 28 February)"
            )
        return v


class IntervalSchedule(_Model):
    type: Literal["interval"]
    every: Duration
    jitter: Duration | None = None

    @field_validator("every")
    @classmethod
    def _positive(cls, v: timedelta) -> timedelta:
        if v <= timedelta(0):
            raise ValueError("the interval must be longer than zero, e.g. every: 15m")
        return v


ScheduleConfig = Annotated[CronSchedule | IntervalSchedule, Field(discriminator="type")]


class DatasetChangesConfig(_Model):
    """This dataset's change entries (变更日志): how long they are kept, instead of the main file's
    ``changes.retention_days`` (docs/changes.md §5)."""

    retention_days: RetentionDays = Field(
        description="days an entry of this dataset is kept, or forever (never pruned by the daemon); "
        "overrides changes.retention_days of the main file. Entries a local application has not read "
        "yet are deleted all the same: keep them longer than the slowest reader may lag behind"
    )


class DatasetConfig(_Model):
    name: Identifier
    description: str = ""
    enabled: bool = True
    source: SourceConfig
    authorization: AuthorizationConfig
    target: TargetTableConfig
    columns: dict[Identifier, ColumnConfig] = Field(min_length=1)
    schedule: ScheduleConfig | None = None
    batch_size: int | None = Field(None, ge=1, le=100_000)
    error_limit: ErrorLimit | None = None
    changes: DatasetChangesConfig | None = None
    # set by the loader: the file this dataset came from (for messages)
    source_file: str = ""

    @model_validator(mode="after")
    def _keys_are_columns(self) -> DatasetConfig:
        missing = [i for i, k in enumerate(self.target.key) if k not in self.columns]
        if missing:
            names = ", ".join(self.target.key[i] for i in missing)
            raise LocatedValueError(
                f"target.key names {names}, which are not under columns: every key column must be mapped",
                at=("target", "key", missing[0]),
            )
        sd = self.target.snapshot_delete
        if sd is not None and sd.enabled and getattr(self.source, "incremental", None) is not None:
            raise LocatedValueError(
                "target.snapshot_delete needs a full snapshot (全量): an incremental read does not see "
                "every key. Remove source.incremental or snapshot_delete",
                at=("target", "snapshot_delete"),
            )
        ld = self.target.logical_delete
        if ld is not None and ld.mode == "soft" and ld.soft_column in self.columns:
            raise LocatedValueError(
                f"target.logical_delete.soft_column {ld.soft_column!r} is also a mapped column: "
                "pick a column name that syncd alone writes",
                at=("target", "logical_delete", "soft_column"),
            )
        return self


# --------------------------------------------------------------------------- main file


class RetryConfig(_Model):
    attempts: int = Field(5, ge=1, le=100)
    backoff_initial: Duration = timedelta(seconds=0.5)
    backoff_max: Duration = timedelta(seconds=30)
    deadline: Duration = timedelta(minutes=5)  # total time one request may spend retrying


class TimeoutConfig(_Model):
    connect: Duration = timedelta(seconds=10)
    read: Duration = timedelta(seconds=60)


class HttpConnection(_Model):
    type: Literal["http"]
    base_url: str
    auth: AuthConfig = NoAuth(type="none")
    envelope: EnvelopeConfig = EnvelopeConfig()
    timeout: TimeoutConfig = TimeoutConfig()
    retry: RetryConfig = RetryConfig()
    verify_tls: bool = True
    ca_bundle: str | None = Field(
        None,
        description="PEM file of an intranet CA (政务外网 CA), e.g. /etc/syncd/ca.pem; a relative name is "
        "relative to this file's directory. Checked at load: it must exist, be readable and hold a PEM "
        "certificate",
    )
    max_response_bytes: int = Field(64 * 1024 * 1024, ge=1024)
    headers: dict[str, str] = Field(default_factory=dict)

    @field_validator("ca_bundle")
    @classmethod
    def _ca_file(cls, v: str | None, info: ValidationInfo) -> str | None:
        """The CA file, made absolute against the configuration file's directory (the loader's
        ``config_dir`` context; a run under systemd starts in /), and loaded once as the client will."""
        if v is None:
            return None
        path = Path(v)
        base = (info.context or {}).get("config_dir")
        if not path.is_absolute() and base is not None:
            path = Path(base) / path
        path = path.absolute()
        if path.is_dir():
            raise ValueError(f"{path} is a directory: name the CA's PEM file in it (e.g. {path}/ca.pem)")
        try:
            ssl.create_default_context(cafile=str(path))
        except FileNotFoundError:
            raise ValueError(
                f"the CA file {path} does not exist: copy the PEM file of the CA that signed the gateway's "
                "certificate there (under systemd keep it in /etc/syncd/; a relative name is relative to "
                "the configuration file's directory)"
            ) from None
        except ssl.SSLError:
            raise ValueError(
                f"{path} holds no PEM certificate: export the CA certificate as PEM (Base64, "
                "-----BEGIN CERTIFICATE-----), e.g. `openssl x509 -inform der -in ca.cer -out ca.pem`"
            ) from None
        except OSError as exc:
            raise ValueError(
                f"the CA file {path} cannot be read ({exc.strerror}): the user syncd runs as must be able "
                "to read it (chmod 0644; under systemd keep it in /etc/syncd/: ProtectHome= hides /root "
                "and /home)"
            ) from None
        return str(path)

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, v: str) -> str:
        if not re.match(r"^https?://[^/\s]+", v):
            raise ValueError(f"{v!r} is not an http(s) URL such as https://gateway.example.gov.cn/api")
        return v.rstrip("/")


class SqlConnection(_Model):
    """A front-end database (前置库). The URL holds the password: only from ${ENV}/${credential:…}."""

    type: Literal["sql"]
    url: SecretStr = Field(
        description="SQLAlchemy URL, e.g. postgresql+psycopg://user:${credential:qzk}@host/db?sslmode=verify-full"
        "&sslrootcert=/etc/syncd/qzk-ca.pem. The password reference after `user:` is taken as it is: "
        "write the password without escaping (syncd percent-encodes @ : / % in it). "
        "Another host without a checked certificate is warned about "
        "(config.database_tls_unverified): add the CA (sslrootcert= / ssl_ca=) or write sslmode=disable / "
        "ssl_disabled=true"
    )
    connect_timeout: Duration = timedelta(seconds=10)


ConnectionConfig = Annotated[HttpConnection | SqlConnection, Field(discriminator="type")]


class DatabaseConfig(_Model):
    """The target database. syncd's own tables (row state, change log, watermarks, runs,
    quarantine) live in the same database, so each batch commits atomically (DESIGN §4.2)."""

    url: SecretStr = Field(
        description="SQLAlchemy URL, e.g. sqlite:////var/lib/syncd/syncd.db (four slashes: an absolute "
        "path; sqlite:///x.db is relative to the working directory and warned about: "
        "config.sqlite_path_relative) or "
        "postgresql+psycopg://syncd:${credential:db_password}@127.0.0.1:5432/jcsj; the password reference "
        "after `user:` is taken as it is: write the password without escaping (syncd percent-encodes "
        "@ : / % in it). MariaDB/MySQL on this "
        "machine (localhost, 127.0.0.1, ::1, unix_socket) is reached without TLS unless the URL "
        "sets ssl_ca (verified TLS). Another host without a checked certificate is warned about "
        "(config.database_tls_unverified): add the CA (PostgreSQL sslmode=verify-full&sslrootcert=…, "
        "MariaDB ssl_ca=…) or write sslmode=disable / ssl_disabled=true"
    )
    table_prefix: Identifier = "syncd_"
    pool_size: int = Field(5, ge=1, le=100)


class Defaults(_Model):
    batch_size: int = Field(1000, ge=1, le=100_000)
    lookback: Duration = timedelta(minutes=10)
    safety_lag: Duration = timedelta(seconds=30)
    error_limit: ErrorLimit = ErrorLimit()
    read_worker: Literal["auto", "always", "never"] = Field(
        "auto",
        description=(
            "http sources: read, decode and map records in a second process (docs/performance.md); "
            "auto = first loads of 30,000 records or more, always, never"
        ),
    )


class LoggingConfig(_Model):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    format: Literal["auto", "json", "console"] = "auto"


class DaemonConfig(_Model):
    """``syncd run``: the scheduler, supervision and the monitoring endpoint (docs/daemon.md)."""

    metrics_host: str = "127.0.0.1"
    metrics_port: int = Field(9464, ge=0, le=65535, description="0 disables /metrics and /healthz")
    max_concurrent_runs: int = Field(4, ge=1, le=64)
    misfire_grace_time: Duration = timedelta(minutes=10)
    heartbeat_interval: Duration = timedelta(seconds=10)
    heartbeat_timeout: Duration = timedelta(seconds=60)
    stop_timeout: Duration = timedelta(seconds=75)
    unhealthy_after_failures: int = Field(3, ge=1)

    @model_validator(mode="after")
    def _heartbeat_order(self) -> DaemonConfig:
        if self.heartbeat_timeout <= 2 * self.heartbeat_interval:
            raise LocatedValueError(
                "heartbeat_timeout must be more than twice heartbeat_interval", at=("heartbeat_timeout",)
            )
        return self


class ChangesConfig(_Model):
    """The change feed (变更日志, ``<table_prefix>changes``): how long its entries are kept. By default
    every entry is kept for good; with ``retention_days`` the daemon deletes older ones once a day at
    ``prune_at`` (docs/changes.md §5). A dataset file may set its own ``changes.retention_days``."""

    retention_days: RetentionDays = Field(
        "forever",
        description="days a change entry is kept before the daemon deletes it, or forever (nothing is "
        "deleted). Entries a local application has not read yet are deleted all the same: keep them "
        "longer than the slowest reader may lag behind",
    )
    prune_at: str = Field(
        "03:30",
        pattern=_CLOCK_TIME.pattern,
        description="local time (HH:MM, in `timezone`) at which the daemon deletes expired entries, "
        "once a day; pick a quiet hour",
    )

    @field_validator("prune_at", mode="before")
    @classmethod
    def _clock_time(cls, v: Any) -> Any:
        if not isinstance(v, str) or not _CLOCK_TIME.match(v.strip()):
            raise ValueError(f"{v!r} is not a time of day: write it as HH:MM, e.g. \"03:30\"")
        return v.strip()

    def at(self) -> tuple[int, int]:
        """``prune_at`` as (hour, minute)."""
        hour, minute = self.prune_at.split(":")
        return int(hour), int(minute)


class RunsConfig(_Model):
    """The runs table (运行记录, ``<table_prefix>runs``: one row per run, the audit trail 使用留痕 that
    ``syncd runs``, ``syncd status`` and ``syncd report`` read): how long the records of ended runs are
    kept. By default every run is kept for good; with ``retention_days`` the daemon's daily prune (at
    ``changes.prune_at``) deletes older ones, keeping each dataset's latest run of every status
    (docs/daemon.md §8). Main file only: the runs table is one table for every dataset."""

    retention_days: RunRetentionDays = Field(
        "forever",
        description="days the record of an ended run is kept before the daemon deletes it, or forever "
        "(nothing is deleted). Each dataset's latest run of every status stays, however old, and so do "
        "runs still running. Deleted runs are gone from `syncd runs` and from `syncd report` of their "
        "month: keep them at least as long as the usage records (使用留痕) must be kept",
    )


class AppConfig(_Model):
    timezone: str = "Asia/Shanghai"
    target: DatabaseConfig
    connections: dict[str, ConnectionConfig] = Field(default_factory=dict)
    defaults: Defaults = Defaults()
    logging: LoggingConfig = LoggingConfig()
    daemon: DaemonConfig = DaemonConfig()
    changes: ChangesConfig = ChangesConfig()
    runs: RunsConfig = RunsConfig()
    code_tables: dict[str, dict[str, str]] = Field(
        default_factory=dict, description="shared 字典 code tables, referenced by name from code_table"
    )
    datasets_dir: str = "datasets"
    # filled by the loader from datasets_dir
    datasets: dict[str, DatasetConfig] = Field(default_factory=dict)
    source_file: str = ""

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, v: str) -> str:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError, OSError) as exc:
            raise ValueError(f"unknown time zone {v!r}: use an IANA name such as Asia/Shanghai") from exc
        return v

    def retention_days(self, dataset: DatasetConfig) -> int | None:
        """Days the dataset's change entries are kept (its own ``changes.retention_days``, else the main
        file's); None: for good."""
        own = dataset.changes
        days = own.retention_days if own is not None else self.changes.retention_days
        return None if days == "forever" else days

    def run_retention_days(self) -> int | None:
        """Days the records of ended runs are kept (``runs.retention_days``); None: for good."""
        days = self.runs.retention_days
        return None if days == "forever" else days
