"""Certified L2 robustness by randomized smoothing (Cohen et al., 2019) of a thresholded anomaly score.

The smoothed detector flags ``x`` as anomalous when ``P(score(x + δ) > t) > 1/2``, ``δ ~ N(0, σ²I)``. If
the lower confidence bound ``p`` on the probability of its decision exceeds 1/2, no L2 perturbation
smaller than ``σ·Φ⁻¹(p)`` can change that decision. ``p`` is a one-sided Clopper-Pearson bound at level
``alpha`` from ``n`` Monte-Carlo draws; the decision itself is picked from ``n0`` separate draws.

Certified AUROC at radius r sweeps the threshold instead of fixing it: with ``k_r`` the fewest draws out of
``n`` whose bound certifies radius r, an anomaly stays certified-anomalous for every threshold below its
``k_r``-th largest noisy score, and a normal image can be pushed over every threshold below its
``k_r``-th smallest one. The AUROC of those two order statistics is the AUROC that no perturbation of L2
norm r can lower (at the smoothed detector, with probability at least 1 - alpha per image).
Only ``score`` is needed, so any detector can be certified.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from robust_ad_bench.benchmark.protocol import metrics
from robust_ad_bench.core.adaptive import ScoreFn
from robust_ad_bench.core.attack import images_per_call
from robust_ad_bench.core.errors import BenchError, unknown_choice

CERTIFY_METHODS = ("certifiable", "all", "none")


@dataclass
class CertifyConfig:
    methods: str = "certifiable"  # which methods are certified: certifiable (flag), all, none
    sigmas: tuple[float, ...] = (0.25,)  # Gaussian noise levels of the smoothed detectors
    n0: int = 100  # draws that pick the decision
    n: int = 1000  # draws that bound its probability
    alpha: float = 0.001  # failure probability of each certificate
    radii: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)  # L2 radii at which results are reported
    threshold_quantile: float = 0.95  # of the noisy training scores, for certified accuracy
    batch_size: int = 1024  # noisy images scored at once

    def __post_init__(self) -> None:
        if self.methods not in CERTIFY_METHODS:
            raise unknown_choice("certify.methods", self.methods, CERTIFY_METHODS)
        if not self.sigmas or any(s <= 0 for s in self.sigmas):
            raise BenchError(f"certify.sigmas must be positive numbers, got {list(self.sigmas)}")
        if any(r < 0 for r in self.radii) or not self.radii:
            raise BenchError(f"certify.radii must be numbers >= 0, got {list(self.radii)}")
        if self.n0 < 1 or self.n < 1 or not 0 < self.alpha < 1:
            raise BenchError(f"certify needs n0 >= 1, n >= 1, 0 < alpha < 1; got {self.n0}, {self.n}, {self.alpha}")


def noisy_scores(score: ScoreFn, x: torch.Tensor, sigma: float, draws: int, batch_size: int) -> torch.Tensor:
    """Scores of ``draws`` Gaussian-noised copies of each image: N × draws, about ``batch_size`` noisy
    images per score call (counted in 32×32 images: ``images_per_call``)."""
    batch_size = min(batch_size, images_per_call(batch_size, x.shape))  # never more than asked (keys unchanged)
    rows = []
    with torch.no_grad():
        for part in x.split(max(1, batch_size // min(draws, batch_size))):
            per_call = max(1, batch_size // len(part))
            blocks = []
            for start in range(0, draws, per_call):
                d = min(per_call, draws - start)
                noisy = part.repeat(d, *([1] * (x.dim() - 1)))
                noisy = noisy + sigma * torch.randn_like(noisy)  # no clipping: the smoothing is Gaussian
                blocks.append(score(noisy).float().view(d, len(part)).T)
            rows.append(torch.cat(blocks, dim=1))
    return torch.cat(rows).cpu()


def lower_bounds(n: int, alpha: float) -> np.ndarray:
    """One-sided Clopper-Pearson lower bound of a proportion for every count 0..n."""
    k = np.arange(n + 1)
    bound = np.zeros(n + 1)
    from scipy.stats import beta  # imported when certifying: scipy.stats costs 0.8 s of every command's start

    bound[1:] = beta.ppf(alpha, k[1:], n - k[1:] + 1)
    return bound


def min_count(radius: float, sigma: float, n: int, alpha: float) -> int:
    """Fewest positive draws out of ``n`` that certify ``radius`` (n + 1 when none does)."""
    bound = lower_bounds(n, alpha)
    from scipy.stats import norm

    need = max(norm.cdf(radius / sigma), 0.5)
    ok = np.nonzero((bound >= need) & (bound > 0.5))[0]
    return int(ok[0]) if len(ok) else n + 1


def certified_auroc(sorted_scores: np.ndarray, labels: np.ndarray, count: int) -> float:
    """AUROC that holds within the radius whose certificate needs ``count`` draws (see module doc)."""
    n = sorted_scores.shape[1]
    if count > n:
        return 0.0  # nothing certifiable: every pair can be flipped
    anomalous = sorted_scores[:, n - count]  # count-th largest
    normal = sorted_scores[:, count - 1]  # count-th smallest
    return metrics.auroc(labels, np.where(labels == 1, anomalous, normal))


def certify(score: ScoreFn, x: torch.Tensor, labels: np.ndarray, train: torch.Tensor, sigma: float,
            cfg: CertifyConfig) -> list[dict[str, float]]:
    """Certified accuracy and AUROC of the smoothed detector at each of ``cfg.radii``."""
    train_noisy = noisy_scores(score, train, sigma, 1, cfg.batch_size)[:, 0]
    threshold = float(train_noisy.quantile(cfg.threshold_quantile))
    pick = (noisy_scores(score, x, sigma, cfg.n0, cfg.batch_size) > threshold).float().mean(1) > 0.5
    draws = noisy_scores(score, x, sigma, cfg.n, cfg.batch_size)
    agree = ((draws > threshold) == pick[:, None]).sum(1).numpy()
    bound = lower_bounds(cfg.n, cfg.alpha)[agree]
    from scipy.stats import norm

    radius = np.where(bound > 0.5, sigma * norm.ppf(np.clip(bound, 0.5, 1 - 1e-16)), -1.0)
    correct = pick.numpy().astype(int) == labels
    ordered = np.sort(draws.numpy(), axis=1)
    rows = []
    for r in cfg.radii:
        count = min_count(r, sigma, cfg.n, cfg.alpha)
        rows.append({"sigma": sigma, "radius": float(r), "threshold": threshold,
                     "certified_accuracy": float(np.mean(correct & (radius >= r))),
                     "certified_auroc": certified_auroc(ordered, labels, count),
                     "abstain": float(np.mean(radius < 0))})
    return rows
