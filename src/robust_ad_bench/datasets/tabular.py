"""scikit-learn's Wisconsin diagnostic breast-cancer table (569 × 30), one diagnosis normal.

Vectors are presented as 1×1×D "images" scaled to [0, 1] per feature with the minimum and maximum of the
training part (test values outside that range are clipped), so every method and attack runs unchanged and
eps means a fraction of each feature's training range. Convolutional methods need images of at least
8×8, so the dataset is left out of ``--datasets all``; name it to use it (``knn``, ``sla2p``, ``sla``).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch

from robust_ad_bench.core.dataset import Dataset, Split, seeded_generator
from robust_ad_bench.core.registry import register_dataset

TRAIN_FRACTION = 2 / 3
DIAGNOSES = ("malignant", "benign")  # scikit-learn's target 0 and 1


@lru_cache(maxsize=1)
def _load() -> tuple[torch.Tensor, torch.Tensor]:
    """All 569 rows (float32) and their targets (0 malignant, 1 benign); loaded once per process."""
    from sklearn.datasets import load_breast_cancer  # sklearn import is slow; only pay for it when used

    bunch = load_breast_cancer()
    return (torch.from_numpy(np.asarray(bunch.data, dtype=np.float32)),
            torch.from_numpy(np.asarray(bunch.target, dtype=np.int64)))


@register_dataset("breast-cancer")
class BreastCancer(Dataset):
    """Breast-cancer diagnostic vectors (scikit-learn, 30 features), one diagnosis vs the other."""

    version = "1"
    image_shape = (1, 1, 30)
    hidden = True  # vectors: convolutional methods cannot run on them, so not part of "all"
    # a few per cent of each feature's training range
    default_eps = {"linf": (4 / 255, 16 / 255), "l2": (0.1, 0.25)}

    def classes(self) -> list[str]:
        return ["benign", "malignant"]

    def split(self, normal_class: str, seed: int) -> Split:
        normal_class = self.check_class(normal_class)
        rows, targets = _load()
        g = seeded_generator("breast-cancer", seed, normal_class)
        normal = targets == DIAGNOSES.index(normal_class)
        normal_idx = torch.nonzero(normal).flatten()
        normal_idx = normal_idx[torch.randperm(len(normal_idx), generator=g)]
        n_train = round(len(normal_idx) * TRAIN_FRACTION)
        train_idx, test_normal_idx = normal_idx[:n_train], normal_idx[n_train:]
        pool = torch.nonzero(~normal).flatten()
        # as many anomalies as held-out normals (as far as the other diagnosis has rows)
        anomaly_idx = pool[torch.randperm(len(pool), generator=g)[:len(test_normal_idx)]]

        low = rows[train_idx].min(0).values
        span = (rows[train_idx].max(0).values - low).clamp_min(1e-12)

        def scaled(idx: torch.Tensor) -> torch.Tensor:
            return ((rows[idx] - low) / span).clamp(0.0, 1.0).view(len(idx), *self.image_shape)

        n_normal, n_anomalous = len(test_normal_idx), len(anomaly_idx)
        other = DIAGNOSES[1 - DIAGNOSES.index(normal_class)]
        return Split(
            train=scaled(train_idx),
            test=torch.cat([scaled(test_normal_idx), scaled(anomaly_idx)]),
            test_labels=torch.cat([torch.zeros(n_normal), torch.ones(n_anomalous)]).float(),
            test_defects=[""] * n_normal + [other] * n_anomalous,
        )
