"""Where the work of a grid runs. The unit of work is one trained model (``ModelTask``): fit or load it,
run its pending jobs, then its per-image worst cases, its sanity checks and its certificates. ``run_task``
does that anywhere (it touches no store and needs only the model cache folder, and the folder of kept
adversarial images) and yields events as they happen; the driver alone writes them to the store, so
workers never contend for the SQLite file.

An executor turns tasks into a stream of events. ``SerialExecutor`` runs them one after the other in this
process; another executor (a process pool, a Ray cluster) is one new class with the same ``run``.
"""

from __future__ import annotations

import contextlib
import time
import traceback
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from robust_ad_bench.benchmark.certification import CertifyConfig
from robust_ad_bench.benchmark.checks import ERROR, CheckConfig, CheckResult
from robust_ad_bench.benchmark.evaluation import (
    attack_job,
    check_rows,
    job_result,
    model_certificates,
    model_checks,
    model_worst_case,
)
from robust_ad_bench.benchmark.jobs import Job, WorstCase
from robust_ad_bench.benchmark.model_cache import ModelCache
from robust_ad_bench.benchmark.runtime import resolve_device
from robust_ad_bench.benchmark.store import CertifiedRow, CheckRow, JobResult
from robust_ad_bench.benchmark.worst_case import AdversarialImages
from robust_ad_bench.core.dataset import Split
from robust_ad_bench.core.detector import Detector, ProgressFn
from robust_ad_bench.datasets.protocols import make_split

ProgressFactory = Callable[[Job], ProgressFn | None]  # a training progress callback for a model's first job


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
    models: Path = Path("results/models")  # the model cache folder
    device: str = "cpu"
    worst: list[WorstCase] = field(default_factory=list)  # per-image worst cases still to compute
    scores: dict[str, np.ndarray] = field(default_factory=dict)  # stored test scores of known jobs they combine
    adversarial: Path = Path("results/adversarial")  # adversarial images of stochastic detectors, by job key


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
class WorstDone:
    """A per-image worst case was computed (or failed: ``result.status``)."""

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
    """The checks or the certification of a model raised."""

    job: Job
    message: str
    traceback: str


Event = Trained | JobDone | WorstDone | ChecksDone | CertifiedDone | StepFailed


def _trace(exc: BaseException) -> str:
    return "".join(traceback.format_exception(exc))


def run_task(task: ModelTask, progress: ProgressFactory | None = None) -> Iterator[Event]:
    """Run one model's work and yield what happened, in order."""
    device = resolve_device(task.device)
    first = task.jobs[0]
    start = time.perf_counter()
    try:
        split = make_split(first.model.split)
        detector, fitted = ModelCache(task.models, device).get(
            first.model, first.train_key, split, lambda: progress(first) if progress else None)
    except Exception as exc:
        message, trace = f"training failed: {type(exc).__name__}: {exc}", _trace(exc)
        for i, job in enumerate(task.pending):  # the traceback is logged once, with the first job
            yield JobDone(job, job_result(job, "failed", seconds=time.perf_counter() - start, error=message),
                          trace if i == 0 else "")
        return
    yield Trained(first, fitted)
    auroc = dict(task.known)
    scores = dict(task.scores)
    images = AdversarialImages(task.adversarial)
    for job in task.pending:
        start = time.perf_counter()
        try:
            result, x_adv = attack_job(job, detector, split, device)
        except Exception as exc:
            yield JobDone(job, job_result(job, "failed", seconds=time.perf_counter() - start,
                                          error=f"{type(exc).__name__}: {exc}"), _trace(exc))
            continue
        result.seconds = time.perf_counter() - start
        if detector.stochastic and job.norm != "none":  # kept to re-score its worst case with fresh draws
            with contextlib.suppress(OSError):  # not kept: the worst case attacks again from the job's seed
                images.save(job.key, split.test.to(device), x_adv, job.eps)
        auroc[job.key], scores[job.key] = result.metrics["auroc"], result.scores
        yield JobDone(job, result)
    for group in task.worst:
        if all(job.key in scores for job in group.jobs):  # only over attacks that all succeeded
            yield _worst_case(group, detector, split, scores, images, device)
    if any(job.key not in auroc for job in task.jobs):
        return  # checks compare the figures of every job of the model: only once all succeeded (the
        # leaderboard flags the cells of a model without checks)
    figures = {(job.attack, job.eps): auroc[job.key] for job in task.jobs}
    if task.check_key:
        try:
            yield ChecksDone(first, model_checks(task.jobs, task.check_key, figures, detector, split, task.checks,
                                                 device))
        except Exception as exc:  # stored as a failed check (flagged), reported, and the grid goes on
            message = f"{type(exc).__name__}: {exc}"
            yield ChecksDone(first, check_rows(task.jobs, task.check_key,
                                               [CheckResult("*", f"{ERROR}:checks", False, detail=message)]))
            yield StepFailed(first, f"checks failed: {message}", _trace(exc))
    if task.cert_key:
        try:
            yield CertifiedDone(first, model_certificates(task.jobs, task.cert_key, detector, split, task.certify,
                                                          device))
        except Exception as exc:
            yield StepFailed(first, f"certify failed: {type(exc).__name__}: {exc}", _trace(exc))


def _worst_case(group: WorstCase, detector: Detector, split: Split, scores: dict[str, np.ndarray],
                images: AdversarialImages, device: torch.device) -> WorstDone:
    start = time.perf_counter()
    try:
        result = model_worst_case(group, detector, split, scores, images, device)
    except Exception as exc:
        return WorstDone(group.job(), job_result(group.job(), "failed", seconds=time.perf_counter() - start,
                                                 error=f"{type(exc).__name__}: {exc}", config=group.config),
                         _trace(exc))
    result.seconds = time.perf_counter() - start
    return WorstDone(group.job(), result)


class Executor(Protocol):
    def run(self, tasks: Iterable[ModelTask], progress: ProgressFactory | None = None) -> Iterator[Event]: ...


class SerialExecutor:
    """Every task in this process, one after the other (torch uses the cores)."""

    def run(self, tasks: Iterable[ModelTask], progress: ProgressFactory | None = None) -> Iterator[Event]:
        for task in tasks:
            yield from run_task(task, progress)
