"""systemd service notification (sd_notify) in plain stdlib — no python-systemd dependency.

systemd starts a ``Type=notify`` service with ``NOTIFY_SOCKET`` set to a Unix datagram socket
(a filesystem path, or an abstract socket written with a leading ``@``). The service sends
newline-separated ``KEY=VALUE`` assignments as single datagrams (see sd_notify(3)):

==============================  ==========================================================
``notifier.ready(status)``      ``READY=1`` — start-up finished (config loaded, jobs scheduled)
``notifier.status(text)``       ``STATUS=…`` — one line shown by ``systemctl status syncd``
``notifier.watchdog()``         ``WATCHDOG=1`` — "still alive"; systemd restarts us when it stops
``notifier.reloading(status)``  ``RELOADING=1`` + ``MONOTONIC_USEC=…`` — a SIGHUP reload began;
                                call ``ready()`` again when it is done (ok or not)
``notifier.stopping(status)``   ``STOPPING=1`` — shutdown began (SIGTERM received)
``notifier.extend_timeout(s)``  ``EXTEND_TIMEOUT_USEC=…`` — ask for more time while starting/stopping
==============================  ==========================================================

Typical use by the daemon main loop::

    notifier = SystemdNotifier()           # reads the environment once
    ... load config, start scheduler and HealthServer ...
    notifier.ready("12 datasets scheduled")
    interval = notifier.watchdog_interval()  # seconds (half of WatchdogSec=), or None
    # a heartbeat thread calls notifier.watchdog() every `interval` seconds, but ONLY after
    # checking that the scheduler is really alive (DESIGN §6: a dead scheduler thread must
    # stop the pings so that systemd's watchdog restarts the service)

Every method is a no-op when ``NOTIFY_SOCKET`` is unset (running in a terminal, in tests), and
no method ever raises or blocks for long (a send gives up after :data:`SEND_TIMEOUT`
seconds): a failed send is logged once as a warning (later failures at debug), so
the notification channel can never take the daemon down. The watchdog is enabled only when
``WATCHDOG_USEC`` is a positive integer and ``WATCHDOG_PID`` is absent or equals our own PID
(systemd sets it so a forked child does not ping on the parent's behalf). Methods are safe to
call from several threads.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Mapping, MutableMapping
from types import TracebackType
from typing import Self

import structlog

__all__ = ["SEND_TIMEOUT", "SystemdNotifier"]

log = structlog.get_logger(__name__)

#: A datagram socket blocks when the receiver's queue is full (net.unix.max_dgram_qlen, often
#: 10); if the service manager stops reading we give up after this many seconds, never hang.
SEND_TIMEOUT = 2.0

_ENV_KEYS = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")


def _socket_address(raw: str) -> str | None:
    """``/run/systemd/notify`` stays as is; ``@name`` becomes the abstract address ``\\0name``."""
    if raw.startswith("/"):
        return raw
    if raw.startswith("@") and len(raw) > 1:
        return "\0" + raw[1:]
    return None


def _one_line(text: str) -> str:
    """A STATUS value must stay one line: a newline would start a new assignment."""
    return " ".join(text.splitlines()).strip()


class SystemdNotifier:
    """Send sd_notify messages to the service manager; a no-op outside systemd.

    ``environ`` defaults to :data:`os.environ`. With ``unset_environment=True`` the three
    variables are removed from it after reading (like sd_notify's ``unset_environment``), so that
    child processes cannot talk to systemd on our behalf.
    """

    def __init__(
        self,
        environ: MutableMapping[str, str] | None = None,
        *,
        unset_environment: bool = False,
    ) -> None:
        env: MutableMapping[str, str] = os.environ if environ is None else environ
        raw_socket = env.get("NOTIFY_SOCKET", "")
        self._address: str | None = None
        if raw_socket:
            self._address = _socket_address(raw_socket)
            if self._address is None:
                log.warning(
                    "systemd.notify_socket_unsupported",
                    notify_socket=raw_socket,
                    hint="only a path (/...) or an abstract socket (@...) is supported; "
                    "systemd notifications are disabled",
                )
        self._watchdog_usec = self._read_watchdog(env)
        if unset_environment:
            for key in _ENV_KEYS:
                env.pop(key, None)
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._warned = False

    @staticmethod
    def _read_watchdog(env: Mapping[str, str]) -> int | None:
        raw_usec = env.get("WATCHDOG_USEC", "")
        if not raw_usec:
            return None
        raw_pid = env.get("WATCHDOG_PID", "")
        if raw_pid and raw_pid != str(os.getpid()):
            # the watchdog belongs to another process (we are a child of the service's main process)
            return None
        try:
            usec = int(raw_usec)
        except ValueError:
            log.warning("systemd.watchdog_usec_invalid", watchdog_usec=raw_usec)
            return None
        return usec if usec > 0 else None

    # ------------------------------------------------------------------ state

    @property
    def enabled(self) -> bool:
        """True when running under systemd with a usable NOTIFY_SOCKET."""
        return self._address is not None

    @property
    def watchdog_enabled(self) -> bool:
        """True when systemd expects ``WATCHDOG=1`` pings from this process."""
        return self.enabled and self._watchdog_usec is not None

    def watchdog_interval(self) -> float | None:
        """Seconds between watchdog pings (half of ``WatchdogSec=``), or None without a watchdog."""
        if not self.watchdog_enabled or self._watchdog_usec is None:
            return None
        return self._watchdog_usec / 2 / 1_000_000

    # ------------------------------------------------------------------ messages

    def ready(self, status: str | None = None) -> bool:
        """Start-up (or a reload) finished: ``READY=1``."""
        return self._send("READY=1", status)

    def status(self, text: str) -> bool:
        """Free-form one-line status shown by ``systemctl status``."""
        return self._send(None, text)

    def watchdog(self) -> bool:
        """Watchdog keep-alive ``WATCHDOG=1``; sends nothing when the watchdog is not enabled."""
        if not self.watchdog_enabled:
            return False
        return self._send("WATCHDOG=1", None)

    def stopping(self, status: str | None = None) -> bool:
        """Shutdown began: ``STOPPING=1``."""
        return self._send("STOPPING=1", status)

    def reloading(self, status: str | None = None) -> bool:
        """Configuration reload began: ``RELOADING=1`` and ``MONOTONIC_USEC``.

        systemd ≥ 253 (``Type=notify-reload``) requires MONOTONIC_USEC (CLOCK_MONOTONIC, µs) to
        match the reload with its ``READY=1``; older versions ignore it. Call :meth:`ready` when
        the reload is over, whether it succeeded or kept the old configuration.
        """
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self._send(f"RELOADING=1\nMONOTONIC_USEC={usec}", status)

    def extend_timeout(self, seconds: float) -> bool:
        """Ask for ``seconds`` more before the start/stop timeout fires (``EXTEND_TIMEOUT_USEC``)."""
        return self._send(f"EXTEND_TIMEOUT_USEC={max(0, int(seconds * 1_000_000))}", None)

    def send(self, *assignments: str) -> bool:
        """Send raw ``KEY=VALUE`` assignments in one datagram; True when it was delivered."""
        return self._send("\n".join(_one_line(a) for a in assignments), None)

    # ------------------------------------------------------------------ transport

    def _send(self, head: str | None, status: str | None) -> bool:
        if self._address is None:
            return False
        lines = [head] if head else []
        if status is not None:
            lines.append(f"STATUS={_one_line(status)}")
        if not lines:
            return False
        payload = "\n".join(lines).encode("utf-8")
        with self._lock:
            try:
                if self._sock is None:
                    self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                    self._sock.settimeout(SEND_TIMEOUT)
                self._sock.sendto(payload, self._address)
            except OSError as exc:
                self._report_failure(exc)
                return False
        return True

    def _report_failure(self, exc: OSError) -> None:
        """Warn once: a broken notify socket must neither crash nor flood the journal."""
        fields = {"error": f"{type(exc).__name__}: {exc.strerror or exc}"}
        if self._warned:
            log.debug("systemd.notify_failed", **fields)
            return
        self._warned = True
        log.warning(
            "systemd.notify_failed",
            hint="could not notify systemd (sd_notify); the service keeps running, but systemd may "
            "consider start-up or the watchdog timed out",
            **fields,
        )

    def close(self) -> None:
        """Close the notification socket (it is reopened on the next message)."""
        with self._lock:
            if self._sock is not None:
                self._sock.close()
                self._sock = None

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
