"""AUPRO: the per-region overlap curve integrated up to 30 % false-positive rate, as MVTec AD reports it
(Bergmann et al., "The MVTec Anomaly Detection Dataset", IJCV 2021).

Each connected defect region of the ground truth (4-connectivity, per image) counts equally: at a threshold
t its overlap is the share of its pixels scored at or above t, and the PRO at t is the mean overlap over all
regions of all images. The false-positive rate is over every pixel outside the defects (normal images and the
normal part of anomalous ones). The area under PRO against FPR from 0 to ``limit`` (the curve linearly
interpolated at ``limit``) is divided by ``limit``, so a perfect map scores 1.

Vectorized: the mean overlap at t is a sum over defect pixels scored at or above t of 1 / (region size ·
regions), so after one sort of all pixels both curves are cumulative sums, read at the last pixel of each run
of equal scores (tied pixels enter together, as with a threshold loop).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from robust_ad_bench.benchmark.protocol.metrics import _squeeze_channel, _to_numpy

FPR_LIMIT = 0.3


def _regions(masks: np.ndarray) -> tuple[np.ndarray, int]:
    """Labels of the connected defect regions (0: no defect), per image: no region spans two images."""
    structure = np.zeros((3, 3, 3), dtype=bool)
    structure[1] = ndimage.generate_binary_structure(2, 1)  # 4-connectivity inside each image only
    return ndimage.label(masks, structure=structure)


def pro_curve(masks: np.ndarray, maps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(fpr, pro) at every distinct score, descending thresholds, starting at (0, 0)."""
    labels, count = _regions(masks)
    flat_labels = labels.reshape(-1)
    sizes = np.bincount(flat_labels, minlength=count + 1).astype(np.float64)
    weight = np.zeros(count + 1)
    weight[1:] = 1.0 / (sizes[1:] * count)
    scores = maps.reshape(-1).astype(np.float64)
    order = np.argsort(scores, kind="stable")[::-1]
    ranked = scores[order]
    region = flat_labels[order]
    last = np.r_[np.flatnonzero(np.diff(ranked)), ranked.size - 1]  # last pixel of each run of equal scores
    pro = np.cumsum(weight[region])[last]
    normal = np.cumsum(region == 0)[last] / max(int((flat_labels == 0).sum()), 1)
    return np.r_[0.0, normal], np.r_[0.0, pro]


def integrate(fpr: np.ndarray, pro: np.ndarray, limit: float = FPR_LIMIT) -> float:
    """Area under pro(fpr) from 0 to ``limit`` (linear between points, interpolated at ``limit``), / limit."""
    inside = fpr <= limit
    x, y = fpr[inside], pro[inside]
    if x[-1] < limit and inside.sum() < fpr.size:
        nxt = int(np.argmax(~inside))  # the first point past the limit
        x0, y0 = fpr[nxt - 1], pro[nxt - 1]
        x1, y1 = fpr[nxt], pro[nxt]
        y_at = y0 + (y1 - y0) * (limit - x0) / (x1 - x0)
        x, y = np.r_[x, limit], np.r_[y, y_at]
    return float(np.trapezoid(y, x) / limit)


def aupro(masks: object, maps: object, limit: float = FPR_LIMIT) -> float:
    """Normalized area under the per-region-overlap curve up to ``limit`` FPR for N×H×W ``masks`` (0/1) and
    anomaly ``maps`` of the same shape."""
    m = _squeeze_channel(_to_numpy(masks))
    a = _squeeze_channel(_to_numpy(maps))
    if m.ndim != 3 or m.shape != a.shape:
        raise ValueError(f"masks and anomaly maps must both be N x H x W of one shape, got masks {tuple(m.shape)} "
                         f"and maps {tuple(a.shape)}")
    if not 0.0 < limit <= 1.0:
        raise ValueError(f"the FPR limit must be in (0, 1], got {limit}")
    if not np.isfinite(a).all():
        raise ValueError(f"anomaly maps contain {int((~np.isfinite(a)).sum())} non-finite values")
    bad = ~np.isin(m, (0, 1))
    if bad.any():
        raise ValueError(f"masks must contain only 0 and 1, got {np.unique(m[bad])[:5]}")
    m = m.astype(bool)
    if not m.any():
        raise ValueError("masks contain no defect region: AUPRO is undefined")
    if m.all():
        raise ValueError("masks contain no normal pixel: AUPRO is undefined")
    return integrate(*pro_curve(m, a), limit)
