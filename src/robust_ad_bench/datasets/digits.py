"""scikit-learn's 8×8 handwritten digits, one digit normal and the other nine anomalous."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
import torch

from robust_ad_bench.core.dataset import Dataset, Split, seeded_generator
from robust_ad_bench.core.errors import BenchError
from robust_ad_bench.core.registry import register_dataset

TRAIN_FRACTION = 2 / 3
FEWEST_IMAGES_OF_A_DIGIT = 174  # digit 8, the rarest in scikit-learn's set


@dataclass
class DigitsOptions:
    """The test set's size (YAML ``dataset_params: {digits: {...}}``); part of the job key, not of the trained
    weights' key (the training images are drawn first and do not depend on them)."""

    # test anomalies drawn from each of the nine other digits
    anomalies_per_digit: int = field(default=30, metadata={"test_only": True})
    # held-out normals kept in the test set; 0: all (a third of the digit's images)
    test_normals: int = field(default=0, metadata={"test_only": True})

    def __post_init__(self) -> None:
        if not 1 <= self.anomalies_per_digit <= FEWEST_IMAGES_OF_A_DIGIT:
            raise BenchError(f"digits option anomalies_per_digit must be in 1..{FEWEST_IMAGES_OF_A_DIGIT}, "
                             f"got {self.anomalies_per_digit}")
        if self.test_normals < 0:
            raise BenchError(f"digits option test_normals must be >= 0 (0: all), got {self.test_normals}")


@lru_cache(maxsize=1)
def _load() -> tuple[torch.Tensor, torch.Tensor]:
    """All 1797 images (N×1×8×8 float32 in [0, 1]) and their digit labels; loaded once per process."""
    from sklearn.datasets import load_digits  # sklearn import is slow; only pay for it when used

    bunch = load_digits()
    images = torch.from_numpy(np.asarray(bunch.images, dtype=np.float32) / 16.0).unsqueeze(1)
    targets = torch.from_numpy(np.asarray(bunch.target, dtype=np.int64))
    return images, targets


@register_dataset("digits")
class Digits(Dataset):
    """8×8 handwritten digits (scikit-learn), one digit vs the rest; tiny, for smoke tests."""

    version = "1"
    image_shape = (1, 8, 8)
    # 8x8 digits have 17 gray levels (one level = 16/255): budgets below that barely move any score, so
    # the defaults go up to two gray levels
    default_eps = {"linf": (8 / 255, 32 / 255), "l2": (0.25, 0.5)}
    Options = DigitsOptions

    def __init__(self, options: DigitsOptions | None = None) -> None:
        self.options = options or DigitsOptions()

    def classes(self) -> list[str]:
        return [str(d) for d in range(10)]

    def anomaly_counts(self, normal_class: str) -> dict[str, int] | None:
        digit = int(self.check_class(normal_class))
        return {f"digit-{d}": self.options.anomalies_per_digit for d in range(10) if d != digit}

    def split(self, normal_class: str, seed: int) -> Split:
        normal_class = self.check_class(normal_class)
        digit = int(normal_class)
        images, targets = _load()
        g = seeded_generator("digits", seed, normal_class)

        normal_idx = torch.nonzero(targets == digit).flatten()
        normal_idx = normal_idx[torch.randperm(len(normal_idx), generator=g)]
        n_train = round(len(normal_idx) * TRAIN_FRACTION)
        train_idx, test_normal_idx = normal_idx[:n_train], normal_idx[n_train:]
        if self.options.test_normals:
            test_normal_idx = test_normal_idx[:self.options.test_normals]

        # the same number of each other digit, so no single digit dominates the anomaly score
        per_digit = self.options.anomalies_per_digit
        anomaly_idx, defects = [], []
        for other in range(10):
            if other == digit:
                continue
            idx = torch.nonzero(targets == other).flatten()
            anomaly_idx.append(idx[torch.randperm(len(idx), generator=g)[:per_digit]])
            defects += [f"digit-{other}"] * per_digit
        anomaly_idx_t = torch.cat(anomaly_idx)

        n_normal, n_anomalous = len(test_normal_idx), len(anomaly_idx_t)
        test = torch.cat([images[test_normal_idx], images[anomaly_idx_t]])
        labels = torch.cat([torch.zeros(n_normal), torch.ones(n_anomalous)]).float()
        return Split(
            train=images[train_idx].clone(),
            test=test,
            test_labels=labels,
            test_defects=[""] * n_normal + defects,
        )
