"""PRIVATE database servers for fault tests: a PostgreSQL and a MariaDB of our own, in a temp dir.

The shared servers on 5432/3306 belong to every engineer's test runs and must never be stopped;
fault tests (a target database that goes away mid-run) stop and start one of these instead::

    with PrivatePostgres(tmp_dir) as pg:       # initdb + pg_ctl, as the postgres user
        url = pg.create_database("t1")
        pg.stop(); pg.start()

Both listen on 127.0.0.1 on a free port and a socket inside their directory. Session fixtures
(``private_pg``, ``private_mariadb``) build one per test session and always tear it down; they skip
when the binaries are missing, unless SYNCD_REQUIRE_DBS=1 (then they fail).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Final, Self

import sqlalchemy as sa

__all__ = [
    "PG_BIN",
    "PrivateMariaDB",
    "PrivatePostgres",
    "add_password_user",
    "free_port",
    "mariadb_available",
    "postgres_available",
    "require_binaries",
    "server_root",
]

PG_BIN: Final = Path(os.environ.get("SYNCD_PG_BIN", "/usr/lib/postgresql/15/bin"))
MARIADBD: Final = shutil.which("mariadbd", path="/usr/sbin:/usr/bin") or "/usr/sbin/mariadbd"
MARIADB_INSTALL: Final = shutil.which("mariadb-install-db") or "/usr/bin/mariadb-install-db"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def postgres_available() -> bool:
    return (PG_BIN / "initdb").exists() and (PG_BIN / "pg_ctl").exists() and os.geteuid() == 0


def mariadb_available() -> bool:
    return Path(MARIADBD).exists() and Path(MARIADB_INSTALL).exists() and os.geteuid() == 0


def _wait_port(port: int, up: bool, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                if up:
                    return
        except OSError:
            if not up:
                return
        time.sleep(0.05)
    raise TimeoutError(f"port {port} did not go {'up' if up else 'down'} within {timeout}s")


def _as(user: str, *cmd: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        ["runuser", "-u", user, "--", *cmd], capture_output=True, text=True, check=False, timeout=120
    )
    if result.returncode != 0:
        raise RuntimeError(
            f"{' '.join(cmd[:1])} failed ({result.returncode}): {result.stderr or result.stdout}"
        )
    return result


def server_root(prefix: str) -> Path:
    """A fresh directory the database users can reach (pytest's tmp dirs are root-only, 0700)."""
    base = Path(tempfile.mkdtemp(prefix=prefix))
    base.chmod(0o711)
    return base / "srv"


class PrivatePostgres:
    """A throw-away PostgreSQL cluster under ``root``, trust auth for ``postgres`` on loopback."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.data = root / "pgdata"
        self.sock = root / "pgsock"
        self.port = free_port()

    @property
    def admin_url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def init(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.sock.mkdir(exist_ok=True)
        shutil.chown(self.root, "postgres", "postgres")
        shutil.chown(self.sock, "postgres", "postgres")
        _as(
            "postgres",
            str(PG_BIN / "initdb"),
            "-D",
            str(self.data),
            "-A",
            "trust",
            "-U",
            "postgres",
            "--no-sync",
        )

    def start(self) -> None:
        opts = f"-p {self.port} -k {self.sock} -c listen_addresses=127.0.0.1 -c fsync=off"
        _as(
            "postgres",
            str(PG_BIN / "pg_ctl"),
            "-D",
            str(self.data),
            "-o",
            opts,
            "-w",
            "-l",
            str(self.root / "pg.log"),
            "start",
        )
        _wait_port(self.port, up=True)

    def stop(self, mode: str = "immediate") -> None:
        """Stop the server (``immediate`` = like a crash: connections cut, no shutdown checkpoint)."""
        _as("postgres", str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop")
        _wait_port(self.port, up=False)

    def running(self) -> bool:
        result = subprocess.run(
            ["runuser", "-u", "postgres", "--", str(PG_BIN / "pg_ctl"), "-D", str(self.data), "status"],
            capture_output=True,
            check=False,
        )
        return result.returncode == 0

    def create_database(self, name: str) -> str:
        engine = sa.create_engine(self.admin_url, isolation_level="AUTOCOMMIT")
        try:
            with engine.connect() as conn:
                conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
        finally:
            engine.dispose()
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{name}"

    def __enter__(self) -> Self:
        self.init()
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self.running():
            self.stop()
        shutil.rmtree(self.root.parent if self.root.name == "srv" else self.root, ignore_errors=True)


class PrivateMariaDB:
    """A throw-away MariaDB under ``root``: root without password, loopback TCP on a free port."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.data = root / "mariadata"
        self.sock = root / "mariadb.sock"
        self.port = free_port()
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def admin_url(self) -> str:
        return f"mysql+pymysql://root@127.0.0.1:{self.port}/mysql"

    def init(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        shutil.chown(self.root, "mysql", "mysql")
        subprocess.run(
            [
                MARIADB_INSTALL,
                f"--datadir={self.data}",
                "--user=mysql",
                "--auth-root-authentication-method=normal",
                "--skip-test-db",
                "--skip-name-resolve",
            ],
            capture_output=True,
            text=True,
            check=True,
            timeout=180,
        )

    def start(self) -> None:
        log = (self.root / "mariadb.log").open("ab")
        self._proc = subprocess.Popen(
            [
                MARIADBD,
                "--no-defaults",
                f"--datadir={self.data}",
                f"--port={self.port}",
                f"--socket={self.sock}",
                "--bind-address=127.0.0.1",
                "--user=mysql",
                "--skip-name-resolve",
                "--skip-log-bin",
                f"--pid-file={self.root / 'mariadb.pid'}",
                "--innodb-flush-log-at-trx-commit=2",
                "--innodb-buffer-pool-size=64M",
                f"--log-error={self.root / 'mariadb.err'}",
            ],
            stdout=log,
            stderr=log,
        )
        log.close()
        _wait_port(self.port, up=True, timeout=60)

    def stop(self, mode: str = "immediate") -> None:
        """``immediate`` kills the server (SIGKILL, like a crash); ``fast`` shuts it down cleanly."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if mode == "immediate":
            proc.kill()
        else:
            proc.terminate()
        proc.wait(timeout=60)
        _wait_port(self.port, up=False)

    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def create_database(self, name: str) -> str:
        engine = sa.create_engine(self.admin_url)
        try:
            with engine.begin() as conn:
                conn.execute(sa.text(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_bin"))
        finally:
            engine.dispose()
        return f"mysql+pymysql://root@127.0.0.1:{self.port}/{name}?charset=utf8mb4"

    def __enter__(self) -> Self:
        self.init()
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
        shutil.rmtree(self.root.parent if self.root.name == "srv" else self.root, ignore_errors=True)


def require_binaries(available: bool, what: str) -> None:
    """Skip (or, with SYNCD_REQUIRE_DBS=1 as in CI, fail) when a private server cannot be run here."""
    if not available:
        import pytest

        msg = f"{what} binaries (or root, to run them as their own user) are not available"
        if os.environ.get("SYNCD_REQUIRE_DBS") == "1":
            pytest.fail(msg + "; SYNCD_REQUIRE_DBS=1 makes this a failure", pytrace=False)
        pytest.skip(msg)


def add_password_user(server: PrivateMariaDB, password: str) -> None:
    """A user ``syncd`` with a password, so a test can look for the password in what syncd prints."""
    engine = sa.create_engine(server.admin_url)
    try:
        with engine.begin() as conn:
            conn.execute(sa.text(f"CREATE USER 'syncd'@'127.0.0.1' IDENTIFIED BY '{password}'"))
            conn.execute(sa.text("GRANT ALL ON *.* TO 'syncd'@'127.0.0.1'"))
    finally:
        engine.dispose()
