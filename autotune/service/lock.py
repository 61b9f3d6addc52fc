"""One tuner per machine and database: the lock row, its heartbeat, and what it is doing.

Two processes measuring on the same machine would spoil each other's timings, so the daemon and
``autotune tune`` take the same lock: a row of ``autotune_daemon`` taken by inserting or
conditionally updating it (its primary key makes that atomic on SQLite and PostgreSQL alike). A
SQLite file lives on one machine, so it has one row (id 1) whatever the host name says (a
container gets a new one on every start): one tuner per SQLite store. A server database, which
several machines share, has one row per host (id derived from the host name), or per host and
GPU set for a daemon given ``--gpus`` (its GPUs themselves are kept its own by the workers'
rows, :mod:`autotune.service.workers`). A holder refreshes ``heartbeat_at`` and
``activity`` from a thread, each write its own short transaction. A row is free when its pid is
0 (released), its process is gone (same host), or its heartbeat is older than ``stale_after_s``.
"""

from __future__ import annotations

import hashlib
import os
import re
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from autotune.errors import AutotuneError, StoreError
from autotune.store import LockRecord, Store, utcnow

STALE_AFTER_S = 120.0
HEARTBEAT_S = 5.0


class TunerBusyError(AutotuneError):
    """Another process holds the tuning lock of this machine and database."""

    exit_code = 2


def lock_id(hostname: str, shared: bool = True, scope: str = "") -> int:
    """The ``autotune_daemon`` row id: 1 for a local (SQLite) store, else stable per host and
    ``scope`` (a daemon's ``--gpus``; empty: the whole host) (31 bits)."""
    if not shared:
        return 1
    name = f"{hostname}/{scope}" if scope else hostname
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:4], "big") & 0x7FFFFFFF or 2


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` runs on this host (a zombie counts as gone)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as handle:
            return handle.read().rsplit(")", 1)[-1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


@dataclass(frozen=True)
class Holder:
    """Who holds (or last held) a tuning lock."""

    hostname: str
    pid: int
    started_at: datetime
    heartbeat_at: datetime
    activity: str | None

    def heartbeat_age(self, now: datetime | None = None) -> float:
        return max(0.0, ((now or utcnow()) - self.heartbeat_at).total_seconds())

    def alive(self, stale_after_s: float = STALE_AFTER_S, hostname: str | None = None) -> bool:
        """Whether the holder is running: pid set, its process alive on this host, heartbeat fresh."""
        if self.pid <= 0 or self.heartbeat_age() > stale_after_s:
            return False
        if self.hostname == (hostname or socket.gethostname()):
            return pid_alive(self.pid)
        return True

    @property
    def worker_pids(self) -> tuple[int, ...]:
        """Workers its last activity reported (``... (worker pid 123)``), to clean up after it."""
        return tuple(int(p) for p in re.findall(r"worker pid (\d+)", self.activity or ""))

    def describe(self) -> str:
        since = self.started_at.isoformat(timespec="seconds") + "Z"
        return f"pid {self.pid} on {self.hostname}, since {since} (heartbeat {format_age(self.heartbeat_age())} ago)"


def format_age(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def holders(store: Store) -> list[Holder]:
    """Every lock row: the tuners of every host that used this database, live or not."""
    return [_holder(r) for r in store.locks()]


def _holder(row: LockRecord) -> Holder:
    return Holder(row.hostname, row.pid, row.started_at, row.heartbeat_at, row.activity)


class TunerLock:
    """The tuning lock of this host in ``store``'s database, and its heartbeat thread.

    Use as ``with TunerLock(store, "daemon") as lock: ... lock.activity = "..."``. The heartbeat
    thread writes through its own sessions (and so its own pooled connection) of the caller's
    engine.
    """

    def __init__(
        self,
        store: Store,
        role: str,
        *,
        stale_after_s: float = STALE_AFTER_S,
        heartbeat_s: float = HEARTBEAT_S,
        hostname: str | None = None,
        pid: int | None = None,
        scope: str = "",
    ) -> None:
        self.store = store
        self.role = role
        self.stale_after_s = stale_after_s
        self.heartbeat_s = heartbeat_s
        self.hostname = hostname or socket.gethostname()
        self.pid = pid or os.getpid()
        self.id = lock_id(self.hostname, shared=store.sqlite_path is None, scope=scope)
        self.activity = f"{role}: starting"
        self.held = False
        self.previous: Holder | None = None
        #: Called with the heartbeat thread's store after each beat (a daemon refreshes its workers' rows).
        self.on_beat: Callable[[Store], None] | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def acquire(self) -> Holder | None:
        """Take the lock, or raise :class:`TunerBusyError` naming the holder.

        Returns the stale holder it took over (``None`` if the row was free or new): a holder
        that died may have left trials ``running``.
        """
        for _ in range(3):
            record = self.store.lock(self.id)
            current = _holder(record) if record is not None else None
            if record is None or current is None:
                if not self.store.insert_lock(self.id, self.hostname, self.pid, self.activity):
                    continue  # another process inserted it first: read it again
                self.held = True
                return None
            if current.pid == self.pid and current.hostname == self.hostname:
                self.held = True
                return None
            if current.alive(self.stale_after_s, self.hostname):
                more = (
                    "; a SQLite store takes one tuner: for several daemons, share one PostgreSQL database (--db postgresql+psycopg://...)"
                    if self.store.sqlite_path is not None
                    else ""
                )
                raise TunerBusyError(
                    f"another autotune tuner holds this machine's lock on {self.store.location}: {current.describe()}, "
                    f"doing: {current.activity or 'nothing reported'}; stop it first (kill -TERM {current.pid} on {current.hostname}){more}"
                )
            if self.store.take_lock(self.id, record, self.hostname, self.pid, self.activity):
                self.held = True
                self.previous = current if current.pid > 0 else None
                return self.previous
        raise TunerBusyError(f"cannot take this machine's tuning lock on {self.store.location}: another process keeps taking it")

    def beat(self, activity: str | None = None) -> None:
        """Write the heartbeat (and ``activity``, if given) now."""
        if activity is not None:
            self.activity = activity
        if self.held:
            self._write(self.store)

    def _write(self, store: Store) -> None:
        store.beat_lock(self.id, self.pid, self.activity)

    def start_heartbeat(self) -> None:
        """Refresh the heartbeat every ``heartbeat_s`` from a thread with its own connection."""
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._heartbeat, name="autotune-heartbeat", daemon=True)
        self._thread.start()

    def _heartbeat(self) -> None:
        # Same engine, its own connection from the pool: opening the store again would reopen the
        # SQLite file, and closing a second descriptor of it drops this process's POSIX locks.
        store = Store(self.store.engine, self.store.url)
        while not self._stop.wait(self.heartbeat_s):
            try:
                self._write(store)
                if self.on_beat is not None:
                    self.on_beat(store)
            except StoreError:  # a busy database must not kill the heartbeat: try again next beat
                continue

    def release(self, activity: str = "stopped") -> None:
        """Stop the heartbeat and mark the row free (pid 0), keeping when and what it last did."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.heartbeat_s + 5)
            self._thread = None
        if not self.held:
            return
        self.store.beat_lock(self.id, self.pid, f"{self.role}: {activity}", release=True)
        self.held = False

    def __enter__(self) -> TunerLock:
        self.acquire()
        self.start_heartbeat()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
