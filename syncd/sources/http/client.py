"""One HTTP session per source: timeouts, TLS, bounded streaming reads, JSON, retries.

:class:`HttpClient` sends a request, reads the body in chunks (never more than
``max_response_bytes``), decodes it with orjson and hands it to a ``parse`` callback (the
envelope). Failures are sorted by :mod:`syncd.errors`:

- connection errors, timeouts, truncated bodies, invalid JSON, HTTP 408/429/5xx and
  transient business codes raise :class:`TransientUpstreamError` and are retried with
  exponential backoff and jitter (``retry.attempts`` within ``retry.deadline``), honouring
  ``Retry-After``; when the budget is spent the last error becomes permanent;
- :class:`AuthExpiredError` makes the client call ``auth.refresh()`` once and repeat the
  request once; a second expiry is permanent, unless this endpoint accepted a credential of the
  scheme before (see below);
- anything else (other 4xx, oversized bodies, rejected credentials) is permanent at once;
- a stop request (:attr:`HttpClient.stop`, the run's :class:`~syncd.sources.base.StopSignal`)
  raises :class:`~syncd.errors.StopRequested` before any further attempt, wakes every backoff and
  pause at once, and is asked between the chunks of a body: a stop waits for the request in flight
  at most ``timeout.connect`` + ``timeout.read`` (each blocking socket operation is bounded by one
  of them), never for the retry budget.

A credential refused right after it was refreshed, on an endpoint (the API a request calls: see
below) that accepted a credential of this scheme before, was most likely revoked by another process
fetching its own with the same app_key (a gateway keeping one valid token per app_key: two nodes,
or a ``syncd sync`` by hand beside the daemon); each fetch evicts the other's. The client then
waits (exponential backoff with jitter from ``retry.backoff_initial``, so the two drift apart),
refreshes and repeats the request, at most ``min(retry.attempts, 3)`` times within
``retry.deadline``, and warns once (``auth.token_revoked_early``) with what to do. Few rounds: each
refresh on such a gateway also re-issues the token every other dataset of the process uses. The
other process mostly refreshes the moment its own token is refused, revoking ours before our
request lands; so a credential this client fetched less than a minute ago (its ``auth.refresh()``
fetched one: not when another source of the process had replaced the refused one already, which
refresh merely adopts), refused on an endpoint that accepted one, is also taken for revoked: the
client warns and pauses (one backoff step with jitter) before refreshing it, and with both
processes pausing one of them gets through each time. A refusal of a credential that another
source of this process replaced meanwhile (datasets renewing a short-lived token in turn) is an
ordinary expiry: no pause, no warning, no round. The client asks the scheme
(:meth:`RequestAuth.replaced`) before it pauses, warns or counts a round, and goes on with the new
credential at once. A read worker answers from the credential it holds, not asking the run's
process (a round trip behind the pages in flight): one the run's process replaced meanwhile may
still cost the worker one pause and the warning (conservative: never less protection).

The endpoints that accepted a credential are remembered per credential and process
(:meth:`RequestAuth.accepted_at`, kept with the credential's process-wide state), so a daemon's
every run after the first on a dataset has its endpoint; a dataset's first page marks it (they
travel to the read worker with the credential). An endpoint is the API a request calls
(:func:`endpoint_id`), named by the caller: an :class:`~syncd.sources.http.source.HttpSource` passes
its dataset's method, URL, static ``params`` and ``body``, without the paging and window parameters,
so two APIs behind one URL that differ by a parameter or a body field (``?api=…``) are two
endpoints; without one, the whole request is. It must be the same endpoint, not merely the same
credential: an endpoint that refuses every credential with an "expired" code (an API the app_key is
not approved for, or ``envelope.auth_expired_codes`` listing a code that is no expiry there) while
others work is no revocation, and retrying it would cost every request there ``retry.attempts``
refreshes and backoffs and re-issue the other datasets' token each time. So while this endpoint
never accepted a credential, the second refusal fails at once as it always did (the message names
the auth settings, the expiry codes and the other-process case). A single process never sees a fresh
credential refused where one worked before, so its requests are as before.

No secret reaches a message or a log line: URLs lose the values of secret-looking query
keys, every text is scrubbed of the secret values the auth scheme registered and of the
values it added to the request, and upstream exceptions are never chained.
"""

from __future__ import annotations

import hashlib
import random
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol, TypeVar
from urllib.parse import urlencode, urljoin

import orjson
import requests
import structlog
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception_type,
    stop_after_attempt,
    stop_after_delay,
    wait_exponential,
    wait_random,
)

from syncd.config.model import HttpConnection
from syncd.errors import AuthExpiredError, PermanentUpstreamError, TransientUpstreamError, UpstreamError
from syncd.sources.base import NEVER, ReadStats, StopSignal
from syncd.sources.http.diagnose import (
    Failure,
    network_failure,
    parse_http_date,
    skew_note,
    status_failure,
)
from syncd.sources.http.redact import Redactor, sanitize_url, snippet

__all__ = ["HttpClient", "RequestAuth", "endpoint_id"]

log = structlog.get_logger(__name__)

T = TypeVar("T")

_CHUNK = 64 * 1024
_SKEW_WARN_SECONDS = 60.0
_USER_AGENT = "syncd/0.1 (+data-return sync daemon)"
# at most this many refresh-and-repeat rounds for credentials revoked right after issue (and at most
# retry.attempts): each round re-issues the credential every other dataset of the process uses
_REVOKED_ROUNDS = 3
# a credential refused this soon after this client refreshed it, where one was accepted before, was
# most likely revoked by another process: the client pauses before refreshing it (see fetch)
_RECENT_REFRESH = 60.0


class RequestAuth(Protocol):
    """What the client needs from an auth scheme (see :mod:`syncd.sources.http.auth`)."""

    refreshable: ClassVar[bool]

    def apply(
        self, method: str, url: str, params: dict[str, Any], headers: dict[str, str], body: bytes | None
    ) -> None: ...

    def refresh(self) -> bool:
        """Fetch a new credential; True when this call fetched one, False when another source of
        the process had replaced the refused credential already (the new one is used as it is)."""
        ...

    def replaced(self) -> bool:
        """Whether the credential the last request used (the one just refused) was replaced in this
        process meanwhile (another source renewed it): then :meth:`refresh` merely adopts the new one."""
        ...

    def accepted_at(self, endpoint: str) -> bool:
        """Whether ``endpoint`` (:func:`endpoint_id`) accepted a credential of this scheme in this
        process."""
        ...

    def note_accepted(self, endpoint: str) -> None:
        """A request to ``endpoint`` with the scheme's credential succeeded."""


@dataclass(slots=True)
class _Call:
    """One logical request (all of its attempts)."""

    method: str
    url: str
    params: dict[str, Any]
    headers: dict[str, str]
    body: bytes | None
    # the body's decoding before orjson's (a source's TextSplitter): None when it cannot
    decode: Callable[[bytearray], Any] | None = None
    shown_url: str = ""
    reason: str = ""
    secrets: list[str] = field(default_factory=list)


def _encode_params(params: Mapping[str, Any]) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for key, value in params.items():
        if value is None:
            continue
        out.append((key, ("true" if value else "false") if isinstance(value, bool) else str(value)))
    return out


def endpoint_id(method: str, url: str, params: Mapping[str, Any] | None = None, body: Any = None) -> str:
    """What identifies the API a request calls, for :meth:`RequestAuth.accepted_at`: its method,
    URL, parameters and body, given without the parameters that change from page to page (paging,
    window). Some gateways pick the API by a query parameter or a body field of one URL, and an
    app_key may be approved for one of them only. A short hash (the parameters may hold secrets)."""
    encoded = sorted(_encode_params(params or {}))
    text = orjson.dumps([method.upper(), url, encoded, body], option=orjson.OPT_SORT_KEYS, default=str)
    return hashlib.sha256(text).hexdigest()[:16]


def _with_message(exc: UpstreamError, message: str) -> UpstreamError:
    if isinstance(exc, TransientUpstreamError):
        return TransientUpstreamError(message, code=exc.code, status=exc.status, retry_after=exc.retry_after)
    return type(exc)(message, code=exc.code, status=exc.status)


class _NoNetrc(requests.auth.AuthBase):
    """The session's auth: adds nothing; its presence keeps requests away from ``~/.netrc``."""

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        return request


class HttpClient:
    """A ``requests.Session`` with syncd's timeouts, size limit, retries and redaction."""

    def __init__(self, connection: HttpConnection, *, name: str = "", stats: ReadStats | None = None) -> None:
        self.name = name
        self.stats = stats if stats is not None else ReadStats()
        self.redactor = Redactor()
        self.clock_skew: float | None = None  # gateway clock minus ours, from the Date header
        self._base_url = connection.base_url
        self._timeout = (connection.timeout.connect.total_seconds(), connection.timeout.read.total_seconds())
        self._verify: bool | str = connection.ca_bundle or connection.verify_tls
        self._max_bytes = connection.max_response_bytes
        retry = connection.retry
        self._attempts = retry.attempts
        self._deadline = retry.deadline.total_seconds()
        initial = retry.backoff_initial.total_seconds()
        self._backoff_max = retry.backoff_max.total_seconds()
        # exponential backoff with up to one initial step of random jitter, so that many datasets
        # retrying against one gateway do not hit it in lockstep
        self._backoff = wait_exponential(multiplier=initial, max=self._backoff_max) + wait_random(0, initial)
        self._backoff_initial = initial
        self._skew_warned = False
        self._revoked_warned = False  # auth.token_revoked_early said once
        # time.monotonic() of this client's last auth.refresh() that fetched a new credential
        self._refreshed_at: float | None = None
        self._session = requests.Session()
        # ~/.netrc is no source of syncd's credentials (secrets come only from the environment or
        # credential files): an auth that adds nothing stops requests from reading it, which it
        # otherwise does for every request without an auth of its own (two stat calls, each a
        # release and re-acquisition of the interpreter lock in the read-ahead thread)
        self._session.auth = _NoNetrc()
        self._session.headers["User-Agent"] = _USER_AGENT
        self._session.headers["Accept"] = "application/json"
        self._session.headers.update(connection.headers)
        self._session.verify = self._verify
        self._env_settings: dict[tuple[str, str], Any] = {}
        # the run's stop request (HttpSource.watch_stop): asked before each attempt and between the
        # chunks of a body, and waited on instead of sleeping through a backoff or a pause
        self.stop: StopSignal = NEVER

    # ------------------------------------------------------------------ public

    def resolve(self, path: str) -> str:
        """An absolute URL for ``path`` (absolute URLs are kept, others join the base_url)."""
        if path.startswith(("http://", "https://")):
            return path
        return f"{self._base_url}/{path.lstrip('/')}"

    def fetch(
        self,
        method: str,
        url: str,
        *,
        parse: Callable[[Any], T],
        params: Mapping[str, Any] | None = None,
        json_body: Any = None,
        form: Mapping[str, Any] | None = None,
        auth: RequestAuth | None = None,
        decode: Callable[[bytearray], Any] | None = None,
        endpoint: str | None = None,
    ) -> T:
        """Send one logical request (retrying as configured) and return ``parse(decoded_json)``.

        ``decode(raw)`` decodes the body first (byte order mark removed) when given; where it returns
        None the body is decoded with orjson as usual. ``endpoint``: the API this request calls
        (:func:`endpoint_id` without the paging parameters); by default the whole request."""
        headers: dict[str, str] = {}
        body: bytes | None = None
        if json_body is not None:
            body = orjson.dumps(json_body)
            headers["Content-Type"] = "application/json; charset=utf-8"
        elif form is not None:
            body = urlencode(_encode_params(form)).encode("ascii")
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        call = _Call(method.upper(), self.resolve(url), dict(params or {}), headers, body, decode)
        if endpoint is None:
            endpoint = endpoint_id(call.method, call.url, call.params, json_body if form is None else form)
        try:
            return self._accepted(auth, endpoint, self._retrying(call, auth, parse))
        except AuthExpiredError as first:
            if auth is None:
                raise PermanentUpstreamError(
                    f"{first}; the connection has no auth that could be refreshed",
                    code=first.code,
                    status=first.status,
                ) from None
            if self._refreshed_recently() and auth.accepted_at(endpoint) and not auth.replaced():
                # a credential this client fetched moments ago (_refreshed_at is set only when its
                # refresh fetched one), accepted here, refused already, and still the one the process
                # holds (one another dataset of the process renewed while this request was in flight
                # is no revocation: refresh adopts it, no pause): most likely another process with
                # this app_key revoked it and is reading with its own right now. Refreshing at once
                # would revoke that one before its request lands, and the other would refresh at once
                # too: whoever waits never gets a request through. Both pausing first (with jitter)
                # lets one of the two through each time.
                self._warn_revoked(call, first)
                self._pause_revoked(1, self._deadline)
            log.info("http.auth_refresh", connection=self.name, url=call.shown_url, code=first.code)
            self._refresh(auth)
        revoked = 0  # credentials refused right after they were refreshed
        rounds = min(self._attempts, _REVOKED_ROUNDS)
        since = time.monotonic()
        while True:
            try:
                return self._accepted(auth, endpoint, self._retrying(call, auth, parse))
            except AuthExpiredError as again:
                waited = time.monotonic() - since
                # revoked by another process only where a credential worked before: an endpoint
                # refusing every one (not approved for the app_key, a code that is no expiry) is not
                if not auth.accepted_at(endpoint) or waited >= self._deadline:
                    raise self._refused_again(again, revoked) from None
                code = again.code
                if auth.replaced():
                    # another dataset of the process renewed it meanwhile: an ordinary expiry, no
                    # round; the new one at once (bounded by the deadline, each one a renewal)
                    log.info("http.auth_refresh", connection=self.name, url=call.shown_url, code=code)
                    self._refresh(auth)
                    continue
                if revoked >= rounds:
                    raise self._refused_again(again, revoked) from None
                revoked += 1
                self._warn_revoked(call, again)
            self._pause_revoked(revoked, self._deadline - waited)
            log.info("http.auth_refresh", connection=self.name, url=call.shown_url, code=code, again=revoked)
            self._refresh(auth)

    def close(self) -> None:
        self._session.close()

    # ------------------------------------------------------------------ credentials refused early

    def _accepted(self, auth: RequestAuth | None, endpoint: str, result: T) -> T:
        if auth is not None and auth.refreshable and not auth.accepted_at(endpoint):
            auth.note_accepted(endpoint)
        return result

    def _refresh(self, auth: RequestAuth) -> None:
        if auth.refresh():
            self._refreshed_at = time.monotonic()

    def _refreshed_recently(self) -> bool:
        at = self._refreshed_at
        return at is not None and time.monotonic() - at < _RECENT_REFRESH

    def _pause_revoked(self, revoked: int, remaining: float) -> None:
        """The wait before refreshing a credential another process revoked (``revoked``: the round):
        exponential backoff plus jitter, so two processes evicting each other drift apart instead
        of refreshing in lockstep; never past ``remaining`` seconds."""
        pause = min(self._backoff_initial * 2 ** (revoked - 1), self._backoff_max)
        pause += random.uniform(0, self._backoff_initial)  # noqa: S311 - jitter, not a secret
        self.stop.sleep(min(pause, max(0.0, remaining)))

    def _other_holder(self) -> str:
        connection = self.name or "<name>"
        return (
            "another process appears to use the same app_key (another node, or a `syncd sync` by hand "
            "beside the daemon) on a gateway that keeps one valid token per app_key: each token one "
            "process fetches revokes the other's. Give every node (and manual runs) its own app_key "
            f"(connections.{connection}.auth.app_key), or ask the gateway's operator to allow several "
            "valid tokens per app_key (multi-token setting); docs/sources.md, one app_key per process"
        )

    def _warn_revoked(self, call: _Call, exc: AuthExpiredError) -> None:
        if self._revoked_warned:
            return
        self._revoked_warned = True
        log.warning(
            "auth.token_revoked_early",
            connection=self.name,
            url=call.shown_url,
            code=exc.code,
            status=exc.status,
            message=f"the gateway refused a credential soon after issuing it, on an endpoint that accepted "
            f"one before: {self._other_holder()}; "
            "syncd retries with backoff meanwhile",
        )

    def _refused_again(self, exc: AuthExpiredError, revoked: int) -> PermanentUpstreamError:
        connection = f"connections.{self.name or '<name>'}"
        if revoked == 0:  # no credential ever worked on this endpoint in this process: most likely settings
            message = (
                f"{exc}; the credential was rejected again right after it was refreshed, and this "
                f"endpoint never accepted one in this process: check the auth settings ({connection}.auth; "
                "is the app_key approved for this API?) and that "
                f"{connection}.envelope.auth_expired_codes lists only codes that mean an expired "
                f"credential (or: {self._other_holder()})"
            )
        else:
            message = (
                f"{exc}; the credential was rejected right after it was refreshed {revoked + 1} times "
                f"on an endpoint that accepted it before (at most min(retry.attempts, "
                f"{_REVOKED_ROUNDS}) retries within retry.deadline): {self._other_holder()}"
            )
        return PermanentUpstreamError(message, code=exc.code, status=exc.status)

    def __enter__(self) -> HttpClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<HttpClient {self.name or sanitize_url(self._base_url)}>"

    # ------------------------------------------------------------------ retry loop

    def _retrying(self, call: _Call, auth: RequestAuth | None, parse: Callable[[Any], T]) -> T:
        started = time.monotonic()
        retrying = Retrying(
            stop=stop_after_attempt(self._attempts) | stop_after_delay(self._deadline),
            wait=self._wait,
            retry=retry_if_exception_type(TransientUpstreamError),
            before_sleep=lambda state: self._before_sleep(state, call),
            # a stop request ends the backoff at once (StopRequested is not retried: it ends the run)
            sleep=self.stop.sleep,
            reraise=True,
        )
        try:
            result: T = retrying(self._attempt, call, auth, parse)
        except TransientUpstreamError as exc:
            attempts = retrying.statistics.get("attempt_number", 1)
            raise PermanentUpstreamError(
                f"{exc} (gave up after {attempts} attempt(s) in {time.monotonic() - started:.1f} s; "
                f"connections.{self.name or '<name>'}.retry.attempts and retry.deadline set the budget)",
                code=exc.code,
                status=exc.status,
            ) from None
        return result

    def _wait(self, state: RetryCallState) -> float:
        remaining = max(0.0, self._deadline - (state.seconds_since_start or 0.0))
        exc = state.outcome.exception() if state.outcome is not None else None
        if isinstance(exc, TransientUpstreamError) and exc.retry_after is not None:
            return min(exc.retry_after, remaining)
        return min(self._backoff(state), self._backoff_max, remaining)

    def _before_sleep(self, state: RetryCallState, call: _Call) -> None:
        self.stats.retries += 1
        exc = state.outcome.exception() if state.outcome is not None else None
        log.warning(
            "http.retry",
            connection=self.name,
            attempt=state.attempt_number,
            reason=call.reason,
            wait_seconds=round(state.upcoming_sleep, 3),
            status=getattr(exc, "status", None),
            code=getattr(exc, "code", None),
            url=call.shown_url,
        )

    # ------------------------------------------------------------------ one attempt

    def _attempt(self, call: _Call, auth: RequestAuth | None, parse: Callable[[Any], T]) -> T:
        self.stop.check()  # no new attempt (nor a first one) once the service is stopping
        params = dict(call.params)
        headers = dict(call.headers)
        if auth is not None:
            auth.apply(call.method, call.url, params, headers, call.body)
            call.secrets = self._added_values(call, params, headers)
        encoded = _encode_params(params)
        request = requests.Request(call.method, call.url, params=encoded, data=call.body, headers=headers)
        failure: UpstreamError | None = None
        try:
            prepared = self._session.prepare_request(request)
        except requests.exceptions.InvalidHeader as exc:  # its message holds the whole value: a secret
            bad = next((k for k, v in headers.items() if str(v) != str(v).strip() or "\n" in str(v)), "?")
            failure = PermanentUpstreamError(
                f"connection {self.name}: request header {bad!r} holds a line break or surrounding "
                f"space ({type(exc).__name__}; the value is not shown): check the credential or key it "
                "is built from (a credential file ending in a blank line, or a token the token endpoint "
                "returned wrapped in lines)"
            )
        if failure is not None:
            raise failure
        call.shown_url = self.redactor.scrub(sanitize_url(prepared.url or call.url), call.secrets)
        settings = self._settings_for(prepared.url or call.url)
        self.stats.requests += 1
        # failures are raised outside the except blocks: the requests/orjson exceptions carry the
        # full URL (signatures, tokens) and body, and must not ride along as __context__
        try:
            # no redirects: requests drops only an Authorization header when one changes host, so an
            # API key, a token in another header, HMAC headers or a token endpoint's appSecret body
            # would go to whatever host Location names (a 3xx is reported with where it pointed)
            response = self._session.send(prepared, timeout=self._timeout, allow_redirects=False, **settings)
        except requests.RequestException as exc:
            failure = self._network_error(call, exc)
        if failure is not None:
            raise failure
        raw = bytearray()
        with response:
            self._note_date(response)
            try:
                if response.status_code >= 300:
                    failure = self._status_error(call, response, auth)
                else:
                    raw = self._read_body(call, response)
            except requests.RequestException as exc:
                failure = self._network_error(call, exc)
        if failure is not None:
            raise failure
        if raw[:3] == b"\xef\xbb\xbf":  # a UTF-8 byte order mark, which orjson refuses
            del raw[:3]
        data = call.decode(raw) if call.decode is not None else None
        if data is None:
            data = self._decode(call, raw, response.headers.get("Content-Type", ""))
        try:
            return parse(data)
        except UpstreamError as exc:
            call.reason = f"business code {exc.code}" if exc.code else type(exc).__name__
            failure = self._error(call, exc)
        raise failure

    def _settings_for(self, url: str) -> Any:
        """requests' settings from the environment (proxies, ``NO_PROXY``, a CA bundle) for the
        origin of ``url``, read once per origin: requests walks the whole environment for each
        request (about 0.1 ms with 35 variables, in the read-ahead thread)."""
        origin = url.split("?", 1)[0].split("/", 3)[:3]  # scheme, "", host[:port]
        key = (origin[0], origin[-1])
        settings = self._env_settings.get(key)
        if settings is None:
            settings = self._session.merge_environment_settings(url, {}, True, self._verify, None)
            self._env_settings[key] = settings
        return settings

    def _added_values(self, call: _Call, params: dict[str, Any], headers: dict[str, str]) -> list[str]:
        """Values the auth scheme put into the request: treated as secrets in every message."""
        found: list[str] = []
        for before, after in ((call.params, params), (call.headers, headers)):
            for key, value in after.items():
                text = str(value)
                if before.get(key) != value and len(text) >= 6 and not text.isdigit():
                    found.append(text)
                    found.extend(p for p in text.split() if len(p) >= 6)
        return found

    def _read_body(self, call: _Call, response: requests.Response) -> bytearray:
        limit = self._max_bytes
        declared = response.headers.get("Content-Length", "")
        if declared.isdigit() and int(declared) > limit:
            raise self._too_large(call, f"declares {int(declared)} bytes")
        buf = bytearray()
        try:
            for chunk in response.iter_content(chunk_size=_CHUNK):
                self.stop.check()  # a body trickling in: a stop waits for one read (timeout.read) at most
                buf += chunk
                if len(buf) > limit:
                    raise self._too_large(call, f"sent more than {limit} bytes")
        finally:
            self.stats.bytes += len(buf)
        return buf

    def _decode(self, call: _Call, raw: bytearray, content_type: str) -> Any:
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError:
            pass
        charset = re.search(r"charset=\"?([\w-]+)", content_type, re.I)
        if charset and charset.group(1).lower().replace("-", "") not in ("utf8", "ascii"):
            try:
                return orjson.loads(raw.decode(charset.group(1)))
            except (LookupError, UnicodeDecodeError, orjson.JSONDecodeError):
                pass
        call.reason = "invalid JSON"
        shown = content_type or "no Content-Type"
        raise self._error(
            call,
            TransientUpstreamError(
                f"the response is not valid JSON ({len(raw)} bytes, {shown}); it starts with: "
                f"{snippet(raw)!r} (an intranet proxy or login page answers like this)"
            ),
        )

    # ------------------------------------------------------------------ errors

    def _error(self, call: _Call, exc: UpstreamError) -> UpstreamError:
        message = f"{call.method} {call.shown_url}: {exc}"
        skew = self.clock_skew
        if (
            not isinstance(exc, TransientUpstreamError)
            and skew is not None
            and abs(skew) > _SKEW_WARN_SECONDS
            and "clock" not in message
        ):
            message += f"; note: {skew_note(skew)}"
        return _with_message(exc, self.redactor.scrub(message, call.secrets))

    def _too_large(self, call: _Call, what: str) -> UpstreamError:
        call.reason = "response too large"
        return self._error(
            call,
            PermanentUpstreamError(
                f"the response {what}, over the limit of {self._max_bytes} bytes: raise "
                f"connections.{self.name or '<name>'}.max_response_bytes if this size is expected, "
                "or lower pagination.page_size"
            ),
        )

    def _failed(self, call: _Call, failure: Failure, status: int | None = None) -> UpstreamError:
        call.reason = failure.reason
        if failure.transient:
            exc: UpstreamError = TransientUpstreamError(
                failure.detail, status=status, retry_after=failure.retry_after
            )
        else:
            exc = PermanentUpstreamError(failure.detail, status=status)
        return self._error(call, exc)

    def _network_error(self, call: _Call, exc: requests.RequestException) -> UpstreamError:
        connect, read = self._timeout
        return self._failed(call, network_failure(exc, connect=connect, read=read))

    def _status_error(
        self, call: _Call, response: requests.Response, auth: RequestAuth | None
    ) -> UpstreamError:
        status = response.status_code
        if 300 <= status < 400:
            location = response.headers.get("Location") or ""
            target = "?"
            if location:
                target = self.redactor.scrub(sanitize_url(urljoin(call.url, location)), call.secrets)
            failure = Failure(
                f"HTTP {status}",
                f"HTTP {status} {response.reason or ''}: the gateway redirects to {target}; syncd does not "
                "follow redirects (the credentials would go with them): set the connection's base_url "
                "(or the dataset's path) to the address it redirects to",
                transient=False,
            )
            return self._failed(call, failure, status)
        try:
            head = response.raw.read(2048, decode_content=True) or b""
        except Exception:  # noqa: BLE001 - the status is the error; its body is only a courtesy
            head = b""
        self.stats.bytes += len(head)
        failure = status_failure(
            status, response.reason or "", snippet(head), response.headers.get("Retry-After")
        )
        if status == 401 and auth is not None and auth.refreshable:
            call.reason = failure.reason
            return self._error(call, AuthExpiredError(failure.detail, status=status))
        return self._failed(call, failure, status)

    def _note_date(self, response: requests.Response) -> None:
        server = parse_http_date(response.headers.get("Date") or "")
        if server is None:
            return
        skew = server - time.time()
        # the Date header has one-second resolution: keep a small skew at 0
        self.clock_skew = skew if abs(skew) > 2 else 0.0
        if abs(skew) > _SKEW_WARN_SECONDS and not self._skew_warned:
            self._skew_warned = True
            log.warning(
                "http.clock_skew",
                connection=self.name,
                skew_seconds=round(skew),
                source="Date header",
                hint=skew_note(skew),
            )
