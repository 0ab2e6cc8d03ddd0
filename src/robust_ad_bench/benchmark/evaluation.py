"""Evaluation of one trained detector: each job's attack and metrics, the model's sanity checks and its
certificates. Every function here is pure computation (no store, no files): the runner decides where it
runs and the driver stores what it returns.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from robust_ad_bench.benchmark import metrics
from robust_ad_bench.benchmark.certification import CertifyConfig, certify
from robust_ad_bench.benchmark.checks import CheckConfig, run_checks
from robust_ad_bench.benchmark.jobs import Job
from robust_ad_bench.benchmark.runtime import key_seed, seed_everything
from robust_ad_bench.benchmark.store import CertifiedRow, CheckRow, JobResult
from robust_ad_bench.core.dataset import Split
from robust_ad_bench.core.detector import Detector
from robust_ad_bench.core.registry import ATTACKS, METHODS

SCORE_BATCH = 512
BOOTSTRAP_ROUNDS = 200  # 95 % CI of each job's AUROC, for single runs (the evaluation protocol)


def batched(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return torch.cat([fn(b).detach().float().cpu() for b in x.split(SCORE_BATCH)]).numpy()


def job_result(job: Job, status: str, **fields: Any) -> JobResult:
    """A store row for ``job``: its identity from the job, the rest from ``fields``."""
    return JobResult(
        key=job.key, train_key=job.train_key, status=status, method=job.method, dataset=job.dataset,
        normal_class=job.normal_class, seed=job.seed, attack=job.attack, norm=job.norm, eps=job.eps,
        config=job.config, adversarially_trained=METHODS.get(job.method).adversarially_trained, **fields,
    )


def attacked_scores(detector: Detector, split: Split, attack_name: str, params: dict[str, Any], eps: float,
                    device: torch.device) -> tuple[torch.Tensor, np.ndarray, str]:
    """Test images attacked by one attack: (the attacked images, their scores, how it attacked)."""
    attack = ATTACKS.get(attack_name)(params)
    attack.calibrate(detector, split.train.to(device))
    x_adv = attack.perturb(detector, split.test.to(device), split.test_labels.to(device), eps)
    return x_adv, batched(detector.score, x_adv), attack.describe(detector)


def evaluate_job(job: Job, detector: Detector, split: Split, device: torch.device) -> JobResult:
    """Attack the test set, score it, and compute the job's metrics."""
    seed_everything(job.key)
    x_adv, scores, detail = attacked_scores(detector, split, job.attack, job.attack_spec.params, job.eps, device)
    labels = split.test_labels.numpy().astype(np.uint8)
    result = metrics.image_metrics(labels, scores)
    result["auroc_ci_low"], result["auroc_ci_high"] = metrics.bootstrap_ci(
        labels, scores, n=BOOTSTRAP_ROUNDS, seed=key_seed(job.key))
    if split.test_masks is not None and detector.has_anomaly_map():
        maps = batched(detector.anomaly_map, x_adv)
        result["pixel_auroc"] = metrics.pixel_auroc(split.test_masks.numpy(), maps)
    return job_result(job, "ok", metrics=result, n_test=len(labels), labels=labels, scores=scores,
                      attack_detail=detail)


def model_checks(jobs: Sequence[Job], key: str, figures: dict[tuple[str, float], float], detector: Detector,
                 split: Split, cfg: CheckConfig, device: torch.device) -> list[CheckRow]:
    """The sanity checks of one model; ``figures`` maps (attack, eps) to the AUROC the grid measured."""
    labels = split.test_labels.numpy().astype(np.uint8)

    def evaluate(attack: str, params: dict[str, Any], eps: float) -> float:
        seed_everything(key)  # the same draws for every figure: eps 0 must equal clean exactly
        return metrics.auroc(labels, attacked_scores(detector, split, attack, params, eps, device)[1])

    attacks = {job.attack: job.attack_spec.params for job in jobs}
    found = run_checks(attacks, figures, evaluate, cfg, int(split.test[0].numel()))
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
