"""SystemdNotifier against real Unix datagram sockets bound by the test (path and abstract)."""

from __future__ import annotations

import os
import socket
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, MutableMapping
from pathlib import Path

import pytest
import structlog

from syncd.daemon.notify import SystemdNotifier


class Listener:
    """A bound AF_UNIX datagram socket playing systemd's role."""

    def __init__(self, sock: socket.socket, env_value: str) -> None:
        self.sock = sock
        self.env_value = env_value

    def recv(self) -> str:
        return self.sock.recv(4096).decode("utf-8")

    def assert_silent(self) -> None:
        self.sock.setblocking(False)
        try:
            with pytest.raises(BlockingIOError):
                self.sock.recv(4096)
        finally:
            self.sock.setblocking(True)


Make = Callable[..., SystemdNotifier]


@pytest.fixture
def make() -> Iterator[Make]:
    """Build notifiers and close their sockets at teardown."""
    made: list[SystemdNotifier] = []

    def build(environ: MutableMapping[str, str] | None = None, **kwargs: bool) -> SystemdNotifier:
        n = SystemdNotifier(environ, **kwargs)
        made.append(n)
        return n

    yield build
    for n in made:
        n.close()


@pytest.fixture
def path_listener() -> Iterator[Listener]:
    # sun_path is limited to 108 bytes; pytest's tmp_path can be longer than that
    directory = tempfile.mkdtemp(prefix="sdn-", dir="/tmp")
    path = os.path.join(directory, "notify")  # noqa: PTH118 - plain str for the socket API
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(2)
    try:
        yield Listener(sock, path)
    finally:
        sock.close()
        Path(path).unlink(missing_ok=True)
        Path(directory).rmdir()


@pytest.fixture
def abstract_listener() -> Iterator[Listener]:
    name = f"syncd-test-{uuid.uuid4().hex}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.settimeout(2)
    try:
        yield Listener(sock, "@" + name)
    finally:
        sock.close()


@pytest.fixture(params=["path", "abstract"])
def listener(request: pytest.FixtureRequest) -> Listener:
    name = "path_listener" if request.param == "path" else "abstract_listener"
    value: Listener = request.getfixturevalue(name)
    return value


def test_messages_arrive_as_exact_datagrams(make: Make, listener: Listener) -> None:
    n = make({"NOTIFY_SOCKET": listener.env_value})
    assert n.enabled
    assert n.ready("3 datasets scheduled")
    assert listener.recv() == "READY=1\nSTATUS=3 datasets scheduled"
    assert n.ready()
    assert listener.recv() == "READY=1"
    assert n.status("running residents (户籍人口)")
    assert listener.recv() == "STATUS=running residents (户籍人口)"
    assert n.stopping("finishing the current batch")
    assert listener.recv() == "STOPPING=1\nSTATUS=finishing the current batch"
    assert n.stopping()
    assert listener.recv() == "STOPPING=1"
    assert n.extend_timeout(2.5)
    assert listener.recv() == "EXTEND_TIMEOUT_USEC=2500000"
    assert n.send("ERRNO=5", "BUSERROR=x")
    assert listener.recv() == "ERRNO=5\nBUSERROR=x"
    n.close()


def test_status_cannot_inject_assignments(make: Make, listener: Listener) -> None:
    n = make({"NOTIFY_SOCKET": listener.env_value})
    n.status("line one\nREADY=1\r\nline three")
    assert listener.recv() == "STATUS=line one READY=1 line three"


def test_reloading_sends_monotonic_usec(make: Make, listener: Listener) -> None:
    n = make({"NOTIFY_SOCKET": listener.env_value})
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert n.reloading("reloading configuration")
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    lines = listener.recv().split("\n")
    assert lines[0] == "RELOADING=1"
    assert lines[1].startswith("MONOTONIC_USEC=")
    assert before <= int(lines[1].removeprefix("MONOTONIC_USEC=")) <= after
    assert lines[2] == "STATUS=reloading configuration"
    assert len(lines) == 3


def test_watchdog_enabled_for_own_pid(make: Make, listener: Listener) -> None:
    env = {"NOTIFY_SOCKET": listener.env_value, "WATCHDOG_USEC": "60000000", "WATCHDOG_PID": str(os.getpid())}
    n = make(env)
    assert n.watchdog_enabled
    assert n.watchdog_interval() == 30.0
    assert n.watchdog()
    assert listener.recv() == "WATCHDOG=1"


def test_watchdog_enabled_without_watchdog_pid(make: Make, listener: Listener) -> None:
    n = make({"NOTIFY_SOCKET": listener.env_value, "WATCHDOG_USEC": "3000000"})
    assert n.watchdog_interval() == 1.5
    assert n.watchdog()
    assert listener.recv() == "WATCHDOG=1"


def test_watchdog_pid_mismatch_disables_watchdog(make: Make, listener: Listener) -> None:
    env = {"NOTIFY_SOCKET": listener.env_value, "WATCHDOG_USEC": "60000000", "WATCHDOG_PID": "1"}
    n = make(env)
    assert not n.watchdog_enabled
    assert n.watchdog_interval() is None
    assert not n.watchdog()
    listener.assert_silent()
    # the other messages still go out
    assert n.ready()
    assert listener.recv() == "READY=1"


@pytest.mark.parametrize("usec", ["", "0", "-5", "sixty"])
def test_watchdog_needs_a_positive_usec(make: Make, listener: Listener, usec: str) -> None:
    n = make({"NOTIFY_SOCKET": listener.env_value, "WATCHDOG_USEC": usec})
    assert n.watchdog_interval() is None
    assert not n.watchdog()
    listener.assert_silent()


def test_no_notify_socket_is_a_no_op(make: Make) -> None:
    n = make({"WATCHDOG_USEC": "60000000"})
    assert not n.enabled
    assert not n.watchdog_enabled
    assert n.watchdog_interval() is None
    assert not n.ready("x")
    assert not n.status("x")
    assert not n.watchdog()
    assert not n.reloading()
    assert not n.stopping()


def test_reads_os_environ_by_default_and_can_unset_it(
    make: Make, listener: Listener, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", listener.env_value)
    monkeypatch.setenv("WATCHDOG_USEC", "10000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    n = make(unset_environment=True)
    for key in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
        assert key not in os.environ
    assert n.watchdog_interval() == 5.0
    assert n.ready()
    assert listener.recv() == "READY=1"


def test_unsupported_socket_address_disables_notifications(make: Make) -> None:
    with structlog.testing.capture_logs() as logs:
        n = make({"NOTIFY_SOCKET": "vsock:2:1234"})
    assert not n.enabled
    assert not n.ready()
    assert [e["event"] for e in logs] == ["systemd.notify_socket_unsupported"]


def test_send_errors_never_raise_and_warn_once(make: Make) -> None:
    missing = f"/tmp/syncd-no-such-socket-{uuid.uuid4().hex}"  # noqa: S108 - never created
    n = make({"NOTIFY_SOCKET": missing, "WATCHDOG_USEC": "1000000"})
    with structlog.testing.capture_logs() as logs:
        assert not n.ready("x")
        assert not n.watchdog()
        assert not n.stopping()
    levels = [(e["event"], e["log_level"]) for e in logs]
    assert levels == [
        ("systemd.notify_failed", "warning"),
        ("systemd.notify_failed", "debug"),
        ("systemd.notify_failed", "debug"),
    ]
    assert "FileNotFoundError" in logs[0]["error"]


def test_socket_is_close_on_exec(make: Make, listener: Listener) -> None:
    n = make({"NOTIFY_SOCKET": listener.env_value})
    n.ready()
    listener.recv()
    assert n._sock is not None
    assert not n._sock.get_inheritable()
    assert n._sock.type == socket.SOCK_DGRAM


def test_concurrent_senders_deliver_every_datagram(make: Make, listener: Listener) -> None:
    n = make({"NOTIFY_SOCKET": listener.env_value, "WATCHDOG_USEC": "1000000"})

    def ping() -> None:
        for _ in range(25):
            n.watchdog()

    threads = [threading.Thread(target=ping) for _ in range(4)]
    for t in threads:
        t.start()
    # receive while they send: a datagram queue holds only ~10 messages
    received = [listener.recv() for _ in range(100)]
    for t in threads:
        t.join(timeout=5)
    assert received == ["WATCHDOG=1"] * 100


def test_a_receiver_that_stops_reading_does_not_hang_the_sender(
    make: Make, listener: Listener, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("syncd.daemon.notify.SEND_TIMEOUT", 0.2)
    n = make({"NOTIFY_SOCKET": listener.env_value})
    results = []
    started = time.monotonic()
    for i in range(500):  # nobody reads: the receiver's queue fills up, then a send times out
        results.append(n.status(f"message {i}"))
        if not results[-1]:
            break
    assert time.monotonic() - started < 5
    assert results[0] is True
    assert results[-1] is False
    assert listener.recv() == "STATUS=message 0"
