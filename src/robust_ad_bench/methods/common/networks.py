"""Networks trained from scratch whose size follows the image, shared by the methods.

Every network here halves the resolution with stride-2 stages until the smaller side is 4 to 7 px (8×8
digits: one halving to 4×4; 32×32 textures: three, to 4×4; 25×25: two, to 7×7; 224×224: five, to 7×7) and
doubles the width at each halving (``halvings``); only the stage differs. Any H×W ≥ 8×8 works, square or
not: the conv autoencoder pads its input to a multiple of 2^halvings (``Padding``, replicated border,
cropped back on the way out) and its linear map reads the whole final grid (4×4 at powers of two); the
contrastive encoders pool globally.

- ``ConvEncoder`` / ``ConvDecoder``: a plain conv stack to the final grid and a linear map to a latent vector, and
  its mirror (autoencoder, Deep SVDD, the reconstruction pretext of the frozen feature extractors).
- Contrastive encoders (image → pooled feature vector, batch norm), picked by ``encoder_for``:
  ``small-cnn`` (a few 3×3 convolutions, for 8×8 digits, where a ResNet stem would leave nothing to
  convolve) and ``resnet`` (basic blocks; ResNet-18 with ``width=64, blocks=(2, 2, 2, 2)``). Below 224 px
  the ResNet has the CIFAR stem (one 3×3 convolution, no max-pool), which can stride by 2
  (``stem_stride``) to quarter the cost of the first stage; from 224 px the ImageNet stem (7×7 stride-2
  convolution and a max-pool), as torchvision's ``resnet18``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from robust_ad_bench.core.errors import unknown_choice

ENCODERS = ("auto", "small-cnn", "resnet")
IMAGENET_STEM_SIZE = 224  # from this size up the ResNet uses the ImageNet stem


MIN_SIDE = 8  # the smallest image side the conv encoders take (``Detector.min_image_size`` of their methods)


def halvings(size: int) -> int:
    """Number of stride-2 stages that bring a side of ``size`` px (the smaller side of the image) to 4–7 px,
    at least one: log2(size) − 2 for powers of two."""
    if size < MIN_SIDE:
        raise ValueError(f"image side must be >= {MIN_SIDE} px, got {size}")
    return max(size.bit_length() - 3, 1)


def halving_widths(width: int, size: int) -> list[tuple[int, int]]:
    """(input, output) channels of each stride-2 stage from ``width``: the width doubles at each halving."""
    return [(width * 2**i, width * 2 ** (i + 1)) for i in range(halvings(size))]


@dataclass(frozen=True)
class Padding:
    """Replicate-padding of H×W images to a multiple of ``multiple`` (split evenly between the two sides),
    and the crop that undoes it. No padding at all when H and W are multiples already."""

    height: int
    width: int
    multiple: int

    @property
    def padded(self) -> tuple[int, int]:
        return -(-self.height // self.multiple) * self.multiple, -(-self.width // self.multiple) * self.multiple

    @property
    def offsets(self) -> tuple[int, int]:
        """(top, left): rows and columns added before the image."""
        ph, pw = self.padded
        return (ph - self.height) // 2, (pw - self.width) // 2

    def pad(self, x: torch.Tensor) -> torch.Tensor:
        ph, pw = self.padded
        if (ph, pw) == (self.height, self.width):
            return x
        top, left = self.offsets
        return F.pad(x, (left, pw - self.width - left, top, ph - self.height - top), mode="replicate")

    def crop(self, x: torch.Tensor) -> torch.Tensor:
        """The image's own H×W out of a map at the padded size (the last two dimensions)."""
        if x.shape[-2:] == (self.height, self.width):
            return x
        top, left = self.offsets
        return x[..., top: top + self.height, left: left + self.width]


def conv_padding(image_shape: tuple[int, int, int]) -> tuple[Padding, tuple[int, int]]:
    """The padding of ``ConvEncoder``/``ConvDecoder`` for C×H×W images and the grid its stride-2 stages end
    at (4×4 for square powers of two)."""
    _, height, width = image_shape
    stages = halvings(min(height, width))
    padding = Padding(height, width, 2**stages)
    ph, pw = padding.padded
    return padding, (ph >> stages, pw >> stages)


class ConvEncoder(nn.Module):
    """Conv stack to a 4–7 px grid (4×4 at powers of two), then a linear map of the whole grid to ``latent``
    features. ``features`` alternates convolution and activation, one pair per stage (the frozen pretext
    encoder reads the stage outputs, which cover the padded image: ``padding``)."""

    def __init__(self, image_shape: tuple[int, int, int], width: int = 32, latent: int = 32,
                 bias: bool = True) -> None:
        super().__init__()
        channels, height, image_width = image_shape
        layers: list[nn.Module] = [nn.Conv2d(channels, width, 3, padding=1, bias=bias), nn.LeakyReLU(0.1)]
        stages = halving_widths(width, min(height, image_width))
        for ch_in, ch_out in stages:
            layers += [nn.Conv2d(ch_in, ch_out, 4, stride=2, padding=1, bias=bias), nn.LeakyReLU(0.1)]
        self.out_channels = stages[-1][1]
        self.padding, grid = conv_padding(image_shape)
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(self.out_channels * grid[0] * grid[1], latent, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(self.padding.pad(x)).flatten(1))


class ConvDecoder(nn.Module):
    """Mirror of ``ConvEncoder``: latent → the encoder's final grid → transposed convolutions back to the
    padded size, cropped to H×W."""

    def __init__(self, image_shape: tuple[int, int, int], width: int = 32, latent: int = 32) -> None:
        super().__init__()
        channels, height, image_width = image_shape
        stages = halving_widths(width, min(height, image_width))
        self.start_channels = stages[-1][1]
        self.padding, self.grid = conv_padding(image_shape)
        self.head = nn.Linear(latent, self.start_channels * self.grid[0] * self.grid[1])
        layers: list[nn.Module] = []
        for ch_small, ch_large in reversed(stages):
            layers += [nn.LeakyReLU(0.1), nn.ConvTranspose2d(ch_large, ch_small, 4, stride=2, padding=1)]
        layers += [nn.LeakyReLU(0.1), nn.Conv2d(width, channels, 3, padding=1)]
        self.body = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.padding.crop(self.body(self.head(z).view(len(z), self.start_channels, *self.grid)))


class SmallCNN(nn.Module):
    """Conv → (stride-2 conv, conv) per halving of ``size`` (the smaller image side) → global average pool;
    ``out_dim`` = last width. Any H×W: odd sides round up at each stride-2 convolution."""

    def __init__(self, in_channels: int, size: int, width: int = 32) -> None:
        super().__init__()
        # No bias before a batch norm (its shift is the bias): such a bias has no true gradient, only rounding
        # noise, which Adam's normalized step turns into full-size updates that batch norm's running mean
        # does not cancel; with it, the trained encoder's scores moved by 0.18 of their spread between two
        # CPU instruction sets, without it by 1e-5 (benchmarks/PINNED_VARIATION.md).
        layers: list[nn.Module] = [nn.Conv2d(in_channels, width, 3, padding=1, bias=False), nn.BatchNorm2d(width),
                                   nn.ReLU()]
        stages = halving_widths(width, size)
        for ch_in, ch_out in stages:
            layers += [nn.Conv2d(ch_in, ch_out, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(ch_out),
                       nn.ReLU(), nn.Conv2d(ch_out, ch_out, 3, padding=1, bias=False), nn.BatchNorm2d(ch_out),
                       nn.ReLU()]
        self.body = nn.Sequential(*layers)
        self.out_dim = stages[-1][1]

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
    the first stage). Output: globally pooled features of size ``out_dim`` (any H×W). ``size``: the smaller
    image side, which picks the stem."""

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
    """The contrastive encoder named ``kind``; ``auto``: the small CNN when the smaller image side is below
    32 px, else the ResNet.
    ``stem_stride`` 2 halves the resolution in the CIFAR stem (a cheap ResNet for CPU runs; 1 is
    ResNet-18's CIFAR stem)."""
    if kind not in ENCODERS:
        raise unknown_choice("backbone", kind, ENCODERS)
    channels, height, width_px = image_shape
    size = min(height, width_px)
    if kind == "auto":
        kind = "small-cnn" if size < 32 else "resnet"
    if kind == "small-cnn":
        return SmallCNN(channels, size, width)
    if not blocks or min(blocks) < 1:
        raise ValueError(f"blocks must be a non-empty list of positive counts, got {list(blocks)}")
    return ResNet(channels, size, width, tuple(blocks), stem_stride)
