"""The profiling and masking-power scripts under ``benchmarks/`` still run against the current engine (they wrap
or reuse internals, so a changed signature would break them silently): run on tiny inputs, every phase or row
printed. Times and shares are printed, never asserted."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TINY = """methods: [knn]
datasets: [digits]
classes: {digits: ["0"]}
attacks: [clean, fgsm, pgd]
eps: {linf: [8/255]}
checks: {square_queries: 20}
certify: false
"""


def test_profile_script_runs_on_a_tiny_grid(tmp_path):
    config = tmp_path / "tiny.yaml"
    config.write_text(TINY)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "profile_default_run.py"), "--config",
                           str(config), "--methods", "knn", "--threads", "1", "--out", str(tmp_path / "res")],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "3 jobs (3 computed, 0 failed), 1 models trained, 1 checked" in proc.stdout
    for heading in ("training", "attack jobs", "worst cases", "checks", "masking sample"):
        assert heading in proc.stdout


def test_masking_power_script_runs_on_tiny_inputs():
    """Old and new masking checks on one tiny double per row: every row printed (shares are not asserted)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "masking_check_power.py"), "--seeds", "1",
                           "--shares", "0,0.5", "--noise", "0,0.5", "--n", "16", "--queries", "20"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [line for line in proc.stdout.splitlines() if line.startswith("| 0")]
    assert len(rows) == 4 and "unmasked (false alarms)" in rows[0] and "| 50 % |" in rows[1]


def run_script(name: str, *args: str) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / name), *args], capture_output=True, text=True,
                          env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_attack_speed_script_runs_on_tiny_inputs():
    out = run_script("attack_speed.py", "--dataset", "digits", "--method", "ae", "--repeats", "1", "--steps", "2",
                     "--iters", "2", "--queries", "5")
    assert "PGD-2: ours" in out and "AutoAttack (apgd-ce+fab+square" in out and "ratio" in out


def test_default_run_and_worst_case_report_scripts_run_on_a_tiny_grid(tmp_path):
    config = tmp_path / "tiny.yaml"
    config.write_text(TINY)
    out = run_script("default_run.py", "--out", str(tmp_path / "res"), "--config", str(config), "--methods", "knn")
    assert "first run:" in out and "second run (all cached):" in out and out.count("exit status 0") == 2
    report = run_script("worst_case_report.py", str(tmp_path / "res"))
    assert "per_image" in report and "knn" in report


def test_dataset_loading_script_runs_on_a_tiny_category():
    out = run_script("dataset_loading.py", "--source-size", "32", "--resize", "32")
    assert "decode:" in out and "from the disk cache" in out


def test_parallel_harness_store_part_and_sla2p_throughput_run_on_tiny_inputs():
    assert "claiming and releasing one model" in run_script("parallel_harness.py", "--parts", "store")
    out = run_script("sla2p_throughput.py", "--k", "4", "--repeats", "1", "--batch", "16")
    assert "sla2p-const-inner" in out and "img/s" in out


def test_scaling_script_runs_on_a_tiny_grid(tmp_path):
    """Points with 1 and 2 classes and with 1 and 2 methods, each a real run; the slopes are printed."""
    config = tmp_path / "tiny.yaml"
    config.write_text(TINY.replace('classes: {digits: ["0"]}\n', ""))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "scaling.py"), "--classes", "1,2",
                           "--methods", "knn,deep-svdd", "--method-counts", "1,2", "--datasets", "digits",
                           "--config", str(config),
                           "--set", "method_params.deep-svdd.epochs=1", "--executor", "serial"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout[-3000:]
    assert "2 class(es) per dataset" in proc.stdout and "per added class" in proc.stdout
    assert "2 method(s) (knn,deep-svdd)" in proc.stdout and "per added method" in proc.stdout


def test_library_pieces_script_runs_on_tiny_inputs():
    """The measurements behind CONTRIBUTING.md's table of hand-written pieces can be repeated."""
    out = run_script("library_pieces.py", "metrics", "decode", "readers", "--sizes", "2000", "--side", "16",
                     "--per-class", "5", "--bootstrap-rounds", "5", "--repeats", "1")
    assert out.count("| 2e+03 |") == 8 and "bootstrap CI of auroc, 5 rounds" in out
    assert "| png-rgb16 16² |" in out and "| tiff-rgb16 16² |" in out
    assert out.count("| True |") == 4, out  # every reader gives torchvision's arrays


def test_the_benchmark_configs_expand_onto_the_default_grid():
    """The configs PROFILE.md and the README's measurements name: the default grid with other test-set sizes,
    evaluating the default grid's trained models."""
    from robust_ad_bench.benchmark.grid.config import expand_grid, make_grid_config

    default = {j.model.weights_key for j in expand_grid(make_grid_config())}
    for name, sizes in (("smallest_test_sets.yaml", {9 + 9, 6 + 6}), ("full_test_sets.yaml", set())):
        jobs = expand_grid(make_grid_config(str(ROOT / "benchmarks" / name)))
        assert {j.model.weights_key for j in jobs if j.method != "bgad"} <= default
        if sizes:
            from robust_ad_bench.benchmark.execution.step_costs import split_sizes

            assert {split_sizes(j.model.split)[1] for j in jobs if j.method == "knn"} == sizes
