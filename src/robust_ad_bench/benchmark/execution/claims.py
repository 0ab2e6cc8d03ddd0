"""Claims: which run is computing which model, in the ``claims`` table of the results store.

Before a run starts a model's work (its training, jobs, checks and certificates) it claims the model's
training key, in one transaction that fails when another live run holds it; so two runs on one folder
never compute the same job. A claim is a lease: the run's driver renews every claim it holds from a
background thread while it lives, and a claim counts as free once its lease has run out, or at once when
its process is gone (same host, checked by pid and process start time), so a killed run never blocks the
next one. Only drivers write this table; workers never touch the store.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sqlite3
import threading
import time
import uuid
from pathlib import Path

from robust_ad_bench.benchmark.results.store import Store, is_locked, locked_error

CLAIMS_SCHEMA = """
CREATE TABLE IF NOT EXISTS claims (
    key TEXT PRIMARY KEY, owner TEXT NOT NULL, host TEXT NOT NULL, pid INTEGER NOT NULL, started TEXT,
    claimed_at REAL NOT NULL, expires REAL NOT NULL, what TEXT
)
"""


def process_start(pid: int) -> str | None:
    """A token that tells two processes with the same pid apart (Linux: start time in clock ticks)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def process_alive(pid: int, started: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        pass
    now = process_start(pid)
    return started is None or now is None or now == started


def is_live(host: str, pid: int, started: str | None, expires: float, now: float) -> bool:
    """Whether a claim is held by a live run: its lease runs and, on this host, its process is there."""
    return expires > now and (host != socket.gethostname() or process_alive(pid, started))


def live_claims(store: Store) -> set[str]:
    """The training keys that live runs hold in ``store`` now (read only: for reports of a run in progress)."""
    if "claims" not in {r[0] for r in store.conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}:
        return set()
    now = time.time()
    rows = store.conn.execute("SELECT key, host, pid, started, expires FROM claims").fetchall()
    return {key for key, host, pid, started, expires in rows if is_live(host, pid, started, expires, now)}


class Claims:
    """This run's claims on one results store (a connection of its own, and the renewing thread)."""

    def __init__(self, path: str | Path, lease_seconds: float = 60.0, busy_timeout: float = 30.0) -> None:
        self.path = Path(path)
        self.lease = lease_seconds
        self.busy_timeout = busy_timeout
        self.owner = uuid.uuid4().hex
        self.host = socket.gethostname()
        self.pid = os.getpid()
        self.started = process_start(self.pid)
        self.held: set[str] = set()
        self.conn = self._connect()
        try:
            self.conn.execute(CLAIMS_SCHEMA)
        except sqlite3.OperationalError as exc:
            self.conn.close()
            if is_locked(exc):
                raise locked_error(self.path, busy_timeout) from exc
            raise
        self._stop = threading.Event()
        self._renewer = threading.Thread(target=self._renew_loop, name="claims-renewer", daemon=True)
        self._renewer.start()

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=self.busy_timeout, isolation_level=None,
                               check_same_thread=False)
        conn.execute("PRAGMA synchronous=NORMAL")  # WAL: durable at checkpoints, as the store's own writes
        return conn

    def _live(self, row: tuple, now: float) -> bool:
        owner, host, pid, started, expires = row
        return owner != self.owner and is_live(host, pid, started, expires, now)  # ours: not another run's

    def claim(self, key: str, what: str = "") -> bool:
        """Take ``key`` unless another live run holds it."""
        now = time.time()
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            row = self.conn.execute("SELECT owner, host, pid, started, expires FROM claims WHERE key = ?",
                                    (key,)).fetchone()
            if row is not None and self._live(row, now):
                self.conn.execute("ROLLBACK")
                return False
            self.conn.execute("INSERT OR REPLACE INTO claims VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                              (key, self.owner, self.host, self.pid, self.started, now, now + self.lease, what))
            self.conn.execute("COMMIT")
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self.held.add(key)
        return True

    def holder(self, key: str) -> str:
        """Who holds ``key`` (for messages)."""
        row = self.conn.execute("SELECT pid, host FROM claims WHERE key = ?", (key,)).fetchone()
        return f"pid {row[0]} on {row[1]}" if row else "nobody"

    def release(self, key: str) -> None:
        self.held.discard(key)
        self.conn.execute("DELETE FROM claims WHERE key = ? AND owner = ?", (key, self.owner))

    def renew(self, conn: sqlite3.Connection | None = None) -> None:
        (conn or self.conn).execute("UPDATE claims SET expires = ? WHERE owner = ?",
                                    (time.time() + self.lease, self.owner))

    def _renew_loop(self) -> None:
        conn = self._connect()
        try:
            while not self._stop.wait(self.lease / 3):
                with contextlib.suppress(sqlite3.Error):  # busy for a moment: the next round renews
                    self.renew(conn)
        finally:
            conn.close()

    def close(self) -> None:
        """Release every claim of this run (if the store is locked now, they are free anyway once this
        process has ended)."""
        self._stop.set()
        self._renewer.join()
        try:
            with contextlib.suppress(sqlite3.Error):
                self.conn.execute("DELETE FROM claims WHERE owner = ?", (self.owner,))
        finally:
            self.held.clear()
            self.conn.close()

    def __enter__(self) -> Claims:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
