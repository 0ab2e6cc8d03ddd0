"""Where the default run's time goes: training, attack jobs, sanity checks and certification, per method.

Runs the default grid (`robust-ad-bench run --methods all`) in a fresh results folder and times every step
of every trained model (from its start to its event, as the driver sees it). With the serial executor (the
default) the checks are broken down further by the attack runs they make (clean, eps 0, large eps, more
steps, Square on the masking sample, Square on every image when the masking test flagged; a checked model's
worst cases are computed in its checks step). Prints tables; asserts nothing.
Usage: python benchmarks/profile_default_run.py [--executor serial|local|ray] [--workers N] [--threads N]
       [--out FOLDER] [--config FILE] [--methods ...]
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterable

from robust_ad_bench.benchmark.evaluation import scoring
from robust_ad_bench.benchmark.execution import executors, steps
from robust_ad_bench.benchmark.execution.runner import Runner
from robust_ad_bench.benchmark.execution.scheduler import StepScheduler
from robust_ad_bench.benchmark.grid.config import make_grid_config
from robust_ad_bench.benchmark.protocol.checks import CheckConfig
from robust_ad_bench.core.registry import ATTACKS

PHASES = ("training", "attack jobs", "worst cases", "checks", "certification")
totals: dict[tuple[str, str], float] = defaultdict(float)  # (method, phase) -> seconds
calls: dict[tuple[str, str], float] = defaultdict(float)  # (method, attack run) -> seconds
peaks: list[tuple[float, str]] = []  # (peak RSS GiB after the step, step)
current = {"method": "", "phase": ""}


def peak_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


PHASE = {"train": "training", "job": "attack jobs", "worst": "worst cases", "checks": "checks",
         "certify": "certification"}


def timed_finished(original):
    """``StepScheduler._finished``, recording how long each step ran."""
    def wrapper(self, backend, run, outcome, running, stopping):
        step = run.step
        first = step.task.first
        totals[(first.method, PHASE[step.kind])] += time.monotonic() - run.started
        peaks.append((peak_gib(), f"{first.method} {first.dataset} {PHASE[step.kind]}"))
        return original(self, backend, run, outcome, running, stopping)
    return wrapper


def timed_run_step(original):
    """``steps.run_step`` in this process (serial): which method and phase the attack runs belong to."""
    def wrapper(step, *args, **kwargs):
        current.update(method=step.task.first.method, phase=step.kind)
        return original(step, *args, **kwargs)
    return wrapper


def check_kind(attack: str, eps: float, sample: bool = False) -> str:
    """Which check an attack run of ``model_checks`` serves (see ``checks.run_checks``); ``sample``: the run
    attacked a subset of the test images (the masking test's sample)."""
    if attack == "clean":
        return "clean"
    if getattr(ATTACKS.get(attack), "black_box", False):
        return "masking sample" if sample else "masking all"
    if eps == 0:
        return "eps 0"
    return "large eps" if eps >= CheckConfig.large_eps_linf else "more steps"


def timed_attacked_scores(original):
    def wrapper(detector, split, attack, params, eps, *args, **kwargs):
        start = time.perf_counter()
        try:
            return original(detector, split, attack, params, eps, *args, **kwargs)
        finally:
            if current["phase"] == "checks":  # inside model_checks (jobs call it too: counted as jobs)
                sample = (args[4] if len(args) > 4 else kwargs.get("subset")) is not None
                calls[(current["method"], check_kind(attack, eps, sample))] += time.perf_counter() - start
    return wrapper


def table(rows: dict[str, dict[str, float]], columns: Iterable[str], title: str) -> None:
    columns = list(columns)
    print(f"\n{title}")
    print(f"{'':<18}" + "".join(f"{c:>15}" for c in columns) + f"{'total':>10}")
    for name, row in sorted(rows.items(), key=lambda kv: -sum(kv[1].values())):
        print(f"{name:<18}" + "".join(f"{row.get(c, 0.0):>15.1f}" for c in columns) + f"{sum(row.values()):>10.1f}")
    col_totals = {c: sum(r.get(c, 0.0) for r in rows.values()) for c in columns}
    print(f"{'all':<18}" + "".join(f"{col_totals[c]:>15.1f}" for c in columns)
          + f"{sum(col_totals.values()):>10.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", help="results folder (default: a new temporary folder)")
    parser.add_argument("--executor", default="serial", help="serial (default), local or ray")
    parser.add_argument("--workers", type=int, help="local/ray: workers")
    parser.add_argument("--threads", type=int, help="torch threads per worker (default: the executor's own)")
    parser.add_argument("--config", help="a grid config instead of the default grid")
    parser.add_argument("--methods", default="all")
    args = parser.parse_args()
    out = args.out or tempfile.mkdtemp(prefix="rab-profile-")
    scoring.attacked_scores = timed_attacked_scores(scoring.attacked_scores)
    steps.run_step = timed_run_step(steps.run_step)
    executors.run_step = steps.run_step  # the serial executor's reference
    StepScheduler._finished = timed_finished(StepScheduler._finished)
    cfg = make_grid_config(args.config, methods=args.methods, out=out, device="cpu",
                           execution={"executor": args.executor, "workers": args.workers, "threads": args.threads})
    start = time.perf_counter()
    summary = Runner(cfg).run()
    wall = time.perf_counter() - start
    threads = cfg.execution.worker_threads()
    print(f"{summary.total} jobs ({summary.computed} computed, {len(summary.failed)} failed), "
          f"{summary.trained} models trained, {summary.checked} checked, {summary.certified} certified; "
          f"{wall:.1f} s wall, executor {args.executor}, {threads} torch threads per worker, peak RSS of this "
          f"process {peak_gib():.2f} GiB, in {out}")
    by_method: dict[str, dict[str, float]] = defaultdict(dict)
    for (method, phase), seconds in totals.items():
        by_method[method][phase] = seconds
    table(by_method, PHASES, f"seconds per phase and method (step time, {args.executor} executor)")
    checks: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for (method, kind), seconds in calls.items():
        checks[method][kind] += seconds
    kinds = ("clean", "eps 0", "large eps", "more steps", "masking sample", "masking all")
    if args.executor == "serial":
        table(checks, kinds, "seconds of the checks' attack runs, by kind")
    print("\nsteps that raised the peak RSS of this process the most (serial: every step runs here):")
    before = 0.0
    rises = []
    for peak, step in peaks:
        rises.append((peak - before, peak, step))
        before = max(before, peak)
    for rise, peak, step in sorted(rises, reverse=True)[:5]:
        print(f"  +{rise:.2f} GiB to {peak:.2f} GiB: {step}")


if __name__ == "__main__":
    main()
