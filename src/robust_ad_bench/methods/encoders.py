"""Encoders trained from scratch (image → vector) whose size scales with the image, shared by contrastive methods.

- ``small-cnn``: a few 3×3 convolutions with stride-2 halvings down to 4×4, then global average pooling
  (for 8×8 digits, where a ResNet stem would leave nothing to convolve).
- ``resnet``: a ResNet of basic blocks (ResNet-18 with ``width=64, blocks=(2, 2, 2, 2)``). Below 224 px
  it has the CIFAR stem (one 3×3 convolution, no max-pool); at 224 px and up the ImageNet stem
  (7×7 stride-2 convolution and a max-pool), as torchvision's ``resnet18``. The CIFAR stem can stride by
  2 (``stem_stride``), which quarters the cost of the first stage.
``encoder_for`` picks one from the image size when the config says ``auto``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from robust_ad_bench.core.errors import unknown_choice
from robust_ad_bench.methods.nets import halvings

ENCODERS = ("auto", "small-cnn", "resnet")
IMAGENET_STEM_SIZE = 224  # from this size up the ResNet uses the ImageNet stem


class SmallCNN(nn.Module):
    """Conv → (stride-2 conv, conv) per halving → global average pool; ``out_dim`` = last width."""

    def __init__(self, in_channels: int, size: int, width: int = 32) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(in_channels, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU()]
        ch = width
        for _ in range(halvings(size)):
            layers += [nn.Conv2d(ch, ch * 2, 3, stride=2, padding=1), nn.BatchNorm2d(ch * 2), nn.ReLU(),
                       nn.Conv2d(ch * 2, ch * 2, 3, padding=1), nn.BatchNorm2d(ch * 2), nn.ReLU()]
            ch *= 2
        self.body = nn.Sequential(*layers)
        self.out_dim = ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x).mean((2, 3))


class BasicBlock(nn.Module):
    """Two 3×3 convolutions with batch norm and an identity (or 1×1 projection) shortcut."""

    def __init__(self, in_ch: int, out_ch: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_ch != out_ch:
            self.shortcut = nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False),
                                          nn.BatchNorm2d(out_ch))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNet(nn.Module):
    """ResNet of basic blocks; stage i has ``blocks[i]`` blocks of ``width·2^i`` channels (stride 2 after
    the first stage). Output: globally pooled features of size ``out_dim``."""

    def __init__(self, in_channels: int, size: int, width: int = 64, blocks: tuple[int, ...] = (2, 2, 2, 2),
                 stem_stride: int = 1) -> None:
        super().__init__()
        if size >= IMAGENET_STEM_SIZE:
            self.stem = nn.Sequential(nn.Conv2d(in_channels, width, 7, stride=2, padding=3, bias=False),
                                      nn.BatchNorm2d(width), nn.ReLU(), nn.MaxPool2d(3, stride=2, padding=1))
        else:
            self.stem = nn.Sequential(nn.Conv2d(in_channels, width, 3, stride=stem_stride, padding=1, bias=False),
                                      nn.BatchNorm2d(width), nn.ReLU())
        stages: list[nn.Module] = []
        ch = width
        for i, n_blocks in enumerate(blocks):
            out_ch = width * 2**i
            for j in range(n_blocks):
                stages.append(BasicBlock(ch, out_ch, stride=2 if (i > 0 and j == 0) else 1))
                ch = out_ch
        self.stages = nn.Sequential(*stages)
        self.out_dim = ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(self.stem(x)).mean((2, 3))


def encoder_for(kind: str, image_shape: tuple[int, int, int], width: int, blocks: tuple[int, ...],
                 stem_stride: int = 1) -> SmallCNN | ResNet:
    """The backbone named ``kind``; ``auto``: the small CNN below 32 px, else the ResNet. ``stem_stride`` 2
    halves the resolution in the CIFAR stem (a cheap ResNet for CPU runs; 1 is ResNet-18's CIFAR stem)."""
    if kind not in ENCODERS:
        raise unknown_choice("backbone", kind, ENCODERS)
    channels, size, _ = image_shape
    if kind == "auto":
        kind = "small-cnn" if size < 32 else "resnet"
    if kind == "small-cnn":
        return SmallCNN(channels, size, width)
    if not blocks or min(blocks) < 1:
        raise ValueError(f"blocks must be a non-empty list of positive counts, got {list(blocks)}")
    return ResNet(channels, size, width, tuple(blocks), stem_stride)
