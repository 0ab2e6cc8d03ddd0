"""How a grid runs (never what it computes: nothing here is part of a key).

The YAML section ``execution:`` and the ``run`` flags ``--executor``, ``--workers``, ``--threads``,
``--ray-address``, ``--job-timeout`` and ``--retries`` fill one ``ExecutionConfig``.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field

from robust_ad_bench.core.errors import BenchError, unknown_choice

EXECUTORS = ("serial", "local", "ray")
RESOURCE_NAMES = ("cpus", "gpus")


@dataclass
class ExecutionConfig:
    # serial: this process; local: a pool of worker processes on this machine; ray: Ray tasks on a local
    # cluster started for the run, or on the cluster at ``ray_address``
    executor: str = "serial"
    workers: int | None = None  # local: worker processes (default: one per core); ray: CPUs of the local cluster
    threads: int | None = None  # torch threads per worker (default: cores // workers; ray: the job's cpus)
    ray_address: str | None = None  # an existing Ray cluster ("auto", "ray://host:10001"); None: start one
    job_timeout: float | None = None  # seconds one step (a training, a job, checks, certificates) may run
    retries: int = 1  # how many times a step is run again after its worker process died
    cpus_per_job: float = 1.0  # Ray resources of each step
    gpus_per_job: float = 0.0
    resources: dict[str, dict[str, float]] = field(default_factory=dict)  # per method: {cpus: 2, gpus: 1}
    lease_seconds: float = 60.0  # a claim not renewed for this long is free (its run died elsewhere)
    store_timeout: float = 30.0  # seconds a store write waits for another process's lock before saying so

    def __post_init__(self) -> None:
        if self.executor not in EXECUTORS:
            raise unknown_choice("executor", self.executor, EXECUTORS)
        for name in ("workers", "threads"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise BenchError(f"execution.{name} must be an integer >= 1, got {value!r}")
        if self.job_timeout is not None and not (isinstance(self.job_timeout, (int, float)) and self.job_timeout > 0):
            raise BenchError(f"job_timeout must be a number of seconds > 0, got {self.job_timeout!r}")
        if isinstance(self.retries, bool) or not isinstance(self.retries, int) or self.retries < 0:
            raise BenchError(f"retries must be an integer >= 0, got {self.retries!r}")
        for method, res in self.resources.items():
            if not isinstance(res, dict):
                raise BenchError(f"execution.resources.{method} must be a mapping like {{cpus: 1, gpus: 0}}")
            for name in res:
                if name not in RESOURCE_NAMES:
                    raise unknown_choice(f"resource of method '{method}'", name, RESOURCE_NAMES)
        for method in (None, *self.resources):
            cpus, gpus = self.job_resources(method)
            if cpus <= 0 or gpus < 0:
                raise BenchError(f"a job needs cpus > 0 and gpus >= 0, got cpus {cpus}, gpus {gpus}"
                                 + (f" for method '{method}'" if method else ""))
        for name in ("lease_seconds", "store_timeout"):
            if not getattr(self, name) > 0:
                raise BenchError(f"execution.{name} must be > 0, got {getattr(self, name)!r}")

    def job_resources(self, method: str | None) -> tuple[float, float]:
        """(cpus, gpus) of one step of ``method`` on Ray."""
        res = self.resources.get(method, {}) if method else {}
        return float(res.get("cpus", self.cpus_per_job)), float(res.get("gpus", self.gpus_per_job))

    def local_workers(self) -> int:
        return self.workers or cpu_count()

    def worker_threads(self, method: str | None = None) -> int:
        """Torch threads of one worker: given, or the cores split between the workers (local), or the
        job's CPUs (ray), so that workers do not oversubscribe the cores."""
        if self.threads:
            return self.threads
        if self.executor == "ray":
            return max(1, math.ceil(self.job_resources(method)[0]))
        if self.executor == "local":
            return max(1, cpu_count() // self.local_workers())
        return cpu_count()


def default_executor() -> str:
    """The executor of ``run`` and ``reproduce`` when neither a flag nor the config names one: a worker
    process per core (threads split between them) on a machine with more than one core, else this process.
    Results do not depend on it at equal threads per worker (every step seeds itself from its key)."""
    return "local" if cpu_count() > 1 else "serial"


def cpu_count() -> int:
    """The cores this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1
