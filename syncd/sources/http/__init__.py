"""The HTTP source: provincial API gateways (数据共享交换平台) read page by page.

- :mod:`~syncd.sources.http.client`   one session per source: timeouts, size limit, retries
- :mod:`~syncd.sources.http.diagnose` network failures, HTTP statuses, clock skew → clear reasons
- :mod:`~syncd.sources.http.redact`   no secret in any message, log line or repr
- :mod:`~syncd.sources.http.envelope` business codes, records, total, cursor, clock skew
- :mod:`~syncd.sources.http.auth`     auth schemes by YAML ``type`` (:data:`AUTH`)
- :mod:`~syncd.sources.http.paging`   pagination styles by YAML ``type`` (:data:`PAGINATORS`)
- :mod:`~syncd.sources.http.source`   :class:`HttpSource`, the :class:`~syncd.sources.base.Source`
"""

from __future__ import annotations

from syncd.sources.http.auth import AUTH, AuthScheme, build_auth
from syncd.sources.http.client import HttpClient
from syncd.sources.http.envelope import Envelope, ParsedPage
from syncd.sources.http.paging import PAGINATORS, Paginator, build_paginator
from syncd.sources.http.redact import sanitize_url
from syncd.sources.http.source import HttpSource

__all__ = [
    "AUTH",
    "PAGINATORS",
    "AuthScheme",
    "Envelope",
    "HttpClient",
    "HttpSource",
    "Paginator",
    "ParsedPage",
    "build_auth",
    "build_paginator",
    "sanitize_url",
]
