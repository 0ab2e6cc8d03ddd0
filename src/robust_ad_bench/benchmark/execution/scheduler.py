"""The driver's side of every executor: it runs each model's steps in order on a backend and turns what comes
back into events.

A model's training runs first; its jobs are then independent steps (any free worker takes one, and the
model comes from the worker's memory, the model cache or a shipped state dict, never from a retraining);
a per-image worst case follows once the jobs it combines succeeded; its checks and certificates
follow once all its jobs succeeded. A new task is taken from the task source
only when a worker would otherwise sit idle, so a task is claimed just before it starts. The backend runs
steps: in this process (serial), in worker processes (local) or as Ray tasks (ray).

Faults: a step past ``timeout`` is stopped (its worker killed) and recorded failed with "timed out after
N s"; a step whose worker died is run again up to ``retries`` times, then recorded failed. When ``stop()``
turns true (Ctrl-C) no new step starts, and the run ends once the steps in flight are stored.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from robust_ad_bench.benchmark.evaluation.scoring import job_result
from robust_ad_bench.benchmark.execution.steps import checks_failed, worst_failed
from robust_ad_bench.benchmark.execution.tasks import (
    Event,
    JobDone,
    ModelDone,
    ModelTask,
    Step,
    StepFailed,
)
from robust_ad_bench.core.detector import ProgressFn
from robust_ad_bench.core.errors import BenchError

POLL_SECONDS = 0.5  # how often the driver looks again when it waits for other runs or for a timeout
ProgressFactory = Callable[[Any], ProgressFn | None]  # a training progress callback for a model's first job


@dataclass
class Outcome:
    """What came back from a step: its event, or ``died`` (why its worker died) when there is none."""

    event: Event | None
    model: Any = None  # after a training: what the model's other steps get (a shipped state) or None
    died: str = ""


class Backend(Protocol):
    """Runs steps somewhere. ``submit`` returns a handle; ``wait`` returns finished (handle, outcome)."""

    can_kill: bool  # whether a running step can be stopped (needed for timeouts)

    def free(self, step: Step) -> bool: ...
    def has_room(self) -> bool: ...  # whether a worker is idle (a new task's training could start)
    def submit(self, step: Step, model: Any, progress: ProgressFactory | None) -> Any: ...
    def wait(self, timeout: float) -> list[tuple[Any, Outcome]]: ...
    def kill(self, handle: Any) -> None: ...
    def close(self, kill: bool) -> None: ...


@dataclass
class _Model:
    task: ModelTask
    ready: deque[Step] = field(default_factory=deque)
    running: int = 0
    trained: bool = False
    model: Any = None
    auroc: dict[str, float] = field(default_factory=dict)
    scores: dict[str, np.ndarray] = field(default_factory=dict)  # test scores of its jobs (for worst cases)
    worst_started: set[str] = field(default_factory=set)  # keys of the worst cases queued
    failed: bool = False  # a job failed: no checks or certificates
    finished: bool = False


@dataclass
class _Running:
    step: Step
    model: _Model
    started: float
    attempt: int = 0


class StepScheduler:
    """An executor (``run(tasks, progress, stop)``) over a backend."""

    def __init__(self, make_backend: Callable[[], Backend], timeout: float | None = None, retries: int = 0) -> None:
        self.make_backend = make_backend
        self.timeout = timeout
        self.retries = retries

    def run(self, tasks: Iterable[ModelTask | None], progress: ProgressFactory | None = None,
            stop: Callable[[], bool] | None = None) -> Iterator[Event]:
        backend = self.make_backend()
        if self.timeout is not None and not backend.can_kill:
            raise BenchError("this executor cannot stop a running step: a job timeout needs worker processes")
        source = iter(tasks)
        models: list[_Model] = []
        running: dict[Any, _Running] = {}
        exhausted = clean = False
        try:
            while True:
                stopping = stop is not None and stop()
                waiting = False  # the task source has nothing to start right now
                if not stopping:
                    exhausted, waiting = self._fill(backend, source, exhausted, models, running, progress)
                if not running:
                    if stopping or (exhausted and not any(m.ready for m in models)):
                        break
                    if waiting:
                        time.sleep(POLL_SECONDS)
                    continue
                for handle, outcome in backend.wait(self._wait_time(running)):
                    yield from self._finished(backend, running.pop(handle), outcome, running, stopping)
                yield from self._expire(backend, running)
                for model in [m for m in models if self._done(m)]:
                    models.remove(model)
                    model.finished = True
                    yield ModelDone(model.task.first)
            clean = True
        finally:
            backend.close(kill=not clean)

    # -- starting steps ------------------------------------------------------------------------------
    def _fill(self, backend: Backend, source: Iterator[ModelTask | None], exhausted: bool, models: list[_Model],
              running: dict[Any, _Running], progress: ProgressFactory | None) -> tuple[bool, bool]:
        """Start every ready step a worker can take; take new tasks while workers would sit idle."""
        while True:
            started = False
            for model in models:
                for step in list(model.ready):
                    if backend.free(step):
                        model.ready.remove(step)
                        self._submit(backend, step, model, running, progress)
                        started = True
                        break
            if started:
                continue
            if exhausted or any(m.ready for m in models) or not backend.has_room():
                return exhausted, False
            task = next(source, _END)
            if task is _END:
                return True, False
            if task is None:
                return False, True
            model = _Model(task)
            model.auroc.update(task.known)
            model.scores.update(task.scores)
            model.ready.append(Step("train", task))
            models.append(model)

    def _submit(self, backend: Backend, step: Step, model: _Model, running: dict[Any, _Running],
                progress: ProgressFactory | None, attempt: int = 0) -> None:
        handle = backend.submit(step, model.model, progress)
        running[handle] = _Running(step, model, time.monotonic(), attempt)
        model.running += 1

    def _wait_time(self, running: dict[Any, _Running]) -> float:
        if self.timeout is None:
            return POLL_SECONDS
        now = time.monotonic()
        left = min(r.started + self.timeout - now for r in running.values())
        return max(0.0, min(POLL_SECONDS, left))

    # -- results -------------------------------------------------------------------------------------
    def _finished(self, backend: Backend, run: _Running, outcome: Outcome, running: dict[Any, _Running],
                  stopping: bool) -> Iterator[Event]:
        model, step = run.model, run.step
        model.running -= 1
        if outcome.event is None:  # the worker died
            if stopping:  # nothing is recorded: the next run computes it
                return
            if run.attempt < self.retries:
                self._submit(backend, step, model, running, None, run.attempt + 1)
                return
            yield from self._fail(step, model, f"{_what(step)}worker died ({outcome.died}); "
                                               f"tried {run.attempt + 1} time(s)")
            return
        event = outcome.event
        if step.kind == "train":
            if isinstance(event, StepFailed):
                yield from self._fail(step, model, event.message, event.traceback)
                return
            model.trained, model.model = True, outcome.model
            model.ready.extend(Step("job", model.task, job=job) for job in model.task.pending)
            yield event
        elif isinstance(event, JobDone):
            if event.result.status == "ok":
                model.auroc[event.job.key] = event.result.metrics["auroc"]
                if event.result.scores is not None:
                    model.scores[event.job.key] = event.result.scores
            else:
                model.failed = True
            yield event
        else:
            yield event
        if step.kind in ("train", "job"):
            self._after_jobs(model)

    def _after_jobs(self, model: _Model) -> None:
        """A worst case can run once the jobs it combines have their scores; the checks and certificates
        once every job of the model has its AUROC."""
        task = model.task
        for group in [] if task.check_key else task.worst:  # a checked model's: computed by its checks step
            if group.key not in model.worst_started and all(job.key in model.scores for job in group.members):
                model.worst_started.add(group.key)
                model.ready.append(Step("worst", task, group=group,
                                        scores={job.key: model.scores[job.key] for job in group.members}))
        if model.failed or any(s.kind == "job" for s in model.ready) or any(
                job.key not in model.auroc for job in task.jobs):
            return
        if any(s.kind in ("checks", "certify") for s in model.ready):
            return
        figures = {(job.attack, job.eps): model.auroc[job.key] for job in task.jobs}
        if task.check_key:
            scores = {job.key: model.scores[job.key] for job in task.jobs if job.key in model.scores}
            model.ready.append(Step("checks", task, figures=figures, scores=scores))
        if task.cert_key:
            model.ready.append(Step("certify", task))

    def _fail(self, step: Step, model: _Model, message: str, trace: str = "") -> Iterator[Event]:
        """Events for a step that ended without a result (raised in training, timed out, worker died)."""
        task = model.task
        if step.kind == "train":
            model.trained, model.failed = True, True
            if not task.pending:  # only checks or certificates were left: say why they did not run
                yield StepFailed(task.first, message, trace)
            for i, job in enumerate(task.pending):  # the traceback is logged once, with the first job
                yield JobDone(job, job_result(job, "failed", error=message), trace if i == 0 else "")
        elif step.kind == "job":
            model.failed = True
            yield JobDone(step.job, job_result(step.job, "failed", error=message), trace)
        elif step.kind == "worst":
            yield worst_failed(step, message, trace)
        elif step.kind == "checks":
            yield checks_failed(step, message, trace)
        else:
            yield StepFailed(task.first, message, trace)

    def _expire(self, backend: Backend, running: dict[Any, _Running]) -> Iterator[Event]:
        if self.timeout is None:
            return
        now = time.monotonic()
        for handle, run in list(running.items()):
            if now - run.started >= self.timeout:
                backend.kill(handle)
                del running[handle]
                run.model.running -= 1
                yield from self._fail(run.step, run.model, f"{_what(run.step)}timed out after {self.timeout:g} s")

    @staticmethod
    def _done(model: _Model) -> bool:
        return model.trained and not model.ready and not model.running


def _what(step: Step) -> str:
    """How a failure message of ``step`` begins ("" for a job: its failure is the job's own)."""
    return {"train": "training ", "checks": "checks ", "certify": "certify "}.get(step.kind, "")


_END = object()
