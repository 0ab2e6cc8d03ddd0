"""``--executor ray``: the steps of a grid as Ray tasks, on a local cluster started for the run or on an
existing one (``--ray-address``). Needs the optional extra: ``pip install -e ".[ray]"``.

Each step is one Ray task with the CPUs and GPUs of ``execution.resources`` (per method) or
``cpus_per_job``/``gpus_per_job``, and ``torch`` threads to match its CPUs, so workers do not oversubscribe
the cores. A model is trained once: the training task returns its state dict as a Ray object that the
model's job, check and certificate tasks take as an argument (so a remote node needs no shared folder);
the driver alone writes it to the model cache, and a model already cached is shipped from there instead
of being retrained. The driver submits only as many tasks as the cluster's resources run at once, so a
task starts when it is submitted and its timeout counts from then. A timed-out task is cancelled with
``force=True`` (its worker process exits); a task whose worker died is reported to the scheduler, which
submits it again (``--retries``) or records it failed.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

from robust_ad_bench.benchmark.execution.model_cache import ModelCache
from robust_ad_bench.benchmark.execution.scheduler import Outcome, ProgressFactory, StepScheduler
from robust_ad_bench.benchmark.execution.steps import prepare_worker, release_free_memory, run_step
from robust_ad_bench.benchmark.execution.tasks import Step, Trained
from robust_ad_bench.benchmark.grid.execution import ExecutionConfig, cpu_count
from robust_ad_bench.core.errors import BenchError
from robust_ad_bench.core.registry import loaded_plugin_files

RAY_MISSING = ('--executor ray needs Ray, an optional extra: pip install -e ".[ray]" (or pip install ray); '
               "--executor local runs on this machine's cores without it")


def import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise BenchError(RAY_MISSING) from None
    return ray


def ray_train(step: Step, cached: Any, threads: int, plugins: list[str]) -> tuple[Any, Any]:
    """A Ray task: the model of ``step`` from its cached state (if it loads) or trained now; returns the
    event and the state dict to ship to the model's other tasks."""
    prepare_worker(threads, plugins)
    try:
        return run_step(step, state=cached, ship=True)
    finally:
        release_free_memory()


def ray_step(step: Step, state: Any, threads: int, plugins: list[str]) -> Any:
    """A Ray task: one job, the checks or the certificates of a model whose state dict is ``state``."""
    prepare_worker(threads, plugins)
    try:
        return run_step(step, state=state)[0]
    finally:
        release_free_memory()


@dataclasses.dataclass
class _Task:
    step: Step
    ref: Any  # the event's object ref
    state: Any = None  # train: the object ref of the shipped state
    cpus: float = 0.0
    gpus: float = 0.0


class RayBackend:
    can_kill = True

    def __init__(self, cfg: ExecutionConfig) -> None:
        self.ray = ray = import_ray()
        self.cfg = cfg
        self.plugins = loaded_plugin_files()
        self.started = not ray.is_initialized()
        if self.started:
            options: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False,
                                       "logging_level": logging.ERROR}
            try:
                if cfg.ray_address:
                    ray.init(address=cfg.ray_address, **options)
                else:
                    ray.init(num_cpus=cfg.workers or cpu_count(), **options)
            except Exception as exc:  # e.g. no cluster at that address
                raise BenchError(f"cannot start or reach the Ray cluster"
                                 f"{f' at {cfg.ray_address!r}' if cfg.ray_address else ''}: {exc}") from exc
        total = ray.cluster_resources()
        self.total = (float(total.get("CPU", 0)), float(total.get("GPU", 0)))
        self.used = [0.0, 0.0]
        self.running: dict[Any, _Task] = {}
        self.train_fn = ray.remote(num_returns=2, max_retries=0)(ray_train)
        self.step_fn = ray.remote(max_retries=0)(ray_step)

    def _needs(self, step: Step) -> tuple[float, float]:
        cpus, gpus = self.cfg.job_resources(step.task.first.method)
        if cpus > self.total[0] or gpus > self.total[1]:
            raise BenchError(f"a step of {step.task.first.method} needs {cpus:g} CPUs and {gpus:g} GPUs; the Ray "
                             f"cluster has {self.total[0]:g} CPUs and {self.total[1]:g} GPUs")
        return cpus, gpus

    def free(self, step: Step) -> bool:
        cpus, gpus = self._needs(step)
        return self.used[0] + cpus <= self.total[0] + 1e-9 and self.used[1] + gpus <= self.total[1] + 1e-9

    def has_room(self) -> bool:
        return self.used[0] + self.cfg.cpus_per_job <= self.total[0] + 1e-9

    def submit(self, step: Step, model: Any, progress: ProgressFactory | None) -> Any:
        cpus, gpus = self._needs(step)
        method = step.task.first.method
        remote = dataclasses.replace(step, task=dataclasses.replace(step.task, models=None,
                                                                    device="cuda" if gpus > 0 else "cpu"))
        options = {"num_cpus": cpus, "num_gpus": gpus}
        args = (self.cfg.worker_threads(method), self.plugins)
        if step.kind == "train":
            ref, state = self.train_fn.options(**options).remote(remote, self._cached(step), *args)
        else:
            ref, state = self.step_fn.options(**options).remote(remote, model, *args), None
        self.running[ref] = _Task(step, ref, state, cpus, gpus)
        self.used[0] += cpus
        self.used[1] += gpus
        return ref

    def _cached(self, step: Step) -> Any:
        """The model's cached state as a Ray object (None when the cache has none that loads)."""
        path = self._path(step)
        if path is None or not path.is_file():
            return None
        try:
            return self.ray.put(ModelCache.load(path))
        except Exception:  # corrupt: the training task trains it again
            path.unlink(missing_ok=True)
            return None

    @staticmethod
    def _path(step: Step) -> Path | None:
        folder = step.task.models
        return Path(folder) / f"{step.task.first.model.weights_key}.pt" if folder is not None else None

    def wait(self, timeout: float) -> list[tuple[Any, Outcome]]:
        if not self.running:
            return []
        refs = list(self.running)
        ready, _ = self.ray.wait(refs, num_returns=1, timeout=timeout)
        if ready:
            ready, _ = self.ray.wait(refs, num_returns=len(refs), timeout=0)
        done = []
        for ref in ready:
            task = self._release(ref)
            try:
                event = self.ray.get(ref)
            except self.ray.exceptions.RayError as exc:  # the worker died (or the cluster lost it)
                done.append((ref, Outcome(None, died=type(exc).__name__)))
                continue
            if isinstance(event, Trained) and event.fitted and (path := self._path(task.step)) is not None:
                ModelCache.save(self.ray.get(task.state), path)  # the driver alone writes the results folder
            done.append((ref, Outcome(event, model=task.state)))
        return done

    def _release(self, ref: Any) -> _Task:
        task = self.running.pop(ref)
        self.used[0] -= task.cpus
        self.used[1] -= task.gpus
        return task

    def kill(self, handle: Any) -> None:
        self.ray.cancel(handle, force=True)
        self._release(handle)

    def close(self, kill: bool) -> None:
        for ref in list(self.running):
            self.ray.cancel(ref, force=True)
        self.running.clear()
        if self.started:
            self.ray.shutdown()


class RayExecutor(StepScheduler):
    def __init__(self, cfg: ExecutionConfig) -> None:
        import_ray()  # a clear error before anything runs
        super().__init__(lambda: RayBackend(cfg), cfg.job_timeout, cfg.retries)
