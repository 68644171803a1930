"""Security properties (DESIGN §4.8): no leaks, no injection, TLS verified, masking before storage.

* a whole CLI run (success, then a failure) prints nothing secret, and nothing secret or unmasked
  is stored in ANY table of the target database (data, change log, quarantine, runs);
* table and column names from the configuration are validated: injection attempts fail at load;
* TLS verification is on by default (a self-signed loopback server is refused with a certificate
  message); ``ca_bundle:`` naming its CA makes the same server work;
* a credential file readable by others is warned about (``config.credential_permissions``);
* ``ca_bundle:`` is relative to the configuration file and checked at load (exists, readable, PEM):
  otherwise a configuration error on its line; ``verify_tls: false`` is warned about at every load.
"""

from __future__ import annotations

import http.server
import json
import os
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from structlog.testing import capture_logs

from syncd.config import load_config
from syncd.errors import ConfigError
from syncd.gateway import Gateway
from syncd.runner import run_dataset
from syncd.targets import StateStore, create_target_engine
from tests.e2e import SECRET, SECRET_ENV, write_config

ROOT = Path(__file__).resolve().parent.parent


def dump_database(url: str) -> str:
    """Every row of every table, as text."""
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            out = []
            for table in sa.inspect(conn).get_table_names():
                out += [
                    json.dumps([str(v) for v in row], ensure_ascii=False)
                    for row in conn.execute(sa.text(f'SELECT * FROM "{table}"'))  # noqa: S608 - names from inspect
                ]
    finally:
        engine.dispose()
    return "\n".join(out)


def test_nothing_secret_or_unmasked_is_printed_or_stored(tmp_path: Path, sqlite_url: str) -> None:
    gw = Gateway(records=400, seed=31, app_key="demo-app", app_secret=SECRET, bad_ratio=0.1)
    gw.start()
    try:
        cfg = write_config(tmp_path, db_url=sqlite_url, gateway_url=gw.url)
        env = {**os.environ, SECRET_ENV: SECRET}
        ok = subprocess.run(
            [sys.executable, "-m", "syncd", "-c", str(cfg), "sync", "residents"],
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=False,
            timeout=120,
        )
        assert ok.returncode == 0, ok.stderr
        gw.stop()  # the gateway is gone: a failing run, with the secret configured
        bad = subprocess.run(
            [sys.executable, "-m", "syncd", "-c", str(cfg), "sync", "residents"],
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=False,
            timeout=120,
        )
        printed = ok.stdout + ok.stderr + bad.stdout + bad.stderr
        assert SECRET not in printed
        stored = dump_database(sqlite_url)
        assert SECRET not in stored
        records = gw.store.records()
        phones = {
            r["phone"].strip()
            for r in records
            if isinstance(r.get("phone"), str) and len(r["phone"].strip()) == 11
        }
        leaked = [v for v in phones if v in stored]
        assert not leaked, f"clear phone numbers stored (masking must happen before storage): {leaked[:3]}"
        engine = sa.create_engine(sqlite_url)
        with engine.connect() as conn:
            quarantined = conn.execute(sa.text("SELECT raw FROM syncd_quarantine")).scalars().all()
            changes = conn.execute(sa.text("SELECT new_values FROM syncd_changes")).scalars().all()
        engine.dispose()
        assert quarantined, "the bad records should be in quarantine"
        for text in (*quarantined, *changes):
            assert not [p for p in phones if p in text], text
        for raw in map(json.loads, quarantined):  # the masked source fields are masked in the payload
            original = gw.store.get(raw["id"]) or {}
            name = (original.get("contact") or {}).get("emergencyName")
            if isinstance(name, str) and len(name.strip()) > 1:
                assert raw["contact"]["emergencyName"] != name, raw
        for new_values in map(json.loads, filter(None, changes)):
            contact = new_values.get("emergency_contact")
            assert contact is None or "*" in contact, new_values
    finally:
        gw.stop()


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("  table: resident_info\n", '  table: "resident_info; DROP TABLE syncd_runs"\n'),
        ("  table: resident_info\n", '  table: "x`; --"\n'),
        ("  resident_id:\n", '  "id\\"; DROP TABLE x; --":\n'),
        ("  remark:\n", "  \"remark' OR '1'='1\":\n"),
    ],
)
def test_injection_in_table_or_column_names_is_rejected_at_load(
    tmp_path: Path, sqlite_url: str, old: str, new: str
) -> None:
    cfg = write_config(tmp_path, db_url=sqlite_url, gateway_url="http://127.0.0.1:9", replace=[(old, new)])
    os.environ.setdefault(SECRET_ENV, SECRET)
    with pytest.raises(ConfigError) as info:
        load_config(cfg)
    assert any("residents.yaml:" in str(issue) for issue in info.value.issues), info.value.issues


def test_world_readable_credential_file_is_warned_about(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    creds = tmp_path / "credentials"
    creds.mkdir()
    secret = creds / "gateway_app_secret"
    secret.write_text("example-secret\n")
    secret.chmod(0o644)
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    monkeypatch.setenv("SYNCD_TARGET_URL", f"sqlite:///{tmp_path / 't.db'}")
    with capture_logs() as logs:
        load_config(ROOT / "config" / "syncd.yaml")
    warned = [e for e in logs if e["event"] == "config.credential_permissions"]
    assert warned and warned[0]["log_level"] == "warning"
    assert "example-secret" not in repr(logs)


# ----------------------------------------------------------------------------- TLS


def make_ca_and_cert(where: Path) -> tuple[Path, Path, Path]:
    """A CA and a server certificate for 127.0.0.1 signed by it (openssl CLI)."""
    ca_key, ca, key, csr, cert = (
        where / n for n in ("ca.key", "ca.pem", "server.key", "server.csr", "server.pem")
    )
    ext = where / "san.cnf"
    ext.write_text("subjectAltName=IP:127.0.0.1\n")

    def ssl_cmd(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)

    ssl_cmd(
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        str(ca_key),
        "-out",
        str(ca),
        "-days",
        "30",
        "-subj",
        "/CN=syncd test CA",
    )
    ssl_cmd(
        "req",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        str(key),
        "-out",
        str(csr),
        "-subj",
        "/CN=127.0.0.1",
    )
    ssl_cmd(
        "x509",
        "-req",
        "-in",
        str(csr),
        "-CA",
        str(ca),
        "-CAkey",
        str(ca_key),
        "-CAcreateserial",
        "-out",
        str(cert),
        "-days",
        "30",
        "-extfile",
        str(ext),
    )
    return ca, cert, key


@pytest.fixture
def tls_gateway(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """The simulated gateway behind a TLS proxy-less server: the Gateway's handler on an SSL socket."""
    ca, cert, key = make_ca_and_cert(tmp_path)
    gw = Gateway(records=50, seed=2, app_key="demo-app", app_secret=SECRET)
    gw.start()  # plain HTTP; we serve the same dispatcher over TLS below
    from syncd.gateway.server import _Handler, _Server

    server = _Server(("127.0.0.1", 0), gw)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    assert issubclass(_Handler, http.server.BaseHTTPRequestHandler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"https://127.0.0.1:{server.server_port}", ca
    finally:
        server.shutdown()
        server.server_close()
        gw.stop()


def test_tls_verified_by_default_and_ca_bundle_makes_it_work(
    tmp_path: Path, sqlite_url: str, tls_gateway: tuple[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    url, ca = tls_gateway
    monkeypatch.setenv(SECRET_ENV, SECRET)
    retry = "{attempts: 2, backoff_initial: 5ms, backoff_max: 10ms, deadline: 5s}"
    default = load_config(write_config(tmp_path / "a", db_url=sqlite_url, gateway_url=url, retry=retry))
    engine = create_target_engine(sqlite_url)
    try:
        refused = run_dataset(default, default.datasets["residents"], StateStore(engine))
        assert refused.status == "failed"
        assert refused.error and "certificate" in refused.error.lower(), refused.error
        main = write_config(tmp_path / "b", db_url=sqlite_url, gateway_url=url, retry=retry)
        text = main.read_text(encoding="utf-8").replace("    timeout:", f"    ca_bundle: {ca}\n    timeout:")
        main.write_text(text, encoding="utf-8")
        trusted = load_config(main)
        result = run_dataset(trusted, trusted.datasets["residents"], StateStore(engine))
        assert result.ok, result.error
        assert result.counts.inserted > 0
    finally:
        engine.dispose()


def _with_tls_lines(main: Path, lines: str) -> Path:
    text = main.read_text(encoding="utf-8").replace("    timeout:", f"{lines}    timeout:")
    main.write_text(text, encoding="utf-8")
    return main


def _line_of(main: Path, words: str) -> int:
    return next(n for n, text in enumerate(main.read_text(encoding="utf-8").splitlines(), 1) if words in text)


def test_a_relative_ca_bundle_is_relative_to_the_configuration_file(
    tmp_path: Path, sqlite_url: str, tls_gateway: tuple[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    url, ca = tls_gateway
    monkeypatch.setenv(SECRET_ENV, SECRET)
    main = _with_tls_lines(write_config(tmp_path / "cfg", db_url=sqlite_url, gateway_url=url,
                                        retry="{attempts: 1}"), "    ca_bundle: ca.pem\n")
    (tmp_path / "cfg" / "ca.pem").write_bytes(ca.read_bytes())
    elsewhere = tmp_path / "elsewhere"  # systemd starts the service in /
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    app = load_config(main)
    assert app.connections["province_gateway"].ca_bundle == str(tmp_path / "cfg" / "ca.pem")  # type: ignore[union-attr]
    engine = create_target_engine(sqlite_url)
    try:
        result = run_dataset(app, app.datasets["residents"], StateStore(engine))
    finally:
        engine.dispose()
    assert result.ok, result.error


@pytest.mark.parametrize(
    ("written", "content", "words"),
    [
        ("ca.pem", None, "does not exist: copy the PEM file of the CA"),
        ("ca.pem", b"not a certificate\n", "holds no PEM certificate: export the CA certificate as PEM"),
        (".", None, "is a directory: name the CA's PEM file"),
    ],
)
def test_a_ca_bundle_that_cannot_be_used_is_a_configuration_error_on_its_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, written: str, content: bytes | None, words: str
) -> None:
    monkeypatch.setenv(SECRET_ENV, SECRET)
    main = _with_tls_lines(write_config(tmp_path, db_url=f"sqlite:///{tmp_path / 't.db'}",
                                        gateway_url="https://127.0.0.1:9"), f"    ca_bundle: {written}\n")
    if content is not None:
        (tmp_path / written).write_bytes(content)
    with pytest.raises(ConfigError) as err:
        load_config(main)
    (issue,) = err.value.issues
    assert (issue.file, issue.line, issue.path) == (str(main), _line_of(main, "ca_bundle:"),
                                                    "connections.province_gateway.ca_bundle")
    assert words in issue.message and str(tmp_path) in issue.message, issue.message


def test_verify_tls_false_is_warned_about_at_every_load(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(SECRET_ENV, SECRET)
    main = _with_tls_lines(write_config(tmp_path, db_url=f"sqlite:///{tmp_path / 't.db'}",
                                        gateway_url="https://gw.example.gov.cn"), "    verify_tls: false\n")
    for _ in range(2):
        with capture_logs() as logs:
            load_config(main)
        (warned,) = [e for e in logs if e["event"] == "config.http_tls_unverified"]
        assert warned["log_level"] == "warning"
        at = (warned["file"], warned["line"], warned["field"], warned["connection"])
        assert at == (str(main), _line_of(main, "verify_tls:"), "connections.province_gateway.verify_tls",
                      "province_gateway")
        assert "ca_bundle" in str(warned["fix"])
