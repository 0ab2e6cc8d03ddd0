"""Convolutional autoencoder: reconstruction error as score and anomaly map.

``ae-at`` is the same model trained adversarially on normal data: each batch is replaced in part by PGD
copies that maximize the reconstruction error, so the attacker can no longer make normals look anomalous
cheaply.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from robust_ad_bench.attacks.gradient import pgd
from robust_ad_bench.core.dataset import TrainSet
from robust_ad_bench.core.detector import Detector
from robust_ad_bench.core.registry import register_method
from robust_ad_bench.methods.common.networks import MIN_SIDE, ConvDecoder, ConvEncoder
from robust_ad_bench.methods.common.training import TrainConfig, train_on_images, training_eps


@dataclass
class AEConfig(TrainConfig):
    width: int = 8
    latent: int = 16
    lr: float = 2e-3
    weight_decay: float = 1e-5


@register_method("ae")
class AutoEncoder(Detector):
    """Convolutional autoencoder; score = mean squared reconstruction error, map = per-pixel error."""

    Config = AEConfig
    min_image_size = MIN_SIDE

    def __init__(self, image_shape, config=None) -> None:
        super().__init__(image_shape, config)
        c = self.config
        self.encoder = ConvEncoder(self.image_shape, c.width, c.latent)
        self.decoder = ConvDecoder(self.image_shape, c.width, c.latent)

    def error_map(self, x: torch.Tensor) -> torch.Tensor:
        """Squared error between normalized input and its reconstruction, averaged over channels."""
        z = self.normalize(x)
        return (self.decoder(self.encoder(z)) - z).pow(2).mean(1)

    def score(self, x: torch.Tensor) -> torch.Tensor:
        return self.error_map(x).flatten(1).mean(1)

    def anomaly_map(self, x: torch.Tensor) -> torch.Tensor:
        return self.error_map(x)

    def training_loss(self, x: torch.Tensor) -> torch.Tensor:
        return self.score(x).mean()

    def fit(self, train: TrainSet) -> None:
        self.set_input_stats(train.images.to(self.device))
        train_on_images(self, train.images, self.training_loss)


@dataclass
class AEATConfig(AEConfig):
    train_eps: float | None = None  # Linf budget of the training attack; None: the dataset's largest
    train_steps: int = 3
    adv_fraction: float = 0.5  # weight of the adversarial loss (the rest is the clean loss)


@register_method("ae-at")
class AdversarialAutoEncoder(AutoEncoder):
    """Autoencoder adversarially trained with PGD-Linf on normal data (maximizing reconstruction error)."""

    Config = AEATConfig
    adversarially_trained = True

    def fit(self, train: TrainSet) -> None:
        self.train_eps = training_eps(train, self.config.train_eps)
        super().fit(train)

    def training_loss(self, x: torch.Tensor) -> torch.Tensor:
        c = self.config
        x_adv = pgd(self.score, x, eps=self.train_eps, norm="linf", steps=c.train_steps)
        return (1 - c.adv_fraction) * self.score(x).mean() + c.adv_fraction * self.score(x_adv).mean()
