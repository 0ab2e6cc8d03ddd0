"""``run --dry-run`` (and ``reproduce --dry-run``): the validated grid and everything a run of it would do
(models to train, jobs, per-image worst cases, sanity checks, certificates), per method, with the estimated
time of each (``step_costs``), computed from the store opened read-only; nothing is written."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from rich.console import Console
from rich.table import Table

from robust_ad_bench.benchmark.execution.runner import Runner
from robust_ad_bench.benchmark.execution.step_costs import (
    SCALED,
    STORED,
    Estimate,
    PlannedStep,
    duration,
    estimate,
    load_reference,
    parallelism,
    planned_steps,
)
from robust_ad_bench.benchmark.execution.tasks import ModelTask
from robust_ad_bench.benchmark.grid.jobs import Job
from robust_ad_bench.benchmark.results import leaderboard
from robust_ad_bench.benchmark.results.store import STEP_TIME_COLUMNS, STORE_FILE, open_existing


class _NoStore:
    """An empty store, for a results folder that has none yet."""

    def results(self, status: str | None = None, keys: object = None) -> pd.DataFrame:
        return pd.DataFrame({"key": pd.Series(dtype=str), "auroc": pd.Series(dtype=float)})

    def has_checks(self, key: str) -> bool:
        return False

    def has_certified(self, key: str) -> bool:
        return False

    def scores(self, key: str) -> None:
        return None

    def step_times(self) -> pd.DataFrame:
        return pd.DataFrame({c: pd.Series(dtype=object) for c in STEP_TIME_COLUMNS})


def planned_tasks(runner: Runner) -> list[ModelTask]:
    """What a run would compute, per trained model (the store, if any, read-only)."""
    return planned_work(runner)[0]


def planned_work(runner: Runner) -> tuple[list[ModelTask], pd.DataFrame]:
    """What a run would compute, per trained model, and the step durations stored in its folder (the store,
    if any, read-only)."""
    if Path(runner.cfg.out, STORE_FILE).is_file():
        with open_existing(runner.cfg.out) as store:
            return runner.tasks(store), store.step_times()  # type: ignore[arg-type]
    store = _NoStore()
    return runner.tasks(store), store.step_times()  # type: ignore[arg-type]


def print_grid(jobs: list[Job], pending: set[str], console: Console) -> None:
    table = Table(title=f"grid: {len(jobs)} jobs, {len(pending)} to compute")
    for col in ("method", "dataset", "classes", "seeds", "attacks (eps)", "jobs", "to compute"):
        table.add_column(col)
    groups: dict[tuple[str, str], list[Job]] = {}
    for job in jobs:
        groups.setdefault((job.method, job.dataset), []).append(job)
    for (method, dataset), group in groups.items():
        attacks: dict[str, list[str]] = {}
        for j in group:
            attacks.setdefault(j.attack, [])
            label = leaderboard.eps_label(j.eps, j.norm)
            if j.norm != "none" and label not in attacks[j.attack]:
                attacks[j.attack].append(label)
        attack_text = ", ".join(f"{a} ({', '.join(e)})" if e else a for a, e in attacks.items())
        table.add_row(method, dataset, ",".join(dict.fromkeys(j.normal_class for j in group)),
                      ",".join(dict.fromkeys(str(j.seed) for j in group)), attack_text, str(len(group)),
                      str(sum(j.key in pending for j in group)))
    console.print(table)


def plan_lines(runner: Runner, tasks: list[ModelTask]) -> list[str]:
    """One line each: models to train, jobs, worst cases, checks, certificates."""
    models = Path(runner.cfg.out) / "models"
    cached = sum((models / f"{task.first.model.weights_key}.pt").is_file() for task in tasks)
    checks, certify = runner.cfg.checks, runner.cfg.certify
    checked = [t for t in tasks if t.check_key]
    certified = [t for t in tasks if t.cert_key]
    lines = [f"models: {len(tasks)} with work left ({len(tasks) - cached} to train, {cached} in {models})",
             f"jobs: {sum(len(t.pending) for t in tasks)} to compute of {len(runner.jobs)}",
             f"per-image worst cases: {sum(len(t.worst) for t in tasks)}"]
    if checks.enabled:
        lines.append(f"sanity checks: {len(checked)} models (Square {checks.square_queries} queries, steps x"
                     f"{checks.steps_factor}, eps 0, large eps {checks.large_eps_linf:g}, monotonic in eps)")
    else:
        lines.append("sanity checks: off")
    if certified:
        methods = ", ".join(dict.fromkeys(t.first.method for t in certified))
        lines.append(f"certificates: {len(certified)} models ({methods}; sigmas {list(certify.sigmas)}, "
                     f"n0 {certify.n0}, n {certify.n}, radii {list(certify.radii)})")
    else:
        lines.append(f"certificates: none (certify.methods: {certify.methods})")
    return lines


SOURCE_TEXT = {STORED: "step times stored in the results folder (this machine)",
               SCALED: "the packaged reference table, scaled by this machine's calibration"}


def print_costs(tasks: list[ModelTask], steps: list[PlannedStep], found: Estimate, console: Console) -> None:
    """Per method: the trainings, jobs, worst cases (a checked model's: computed by its checks), checks and
    certificates a run would do, and their estimated time."""
    table = Table(title="work left and its estimated time, per method")
    for col in ("method", "trainings", "jobs", "worst cases", "checks", "certificates", "est. step time", "source"):
        table.add_column(col, justify="left" if col in ("method", "source") else "right")
    by_method: dict[str, list[PlannedStep]] = {}
    for step in steps:
        by_method.setdefault(step.method, []).append(step)
    for method, group in by_method.items():
        mine = [t for t in tasks if t.first.method == method]
        count = {"train": sum(s.kind == "train" and s.units > 0 for s in group),
                 "job": sum(len(t.pending) for t in mine), "worst": sum(len(t.worst) for t in mine),
                 "checks": sum(bool(t.check_key) for t in mine), "certify": sum(bool(t.cert_key) for t in mine)}
        seconds, missing = found.total(group)
        sources = sorted({found.sources[s.id] for s in group if s.id in found.sources})
        text = "no estimate" if missing == len(group) else duration(seconds) + (
            f" + {missing} step(s) without estimate" if missing else "")
        table.add_row(method, *(str(count[k]) for k in count), text,
                      "/".join(sources) if sources else "none (not in the stored or reference times)")
    console.print(table)


def estimate_lines(steps: list[PlannedStep], found: Estimate) -> list[str]:
    """The estimated total: summed step time, and the wall time on the run's workers."""
    seconds, missing = found.total(steps)
    if not steps:
        return ["estimated time: nothing left to compute"]
    if missing == len(steps):
        return ["estimated time: no estimate (no step of this grid was measured in this folder or in the "
                "packaged reference table)"]
    used = sorted({found.sources[s.id] for s in steps if s.id in found.sources})
    lines = [f"estimated time: {duration(seconds)} of step time; with {found.workers} worker(s) about "
             f"{duration(seconds / found.workers)} wall on this machine"
             + (f", plus {missing} step(s) without an estimate" if missing else "")]
    lines += [f"  from {SOURCE_TEXT[source]}" + (f" ({found.note})" if source == SCALED else "") for source in used]
    return lines


def dry_run(runner: Runner, console: Console) -> None:
    tasks, stored = planned_work(runner)
    pending = {job.key for task in tasks for job in task.pending}
    print_grid(runner.jobs, pending, console)
    for line in plan_lines(runner, tasks):
        console.print(line, highlight=False, soft_wrap=True)
    steps = planned_steps(tasks, Path(runner.cfg.out) / "models")
    workers, threads = parallelism(runner.cfg.execution)
    found = estimate(steps, stored, load_reference(), workers, threads)
    if steps:
        print_costs(tasks, steps, found, console)
    for line in estimate_lines(steps, found):
        console.print(line, highlight=False, soft_wrap=True)
