"""The statistics of the image-level checks: thresholds from a detector's measured noise, and the paired
gradient-masking test (pure numpy; ``verification`` runs the attacks and scores the images).

Thresholds (the rule the README states):

- A deterministic detector has no scoring noise: two sets of images are compared per image, and any
  difference beyond float rounding (``FLOAT_TOLERANCE``, relative to the score) counts.
- An AUROC difference between two attacks of the same images (more steps, a larger eps) is judged against
  its own noise: ``sigmas`` standard deviations of the paired difference, measured by resampling the test
  images (the same resample for both), never less than one pair of images out of order.
- The masking test on a stochastic detector measures the noise it must beat by re-scoring: each round
  scores the white-box images, the Square images and the white-box images again, each with fresh draws;
  the per-image worse of white-box and Square is compared with the per-image worse of two re-scorings of
  the white-box images (what noise alone lowers the AUROC by). When Square's images are no better, the two
  re-scorings it is compared with are exchangeable, so each round's excess is symmetric around zero: the
  test flags when the mean excess is above the ``1 - MASKING_ALPHA`` quantile of its sign-flip
  distribution (exact, whatever the shape of the noise; AUROC differences are discrete).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from robust_ad_bench.benchmark.protocol import metrics

FLOAT_TOLERANCE = 1e-5  # relative: score differences below this are float rounding
MASKING_ALPHA = 0.01  # false-alarm rate of the stochastic masking test


def objective(labels: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """The attack objective per image: the score of normals, minus the score of anomalies."""
    return np.asarray(scores, np.float64) * (1.0 - 2.0 * np.asarray(labels, np.float64))


def worse(labels: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per image, the score of ``a`` or ``b`` with the higher attack objective (``a`` on ties and where ``b``
    is nan: not attacked); ``b`` must beat ``a`` by more than float rounding."""
    gain = objective(labels, b) - objective(labels, a)
    take = np.nan_to_num(gain, nan=-np.inf) > FLOAT_TOLERANCE * (1.0 + np.abs(np.asarray(a, np.float64)))
    return np.where(take, b, a)


def stratified_sample(labels: np.ndarray, normals: int, anomalies: int, seed: int) -> np.ndarray:
    """Sorted indices of up to ``normals`` normal and ``anomalies`` anomalous images, drawn with ``seed``."""
    rng = np.random.default_rng(seed)
    labels = np.asarray(labels)
    picked = [rng.choice(np.flatnonzero(labels == c), min(k, int((labels == c).sum())), replace=False)
              for c, k in ((0, normals), (1, anomalies))]
    return np.sort(np.concatenate(picked))


def paired_sd(labels: np.ndarray, a: np.ndarray, b: np.ndarray, rounds: int, seed: int) -> float:
    """Standard deviation of AUROC(a) - AUROC(b) over resamples of the test images (stratified, the same
    resample for both score sets)."""
    rng = np.random.default_rng(seed)
    labels = np.asarray(labels)
    normal, anomal = np.flatnonzero(labels == 0), np.flatnonzero(labels == 1)
    diffs = np.empty(rounds)
    for r in range(rounds):  # a few hundred AUROCs of a few hundred images: milliseconds
        idx = np.concatenate([rng.choice(normal, len(normal)), rng.choice(anomal, len(anomal))])
        diffs[r] = metrics.auroc(labels[idx], a[idx]) - metrics.auroc(labels[idx], b[idx])
    return float(diffs.std(ddof=1)) if rounds > 1 else 0.0


def difference_threshold(labels: np.ndarray, a: np.ndarray, b: np.ndarray, sigmas: float, rounds: int,
                         seed: int) -> float:
    """How far AUROC(a) and AUROC(b) of paired score sets may differ by noise: ``sigmas`` paired standard
    deviations, at least one pair of images out of order."""
    labels = np.asarray(labels)
    one_pair = 1.0 / max(int((labels == 0).sum()) * int((labels == 1).sum()), 1)
    return max(sigmas * paired_sd(labels, np.asarray(a), np.asarray(b), rounds, seed), one_pair)


@dataclass
class MaskingTest:
    """The outcome of the paired masking test on the sample."""

    white: float  # AUROC of the per-image worst white-box candidate on the sample
    combined: float  # AUROC of the per-image worse of white-box and Square
    excess: float  # how much Square lowers it beyond noise (deterministic: white - combined)
    threshold: float  # the excess that flags
    images: int  # images on which Square beat every white-box candidate (deterministic; else -1)

    @property
    def flagged(self) -> bool:
        return self.excess > self.threshold

    def detail(self) -> str:
        won = f", Square better on {self.images} images" if self.images >= 0 else ""
        return (f"sample AUROC {self.white:.4f} white-box, {self.combined:.4f} with Square per image "
                f"(excess {self.excess:.4f}, threshold {self.threshold:.4f}{won})")


def deterministic_test(labels: np.ndarray, white: np.ndarray, square: np.ndarray) -> MaskingTest:
    """Exact scores: any image Square makes worse beyond float rounding counts."""
    combined = worse(labels, white, square)
    a, b = metrics.auroc(labels, white), metrics.auroc(labels, combined)
    return MaskingTest(a, b, a - b, FLOAT_TOLERANCE, int((combined != white).sum()))


def stochastic_test(labels: np.ndarray, white: Callable[[int], np.ndarray], square: Callable[[int], np.ndarray],
                    rounds: int) -> MaskingTest:
    """Noisy scores: ``white(seed)`` and ``square(seed)`` score the sample's white-box and Square images with
    fresh draws seeded by ``seed``; see the module docstring for the test."""
    found, null, base, comb = np.empty(rounds), np.empty(rounds), np.empty(rounds), np.empty(rounds)
    for r in range(rounds):
        w, s, again = white(3 * r), square(3 * r + 1), white(3 * r + 2)
        base[r] = metrics.auroc(labels, w)
        comb[r] = metrics.auroc(labels, worse(labels, w, s))
        found[r] = base[r] - comb[r]
        null[r] = base[r] - metrics.auroc(labels, worse(labels, w, again))
    excess = found - null
    return MaskingTest(float(base.mean()), float(comb.mean()), float(excess.mean()), sign_flip_threshold(excess), -1)


def sign_flip_threshold(values: np.ndarray, alpha: float = MASKING_ALPHA, draws: int = 4096) -> float:
    """The mean of ``values`` a symmetric null reaches with probability ``alpha`` at most: the ``1 - alpha``
    quantile of the means under every sign pattern (all of them up to 12 values, else ``draws`` seeded
    random ones), and never below float rounding."""
    values = np.asarray(values, np.float64)
    n = len(values)
    if n <= 12:
        signs = 1 - 2 * ((np.arange(2**n)[:, None] >> np.arange(n)[None, :]) & 1)
    else:
        signs = np.random.default_rng(0).choice([-1, 1], size=(draws, n))
    means = np.sort((signs * np.abs(values)[None, :]).mean(1))
    # the smallest threshold t with P(mean > t) <= alpha
    return max(float(means[min(int(np.ceil((1 - alpha) * len(means))) - 1, len(means) - 1)]), FLOAT_TOLERANCE)
