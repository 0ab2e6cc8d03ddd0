"""Frozen feature extractors for feature-based methods (BGAD, SLA²P).

Where pretrained weights come from is ``weights.py``: without ``pretrained`` (the default) nothing is
downloaded: an explicit file, else torchvision's file found by its real names in ``ROBUST_AD_BENCH_WEIGHTS``
or torch hub's cache; with ``pretrained: true`` or a weights enum name (``IMAGENET1K_V1``) torchvision's (or
timm's) own mechanism, downloading when online.

- ``ImageNetFeatures``: the base of the two pretrained extractors: loads a torchvision model with local
  weights, keeps it frozen (always in eval mode), and owns the one input path (gray → RGB, bilinear resize,
  ImageNet normalization).
- ``TorchvisionFeatures``: an ImageNet-pretrained torchvision CNN, cut after a few stages (multi-level maps);
  a timm model name (``tf_efficientnet_b6``, with timm installed) takes timm's ``features_only`` stages.
- ``PretrainedFeatures``: the average-pool vector of a frozen torchvision ResNet.
- ``PretextFeatures``: without pretrained weights, a small ``ConvEncoder`` trained on the normal
  training images by the autoencoder pretext (``fit_by_reconstruction``), then frozen. Its stage outputs
  are the feature levels.
All take images in [0, 1] and normalize inside, so attacks and eps stay in pixel units.
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from robust_ad_bench.core.detector import ProgressFn
from robust_ad_bench.core.errors import unknown_choice
from robust_ad_bench.methods.common.networks import ConvDecoder, ConvEncoder
from robust_ad_bench.methods.common.training import MinibatchTrainer, Stream, make_optimizer
from robust_ad_bench.methods.common.weights import (  # noqa: F401  (re-exported: where methods found them)
    WEIGHTS_ENV,
    create_timm,
    find_weights,
    is_torchvision_model,
    load_torchvision,
    local_weights,
    weight_folders,
)

# stage modules whose outputs are the feature levels (strides 4, 8, 16 of the input)
TORCHVISION_STAGES: dict[str, tuple[str, ...]] = {
    "resnet18": ("layer1", "layer2", "layer3"),
    "wide_resnet50_2": ("layer1", "layer2", "layer3"),
    # EfficientNet: features[2] (stride 4), [3] (stride 8), [5] (end of the stride-16 stages), as the
    # paper's EfficientNet-B6 stages 1-3
    "efficientnet_b6": ("features.2", "features.3", "features.5"),
}
# name -> feature width of the average-pool output (``PretrainedFeatures``)
BACKBONES = {"resnet18": 512, "resnet50": 2048}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# timm backbones (when timm is installed): the stages at strides 4, 8, 16 (``features_only`` indices)
TIMM_OUT_INDICES = (1, 2, 3)


class ImageNetFeatures(nn.Module):
    """Base of the frozen ImageNet-pretrained extractors: ``load_pretrained`` a torchvision model with local weights;
    ``preprocess`` maps images in [0, 1] (1 or 3 channels) to the model's input."""

    # whether the ImageNet statistics are saved in ``state_dict``: checkpoints of ``TorchvisionFeatures``
    # (BGAD) hold them, those of ``PretrainedFeatures`` (SLA²P) do not; kept so cached models still load
    saves_input_stats: ClassVar[bool] = False

    def __init__(self, image_size: int) -> None:
        super().__init__()
        self.image_size = image_size
        saved = self.saves_input_stats
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=saved)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=saved)

    @staticmethod
    def load_pretrained(name: str, weights: str = "", pretrained: bool | str = False) -> nn.Module:
        """torchvision model ``name`` in eval mode with its ImageNet weights (``weights.load_torchvision``)."""
        return load_torchvision(name, pretrained, weights)

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        """Gray → RGB (the same value in the three channels), bilinear resize to ``image_size`` (differentiable),
        ImageNet normalization."""
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        if x.shape[-2:] != (self.image_size, self.image_size):
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False)
        return (x - self.mean) / self.std

    def train(self, mode: bool = True) -> ImageNetFeatures:
        return super().train(False)  # frozen: batch-norm statistics never move


class TorchvisionFeatures(ImageNetFeatures):
    """A frozen ImageNet CNN from torchvision; outputs the feature maps of three stages."""

    saves_input_stats = True

    def __init__(self, name: str, weights: str = "", image_size: int = 256, pretrained: bool | str = False) -> None:
        super().__init__(image_size)
        from torchvision.models.feature_extraction import create_feature_extractor

        if name in TORCHVISION_STAGES:
            stages = TORCHVISION_STAGES[name]
            self.body = create_feature_extractor(self.load_pretrained(name, weights, pretrained),
                                                 {s: s for s in stages})
        elif not is_torchvision_model(name) and _timm_has(name):  # timm's weights: local file, else download
            self.body = TimmStages(create_timm(name, pretrained=True, features_only=True,
                                               out_indices=TIMM_OUT_INDICES))
        else:
            raise unknown_choice("torchvision backbone", name, [*TORCHVISION_STAGES, "pretext",
                                                                "a timm model (timm installed)"])
        self.requires_grad_(False)
        with torch.no_grad():
            probe = self.body(torch.zeros(1, 3, image_size, image_size))
        self.channels = [v.shape[1] for v in probe.values()]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return list(self.body(self.preprocess(x)).values())


def _timm_has(name: str) -> bool:
    try:
        import timm
    except ImportError:
        return False
    return name in timm.list_models()


class TimmStages(nn.Module):
    """A timm ``features_only`` model as a dict of stage outputs (the interface of torchvision's extractor)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {str(i): f for i, f in enumerate(self.model(x))}


class PretrainedFeatures(ImageNetFeatures):
    """Average-pool features of a frozen torchvision ResNet at ``size`` px."""

    def __init__(self, name: str, size: int = 224) -> None:
        super().__init__(size)
        if name not in BACKBONES:
            raise unknown_choice("backbone", name, BACKBONES)
        net = self.load_pretrained(name)
        net.fc = nn.Identity()
        self.net = net.requires_grad_(False)
        self.out_features = BACKBONES[name]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.preprocess(x))


def fit_by_reconstruction(encoder: ConvEncoder, x: torch.Tensor, width: int, latent: int, *, epochs: int,
                          lr: float, weight_decay: float = 0.0, batch_size: int = 64,
                          report: ProgressFn | None = None) -> list[float]:
    """Train ``encoder`` with a throw-away ``ConvDecoder`` to reconstruct ``x`` (already normalized), by
    MSE with Adam; returns the mean loss of each epoch. The caller freezes the encoder afterwards."""
    decoder = ConvDecoder(tuple(x.shape[1:]), width, latent).to(x.device)
    encoder.requires_grad_(True)
    autoencoder = nn.Sequential(encoder, decoder)
    optimizer = make_optimizer(autoencoder.parameters(), lr, weight_decay)
    trainer = MinibatchTrainer(autoencoder, epochs, batch_size, report=report,
                               describe=lambda loss: f"pretext reconstruction loss {loss:.4f}")
    return trainer.run(Stream((x,), lambda batch: (autoencoder(batch) - batch).pow(2).mean(), optimizer))


class PretextFeatures(nn.Module):
    """A ``ConvEncoder`` trained by reconstruction on normal images; the outputs of its last ``levels``
    convolution stages (for 32×32 inputs: 16×16, 8×8 and 4×4) are the feature levels. They cover the image
    padded by ``padding`` (25×25: padded to 28×28, levels 28, 14 and 7 px); ``padding.crop`` of a map
    upsampled to ``padding.padded`` is aligned with the image."""

    def __init__(self, image_shape: tuple[int, int, int], width: int = 8, levels: int = 3) -> None:
        super().__init__()
        self.image_shape = image_shape
        self.width = width
        self.encoder = ConvEncoder(image_shape, width, latent=16)
        stages = len(self.encoder.features) // 2  # (conv, activation) pairs
        self.levels = min(levels, stages)
        self.first = stages - self.levels
        self.channels = [width * 2**i for i in range(self.first, stages)]
        self.padding = self.encoder.padding
        self.register_buffer("mean", torch.zeros(1, image_shape[0], 1, 1))
        self.register_buffer("std", torch.ones(1, image_shape[0], 1, 1))

    def fit(self, images: torch.Tensor, epochs: int, lr: float, batch_size: int = 64,
            report: ProgressFn | None = None) -> list[float]:
        """Train encoder + a throw-away decoder to reconstruct ``images``; then freeze the encoder."""
        self.mean.copy_(images.mean((0, 2, 3), keepdim=True))
        self.std.copy_(images.std((0, 2, 3), keepdim=True).clamp_min(1e-3))
        history = fit_by_reconstruction(self.encoder, (images - self.mean) / self.std, self.width, latent=16,
                                        epochs=epochs, lr=lr, weight_decay=1e-5, batch_size=batch_size,
                                        report=report)
        self.requires_grad_(False)
        return history

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        h = self.padding.pad((x - self.mean) / self.std)
        out = []
        for i, layer in enumerate(self.encoder.features):
            h = layer(h)
            if i % 2 == 1 and i // 2 >= self.first:  # after each activation of the kept stages
                out.append(h)
        return out
