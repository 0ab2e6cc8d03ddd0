"""Detection metrics (AUROC, AUPR, FPR@95%TPR, pixel AUROC, bootstrap CIs) in vectorized numpy.

Anomalies are the positive class (label 1) and higher scores mean "more anomalous". Every function
accepts numpy arrays or torch tensors and validates its input, raising ``ValueError`` with a message
that names the problem: the runner stores that message when it marks a job as failed, so NaN scores
or a test split with a single class are reported instead of turning into a silent 0.5 or NaN.

The results match scikit-learn (``roc_curve`` with ``drop_intermediate=False``, ``roc_auc_score``,
``average_precision_score``), including ties (``tests/test_metrics.py``, to 1e-12), but avoid its
per-call overhead and memory: AUROC is 3.6-12x faster than scikit-learn's on 1e7 pixels with a third to a
half of its memory, and every metric is 9-80x faster on a few hundred image scores (bootstrap CIs); see
CONTRIBUTING.md, hand-written pieces.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

ArrayLike = Any  # numpy array, torch tensor, or anything np.asarray accepts
Metric = Callable[[ArrayLike, ArrayLike], float]

__all__ = [
    "aupr",
    "auroc",
    "bootstrap_ci",
    "fpr_at_tpr",
    "image_metrics",
    "pixel_auroc",
    "roc_curve",
]


# --------------------------------------------------------------------------------------------------
# input conversion and validation
# --------------------------------------------------------------------------------------------------


def _to_numpy(x: ArrayLike) -> np.ndarray:
    """A numpy view of ``x``; torch tensors are detached and moved to the CPU first.

    Duck-typed on ``detach`` so this module never imports torch itself.
    """
    if hasattr(x, "detach") and hasattr(x, "cpu"):
        x = x.detach().cpu()
        if str(getattr(x, "dtype", "")) == "torch.bfloat16":  # numpy has no bfloat16
            x = x.float()
    return np.asarray(x)


def _check_labels(labels: np.ndarray, name: str) -> np.ndarray:
    """Labels as a boolean array; anything other than 0/1 (or True/False) is an error."""
    if labels.dtype == bool:
        out = labels
    else:
        if not (np.issubdtype(labels.dtype, np.number)):
            raise ValueError(f"{name} must be numeric 0/1 values, got dtype {labels.dtype}")
        out = labels == 1
        # Only scan for the offending values when the cheap check fails.
        if not np.all(out | (labels == 0)):
            bad = np.unique(labels[~(out | (labels == 0))])
            shown = ", ".join(str(v) for v in bad[:5]) + (", ..." if bad.size > 5 else "")
            raise ValueError(f"{name} must contain only 0 and 1, got {bad.size} other value(s): {shown}")
    n_pos = int(np.count_nonzero(out))
    if n_pos == 0 or n_pos == out.size:
        only = 1 if n_pos else 0
        raise ValueError(f"{name} must contain both 0 and 1, got only {only} ({out.size} samples)")
    return out


def _check_scores(scores: np.ndarray, name: str) -> np.ndarray:
    """Scores as float64 (exact for float32/float16 input, so ties are preserved); no NaN/inf."""
    if not (np.issubdtype(scores.dtype, np.number) or scores.dtype == bool):
        raise ValueError(f"{name} must be numeric, got dtype {scores.dtype}")
    if np.iscomplexobj(scores):
        raise ValueError(f"{name} must be real-valued, got dtype {scores.dtype}")
    out = scores.astype(np.float64, copy=False)
    finite = np.isfinite(out)
    if not finite.all():
        # Count only on failure: the message is what the runner records for the failed job.
        n_nan = int(np.count_nonzero(np.isnan(out)))
        n_inf = int(out.size - np.count_nonzero(finite) - n_nan)
        parts = [f"{n_nan} NaN"] if n_nan else []
        parts += [f"{n_inf} infinite"] if n_inf else []
        raise ValueError(f"{name} contain {' and '.join(parts)} values (out of {out.size})")
    return out


def _validate(
    labels: ArrayLike, scores: ArrayLike, label_name: str = "labels", score_name: str = "scores"
) -> tuple[np.ndarray, np.ndarray]:
    """Flattened ``(bool labels, float64 scores)`` after all input checks."""
    y = _to_numpy(labels).reshape(-1)
    s = _to_numpy(scores).reshape(-1)
    if y.size != s.size:
        raise ValueError(f"{label_name} and {score_name} must have the same length, got {y.size} and {s.size}")
    if y.size == 0:
        raise ValueError(f"{label_name} and {score_name} are empty")
    return _check_labels(y, label_name), _check_scores(s, score_name)


# --------------------------------------------------------------------------------------------------
# kernels on validated arrays (bool labels, float64 scores, both classes present)
# --------------------------------------------------------------------------------------------------


def _binary_clf_curve(y: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cumulative (false positives, true positives, threshold) at each distinct score, descending.

    Same construction as sklearn's ``_binary_clf_curve``: one point per distinct score value, so tied
    samples enter the curve together. Counts stay integers, which keeps the ratios exact.
    """
    order = np.argsort(s, kind="stable")[::-1]
    s_sorted = s[order]
    y_sorted = y[order]
    # Index of the last sample of each run of equal scores (the curve can only move between runs).
    last = np.flatnonzero(np.diff(s_sorted))
    last = np.r_[last, s_sorted.size - 1]
    tps = np.cumsum(y_sorted, dtype=np.int64)[last]
    fps = last + 1 - tps
    return fps, tps, s_sorted[last]


def _auroc(y: np.ndarray, s: np.ndarray) -> float:
    """Mann-Whitney U with mid-ranks for ties: P(s_pos > s_neg) + 0.5 * P(s_pos == s_neg).

    Instead of ranking all values (one argsort plus gathers) both classes are sorted on their own and
    each positive is located among the negatives with ``searchsorted``: ``left`` counts negatives
    strictly below it, ``right - left`` the tied ones, so ``left + right`` is twice its mid-rank
    contribution. The sums are exact int64 arithmetic and np.sort is markedly faster than argsort.
    """
    pos = np.sort(s[y])
    neg = np.sort(s[~y])
    below = np.searchsorted(neg, pos, side="left").sum(dtype=np.int64)
    below_or_tied = np.searchsorted(neg, pos, side="right").sum(dtype=np.int64)
    return float((int(below) + int(below_or_tied)) / (2 * pos.size * neg.size))


def _aupr(y: np.ndarray, s: np.ndarray) -> float:
    """Average precision: sum over thresholds of (recall step) * precision, no interpolation."""
    fps, tps, _ = _binary_clf_curve(y, s)
    precision = tps / (tps + fps)  # tps + fps >= 1 at every threshold
    recall_step = np.diff(tps, prepend=0) / tps[-1]
    return float(np.sum(recall_step * precision))


def _roc(y: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    fps, tps, thresholds = _binary_clf_curve(y, s)
    # Prepend the (0, 0) point with an infinite threshold (nothing is flagged), like sklearn >= 1.3.
    fps = np.r_[0, fps]
    tps = np.r_[0, tps]
    thresholds = np.r_[np.inf, thresholds]
    return fps / fps[-1], tps / tps[-1], thresholds


def _fpr_at_tpr(y: np.ndarray, s: np.ndarray, tpr: float) -> float:
    fpr_curve, tpr_curve, _ = _roc(y, s)
    # tpr_curve is non-decreasing and ends at 1, so the first point reaching the target exists and,
    # fpr being non-decreasing too, is the operating point with the lowest FPR.
    idx = int(np.searchsorted(tpr_curve, tpr, side="left"))
    return float(fpr_curve[idx])


def _check_tpr(tpr: float) -> float:
    tpr = float(tpr)
    if not 0.0 <= tpr <= 1.0:
        raise ValueError(f"target tpr must be in [0, 1], got {tpr}")
    return tpr


# --------------------------------------------------------------------------------------------------
# public API
# --------------------------------------------------------------------------------------------------


def roc_curve(labels: ArrayLike, scores: ArrayLike) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(fpr, tpr, thresholds)``, one point per distinct score plus the leading (0, 0) point.

    Equal to ``sklearn.metrics.roc_curve(labels, scores, drop_intermediate=False)``; thresholds are
    decreasing, the first one is ``inf``.
    """
    return _roc(*_validate(labels, scores))


def auroc(labels: ArrayLike, scores: ArrayLike) -> float:
    """Area under the ROC curve, equal to ``sklearn.metrics.roc_auc_score`` (ties count one half)."""
    return _auroc(*_validate(labels, scores))


def aupr(labels: ArrayLike, scores: ArrayLike) -> float:
    """Area under the precision-recall curve, equal to ``sklearn.metrics.average_precision_score``."""
    return _aupr(*_validate(labels, scores))


def fpr_at_tpr(labels: ArrayLike, scores: ArrayLike, tpr: float = 0.95) -> float:
    """False-positive rate at the first ROC point (lowest FPR) whose TPR is at least ``tpr``."""
    return _fpr_at_tpr(*_validate(labels, scores), _check_tpr(tpr))


def image_metrics(labels: ArrayLike, scores: ArrayLike) -> dict[str, float]:
    """Image-level ``{"auroc", "aupr", "fpr95"}``, validating the input once."""
    y, s = _validate(labels, scores)
    return {"auroc": _auroc(y, s), "aupr": _aupr(y, s), "fpr95": _fpr_at_tpr(y, s, 0.95)}


def _squeeze_channel(x: np.ndarray) -> np.ndarray:
    # Masks and maps often come as N x 1 x H x W; the channel axis carries no information.
    return x[:, 0] if x.ndim == 4 and x.shape[1] == 1 else x


def pixel_auroc(masks: ArrayLike, maps: ArrayLike) -> float:
    """AUROC over all pixels of ground-truth ``masks`` (N x H x W, 0/1) and anomaly ``maps`` (N x H x W).

    Maps must already have the mask resolution: resizing is a method choice that changes the metric,
    so a mismatch is an error rather than being fixed silently.
    """
    m = _squeeze_channel(_to_numpy(masks))
    a = _squeeze_channel(_to_numpy(maps))
    if m.ndim != 3 or a.ndim != 3:
        raise ValueError(
            f"masks and anomaly maps must be N x H x W, got masks {tuple(m.shape)} and maps {tuple(a.shape)}"
        )
    if m.shape != a.shape:
        raise ValueError(
            f"anomaly maps must match the masks' shape, got maps {tuple(a.shape)} and masks {tuple(m.shape)}"
        )
    return _auroc(*_validate(m, a, label_name="masks", score_name="anomaly maps"))


def bootstrap_ci(
    labels: ArrayLike,
    scores: ArrayLike,
    metric: Metric = auroc,
    n: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap ``(1 - alpha)`` confidence interval of ``metric(labels, scores)``.

    Resampling is stratified by class (positives and negatives are resampled separately with their
    original counts), so every replicate has both classes and the class balance of the test set.
    """
    if int(n) < 1:
        raise ValueError(f"n (bootstrap rounds) must be >= 1, got {n}")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    n = int(n)
    y, s = _validate(labels, scores)
    pos_scores, neg_scores = s[y], s[~y]
    n_pos, n_neg = pos_scores.size, neg_scores.size
    # With stratification the label vector of every replicate is the same: positives first.
    boot_labels = np.r_[np.ones(n_pos, dtype=bool), np.zeros(n_neg, dtype=bool)]

    rng = np.random.default_rng(seed)
    stats = np.empty(n, dtype=np.float64)
    # Draw indices for a block of rounds at once (vectorized), with blocks capped at ~16M indices so
    # memory stays bounded for large inputs.
    block = max(1, (1 << 24) // boot_labels.size)
    for start in range(0, n, block):
        rounds = min(block, n - start)
        pos_idx = rng.integers(0, n_pos, size=(rounds, n_pos))
        neg_idx = rng.integers(0, n_neg, size=(rounds, n_neg))
        boot_scores = np.concatenate([pos_scores[pos_idx], neg_scores[neg_idx]], axis=1)
        for i in range(rounds):
            stats[start + i] = metric(boot_labels, boot_scores[i])
    low, high = np.quantile(stats, [alpha / 2, 1 - alpha / 2])
    return float(low), float(high)
