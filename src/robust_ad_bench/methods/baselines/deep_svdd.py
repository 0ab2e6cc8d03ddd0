"""Deep SVDD (Ruff et al., ICML 2018), one-class variant: distance to a fixed centre in feature space."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from robust_ad_bench.core.dataset import TrainSet
from robust_ad_bench.core.detector import Detector
from robust_ad_bench.core.registry import register_method
from robust_ad_bench.methods.common.networks import MIN_SIDE, ConvEncoder
from robust_ad_bench.methods.common.training import TrainConfig, train_on_images


@dataclass
class DeepSVDDConfig(TrainConfig):
    width: int = 8
    latent: int = 32
    weight_decay: float = 1e-6


@register_method("deep-svdd")
class DeepSVDD(Detector):
    """Deep SVDD: squared distance of bias-free CNN features to the centre of the training features."""

    Config = DeepSVDDConfig
    min_image_size = MIN_SIDE

    def __init__(self, image_shape, config=None) -> None:
        super().__init__(image_shape, config)
        # no bias terms: with biases the network can map everything onto the centre (hypersphere collapse)
        self.encoder = ConvEncoder(self.image_shape, self.config.width, self.config.latent, bias=False)
        self.register_buffer("center", torch.zeros(self.config.latent))

    def score(self, x: torch.Tensor) -> torch.Tensor:
        return (self.encoder(self.normalize(x)) - self.center).pow(2).sum(1)

    def fit(self, train: TrainSet) -> None:
        images = train.images.to(self.device)
        self.set_input_stats(images)
        with torch.no_grad():
            center = self.encoder(self.normalize(images)).mean(0)
            # coordinates near zero would be matched trivially by zero weights: push them away (as Ruff et al.)
            center[(center.abs() < 0.1) & (center < 0)] = -0.1
            center[(center.abs() < 0.1) & (center >= 0)] = 0.1
            self.center.copy_(center)
        train_on_images(self, images, lambda x: self.score(x).mean())
