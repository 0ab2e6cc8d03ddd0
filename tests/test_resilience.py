"""Runs that are killed, interrupted, run twice at once, or meet a locked or corrupt store."""

import os
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from conftest import tiny_grid
from robust_ad_bench.benchmark.execution.claims import Claims
from robust_ad_bench.benchmark.execution.runner import Hooks, Runner
from robust_ad_bench.benchmark.results.store import STORE_FILE, Store

FAULTY = Path(__file__).parent / "plugins" / "faulty_methods.py"
CLI = [sys.executable, "-m", "robust_ad_bench.benchmark.cli", "run", "--device", "cpu", "--datasets", "digits"]


def count(db: Path, query: str = "SELECT COUNT(*) FROM results") -> int:
    try:
        with sqlite3.connect(db) as conn:
            return conn.execute(query).fetchone()[0]
    except sqlite3.OperationalError:  # not created yet
        return 0


def wait_until(condition, seconds: float = 120.0) -> None:
    deadline = time.time() + seconds
    while not condition():
        assert time.time() < deadline, "timed out waiting"
        time.sleep(0.05)


def children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(stat.parent.name))
        except (OSError, IndexError, ValueError):
            pass
    return found


def gone(pids: list[int]) -> bool:
    return all(not Path(f"/proc/{p}").exists() or "Z" in Path(f"/proc/{p}/stat").read_text().split()[2]
               for p in pids)


def summary_numbers(output: str) -> tuple[int, int]:
    """(computed, trained) from a run's closing line."""
    computed = int(re.search(r"(\d+) computed", output).group(1))
    trained = int(re.search(r"(\d+) models trained", output).group(1))
    return computed, trained


# -- claims ------------------------------------------------------------------------------------------
def test_claims_block_other_runs_until_released_or_dead(tmp_path):
    Store(tmp_path).close()
    path = tmp_path / STORE_FILE
    with Claims(path) as a, Claims(path) as b:
        assert a.claim("model-1") and not b.claim("model-1")  # held by a live run
        assert b.claim("model-2") and not a.claim("model-2")
        assert a.holder("model-1") == f"pid {os.getpid()} on {a.host}"
        a.release("model-1")
        assert b.claim("model-1")
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT COUNT(*) FROM claims").fetchone()[0] == 0  # closing released them
        dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True).stdout.strip()
        now = time.time()
        conn.executemany("INSERT INTO claims VALUES (?, ?, ?, ?, ?, ?, ?, ?)", [
            ("dead-run", "x", a.host, int(dead), None, now, now + 600, ""),  # its process is gone
            ("expired", "y", "elsewhere", 1, None, now - 100, now - 1, ""),  # lease ran out on another host
            ("alive-elsewhere", "z", "elsewhere", 1, None, now, now + 600, ""),  # lease still valid
        ])
    with Claims(path) as c:
        assert c.claim("dead-run") and c.claim("expired") and not c.claim("alive-elsewhere")


def test_claims_are_renewed_while_the_run_lives(tmp_path):
    Store(tmp_path).close()
    with Claims(tmp_path / STORE_FILE, lease_seconds=0.3) as a:
        a.claim("model")
        time.sleep(0.8)  # more than two leases: only renewal keeps it
        with sqlite3.connect(tmp_path / STORE_FILE) as conn:
            expires = conn.execute("SELECT expires FROM claims WHERE key = 'model'").fetchone()[0]
        assert expires > time.time()


# -- two runs at once ----------------------------------------------------------------------------------
def test_two_concurrent_runs_compute_each_job_once(tmp_path):
    """Run A is held inside its first training (a gate file); run B starts and takes the other models,
    then waits for A's; once the gate opens both finish. Every job and model is computed exactly once."""
    gate = tmp_path / "gate"
    (tmp_path / "grid.yaml").write_text(f"method_params:\n  gate-fit: {{gate: '{gate}'}}\n")
    args = [*CLI, "--plugin", str(FAULTY), "--methods", "gate-fit,knn", "--classes", "0,1,2", "--attacks",
            "clean,pgd", "--eps", "32/255", "--no-checks", "--out", str(tmp_path / "out"),
            "--config", str(tmp_path / "grid.yaml")]
    db = tmp_path / "out" / STORE_FILE
    first = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    wait_until(lambda: count(db, "SELECT COUNT(*) FROM claims") >= 1)
    second = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    wait_until(lambda: count(db, "SELECT COUNT(DISTINCT owner) FROM claims") == 2)
    gate.touch()
    outputs = [p.communicate(timeout=300)[0] for p in (first, second)]
    assert [p.returncode for p in (first, second)] == [0, 0], outputs
    numbers = [summary_numbers(out) for out in outputs]
    assert sum(c for c, _ in numbers) == 12 and all(c > 0 for c, _ in numbers)  # 6 models × 2 jobs
    assert sum(t for _, t in numbers) == 6
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT key, status FROM results").fetchall()
        assert len(rows) == 12 and {s for _, s in rows} == {"ok"}
        assert conn.execute("SELECT COUNT(*) FROM claims").fetchone()[0] == 0


# -- killed and interrupted runs ---------------------------------------------------------------------
def test_sigkill_of_a_local_driver_then_rerun_finishes_each_job_once(tmp_path):
    """SIGKILL of the driver of a two-worker run: its workers die with it; the rerun starts at once (the
    dead run's claims are free) and finishes the grid with every job stored exactly once."""
    (tmp_path / "slow.yaml").write_text("method_params:\n  deep-svdd: {epochs: 60}\n")
    args = [*CLI, "--methods", "knn,deep-svdd", "--classes", "0,1,2,3", "--attacks", "clean,pgd", "--eps",
            "8/255,32/255", "--executor", "local", "--workers", "2", "--out", str(tmp_path / "out"),
            "--config", str(tmp_path / "slow.yaml")]
    db = tmp_path / "out" / STORE_FILE
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_until(lambda: count(db) >= 3 or proc.poll() is not None)
    workers = children(proc.pid)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    stored = count(db)
    assert 3 <= stored < 24 and len(workers) == 2
    wait_until(lambda: gone(workers), 10)  # no worker outlives its driver
    rerun = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert summary_numbers(rerun.stderr)[0] == 24 - stored
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT key, status FROM results").fetchall()
    assert len(rows) == 24 and len({k for k, _ in rows}) == 24 and {s for _, s in rows} == {"ok"}


@pytest.mark.parametrize("executor", ["serial", "local"])
def test_ctrl_c_stops_after_the_jobs_in_flight_and_says_how_to_resume(tmp_path, executor):
    """The first Ctrl-C (SIGINT to the process group, as a terminal sends it) lets the step in flight
    finish and be stored; the run exits 130 and says how to resume; the rerun does the rest."""
    gate = tmp_path / "gate"
    (tmp_path / "grid.yaml").write_text(f"method_params:\n  gate-fit: {{gate: '{gate}'}}\n")
    args = [*CLI, "--plugin", str(FAULTY), "--methods", "knn,gate-fit", "--classes", "0,1", "--attacks",
            "clean,pgd", "--eps", "32/255", "--no-checks", "--executor", executor, "--workers", "1",
            "--out", str(tmp_path / "out"), "--config", str(tmp_path / "grid.yaml")]
    db = tmp_path / "out" / STORE_FILE
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    # knn on class 0 is done, and gate-fit's training has started (it waits on the gate)
    wait_until(lambda: count(db) == 2 and count(db, "SELECT COUNT(*) FROM claims WHERE what LIKE 'gate-fit%'"))
    os.killpg(proc.pid, signal.SIGINT)
    time.sleep(1.0)
    assert proc.poll() is None  # still finishing the training in flight
    gate.touch()
    output = proc.communicate(timeout=120)[0]
    assert proc.returncode == 130, output
    assert "run the same command again to resume" in output
    assert count(db) == 2  # nothing started after the Ctrl-C; what finished is stored
    assert len(list((tmp_path / "out" / "models").glob("*.pt"))) == 2  # the training in flight was kept
    rerun = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert summary_numbers(rerun.stderr) == (6, 2)  # gate-fit on class 0 came from the cache
    assert count(db) == 8


def test_a_second_ctrl_c_stops_at_once(tmp_path):
    gate = tmp_path / "never"
    (tmp_path / "grid.yaml").write_text(f"method_params:\n  gate-fit: {{gate: '{gate}'}}\n")
    args = [*CLI, "--plugin", str(FAULTY), "--methods", "gate-fit", "--classes", "0", "--attacks", "clean",
            "--no-checks", "--executor", "local", "--workers", "1", "--out", str(tmp_path / "out"),
            "--config", str(tmp_path / "grid.yaml")]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    wait_until(lambda: count(tmp_path / "out" / STORE_FILE, "SELECT COUNT(*) FROM claims") == 1)
    workers = children(proc.pid)
    os.killpg(proc.pid, signal.SIGINT)
    time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGINT)
    output = proc.communicate(timeout=30)[0]
    assert proc.returncode == 130 and "run again to resume" in output, output
    wait_until(lambda: gone(workers), 10)
    assert count(tmp_path / "out" / STORE_FILE, "SELECT COUNT(*) FROM claims") == 0


# -- locked and corrupt stores -------------------------------------------------------------------------
def test_a_locked_store_is_a_clear_error_and_nothing_is_lost(tmp_path):
    Runner(tiny_grid(tmp_path, methods="knn", classes="0")).run()
    (tmp_path / "fast.yaml").write_text("execution: {store_timeout: 0.5}\n")
    holder = sqlite3.connect(tmp_path / STORE_FILE, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")  # another process writing, and not letting go
    try:
        run = subprocess.run([*CLI, "--methods", "knn", "--classes", "0,1", "--attacks", "clean,pgd", "--eps",
                              "32/255", "--out", str(tmp_path), "--config", str(tmp_path / "fast.yaml")],
                             capture_output=True, text=True, timeout=120)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert run.returncode == 2
    assert f"the results store {tmp_path / STORE_FILE} is locked by another process" in run.stderr
    assert count(tmp_path / STORE_FILE) == 2  # what was there is still there


def test_a_store_locked_during_a_run_delays_writes_and_loses_nothing(tmp_path):
    class LockOnce(Hooks):
        busy: list[str] = []

        def job_done(self, job, ok):
            if not hasattr(self, "thread"):
                self.thread = threading.Thread(target=hold_lock, args=(tmp_path / STORE_FILE,))
                self.thread.start()
                time.sleep(0.2)

        def store_busy(self, error):
            self.busy.append(error)

    def hold_lock(path):
        conn = sqlite3.connect(path, isolation_level=None)
        conn.execute("BEGIN EXCLUSIVE")
        time.sleep(2.0)
        conn.execute("COMMIT")
        conn.close()

    cfg = tiny_grid(tmp_path, methods="knn", execution={"store_timeout": 0.3})
    hooks = LockOnce()
    summary = Runner(cfg, hooks=hooks).run()
    hooks.thread.join()
    assert summary.computed == 4 and hooks.busy and "locked" in hooks.busy[0]
    assert count(tmp_path / STORE_FILE) == 4


def test_a_corrupt_store_is_a_clear_error_and_is_never_overwritten(tmp_path):
    garbage = b"this is not an SQLite database " * 200
    (tmp_path / STORE_FILE).write_bytes(garbage)
    for command in (["run", "--methods", "knn", "--datasets", "digits", "--classes", "0", "--attacks", "clean"],
                    ["leaderboard"]):
        run = subprocess.run([sys.executable, "-m", "robust_ad_bench.benchmark.cli", *command, "--out",
                              str(tmp_path)], capture_output=True, text=True, timeout=120)
        assert run.returncode == 2
        assert f"cannot open the results store {tmp_path / STORE_FILE}: file is not a database" in run.stderr
        assert "left as it is" in run.stderr
    assert (tmp_path / STORE_FILE).read_bytes() == garbage
