"""Evaluation of one trained detector: each job's attack and metrics, and its certificates (the sanity
checks and per-image worst cases: ``verification``). Every function here is pure computation (no store):
the runner decides where it runs and the driver stores what it returns.

Scores of a stochastic detector are the mean of the job's ``eval_samples`` draws, drawn from a stream
seeded by the job (or check) key apart from the attack's own random numbers: the draws an attack spends
never change the draws its images are scored with, so the checks (same draws) compare like with like.
Every attack of one model judges its candidates under the same fixed draws (``common_seed``: common random
numbers), so choices between images compare images, not noise; reported figures use fresh draws.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from robust_ad_bench.benchmark.grid.jobs import Job
from robust_ad_bench.benchmark.grid.runtime import key_seed, seed_everything
from robust_ad_bench.benchmark.protocol import metrics, settling
from robust_ad_bench.benchmark.protocol.aupro import aupro
from robust_ad_bench.benchmark.protocol.certification import CertifyConfig, certify
from robust_ad_bench.benchmark.results.store import CertifiedRow, CheckRow, JobResult
from robust_ad_bench.core.adaptive import expectation
from robust_ad_bench.core.attack import images_per_call
from robust_ad_bench.core.dataset import Split
from robust_ad_bench.core.detector import Detector
from robust_ad_bench.core.registry import ATTACKS, METHODS

SCORE_BATCH = 512
BOOTSTRAP_ROUNDS = 200  # 95 % CI of each job's AUROC, for single runs (the evaluation protocol)


def batched(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return torch.cat([fn(b).detach().float().cpu()
                          for b in x.split(images_per_call(SCORE_BATCH, x.shape))]).numpy()


def job_result(job: Job, status: str, **fields: Any) -> JobResult:
    """A store row for ``job``: its identity from the job, the rest from ``fields``."""
    fields.setdefault("config", job.config)
    return JobResult(
        key=job.key, train_key=job.train_key, status=status, method=job.method, dataset=job.dataset,
        normal_class=job.normal_class, seed=job.seed, attack=job.attack, norm=job.norm, eps=job.eps,
        adversarially_trained=METHODS.get(job.method).adversarially_trained, **fields,
    )


def score_seed(key: str) -> int:
    """Seed of the draws a stochastic detector's scores are evaluated with (apart from the attack's)."""
    return key_seed(key) ^ 0x5C0E5EED


def common_seed(train_key: str) -> int:
    """Seed of the fixed draws under which every attack of the model ``train_key`` judges its candidates."""
    return key_seed(train_key) ^ 0xC0AA5EED


def score_images(detector: Detector, x: torch.Tensor, draws: int, seed: int) -> np.ndarray:
    """Scores of ``x``: the mean of ``draws`` draws (stochastic detectors), from a stream seeded by ``seed``
    that leaves the caller's random state untouched."""
    draws = draws if detector.stochastic else 1
    with torch.random.fork_rng(devices=[x.device] if x.device.type == "cuda" else []):
        torch.manual_seed(seed)
        with torch.no_grad():
            return torch.cat([expectation(detector.score, draws)(b).detach().float().cpu()
                              for b in x.split(max(1, images_per_call(SCORE_BATCH, x.shape) // draws))]).numpy()


_clean: dict[str, np.ndarray] = {}  # train key -> clean test scores of a deterministic model (this process)


def clean_scores(detector: Detector, split: Split, train_key: str, device: torch.device) -> np.ndarray:
    """The clean test scores of a deterministic model, computed once per model (in this process) for its
    clean job, its checks and the bounds of its settled images."""
    if train_key not in _clean:
        _clean.clear()  # one model at a time, like the model memo
        _clean[train_key] = score_images(detector, split.test.to(device), 1, 0)
    return _clean[train_key]


def attacked_scores(detector: Detector, split: Split, attack_name: str, params: dict[str, Any], eps: float,
                    device: torch.device, eval_samples: int = 1, seed: int = 0, common: int | None = 0,
                    subset: np.ndarray | None = None, train_key: str | None = None,
                    settled: np.ndarray | None = None) -> tuple[torch.Tensor, np.ndarray, str]:
    """Test images (those of ``subset`` when given) attacked by one attack: (the attacked images, their
    scores, how it attacked). ``common`` seeds the fixed draws the attack judges candidates under.

    With ``train_key`` a deterministic model's clean scores are computed once (``clean_scores``) and its
    settled images (``settling``) are not attacked further; ``settled`` (per image of the test set) adds
    images that other attacks already settled."""
    attack = ATTACKS.get(attack_name)(params)
    attack.common_seed = common
    attack.calibrate(detector, split.train.to(device))
    x, y = split.test, split.test_labels
    index = torch.as_tensor(subset, dtype=torch.long) if subset is not None else None
    if index is not None:
        x, y = x[index], y[index]
    clean = None if detector.stochastic or train_key is None else clean_scores(detector, split, train_key, device)
    if clean is not None and attack.norm == "none":
        return x.to(device).clone(), clean if index is None else clean[subset], attack.describe(detector)
    if clean is not None and settling.ENABLED:
        labels = split.test_labels.numpy()
        bounds = settling.settle_bounds(labels, clean)
        done = settling.settled(labels, clean, bounds) | (settled if settled is not None else False)
        if index is not None:
            bounds, done = bounds[subset], done[subset]
        attack.settle_above, attack.settled = torch.as_tensor(bounds), torch.as_tensor(done)
    x_adv = attack.perturb(detector, x.to(device), y.to(device), eps)
    detail = attack.describe(detector)
    if detector.stochastic and eval_samples > 1:
        detail = ",".join(p for p in (detail, f"eval={eval_samples}") if p)
    return x_adv, score_images(detector, x_adv, eval_samples, seed), detail


def attack_job(job: Job, detector: Detector, split: Split, device: torch.device) -> tuple[JobResult, torch.Tensor]:
    """Attack the test set, score it, and compute the job's metrics: (its row, the attacked images)."""
    seed_everything(job.key)
    x_adv, scores, detail = attacked_scores(detector, split, job.attack, job.attack_spec.params, job.eps, device,
                                            job.eval_samples, score_seed(job.key), common_seed(job.train_key),
                                            train_key=job.train_key)
    labels = split.test_labels.numpy().astype(np.uint8)
    result = metrics_of(labels, scores, job.key)
    if split.test_masks is not None and detector.has_anomaly_map():
        maps = batched(detector.anomaly_map, x_adv)
        result["pixel_auroc"] = metrics.pixel_auroc(split.test_masks.numpy(), maps)
        result["aupro"] = aupro(split.test_masks.numpy(), maps)
    return job_result(job, "ok", metrics=result, n_test=len(labels), labels=labels, scores=scores,
                      attack_detail=detail), x_adv


def metrics_of(labels: np.ndarray, scores: np.ndarray, key: str) -> dict[str, float]:
    result = metrics.image_metrics(labels, scores)
    result["auroc_ci_low"], result["auroc_ci_high"] = metrics.bootstrap_ci(
        labels, scores, n=BOOTSTRAP_ROUNDS, seed=key_seed(key))
    return result


def check_rows(jobs: Sequence[Job], key: str, found: Sequence[Any]) -> list[CheckRow]:
    first = jobs[0]
    return [CheckRow(key, first.train_key, first.method, first.dataset, first.normal_class, first.seed, c.attack,
                     c.name, c.passed, c.value, c.reference, c.detail) for c in found]


def model_certificates(jobs: Sequence[Job], key: str, detector: Detector, split: Split, cfg: CertifyConfig,
                       device: torch.device) -> list[CertifiedRow]:
    """Randomized-smoothing certificates of one model at each sigma and radius of ``cfg``."""
    seed_everything(key)
    first = jobs[0]
    labels = split.test_labels.numpy().astype(int)
    x, train = split.test.to(device), split.train.to(device)
    rows = [row for sigma in cfg.sigmas for row in certify(detector.score, x, labels, train, sigma, cfg)]
    return [CertifiedRow(key, first.train_key, first.method, first.dataset, first.normal_class, first.seed,
                         r["sigma"], r["radius"], r["threshold"], r["certified_accuracy"], r["certified_auroc"],
                         r["abstain"]) for r in rows]
