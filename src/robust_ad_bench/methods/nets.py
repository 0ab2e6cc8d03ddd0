"""Small convolutional networks sized to the image, shared by the baselines.

An encoder halves the resolution with stride-2 convolutions until it is 4×4 (8×8 digits: one halving;
32×32 textures: three), then maps to a latent vector; the decoder mirrors it.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def halvings(size: int) -> int:
    """Number of stride-2 stages that bring ``size`` down to 4 (at least one)."""
    if size < 8 or size & (size - 1):
        raise ValueError(f"image size must be a power of two >= 8, got {size}")
    return max(int(math.log2(size)) - 2, 1)


class ConvEncoder(nn.Module):
    """Conv stack to 4×4, then a linear map to ``latent`` features."""

    def __init__(self, image_shape: tuple[int, int, int], width: int = 32, latent: int = 32,
                 bias: bool = True) -> None:
        super().__init__()
        channels, size, _ = image_shape
        layers: list[nn.Module] = [nn.Conv2d(channels, width, 3, padding=1, bias=bias), nn.LeakyReLU(0.1)]
        ch = width
        for _ in range(halvings(size)):
            layers += [nn.Conv2d(ch, ch * 2, 4, stride=2, padding=1, bias=bias), nn.LeakyReLU(0.1)]
            ch *= 2
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(ch * 16, latent, bias=bias)
        self.out_channels = ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).flatten(1))


class ConvDecoder(nn.Module):
    """Mirror of ``ConvEncoder``: latent → 4×4 → transposed convolutions back to the image size."""

    def __init__(self, image_shape: tuple[int, int, int], width: int = 32, latent: int = 32) -> None:
        super().__init__()
        channels, size, _ = image_shape
        stages = halvings(size)
        ch = width * 2**stages
        self.start_channels = ch
        self.head = nn.Linear(latent, ch * 16)
        layers: list[nn.Module] = []
        for _ in range(stages):
            layers += [nn.LeakyReLU(0.1), nn.ConvTranspose2d(ch, ch // 2, 4, stride=2, padding=1)]
            ch //= 2
        layers += [nn.LeakyReLU(0.1), nn.Conv2d(ch, channels, 3, padding=1)]
        self.body = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.body(self.head(z).view(len(z), self.start_channels, 4, 4))
