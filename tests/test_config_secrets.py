"""Secrets interpolated into the configuration (syncd/config/interpolate.py, loader.py, crosscheck.py).

* A password written as ``${credential:NAME}`` / ``${ENV}`` in a URL's user info is taken as it is:
  ``@ : / %`` in it are percent-encoded by syncd, so `syncd check` and a sync work against real
  PostgreSQL and MariaDB users with such passwords, and no part of the password becomes the host.
* A URL that cannot be read (a whole-URL credential with an unencoded password) is a positioned
  configuration error that does not quote the URL; a host that does not read as one is not logged.
* A reference in a secret field that is set but empty is a positioned configuration error.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from structlog.testing import capture_logs

from syncd.config import load_config
from syncd.config.interpolate import Interpolator, interpolate_document, parse_template, userinfo_references
from syncd.config.positions import parse_yaml
from syncd.errors import ConfigError
from syncd.gateway import Gateway
from tests.e2e import SECRET, SECRET_ENV, syncd_cli, write_config

PASSWORD = "Zz9!@Qw8e:p/rd%41x"  # every character a URL gives a meaning to, and %41 (not "A")
FRAGMENTS = ("Qw8e", "p/rd", "%41x", "Zz9!")


@pytest.mark.parametrize(
    ("template", "quoted"),
    [
        ("postgresql+psycopg://syncd:${PW}@127.0.0.1:5432/db", {1}),
        ("postgresql+psycopg://${USER}:${PW}@${HOST}:5432/${DB}", {1, 3}),
        ("mysql+pymysql://${USER}@${HOST}/db?ssl_ca=/etc/syncd/ca.pem", {1}),
        ("postgresql+psycopg://syncd@${HOST}/db?password=${PW}", set()),  # not user info
        ("sqlite:///${STATE_DIRECTORY}/syncd.db", set()),
        ("${DB_URL}", set()),  # a whole URL: the operator encodes it
        ("https://gw.example.gov.cn/api?key=${KEY}", set()),
    ],
)
def test_only_references_in_a_urls_user_info_are_encoded(template: str, quoted: set[int]) -> None:
    assert userinfo_references(parse_template(template)) == quoted


def test_a_password_in_a_url_field_is_encoded_and_elsewhere_kept_as_it_is() -> None:
    doc = parse_yaml(
        "target: {url: 'postgresql+psycopg://syncd:${PW}@127.0.0.1/db'}\n"
        "connections: {gw: {type: http, base_url: 'https://gw',\n"
        "  auth: {type: static_key, name: k, value: '${PW}'}}}\n",
        "syncd.yaml",
    )
    interpolate_document(doc, Interpolator({"PW": PASSWORD}))
    assert sa.make_url(doc.data["target"]["url"]).password == PASSWORD
    assert sa.make_url(doc.data["target"]["url"]).host == "127.0.0.1"
    assert doc.data["connections"]["gw"]["auth"]["value"] == PASSWORD
    assert doc.written[("target", "url")] == "postgresql+psycopg://syncd:${PW}@127.0.0.1/db"


# ------------------------------------------------------------------ real users with such passwords


@pytest.fixture
def password_user(tcp_db: tuple[str, str]) -> Iterator[tuple[str, sa.URL]]:
    """(kind, URL without password) of a fresh database and a new user, whose password is PASSWORD,
    who may create tables in it; the user is dropped afterwards."""
    kind, admin_url = tcp_db
    user = f"syncd_pw_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    url = sa.make_url(admin_url)
    with admin.connect() as conn:
        if kind == "postgresql":  # DDL takes no parameters; psycopg reads a lone % as one
            quoted = PASSWORD.replace("'", "''").replace("%", "%%")
            conn.exec_driver_sql(f"CREATE ROLE {user} LOGIN PASSWORD '{quoted}'")
            conn.exec_driver_sql(f"GRANT CREATE, USAGE ON SCHEMA public TO {user}")
        else:
            conn.execute(sa.text(f"CREATE USER '{user}'@'127.0.0.1' IDENTIFIED BY :pw"), {"pw": PASSWORD})
            conn.execute(sa.text(f"GRANT ALL ON `{url.database}`.* TO '{user}'@'127.0.0.1'"))
    try:
        yield kind, url.set(username=user, password=None)
    finally:
        with admin.connect() as conn:
            if kind == "postgresql":
                conn.exec_driver_sql(f"DROP OWNED BY {user}")
                conn.exec_driver_sql(f"DROP ROLE {user}")
            else:
                conn.exec_driver_sql(f"DROP USER '{user}'@'127.0.0.1'")
        admin.dispose()


def test_a_password_with_url_characters_works_for_check_and_sync(
    tmp_path: Path, password_user: tuple[str, sa.URL]
) -> None:
    kind, url = password_user
    creds = tmp_path / "credentials"
    creds.mkdir()
    (creds / "db_password").write_text(PASSWORD + "\n")
    (creds / "db_password").chmod(0o600)
    written = url.render_as_string().replace("@127.0.0.1", ":${credential:db_password}@127.0.0.1")
    gw = Gateway(records=30, seed=7, app_key="demo-app", app_secret=SECRET)
    gw.start()
    try:
        cfg = write_config(tmp_path / "cfg", db_url=written, gateway_url=gw.url)
        env = {"CREDENTIALS_DIRECTORY": str(creds)}
        check = syncd_cli("-c", str(cfg), "check", env=env)
        sync = syncd_cli("-c", str(cfg), "sync", "residents", env=env)
    finally:
        gw.stop()
    for done in (check, sync):
        shown = done.stdout + done.stderr
        assert done.returncode == 0, shown[-2000:]
        assert not [f for f in FRAGMENTS if f in shown], shown[-2000:]
    app = load_config(cfg, env={SECRET_ENV: SECRET, "CREDENTIALS_DIRECTORY": str(creds)})
    parsed = sa.make_url(app.target.url.get_secret_value())
    assert (parsed.username, parsed.password, parsed.host) == (url.username, PASSWORD, "127.0.0.1")
    # PostgreSQL here trusts loopback (the password is not checked): the rows say the user connected
    engine = sa.create_engine(parsed)
    try:
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT count(*) FROM resident_info")).scalar_one() > 0
    finally:
        engine.dispose()
    assert kind in ("postgresql", "mariadb")


# ------------------------------------------------------------------ a URL that does not read as written


def _whole_url_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, url: str) -> Path:
    creds = tmp_path / "credentials"
    creds.mkdir()
    (creds / "db_url").write_text(url)
    (creds / "db_url").chmod(0o600)
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    monkeypatch.setenv(SECRET_ENV, SECRET)
    return write_config(tmp_path / "cfg", db_url="${credential:db_url}", gateway_url="http://127.0.0.1:9")


def test_an_unreadable_url_is_a_positioned_error_without_the_password(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = _whole_url_config(tmp_path, monkeypatch, "postgresql+psycopg://syncd:p@ss:w/rd@db.example.gov.cn/jcsj")
    with pytest.raises(ConfigError) as err:
        load_config(cfg)
    text = str(err.value)
    (issue,) = err.value.issues
    assert (issue.file, issue.path) == (str(cfg), "target.url")
    assert issue.line == next(n for n, t in enumerate(cfg.read_text().splitlines(), 1) if "url: ${cred" in t)
    assert "percent-encoded" in text and "@ → %40" in text
    assert "ss:w" not in text and "rd@" not in text


def test_a_host_that_holds_part_of_a_password_is_not_logged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = _whole_url_config(tmp_path, monkeypatch, "postgresql+psycopg://syncd:Zz9!@Qw8e@db.example.gov.cn/jcsj")
    with capture_logs() as logs:
        load_config(cfg)
    (warned,) = [e for e in logs if e["event"] == "config.database_tls_unverified"]
    assert warned["url"] == "${credential:db_url}"  # what the operator wrote
    assert "Qw8e" not in repr(logs) and "Zz9!" not in repr(logs)


def test_the_warning_shows_the_url_as_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(SECRET_ENV, SECRET)
    monkeypatch.setenv("DB_PASSWORD", PASSWORD)
    written = "postgresql+psycopg://syncd:${DB_PASSWORD}@db.example.gov.cn:5432/jcsj"
    cfg = write_config(tmp_path, db_url=written, gateway_url="http://127.0.0.1:9")
    with capture_logs() as logs:
        load_config(cfg)
    (warned,) = [e for e in logs if e["event"] == "config.database_tls_unverified"]
    assert (warned["host"], warned["url"]) == ("db.example.gov.cn", written)
    assert not [f for f in FRAGMENTS if f in repr(logs)]


# ------------------------------------------------------------------ empty secrets


def test_an_empty_variable_for_a_secret_is_a_positioned_error(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, db_url=f"sqlite:///{tmp_path / 't.db'}", gateway_url="http://127.0.0.1:9")
    with pytest.raises(ConfigError) as err:
        load_config(cfg, env={SECRET_ENV: ""})
    (issue,) = err.value.issues
    assert issue.path == "connections.province_gateway.auth.app_secret"
    assert issue.line == next(n for n, t in enumerate(cfg.read_text().splitlines(), 1) if "app_secret:" in t)
    assert f"environment variable {SECRET_ENV} is set but empty" in issue.message


def test_an_empty_credential_for_a_database_password_is_a_positioned_error(tmp_path: Path) -> None:
    creds = tmp_path / "credentials"
    creds.mkdir()
    (creds / "db_password").write_text("\n")
    (creds / "db_password").chmod(0o600)
    (creds / "unused").write_text("")  # an empty credential nothing refers to is fine (docs/systemd.md)
    url = "postgresql+psycopg://syncd:${credential:db_password}@127.0.0.1:5432/jcsj"
    cfg = write_config(tmp_path, db_url=url, gateway_url="http://127.0.0.1:9")
    with pytest.raises(ConfigError) as err:
        load_config(cfg, env={SECRET_ENV: SECRET, "CREDENTIALS_DIRECTORY": str(creds)})
    (issue,) = err.value.issues
    assert issue.path == "target.url"
    assert "credential db_password is empty" in issue.message


def test_an_empty_reference_outside_the_user_info_is_not_a_secret(tmp_path: Path) -> None:
    url = "postgresql+psycopg://syncd:${PW}@127.0.0.1:5432/jcsj${SUFFIX}"
    cfg = write_config(tmp_path, db_url=url, gateway_url="http://127.0.0.1:9")
    load_config(cfg, env={SECRET_ENV: SECRET, "PW": PASSWORD, "SUFFIX": ""})
