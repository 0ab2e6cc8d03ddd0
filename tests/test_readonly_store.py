"""The commands that read results never change the store: ``leaderboard`` and ``export`` on a copy of a
results folder, and on a read-only mount of it, print what they print on the original, and the store's
bytes (and the folder's files) stay as they were."""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from robust_ad_bench.benchmark.cli import main
from robust_ad_bench.benchmark.results.store import STORE_FILE, JobResult, Store, open_existing

ROOT = Path(__file__).resolve().parent.parent


def cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(argv))
    return code, out.getvalue(), err.getvalue()


def digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ro") / "results"
    code, _, err = cli("run", "--methods", "knn", "--datasets", "digits", "--classes", "0", "--attacks",
                       "clean,fgsm,pgd", "--eps", "8/255", "--no-checks", "--out", str(out))
    assert code == 0, err
    return out


def test_leaderboard_and_export_on_a_copy_change_nothing(results, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(results, copy)
    before = digest(copy)
    _, board, _ = cli("leaderboard", "--out", str(results))
    _, rows, _ = cli("export", "--out", str(results), "--file", "-")
    for command, expected in ((["leaderboard"], board), (["export", "--file", "-"], rows)):
        code, out, err = cli(command[0], "--out", str(copy), *command[1:])
        assert code == 0, err
        assert out == expected
    written = {"leaderboard.csv", "leaderboard.md", "leaderboard.tex", "robustness.csv"}  # its own files, beside
    after = digest(copy)
    assert after[STORE_FILE] == before[STORE_FILE]
    assert set(after) - written == set(before)  # no -wal, no -shm, nothing else


def test_on_a_read_only_mount(results, tmp_path):
    """A read-only bind mount stops even root from writing (needs a mount namespace)."""
    if shutil.which("unshare") is None or subprocess.run(["unshare", "-m", "true"], capture_output=True).returncode:
        pytest.skip("no mount namespace here to make a read-only folder (root writes through permissions)")
    copy = tmp_path / "copy"
    shutil.copytree(results, copy)
    before = digest(copy)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT / "tests")]),
           "OMP_NUM_THREADS": "1"}
    python = f"{sys.executable} -m robust_ad_bench.benchmark.cli"
    script = (f"mount --bind {copy} {copy} && mount -o remount,ro,bind {copy} && "
              f"{python} leaderboard --out {copy} > {tmp_path}/board.txt && "
              f"{python} export --out {copy} --file - > {tmp_path}/rows.csv && "
              f"{python} export --out {copy}; echo $? > {tmp_path}/export-default.rc")
    done = subprocess.run(["unshare", "-m", "sh", "-c", script], env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    assert "cannot be written: the leaderboard was printed, not written to files" in " ".join(done.stderr.split())
    _, board, _ = cli("leaderboard", "--out", str(results))
    _, rows, _ = cli("export", "--out", str(results), "--file", "-")
    assert (tmp_path / "board.txt").read_text() == board
    assert (tmp_path / "rows.csv").read_text() == rows
    assert (tmp_path / "export-default.rc").read_text().strip() == "2"  # OUT/export.csv: cannot write, one line
    assert digest(copy) == before


def test_a_run_in_progress_is_read_through_its_wal(results, tmp_path):
    """While a writer holds the store open (its -wal file exists), readers see what it committed."""
    copy = tmp_path / "live"
    shutil.copytree(results, copy)
    with Store(copy) as writer:
        row = JobResult("k" * 20, "t" * 20, "ok", "knn", "digits", "0", 0, "clean", "none", 0.0, {},
                        {"auroc": 0.5}, n_test=2)
        writer.put(row)
        assert Path(copy, STORE_FILE + "-wal").exists()
        with open_existing(copy) as reader:
            assert "k" * 20 in set(reader.results()["key"])


def test_a_store_of_another_schema_is_refused_unchanged(tmp_path):
    import sqlite3

    path = tmp_path / STORE_FILE
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE results (id INTEGER, name TEXT)")  # same table name, other columns
        conn.execute("PRAGMA user_version = 7")
    conn.close()
    before = path.read_bytes()
    for argv in (["leaderboard"], ["export", "--file", "-"], ["audit"], ["run", "--methods", "knn", "--datasets",
                                                                          "digits", "--dry-run"]):
        code, _, err = cli(*argv, "--out", str(tmp_path))
        assert code == 2 and "is not a results store of this tool (schema version 7" in err
    code, _, err = cli("run", "--methods", "knn", "--datasets", "digits", "--attacks", "clean", "--out", str(tmp_path))
    assert code == 2 and "it was left as it is" in err
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == [STORE_FILE]


def test_an_empty_file_and_a_schema_1_store_read_read_only(tmp_path):
    """An empty store file reads as no rows; a store of schema 1 (before attack_detail, checks, certified)
    reads without the ALTER TABLE a writer makes, and its file stays as it was."""
    import sqlite3

    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / STORE_FILE).write_bytes(b"")
    with open_existing(tmp_path / "empty") as store:
        assert store.results().empty and store.checks().empty and store.finished_keys() == set()
    old = tmp_path / "old"
    old.mkdir()
    with sqlite3.connect(old / STORE_FILE) as conn:
        conn.execute("CREATE TABLE results (key TEXT PRIMARY KEY, train_key TEXT, status TEXT, method TEXT, "
                     "dataset TEXT, normal_class TEXT, seed INTEGER, attack TEXT, norm TEXT, eps REAL, auroc REAL, "
                     "auroc_ci_low REAL, auroc_ci_high REAL, aupr REAL, fpr95 REAL, pixel_auroc REAL, n_test INTEGER, "
                     "seconds REAL, error TEXT, adversarially_trained INTEGER, config TEXT, finished_at TEXT)")
        conn.execute("INSERT INTO results VALUES ('k', 't', 'ok', 'knn', 'digits', '0', 0, 'clean', 'none', 0, 0.9, "
                     "0.8, 1.0, 0.9, 0.1, NULL, 10, 1.0, NULL, 0, '{}', '2026-01-01T00:00:00Z')")
        conn.execute("PRAGMA user_version = 1")
    conn.close()
    before = (old / STORE_FILE).read_bytes()
    code, out, err = cli("leaderboard", "--out", str(old))
    assert code == 0 and "knn" in out, err
    assert (old / STORE_FILE).read_bytes() == before
