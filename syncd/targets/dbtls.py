"""TLS of database connections (target, front-end databases, the daemon's locks).

Three things, all from the URL alone, before anything connects:

- :func:`mysql_tls_args`: PyMySQL's connect arguments. No TLS on a connection that never leaves
  this machine unless the URL asks for it (PyMySQL 1.2 would try TLS there and load the system's CA
  store for every connection: 22 ms of CPU each, for nothing on loopback). The URL's boolean TLS
  flags (``ssl_disabled``, ``ssl_verify_cert``, ``ssl_verify_identity``) are passed as booleans:
  SQLAlchemy hands URL query values to PyMySQL as text, and PyMySQL tests ``if not ssl_disabled``,
  so ``?ssl_disabled=false`` switched TLS *off* and ``?ssl_verify_identity=false`` switched the
  host-name check *on*; and next to ``ssl_ca`` either verify flag made PyMySQL drop the CA (the
  system's store instead, no host-name check): with a CA the ``ssl`` settings are built here.
- :func:`unverified_tls`: whether a connection to another machine would go without a checked
  server certificate — PostgreSQL's default ``sslmode=prefer`` (and ``allow``/``require``),
  PyMySQL's default "preferred" TLS, anything without a CA (PyMySQL never checks the host name
  then). The configuration check logs it as a warning with the file and line of the URL and the
  fix (``config.database_tls_unverified``); connecting is not refused: many 前置库 in a government
  intranet offer no TLS at all, and the operator decides. Saying so in the URL
  (``sslmode=disable``, ``ssl_disabled=true``) is a decision and silences the warning.
- :func:`tls_url_problem`: a TLS option whose value the driver would misread (an ``sslmode`` libpq
  does not know, a flag that is not a boolean): a configuration error.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.util import asbool

__all__ = ["mysql_tls_args", "tls_url_problem", "unverified_tls"]

_LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})
MYSQL_TLS_FLAGS = ("ssl_disabled", "ssl_verify_cert", "ssl_verify_identity")
"""PyMySQL's boolean TLS arguments, which a URL can only give as text."""
_PG_SSLMODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")


def _family(url: sa.URL) -> str:
    backend = url.get_backend_name()
    return "mysql" if backend in ("mysql", "mariadb") else backend


def _query_text(url: sa.URL, name: str) -> str | None:
    value = url.query.get(name)
    if isinstance(value, tuple):  # the key given twice: the driver takes the last
        value = value[-1] if value else None
    return value


def _flag(url: sa.URL, name: str) -> bool | None:
    """The boolean a URL query flag means, read as SQLAlchemy reads its own (``ssl_check_hostname``):
    true/yes/on/1 (y, t), false/no/off/0 (n, f); None when absent. ValueError for another word."""
    text = _query_text(url, name)
    if text is None:
        return None
    try:
        return bool(asbool(text))
    except ValueError:
        raise ValueError(text) from None


def _local(url: sa.URL) -> bool:
    """True when the connection cannot leave this machine: loopback addresses or a Unix socket."""
    if _family(url) == "mysql":
        if "unix_socket" in url.query:
            return True
        return (url.host or "localhost").strip("[]").lower() in _LOOPBACK_HOSTS
    # libpq: no host at all is the default Unix socket; a host (also in the query, also several,
    # comma-separated) starting with "/" or "@" is a socket directory
    hosts: list[str] = []
    if url.host:
        hosts.append(url.host)
    query_host = url.query.get("host")
    hosts += [query_host] if isinstance(query_host, str) else list(query_host or ())
    names = [h.strip().strip("[]").lower() for item in hosts for h in item.split(",")]
    return all(h in _LOOPBACK_HOSTS or h.startswith(("/", "@")) or not h for h in names)


def tls_url_problem(url: sa.URL) -> str | None:
    """What is wrong with the URL's TLS options, with the fix; None when nothing is."""
    family = _family(url)
    if family == "postgresql":
        mode = _query_text(url, "sslmode")
        if mode is not None and mode not in _PG_SSLMODES:
            return f"sslmode={mode} is not a mode PostgreSQL knows: write one of {', '.join(_PG_SSLMODES)}"
    elif family == "mysql":
        for name in (*MYSQL_TLS_FLAGS, "ssl_check_hostname"):
            try:
                _flag(url, name)
            except ValueError as exc:
                return f"{name}={exc} is not a boolean: write {name}=true or {name}=false"
    return None


def mysql_tls_args(url: sa.URL) -> dict[str, Any]:
    """PyMySQL connect arguments for TLS (they override the URL's own values); raises ValueError for
    a flag that is not a boolean (the configuration check reports it first, with its line).

    - A URL with ``ssl_ca``/``ssl_capath``: the whole ``ssl`` dictionary, certificate and host name
      checked unless ``ssl_verify_cert=false`` / ``ssl_verify_identity=false`` (or SQLAlchemy's
      ``ssl_check_hostname=false``) say otherwise. Passed to PyMySQL as its own ``ssl_verify_*``
      arguments, either flag made it build its TLS settings without the URL's CA: the system's
      store, no host-name check.
    - Otherwise the flags as booleans, and ``ssl_disabled`` on a connection that never leaves the
      machine and whose URL sets no ``ssl_*`` option.
    """
    flags = {name: _flag(url, name) for name in MYSQL_TLS_FLAGS}
    args: dict[str, Any] = {name: value for name, value in flags.items() if value is not None}
    if "ssl_ca" in url.query or "ssl_capath" in url.query:
        ssl: dict[str, Any] = {}
        for name in ("ca", "capath", "cert", "key", "cipher"):
            value = _query_text(url, "ssl_" + name)
            if value is not None:
                ssl[name] = value
        check_hostname = _flag(url, "ssl_check_hostname")  # SQLAlchemy's own spelling
        if flags["ssl_verify_identity"] is not None:
            check_hostname = flags["ssl_verify_identity"]
        ssl["check_hostname"] = check_hostname is not False and flags["ssl_verify_cert"] is not False
        ssl["verify_mode"] = flags["ssl_verify_cert"] is not False
        args.update(ssl=ssl, ssl_verify_cert=None, ssl_verify_identity=None)
    elif not any(key.startswith("ssl") for key in url.query) and _local(url):
        args["ssl_disabled"] = True
    return args


def unverified_tls(url: sa.URL) -> str | None:
    """Why a connection to ``url`` would not check the server's certificate, with the fix; None when
    it would, when it stays on this machine, when the URL turns TLS off on purpose, or for SQLite."""
    family = _family(url)
    if family not in ("postgresql", "mysql") or _local(url):
        return None
    return _pg_unverified(url) if family == "postgresql" else _mysql_unverified(url)


def _pg_unverified(url: sa.URL) -> str | None:
    mode = _query_text(url, "sslmode") or "prefer"
    if mode in ("disable", "verify-ca", "verify-full"):
        return None
    what = (
        "encrypts but does not check the server's certificate"
        if mode == "require"
        else "uses TLS only when the server offers it and never checks its certificate"
    )
    return (
        f"sslmode={mode}{'' if 'sslmode' in url.query else ' (the default)'} {what}: anyone on the "
        "network path can pose as the database. Add sslmode=verify-full&sslrootcert=/etc/syncd/db-ca.pem "
        "to the URL (the CA that signed the server's certificate), or sslmode=disable if the network "
        "is trusted"
    )


def _mysql_unverified(url: sa.URL) -> str | None:
    try:
        disabled = _flag(url, "ssl_disabled")
        verify_cert = _flag(url, "ssl_verify_cert")
    except ValueError:
        return None  # tls_url_problem reports it as an error
    has_ca = "ssl_ca" in url.query or "ssl_capath" in url.query
    if disabled or (has_ca and verify_cert is not False):
        return None
    if verify_cert is False:
        why = "ssl_verify_cert=false: the server's certificate is not checked"
    elif verify_cert or _query_text(url, "ssl_verify_identity") is not None:
        why = (
            "no ssl_ca: PyMySQL checks the certificate against the system's CA store but never the host "
            "name, so any certificate a public CA signed passes"
        )
    else:
        why = "no ssl_ca: PyMySQL uses TLS only when the server offers it and never checks its certificate"
    return (
        f"{why}; anyone on the network path can pose as the database. Add "
        "ssl_ca=/etc/syncd/db-ca.pem to the URL (the CA that signed the server's certificate), or "
        "ssl_disabled=true if the network is trusted"
    )
