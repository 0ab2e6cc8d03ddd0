"""Results store: one SQLite file (WAL mode) per results folder.

Every job is one row keyed by the hash of everything that determines its result, written in its own
transaction as soon as the job ends, so a killed run loses at most the job in flight and a second run
skips every finished job. The test scores of each job are kept too (for histograms and re-analysis).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Collection
from dataclasses import astuple, dataclass, field, fields
from pathlib import Path
from typing import Any
from urllib.request import pathname2url

import numpy as np
import pandas as pd

from robust_ad_bench.core.errors import BenchError

SCHEMA_VERSION = 3  # 2: attack_detail column, checks and certified tables; 3: aupro column, transfer and step_times
STORE_FILE = "results.sqlite"
RESULT_COLUMNS = (
    "key", "train_key", "status", "method", "dataset", "normal_class", "seed", "attack", "norm", "eps",
    "auroc", "auroc_ci_low", "auroc_ci_high", "aupr", "fpr95", "pixel_auroc", "n_test", "seconds", "error",
    "adversarially_trained", "attack_detail", "config", "aupro", "finished_at",
)
_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS results (
    key TEXT PRIMARY KEY, train_key TEXT NOT NULL, status TEXT NOT NULL CHECK (status IN ('ok', 'failed')),
    method TEXT NOT NULL, dataset TEXT NOT NULL, normal_class TEXT NOT NULL, seed INTEGER NOT NULL,
    attack TEXT NOT NULL, norm TEXT NOT NULL, eps REAL NOT NULL,
    auroc REAL, auroc_ci_low REAL, auroc_ci_high REAL, aupr REAL, fpr95 REAL, pixel_auroc REAL,
    n_test INTEGER, seconds REAL, error TEXT,
    adversarially_trained INTEGER NOT NULL DEFAULT 0, attack_detail TEXT, config TEXT NOT NULL, aupro REAL,
    finished_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%SZ', 'now'))
);
CREATE TABLE IF NOT EXISTS scores (
    key TEXT PRIMARY KEY REFERENCES results(key) ON DELETE CASCADE,
    labels BLOB NOT NULL, scores BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS checks (
    check_key TEXT NOT NULL, train_key TEXT NOT NULL, method TEXT NOT NULL, dataset TEXT NOT NULL,
    normal_class TEXT NOT NULL, seed INTEGER NOT NULL, attack TEXT NOT NULL, name TEXT NOT NULL,
    passed INTEGER NOT NULL, value REAL, reference REAL, detail TEXT,
    PRIMARY KEY (check_key, attack, name)
);
CREATE TABLE IF NOT EXISTS transfer (
    transfer_key TEXT NOT NULL, dataset TEXT NOT NULL, normal_class TEXT NOT NULL, seed INTEGER NOT NULL,
    source TEXT NOT NULL, target TEXT NOT NULL, target_key TEXT NOT NULL, norm TEXT NOT NULL, eps REAL NOT NULL,
    auroc REAL, n_test INTEGER, seconds REAL,
    PRIMARY KEY (transfer_key, source, norm, eps)
);
CREATE TABLE IF NOT EXISTS certified (
    cert_key TEXT NOT NULL, train_key TEXT NOT NULL, method TEXT NOT NULL, dataset TEXT NOT NULL,
    normal_class TEXT NOT NULL, seed INTEGER NOT NULL, sigma REAL NOT NULL, radius REAL NOT NULL,
    threshold REAL, certified_accuracy REAL, certified_auroc REAL, abstain REAL,
    PRIMARY KEY (cert_key, sigma, radius)
);
CREATE TABLE IF NOT EXISTS step_times (
    kind TEXT NOT NULL, step_key TEXT NOT NULL, method TEXT NOT NULL, dataset TEXT NOT NULL, detail TEXT NOT NULL,
    units REAL NOT NULL, seconds REAL NOT NULL, threads INTEGER, workers INTEGER,
    finished_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%SZ', 'now')),
    PRIMARY KEY (kind, step_key)
);
PRAGMA user_version = {SCHEMA_VERSION};
"""


@dataclass
class JobResult:
    """One finished job: its identity, metrics or error, and its test scores."""

    key: str
    train_key: str
    status: str
    method: str
    dataset: str
    normal_class: str
    seed: int
    attack: str
    norm: str
    eps: float
    config: dict[str, Any]
    metrics: dict[str, float] = field(default_factory=dict)
    n_test: int = 0
    seconds: float = 0.0
    error: str | None = None
    adversarially_trained: bool = False
    attack_detail: str = ""
    labels: np.ndarray | None = None
    scores: np.ndarray | None = None


@dataclass
class StepTime:
    """How long one step took (a row of the ``step_times`` table, read by the time estimates): ``detail`` is
    the attack of a job, the norm of a worst case, else ""; ``units`` its work units (``step_costs``)."""

    kind: str
    step_key: str
    method: str
    dataset: str
    detail: str
    units: float
    seconds: float
    threads: int | None = None
    workers: int | None = None


@dataclass
class CheckRow:
    """One sanity check of one trained model (a row of the ``checks`` table)."""

    check_key: str
    train_key: str
    method: str
    dataset: str
    normal_class: str
    seed: int
    attack: str
    name: str
    passed: bool
    value: float | None
    reference: float | None
    detail: str


@dataclass
class CertifiedRow:
    """Certified figures of one trained model at one sigma and radius (a row of the ``certified`` table)."""

    cert_key: str
    train_key: str
    method: str
    dataset: str
    normal_class: str
    seed: int
    sigma: float
    radius: float
    threshold: float
    certified_accuracy: float
    certified_auroc: float
    abstain: float


@dataclass
class TransferRow:
    """AUROC of one target model on the adversarial test images of one source method at one norm and eps
    (a row of the ``transfer`` table; source == target: the method's own white-box images)."""

    transfer_key: str
    dataset: str
    normal_class: str
    seed: int
    source: str
    target: str
    target_key: str  # the target's train key
    norm: str
    eps: float
    auroc: float
    n_test: int
    seconds: float


TRANSFER_COLUMNS = tuple(f.name for f in fields(TransferRow))
CHECK_COLUMNS = tuple(f.name for f in fields(CheckRow))
CERTIFIED_COLUMNS = tuple(f.name for f in fields(CertifiedRow))
STEP_TIME_COLUMNS = tuple(f.name for f in fields(StepTime))


def is_locked(exc: sqlite3.Error) -> bool:
    """Whether ``exc`` says another connection holds the lock (past the busy timeout)."""
    return "locked" in str(exc) or "busy" in str(exc)


def locked_error(path: Path, timeout: float) -> BenchError:
    return BenchError(f"the results store {path} is locked by another process (waited {timeout:g} s); "
                      "nothing was changed: try again when it is done")


class Store:
    """The SQLite store of one results folder."""

    def __init__(self, folder: str | Path, timeout: float = 30.0, readonly: bool = False) -> None:
        self.folder = Path(folder)
        self.path = self.folder / STORE_FILE
        self.readonly = readonly
        try:
            self.conn = _connect_readonly(self.path, timeout) if readonly else sqlite3.connect(self.path,
                                                                                              timeout=timeout)
            version = self._check_schema()
            if not readonly:
                self.conn.execute("PRAGMA journal_mode=WAL")
                self.conn.execute("PRAGMA synchronous=NORMAL")
                self.conn.execute("PRAGMA foreign_keys=ON")
                if version == 1:  # a store written before attack_detail existed
                    self.conn.execute("ALTER TABLE results ADD COLUMN attack_detail TEXT")
                known = {r[1] for r in self.conn.execute("PRAGMA table_info(results)")}
                if version in (1, 2) and "aupro" not in known:  # a store written before AUPRO
                    self.conn.execute("ALTER TABLE results ADD COLUMN aupro REAL")
                self.conn.executescript(_SCHEMA)
        except sqlite3.OperationalError as exc:
            if is_locked(exc):
                raise locked_error(self.path, timeout) from exc
            raise BenchError(f"cannot open the results store {self.path}: {exc}") from exc
        except sqlite3.DatabaseError as exc:  # not a database, or a damaged one: never overwritten
            raise BenchError(f"cannot open the results store {self.path}: {exc}; the file was left as it is "
                             "(move it away to start a new store)") from exc
        self._columns = {row[1] for row in self.conn.execute("PRAGMA table_info(results)")}
        self._tables = {row[0] for row in self.conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}

    def _check_schema(self) -> int:
        """The store's schema version; a file of another schema (another tool's database, a newer store) is
        a ``BenchError`` naming it, raised before anything is written."""
        version = self.conn.execute("PRAGMA user_version").fetchone()[0]
        tables = {row[0] for row in self.conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        columns = {row[1] for row in self.conn.execute("PRAGMA table_info(results)")}
        ours = tables <= {"results", "scores", "checks", "certified", "claims", "transfer", "step_times"} and (
            not tables or {"key", "train_key", "status", "method"} <= columns)
        if version not in (0, 1, 2, SCHEMA_VERSION) or not ours:
            what = f"schema version {version}" if version not in (0, 1, 2, SCHEMA_VERSION) else \
                f"tables {', '.join(sorted(tables)) or '(none)'}"
            self.conn.close()
            raise BenchError(f"{self.path} is not a results store of this tool ({what}; this tool reads schema "
                             f"{SCHEMA_VERSION}); it was left as it is: pass another --out")
        return version

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def finished_keys(self) -> set[str]:
        """Keys of jobs finished successfully (failed jobs are retried by the next run)."""
        if "results" not in self._tables:
            return set()
        return {r[0] for r in self.conn.execute("SELECT key FROM results WHERE status = 'ok'")}

    def put(self, result: JobResult) -> None:
        """Insert or replace one job and its scores in a single transaction."""
        m = result.metrics
        row = (
            result.key, result.train_key, result.status, result.method, result.dataset,
            str(result.normal_class), result.seed, result.attack, result.norm, float(result.eps),
            m.get("auroc"), m.get("auroc_ci_low"), m.get("auroc_ci_high"), m.get("aupr"), m.get("fpr95"),
            m.get("pixel_auroc"), result.n_test,
            result.seconds, result.error, int(result.adversarially_trained), result.attack_detail,
            json.dumps(result.config, sort_keys=True), m.get("aupro"),
        )
        with self.conn:
            self.conn.execute(
                f"INSERT OR REPLACE INTO results ({', '.join(RESULT_COLUMNS[:-1])}) "
                f"VALUES ({', '.join('?' * (len(RESULT_COLUMNS) - 1))})",
                row,
            )
            if result.scores is not None and result.labels is not None:
                self.conn.execute(
                    "INSERT OR REPLACE INTO scores (key, labels, scores) VALUES (?, ?, ?)",
                    (result.key, np.asarray(result.labels, np.uint8).tobytes(),
                     np.asarray(result.scores, np.float32).tobytes()),
                )

    def results(self, status: str | None = None, keys: Collection[str] | None = None) -> pd.DataFrame:
        """All jobs as a DataFrame (one row per job), optionally only those with ``status`` or ``keys``."""
        where, params = [], []
        if status is not None:
            where.append("status = ?")
            params.append(status)
        if keys is not None:  # one model's jobs: a few dozen keys at most
            where.append(f"key IN ({', '.join('?' * len(keys))})")
            params.extend(keys)
        if "results" not in self._tables:  # an empty file opened read-only: no rows yet
            return pd.DataFrame({c: pd.Series(dtype=bool if c == "adversarially_trained" else object)
                                 for c in ("row_order", *RESULT_COLUMNS)})
        # row_order: the order rows were written in (INSERT OR REPLACE gives a replaced row a new rowid), which
        # tells the latest configuration of a leaderboard cell
        columns = ", ".join(c if c in self._columns else f"NULL AS {c}" for c in RESULT_COLUMNS)
        query = (f"SELECT rowid AS row_order, {columns} FROM results"
                 + (f" WHERE {' AND '.join(where)}" if where else ""))
        frame = pd.read_sql_query(query + " ORDER BY method, dataset, normal_class, seed, attack, eps",
                                  self.conn, params=tuple(params))
        frame["adversarially_trained"] = frame["adversarially_trained"].astype(bool)
        return frame

    def _insert(self, table: str, columns: tuple[str, ...], rows: list[tuple[Any, ...]]) -> None:
        with self.conn:
            self.conn.executemany(f"INSERT OR REPLACE INTO {table} ({', '.join(columns)}) "
                                  f"VALUES ({', '.join('?' * len(columns))})", rows)

    def _read(self, table: str, columns: tuple[str, ...], dtypes: dict[str, Any] | None = None) -> pd.DataFrame:
        """Every row of ``table``; an empty frame of ``columns`` (with ``dtypes``) when an older or empty store
        opened read-only has no such table."""
        if table not in self._tables:
            return pd.DataFrame({c: pd.Series(dtype=(dtypes or {}).get(c, object)) for c in columns})
        return pd.read_sql_query(f"SELECT {', '.join(columns)} FROM {table}", self.conn)

    def _has(self, table: str, column: str, key: str) -> bool:
        if table not in self._tables:  # an older or empty store opened read-only
            return False
        return self.conn.execute(f"SELECT 1 FROM {table} WHERE {column} = ? LIMIT 1", (key,)).fetchone() is not None

    def has_checks(self, check_key: str) -> bool:
        """Whether the checks of ``check_key`` are stored and none of them raised (those are run again)."""
        if "checks" not in self._tables:
            return False
        rows = self.conn.execute("SELECT name FROM checks WHERE check_key = ?", (check_key,)).fetchall()
        return bool(rows) and not any(name.startswith("error:") for (name,) in rows)

    def put_checks(self, rows: list[CheckRow]) -> None:
        """All checks of one model, in one transaction; they replace earlier rows of the same check key."""
        with self.conn:
            for key in {r.check_key for r in rows}:
                self.conn.execute("DELETE FROM checks WHERE check_key = ?", (key,))
            self.conn.executemany(f"INSERT OR REPLACE INTO checks ({', '.join(CHECK_COLUMNS)}) "
                                  f"VALUES ({', '.join('?' * len(CHECK_COLUMNS))})", [astuple(r) for r in rows])

    def checks(self) -> pd.DataFrame:
        frame = self._read("checks", CHECK_COLUMNS, {"passed": bool})  # none in a schema-1 store
        frame["passed"] = frame["passed"].astype(bool)
        return frame

    def has_certified(self, cert_key: str) -> bool:
        return self._has("certified", "cert_key", cert_key)

    def put_certified(self, rows: list[CertifiedRow]) -> None:
        """All certificates of one model, in one transaction."""
        self._insert("certified", CERTIFIED_COLUMNS, [astuple(r) for r in rows])

    def certified(self) -> pd.DataFrame:
        return self._read("certified", CERTIFIED_COLUMNS)

    def has_transfer(self, transfer_key: str) -> bool:
        return self._has("transfer", "transfer_key", transfer_key)

    def put_transfer(self, rows: list[TransferRow]) -> None:
        """The transfer figures of one target model, in one transaction."""
        self._insert("transfer", TRANSFER_COLUMNS, [astuple(r) for r in rows])

    def transfer(self) -> pd.DataFrame:
        return self._read("transfer", TRANSFER_COLUMNS)

    def put_step_time(self, row: StepTime) -> None:
        """The duration of one step (the latest measurement of a step replaces an earlier one)."""
        self._insert("step_times", STEP_TIME_COLUMNS, [astuple(row)])

    def step_times(self) -> pd.DataFrame:
        """Every measured step duration (empty for a store written before they were kept)."""
        return self._read("step_times", STEP_TIME_COLUMNS, {"units": float, "seconds": float})

    def scores(self, key: str) -> tuple[np.ndarray, np.ndarray] | None:
        """(labels, scores) of one job, or None."""
        if "scores" not in self._tables:
            return None
        row = self.conn.execute("SELECT labels, scores FROM scores WHERE key = ?", (key,)).fetchone()
        if row is None:
            return None
        return np.frombuffer(row[0], np.uint8).copy(), np.frombuffer(row[1], np.float32).copy()


def _connect_readonly(path: Path, timeout: float) -> sqlite3.Connection:
    """A connection that cannot write ``path``: ``mode=ro``. While a run writes the store (its ``-wal``
    file is there), through SQLite's locks, so that what it committed is seen; otherwise ``immutable=1``,
    which needs no ``-shm``/``-wal`` files: nothing is created beside the store and a read-only folder
    works (a plain ``mode=ro`` would leave both files behind, or fail where it cannot create them)."""
    uri = "file:" + pathname2url(str(path.resolve())) + "?mode=ro"
    live = path.with_name(path.name + "-wal").exists()
    try:
        conn = sqlite3.connect(uri if live else uri + "&immutable=1", timeout=timeout, uri=True)
        conn.execute("SELECT 1 FROM sqlite_master LIMIT 1").fetchall()
    except sqlite3.OperationalError:
        if not live:
            raise
        # a -wal file in a folder where the -shm cannot be made: read the last checkpointed state
        conn = sqlite3.connect(uri + "&immutable=1", timeout=timeout, uri=True)
    return conn


def open_existing(folder: str | Path) -> Store:
    """Open the store of a results folder that must already hold one, read-only (for leaderboard, export,
    plot, audit, defects, report, dry runs): the file is never changed, and a read-only folder works."""
    path = Path(folder).expanduser() / STORE_FILE
    if not path.is_file():
        raise BenchError(f"no results in '{folder}' (expected {path}); run `robust-ad-bench run --out {folder}`")
    return Store(path.parent, readonly=True)
