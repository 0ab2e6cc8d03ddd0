"""The units of work of a grid and the events their execution yields (all picklable).

A ``ModelTask`` is everything one trained model needs: fit or load it, run its pending jobs, then its
sanity checks and certificates. It is run as ``Step``s (a training, one job, the checks, the
certificates), each of which ends with exactly one event; the driver stores the events as they arrive.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from robust_ad_bench.benchmark.certification import CertifyConfig
from robust_ad_bench.benchmark.checks import CheckConfig
from robust_ad_bench.benchmark.jobs import Job
from robust_ad_bench.benchmark.store import CertifiedRow, CheckRow, JobResult

STEP_KINDS = ("train", "job", "checks", "certify")


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

    @property
    def first(self) -> Job:
        return self.jobs[0]

    @property
    def train_key(self) -> str:
        return self.jobs[0].train_key


@dataclass
class Step:
    """One step of a model's work; ``job`` for a job step, ``figures`` ((attack, eps) -> AUROC of every
    job of the model) for the checks."""

    kind: str
    task: ModelTask
    job: Job | None = None
    figures: dict[tuple[str, float], float] | None = None

    @property
    def label(self) -> str:
        j = self.job or self.task.first
        what = f"{j.attack} eps {j.eps:g}" if self.kind == "job" else self.kind
        return f"{j.method} {j.dataset}/{j.normal_class} seed {j.seed}: {what}"


@dataclass
class Trained:
    """The model is ready (``fitted``: trained now, else loaded from the cache)."""

    job: Job
    fitted: bool


@dataclass
class JobDone:
    """A job finished, successfully or not (``result.status``); a failure carries its traceback."""

    job: Job
    result: JobResult
    traceback: str = ""


@dataclass
class ChecksDone:
    job: Job
    rows: list[CheckRow]


@dataclass
class CertifiedDone:
    job: Job
    rows: list[CertifiedRow]


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


Event = Trained | JobDone | ChecksDone | CertifiedDone | StepFailed | ModelDone
StepResult = tuple[Event, Any]  # the event that ended a step, and the model's state when it is shipped
