"""Descriptions of configuration fields that the model itself does not describe.

The JSON Schema (``syncd schema``) and the generated reference (``docs/configuration.md``) take a
field's description from the pydantic model when it has one, else from :data:`FIELD_DOCS`
(``"Model.field"``), else from :data:`NAME_DOCS` (by field name alone). A test checks that every
field an operator can write is described somewhere.
"""

from __future__ import annotations

__all__ = ["FIELD_DOCS", "NAME_DOCS", "describe_field"]

SECRET_NOTE = "Secret: write ${ENV} or ${credential:NAME}, never the value itself."  # noqa: S105 - advice

NAME_DOCS: dict[str, str] = {
    "type": "selects the variant (see the allowed values)",
    "page_size": "records asked for per request; must not exceed the gateway's cap (often 100 or 1000)",
    "timestamp_unit": "unit of the signed timestamp: s (seconds) or ms (milliseconds)",
    "encoding": "how the signature bytes are written: hex, hex-upper or base64",
    "placement": "where the value goes: header or query parameter",
    "app_key": "the application key (appKey) issued by the gateway; not a secret",
    "client_id": "the client id issued by the gateway; not a secret",
    "jitter": "random delay added to each scheduled start, to spread load (e.g. 5m)",
    "recipe": "the signature recipe: algorithm, ordered parts, encoding and placement",
    "pattern": "a regular expression (Python syntax)",
    "message": "text used instead of the default reason when the check fails",
}

FIELD_DOCS: dict[str, str] = {
    # auth
    "SignatureRecipe.algorithm": "hash used for the signature: md5, sha1, sha256, hmac-sha256 or sm3 (国密)",
    "SignatureRecipe.parts": "ordered parts joined into the signed text; placeholders {app_key} {secret} "
    "{timestamp} {nonce} {token} {client_id} {path} {body}",
    "SignatureRecipe.separator": "text put between the parts (usually empty)",
    "SignatureRecipe.signature_name": "header or parameter name of the signature",
    "SignatureRecipe.timestamp_name": "header or parameter name of the timestamp; empty = not sent",
    "SignatureRecipe.nonce_name": "header or parameter name of the random nonce; empty = no nonce",
    "SignatureRecipe.extra": "static parameters sent with every request (e.g. appKey, x-tif-paasid)",
    "StaticKeyAuth.value": "the key sent with every request",
    "StaticKeyAuth.prefix": "text put before the key (e.g. 'Bearer ')",
    "TokenAuth.method": "HTTP method of the token endpoint",
    "TokenAuth.app_secret": "the application secret (appSecret) exchanged for a token",
    "TokenAuth.key_field": "name of the app key field in the token request",
    "TokenAuth.secret_field": "name of the app secret field in the token request",
    "TokenAuth.body_format": "how the credentials are sent: json body, form body or query string",
    "TokenAuth.token_path": "dotted path of the token in the token response",
    "TokenAuth.expires_in_path": "dotted path of the token lifetime in seconds; empty = default_ttl",
    "TokenAuth.default_ttl": "token lifetime when the response does not say",
    "TokenAuth.refresh_before": "fetch a new token this long before the old one expires",
    "TokenAuth.header": "header that carries the token",
    "TokenAuth.header_prefix": "text put before the token in the header",
    "TokenAuth.placement": "send the token in a header or as a query parameter",
    "TokenAuth.query_param": "query parameter name when placement is query",
    "HmacHeadersAuth.secret": "the HMAC secret shared with the gateway",
    "HmacHeadersAuth.client_id_header": "header carrying the client id",
    "HmacHeadersAuth.timestamp_header": "header carrying the timestamp",
    "HmacHeadersAuth.nonce_header": "header carrying the random nonce",
    "HmacHeadersAuth.signature_header": "header carrying the signature",
    "HmacHeadersAuth.encoding": "signature encoding: base64 (Shandong) or hex",
    "SignedAuth.secret": "the secret used in the signature recipe ({secret})",
    "TwoTierSecretAuth.app_secret": "the application secret used to obtain the refresh secret",
    "TwoTierSecretAuth.refresh_by_key_url": "endpoint issuing secrets from the app secret "
    "(refreshTokenByKey)",
    "TwoTierSecretAuth.refresh_by_secret_url": "endpoint renewing the request secret (refreshTokenBySec)",
    "TwoTierSecretAuth.payload_path": "dotted path of the secrets in the answer (may be a JSON string)",
    "TwoTierSecretAuth.refresh_before": "renew the request secret this long before it ends",
    # envelope and paging
    "EnvelopeConfig.code_path": "dotted path of the business code; empty = no code (HTTP status only)",
    "EnvelopeConfig.success_codes": "business codes meaning success (compared as text)",
    "EnvelopeConfig.message_path": "dotted path of the gateway's message, shown in errors",
    "EnvelopeConfig.transient_codes": "codes meaning 'try again later' (e.g. 50001 系统繁忙): retried",
    "EnvelopeConfig.auth_expired_codes": "codes meaning the token/secret expired: renewed once, then retried",
    "EnvelopeConfig.records_path": "dotted path of the record list; empty = the body is the list",
    "EnvelopeConfig.total_path": "dotted path of the total record count, checked against what arrived",
    "EnvelopeConfig.cursor_path": "dotted path of the next cursor (cursor pagination)",
    "EnvelopeConfig.decode_strings": "paths whose value is a JSON string to decode again (e.g. data, datas)",
    "EnvelopeConfig.server_time_path": "dotted path of the server clock, for clock-skew warnings",
    "PageNumberPagination.page_param": "name of the page-number parameter",
    "PageNumberPagination.size_param": "name of the page-size parameter",
    "PageNumberPagination.first_page": "number of the first page (1 or 0)",
    "OffsetPagination.offset_param": "name of the start-row parameter (e.g. STARTNUM)",
    "OffsetPagination.limit_param": "name of the row-count parameter (e.g. PAGENUM)",
    "OffsetPagination.first_offset": "the first start row: 0, or 1 for 1-based gateways",
    "CursorPagination.cursor_param": "name of the cursor parameter",
    "CursorPagination.size_param": "name of the page-size parameter; empty = not sent",
    "IncrementalConfig.start_param": "parameter carrying the start of the update-time range",
    "IncrementalConfig.end_param": "parameter carrying the end of the range; empty = not sent",
    "IncrementalConfig.value_formats": "formats accepted for the record's update time (first match wins)",
    "IncrementalConfig.lookback": "re-read this long before the watermark; empty = defaults.lookback",
    "IncrementalConfig.safety_lag": "leave the newest records of this age for the next run; "
    "empty = defaults.safety_lag",
    "HttpSourceConfig.path": "path of the data endpoint, relative to the connection's base_url",
    "HttpSourceConfig.method": "HTTP method of the data endpoint",
    "HttpSourceConfig.params": "fixed query (or body) parameters sent with every request",
    "HttpSourceConfig.body": "POST: a JSON body template; parameters go into it instead of the query",
    "HttpSourceConfig.pagination": "how pages are requested: page_number, offset or cursor",
    "HttpSourceConfig.envelope": "how to read this endpoint's answers; empty = the connection's envelope",
    "HttpSourceConfig.incremental": "read only records updated since the last run; empty = full reads",
    # mapping
    "TransformConfig.type": "strip, halfwidth, upper, lower, null_if, default, constant, date, datetime, "
    "code_table, regex_extract, concat, mask or hash",
    "TransformConfig.values": "null_if: values meaning 'no value' (e.g. 无, /, 空)",
    "TransformConfig.value": "default / constant: the value",
    "TransformConfig.formats": "date / datetime: accepted formats, tried in order (strftime syntax)",
    "TransformConfig.table": "code_table: an inline mapping, or the name of a shared code table",
    "TransformConfig.unknown": "code_table: a code not in the table is kept, made null, or quarantined",
    "TransformConfig.pattern": "regex_extract: the regular expression",
    "TransformConfig.group": "regex_extract: the group to keep (number or name)",
    "TransformConfig.fields": "concat: the dotted source paths joined",
    "TransformConfig.separator": "concat: text between the parts",
    "TransformConfig.kind": "mask: id_number, phone, name or keep (with keep_first/keep_last); "
    "not on a target.key column (use hash there)",
    "TransformConfig.keep_first": "mask kind keep: characters kept at the start",
    "TransformConfig.keep_last": "mask kind keep: characters kept at the end",
    "TransformConfig.salt": "hash: the salt mixed into the hash",
    "TransformConfig.algorithm": "hash: sha256 or sm3",
    "ValidatorConfig.type": "required, id_number, not_excel_damaged, regex, length or range",
    "ValidatorConfig.min": "length / range: the smallest allowed value",
    "ValidatorConfig.max": "length / range: the largest allowed value",
    "ColumnConfig.type": "column type: string, int, decimal, date, datetime or bool. int, decimal, date "
    "and datetime read ASCII digits only: full-width ones (１２３．５, 全角) are quarantined unless the "
    "halfwidth transform comes first",
    "ColumnConfig.precision": "decimal: total number of digits. An SQLite target keeps 15 significant "
    "digits of a number with decimals (18 digits with scale 0): a record whose value has more is "
    "quarantined, never stored rounded (PostgreSQL and MariaDB keep the full precision)",
    "ColumnConfig.scale": "decimal: digits after the decimal point",
    "ColumnConfig.nullable": "false = a record without a value is quarantined (NOT NULL)",
    "ColumnConfig.transforms": "ordered cleaning steps, e.g. [strip, halfwidth, {null_if: [无, /]}]",
    "ColumnConfig.validators": "checks on the final value; a failing record is quarantined",
    "ColumnConfig.true_values": "bool columns: source values meaning true",
    "ColumnConfig.false_values": "bool columns: source values meaning false",
    # dataset
    "AuthorizationConfig.valid_from": "first day the approval is valid (YYYY-MM-DD)",
    "AuthorizationConfig.valid_until": "last day the approval is valid; after it the dataset does not run",
    "AuthorizationConfig.warn_days": "warn this many days before the approval expires",
    "LogicalDeleteConfig.values": "flag values meaning deleted (compared as text)",
    "LogicalDeleteConfig.mode": "hard = delete the local row; soft = set soft_column to true",
    "LogicalDeleteConfig.soft_column": "soft mode: the BOOLEAN column syncd sets (not a mapped column)",
    "TargetTableConfig.table": "name of the target table",
    "TargetTableConfig.create": "create the table when absent; false = verify an existing table only",
    "TargetTableConfig.logical_delete": "how upstream logical-delete flags are applied",
    "ErrorLimit.count": "the run fails when more records than this are quarantined",
    "ErrorLimit.ratio": "the run fails when more than this share of records is quarantined (0.1 = 10%)",
    "IntervalSchedule.every": "run every this long, e.g. 15m or 1h",
    "DatasetConfig.name": "the dataset's name, used on the command line and in syncd's tables",
    "DatasetConfig.description": "free text for operators",
    "DatasetConfig.enabled": "false = not run by `sync --all` or the scheduler",
    "DatasetConfig.source": "where the records come from",
    "DatasetConfig.authorization": "the approval under which the dataset may be received (授权)",
    "DatasetConfig.target": "the target table, its key and how deletes are applied",
    "DatasetConfig.columns": "target column name → where its value comes from and how it is cleaned",
    "DatasetConfig.schedule": "when the daemon runs the dataset: cron or interval",
    "DatasetConfig.batch_size": (
        "rows per committed batch (a re-sync: once this many changed rows wait); "
        "empty = defaults.batch_size"
    ),
    "DatasetConfig.error_limit": "quarantine limits of this dataset; empty = defaults.error_limit",
    "DatasetConfig.changes": "how long this dataset's change entries are kept; empty = changes of the "
    "main file",
    # main file
    "RetryConfig.attempts": "tries per request, the first included",
    "RetryConfig.backoff_initial": "wait before the first retry (doubles each time, with jitter)",
    "RetryConfig.backoff_max": "longest wait between retries",
    "RetryConfig.deadline": "total time one request may spend retrying",
    "TimeoutConfig.connect": "time allowed to open the connection",
    "TimeoutConfig.read": "time allowed between bytes of the answer",
    "HttpConnection.base_url": "http(s) URL of the gateway; source paths are relative to it",
    "HttpConnection.auth": "how requests are authenticated",
    "HttpConnection.envelope": "how answers are read (business code, records, total)",
    "HttpConnection.timeout": "connect and read timeouts",
    "HttpConnection.retry": "retries of transient failures",
    "HttpConnection.verify_tls": "check the server's TLS certificate (keep true; use ca_bundle instead)",
    "HttpConnection.max_response_bytes": "answers larger than this are refused",
    "HttpConnection.headers": "fixed headers sent with every request",
    "DatabaseConfig.table_prefix": "prefix of syncd's own tables",
    "DatabaseConfig.pool_size": "database connections kept open",
    "Defaults.batch_size": "rows per committed batch (a re-sync: once this many changed rows wait)",
    "Defaults.lookback": "incremental reads re-read this long before the watermark",
    "Defaults.safety_lag": "incremental reads leave records newer than this for the next run",
    "Defaults.error_limit": "quarantine limits (count and ratio)",
    "LoggingConfig.level": "DEBUG, INFO, WARNING or ERROR",
    "LoggingConfig.format": "json (journald), console, or auto (json when not on a terminal)",
    "AppConfig.timezone": "IANA time zone of schedules and update times",
    "AppConfig.target": "the target database (data and syncd's own tables)",
    "AppConfig.connections": "named upstream connections, referenced by datasets",
    "AppConfig.defaults": "defaults for every dataset",
    "AppConfig.logging": "log level and format",
    "AppConfig.changes": "the change feed (变更日志): how long entries are kept, when the daemon prunes",
    "AppConfig.runs": "the runs table (运行记录): how long the records of ended runs are kept",
    "AppConfig.datasets_dir": "directory of dataset files, relative to this file",
}


def describe_field(model: str, field: str, own: str | None) -> str:
    """The description of ``model.field``: the model's own, else the supplement's, else ``""``."""
    if own:
        return own
    return FIELD_DOCS.get(f"{model}.{field}") or NAME_DOCS.get(field, "")
