"""``run --dry-run`` (and ``reproduce --dry-run``): the validated grid and everything a run of it would do
(models to train, jobs, per-image worst cases, sanity checks, certificates), computed from the store
opened read-only; nothing is written."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from rich.console import Console
from rich.table import Table

from robust_ad_bench.benchmark import leaderboard
from robust_ad_bench.benchmark.jobs import Job
from robust_ad_bench.benchmark.runner import Runner
from robust_ad_bench.benchmark.store import STORE_FILE, open_existing
from robust_ad_bench.benchmark.tasks import ModelTask


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


def planned_tasks(runner: Runner) -> list[ModelTask]:
    """What a run would compute, per trained model (the store, if any, read-only)."""
    if Path(runner.cfg.out, STORE_FILE).is_file():
        with open_existing(runner.cfg.out) as store:
            return runner.tasks(store)  # type: ignore[arg-type]
    return runner.tasks(_NoStore())  # type: ignore[arg-type]


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
    cached = sum((models / f"{task.train_key}.pt").is_file() for task in tasks)
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


def dry_run(runner: Runner, console: Console) -> None:
    tasks = planned_tasks(runner)
    pending = {job.key for task in tasks for job in task.pending}
    print_grid(runner.jobs, pending, console)
    for line in plan_lines(runner, tasks):
        console.print(line, highlight=False, soft_wrap=True)
