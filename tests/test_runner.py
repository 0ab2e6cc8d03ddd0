import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import tiny_grid
from robust_ad_bench.benchmark.execution.runner import Runner
from robust_ad_bench.benchmark.grid.config import expand_grid
from robust_ad_bench.benchmark.results.store import Store
from robust_ad_bench.core.errors import BenchError
from robust_ad_bench.core.registry import load_plugin_file

PLUGIN = Path(__file__).parent / "plugins" / "failing_methods.py"


def test_grid_keys_are_stable_and_distinct(tmp_path):
    jobs = expand_grid(tiny_grid(tmp_path))
    assert len(jobs) == 2 * 2 * 2  # methods × classes × (clean + one pgd eps)
    assert len({j.key for j in jobs}) == len(jobs)
    assert [j.key for j in expand_grid(tiny_grid(tmp_path))] == [j.key for j in jobs]
    other = expand_grid(tiny_grid(tmp_path, method_params={"ae": {"epochs": 4}}))
    changed = {j.key for j in other} - {j.key for j in jobs}
    assert len(changed) == 4 and all(j.method == "ae" for j in other if j.key in changed)
    clean = [j for j in jobs if j.attack == "clean"]
    assert all(j.eps == 0 and j.norm == "none" for j in clean)


def test_second_run_computes_nothing_and_models_are_cached(tmp_path):
    first = Runner(tiny_grid(tmp_path)).run()
    assert (first.computed, first.skipped, first.trained, first.failed) == (8, 0, 4, [])
    second = Runner(tiny_grid(tmp_path)).run()
    assert (second.computed, second.skipped, second.trained) == (0, 8, 0)
    # a new attack on the same models reuses the trained models
    third = Runner(tiny_grid(tmp_path, attacks="clean,pgd,fgsm")).run()
    assert (third.computed, third.trained) == (4, 0)
    assert third.worst == 4  # per model: the per-image worst case of pgd and fgsm
    with Store(tmp_path) as store:
        results = store.results()
        assert len(results) == 12 + 4 and results["key"].is_unique
        assert (results["status"] == "ok").all()
        assert (results["auroc_ci_low"] <= results["auroc"]).all()
        assert (results["auroc"] <= results["auroc_ci_high"]).all()
        labels, scores = store.scores(results["key"].iloc[0])
        assert len(labels) == len(scores) == results["n_test"].iloc[0]


def test_eps_zero_reproduces_clean_auroc(tmp_path):
    Runner(tiny_grid(tmp_path, attacks="clean,pgd,fgsm", eps="0")).run()
    with Store(tmp_path) as store:
        results = store.results()
    for _, group in results.groupby(["method", "normal_class"]):
        assert group["auroc"].nunique() == 1, group[["attack", "eps", "auroc"]]


def test_failing_method_is_recorded_and_the_grid_goes_on(tmp_path):
    load_plugin_file(PLUGIN)
    summary = Runner(tiny_grid(tmp_path, methods="broken-fit,nan-score,knn")).run()
    assert summary.computed == 4  # knn: 2 classes × 2 attacks
    assert len(summary.failed) == 8
    with Store(tmp_path) as store:
        results = store.results()
    failed = results[results["status"] == "failed"]
    assert set(failed["method"]) == {"broken-fit", "nan-score"}
    assert failed[failed["method"] == "broken-fit"]["error"].str.contains("deliberate failure in fit").all()
    assert failed[failed["method"] == "nan-score"]["error"].str.contains("NaN").all()
    assert "deliberate failure in fit" in (tmp_path / "failures.log").read_text()
    with Store(tmp_path) as store:  # one model's rows, by key and status
        some = list(results["key"].iloc[[0, -1]])
        assert set(store.results(keys=some)["key"]) == set(some)
        assert set(store.results(status="ok", keys=list(results["key"]))["method"]) == {"knn"}
    # failed jobs are retried by the next run; finished ones are not
    again = Runner(tiny_grid(tmp_path, methods="broken-fit,nan-score,knn")).run()
    assert again.skipped == 4 and len(again.failed) == 8


def test_unknown_class_and_param_fail_before_running(tmp_path):
    with pytest.raises(BenchError, match="unknown class of dataset 'digits' '12'"):
        expand_grid(tiny_grid(tmp_path, classes="12"))
    with pytest.raises(BenchError, match="unknown parameter of method 'ae' 'epoch'.*did you mean 'epochs'"):
        expand_grid(tiny_grid(tmp_path, method_params={"ae": {"epoch": 3}}))
    assert not (tmp_path / "results.sqlite").exists()


def test_dataset_scoped_classes(tmp_path):
    jobs = expand_grid(tiny_grid(tmp_path, datasets="digits,textures", classes="digits:3,textures:grass",
                                 methods="knn", attacks="clean"))
    assert {(j.dataset, j.normal_class) for j in jobs} == {("digits", "3"), ("textures", "grass")}


def test_repeatable_given_seed(tmp_path):
    a = Runner(tiny_grid(tmp_path / "a", methods="ae")).run()
    b = Runner(tiny_grid(tmp_path / "b", methods="ae")).run()
    assert a.computed == b.computed == 4
    with Store(tmp_path / "a") as sa, Store(tmp_path / "b") as sb:
        ra, rb = sa.results(), sb.results()
        np.testing.assert_allclose(ra["auroc"], rb["auroc"], atol=1e-6)
        np.testing.assert_allclose(sa.scores(ra["key"][1])[1], sb.scores(rb["key"][1])[1], rtol=1e-5)


def test_sigkill_midway_then_resume_has_no_duplicates(tmp_path):
    """Kill a real CLI run with SIGKILL once some jobs are stored, run again, and check the grid."""
    args = [sys.executable, "-m", "robust_ad_bench.benchmark.cli", "run", "--methods", "knn,deep-svdd",
            "--datasets", "digits", "--classes", "0,1,2,3", "--attacks", "clean,pgd", "--eps", "8/255,32/255",
            "--device", "cpu", "--out", str(tmp_path / "out"), "--config", str(tmp_path / "slow.yaml")]
    # long enough training that the kill lands in the middle of the grid
    (tmp_path / "slow.yaml").write_text("method_params:\n  deep-svdd: {epochs: 150}\n")
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    db = tmp_path / "out" / "results.sqlite"
    deadline = time.time() + 120
    stored = 0
    while time.time() < deadline and proc.poll() is None:
        if db.exists():
            try:
                with sqlite3.connect(db) as conn:
                    stored = conn.execute("SELECT COUNT(*) FROM results").fetchone()[0]
            except sqlite3.OperationalError:
                stored = 0
            if stored >= 3:
                break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert 3 <= stored < 24
    total = 2 * 4 * 3  # methods × classes × (clean + 2 eps)
    rerun = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT key, status FROM results").fetchall()
    assert len(rows) == total and len({k for k, _ in rows}) == total
    assert all(status == "ok" for _, status in rows)


def test_cuda_device_without_cuda_is_a_clear_error(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the error path cannot be reached")
    with pytest.raises(BenchError, match="torch sees no CUDA device"):
        Runner(tiny_grid(tmp_path, device="cuda"))
