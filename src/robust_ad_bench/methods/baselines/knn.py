"""k-nearest-neighbour distance to the training set in a fixed feature space."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from robust_ad_bench.core.dataset import TrainSet
from robust_ad_bench.core.detector import Detector
from robust_ad_bench.core.errors import unknown_choice
from robust_ad_bench.core.registry import register_method

FEATURES = ("pixels", "random-conv")


@dataclass
class KNNConfig:
    k: int = 5
    features: str = "pixels"  # "pixels": normalized images; "random-conv": fixed random filters, pooled
    conv_channels: int = 64
    seed: int = 0  # of the random filters

    def __post_init__(self) -> None:
        if self.features not in FEATURES:
            raise unknown_choice("knn features", self.features, FEATURES)
        if self.k < 1:
            raise ValueError(f"k must be >= 1, got {self.k}")


@register_method("knn")
class KNN(Detector):
    """kNN: mean distance to the k nearest training images in a fixed feature space (pixels by default)."""

    Config = KNNConfig

    def __init__(self, image_shape, config=None) -> None:
        super().__init__(image_shape, config)
        c = self.config
        self.conv = nn.Conv2d(self.image_shape[0], c.conv_channels, 3, padding=1)
        generator = torch.Generator().manual_seed(c.seed)
        with torch.no_grad():
            self.conv.weight.copy_(torch.randn(self.conv.weight.shape, generator=generator) / 3)
            self.conv.bias.zero_()
        self.conv.requires_grad_(False)
        self.register_buffer("bank", torch.zeros(0, 1))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        z = self.normalize(x)
        if self.config.features == "random-conv":
            z = F.avg_pool2d(F.relu(self.conv(z)), 2, ceil_mode=True)  # odd sides: the last row/column kept
        return z.flatten(1)

    def score(self, x: torch.Tensor) -> torch.Tensor:
        f = self.features(x)
        # squared distances by expansion; the clamp keeps sqrt differentiable at zero distance
        d2 = f.pow(2).sum(1, keepdim=True) + self.bank.pow(2).sum(1) - 2 * f @ self.bank.T
        k = min(self.config.k, len(self.bank))
        return d2.clamp_min(1e-12).sqrt().topk(k, dim=1, largest=False).values.mean(1)

    def fit(self, train: TrainSet) -> None:
        images = train.images.to(self.device)
        self.set_input_stats(images)
        with torch.no_grad():
            self.bank = self.features(images)
        self.report(1, 1)
