"""The HTTP source: pages of raw records from one gateway resource.

:class:`HttpSource` wires the pieces for one dataset: an :class:`HttpClient` (one session),
the connection's auth scheme, the envelope (the dataset's own or the connection's) and a
fresh paginator per read. ``read(window)`` yields one :class:`~syncd.sources.base.Page` at a
time, so memory is bounded by the page size; ``stats.complete`` becomes True only when the
last page was reached normally.

Parameters: static ``params`` go into the query; paging and incremental parameters go into
the query for GET, and into the JSON body (merged over ``body``) for POST. The API a dataset calls
(:func:`~syncd.sources.http.client.endpoint_id`, for telling a revoked credential from one the API
refuses) is its method, URL, static ``params`` and ``body``: never the paging or window parameters,
which change from page to page and run to run.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from datetime import datetime, tzinfo
from typing import Any
from zoneinfo import ZoneInfo

import orjson

from syncd.changes.hashing import text_digester
from syncd.config.model import AppConfig, DatasetConfig, HttpConnection, HttpSourceConfig
from syncd.errors import ConfigError, PermanentUpstreamError
from syncd.paths import compile_path
from syncd.sources.base import Page, ReadStats, ResumePoint, StopSignal, Window
from syncd.sources.http import texts
from syncd.sources.http.auth import build_auth
from syncd.sources.http.auth.base import CredentialState, Renewal
from syncd.sources.http.client import HttpClient, endpoint_id
from syncd.sources.http.envelope import Envelope, ParsedPage
from syncd.sources.http.paging import Paginator, build_paginator
from syncd.sources.http.texts import RecordTexts, TextSplitter

__all__ = ["HttpSource", "time_parser"]

# a page's records, their digests, texts and heads (Page)
_Records = tuple[list[dict[str, Any]], list[str] | None, list[bytes] | None, list[dict[str, Any]] | None]

_ISO_SECONDS = "%Y-%m-%d %H:%M:%S"
_ISO_FRACTION = "%Y-%m-%d %H:%M:%S.%f"
_COMPACT = "%Y%m%d%H%M%S"


def time_parser(fmt: str) -> Callable[[str], datetime]:
    """A parser for one ``value_formats`` entry; the common shapes skip the slow ``strptime``.

    Each fast path rejects a value of another shape at once, so trying the formats in order
    stays cheap when a dataset uses its third format (values of the right shape that are not
    zero-padded still reach ``strptime``).
    """
    if fmt == _ISO_SECONDS:

        def parse_seconds(text: str) -> datetime:
            if len(text) == 19 and text[10] == " " and text[4] == "-":
                return datetime.fromisoformat(text)
            if "-" not in text or ":" not in text or "." in text:
                raise ValueError(text)
            return datetime.strptime(text, fmt)

        return parse_seconds
    if fmt == _ISO_FRACTION:

        def parse_fraction(text: str) -> datetime:
            if 21 <= len(text) <= 26 and text[10] == " " and text[19] == ".":
                return datetime.fromisoformat(text)
            if "-" not in text or ":" not in text or "." not in text:
                raise ValueError(text)
            return datetime.strptime(text, fmt)

        return parse_fraction
    if fmt == _COMPACT:

        def parse_compact(text: str) -> datetime:
            if len(text) != 14 or not text.isdigit():
                raise ValueError(text)
            return datetime(
                int(text[0:4]),
                int(text[4:6]),
                int(text[6:8]),
                int(text[8:10]),
                int(text[10:12]),
                int(text[12:14]),
            )

        return parse_compact
    return lambda text: datetime.strptime(text, fmt)


class HttpSource:
    """A :class:`~syncd.sources.base.Source` reading one dataset from an HTTP gateway."""

    def __init__(
        self,
        *,
        dataset: str,
        source: HttpSourceConfig,
        connection: HttpConnection,
        connection_name: str,
        tz: tzinfo,
        config_file: str = "",
    ) -> None:
        self.name = dataset
        self.cfg = source
        self.stats = ReadStats()
        # set by the runner for a first load that may hand over to the read worker: each page then
        # carries its ResumePoint (a copy of the paginator and the statistics, per page)
        self.offer_resume = False
        self._tz = tz
        self._client = HttpClient(connection, name=connection_name, stats=self.stats)
        try:
            self._envelope = Envelope(source.envelope or connection.envelope, tz=tz)
            self._auth = build_auth(
                connection.auth,
                client=self._client,
                envelope=Envelope(connection.envelope, tz=tz),
                config_file=config_file,
                config_path=("connections", connection_name, "auth"),
            )
        except BaseException:
            self._client.close()
            raise
        self._url = self._client.resolve(source.path)
        self._endpoint = endpoint_id(source.method, self._url, source.params, source.body)
        inc = source.incremental
        self._time_at = compile_path(inc.field) if inc is not None else None
        self._time_field = inc.field.split(".", 1)[0] if inc is not None else None
        envelope = source.envelope or connection.envelope
        # records by their texts (syncd.sources.http.texts): not where strings are decoded first
        textual = texts.AVAILABLE and not envelope.decode_strings
        self._records_path = envelope.records_path if textual else None
        self._splitter: TextSplitter | None = None  # digest_texts()
        self._heads: tuple[str, ...] | None = None  # read_heads()
        self._time_parsers = tuple(time_parser(f) for f in inc.value_formats) if inc is not None else ()

    @classmethod
    def from_config(cls, app: AppConfig, dataset: DatasetConfig) -> HttpSource:
        """Build the source of ``dataset``, resolving its connection in ``app.connections``."""
        src = dataset.source
        if not isinstance(src, HttpSourceConfig):
            raise TypeError(f"dataset {dataset.name} has a {src.type} source, not an http one")
        connection = app.connections.get(src.connection)
        if not isinstance(connection, HttpConnection):  # the load's cross-check refuses this already
            main = app.source_file or "the main file"
            if connection is None:
                known = ", ".join(sorted(app.connections)) or "none are defined"
                message = f"unknown connection {src.connection!r}: define it under connections: in {main} "
                message += f"(known: {known})"
            else:
                message = f"connection {src.connection!r} in {main} is of type {connection.type}, not http: "
                message += "name an http connection"
            from syncd.config.loader import config_issue  # the read worker does not import the loader

            raise ConfigError([config_issue(dataset.source_file, ("source", "connection"), message,
                                            unnamed="the dataset's file")])
        return cls(
            dataset=dataset.name,
            source=src,
            connection=connection,
            connection_name=src.connection,
            tz=ZoneInfo(app.timezone),
            config_file=app.source_file,
        )

    # ------------------------------------------------------------------ Source protocol

    def read(self, window: Window, resume: ResumePoint | None = None) -> Iterator[Page]:
        """Yield the window's pages in order; ``stats`` restarts with each read.

        ``resume``: read on after the page another reader of the same window stopped at (the
        :class:`~syncd.sources.base.ResumePoint` of that page, from a source whose
        ``offer_resume`` was set): the pages that follow it, numbered on from it, with its
        statistics carried over."""
        if resume is None:
            self.stats = ReadStats()
        else:
            self.stats = replace(resume.stats, warnings=list(resume.stats.warnings))
        self._client.stats = self.stats
        return self._pages(window, resume)

    def digest_texts(self, key: bytes) -> bool:
        """Give each page's record digests (:class:`~syncd.sources.base.Page`), taken over the
        records' texts with ``key`` (:func:`~syncd.changes.hashing.text_digester`) as the page is
        read; the texts are not kept. False where this source has no texts: its caller digests the
        records by their values (a page the texts cannot carry exactly gets no digests either)."""
        if self._records_path is None:
            return False
        splitter = TextSplitter(self._records_path, text_digester(key))
        self._splitter = splitter if splitter.usable else None
        return splitter.usable

    def read_heads(self, fields: tuple[str, ...]) -> bool:
        """Read the next pages as texts and heads (:class:`~syncd.sources.base.Page`): no record
        is decoded; each comes as its text, its digest and a dict of the top-level ``fields`` plus
        the update time's. Needs :meth:`digest_texts`; False (and pages as usual) without."""
        if self._splitter is None:
            return False
        wanted = fields if self._time_field is None else (*fields, self._time_field)
        self._heads = tuple(dict.fromkeys(wanted))
        return True

    def update_time(self, record: dict[str, Any]) -> datetime | None:
        """The record's ``incremental.field`` as a naive datetime in the app's time zone, or None."""
        if self._time_at is None:
            return None
        value = self._time_at(record)
        if isinstance(value, str):
            text = value.strip()
            for parse in self._time_parsers:
                try:
                    parsed = parse(text)
                except ValueError:
                    continue
                if parsed.tzinfo is not None:
                    parsed = parsed.astimezone(self._tz).replace(tzinfo=None)
                return parsed
            return None
        if isinstance(value, int | float) and not isinstance(value, bool):
            seconds = value / 1000 if value > 1e11 else value  # epoch milliseconds (or seconds)
            try:
                return datetime.fromtimestamp(seconds, self._tz).replace(tzinfo=None)
            except (OverflowError, OSError, ValueError):
                return None
        return None

    def close(self) -> None:
        self._client.close()

    def watch_stop(self, stop: StopSignal) -> None:
        """Stop at ``stop`` (the run's): no request or retry after it, no backoff sleeps through it
        (:class:`~syncd.sources.http.client.HttpClient`); token requests of the auth go through the
        same client."""
        self._client.stop = stop

    # ------------------------------------------------------------------ credentials and the read worker

    def credential_state(self) -> CredentialState | None:
        """The connection's credential this process holds (a token, a request secret), for a read
        worker to read with; None when there is none (yet, or for this auth type)."""
        return self._auth.export_state()

    def renew_credential(self, held: str | None) -> CredentialState | None:
        """A read worker asks for a credential: ``held`` is the fingerprint of its own (refused or
        due), or None (:meth:`~syncd.sources.http.auth.AuthScheme.renew_for_delegate`)."""
        return self._auth.renew_for_delegate(held)

    def share_credentials(self, state: CredentialState | None, renew: Renewal) -> None:
        """In the read worker: read with the run process's credential ``state``, and get every new
        one from ``renew`` (the run's process) instead of from the gateway."""
        self._auth.adopt_state(state)
        self._auth.delegate_renewal(renew)

    def __repr__(self) -> str:
        return f"<HttpSource {self.name} {self.cfg.method} {self.cfg.path}>"

    # ------------------------------------------------------------------ internals

    def _pages(self, window: Window, resume: ResumePoint | None) -> Iterator[Page]:
        stats = self.stats
        fixed = self._window_params(window)
        paginator: Paginator
        if resume is None:
            paginator = build_paginator(self.cfg.pagination)
            params = paginator.first()
            last_total: int | None = None
        else:
            paginator, params, last_total = resume.paging.snapshot(), dict(resume.params), resume.last_total
        while True:
            page = self._fetch({**fixed, **params}, paginator)
            stats.pages += 1
            stats.records += len(page.records)
            records, digests, texts, heads = self._records_of(page)
            if page.total is not None:
                if stats.reported_total is None and stats.pages == 1:
                    stats.reported_total = page.total
                elif last_total is not None and page.total != last_total:
                    stats.total_changed = True
                    stats.warnings.append(
                        f"the gateway's reported total changed while paging (from {last_total} to "
                        f"{page.total} at page {stats.pages}): records changed upstream during the read"
                    )
                last_total = page.total
            following = paginator.next(page)
            point = None
            if self.offer_resume and following is not None:
                point = ResumePoint(
                    paging=paginator.snapshot(),
                    params=following,
                    stats=replace(stats, requests=0, retries=0, bytes=0, warnings=list(stats.warnings)),
                    last_total=last_total,
                )
            yield Page(records, stats.pages, page.total, point, digests, texts, heads)
            if following is None:
                break
            params = following
        stats.complete = True

    def _fetch(self, paging: dict[str, Any], paginator: Paginator) -> ParsedPage:
        cfg = self.cfg
        if cfg.method == "POST":
            query: dict[str, Any] = dict(cfg.params)
            body: Any = {**(cfg.body or {}), **paging}
        else:
            query = {**cfg.params, **paging}
            body = cfg.body
        return self._client.fetch(
            cfg.method,
            self._url,
            params=query,
            json_body=body,
            auth=self._auth,
            parse=lambda decoded: self._parse(decoded, paginator),
            decode=self._decode if self._splitter is not None else None,
            endpoint=self._endpoint,
        )

    def _decode(self, raw: bytearray) -> Any:
        """The body by its records' texts (:mod:`syncd.sources.http.texts`), or None (orjson alone)."""
        splitter = self._splitter
        if splitter is None:
            return None
        if self._heads is not None:
            return splitter.split(raw, self._heads)
        digests = splitter.digests(raw)
        if digests is None:
            return None
        try:
            return _Digested(orjson.loads(raw), digests)
        except orjson.JSONDecodeError:  # the client's own decode reports it
            return None

    def _parse(self, body: Any, paginator: Paginator) -> ParsedPage:
        """The envelope's parse, plus the page-size fix when the first page's business error is about it."""
        digests = None
        if body.__class__ is _Digested:
            body, digests = body.body, body.digests
        try:
            page = self._envelope.parse(body)
        except PermanentUpstreamError as exc:
            message = str(exc)  # the gateway's code and message, before the client adds the URL
            if exc.code is None or paginator.pages > 0 or "pagination.page_size" in message:
                raise
            hint = paginator.size_hint(message)
            if hint is None:
                raise
            raise PermanentUpstreamError(f"{message}; {hint}", code=exc.code, status=exc.status) from None
        if digests is not None and len(digests) == len(page.records):
            page = replace(page, digests=digests)
        return page

    def _records_of(self, page: ParsedPage) -> _Records:
        """A parsed page's records, digests, texts and heads (see :class:`~syncd.sources.base.Page`)."""
        found = page.records
        if isinstance(found, RecordTexts):
            return [], found.digests, found.texts, found.heads
        return found, page.digests, None, None

    def _window_params(self, window: Window) -> dict[str, str]:
        inc = self.cfg.incremental
        if inc is None:
            return {}
        out: dict[str, str] = {}
        if window.since is not None:
            out[inc.start_param] = self._format(window.since, inc.format)
        if window.until is not None and inc.end_param:
            out[inc.end_param] = self._format(window.until, inc.format)
        return out

    def _format(self, moment: datetime, fmt: str) -> str:
        if moment.tzinfo is not None:
            moment = moment.astimezone(self._tz).replace(tzinfo=None)
        return moment.strftime(fmt)



@dataclass(frozen=True, slots=True)
class _Digested:
    """A body orjson decoded, and the digests of its records' texts (in order)."""

    body: Any
    digests: list[str]
