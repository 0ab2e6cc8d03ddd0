"""``--executor local``: the steps of a grid in a pool of worker processes on this machine (no Ray needed).

Each worker is a fresh interpreter (``benchmark/execution/worker.py``, started like spawn: nothing forked, nothing
of the driver's main module re-run) with ``threads`` torch threads (by default the cores split between the
workers, so they do not oversubscribe them) that runs one step at a time and sends back its event. Workers
share the results folder's model cache: a model trained by one is loaded by the others, and a worker keeps
the last model it used, so the driver hands a step to the worker that already holds its model when it can.
A step past the timeout is stopped by killing its worker (a fresh one replaces it); a worker that dies is
reported to the scheduler, which runs its step again or records it failed.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any

from robust_ad_bench.benchmark.execution.scheduler import Outcome, ProgressFactory, StepScheduler
from robust_ad_bench.benchmark.execution.tasks import Step
from robust_ad_bench.benchmark.execution.worker import READY
from robust_ad_bench.core.registry import loaded_plugin_files

STOP_SECONDS = 10.0  # how long a worker asked to stop may take before it is killed


def _environment() -> dict[str, str]:
    """The driver's environment, with this copy of the package first on the path."""
    env = dict(os.environ, ROBUST_AD_BENCH_DRIVER_PID=str(os.getpid()))
    root = str(Path(__file__).resolve().parents[3])  # the folder that holds the robust_ad_bench package
    env["PYTHONPATH"] = os.pathsep.join([root, *filter(None, [env.get("PYTHONPATH")])])
    return env


class _Worker:
    def __init__(self, threads: int, plugins: list[str]) -> None:
        ours, theirs = socket.socketpair()
        with theirs:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "robust_ad_bench.benchmark.execution.worker", str(theirs.fileno()), str(threads),
                 *plugins], pass_fds=[theirs.fileno()], start_new_session=True, env=_environment())
        self.conn = Connection(ours.detach())
        self.handle: int | None = None  # the step it runs
        self.model: str | None = None  # train key of the model it holds
        self.ready = False

    def await_ready(self) -> None:
        """Block until the worker has imported everything (its start-up does not count against a step's
        timeout). A worker that dies starting up is reported by ``wait``."""
        if not self.ready:
            with contextlib.suppress(EOFError, OSError):
                self.ready = self.conn.recv() == READY

    def exit_reason(self) -> str:
        try:
            code = self.process.wait(STOP_SECONDS)
        except subprocess.TimeoutExpired:
            self.process.kill()
            code = self.process.wait()
        if code < 0:
            try:
                return f"killed by {signal.Signals(-code).name}"
            except ValueError:
                return f"killed by signal {-code}"
        return f"exit status {code}"

    def ask_to_stop(self, kill: bool) -> None:
        """Kill it, or ask it to exit once its current step (if any) is done."""
        if self.process.poll() is None:
            if kill:
                self.process.kill()
            else:
                try:
                    self.conn.send(None)
                except OSError:
                    self.process.kill()

    def stop(self, kill: bool) -> None:
        self.ask_to_stop(kill)
        self.exit_reason()
        self.conn.close()


class ProcessPool:
    """A backend of ``workers`` processes with ``threads`` torch threads each."""

    can_kill = True

    def __init__(self, workers: int, threads: int) -> None:
        self.threads = threads
        self.plugins = loaded_plugin_files()
        self.slots: list[_Worker] = [self._start() for _ in range(workers)]  # they start side by side
        self.count = 0

    def _start(self) -> _Worker:
        return _Worker(self.threads, self.plugins)

    def _idle(self) -> list[_Worker]:
        return [w for w in self.slots if w.handle is None]

    def free(self, step: Step) -> bool:
        return bool(self._idle())

    def has_room(self) -> bool:
        return bool(self._idle())

    def submit(self, step: Step, model: Any, progress: ProgressFactory | None) -> int:
        idle = self._idle()
        key = step.task.train_key
        worker = next((w for w in idle if w.model == key), idle[0])
        worker.await_ready()
        self.count += 1
        worker.handle, worker.model = self.count, key
        with contextlib.suppress(OSError):  # it died while idle: wait() reports it
            worker.conn.send(step)
        return self.count

    def wait(self, timeout: float) -> list[tuple[int, Outcome]]:
        busy = [w for w in self.slots if w.handle is not None]
        ready = wait([w.conn for w in busy], timeout)
        done = []
        for worker in busy:
            if worker.conn not in ready:
                continue
            handle = worker.handle
            try:
                outcome = Outcome(worker.conn.recv())
                worker.handle = None
            except (EOFError, OSError):  # no event: the process died
                outcome = Outcome(None, died=worker.exit_reason())
                self._replace(worker)
            done.append((handle, outcome))
        return done

    def _replace(self, worker: _Worker) -> None:
        """Stop a dead or killed worker and start its replacement (it warms up while others work)."""
        worker.stop(kill=True)
        self.slots[self.slots.index(worker)] = self._start()

    def kill(self, handle: int) -> None:
        for worker in self.slots:
            if worker.handle == handle:
                self._replace(worker)

    def close(self, kill: bool) -> None:
        for worker in self.slots:
            worker.ask_to_stop(kill)
        for worker in self.slots:  # they exit side by side
            worker.exit_reason()
            worker.conn.close()


class LocalExecutor(StepScheduler):
    """``--executor local``: ``workers`` processes with ``threads`` torch threads each."""

    def __init__(self, workers: int, threads: int, timeout: float | None = None, retries: int = 1) -> None:
        super().__init__(lambda: ProcessPool(workers, threads), timeout, retries)
        self.workers, self.threads = workers, threads
