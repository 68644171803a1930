"""Helpers for daemon tests: config with a schedule, a `syncd run` subprocess, a notify socket."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tests.e2e import SECRET, SECRET_ENV, write_config

REPO = Path(__file__).resolve().parents[1]


def daemon_config(
    root: Path,
    *,
    db_url: str,
    gateway_url: str,
    every: str = "1s",
    jitter: str | None = None,
    metrics_port: int = 0,
    **kw: Any,
) -> Path:
    """A daemon's configuration of the e2e dataset, run ``every`` so often. A dataset that never ran
    runs "at once": within its ``jitter``, or within 30 s (the scheduler's catch-up spread) when it
    has none, so a test waiting for the first run of an hourly dataset gives it a short jitter."""
    path = write_config(root, db_url=db_url, gateway_url=gateway_url, **kw)
    with path.open("a", encoding="utf-8") as f:
        f.write(
            f"daemon: {{metrics_port: {metrics_port}, heartbeat_interval: 1s, heartbeat_timeout: 5s, "
            "stop_timeout: 20s}\n"
        )
    with (root / "datasets" / "residents.yaml").open("a", encoding="utf-8") as f:
        spread = "" if jitter is None else f", jitter: {jitter}"
        f.write(f"schedule: {{type: interval, every: {every}{spread}}}\n")
    return path


@contextmanager
def as_service_user() -> Iterator[None]:
    """Run the block with an unprivileged effective user when the tests run as root: root reads
    every file whatever its mode, the service's user does not. (Only the effective ids change, so
    they come back at the end; modules the block imports must already be loaded, as the
    interpreter may live in root's home.)"""
    if os.geteuid() != 0:
        yield
        return
    nobody = pwd.getpwnam("nobody")
    os.setegid(nobody.pw_gid)
    os.seteuid(nobody.pw_uid)
    try:
        yield
    finally:
        os.seteuid(0)
        os.setegid(0)


@contextmanager
def service_dir() -> Iterator[Path]:
    """A scratch directory that :func:`as_service_user` can reach (pytest's tmp_path lies under a
    0700 directory of the user running the tests). Call :func:`give_to_service_user` once the files
    are written."""
    path = Path(tempfile.mkdtemp(prefix="syncd-svc-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def give_to_service_user(root: Path) -> None:
    """Make ``root`` and everything below it the :func:`as_service_user` user's (only as root)."""
    if os.geteuid() != 0:
        return
    nobody = pwd.getpwnam("nobody")
    for path in [root, *root.rglob("*")]:
        os.chown(path, nobody.pw_uid, nobody.pw_gid, follow_symlinks=False)


class NotifySocket:
    """A real AF_UNIX datagram socket standing in for systemd's NOTIFY_SOCKET."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="sdn"))  # short path: AF_UNIX paths are limited to 108 bytes
        self.path = str(self.dir / "notify")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.messages: list[str] = []

    def wait_for(self, text: str, timeout: float = 15.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for m in self.messages:
                if text in m:
                    return m
            self.sock.settimeout(max(0.05, deadline - time.monotonic()))
            try:
                self.messages.append(self.sock.recv(4096).decode())
            except TimeoutError:
                break
        raise AssertionError(f"{text!r} not received; got {self.messages}")

    def close(self) -> None:
        self.sock.close()
        Path(self.path).unlink()
        self.dir.rmdir()


class DaemonProcess:
    """`syncd run` in a subprocess; stdout lines are collected as they arrive."""

    def __init__(self, config: Path, *, notify: NotifySocket | None = None) -> None:
        env = {**os.environ, SECRET_ENV: SECRET, "PYTHONPATH": str(REPO)}
        env.pop("NOTIFY_SOCKET", None)
        if notify is not None:
            env["NOTIFY_SOCKET"] = notify.path
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "syncd.cli", "-c", str(config), "run"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            text=True,
        )
        self.lines: list[str] = []
        self._stderr: str | None = None
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)

    def events(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in list(self.lines)]

    def wait_event(self, name: str, count: int = 1, timeout: float = 20.0, **match: Any) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = [
                e
                for e in self.events()
                if e["event"] == name and all(e.get(k) == v for k, v in match.items())
            ]
            if len(found) >= count:
                return found[count - 1]
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError(
            f"{name} x{count} not logged; stderr: {self.stderr_text()}\n{''.join(self.lines)}"
        )

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def stop(self, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout)
        self._reader.join(5)
        self.stderr_text()
        for pipe in (self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                pipe.close()
        return code

    def stderr_text(self) -> str:
        if self.proc.poll() is None:
            return "(running)"
        if self._stderr is None:
            assert self.proc.stderr is not None
            self._stderr = "" if self.proc.stderr.closed else self.proc.stderr.read()
        return self._stderr
