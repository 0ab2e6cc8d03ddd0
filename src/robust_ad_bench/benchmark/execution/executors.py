"""Where the work of a grid runs. The unit of work is one trained model (``ModelTask``), run as steps (its
training, each job, each per-image worst case, its checks, its certificates; ``steps.run_step``) that
touch no store; the driver alone writes the events they yield, so workers never contend for the SQLite
file.

An executor turns tasks into a stream of events: ``run(tasks, progress, stop)``. The task iterable may
yield ``None`` for "nothing can start now" (every remaining task is claimed by another run): the executor
asks again a moment later. Three executors share one scheduler (``scheduler.StepScheduler``):

- ``serial`` (default): every step in this process, one after the other (torch uses the cores);
- ``local``: a pool of worker processes on this machine (``pool.ProcessPool``), the cores split between them;
- ``ray``: Ray tasks on a local or existing Ray cluster (``ray_executor``; the optional ``[ray]`` extra).

A job timeout needs a step that can be stopped: ``serial`` with ``job_timeout`` runs its steps in one child
process (a local pool of one worker with every core), because a step hung in the driver's own thread
cannot be stopped safely.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from functools import partial
from typing import Any, Protocol

import torch

from robust_ad_bench.benchmark.execution.scheduler import Outcome, ProgressFactory, StepScheduler
from robust_ad_bench.benchmark.execution.steps import forget_models, release_free_memory, run_step
from robust_ad_bench.benchmark.execution.tasks import Event, ModelTask, Step
from robust_ad_bench.benchmark.grid.execution import ExecutionConfig, cpu_count


class Executor(Protocol):
    def run(self, tasks: Iterable[ModelTask | None], progress: ProgressFactory | None = None,
            stop: Callable[[], bool] | None = None) -> Iterator[Event]: ...


class InlineBackend:
    """Runs each step in this process when the scheduler waits for it."""

    can_kill = False

    def __init__(self, threads: int | None = None) -> None:
        self.threads = threads
        self.queued: dict[int, tuple[Step, ProgressFactory | None]] = {}
        self.count = 0
        self.previous_threads = torch.get_num_threads()
        if threads:
            torch.set_num_threads(threads)

    def free(self, step: Step) -> bool:
        return not self.queued

    def has_room(self) -> bool:
        return not self.queued

    def submit(self, step: Step, model: Any, progress: ProgressFactory | None) -> int:
        self.count += 1
        self.queued[self.count] = (step, progress)
        return self.count

    def wait(self, timeout: float) -> list[tuple[int, Outcome]]:
        done = []
        for handle, (step, progress) in list(self.queued.items()):
            event, _ = run_step(step, progress=partial(progress, step.task.first) if progress else (lambda: None))
            release_free_memory()
            del self.queued[handle]
            done.append((handle, Outcome(event)))
        if not done:
            time.sleep(timeout)
        return done

    def kill(self, handle: int) -> None:
        raise NotImplementedError("an in-process step cannot be stopped")

    def close(self, kill: bool) -> None:
        self.queued.clear()
        forget_models()  # the last model stays in memory no longer than the run
        if self.threads:
            torch.set_num_threads(self.previous_threads)


class SerialExecutor(StepScheduler):
    """Every step in this process, one after the other (torch uses the cores, or ``threads``)."""

    def __init__(self, threads: int | None = None) -> None:
        super().__init__(lambda: InlineBackend(threads))


def make_executor(cfg: ExecutionConfig) -> Executor:
    """The executor ``cfg`` names (validated when the config was made)."""
    if cfg.executor == "ray":
        from robust_ad_bench.benchmark.execution.ray_executor import RayExecutor  # the optional extra

        return RayExecutor(cfg)
    from robust_ad_bench.benchmark.execution.pool import LocalExecutor

    if cfg.executor == "local":
        return LocalExecutor(cfg.local_workers(), cfg.worker_threads(), cfg.job_timeout, cfg.retries)
    if cfg.job_timeout is not None:  # serial, but in one child process that can be stopped
        return LocalExecutor(1, cfg.threads or cpu_count(), cfg.job_timeout, cfg.retries)
    return SerialExecutor(cfg.threads)
