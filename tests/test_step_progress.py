"""Steps done, steps left and the time left of a running grid: the tracker on fake hook sequences (injected
clock and durations, never the wall clock), the CLI's display, and a real tiny run's hook calls and stored
step durations."""

from __future__ import annotations

import io

import pandas as pd
import pytest
from rich.console import Console
from rich.progress import Progress

from conftest import tiny_grid
from robust_ad_bench.benchmark.cli import RichHooks
from robust_ad_bench.benchmark.execution.runner import Hooks, Runner
from robust_ad_bench.benchmark.execution.step_costs import PlannedStep
from robust_ad_bench.benchmark.execution.step_progress import StepProgress
from robust_ad_bench.benchmark.results.store import Store


def plan(models=("a", "b"), jobs=3):
    steps = []
    for m in models:
        steps.append(PlannedStep("train", m, m, "meth", "d", "", 1))
        steps += [PlannedStep("job", f"{m}{i}", m, "meth", "d", "pgd", 1) for i in range(jobs)]
        steps.append(PlannedStep("checks", m, m, "meth", "d", "", 1))
    return steps


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_counts_follow_the_hook_sequence_and_a_failed_model_drops_its_steps():
    tracker = StepProgress(plan(), workers=1, clock=Clock())
    assert (tracker.finished, tracker.left, tracker.total) == (0, 10, 10)
    tracker.step_done("train", "a", 1.0)
    tracker.step_done("job", "a0", 2.0)
    tracker.step_done("job", "unknown", 2.0)  # not a planned step: not counted
    assert (tracker.finished, tracker.left) == (2, 8)
    tracker.step_done("job", "a1", None)  # failed: done, not measured
    tracker.model_done("a")  # its last job and its checks will not run
    assert (tracker.finished, tracker.left, tracker.total) == (3, 5, 8)
    assert tracker.text().startswith("steps 3/8, 5 left, ")


def test_time_left_from_the_estimates_refined_by_measured_steps():
    steps = plan(models=("a",), jobs=2)  # train, a0, a1, checks
    estimates = {s.id: 10.0 for s in steps}  # 40 s in all
    tracker = StepProgress(steps, estimates, workers=2, clock=Clock())
    assert tracker.seconds_left() == pytest.approx(40.0 / 2)
    tracker.step_done("train", "a", 30.0)  # took 3x its estimate: the rest is expected slower
    correction = (30.0 + 4.0) / (10.0 + 4.0)  # the estimate weighs as 10 % of the run's estimated time
    assert tracker.correction() == pytest.approx(correction)
    assert tracker.seconds_left() == pytest.approx(30.0 * correction / 2)
    for key in ("a0", "a1"):
        tracker.step_done("job", key, 10.0)
    tracker.step_done("checks", "a", 10.0)
    assert tracker.seconds_left() == 0.0 and tracker.left == 0


def test_time_left_from_the_rate_without_estimates():
    clock = Clock()
    tracker = StepProgress(plan(models=("a",), jobs=3), workers=1, clock=clock)  # 5 steps, no estimate
    assert tracker.seconds_left() is None and "time left unknown yet" in tracker.text()
    clock.now += 20.0
    tracker.step_done("train", "a", 5.0)
    tracker.step_done("job", "a0", 5.0)
    assert tracker.seconds_left() == pytest.approx(20.0 / 2 * 3)


def test_steps_without_estimate_count_at_the_mean_measured_duration():
    steps = plan(models=("a",), jobs=1)  # train, a0, checks
    tracker = StepProgress(steps, {("train", "a"): 4.0, ("job", "a0"): 4.0}, workers=1, clock=Clock())
    assert tracker.seconds_left() is None  # the checks have no estimate and nothing was measured yet
    tracker.step_done("train", "a", 4.0)
    assert tracker.seconds_left() == pytest.approx(4.0 * tracker.correction() + 4.0)


def test_the_cli_display_shows_steps_done_left_and_time_left():
    console = Console(file=io.StringIO(), width=200)
    with Progress(console=console) as progress:
        hooks = RichHooks(progress)
        steps = plan(models=("a",), jobs=2)
        stored = pd.DataFrame([{"kind": s.kind, "method": s.method, "dataset": s.dataset, "detail": s.detail,
                                "units": 1.0, "seconds": 6.0} for s in steps[:1] + steps[1:2] + steps[-1:]])
        hooks.plan(steps, stored, 1, 1)
        task = progress.tasks[hooks.steps]
        assert (task.total, task.completed) == (4, 0)
        assert task.description == "steps 0/4, 4 left, about 24 s to go"
        hooks.step_done("train", "a", 6.0)
        hooks.step_done("job", "a0", 6.0)
        assert progress.tasks[hooks.steps].completed == 2
        assert progress.tasks[hooks.steps].description == "steps 2/4, 2 left, about 12 s to go"
        hooks.model_done("a")
        assert progress.tasks[hooks.steps].total == 2


class Recording(Hooks):
    def __init__(self):
        self.calls = []

    def plan(self, steps, stored, workers, threads):
        self.steps = steps
        self.calls.append(("plan", len(steps), len(stored)))

    def step_done(self, kind, key, seconds):
        self.calls.append((kind, key, seconds))

    def model_done(self, train_key):
        self.calls.append(("model", train_key))


def test_a_run_reports_every_planned_step_and_stores_its_duration(tmp_path):
    cfg = tiny_grid(tmp_path, methods="knn", classes="0", attacks="clean,fgsm,pgd")
    cfg.checks.square_queries = 20
    hooks = Recording()
    Runner(cfg, hooks).run()
    planned = {s.id for s in hooks.steps}
    done = [c for c in hooks.calls if c[0] in ("train", "job", "worst", "checks", "certify")]
    assert {c[:2] for c in done} == planned and len(done) == len(planned)  # each once
    assert {k for k, _ in planned} == {"train", "job", "checks"}
    assert hooks.calls[0] == ("plan", len(planned), 0) and hooks.calls[-1][0] == "model"
    with Store(tmp_path) as store:
        stored = store.step_times()
    assert set(zip(stored["kind"], stored["step_key"])) == planned  # a fitted model: its training too
    assert (stored["seconds"] > 0).all() and (stored["units"] > 0).all()
    assert sorted(stored.loc[stored["kind"] == "job", "detail"]) == ["clean", "fgsm", "pgd"]
    again = Recording()
    Runner(cfg, again).run()  # nothing left: nothing planned
    assert again.calls == [("plan", 0, len(stored))]
