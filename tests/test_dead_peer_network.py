"""A database peer that goes silent mid-query is noticed, end to end (syncd.targets.deadpeer).

The client runs in a network namespace of its own and reaches the database through a veth pair and
a TCP forwarder in this process (PostgreSQL and MariaDB listen on 127.0.0.1 only). Once its query
runs, the client's frames stop reaching the host end (:meth:`Link.cut`): the server goes silent as
behind a firewall that forgot the connection, without closing anything. (``tc … netem loss 100%`` is not
used: this kernel has no netem, and packets dropped on the client's own interface look to TCP like
local congestion, which keepalive never gives up on.) The client (keepalive
timers patched to 1 s) must then fail with a connection error within a generous deadline, instead
of waiting for hours as it did.

Needs root and iproute2 (``ip``): skipped without them, unless ``SYNCD_REQUIRE_TOOLS=1``
(CI), where that is a failure.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import sqlalchemy as sa

REQUIRE_TOOLS = os.environ.get("SYNCD_REQUIRE_TOOLS") == "1"
DEADLINE_S = 30.0  # the client notices in about 3 s (1 s idle, 1 s probes, 3 s user timeout)
REPO = Path(__file__).resolve().parents[1]


def _missing(msg: str) -> None:
    if REQUIRE_TOOLS:
        pytest.fail(f"{msg}; SYNCD_REQUIRE_TOOLS=1 makes this a failure", pytrace=False)
    pytest.skip(msg)


def _run(*args: str) -> None:
    subprocess.run(args, check=True, capture_output=True, text=True, timeout=20)


# --------------------------------------------------------------------------- network


@dataclass
class Link:
    """A network namespace joined to this one by a veth pair, both ends reachable by address."""

    namespace: str
    host_device: str
    host_address: str

    def cut(self) -> None:
        """What the client sends is lost on the way, and nothing tells it (no reset, no ICMP): its
        namespace addresses the host end by a hardware address nobody has, so the host end drops
        every frame (not its own). Both ends stay up: the client's kernel counts its packets as
        sent and unanswered (a link set down would look to TCP like local congestion, which
        keepalive never gives up on)."""
        _run("ip", "netns", "exec", self.namespace, "ip", "neigh", "replace", self.host_address,
             "lladdr", "02:00:00:5e:00:01", "dev", "eth0", "nud", "permanent")


@pytest.fixture
def link() -> Iterator[Link]:
    if os.geteuid() != 0:
        _missing("network namespaces need root")
    for tool in ("ip",):
        if shutil.which(tool) is None:
            _missing(f"`{tool}` is not installed (Debian package iproute2)")
    tag = uuid.uuid4().hex[:8]
    namespace, host_device = f"syncd-dp-{tag}", f"sdp{tag}"
    subnet = f"10.{random.randint(200, 250)}.{random.randint(0, 255)}"
    host_address, ns_address = f"{subnet}.1", f"{subnet}.2"
    try:
        _run("ip", "netns", "add", namespace)
    except subprocess.CalledProcessError as exc:
        _missing(f"cannot create a network namespace: {exc.stderr.strip()}")
    try:
        _run("ip", "link", "add", host_device, "type", "veth", "peer", "name", "eth0", "netns", namespace)
        _run("ip", "addr", "add", f"{host_address}/30", "dev", host_device)
        _run("ip", "link", "set", host_device, "up")
        inside = ("ip", "netns", "exec", namespace, "ip")
        _run(*inside, "addr", "add", f"{ns_address}/30", "dev", "eth0")
        _run(*inside, "link", "set", "eth0", "up")
        _run(*inside, "link", "set", "lo", "up")
        yield Link(namespace, host_device, host_address)
    finally:
        # deleting the namespace deletes its end of the pair, and with it the other end
        subprocess.run(["ip", "netns", "del", namespace], check=False, capture_output=True, timeout=20)
        subprocess.run(["ip", "link", "del", host_device], check=False, capture_output=True, timeout=20)


class Forwarder:
    """Accepts TCP connections on ``host`` and relays each to ``upstream``, both ways."""

    def __init__(self, host: str, upstream: tuple[str, int]) -> None:
        self._upstream = upstream
        self._listener = socket.create_server((host, 0))
        self.port: int = self._listener.getsockname()[1]
        self._sockets: list[socket.socket] = [self._listener]
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
                server = socket.create_connection(self._upstream, timeout=10)
                server.settimeout(None)
            except OSError:
                return
            with self._lock:
                self._sockets += [client, server]
            threading.Thread(target=self._pump, args=(client, server), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
            sink.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def close(self) -> None:
        with self._lock:
            for sock in self._sockets:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)  # wakes a thread blocked on it
                sock.close()


# --------------------------------------------------------------------------- the client

CLIENT = """
import sys
from syncd.targets import deadpeer

deadpeer.KEEPALIVE_IDLE_S = 1
deadpeer.KEEPALIVE_INTERVAL_S = 1
deadpeer.KEEPALIVE_COUNT = 2
deadpeer.TCP_USER_TIMEOUT_S = 3
engine_kind, url, sleep = sys.argv[1:4]
try:
    if engine_kind == "lock":
        from syncd.daemon.locks import DatasetLocker

        locker = DatasetLocker(url)
        with locker.take("dead_peer") as held:
            assert held is not None
            print("running", flush=True)
            sys.stdin.readline()  # the network is gone: the run checks its lock, as between batches
            while True:
                held.check(force=True)
    else:
        if engine_kind == "target":
            from syncd.targets.engine import create_target_engine

            engine = create_target_engine(url)
        else:
            from syncd.sources.sql import source_engine

            engine = source_engine(url)
        with engine.connect() as conn:
            conn.exec_driver_sql("SELECT 1")
            print("running", flush=True)
            conn.exec_driver_sql(sleep)
    print("no error", flush=True)
except Exception as exc:
    print(f"failed: {type(exc).__name__}: {exc}", flush=True)
    sys.exit(3)
"""


def _running_sleep(admin: sa.Engine, kind: str, marker: str) -> int | None:
    """The server's id of the session running the client's sleep, once it runs."""
    if kind == "postgresql":
        query = "SELECT pid FROM pg_stat_activity WHERE state = 'active' AND query LIKE :pattern"
    else:
        query = "SELECT ID FROM information_schema.PROCESSLIST WHERE INFO LIKE :pattern"
    with admin.connect() as conn:
        found = conn.execute(sa.text(query), {"pattern": f"%{marker}%"}).scalar()
    return None if found is None else int(found)



@pytest.mark.slow
@pytest.mark.parametrize("engine", ["target", "source", "lock"])
def test_a_silent_server_fails_the_query(tcp_db: tuple[str, str], engine: str, link: Link) -> None:
    kind, url = tcp_db
    parsed = sa.make_url(url)
    forwarder = Forwarder(link.host_address, (parsed.host or "127.0.0.1", parsed.port or 0))
    admin = sa.create_engine(parsed, poolclass=sa.pool.NullPool)
    marker = f"syncd_dead_peer_{uuid.uuid4().hex[:12]}"
    sleep = (
        f"SELECT pg_sleep(60), '{marker}'" if kind == "postgresql" else f"SELECT SLEEP(60), '{marker}'"
    )
    through = parsed.set(host=link.host_address, port=forwarder.port).render_as_string(hide_password=False)
    client = subprocess.Popen(
        ["ip", "netns", "exec", link.namespace, sys.executable, "-c", CLIENT, engine, through, sleep],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO,
    )
    session: int | None = None
    try:
        assert client.stdout is not None and client.stdin is not None
        started = client.stdout.readline()
        assert started == "running\n", started + client.stdout.read()
        if engine != "lock":
            deadline = time.monotonic() + DEADLINE_S
            while (session := _running_sleep(admin, kind, marker)) is None:
                assert time.monotonic() < deadline, "the client's query never ran"
                time.sleep(0.05)
        link.cut()
        if engine == "lock":
            client.stdin.write("go\n")
            client.stdin.flush()
        try:
            client.wait(timeout=DEADLINE_S)
            hung = False
        except subprocess.TimeoutExpired:
            hung = True
        assert not hung, f"the client still waits on the silent server after {DEADLINE_S:.0f} s"
        output = client.stdout.read()
        assert client.returncode == 3, output
        if engine == "lock":
            assert "failed: RunLockLost: the run lock of dataset dead_peer was lost" in output, output
        else:
            assert "failed: OperationalError" in output, output
        assert "timed out" in output, output  # the kernel gave the peer up (ETIMEDOUT)
    finally:
        if client.poll() is None:
            client.kill()
            client.wait()
        for stream in (client.stdin, client.stdout):
            if stream is not None:
                stream.close()
        forwarder.close()
        if session is not None:  # the server still sleeps for the client it lost
            end = "SELECT pg_terminate_backend(:id)" if kind == "postgresql" else "KILL :id"
            with admin.connect() as conn, contextlib.suppress(sa.exc.DBAPIError):  # or it ended meanwhile
                conn.execute(sa.text(end), {"id": session})
        admin.dispose()
