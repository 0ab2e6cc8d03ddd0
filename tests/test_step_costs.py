"""The time estimates of a grid's steps (``step_costs``): work units, the arithmetic of the estimate from
injected step durations and calibrations, the stored durations, and the reference table's script."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pandas as pd
import pytest

from robust_ad_bench.benchmark.execution.step_costs import (
    SCALED,
    STORED,
    PlannedStep,
    Reference,
    attack_factor,
    estimate,
    load_reference,
    parallelism,
    rate,
    rates_of,
    task_steps,
)
from robust_ad_bench.benchmark.execution.tasks import ModelTask
from robust_ad_bench.benchmark.grid.config import expand_grid, make_grid_config
from robust_ad_bench.benchmark.grid.execution import ExecutionConfig
from robust_ad_bench.benchmark.results.store import STEP_TIME_COLUMNS, STORE_FILE, StepTime, Store, open_existing

ROOT = Path(__file__).resolve().parent.parent


def step(kind="job", method="m", dataset="d", detail="pgd", units=100.0, key=None):
    return PlannedStep(kind, key or f"{kind}-{method}-{dataset}-{detail}-{units}", "tk", method, dataset, detail, units)


def times(*rows):
    """A step_times frame of (kind, method, dataset, detail, units, seconds)."""
    return pd.DataFrame([dict(zip(("kind", "method", "dataset", "detail", "units", "seconds"), r)) for r in rows])


def test_stored_rates_scale_by_work_units():
    stored = times(("job", "m", "d", "pgd", 100, 2.0), ("job", "m", "d", "pgd", 300, 6.0),  # 0.02 s per unit
                   ("train", "m", "d", "", 50, 5.0))
    steps = [step(units=250), step("train", detail="", units=100)]
    found = estimate(steps, stored, None, workers=2, threads=1)
    assert found.seconds[steps[0].id] == pytest.approx(5.0) and found.seconds[steps[1].id] == pytest.approx(10.0)
    assert set(found.sources.values()) == {STORED} and found.scale == 1.0
    assert found.total(steps) == (pytest.approx(15.0), 0)


def test_reference_rates_are_scaled_by_the_calibration_and_stored_ones_win():
    reference = Reference(rates_of(times(("job", "m", "d", "pgd", 100, 4.0), ("checks", "m", "d", "", 10, 1.0))),
                          calibration=0.2, threads=1)
    stored = times(("checks", "m", "d", "", 10, 3.0))  # measured here: used as is
    steps = [step(units=50), step("checks", detail="", units=20)]
    found = estimate(steps, stored, reference, workers=1, threads=1, calibration=0.3)  # this machine 1.5x slower
    assert found.scale == pytest.approx(1.5)
    assert found.seconds[steps[0].id] == pytest.approx(4.0 / 100 * 50 * 1.5)
    assert found.sources[steps[0].id] == SCALED
    assert found.seconds[steps[1].id] == pytest.approx(6.0) and found.sources[steps[1].id] == STORED
    assert "0.300 s here" in found.note


def test_a_method_missing_everywhere_has_no_estimate():
    reference = Reference(rates_of(times(("job", "m", "d", "pgd", 100, 4.0))), calibration=0.2, threads=1)
    plugin = [step(method="plugin", units=10), step(method="m", dataset="other", units=10)]
    found = estimate(plugin, times(), reference, workers=1, threads=1, calibration=0.2)
    assert all(v is None for v in found.seconds.values()) and found.sources == {}
    assert found.total(plugin) == (0, 2)
    assert found.note == ""  # no calibration was needed


def test_another_attack_of_the_same_method_uses_its_kind_rate():
    rates = rates_of(times(("job", "m", "d", "pgd", 100, 1.0), ("job", "m", "d", "fgsm", 100, 3.0)))
    assert rate(rates, step(detail="pgd")) == pytest.approx(0.01)
    assert rate(rates, step(detail="autoattack")) == pytest.approx(4.0 / 200)
    assert rate(rates, step("checks", detail="")) is None


def test_work_units_follow_the_attack_budget():
    cfg = make_grid_config(methods="knn", datasets="digits", attacks="clean,pgd", eps="8/255", classes="0")
    more = make_grid_config(methods="knn", datasets="digits", attacks="clean,pgd", eps="8/255", classes="0",
                            sets=["attack_params.pgd.steps=40", "attack_params.pgd.restarts=2"])
    pgd = [j for j in expand_grid(cfg) if j.attack == "pgd"][0]
    pgd_more = [j for j in expand_grid(more) if j.attack == "pgd"][0]
    clean = [j for j in expand_grid(cfg) if j.attack == "clean"][0]
    assert attack_factor(clean) == 1 and attack_factor(pgd) == 10
    assert attack_factor(pgd_more) == 80
    ensemble = make_grid_config(methods="knn", datasets="digits", attacks="clean,ensemble", eps="8/255",
                                classes="0", sets=["attack_params.ensemble.pgd_steps=30",
                                                   "attack_params.ensemble.apgd_iters=20",
                                                   "attack_params.ensemble.square_queries=500"])
    job = [j for j in expand_grid(ensemble) if j.attack == "ensemble"][0]
    restarts = job.attack_spec.params.get("restarts") or 1
    assert attack_factor(job) == (30 + 20 + 500) * restarts  # the parts run one after the other


def test_checks_units_count_the_sample_not_the_test_set():
    cfg = make_grid_config(methods="knn", datasets="digits", attacks="clean,fgsm,pgd", eps="8/255", classes="0",
                           dataset_params={})
    jobs = expand_grid(cfg)
    task = ModelTask(jobs, jobs, check_key="k", checks=cfg.checks)
    checks = [s for s in task_steps(task) if s.kind == "checks"][0]
    # fgsm: eps 0 (1 call); pgd: eps 0, large eps (10 each) and 20 steps; Square 1000 queries; 64 images
    assert checks.units == 64 * (1 + 10 + 10 + 20 + 1000)


def test_parallelism_of_each_executor():
    assert parallelism(ExecutionConfig("serial", threads=3)) == (1, 3)
    assert parallelism(ExecutionConfig("local", workers=2, threads=1)) == (2, 1)


def test_step_times_are_stored_and_a_read_only_store_is_not_written(tmp_path):
    with Store(tmp_path) as store:
        store.put_step_time(StepTime("job", "k1", "m", "d", "pgd", 10.0, 1.5, 1, 2))
        store.put_step_time(StepTime("job", "k1", "m", "d", "pgd", 10.0, 2.5, 1, 2))  # measured again: replaced
    before = (tmp_path / STORE_FILE).read_bytes()
    with open_existing(tmp_path) as store:
        frame = store.step_times()
    assert list(frame.columns) == list(STEP_TIME_COLUMNS) and frame["seconds"].tolist() == [2.5]
    assert (tmp_path / STORE_FILE).read_bytes() == before


def test_a_store_from_before_step_times_reads_empty(tmp_path):
    import sqlite3

    with Store(tmp_path) as store:
        store.conn.execute("DROP TABLE step_times")
    before = (tmp_path / STORE_FILE).read_bytes()
    with open_existing(tmp_path) as store:
        assert store.step_times().empty
    assert (tmp_path / STORE_FILE).read_bytes() == before
    with Store(tmp_path) as store:  # opened for writing: the table is added
        assert store.step_times().empty
    assert "step_times" in {r[0] for r in sqlite3.connect(tmp_path / STORE_FILE).execute(
        "SELECT name FROM sqlite_master")}


def test_reference_script_writes_a_table_that_loads(tmp_path):
    with Store(tmp_path) as store:
        store.put_step_time(StepTime("job", "k1", "m", "d", "pgd", 10.0, 1.0, 1, 2))
        store.put_step_time(StepTime("job", "k2", "m", "d", "pgd", 30.0, 2.0, 1, 2))
    spec = importlib.util.spec_from_file_location("step_costs_script", ROOT / "benchmarks" / "step_costs.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)  # type: ignore[union-attr]
    target = tmp_path / "costs.json"
    table = script.reference_table(tmp_path, calibration=0.25)
    assert table["steps"] == [{"kind": "job", "method": "m", "dataset": "d", "detail": "pgd", "seconds": 3.0,
                               "units": 40.0, "count": 2}]
    assert table["machine"]["threads"] == 1 and table["machine"]["workers"] == 2
    target.write_text(json.dumps(table))
    reference = load_reference(target)
    assert reference is not None and reference.calibration == 0.25
    assert rate(reference.rates, step(units=1)) == pytest.approx(3.0 / 40)
    assert script.main(["--out", str(tmp_path), "--json", str(target)]) == 0  # the command: calibrates now
    written = load_reference(target)
    assert written is not None and written.calibration > 0 and written.rates == reference.rates
    assert script.main(["--out", str(tmp_path / "empty"), "--json", str(target)]) == 2  # no store: one line


def test_the_packaged_reference_table_loads():
    reference = load_reference()
    assert reference is not None and reference.calibration > 0 and reference.rates


def test_dry_run_counts_and_estimates_per_method_from_the_folders_step_times(tmp_path, capsys):
    from robust_ad_bench.benchmark.cli import main

    out = str(tmp_path / "res")
    tiny = ["--datasets", "digits", "--attacks", "clean,pgd", "--eps", "8/255", "--device", "cpu", "--no-checks",
            "--out", out]
    assert main(["run", "--methods", "knn", "--classes", "0", *tiny]) == 0
    capsys.readouterr()
    plugin = str(ROOT / "tests" / "plugins" / "failing_methods.py")
    before = (Path(out) / STORE_FILE).read_bytes()
    assert main(["run", "--plugin", plugin, "--methods", "knn,broken-fit", "--classes", "0,1", "--dry-run",
                 *tiny]) == 0
    raw = capsys.readouterr().out
    stdout = " ".join(raw.split())
    assert (Path(out) / STORE_FILE).read_bytes() == before  # a dry run writes nothing
    rows = [[c.strip() for c in line.split("│")[1:-1]] for line in raw.splitlines() if line.startswith("│ knn ")]
    cost = [row for row in rows if row[-1] == STORED]  # the grid table's knn rows end otherwise
    assert len(cost) == 1 and cost[0][1:6] == ["1", "2", "0", "0", "0"]  # class 1: trained, its 2 jobs
    assert "no estimate" in stdout and "none (not in the stored or reference times)" in stdout  # broken-fit
    assert "from step times stored in the results folder (this machine)" in stdout
    assert "plus 6 step(s) without an estimate" in stdout  # broken-fit: 2 trainings and 4 jobs
