"""Runs a grid: one task per trained model, handed to an executor; the events it yields are stored here.

Crash safety: each job is written to the store in its own transaction as its event arrives, and each
trained model is written atomically to the model cache, so a run killed at any point resumes where it
stopped. A job that raises (or whose scores are not finite) is stored as failed with its message (the
traceback goes to ``failures.log``); the grid goes on.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from robust_ad_bench.benchmark.config import GridConfig, expand_grid
from robust_ad_bench.benchmark.executors import (
    CertifiedDone,
    ChecksDone,
    Event,
    Executor,
    JobDone,
    ModelTask,
    SerialExecutor,
    StepFailed,
    Trained,
    WorstDone,
)
from robust_ad_bench.benchmark.jobs import Job, certificate_key, check_key, worst_case_groups
from robust_ad_bench.benchmark.runtime import ensure_writable, resolve_device
from robust_ad_bench.benchmark.store import Store
from robust_ad_bench.core.registry import METHODS


@dataclass
class RunSummary:
    total: int = 0
    skipped: int = 0  # already in the store
    computed: int = 0
    trained: int = 0  # models fitted (not loaded from the cache)
    worst: int = 0  # per-image worst cases computed
    checked: int = 0  # models whose sanity checks ran
    certified: int = 0  # models certified by randomized smoothing
    failed: list[tuple[Job, str]] = field(default_factory=list)


class Hooks:
    """Progress callbacks (the CLI drives rich progress bars through them)."""

    def start(self, total: int) -> None: ...
    def job_done(self, job: Job, ok: bool) -> None: ...
    def training(self, job: Job) -> Callable[[int, int, str], None] | None:
        return None


class Runner:
    def __init__(self, cfg: GridConfig, hooks: Hooks | None = None, executor: Executor | None = None) -> None:
        self.cfg = cfg
        self.hooks = hooks or Hooks()
        self.device = resolve_device(cfg.device)
        self.jobs = expand_grid(cfg)  # validates every name and parameter before anything runs
        self.out = Path(cfg.out)
        self.executor = executor or SerialExecutor()

    def pending(self, store: Store) -> list[Job]:
        done = store.finished_keys()
        return [job for job in self.jobs if job.key not in done]

    def tasks(self, store: Store) -> list[ModelTask]:
        """One task per trained model with anything left to compute: jobs, checks or certificates."""
        finished = store.results(status="ok")
        auroc = dict(zip(finished["key"], finished["auroc"]))
        tasks = []
        for _, group in itertools.groupby(self.jobs, key=lambda j: j.train_key):
            jobs = list(group)
            checks = check_key(jobs, self.cfg.checks)
            certs = certificate_key(jobs, self.cfg.certify, METHODS.get(jobs[0].method).certifiable)
            worst = [w for w in worst_case_groups(jobs) if w.key not in auroc]
            known_scores = {}
            for key in {j.key for w in worst for j in w.jobs if j.key in auroc}:
                stored = store.scores(key)
                if stored is not None:
                    known_scores[key] = stored[1]
            task = ModelTask(
                jobs=jobs, pending=[job for job in jobs if job.key not in auroc],
                known={job.key: auroc[job.key] for job in jobs if job.key in auroc},
                check_key=checks if checks and not store.has_checks(checks) else None,
                cert_key=certs if certs and not store.has_certified(certs) else None,
                checks=self.cfg.checks, certify=self.cfg.certify, models=self.out / "models", device=str(self.device),
                worst=worst, scores=known_scores, adversarial=self.out / "adversarial")
            if task.pending or task.check_key or task.cert_key or task.worst:
                tasks.append(task)
        return tasks

    def run(self) -> RunSummary:
        ensure_writable(self.out)
        summary = RunSummary(total=len(self.jobs))
        with Store(self.out) as store:
            tasks = self.tasks(store)
            pending = sum(len(task.pending) for task in tasks)
            summary.skipped = len(self.jobs) - pending
            self.hooks.start(pending)
            for event in self.executor.run(tasks, self.hooks.training):
                self.record(event, store, summary)
        return summary

    def record(self, event: Event, store: Store, summary: RunSummary) -> None:
        """Store one event (the driver is the only writer of the store)."""
        if isinstance(event, Trained):
            summary.trained += event.fitted
        elif isinstance(event, JobDone):
            store.put(event.result)
            ok = event.result.status == "ok"
            if ok:
                summary.computed += 1
            else:
                summary.failed.append((event.job, event.result.error or ""))
            if event.traceback:
                self.log_failure(event.job, event.traceback)
            self.hooks.job_done(event.job, ok)
        elif isinstance(event, WorstDone):
            store.put(event.result)
            if event.result.status == "ok":
                summary.worst += 1
            else:
                summary.failed.append((event.job, f"worst case: {event.result.error}"))
            if event.traceback:
                self.log_failure(event.job, event.traceback)
        elif isinstance(event, ChecksDone):
            store.put_checks(event.rows)
            summary.checked += 1
        elif isinstance(event, CertifiedDone):
            store.put_certified(event.rows)
            summary.certified += 1
        elif isinstance(event, StepFailed):
            self.log_failure(event.job, event.traceback)
            summary.failed.append((event.job, event.message))

    def log_failure(self, job: Job, trace: str) -> None:
        """Full tracebacks go to a log file in the output folder; the store keeps the one-line message."""
        with open(self.out / "failures.log", "a") as log:
            log.write(f"== {job.method} {job.dataset}/{job.normal_class} seed {job.seed} "
                      f"{job.attack} eps {job.eps:g} ({job.key})\n")
            log.write(trace)
