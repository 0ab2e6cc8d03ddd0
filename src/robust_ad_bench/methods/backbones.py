"""Frozen ImageNet-pretrained torchvision backbones, loaded from local weight files only (no download).

Weights are looked up, in order, in the folder named by the environment variable
``ROBUST_AD_BENCH_WEIGHTS`` and in torch hub's checkpoint folder (``torch.hub.get_dir()/checkpoints``),
under torchvision's file names (``resnet50-*.pth``...). ``local_weights`` returns None when there are
none, so a method can fall back to features of its own.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from robust_ad_bench.benchmark.errors import BenchError, unknown_choice

WEIGHTS_ENV = "ROBUST_AD_BENCH_WEIGHTS"
# name -> feature width of the average-pool output
BACKBONES = {"resnet18": 512, "resnet50": 2048}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def weight_folders() -> list[Path]:
    folders = [Path(os.environ[WEIGHTS_ENV])] if os.environ.get(WEIGHTS_ENV) else []
    return folders + [Path(torch.hub.get_dir()) / "checkpoints"]


def local_weights(name: str) -> Path | None:
    """The first local weight file of backbone ``name`` (torchvision naming ``name-<hash>.pth``)."""
    if name not in BACKBONES:
        raise unknown_choice("backbone", name, BACKBONES)
    for folder in weight_folders():
        found = sorted(folder.glob(f"{name}-*.pth")) if folder.is_dir() else []
        if found:
            return found[0]
    return None


class PretrainedFeatures(nn.Module):
    """Average-pool features of a frozen torchvision ResNet at ``size`` px.

    Input: images in [0, 1], N×C×H×W with C = 1 or 3 (gray is repeated to RGB); resized with bilinear
    interpolation (differentiable) and normalized with the ImageNet statistics inside.
    """

    def __init__(self, name: str, size: int = 224) -> None:
        super().__init__()
        import torchvision  # only imported when a pretrained backbone is used

        path = local_weights(name)
        if path is None:
            folders = ", ".join(str(f) for f in weight_folders())
            raise BenchError(f"no local weights for backbone '{name}' (looked for {name}-*.pth in {folders}; "
                             f"set {WEIGHTS_ENV} to the folder that holds them)")
        net = getattr(torchvision.models, name)(weights=None)
        net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        net.fc = nn.Identity()
        self.net = net.eval().requires_grad_(False)
        self.size = size
        self.out_features = BACKBONES[name]
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def train(self, mode: bool = True) -> PretrainedFeatures:
        super().train(mode)
        self.net.eval()  # frozen: batch-norm statistics never move
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False)
        return self.net((x - self.mean) / self.std)
