"""Exact savings for deterministic detectors: when an image is settled (pure numpy).

Every attack keeps the clean image as a candidate, so under attack an anomaly's score only goes down and a
normal's only up. A normal whose score is above the highest clean anomaly score therefore already ranks
above every anomaly in every attacked test set (and an anomaly below the lowest clean normal score below
every normal): raising it further changes no rank metric (AUROC, AUPR, FPR95) and no per-image worst case's
metrics, so the attacks stop working on it. Its stored score is then the one it had when it settled, so a
pixel-level metric under attack can differ from an attack that went on (the README says so).

The bound has a margin of float rounding (``masking.FLOAT_TOLERANCE``, relative), because the scores an
attack compares are recomputed in other batches: a settled image is beyond the bound by more than rounding.
"""

from __future__ import annotations

import numpy as np

from robust_ad_bench.benchmark.protocol.masking import FLOAT_TOLERANCE, objective

ENABLED = True  # the savings are exact; the tests turn them off to show it


def settle_bounds(labels: np.ndarray, clean: np.ndarray) -> np.ndarray:
    """Per image, the attack objective (``masking.objective``) beyond which it is settled: for a normal the
    highest clean anomaly score, for an anomaly minus the lowest clean normal score, each plus rounding;
    inf where the other class is absent (nothing to rank against: never settled)."""
    labels = np.asarray(labels)
    clean = np.asarray(clean, np.float64)
    anomalies, normals = clean[labels == 1], clean[labels == 0]
    highest_anomaly = anomalies.max() if len(anomalies) else np.inf
    lowest_normal = normals.min() if len(normals) else -np.inf
    bound = np.where(labels == 1, -lowest_normal, highest_anomaly)
    with np.errstate(invalid="ignore"):
        bound = bound + FLOAT_TOLERANCE * (1.0 + np.abs(bound))
    return np.where(np.isfinite(bound), bound, np.inf)


def settled(labels: np.ndarray, scores: np.ndarray, bounds: np.ndarray) -> np.ndarray:
    """Which images ``scores`` already settle (nan: not attacked, never settled)."""
    value = np.nan_to_num(objective(labels, scores), nan=-np.inf)
    return value > bounds
