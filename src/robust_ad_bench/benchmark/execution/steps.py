"""Running one step of a model's work, wherever it runs (the driver, a worker process, a Ray worker).

A step touches no store. It gets its model from this process's memo (the last model it used), from a
shipped state dict, or from the model cache folder (training it if the cache has none), and ends with
one event. Each job, the checks and the certificates seed torch from their own key, so a step gives the
same numbers in any process that runs it with the same torch thread count.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import signal
import threading
import time
import traceback
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

import torch

from robust_ad_bench.benchmark.evaluation.scoring import attack_job, check_rows, job_result, model_certificates
from robust_ad_bench.benchmark.evaluation.verification import model_checks, model_worst_case
from robust_ad_bench.benchmark.execution.model_cache import ModelCache
from robust_ad_bench.benchmark.execution.tasks import (
    CertifiedDone,
    ChecksDone,
    JobDone,
    ModelTask,
    Step,
    StepFailed,
    StepResult,
    Trained,
    WorstDone,
)
from robust_ad_bench.benchmark.grid.runtime import resolve_device
from robust_ad_bench.benchmark.protocol.checks import ERROR, CheckResult
from robust_ad_bench.benchmark.protocol.worst_case import AdversarialImages
from robust_ad_bench.core.dataset import Split
from robust_ad_bench.core.detector import Detector, ProgressFn
from robust_ad_bench.core.registry import load_plugin_file, loaded_plugin_files
from robust_ad_bench.datasets.protocols import make_split

MEMO_SIZE = 1  # trained models a process keeps between steps (the next step is most often the same model's)
_memo: OrderedDict[tuple[str, str], Detector] = OrderedDict()  # (cache folder, train key) -> model
_prepared: dict[str, Any] = {}


def trace(exc: BaseException) -> str:
    return "".join(traceback.format_exception(exc))


def prepare_worker(threads: int | None, plugins: Sequence[str] = ()) -> None:
    """Make this process ready to run steps: torch threads, the driver's plugin files, and Ctrl-C left to
    the driver (it stops the grid cleanly; a worker must not die of the terminal's SIGINT)."""
    if threads and _prepared.get("threads") != threads:
        torch.set_num_threads(threads)
        _prepared["threads"] = threads
    for path in plugins:
        if path not in loaded_plugin_files():
            load_plugin_file(path)
    if "sigint" not in _prepared and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        _prepared["sigint"] = True


def release_free_memory() -> None:
    """Give the memory the last step freed back to the system. glibc keeps freed heap pages resident (a
    PGD on textures left 370 MB so in one measurement), so without this every process ratchets up to its
    largest step's peak and keeps it while other processes or later steps need the memory."""
    gc.collect()
    with contextlib.suppress(AttributeError, OSError):  # not glibc
        ctypes.CDLL(None).malloc_trim(0)


def _remember(key: tuple[str, str], detector: Detector) -> None:
    _memo[key] = detector
    _memo.move_to_end(key)
    while len(_memo) > MEMO_SIZE:
        _memo.popitem(last=False)


def forget_models() -> None:
    _memo.clear()


def model_for(task: ModelTask, state: dict[str, torch.Tensor] | None = None,
              progress: Callable[[], ProgressFn | None] = lambda: None) -> tuple[Detector, Split, bool]:
    """(detector, split, fitted) of ``task``: from this process's memo, a shipped ``state``, or the model
    cache (trained now when it holds none, or when the shipped or cached state does not load)."""
    first = task.first
    split = make_split(first.model.split)
    memo_key = (str(task.models), task.train_key)
    detector = _memo.get(memo_key)
    if detector is not None:
        return detector, split, False
    cache = ModelCache(task.models, resolve_device(task.device))
    detector, fitted = cache.get(first.model, split, progress, state=state)
    _remember(memo_key, detector)
    return detector, split, fitted


def run_step(step: Step, state: dict[str, torch.Tensor] | None = None, ship: bool = False,
             progress: Callable[[], ProgressFn | None] = lambda: None) -> StepResult:
    """Run ``step``; returns its event and, for a training with ``ship``, the model's state dict (on the
    CPU) for the driver to cache and send to the model's other steps."""
    task, first = step.task, step.task.first
    start = time.perf_counter()
    if step.kind == "train":
        try:
            detector, _, fitted = model_for(task, state, progress)
        except Exception as exc:
            return StepFailed(first, f"training failed: {type(exc).__name__}: {exc}", trace(exc)), None
        shipped = {k: v.detach().cpu() for k, v in detector.state_dict().items()} if ship else None
        return Trained(first, fitted, time.perf_counter() - start), shipped
    try:
        detector, split, _ = model_for(task, state)
    except Exception as exc:  # the model was trained by an earlier step: this is unexpected
        message = f"could not load the trained model: {type(exc).__name__}: {exc}"
        if step.kind == "job":
            return JobDone(step.job, job_result(step.job, "failed", error=message), trace(exc)), None
        if step.kind == "worst":
            return worst_failed(step, message, trace(exc)), None
        return StepFailed(first, f"{step.kind} failed: {message}", trace(exc)), None
    device = resolve_device(task.device)
    if step.kind == "job":
        job = step.job
        try:
            result, x_adv = attack_job(job, detector, split, device)
        except Exception as exc:
            return JobDone(job, job_result(job, "failed", seconds=time.perf_counter() - start,
                                           error=f"{type(exc).__name__}: {exc}"), trace(exc)), None
        result.seconds = time.perf_counter() - start
        if job.norm != "none":  # kept: worst cases re-score them (stochastic), transfer scores them on other models
            with contextlib.suppress(OSError):  # not kept: the worst case attacks again from the job's seed
                AdversarialImages(task.adversarial).save(job.key, split.test.to(device), x_adv, job.eps)
        return JobDone(job, result), None
    if step.kind == "worst":
        try:
            result = model_worst_case(step.group, detector, split, step.scores or {},
                                      AdversarialImages(task.adversarial), device)
        except Exception as exc:
            return worst_failed(step, f"{type(exc).__name__}: {exc}", trace(exc), time.perf_counter() - start), None
        result.seconds = time.perf_counter() - start
        return WorstDone(step.group.job(), result), None
    try:
        if step.kind == "checks":
            rows, worst = model_checks(task.jobs, task.check_key, step.scores or {}, detector, split, task.checks,
                                       device, AdversarialImages(task.adversarial), task.worst)
            return ChecksDone(first, rows, worst=worst, seconds=time.perf_counter() - start), None
        rows = model_certificates(task.jobs, task.cert_key, detector, split, task.certify, device)
        return CertifiedDone(first, rows, time.perf_counter() - start), None
    except Exception as exc:  # reported, and the grid goes on
        if step.kind == "checks":
            return checks_failed(step, f"checks failed: {type(exc).__name__}: {exc}", trace(exc)), None
        return StepFailed(first, f"certify failed: {type(exc).__name__}: {exc}", trace(exc)), None


def worst_failed(step: Step, message: str, trace_text: str = "", seconds: float = 0.0) -> WorstDone:
    """A worst case that could not be computed, stored as a failed row of its own."""
    job = step.group.job()
    return WorstDone(job, job_result(job, "failed", seconds=seconds, error=message, config=step.group.config),
                     trace_text)


def checks_failed(step: Step, message: str, trace_text: str = "") -> ChecksDone:
    """Checks that raised, timed out or lost their worker: stored as one failed check (so the leaderboard
    flags the model) that says ``message``."""
    task = step.task
    rows = check_rows(task.jobs, task.check_key, [CheckResult("*", f"{ERROR}:checks", False, detail=message)])
    worst = [job_result(group.job(), "failed", error=f"checks failed: {message}", config=group.config)
             for group in task.worst]  # computed with the checks: failed with them, never silently missing
    return ChecksDone(task.first, rows, error=message, traceback=trace_text, worst=worst)
