"""What the steps of a grid cost, before they run: each step's work units, and its estimated seconds from
measured step durations.

A step (a training, a job, a per-image worst case, the checks, the certificates of one model) is counted in
work units that are cheap to compute from its job and config: images × iterations × draws (``work_units``).
Its seconds are estimated as seconds-per-unit × units, the rate taken from (a) the durations stored in the
target results folder (``step_times``: measured on this machine), else (b) the packaged reference table
``step_costs.json`` (measured on a reference machine; ``benchmarks/step_costs.py`` writes it from a results
folder), scaled by a short calibration: a fixed torch workload timed here against its time there, both at the
threads one worker has. A rate is kept per step kind, method, dataset and detail (the attack of a job, the
norm of a worst case); a method or dataset missing from both has no estimate (never a guessed number).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import lru_cache
from importlib.resources import files
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from robust_ad_bench.benchmark.execution.tasks import (
    CertifiedDone,
    ChecksDone,
    Event,
    JobDone,
    ModelTask,
    Trained,
    WorstDone,
)
from robust_ad_bench.benchmark.grid.execution import ExecutionConfig, cpu_count
from robust_ad_bench.benchmark.grid.jobs import Job
from robust_ad_bench.benchmark.results.store import StepTime
from robust_ad_bench.core.registry import ATTACKS, DATASETS, METHODS
from robust_ad_bench.datasets.files import ImageOptions
from robust_ad_bench.datasets.protocols import SplitSpec, make_split

REFERENCE = ("robust_ad_bench", "benchmark/step_costs.json")  # the packaged reference table
STORED, SCALED = "stored", "reference"  # where an estimate's rate came from


@dataclass(frozen=True)
class PlannedStep:
    """One step a run would do. ``key``: the job key (job), the worst case's key (worst), else the model's
    training key; ``detail``: the attack (job), the norm (worst), else ""."""

    kind: str
    key: str
    train_key: str
    method: str
    dataset: str
    detail: str
    units: float

    @property
    def id(self) -> tuple[str, str]:
        return self.kind, self.key

    def timing(self, seconds: float, threads: int | None = None, workers: int | None = None) -> StepTime:
        return StepTime(self.kind, self.key, self.method, self.dataset, self.detail, self.units, seconds, threads,
                        workers)


@lru_cache(maxsize=256)
def split_sizes(spec: SplitSpec) -> tuple[int, int]:
    """(train images, test images) of a split whose data are embedded or generated; (1, 1) for datasets read
    from files (building their split would read every file: there, an estimate counts steps, not images)."""
    options = getattr(DATASETS.get(spec.dataset), "Options", None)
    if isinstance(options, type) and issubclass(options, ImageOptions):
        return 1, 1
    split = make_split(spec)
    return len(split.train), len(split.test)


def _int(value: Any, default: int = 1) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else default


def attack_factor(job: Job, params: dict[str, Any] | None = None) -> float:
    """Score calls per image of one job (with ``params``: of its attack run with those): its iterations ×
    restarts × EOT draws (stochastic detectors) × evaluation draws. The iteration budgets of an attack made of
    parts (AutoAttack's iterations and Square's queries, the ensemble's PGD, APGD and Square) add up: the
    parts run one after the other."""
    params = job.attack_spec.params if params is None else params
    iterations = sum(_int(params.get(name)) for name in ATTACKS.get(job.attack).iteration_params) or 1
    eot = _int(params.get("eot_samples")) if METHODS.get(job.method).stochastic and job.norm != "none" else 1
    return iterations * _int(params.get("restarts")) * eot * job.eval_samples


def checks_factor(jobs: Iterable[Job], steps_factor: int) -> float:
    """Score calls per sample image of one model's checks (``checks.run_checks``): each attack at eps 0, and
    each iterative one at a large eps and with ``steps_factor`` times its budget."""
    units = 0.0
    for job in {j.attack: j for j in sorted(jobs, key=lambda j: j.eps) if j.norm != "none"}.values():
        attack = ATTACKS.get(job.attack)
        units += attack_factor(job)  # eps 0
        if attack.is_iterative(job.attack_spec.params) and job.eps > 0:
            stronger = attack.scaled_params(job.attack_spec.params, steps_factor=steps_factor)
            units += attack_factor(job) + attack_factor(job, stronger)
    return units


def training_factor(job: Job) -> float:
    """Passes over the training images: the sum of the method's ``*epochs`` options (at least 1)."""
    epochs = sum(v for k, v in job.model.params.items() if k.endswith("epochs") and _int(v, 0))
    return max(1, epochs)


def task_steps(task: ModelTask, cached: bool = False) -> list[PlannedStep]:
    """The steps of one model's work, with their work units (``cached``: its training only loads it)."""
    first = task.first
    n_train, n_test = split_sizes(first.model.split)

    def step(kind: str, key: str, detail: str, units: float) -> PlannedStep:
        return PlannedStep(kind, key, task.train_key, first.method, first.dataset, detail, float(units))

    steps = [step("train", task.train_key, "", 0 if cached else n_train * training_factor(first))]
    steps += [step("job", job.key, job.attack, n_test * attack_factor(job)) for job in task.pending]
    if not task.check_key:  # a checked model's worst cases are computed by its checks step
        steps += [step("worst", w.key, w.norm, n_test * len(w.members) * first.eval_samples) for w in task.worst]
    if task.check_key:  # the attacking checks run on the stratified sample, Square on it too
        c = task.checks
        sample = min(n_test, c.masking_normals + c.masking_anomalies)
        square = c.square_queries * c.square_eot_samples
        steps.append(step("checks", task.train_key, "", sample * (checks_factor(task.jobs, c.steps_factor) + square)))
    if task.cert_key:
        cert = task.certify
        steps.append(step("certify", task.train_key, "", n_test * (cert.n0 + cert.n) * len(cert.sigmas)))
    return steps


def planned_steps(tasks: Iterable[ModelTask], models: Path | None = None) -> list[PlannedStep]:
    """Every step of ``tasks`` (a model already in the cache folder ``models`` is loaded, not trained)."""
    return [s for task in tasks
            for s in task_steps(task, models is not None and (models / f"{task.first.model.weights_key}.pt").is_file())]


def event_step(event: Event) -> tuple[str, str, float, bool] | None:
    """(kind, key, seconds, measured) of the step an event ends; ``measured`` when its duration is one of
    that step's work (not a failure, not a model loaded from the cache); None for other events."""
    if isinstance(event, Trained):
        return "train", event.job.train_key, event.seconds, event.fitted
    if isinstance(event, (JobDone, WorstDone)):
        kind = "job" if isinstance(event, JobDone) else "worst"
        return kind, event.job.key, event.result.seconds, event.result.status == "ok"
    if isinstance(event, ChecksDone):
        return "checks", event.job.train_key, event.seconds, not event.error
    if isinstance(event, CertifiedDone):
        return "certify", event.job.train_key, event.seconds, True
    return None


# -- rates -------------------------------------------------------------------------------------------------
Rates = dict[tuple[str, str, str, str], tuple[float, float]]  # (kind, method, dataset, detail) -> (s, units)


def rates_of(frame: pd.DataFrame) -> Rates:
    """Summed (seconds, units) per (kind, method, dataset, detail) of measured step durations."""
    rates: Rates = {}
    for row in frame[["kind", "method", "dataset", "detail", "seconds", "units"]].itertuples(index=False):
        key = (row.kind, row.method, row.dataset, row.detail)
        seconds, units = rates.get(key, (0.0, 0.0))
        rates[key] = (seconds + float(row.seconds), units + float(row.units))
    return rates


def rate(rates: Rates, step: PlannedStep) -> float | None:
    """Seconds per unit of ``step``: of its own (kind, method, dataset, detail), else of the same kind,
    method and dataset with another detail (another attack); None when neither was measured."""
    found = rates.get((step.kind, step.method, step.dataset, step.detail))
    if found is None:
        found_all = [v for k, v in rates.items() if k[:3] == (step.kind, step.method, step.dataset)]
        if not found_all:
            return None
        found = (sum(s for s, _ in found_all), sum(u for _, u in found_all))
    seconds, units = found
    return seconds / units if units > 0 else (0.0 if seconds == 0 else None)


@dataclass
class Reference:
    """The packaged reference table: its rates and the calibration time of the machine that measured them."""

    rates: Rates
    calibration: float  # seconds of ``calibrate`` at ``threads`` on the reference machine
    threads: int
    machine: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Reference:
        rates = {(s["kind"], s["method"], s["dataset"], s["detail"]): (float(s["seconds"]), float(s["units"]))
                 for s in data["steps"]}
        machine = data["machine"]
        return cls(rates, float(machine["calibration_seconds"]), int(machine["threads"]), machine)


def load_reference(path: str | Path | None = None) -> Reference | None:
    """The reference table (``path``, else the packaged one); None when there is none."""
    source = Path(path) if path else files(REFERENCE[0]).joinpath(REFERENCE[1])
    try:
        return Reference.from_json(json.loads(source.read_text()))
    except (OSError, FileNotFoundError):
        return None


def calibrate(threads: int, repeats: int = 3) -> float:
    """Seconds of a fixed torch workload (forward and backward of a small conv net on 64 images of 32×32,
    20 times) with ``threads``; the best of ``repeats``, so that a moment's load from other processes counts
    least."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        g = torch.Generator().manual_seed(0)
        x = torch.rand(64, 1, 32, 32, generator=g)
        w1 = torch.randn(16, 1, 3, 3, generator=g).requires_grad_()
        w2 = torch.randn(32, 16, 3, 3, generator=g).requires_grad_()
        best = math.inf
        for _ in range(repeats):
            start = time.perf_counter()
            for _ in range(20):
                h = torch.nn.functional.conv2d(x, w1, padding=1).relu()
                h = torch.nn.functional.conv2d(torch.nn.functional.avg_pool2d(h, 2), w2, padding=1)
                h.square().mean().backward()
            best = min(best, time.perf_counter() - start)
        return best
    finally:
        torch.set_num_threads(previous)


def parallelism(execution: ExecutionConfig) -> tuple[int, int]:
    """(workers, torch threads per worker) a run of ``execution`` will have."""
    if execution.executor == "serial":
        return 1, execution.threads or cpu_count()
    workers = execution.local_workers() if execution.executor == "local" else (execution.workers or cpu_count())
    return workers, execution.worker_threads()


@dataclass
class Estimate:
    """Estimated seconds of each planned step (None: no estimate) and where each came from."""

    seconds: dict[tuple[str, str], float | None]
    sources: dict[tuple[str, str], str]
    workers: int
    scale: float = 1.0  # reference rates × this (calibration here / there); 1 when none was used
    note: str = ""  # how the scale was measured

    def total(self, steps: Iterable[PlannedStep]) -> tuple[float, int]:
        """(summed seconds of the steps with an estimate, how many steps have none)."""
        values = [self.seconds.get(s.id) for s in steps]
        return sum(v for v in values if v is not None), sum(v is None for v in values)


def estimate(steps: list[PlannedStep], stored: pd.DataFrame, reference: Reference | None, workers: int,
             threads: int, calibration: float | None = None) -> Estimate:
    """The seconds of every step: from ``stored`` step durations (this machine) where they measured the
    step's kind, method and dataset, else from ``reference`` × (``calibration`` here / the reference's); a
    ``calibration`` is measured now (``calibrate(threads)``) only when some step needs the reference."""
    own = rates_of(stored) if not stored.empty else {}
    seconds: dict[tuple[str, str], float | None] = {}
    sources: dict[tuple[str, str], str] = {}
    needs_reference = []
    for step in steps:
        found = rate(own, step)
        if found is not None:
            seconds[step.id], sources[step.id] = found * step.units, STORED
        else:
            needs_reference.append(step)
    scale, note = 1.0, ""
    if needs_reference and reference is not None and any(rate(reference.rates, s) is not None
                                                         for s in needs_reference):
        here = calibration if calibration is not None else calibrate(threads)
        scale = here / reference.calibration
        note = (f"calibration {here:.3f} s here at {threads} thread(s) vs {reference.calibration:.3f} s on the "
                f"reference machine at {reference.threads}")
    for step in needs_reference:
        found = rate(reference.rates, step) if reference is not None else None
        seconds[step.id] = None if found is None else found * step.units * scale
        if found is not None:
            sources[step.id] = SCALED
    return Estimate(seconds, sources, workers, scale, note)


def duration(seconds: float | None) -> str:
    """``1 h 02 min``, ``4 min 05 s``, ``12 s``; ``–`` for no estimate."""
    if seconds is None:
        return "–"
    s = int(round(seconds))
    if s >= 3600:
        return f"{s // 3600} h {s % 3600 // 60:02d} min"
    return f"{s // 60} min {s % 60:02d} s" if s >= 60 else f"{s} s"
