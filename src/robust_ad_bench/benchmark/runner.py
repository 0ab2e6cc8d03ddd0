"""Runs a grid: groups jobs by trained model, trains or loads each model once, attacks, stores results.

Crash safety: each job is written to the store in its own transaction as it ends, and each trained model
is written atomically to the model cache, so a run killed at any point resumes where it stopped.
A job that raises (or whose scores are not finite) is stored as failed with its message; the grid goes on.
"""

from __future__ import annotations

import itertools
import os
import random
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from robust_ad_bench.benchmark import metrics
from robust_ad_bench.benchmark.certification import certify
from robust_ad_bench.benchmark.checks import CHECKS_VERSION, run_checks
from robust_ad_bench.benchmark.config import GridConfig, Job, content_key, expand_grid
from robust_ad_bench.benchmark.store import JobResult, Store
from robust_ad_bench.core.dataset import Split, TrainSet, seeded_generator, transductive_split
from robust_ad_bench.core.errors import BenchError
from robust_ad_bench.core.params import config_dict
from robust_ad_bench.core.registry import ATTACKS, DATASETS, METHODS
from robust_ad_bench.datasets.few_anomalies import hold_out_anomalies

SCORE_BATCH = 512
BOOTSTRAP_ROUNDS = 200  # 95 % CI of each job's AUROC, for single runs (the evaluation protocol)


@dataclass
class RunSummary:
    total: int = 0
    skipped: int = 0  # already in the store
    computed: int = 0
    trained: int = 0  # models fitted (not loaded from the cache)
    checked: int = 0  # models whose sanity checks ran
    certified: int = 0  # models certified by randomized smoothing
    failed: list[tuple[Job, str]] = field(default_factory=list)


class Hooks:
    """Progress callbacks (the CLI drives rich progress bars through them)."""

    def start(self, total: int) -> None: ...
    def job_done(self, job: Job, ok: bool) -> None: ...
    def training(self, job: Job) -> Callable[[int, int, str], None] | None:
        return None


def ensure_writable(folder: str | Path) -> Path:
    """Create the output folder and check that a file can be written in it."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-test-"):
            pass
    except OSError as exc:
        raise BenchError(f"cannot write to output folder '{folder}': {exc.strerror or exc}") from exc
    return folder


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name not in ("cpu", "cuda") and not name.startswith("cuda:"):
        raise BenchError(f"unknown device '{name}'; valid: auto, cpu, cuda, cuda:N")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise BenchError(f"device '{name}' asked for, but torch sees no CUDA device; use --device cpu")
    return torch.device(name)


def key_seed(key: str) -> int:
    """A seed derived from a job key (a hex digest)."""
    return int(key[:8], 16)


def seed_everything(key: str) -> None:
    """Seed torch, numpy and random from a job key, so each job is repeatable on its own."""
    seed = key_seed(key)
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)


def _batched(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return torch.cat([fn(b).detach().float().cpu() for b in x.split(SCORE_BATCH)]).numpy()


def make_split(dataset: str, normal_class: str, seed: int, few: dict[str, Any] | None = None) -> Split:
    """The data of a job; with the few-anomaly option (``Job.config["few_anomalies"]``), ``n_anomalies``
    labelled anomalies are drawn (deterministically from the seed) and removed from the test set."""
    split = DATASETS.get(dataset)().split(normal_class, seed)
    if few:
        generator = seeded_generator(dataset, seed, normal_class, "known-anomalies")
        split = hold_out_anomalies(split, few["n_anomalies"], few["known_defects"], generator)
    return split


def job_result(job: Job, status: str, **fields: Any) -> JobResult:
    """A store row for ``job``: its identity from the job, the rest from ``fields``."""
    return JobResult(
        key=job.key, train_key=job.train_key, status=status, method=job.method, dataset=job.dataset,
        normal_class=job.normal_class, seed=job.seed, attack=job.attack, norm=job.norm, eps=job.eps,
        config=job.config, adversarially_trained=METHODS.get(job.method).adversarially_trained, **fields,
    )


class Runner:
    def __init__(self, cfg: GridConfig, hooks: Hooks | None = None) -> None:
        self.cfg = cfg
        self.hooks = hooks or Hooks()
        self.device = resolve_device(cfg.device)
        self.jobs = expand_grid(cfg)  # validates every name and parameter before anything runs
        self.out = Path(cfg.out)
        self._split_cache: tuple[tuple[Any, ...], Split] | None = None

    def pending(self, store: Store) -> list[Job]:
        done = store.finished_keys()
        return [job for job in self.jobs if job.key not in done]

    def run(self) -> RunSummary:
        ensure_writable(self.out)
        summary = RunSummary(total=len(self.jobs))
        with Store(self.out) as store:
            pending = self.pending(store)
            summary.skipped = len(self.jobs) - len(pending)
            self.hooks.start(len(pending))
            waiting = {job.key for job in pending}
            for _, group_iter in itertools.groupby(self.jobs, key=lambda j: j.train_key):
                group = list(group_iter)
                todo = [job for job in group if job.key in waiting]
                if todo or self._extras_missing(group, store):
                    self._run_group(group, todo, store, summary)
        return summary

    # -- one trained model, several attacks, then its checks and certificates --------------------------
    def _run_group(self, group: list[Job], todo: list[Job], store: Store, summary: RunSummary) -> None:
        first = group[0]
        start = time.perf_counter()
        try:
            split = self._split(first)
            detector, fitted = self._detector(first, split)
            summary.trained += fitted
        except Exception as exc:
            message = f"training failed: {type(exc).__name__}: {exc}"
            self._log_failure(first, exc)
            for job in todo:
                self._record_failure(job, message, time.perf_counter() - start, store, summary)
            return
        self._attack_all(todo, detector, split, store, summary)
        if len(store.results(status="ok", keys=[job.key for job in group])) < len(group):
            return  # checks compare the grid's figures: only once every job of the model succeeded
        for step in (self._checks, self._certify):
            try:
                step(group, detector, split, store, summary)
            except Exception as exc:  # recorded, and the grid goes on
                self._log_failure(first, exc)
                summary.failed.append((first, f"{step.__name__.strip('_')} failed: {type(exc).__name__}: {exc}"))

    def _attack_all(self, todo: list[Job], detector: torch.nn.Module, split: Split, store: Store,
                    summary: RunSummary) -> None:
        for job in todo:
            start = time.perf_counter()
            try:
                result = self._evaluate(job, detector, split)
            except Exception as exc:
                self._log_failure(job, exc)
                self._record_failure(job, f"{type(exc).__name__}: {exc}", time.perf_counter() - start,
                                     store, summary)
                continue
            result.seconds = time.perf_counter() - start
            store.put(result)
            summary.computed += 1
            self.hooks.job_done(job, True)

    def _split(self, job: Job) -> Split:
        few = job.config.get("few_anomalies")
        protocol, contamination = job.config.get("protocol", "one-class"), job.config.get("contamination")
        ident = (job.dataset, job.normal_class, job.seed, repr(few), protocol, contamination)
        if self._split_cache is None or self._split_cache[0] != ident:
            split = make_split(job.dataset, job.normal_class, job.seed, few)
            if protocol == "transductive":
                split = transductive_split(split, contamination, job.seed)
            self._split_cache = (ident, split)
        return self._split_cache[1]

    def _model_path(self, train_key: str) -> Path:
        return self.out / "models" / f"{train_key}.pt"

    def _detector(self, job: Job, split: Split) -> tuple[torch.nn.Module, bool]:
        """The trained detector of a job: from the model cache, or fitted now and cached."""
        method = METHODS.get(job.method)
        seed_everything(job.train_key)  # before construction: the initial weights come from it
        detector = method(tuple(split.train.shape[1:]), job.config["params"]).to(self.device)
        path = self._model_path(job.train_key)
        if path.is_file():
            try:
                detector.restore(torch.load(path, map_location=self.device, weights_only=True))
                return detector, False
            except Exception:  # a corrupt or outdated cache file: train again
                path.unlink(missing_ok=True)
        dataset = DATASETS.get(job.dataset)
        train = TrainSet(split.train.to(self.device), default_eps=dict(dataset.default_eps))
        if method.needs_anomalies and split.anomalies is not None:
            train.anomalies = split.anomalies.to(self.device)
            if split.anomaly_masks is not None:
                train.anomaly_masks = split.anomaly_masks.to(self.device)
        detector.progress = self.hooks.training(job)
        try:
            detector.fit(train)
        finally:
            detector.progress = None
        detector.eval()
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        torch.save(detector.state_dict(), tmp)
        os.replace(tmp, path)  # atomic: a killed run never leaves a half-written model
        return detector, True

    def _attacked_scores(self, detector: torch.nn.Module, split: Split, attack_name: str,
                         params: dict[str, Any], eps: float) -> tuple[np.ndarray, np.ndarray, str]:
        """Test images attacked by one attack: (the attacked images, their scores, the attack detail)."""
        attack = ATTACKS.get(attack_name)(params)
        attack.calibrate(detector, split.train.to(self.device))
        x_adv = attack.perturb(detector, split.test.to(self.device), split.test_labels.to(self.device), eps)
        return x_adv, _batched(detector.score, x_adv), attack.describe(detector)

    def _evaluate(self, job: Job, detector: torch.nn.Module, split: Split) -> JobResult:
        seed_everything(job.key)
        x_adv, scores, detail = self._attacked_scores(detector, split, job.attack, job.config["attack_params"],
                                                      job.eps)
        labels = split.test_labels.numpy().astype(np.uint8)
        result = metrics.image_metrics(labels, scores)
        result["auroc_ci_low"], result["auroc_ci_high"] = metrics.bootstrap_ci(
            labels, scores, n=BOOTSTRAP_ROUNDS, seed=key_seed(job.key))
        if split.test_masks is not None and detector.has_anomaly_map():
            maps = _batched(detector.anomaly_map, x_adv)
            result["pixel_auroc"] = metrics.pixel_auroc(split.test_masks.numpy(), maps)
        return job_result(job, "ok", metrics=result, n_test=len(labels), labels=labels, scores=scores,
                          attack_detail=detail)

    # -- sanity checks and certificates (once per trained model) -----------------------------------------
    def _check_key(self, group: list[Job]) -> str | None:
        if not self.cfg.checks.enabled:
            return None
        attacks = {job.attack: [job.config["attack_version"], job.config["attack_params"]] for job in group}
        eps = sorted({(job.attack, job.eps) for job in group})
        return content_key({"train_key": group[0].train_key, "checks": config_dict(self.cfg.checks),
                            "version": CHECKS_VERSION, "attacks": attacks, "eps": eps,
                            "test_set": group[0].config.get("few_anomalies")})

    def _cert_key(self, group: list[Job]) -> str | None:
        which = self.cfg.certify.methods
        if which == "none" or which == "certifiable" and not METHODS.get(group[0].method).certifiable:
            return None
        return content_key({"train_key": group[0].train_key, "certify": config_dict(self.cfg.certify),
                            "test_set": group[0].config.get("few_anomalies")})

    def _extras_missing(self, group: list[Job], store: Store) -> bool:
        """Whether this model's checks or certificates are still to compute (e.g. after a kill)."""
        check_key, cert_key = self._check_key(group), self._cert_key(group)
        return bool(check_key and not store.has_checks(check_key) or cert_key and not store.has_certified(cert_key))

    def _checks(self, group: list[Job], detector: torch.nn.Module, split: Split, store: Store,
                summary: RunSummary) -> None:
        key = self._check_key(group)
        if key is None or store.has_checks(key):
            return
        labels = split.test_labels.numpy().astype(np.uint8)

        def evaluate(attack: str, params: dict[str, Any], eps: float) -> float:
            seed_everything(key)  # the same draws for every figure: eps 0 must equal clean exactly
            return metrics.auroc(labels, self._attacked_scores(detector, split, attack, params, eps)[1])

        mine = store.results(status="ok", keys=[job.key for job in group])
        grid = {(a, float(e)): float(v) for (a, e), v in mine.groupby(["attack", "eps"])["auroc"].mean().items()}
        attacks = {job.attack: job.config["attack_params"] for job in group}
        found = run_checks(attacks, grid, evaluate, self.cfg.checks, int(split.test[0].numel()))
        job = group[0]
        store.put_checks([(key, job.train_key, job.method, job.dataset, job.normal_class, job.seed, c.attack,
                           c.name, int(c.passed), c.value, c.reference, c.detail) for c in found])
        summary.checked += 1

    def _certify(self, group: list[Job], detector: torch.nn.Module, split: Split, store: Store,
                 summary: RunSummary) -> None:
        key = self._cert_key(group)
        if key is None or store.has_certified(key):
            return
        seed_everything(key)
        job, cfg = group[0], self.cfg.certify
        labels = split.test_labels.numpy().astype(int)
        x, train = split.test.to(self.device), split.train.to(self.device)
        rows = [row for sigma in cfg.sigmas for row in certify(detector.score, x, labels, train, sigma, cfg)]
        store.put_certified([(key, job.train_key, job.method, job.dataset, job.normal_class, job.seed,
                              r["sigma"], r["radius"], r["threshold"], r["certified_accuracy"],
                              r["certified_auroc"], r["abstain"]) for r in rows])
        summary.certified += 1

    def _record_failure(self, job: Job, message: str, seconds: float, store: Store,
                        summary: RunSummary) -> None:
        store.put(job_result(job, "failed", seconds=seconds, error=message))
        summary.failed.append((job, message))
        self.hooks.job_done(job, False)

    def _log_failure(self, job: Job, exc: BaseException) -> None:
        """Full tracebacks go to a log file in the output folder; the store keeps the one-line message."""
        with open(self.out / "failures.log", "a") as log:
            log.write(f"== {job.method} {job.dataset}/{job.normal_class} seed {job.seed} "
                      f"{job.attack} eps {job.eps:g} ({job.key})\n")
            log.write("".join(traceback.format_exception(exc)))

