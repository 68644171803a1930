"""The read worker: a child process that reads, decodes, digests and maps a dataset's records.

A large read (a first load, a full-snapshot re-sync) is CPU-bound in one Python process: HTTP,
JSON decoding, record digests and the mapping take about half of it, the batch writer the other
half, and the two halves share one interpreter lock. With a read worker the first half runs in a
child process on the other core; the run's own process only classifies and writes.

- The child is ``python -P -m syncd.sources.worker PARENT_PID`` (``-P``: the working directory is
  never on its import path). It gets the app config, the dataset and the window as one pickle on
  stdin (which stays open: see "Credentials"), builds the source and the compiled mapping itself,
  reads the pages one ahead (as the runner does) and sends each page back on stdout as a
  :class:`MappedPage`: the mapped rows with their record digests, row hashes and row keys, the
  deletes, and the records it could not map (masked, with the reason). Pickle is safe here: both
  ends are this program, over a private pipe.
- Held start (``hold=True``; ``read_worker: auto`` on a large first load): the child imports and
  prepares everything (mapping, source), sends ``ready`` and waits for ``go`` with a
  :class:`~syncd.sources.base.ResumePoint` (or None: from the first page). Meanwhile the run reads
  in its own process; it hands over at a page boundary and the child reads on from the next page.
  A held child that fails or dies before ``ready`` sets ``unavailable``: the run keeps the read.
- Nothing is written by the child: batches, row state, the change feed and the watermark stay in
  the run's process, so every invariant of DESIGN §4 holds as without the worker. The stored
  record digests are compared in the run's process when the batch is written, never in the
  child, so a digest stored while a page is in flight cannot be missed.
- Back-pressure: the child blocks on the pipe when it is full. The pipe's kernel buffer is raised
  to :data:`PIPE_BYTES` (Linux's default of 64 KiB is less than one pickled page of 1,000 rows,
  so the child could not map page k+1 until the run had unpickled page k, and each side waited
  for the other once per page): a few pages of slack, held by the kernel, never by either
  process, so memory stays flat.
- Credentials: the child reads with the run process's credential (a token, a request secret) and
  never asks the gateway for one. The run's process holds an http source of the dataset that it
  never reads (the *keeper*), whose auth shares the process's credential with every other source
  on the connection (:func:`~syncd.sources.http.auth.base.shared_state`); the credential it holds
  travels in the setup message (and in ``go``). When the child needs another (it has none, it is
  due, or the gateway refused it), it sends ``("credential", fingerprint of its own)`` and waits:
  the run's process answers on the child's stdin with the credential it holds, fetching one only
  when it holds none, the same one, or a due one. So one process issues, and a gateway that
  revokes the previous credential when it issues one (many do) never sees two processes evicting
  each other. When the run's process renews first, the child's next request is refused once and
  the child is given the new credential, no second one is issued. The question waits in the
  pages pipe behind the pages sent before it (a few at most): the child's read pauses that long,
  once per credential (at its start when the run's process held none, then about once per
  lifetime of a credential). Secrets travel only over these private pipes: never in the child's
  arguments, environment or a file.
- Logging: the child renders nothing itself; each event is sent to the parent and logged there,
  with the run's ``dataset``/``run_id`` fields, through the parent's handlers and redaction.
- Ending: the child is killed with the parent (``PR_SET_PDEATHSIG``; a kill -9 of syncd leaves no
  orphan reading the gateway), killed when the run ends early (a stop request, a failed batch,
  an error guard); it ignores SIGTERM and SIGINT, which a service stop or Ctrl-C sends to the
  whole process group: the stop is the parent's to carry out. The parent kills it the moment the
  run's stop is requested (:meth:`ReadWorker.watch_stop`), not at the next page it sends: a child
  retrying a stalled gateway may send none for its whole retry budget. An error in the child (an upstream
  error, a bad mapping) is raised in the parent as the same exception. A child that dies without
  saying why is a :class:`ReadWorkerError` naming its exit status; the run fails and keeps its
  watermark.
"""

from __future__ import annotations

import contextlib
import contextvars
import fcntl
import io
import logging
import os
import pickle
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, MutableMapping
from dataclasses import dataclass, field, fields
from datetime import date, datetime
from decimal import Decimal
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import structlog

from syncd.errors import StopRequested, SyncdError
from syncd.gcpolicy import settle_worker
from syncd.procmem import peak_rss_bytes
from syncd.sources.base import Page, ReadStats, ResumePoint, StopSignal, Window

if TYPE_CHECKING:  # the worker's import path stays free of the mapping and the config models
    from syncd.mapping.records import RecordSorter, Rejected
    from syncd.sources.http.source import HttpSource

__all__ = ["MappedPage", "ReadWorker", "ReadWorkerError", "child_environment"]

_PICKLE = pickle.HIGHEST_PROTOCOL
_STOP_WAIT_S = 5.0  # how long a finished child may take to exit
_CLOSED_POLL_S = 0.5  # how often the stop watcher (ReadWorker.watch_stop) looks whether the worker closed
PIPE_BYTES = 1 << 20
"""Kernel buffer asked for the pages pipe (Linux ``F_SETPIPE_SZ``; 1 MiB is also the default
``/proc/sys/fs/pipe-max-size`` an unprivileged process may ask for). Where it is refused the pipe
keeps the system's size: slower, never wrong."""
_STREAM_BUFFER = 64 << 10
"""User-space buffer of each end of the pages pipe. A page (≈ 200 kB pickled) is written in one
call and read in the pickle's 64 kB frames: a larger buffer only adds resident memory (each
process touched all of the 1 MiB it used to ask for)."""


class ReadWorkerError(SyncdError):
    """The read worker could not be started or ended without saying why."""


@dataclass(slots=True)
class MappedPage:
    """One upstream page after the worker mapped it. ``rows``, ``digests``, ``hashes`` and ``keys``
    are parallel (``keys`` is empty when the run did not ask for them: a first load skips no
    record; ``hashes`` when the run's writer hashes the rows itself); so are ``deletes``,
    ``delete_after`` (each delete's place: after that many of ``rows``) and ``delete_keys`` (empty
    like ``keys``); ``rejected`` are (masked record, reason, upstream key, mapped key values) of
    records it could not map (:data:`syncd.mapping.records.Rejected`)."""

    number: int
    reported_total: int | None
    fetched: int
    max_seen: datetime | None
    rows: list[tuple[Any, ...]] = field(default_factory=list)
    digests: list[str | None] = field(default_factory=list)
    hashes: list[str] = field(default_factory=list)
    keys: list[str | None] = field(default_factory=list)
    deletes: list[tuple[Any, ...]] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)
    delete_after: list[int] = field(default_factory=list)
    delete_keys: list[str | None] = field(default_factory=list)

    def __reduce__(self) -> tuple[Any, ...]:
        # the rows travel column by column, dates and Decimals as their text (_encode_rows)
        return (
            _page_from_wire,
            (
                self.number,
                self.reported_total,
                self.fetched,
                self.max_seen,
                _encode_rows(self.rows),
                self.digests,
                self.hashes,
                self.keys,
                self.deletes,
                self.rejected,
                self.delete_after,
                self.delete_keys,
            ),
        )


def _page_from_wire(
    number: int,
    reported_total: int | None,
    fetched: int,
    max_seen: datetime | None,
    rows: tuple[tuple[str, ...], list[list[Any]]],
    *rest: Any,
) -> MappedPage:
    return MappedPage(number, reported_total, fetched, max_seen, _decode_rows(rows), *rest)


# --------------------------------------------------------------------------- rows on the wire
#
# Pickling a row's date, datetime and Decimal values costs more than mapping them: each goes
# through its class's __reduce__ (about 0.5 µs a value; 4.9 µs for the whole 18-column benchmark
# row, 1.4 µs as below). A page's rows are sent instead as columns; a column whose values (None
# aside) are all of exactly one of the classes below is sent as their text, which the parent
# turns back into equal values of the same class. Any other column is pickled as it is.


def _naive(value: datetime) -> bool:
    # isoformat() keeps an offset but not a zone's name, and never the fold
    return value.tzinfo is None and not value.fold


_Codec = tuple[str, Callable[[Any], str], Callable[[str], Any], Callable[[Any], bool] | None]
_TEXT_CODECS: dict[type, _Codec] = {
    date: ("date", date.isoformat, date.fromisoformat, None),
    datetime: ("datetime", datetime.isoformat, datetime.fromisoformat, _naive),
    Decimal: ("decimal", str, Decimal, None),  # str() and Decimal() round-trip exactly, NaN and -0 too
}
_DECODERS: dict[str, Callable[[str], Any]] = {tag: dec for tag, _enc, dec, _ok in _TEXT_CODECS.values()}


def _encode_rows(rows: list[tuple[Any, ...]]) -> tuple[tuple[str, ...], list[list[Any]]]:
    """``rows`` as (one tag per column, the columns); tag ``""`` is a column sent as it is."""
    if not rows:
        return (), []
    columns: list[Any] = list(zip(*rows, strict=True))
    tags: list[str] = []
    for i, column in enumerate(columns):
        classes = set(map(type, column))
        classes.discard(type(None))
        codec = _TEXT_CODECS.get(classes.pop()) if len(classes) == 1 else None
        if codec is None:
            tags.append("")
            continue
        tag, encode, _decode, check = codec
        if check is not None and not all(check(v) for v in column if v is not None):
            tags.append("")
            continue
        columns[i] = [None if v is None else encode(v) for v in column]
        tags.append(tag)
    return tuple(tags), columns


def _decode_rows(wire: tuple[tuple[str, ...], list[list[Any]]]) -> list[tuple[Any, ...]]:
    tags, columns = wire
    if not tags:
        return []
    for i, tag in enumerate(tags):
        if tag:
            decode = _DECODERS[tag]
            columns[i] = [None if v is None else decode(v) for v in columns[i]]
    return list(zip(*columns, strict=True))


_STATS_FIELDS = tuple(f.name for f in fields(ReadStats))  # every counter and flag travels back


def _stats_dict(stats: ReadStats) -> dict[str, Any]:
    return {name: getattr(stats, name) for name in _STATS_FIELDS}


# --------------------------------------------------------------------------- parent side


class ReadWorker:
    """A running read worker for one run; iterate :meth:`pages`, then read ``stats``. Always
    ``close()`` it (idempotent): that ends the child if the run stopped early."""

    snapshot_read = True  # an http source reads the whole window

    def __init__(
        self,
        app: Any,
        dataset: Any,
        window: Window,
        *,
        keys: bool = True,
        hashes: bool = True,
        hold: bool = False,
        today: date | None = None,
        limits: Mapping[str, Any] | None = None,
    ) -> None:
        """Start the child. ``hold``: the child prepares everything (imports, the mapping, the
        source) and then waits: :meth:`wait_ready` tells when it is ready, :meth:`go` lets it read
        (from the first page, or on from a :class:`~syncd.sources.base.ResumePoint`). Meanwhile the
        run reads in its own process, so the child's start-up (~0.3 s) is not spent waiting.
        ``today`` and ``limits``: what the run compiles its mapping with (:func:`compile_mapping`).
        ``keys``: the rows' keys and hashes are sent (the run skips unchanged records); without
        them, ``hashes=False`` leaves the rows' hashes to the run's writer too."""
        self.stats = ReadStats()
        self.pid = 0
        self._hold = hold
        self._ready = threading.Event()
        self.unavailable: str | None = None  # why a held child will never be ready (it failed or died)
        self._log = structlog.get_logger("syncd.sources.worker")
        self._keeper = _credential_keeper(app, dataset)
        self._child_traffic = (0, 0, 0)  # requests, retries, bytes the child reported so far
        self._closed = threading.Event()  # close() was called: the stop watcher ends
        env = child_environment(Path(__file__).resolve().parents[2], os.environ)
        command = [sys.executable, "-P", "-m", "syncd.sources.worker", str(os.getpid())]
        try:
            self._proc = subprocess.Popen(  # noqa: S603 - our own interpreter and module, no shell
                command,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                env=env,
                bufsize=_STREAM_BUFFER,
                close_fds=True,
                # a group of its own: a terminal's Ctrl-C (SIGINT to the foreground group) or a
                # supervisor's signal to syncd's group would otherwise reach the child in its first
                # ~0.15 s, before it ignores them, and kill it; the run process handles a stop
                process_group=0,
            )
        except OSError as exc:
            if self._keeper is not None:
                self._keeper.close()
            raise ReadWorkerError(f"could not start the read worker ({sys.executable}): {exc}") from exc
        self.pid = self._proc.pid
        self._finished = False
        self.peak_rss_bytes: int | None = None  # the child's own, reported when it ends
        self.pipe_bytes = _widen_pipe(self._proc.stdout)
        init = {
            "app": app,
            "dataset": dataset,
            "window": window,
            "keys": keys,
            "hashes": keys or hashes,
            "today": today,  # the run's mapping is compiled with these: the worker's is the same
            "limits": limits,
            "hold": hold,
            "level": logging.getLogger().getEffectiveLevel(),
            "credentials": self._keeper.credential_state() if self._keeper is not None else None,
        }
        payload = pickle.dumps(init, protocol=_PICKLE)
        # written from a thread: the child reads it only once its imports are done (~0.3 s), and a
        # config larger than the pipe's buffer must not hold the run up until then
        self._init_thread = threading.Thread(
            target=self._send_init, args=(payload,), name="syncd-worker-init", daemon=True
        )
        self._init_thread.start()
        self._ready_thread: threading.Thread | None = None
        if hold:
            # the child's messages until it is ready (its log lines, or why it failed), read in a
            # thread with the run's context (its log fields) so that the run never blocks on them
            context = contextvars.copy_context()
            self._ready_thread = threading.Thread(
                target=context.run, args=(self._await_ready,), name="syncd-worker-ready", daemon=True
            )
            self._ready_thread.start()
        self._log.debug("worker.started", pid=self.pid, pipe_bytes=self.pipe_bytes)

    def _send_init(self, payload: bytes) -> None:
        stdin = self._proc.stdin
        if stdin is None:  # pragma: no cover - Popen was given stdin=PIPE
            return
        with contextlib.suppress(OSError):  # a child that died early: pages() reports its exit status
            stdin.write(payload)
            stdin.flush()  # stdin stays open: go(), and the credentials the child asks for

    def _await_ready(self) -> None:
        stdout = self._proc.stdout
        if stdout is None:  # pragma: no cover - Popen was given stdout=PIPE
            return
        try:
            while True:
                message = pickle.load(stdout)  # noqa: S301 - from our own child over a private pipe
                kind = message[0]
                if kind == "ready":
                    self._ready.set()
                    return
                if kind == "log":
                    _relog(message[1], message[2], message[3])
                elif kind == "error":
                    self.unavailable = f"{message[3]}: {message[4]}"
                    return
                else:  # pragma: no cover - both ends are this module
                    self.unavailable = f"it sent {kind!r} before it was ready"
                    return
        except EOFError:
            self.unavailable = str(self._died())
        except Exception as exc:  # noqa: BLE001 - a message this process cannot read
            self.unavailable = f"{type(exc).__name__}: {exc}"

    def wait_ready(self, timeout: float = 0.0) -> bool:
        """Whether the held child is ready to read (waiting at most ``timeout`` seconds for it);
        False for good once it failed or died (``unavailable`` says why)."""
        if self._ready_thread is None:
            return False
        self._ready_thread.join(timeout)
        return self._ready.is_set()

    def go(self, resume: ResumePoint | None = None) -> None:
        """Let the ready child read: from the first page, or on after ``resume``'s page."""
        if not self._ready.is_set():
            raise ReadWorkerError("the read worker was told to read before it was ready")
        self._init_thread.join()
        if self._ready_thread is not None:
            self._ready_thread.join()  # it returned when the child said ready
        stdin = self._proc.stdin
        if stdin is None:  # pragma: no cover - Popen was given stdin=PIPE
            return
        credentials = self._keeper.credential_state() if self._keeper is not None else None
        with contextlib.suppress(OSError):  # a child that died since: pages() reports its exit status
            stdin.write(pickle.dumps(("go", resume, credentials), protocol=_PICKLE))
            stdin.flush()  # stdin stays open for the credentials the child asks for

    def pages(self) -> Iterator[MappedPage]:
        """The mapped pages in order; raises what the child raised, after the pages before it."""
        stdout = self._proc.stdout
        if stdout is None:  # pragma: no cover - Popen was given stdout=PIPE
            raise ReadWorkerError("the read worker has no output pipe")
        while True:
            try:
                message = pickle.load(stdout)  # noqa: S301 - from our own child over a private pipe
            except EOFError as exc:
                raise self._died() from exc
            except Exception as exc:
                self.close()
                raise ReadWorkerError(
                    f"the read worker (pid {self.pid}) sent a message this process cannot read "
                    f"({type(exc).__name__}: {exc}); the run stops and keeps its watermark"
                ) from exc
            kind = message[0]
            if kind == "page":
                self._child_traffic = message[2]  # the traffic so far; the rest arrives with "end" or "error"
                self._tally()
                yield message[1]
            elif kind == "log":
                _relog(message[1], message[2], message[3])
            elif kind == "credential":
                self._lend_credential(message[1])
            elif kind == "end":
                self._take_stats(message[1])
                self.peak_rss_bytes = message[2]
                self._finished = True
                return
            elif kind == "error":
                self._take_stats(message[1])
                self.peak_rss_bytes = message[5]
                self._finished = True
                raise _rebuild(message[2], message[3], message[4])
            else:  # pragma: no cover - both ends are this module
                raise ReadWorkerError(f"the read worker sent an unknown message {kind!r}")

    def _take_stats(self, values: dict[str, Any]) -> None:
        for name, value in values.items():
            setattr(self.stats, name, value)
        self._child_traffic = (values["requests"], values["retries"], values["bytes"])
        self._tally()

    def _tally(self) -> None:
        """The read's traffic: the child's, and the keeper's credential requests on its behalf."""
        requests, retries, received = self._child_traffic
        stats = self.stats
        if self._keeper is not None:
            own = self._keeper.stats
            requests, retries, received = requests + own.requests, retries + own.retries, received + own.bytes
        stats.requests, stats.retries, stats.bytes = requests, retries, received

    def _lend_credential(self, held: str | None) -> None:
        """Answer the child's ``("credential", held)``: the credential this process holds, fetched
        anew only when it holds none, the same one as the child (refused or due) or a due one. An
        upstream error fetching it is raised here: the run fails with it, as when the child read."""
        try:
            state = self._keeper.renew_credential(held) if self._keeper is not None else None
        finally:
            self._tally()
        self._init_thread.join()  # the setup message is written whole before any answer
        stdin = self._proc.stdin
        if stdin is None:  # pragma: no cover - Popen was given stdin=PIPE
            return
        with contextlib.suppress(OSError):  # a child that died since: pages() reports its exit status
            stdin.write(pickle.dumps(("credential", state), protocol=_PICKLE))
            stdin.flush()

    def _died(self) -> ReadWorkerError:
        try:
            code = self._proc.wait(timeout=_STOP_WAIT_S)
        except subprocess.TimeoutExpired:
            code = None
        if code is None:
            how = "stopped answering"
        elif code < 0:
            how = f"was killed by signal {signal.Signals(-code).name}"
        else:
            how = f"exited with status {code}"
        return ReadWorkerError(
            f"the read worker (pid {self.pid}) {how} before the end of the data; nothing it read "
            "after the last committed batch was kept and the watermark is unchanged. Its log lines "
            "above say why; defaults.read_worker: never reads in the run's own process instead"
        )

    def watch_stop(self, stop: StopSignal) -> None:
        """Kill the child as soon as ``stop`` (the run's) is requested, until :meth:`close`: the
        run's process then sees it end (:meth:`pages` raises, the run asks its stop and ends
        ``interrupted``) instead of waiting for a page the child may not send for the whole retry
        budget of a stalled gateway. The child has nothing to save: it writes nothing."""
        if self._keeper is not None:
            self._keeper.watch_stop(stop)  # the credential it fetches for the child
        context = contextvars.copy_context()
        threading.Thread(
            target=context.run, args=(self._kill_at, stop), name="syncd-worker-stop", daemon=True
        ).start()

    def _kill_at(self, stop: StopSignal) -> None:
        while not self._closed.is_set():
            try:
                stop.sleep(_CLOSED_POLL_S)
            except StopRequested:
                if not self._closed.is_set() and not self._finished and self._proc.poll() is None:
                    self._log.info("worker.stopped", pid=self.pid, reason="the service is stopping")
                    self._proc.kill()
                return

    def close(self) -> None:
        """End the child unless it already finished (SIGKILL: it ignores SIGTERM and holds
        nothing to save); reap it."""
        self._closed.set()
        proc = self._proc
        if proc.poll() is None and not self._finished:
            proc.kill()
        try:
            proc.wait(timeout=_STOP_WAIT_S)
        except subprocess.TimeoutExpired:  # a finished child that does not exit
            proc.kill()
            proc.wait()
        if self._ready_thread is not None:  # it reads stdout until EOF at the latest: done before the close
            self._ready_thread.join(timeout=_STOP_WAIT_S)
        for stream in (proc.stdout, proc.stdin):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()
        self._init_thread.join(timeout=_STOP_WAIT_S)
        if self._keeper is not None:
            self._keeper.close()


def _credential_keeper(app: Any, dataset: Any) -> HttpSource | None:
    """The run process's end of the child's credentials: an http source of ``dataset``, never read,
    whose auth shares the process's credential (module docstring, "Credentials")."""
    if getattr(dataset.source, "type", None) != "http":  # pragma: no cover - the worker reads http only
        return None
    from syncd.sources.http.source import HttpSource  # the parent's import: the child's path stays lean

    return HttpSource.from_config(app, dataset)


def _widen_pipe(pipe: IO[bytes] | None) -> int:
    """Ask for :data:`PIPE_BYTES` of kernel buffer on ``pipe``; returns the size it has."""
    if pipe is None:  # pragma: no cover - Popen was given stdout=PIPE
        return 0
    set_size = getattr(fcntl, "F_SETPIPE_SZ", None)
    get_size = getattr(fcntl, "F_GETPIPE_SZ", None)
    if set_size is None or get_size is None:  # pragma: no cover - not Linux
        return 0
    with contextlib.suppress(OSError):  # refused (a lower pipe-max-size): keep the system's size
        fcntl.fcntl(pipe.fileno(), set_size, PIPE_BYTES)
    try:
        return int(fcntl.fcntl(pipe.fileno(), get_size))
    except OSError:  # pragma: no cover - the pipe was just created
        return 0


def child_environment(package_root: Path, environ: Mapping[str, str]) -> dict[str, str]:
    """The worker's environment: this process's, so that it imports the same syncd.

    An installed syncd (its package in site-packages) is found by the child as by this process.
    A syncd run from a source checkout (``python -m syncd`` in the checkout, which ``-P`` keeps off
    the child's path) needs the checkout on ``PYTHONPATH``; site-packages itself never goes there,
    because ``PYTHONPATH`` comes before the standard library."""
    env = dict(environ)
    if package_root.name not in ("site-packages", "dist-packages"):
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(package_root), env.get("PYTHONPATH")) if p)
    return env


def _relog(level: int, logger: str, fields: dict[str, Any]) -> None:
    """Log an event of the child through this process's pipeline (its handlers, its redaction and
    the run's bound ``dataset``/``run_id``)."""
    event = fields.pop("event", "")
    name = logging.getLevelName(level).lower()
    method = getattr(structlog.get_logger(logger), name if name in _LEVEL_METHODS else "info")
    method(event, **fields)


_LEVEL_METHODS = frozenset({"debug", "info", "warning", "error", "critical"})


def _rebuild(pickled: bytes | None, type_name: str, message: str) -> BaseException:
    """The child's exception, as itself when it could be pickled, else a ReadWorkerError."""
    if pickled is not None:
        try:
            exc = pickle.loads(pickled)  # noqa: S301 - from our own child over a private pipe
        except Exception:  # noqa: BLE001 - fall back to the text
            exc = None
        if isinstance(exc, SyncdError) and str(exc) == message:
            return exc
    return ReadWorkerError(f"the read worker failed: {type_name}: {message}")


# --------------------------------------------------------------------------- child side


class _Channel:
    """Pickled messages to the parent on the real stdout (the reader thread logs too: one lock)."""

    def __init__(self, out: IO[bytes]) -> None:
        self._out = out
        self._lock = threading.Lock()

    def send(self, message: tuple[Any, ...]) -> None:
        if message[0] == "page":
            # without the memo (a third faster): a page holds no object twice that matters, and
            # nothing refers to itself (fast mode would raise, never loop, if something did)
            buffer = io.BytesIO()
            pickler = pickle.Pickler(buffer, protocol=_PICKLE)
            pickler.fast = True
            pickler.dump(message)
            data = buffer.getvalue()
        else:
            data = pickle.dumps(message, protocol=_PICKLE)
        with self._lock:
            self._out.write(data)
            self._out.flush()


class _RunCredentials:
    """The child's way to a new credential (:class:`~syncd.sources.http.auth.base.Renewal`): it
    asks the run's process on the channel and reads the answer from its stdin."""

    def __init__(self, channel: _Channel, stdin: IO[bytes]) -> None:
        self._channel = channel
        self._stdin = stdin
        self._lock = threading.Lock()

    def __call__(self, held: str | None) -> dict[str, Any] | None:
        with self._lock:  # one question at a time: the answers come in order
            self._channel.send(("credential", held))
            try:
                _kind, state = pickle.load(self._stdin)  # noqa: S301 - from our parent over a private pipe
            except EOFError:
                raise ReadWorkerError("the run's process closed the read worker's input") from None
        return state  # type: ignore[no-any-return]


def _plain(value: Any) -> Any:
    try:
        pickle.dumps(value, protocol=_PICKLE)
    except Exception:  # noqa: BLE001 - anything unpicklable is sent as its text
        return str(value)
    return value


class _ForwardHandler(logging.Handler):
    """stdlib records of the child (urllib3's, say) → the parent."""

    def __init__(self, channel: _Channel) -> None:
        super().__init__()
        self._channel = channel

    def emit(self, record: logging.LogRecord) -> None:
        try:
            fields: dict[str, Any] = {"event": record.getMessage()}
            if record.exc_info:
                fields["exception"] = logging.Formatter().formatException(record.exc_info)
            self._channel.send(("log", record.levelno, record.name, fields))
        except Exception:  # noqa: BLE001 - a log line must never break the read
            self.handleError(record)


def _forward_logs(channel: _Channel, level: int) -> None:
    def forward(logger: Any, method: str, event_dict: MutableMapping[str, Any]) -> Any:
        levelno = logging.getLevelName(event_dict.pop("level", method).upper())
        name = event_dict.pop("logger", None) or getattr(logger, "name", "syncd")
        fields = {k: _plain(v) for k, v in event_dict.items()}
        channel.send(("log", levelno if isinstance(levelno, int) else logging.INFO, name, fields))
        raise structlog.DropEvent

    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            structlog.contextvars.merge_contextvars,
            structlog.stdlib.add_log_level,
            structlog.stdlib.add_logger_name,
            structlog.processors.format_exc_info,
            forward,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )
    root = logging.getLogger()
    root.handlers[:] = [_ForwardHandler(channel)]
    root.setLevel(level)
    # the only library the worker logs through; its chatter stays at WARNING, as in the parent
    logging.getLogger("urllib3").setLevel(logging.DEBUG if level <= logging.DEBUG else logging.WARNING)


def _die_with_parent(parent: int) -> None:
    """SIGKILL this process when the parent dies (Linux), and exit now if it already has."""
    if sys.platform.startswith("linux"):
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:
        os._exit(1)


def _read_pages(channel: _Channel, init: dict[str, Any], reading: list[ReadStats]) -> None:
    """Read, map and send every page; ``reading`` gets the source's stats as soon as it exists."""
    from syncd.changes.digestkey import record_digest_key
    from syncd.changes.hashing import record_digester, row_hash
    from syncd.changes.keys import row_key_function
    from syncd.mapping import compile_mapping
    from syncd.mapping.records import RecordSorter
    from syncd.sources import build_source, digest_texts
    from syncd.sources.prefetch import Prefetcher

    app, dataset, window, want_keys = init["app"], init["dataset"], init["window"], init["keys"]
    hashes = row_hash if init["hashes"] else None
    mapping = compile_mapping(dataset, app.code_tables, today=init.get("today"), limits=init.get("limits"))
    sorter = RecordSorter(dataset, mapping)
    key = record_digest_key(app, dataset, mapping)  # the run's own, from the same configuration
    digest = record_digester(mapping.record_fields, key)
    row_key = row_key_function([mapping.specs[mapping.columns[i]] for i in mapping.key_indexes])
    source = build_source(app, dataset)
    digest_texts(source, key)  # as the run's own read does
    try:
        go, resume = _prepare(channel, init, source)
        if not go:  # the run no longer needs this worker (it read everything itself)
            return
        reader: Any = source  # an http source (the only kind the worker reads): read() takes a resume point
        pages = Prefetcher(
            reader.read(window) if resume is None else reader.read(window, resume=resume),
            name=f"syncd-read-{dataset.name}",
        )
        reading.append(source.stats)  # read() starts fresh stats (or the resumed read's)
        update_time = source.update_time
        try:
            for page in pages:
                newest: datetime | None = None
                sort = sorter.sort
                fetched = len(page.records)
                # taken off the page one by one: the raw records are gone before the page's rows are
                # encoded and pickled (this process's memory peak)
                records, digests = page.records, page.digests
                records.reverse()
                if digests is not None:  # the source digested their texts (syncd.changes.hashing)
                    digests.reverse()
                while records:
                    record = records.pop()
                    ts = update_time(record)
                    if ts is not None and (newest is None or ts > newest):
                        newest = ts
                    sort(record, digests.pop() if digests is not None else digest(record))
                mapped = _take_page(
                    sorter, page, fetched, newest, row_hash=hashes, row_key=row_key if want_keys else None
                )
                stats = source.stats  # what it sent and received so far: counted if the run ends early
                channel.send(("page", mapped, (stats.requests, stats.retries, stats.bytes)))
        finally:
            pages.close()
    finally:
        source.close()


def _prepare(channel: _Channel, init: dict[str, Any], source: Any) -> tuple[bool, ResumePoint | None]:
    """Take the run process's credential (module docstring, "Credentials"); held, say ready and
    wait for ``go``. Returns whether to read, and from where."""
    ask = _RunCredentials(channel, sys.stdin.buffer)
    share = getattr(source, "share_credentials", None)
    if share is not None:
        share(init.get("credentials"), ask)
    if not init.get("hold"):
        return True, None
    channel.send(("ready",))
    try:
        _go, resume, credentials = pickle.load(sys.stdin.buffer)  # noqa: S301 - from our parent's pipe
    except EOFError:
        return False, None
    if share is not None:
        share(credentials, ask)  # what the run's process holds now, after the pages it read itself
    return True, resume


def _take_page(
    sorter: RecordSorter,
    page: Page,
    fetched: int,
    newest: datetime | None,
    *,
    row_hash: Callable[[Any], str] | None,
    row_key: Callable[[Any], str | None] | None,
) -> MappedPage:
    """The page ``sorter`` holds, mapped, to send; ``sorter`` starts afresh. ``row_key``: the keys
    too (the run skips unchanged records), or None (a first load). ``row_hash``: the rows' hashes
    too, or None (a first load into SQLite: the run's writer hashes them, docs/performance.md)."""
    rows, key_of = sorter.rows, sorter.mapping.key_of
    mapped = MappedPage(
        number=page.number,
        reported_total=page.reported_total,
        fetched=fetched,
        max_seen=newest,
        rows=rows,
        digests=sorter.digests,
        hashes=[] if row_hash is None else [row_hash(row) for row in rows],
        keys=[] if row_key is None else [row_key(key_of(row)) for row in rows],
        deletes=sorter.deletes,
        rejected=sorter.rejected,
        delete_after=sorter.delete_after,
        delete_keys=[] if row_key is None else [row_key(kv) for kv in sorter.deletes],
    )
    sorter.rows, sorter.digests, sorter.deletes, sorter.rejected, sorter.delete_after = [], [], [], [], []
    return mapped


def _child_main(argv: list[str]) -> int:
    parent = int(argv[1]) if len(argv) > 1 else -1
    _die_with_parent(parent)
    # a stop is the parent's to handle: SIGTERM to the whole service (systemd's control-group
    # kill) or Ctrl-C in a terminal reaches this process too, and must not fail the run here
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    out = os.fdopen(os.dup(sys.stdout.fileno()), "wb", buffering=_STREAM_BUFFER)
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # a stray print must not corrupt the channel
    channel = _Channel(out)
    init = pickle.load(sys.stdin.buffer)  # noqa: S301 - from our parent over a private pipe
    settle_worker()  # syncd.gcpolicy: its imports are done, what it allocates now dies young
    _forward_logs(channel, init["level"])
    log = structlog.get_logger("syncd.sources.worker")
    started = time.monotonic()
    reading: list[ReadStats] = []
    try:
        _read_pages(channel, init, reading)
    except Exception as exc:
        if not isinstance(exc, SyncdError):
            log.error("worker.failed", error=f"{type(exc).__name__}: {exc}", exc_info=True)
        try:
            pickled: bytes | None = pickle.dumps(exc, protocol=_PICKLE)
        except Exception:  # noqa: BLE001 - sent as its text instead
            pickled = None
        stats = _stats_dict(reading[-1] if reading else ReadStats())
        channel.send(("error", stats, pickled, type(exc).__name__, str(exc), peak_rss_bytes()))
        return 1
    if not reading:  # held, and let go without reading: nobody waits for an end
        return 0
    peak = peak_rss_bytes()
    seconds = round(time.monotonic() - started, 3)
    log.debug("worker.finished", seconds=seconds, peak_rss_mb=round(peak / 2**20, 1))
    channel.send(("end", _stats_dict(reading[-1]), peak))
    return 0


if __name__ == "__main__":
    # run as the module syncd.sources.worker, not as __main__: the classes it pickles must carry
    # the name the parent unpickles them by
    from syncd.sources.worker import _child_main as child_main

    sys.exit(child_main(sys.argv))
