"""Runs a grid: one task per trained model, handed to an executor; the events it yields are stored here.

Crash safety: each job is written to the store in its own transaction as its event arrives, and each
trained model is written atomically to the model cache, so a run killed at any point resumes where it
stopped. A job that raises (or whose scores are not finite) is stored as failed with its message (the
traceback goes to ``failures.log``); the grid goes on.

Two runs on one folder: a model's work is claimed in the store (``claims``) just before it starts, and
what another run finished meanwhile is read again then, so no job is computed twice; a run whose
remaining tasks are all claimed by another live run waits for them. ``stop()`` turning true (the CLI's
first Ctrl-C) ends the run once the steps in flight are stored.
"""

from __future__ import annotations

import dataclasses
import itertools
import sqlite3
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from robust_ad_bench.benchmark.execution.claims import Claims
from robust_ad_bench.benchmark.execution.executors import Executor, make_executor
from robust_ad_bench.benchmark.execution.step_costs import PlannedStep, event_step, parallelism, planned_steps
from robust_ad_bench.benchmark.execution.tasks import (
    CertifiedDone,
    ChecksDone,
    Event,
    JobDone,
    ModelDone,
    ModelTask,
    StepFailed,
    Trained,
    WorstDone,
)
from robust_ad_bench.benchmark.execution.transfer import TransferSummary, run_transfer
from robust_ad_bench.benchmark.grid.config import GridConfig, expand_grid
from robust_ad_bench.benchmark.grid.jobs import Job, certificate_key, check_key, worst_case_groups
from robust_ad_bench.benchmark.grid.runtime import ensure_writable, resolve_device
from robust_ad_bench.benchmark.results.store import Store, is_locked
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
    by_other: int = 0  # finished by another run on the same folder while this one ran
    left: int = 0  # not computed (the run was stopped)
    interrupted: bool = False
    transfer: TransferSummary | None = None  # the transfer matrix and galleries, after the grid


class Hooks:
    """Progress callbacks (the CLI drives rich progress bars through them)."""

    def start(self, total: int) -> None: ...
    def job_done(self, job: Job, ok: bool) -> None: ...
    def training(self, job: Job) -> Callable[[int, int, str], None] | None:
        return None
    def waiting(self, holder: str) -> None: ...  # every task left is claimed by another run
    def store_busy(self, error: str) -> None: ...  # a write waits for a store another process locks
    # the steps (trainings, jobs, worst cases, checks, certificates) the run will do, the step durations stored
    # in its folder, its workers and their torch threads: for an estimate of the time left
    def plan(self, steps: list[PlannedStep], stored: pd.DataFrame, workers: int, threads: int) -> None: ...
    def step_done(self, kind: str, key: str, seconds: float | None) -> None: ...  # None: failed or only loaded
    def model_done(self, train_key: str) -> None: ...  # the model's steps not done by now will not run


class Runner:
    def __init__(self, cfg: GridConfig, hooks: Hooks | None = None, executor: Executor | None = None) -> None:
        self.cfg = cfg
        self.hooks = hooks or Hooks()
        self.device = resolve_device(cfg.device)
        self.jobs = expand_grid(cfg)  # validates every name and parameter before anything runs
        self.out = Path(cfg.out)
        self.executor = executor or make_executor(cfg.execution)
        self.planned: dict[tuple[str, str], PlannedStep] = {}  # the run's steps, by (kind, key)

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
            worst = [w for w in worst_case_groups(jobs, checks) if w.key not in auroc]
            # a checked model's worst cases use its checks' images: missing ones run the checks again
            pending_checks = checks if checks and (worst or not store.has_checks(checks)) else None
            task = ModelTask(
                jobs=jobs, pending=[job for job in jobs if job.key not in auroc],
                known={job.key: auroc[job.key] for job in jobs if job.key in auroc},
                check_key=pending_checks,
                cert_key=certs if certs and not store.has_certified(certs) else None,
                checks=self.cfg.checks, certify=self.cfg.certify, models=self.out / "models", device=str(self.device),
                worst=worst, adversarial=self.out / "adversarial")
            task.scores = stored_scores(store, needed_scores(task), auroc)
            if task.pending or task.check_key or task.cert_key or task.worst:
                tasks.append(task)
        # Stochastic detectors (attacked with EOT: the costliest steps by far) start first, so that on a
        # parallel executor the grid ends with short steps and no worker waits for one long tail. Results
        # do not depend on the order (every step seeds itself from its key).
        return sorted(tasks, key=lambda task: not METHODS.get(task.first.method).stochastic)

    def run(self, stop: Callable[[], bool] | None = None) -> RunSummary:
        ensure_writable(self.out)
        summary = RunSummary(total=len(self.jobs))
        execution = self.cfg.execution
        with Store(self.out, timeout=execution.store_timeout) as store, \
                Claims(store.path, execution.lease_seconds, execution.store_timeout) as claims:
            tasks = self.tasks(store)
            pending = sum(len(task.pending) for task in tasks)
            summary.skipped, summary.left = len(self.jobs) - pending, pending
            self.hooks.start(pending)
            self.planned = {s.id: s for s in planned_steps(tasks, self.out / "models")}
            self.hooks.plan(list(self.planned.values()), store.step_times(), *parallelism(execution))
            if tasks:  # nothing left: no worker process is started (a rerun of a finished grid takes seconds)
                for event in self.executor.run(self.claimed(tasks, store, claims, summary), self.hooks.training,
                                               stop):
                    self.write(self.record, event, store, summary, claims)
            if not (stop and stop()):  # every split's models done: transfers and galleries (transfer.py)
                summary.transfer = run_transfer(self.jobs, store, self.out, self.device, stop)
            summary.interrupted = bool(stop and stop())
        return summary

    def claimed(self, tasks: list[ModelTask], store: Store, claims: Claims,
                summary: RunSummary) -> Iterator[ModelTask | None]:
        """The tasks, each claimed (and brought up to date) just before it starts; None while every task
        left is claimed by another live run."""
        waiting = list(tasks)
        while waiting:
            took = False
            for task in list(waiting):
                if not self.write(claims.claim, task.train_key, f"{task.first.method} {task.first.dataset}/"
                                  f"{task.first.normal_class} seed {task.first.seed}"):
                    continue
                waiting.remove(task)
                took = True
                fresh = self.refresh(task, store, summary)
                if fresh is None:
                    self.write(claims.release, task.train_key)
                    self.hooks.model_done(task.train_key)
                    continue
                yield fresh
            if waiting and not took:
                self.hooks.waiting(claims.holder(waiting[0].train_key))
                yield None

    def refresh(self, task: ModelTask, store: Store, summary: RunSummary) -> ModelTask | None:
        """``task`` less what another run stored since the grid was read (None: nothing left)."""
        done = store.results(status="ok", keys=[job.key for job in task.jobs] + [w.key for w in task.worst])
        stored = dict(zip(done["key"], done["auroc"]))
        known = {job.key: stored[job.key] for job in task.jobs if job.key in stored}
        for job in task.pending:
            if job.key in known:
                summary.by_other += 1
                summary.left -= 1
                self.hooks.job_done(job, True)
        worst = [w for w in task.worst if w.key not in stored]
        checks = task.check_key if task.check_key and (worst or not store.has_checks(task.check_key)) else None
        fresh = dataclasses.replace(
            task, pending=[job for job in task.jobs if job.key not in known], known=known, worst=worst,
            check_key=checks,
            cert_key=task.cert_key if task.cert_key and not store.has_certified(task.cert_key) else None)
        fresh.scores = stored_scores(store, needed_scores(fresh), known, dict(task.scores))
        return fresh if fresh.pending or fresh.check_key or fresh.cert_key or fresh.worst else None

    def write(self, fn: Callable, *args: object) -> object:
        """Call ``fn`` (a store write); while another process keeps the store locked past its busy
        timeout, say so and try again, so that nothing computed is lost."""
        while True:
            try:
                return fn(*args)
            except sqlite3.OperationalError as exc:
                if not is_locked(exc):
                    raise
                self.hooks.store_busy(str(exc))
                time.sleep(1.0)

    def record(self, event: Event, store: Store, summary: RunSummary, claims: Claims | None = None) -> None:
        """Store one event (the driver is the only writer of the store), and how long its step took."""
        timed = event_step(event)
        if timed and timed[3] and timed[2] > 0 and timed[:2] in self.planned:  # first: a retried write repeats it
            workers, threads = parallelism(self.cfg.execution)
            store.put_step_time(self.planned[timed[:2]].timing(timed[2], threads, workers))
        if isinstance(event, ModelDone):
            if claims is not None:
                claims.release(event.job.train_key)
            self.hooks.model_done(event.job.train_key)
        elif isinstance(event, Trained):
            summary.trained += event.fitted
        elif isinstance(event, JobDone):
            store.put(event.result)
            summary.left -= 1
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
            for result in event.worst:
                store.put(result)
                if result.status == "ok":
                    summary.worst += 1
                else:
                    summary.failed.append((event.job, f"worst case: {result.error}"))
            if event.error:  # stored as a failed check (flagged); reported, and the grid goes on
                self.log_failure(event.job, event.traceback)
                summary.failed.append((event.job, event.error))
        elif isinstance(event, CertifiedDone):
            store.put_certified(event.rows)
            summary.certified += 1
        elif isinstance(event, StepFailed):
            self.log_failure(event.job, event.traceback)
            summary.failed.append((event.job, event.message))
        if timed:
            self.hooks.step_done(timed[0], timed[1], timed[2] if timed[3] else None)

    def log_failure(self, job: Job, trace: str) -> None:
        """Full tracebacks go to a log file in the output folder; the store keeps the one-line message."""
        with open(self.out / "failures.log", "a") as log:
            log.write(f"== {job.method} {job.dataset}/{job.normal_class} seed {job.seed} "
                      f"{job.attack} eps {job.eps:g} ({job.key})\n")
            log.write(trace)


def needed_scores(task: ModelTask) -> set[str]:
    """Keys of the jobs whose stored test scores ``task`` needs: every job's for its checks, else those its
    worst cases combine."""
    if task.check_key:
        return {j.key for j in task.jobs}
    return {j.key for w in task.worst for j in w.members}


def stored_scores(store: Store, keys: set[str], known: dict[str, float] | set[str],
                  scores: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """``scores`` plus the stored test scores of the finished (``known``) jobs of ``keys``."""
    scores = scores if scores is not None else {}
    for key in {k for k in keys if k in known and k not in scores}:
        found = store.scores(key)
        if found is not None:
            scores[key] = found[1]
    return scores
