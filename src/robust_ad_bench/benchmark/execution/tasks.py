"""The units of work of a grid and the events their execution yields (all picklable).

A ``ModelTask`` is everything one trained model needs: fit or load it, run its pending jobs, then its
per-image worst cases, sanity checks and certificates. It is run as ``Step``s (a training, one job, one
worst case, the checks, the certificates), each of which ends with exactly one event; the driver stores
the events as they arrive.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from robust_ad_bench.benchmark.grid.jobs import Job, WorstCase
from robust_ad_bench.benchmark.protocol.certification import CertifyConfig
from robust_ad_bench.benchmark.protocol.checks import CheckConfig
from robust_ad_bench.benchmark.results.store import CertifiedRow, CheckRow, JobResult

STEP_KINDS = ("train", "job", "worst", "checks", "certify")


@dataclass
class ModelTask:
    """The work of one trained model."""

    jobs: list[Job]  # every job of the model, in grid order
    pending: list[Job]  # those still to compute
    known: dict[str, float] = field(default_factory=dict)  # AUROC of its jobs already stored, by job key
    check_key: str | None = None  # checks still to compute (None: off, or already stored)
    cert_key: str | None = None  # certificates still to compute
    checks: CheckConfig = field(default_factory=CheckConfig)
    certify: CertifyConfig = field(default_factory=CertifyConfig)
    models: Path | None = Path("results/models")  # the model cache folder (None: the model is shipped)
    device: str = "cpu"
    # per-image worst cases still to compute (by the checks step when ``check_key`` is set: they use its images)
    worst: list[WorstCase] = field(default_factory=list)
    scores: dict[str, np.ndarray] = field(default_factory=dict)  # stored test scores of known jobs they combine
    adversarial: Path = Path("results/adversarial")  # adversarial images of stochastic detectors, by job key

    @property
    def first(self) -> Job:
        return self.jobs[0]

    @property
    def train_key(self) -> str:
        return self.jobs[0].train_key


@dataclass
class Step:
    """One step of a model's work; ``job`` for a job step; ``group`` and ``scores`` (its jobs' test scores)
    for a worst case; ``figures`` ((attack, eps) -> AUROC of every job of the model) and ``scores`` (every
    job's test scores) for the checks."""

    kind: str
    task: ModelTask
    job: Job | None = None
    figures: dict[tuple[str, float], float] | None = None
    group: WorstCase | None = None
    scores: dict[str, np.ndarray] | None = None

    @property
    def label(self) -> str:
        j = self.job or self.task.first
        what = f"{j.attack} eps {j.eps:g}" if self.kind == "job" else self.kind
        if self.group is not None:
            what = f"{self.group.attack} eps {self.group.eps:g}"
        return f"{j.method} {j.dataset}/{j.normal_class} seed {j.seed}: {what}"


@dataclass
class Trained:
    """The model is ready (``fitted``: trained now, else loaded from the cache)."""

    job: Job
    fitted: bool
    seconds: float = 0.0  # how long the step took (for the time estimates)


@dataclass
class JobDone:
    """A job finished, successfully or not (``result.status``); a failure carries its traceback."""

    job: Job
    result: JobResult
    traceback: str = ""


@dataclass
class WorstDone:
    """A per-image worst case was computed (or failed: ``result.status``)."""

    job: Job
    result: JobResult
    traceback: str = ""


@dataclass
class ChecksDone:
    """The checks of a model and the worst cases computed with them (``worst``: the task's, ok or failed);
    when they raised, ``error`` (the rows hold one failed check that says so)."""

    job: Job
    rows: list[CheckRow]
    error: str = ""
    traceback: str = ""
    worst: list[JobResult] = field(default_factory=list)
    seconds: float = 0.0


@dataclass
class CertifiedDone:
    job: Job
    rows: list[CertifiedRow]
    seconds: float = 0.0


@dataclass
class StepFailed:
    """The training, checks or certification of a model raised, timed out, or lost its worker."""

    job: Job
    message: str
    traceback: str


@dataclass
class ModelDone:
    """Nothing more will run for this model in this run (its claim can be released)."""

    job: Job


Event = Trained | JobDone | WorstDone | ChecksDone | CertifiedDone | StepFailed | ModelDone
StepResult = tuple[Event, Any]  # the event that ended a step, and the model's state when it is shipped
