"""TLS of database connections (syncd/targets/dbtls.py).

* A connection to another machine that would not check the server's certificate is a warning at
  configuration load, with the file, line and field of the URL and the fix
  (``config.database_tls_unverified``); a URL that turns TLS off on purpose, or that gives a CA, is not.
* A TLS option the driver would misread is a configuration error on its line.
* PyMySQL gets the URL's boolean flags as booleans (``ssl_disabled=false`` used to switch TLS off),
  and a URL's ``ssl_ca`` survives ``ssl_verify_identity``/``ssl_verify_cert`` (PyMySQL used to drop
  the CA for the system's store, without a host-name check, when either was given).
"""

from __future__ import annotations

import os
import ssl
from pathlib import Path

import pymysql
import pytest
import sqlalchemy as sa
from structlog.testing import capture_logs

from syncd.config import load_config
from syncd.errors import ConfigError
from syncd.targets.dbtls import mysql_tls_args, tls_url_problem, unverified_tls
from syncd.targets.engine import with_driver
from tests.e2e import SECRET, SECRET_ENV, write_config

CA = "/etc/syncd/db-ca.pem"


@pytest.mark.parametrize(
    "url",
    [
        "sqlite:////var/lib/syncd/syncd.db",
        "postgresql+psycopg://u@127.0.0.1/d",
        "postgresql+psycopg://u@localhost/d",
        "postgresql+psycopg://u@[::1]:5432/d",
        "postgresql+psycopg://u@/d",  # libpq's default Unix socket
        "postgresql+psycopg://u@/d?host=/run/postgresql",
        "postgresql+psycopg://u@db.county.example/d?sslmode=verify-full&sslrootcert=" + CA,
        "postgresql+psycopg://u@db.county.example/d?sslmode=verify-ca&sslrootcert=" + CA,
        "postgresql+psycopg://u@10.1.2.3/d?sslmode=disable",  # said on purpose
        "mysql+pymysql://u@127.0.0.1/d",
        "mysql+pymysql://u@/d?unix_socket=/run/mysqld/mysqld.sock",
        "mysql+pymysql://u@10.1.2.3/d?ssl_ca=" + CA,
        "mysql+pymysql://u@10.1.2.3/d?ssl_ca=" + CA + "&ssl_check_hostname=false",
        "mysql+pymysql://u@10.1.2.3/d?ssl_disabled=true",
    ],
)
def test_checked_local_or_declined_tls_is_not_warned_about(url: str) -> None:
    assert unverified_tls(sa.make_url(url)) is None


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("postgresql+psycopg://u@db.county.example/d", "sslmode=prefer (the default) uses TLS only when"),
        ("postgresql+psycopg://u@10.1.2.3/d?sslmode=require", "sslmode=require encrypts but does not check"),
        ("postgresql+psycopg://u@10.1.2.3/d?sslmode=allow", "sslmode=allow uses TLS only when"),
        ("postgresql+psycopg://u@/d?host=127.0.0.1,10.1.2.3", "sslmode=prefer (the default)"),
        ("mysql+pymysql://u@10.1.2.3/d", "no ssl_ca: PyMySQL uses TLS only when the server offers it"),
        ("mysql+pymysql://u@10.1.2.3/d?ssl_disabled=false", "no ssl_ca: PyMySQL uses TLS only when"),
        ("mysql+pymysql://u@10.1.2.3/d?ssl_verify_cert=true", "never the host name"),
        ("mysql+pymysql://u@10.1.2.3/d?ssl_ca=" + CA + "&ssl_verify_cert=false", "ssl_verify_cert=false"),
    ],
)
def test_unchecked_tls_to_another_machine_says_why_and_how_to_fix(url: str, words: str) -> None:
    reason = unverified_tls(sa.make_url(url))
    assert reason is not None and words in reason
    assert "sslmode=verify-full" in reason or "ssl_ca=" in reason  # the fix
    assert "sslmode=disable" in reason or "ssl_disabled=true" in reason  # the other decision


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("postgresql+psycopg://u@h/d?sslmode=verify_full", "sslmode=verify_full is not a mode PostgreSQL"),
        ("mysql+pymysql://u@h/d?ssl_disabled=maybe", "ssl_disabled=maybe is not a boolean"),
        ("mysql+pymysql://u@h/d?ssl_ca=x&ssl_check_hostname=si", "ssl_check_hostname=si is not a boolean"),
    ],
)
def test_misread_tls_options_are_named(url: str, problem: str) -> None:
    assert (tls_url_problem(sa.make_url(url)) or "").startswith(problem)


def _pymysql_connection(url: str) -> pymysql.connections.Connection:
    """The PyMySQL connection syncd's engine would open for ``url``, not connected: SQLAlchemy's
    arguments from the URL, then syncd's connect_args over them (as create_engine merges them)."""
    parsed = with_driver(sa.make_url(url))
    _, kwargs = sa.create_engine(parsed).dialect.create_connect_args(parsed)
    kwargs.update(mysql_tls_args(parsed))
    return pymysql.connections.Connection(defer_connect=True, **kwargs)


@pytest.fixture
def ca_file(tmp_path: Path) -> str:
    """A real CA certificate (the one of Python's own test suite would do; any one PEM will)."""
    ctx = ssl.create_default_context()
    certs = ctx.get_ca_certs(binary_form=True)
    if not certs:
        pytest.skip("this machine has no CA store to take one certificate from")
    path = tmp_path / "ca.pem"
    path.write_text(ssl.DER_cert_to_PEM_cert(certs[0]))
    return str(path)


@pytest.mark.parametrize("extra", ["", "&ssl_verify_identity=true", "&ssl_verify_cert=true"])
def test_pymysql_keeps_the_urls_ca_and_checks_the_host_name(ca_file: str, extra: str) -> None:
    conn = _pymysql_connection(f"mysql+pymysql://u:p@db.county.example/d?ssl_ca={ca_file}{extra}")
    assert conn.ssl and conn._ssl_required
    assert conn.ctx.verify_mode == ssl.CERT_REQUIRED
    assert conn.ctx.check_hostname is True
    assert len(conn.ctx.get_ca_certs()) == 1  # the URL's CA, not the system's store


def test_pymysql_host_name_check_off_when_the_url_says_false(ca_file: str) -> None:
    conn = _pymysql_connection(f"mysql+pymysql://u:p@db.county.example/d?ssl_ca={ca_file}&ssl_verify_identity=false")
    assert conn.ctx.verify_mode == ssl.CERT_REQUIRED and conn.ctx.check_hostname is False
    assert len(conn.ctx.get_ca_certs()) == 1


def test_pymysql_ssl_disabled_false_means_false() -> None:
    assert _pymysql_connection("mysql+pymysql://u:p@10.1.2.3/d?ssl_disabled=true").ssl is False
    conn = _pymysql_connection("mysql+pymysql://u:p@10.1.2.3/d?ssl_disabled=false")
    assert conn.ssl is True  # PyMySQL's "preferred" TLS, as with no flag; the text "false" turned it off
    assert _pymysql_connection("mysql+pymysql://u:p@127.0.0.1/d").ssl is False  # loopback: no TLS


# --------------------------------------------------------------------------- at configuration load


def _load(tmp_path: Path, db_url: str) -> tuple[Path, list[dict[str, object]]]:
    cfg = write_config(tmp_path, db_url=db_url, gateway_url="http://127.0.0.1:9")
    os.environ.setdefault(SECRET_ENV, SECRET)
    with capture_logs() as logs:
        load_config(cfg)
    return cfg, [e for e in logs if e["event"] == "config.database_tls_unverified"]


def test_remote_target_without_a_checked_certificate_is_warned_about_with_its_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TLS_TEST_DB_PASSWORD", "pw-Secret-9")
    url = "postgresql+psycopg://syncd:${TLS_TEST_DB_PASSWORD}@db.county.example:5432/jcsj"
    cfg, warned = _load(tmp_path, url)
    assert len(warned) == 1
    event = warned[0]
    line = next(n for n, text in enumerate(cfg.read_text().splitlines(), 1) if "url: postgresql" in text)
    assert event["log_level"] == "warning"
    assert (event["file"], event["line"], event["field"], event["host"]) == (
        str(cfg),
        line,
        "target.url",
        "db.county.example",
    )
    assert "sslmode=verify-full&sslrootcert=" in str(event["reason"])
    assert "pw-Secret-9" not in repr(warned)


@pytest.mark.parametrize(
    "url",
    [
        "postgresql+psycopg://syncd@db.county.example/jcsj?sslmode=verify-full&sslrootcert=" + CA,
        "postgresql+psycopg://syncd@db.county.example/jcsj?sslmode=disable",
        "postgresql+psycopg://syncd@127.0.0.1/jcsj",
    ],
)
def test_checked_or_declined_tls_loads_quietly(tmp_path: Path, url: str) -> None:
    assert _load(tmp_path, url)[1] == []


def test_a_misread_tls_option_is_a_configuration_error_on_its_line(tmp_path: Path) -> None:
    cfg = write_config(
        tmp_path, db_url="mysql+pymysql://syncd@10.1.2.3/jcsj?ssl_disabled=nope", gateway_url="http://127.0.0.1:9"
    )
    os.environ.setdefault(SECRET_ENV, SECRET)
    with pytest.raises(ConfigError) as info:
        load_config(cfg)
    line = next(n for n, text in enumerate(cfg.read_text().splitlines(), 1) if "url: mysql" in text)
    (issue,) = [str(i) for i in info.value.issues]
    assert issue.startswith(f"{cfg}:{line}:")
    fix = "write ssl_disabled=true or ssl_disabled=false"
    assert f"target.url: ssl_disabled=nope is not a boolean: {fix}" in issue
