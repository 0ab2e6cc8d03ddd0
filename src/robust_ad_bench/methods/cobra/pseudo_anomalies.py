"""Pseudo-anomalies made from normal images, and the SimCLR-style view augmentations.

A pseudo-anomaly transform maps a batch to K groups (group 0 = the image itself): ``rotation`` gives the
four 90° rotations (for object-centred data such as digits or CIFAR), ``scar`` gives the image and a
"scar" CutPaste copy (``scar.py``: the authors' strip, colour-jittered, blurred, mirrored, rotated and pasted
elsewhere; sometimes a black hole), for textures and industrial images. All ops are batched tensor ops; the
random ones take a CPU ``torch.Generator`` and can draw one set of parameters for a whole batch (``shared``).

Non-square images (H ≠ W): a quarter turn makes an H×W image W×H, so the 90° and 270° groups are resized back
to H×W (bilinear, antialiased, differentiable; ``quarter_turn``). The four groups stay four distinct
orientations. The shape-preserving alternatives were rejected: {0°, 180°, vertical flip, horizontal flip}
collapses to two groups under the random horizontal flips of the views and of the score's draws (a flip of a
180° turn is a vertical flip). ``auto`` measures the same resized turns; the squeeze alone does not move
textures off their training set (grass, gravel, brick patches cropped to 32×24, 32×16 or 32×8: 0.84–1.33, as
square; digits resized to 8×12, 8×16 or 12×8: 2.5–4.2, as square).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from robust_ad_bench.core.errors import unknown_choice
from robust_ad_bench.methods.cobra.scar import STRIP_LENGTH, STRIP_WIDTH, draw, hsv_adjust, scar

PSEUDO_ANOMALIES = ("auto", "rotation", "scar")
GROUPS = {"rotation": 4, "scar": 2}
HUE_JITTER = 0.1  # the authors' ColorJitterLayer(0.4, 0.4, 0.4, hue=0.1, p=0.8)


def num_groups(kind: str) -> int:
    if kind not in GROUPS:
        raise unknown_choice("pseudo-anomaly", kind, GROUPS)
    return GROUPS[kind]


def quarter_turn(x: torch.Tensor, k: int) -> torch.Tensor:
    """``x`` turned by k·90°, as an H×W image: an odd turn of a non-square image is resized back to H×W."""
    turned = torch.rot90(x, k, dims=(2, 3))
    if turned.shape[-2:] == x.shape[-2:]:
        return turned
    return F.interpolate(turned, size=x.shape[-2:], mode="bilinear", align_corners=False, antialias=True)


def expand_groups(x: torch.Tensor, kind: str, scar_size: tuple[tuple[float, float], tuple[float, float]] = (
        STRIP_WIDTH, STRIP_LENGTH), generator: torch.Generator | None = None, shared: bool = False) -> torch.Tensor:
    """K·N images: group k of ``x`` for k = 0..K-1, group-major (rows k·N..(k+1)·N-1 are group k).
    ``scar_size``: the strip's (width, length) ranges as fractions of the smaller side."""
    if kind == "rotation":
        return torch.cat([quarter_turn(x, k) for k in range(4)])
    if kind == "scar":
        return torch.cat([x, scar(x, *scar_size, generator=generator, shared=shared)[0]])
    raise unknown_choice("pseudo-anomaly", kind, GROUPS)


def rotation_distinctness(images: torch.Tensor) -> float:
    """How far rotated training images lie from the training set, relative to how far the training images
    lie from each other: median nearest-neighbour distance of the rotations over the leave-one-out median
    nearest-neighbour distance of the images themselves (pixel space). The turns are those of the
    ``rotation`` groups (``quarter_turn``: 90° and 270° resized back to H×W on non-square images)."""
    flat = images.flatten(1)
    d_self = torch.cdist(flat, flat)
    d_self.fill_diagonal_(float("inf"))
    rotated = torch.cat([quarter_turn(images, k) for k in (1, 2, 3)]).flatten(1)
    d_rot = torch.cdist(rotated, flat).min(1).values
    return float(d_rot.median() / d_self.min(1).values.median().clamp_min(1e-8))


def choose_pseudo_anomaly(kind: str, images: torch.Tensor, threshold: float) -> str:
    """``auto`` → ``rotation`` when rotations move images clearly off the training set (object-centred data),
    else ``scar`` (textures and aligned industrial images, whose rotations can look normal)."""
    if kind not in PSEUDO_ANOMALIES:
        raise unknown_choice("pseudo-anomaly", kind, PSEUDO_ANOMALIES)
    if kind != "auto":
        return kind
    return "rotation" if rotation_distinctness(images) >= threshold else "scar"


def random_flip(x: torch.Tensor, generator: torch.Generator | None = None, shared: bool = False) -> torch.Tensor:
    """Each image mirrored with p = 0.5 (one coin for the batch when ``shared``)."""
    flip = (draw(len(x), generator, shared) < 0.5).to(x.device)
    return torch.where(flip[:, None, None, None], x.flip(3), x)


def simclr_augment(x: torch.Tensor, jitter: float, crop_scale: tuple[float, float], generator: torch.Generator |
                   None = None, shared: bool = False, hue: float = HUE_JITTER) -> torch.Tensor:
    """The authors' view augmentation (rohban-lab/COBRA, ``get_simclr_augmentation`` with their
    ``ColorJitterLayer``, ``RandomColorGrayLayer`` and ``RandomResizedCropLayer``), in their order:

    1. with p = 0.8 per image, colour jitter: a contrast change about each channel's mean (factor in
       1 ± ``jitter``) and an HSV change (hue turned by a factor in ± ``hue`` times 255/360 of the circle, as
       their layer scales it; saturation and value multiplied by factors in 1 ± ``jitter``), the two in a
       random order (one coin per call, as theirs per batch); a one-channel image has only its value (V = the
       pixel) scaled;
    2. colour images turn gray with p = 0.2;
    3. a random resized crop whose area is drawn in ``crop_scale`` (aspect 3/4–4/3, reflection padding); none
       when ``crop_scale`` is (1, 1).

    Random numbers from ``generator`` (CPU; the global one when None), one draw for the batch when ``shared``.
    Differentiable (the authors' HSV layer passes the gradient straight through; ours is the exact one)."""
    n, c = x.shape[:2]
    dev, dt = x.device, x.dtype

    def rand(*size: int) -> torch.Tensor:
        return draw(n, generator, shared, *size).to(dev, dt)

    if jitter > 0 or hue > 0:
        apply = rand(1, 1, 1) < 0.8
        contrast, saturation, value = (1 + jitter * (rand(1, 1, 1) * 2 - 1) for _ in range(3))
        shift = hue * (rand(1, 1, 1) * 2 - 1) * 255 / 360
        contrast_first = bool(draw(1, generator, True)[0] < 0.5)

        def adjust_contrast(y: torch.Tensor) -> torch.Tensor:
            mean = y.mean((2, 3), keepdim=True)
            return ((y - mean) * contrast + mean).clamp(0, 1)

        def adjust_hsv(y: torch.Tensor) -> torch.Tensor:
            if c != 3:
                return (y * value).clamp(0, 1)
            return hsv_adjust(y, shift, saturation, value)

        jittered = adjust_hsv(adjust_contrast(x)) if contrast_first else adjust_contrast(adjust_hsv(x))
        x = torch.where(apply, jittered, x)
    if c == 3:
        gray = (x * torch.tensor([0.299, 0.587, 0.114], device=dev, dtype=dt)[:, None, None]).sum(1, True)
        x = torch.where(rand(1, 1, 1) < 0.2, gray.expand_as(x), x)
    lo, hi = crop_scale
    if lo < 1:
        area = lo + (hi - lo) * rand()
        log_ratio = (rand() * 2 - 1) * math.log(4 / 3)
        sx = (area * log_ratio.exp()).sqrt().clamp(max=1)
        sy = (area / log_ratio.exp()).sqrt().clamp(max=1)
        tx = (rand() * 2 - 1) * (1 - sx)
        ty = (rand() * 2 - 1) * (1 - sy)
        zero = torch.zeros_like(sx)
        theta = torch.stack([torch.stack([sx, zero, tx], 1), torch.stack([zero, sy, ty], 1)], 1)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    return x.clamp(0, 1)
