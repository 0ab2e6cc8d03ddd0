"""BGAD's "RandAugmented CutPaste" (Yao et al., CVPR 2023; the authors' ``MVTecFSCopyPasteDataset``): a known
anomaly and its mask go through 3 augmentation ops drawn at random (without replacement) from a list of 10,
and its masked pixels are pasted onto a random normal image.

The authors' ops come from albumentations and are applied to the full image and mask. Ours are batched
tensor versions that keep each op's kind, range and probability:

| # | authors' op (probability) | ours |
|---|---|---|
| 0 | RandomRotate90 (0.5) | quarter turns (half turns only for non-square images) |
| 1 | Flip (0.5): horizontal, vertical or both | the same |
| 2 | Transpose (0.5) | the same (square images; identity otherwise) |
| 3 | OpticalDistortion (1.0, distort_limit 1) | radial distortion k ∈ [−1, 1], centre shift ≤ 0.05 |
| 4 | one of 2 Gaussian noises (0.2) | additive Gaussian noise, std ∈ [0.01, 0.03] |
| 5 | one of motion, median, box blur 3×3 (0.2) | 3×3 box blur |
| 6 | ShiftScaleRotate (0.2): shift 0.0625, scale 0.2, rotate 45° | the same affine map |
| 7 | one of optical, grid, piecewise-affine distortion (0.2) | a smooth random displacement field |
| 8 | one of CLAHE, sharpen, emboss, brightness-contrast (0.3) | brightness and contrast ± 0.2 |
| 9 | HueSaturationValue (0.3) | value shift ± 20/255 (hue and saturation need colour) |

Placement: the authors paste where the augmented defect lies when at least 2/3 of it is inside the normal
image's foreground mask (precomputed files, not in their repository), and otherwise move it to a random
foreground point. For texture images the whole image is foreground, so the defect is pasted in place; we do
that for every image (no foreground masks here). The geometric ops already move the defect around.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

N_OPS, OPS_PER_SAMPLE = 10, 3
PROBABILITY = torch.tensor([0.5, 0.5, 0.5, 1.0, 0.2, 0.2, 0.2, 0.2, 0.3, 0.3])


def _uniform(n: int, lo: float, hi: float, g: torch.Generator) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=g)


def _identity_grid(n: int, height: int, width: int) -> torch.Tensor:
    """Sampling grid of the identity map, N×H×W×2 in grid_sample's (x, y) ∈ [−1, 1] convention."""
    theta = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]).expand(n, 2, 3)
    return F.affine_grid(theta, [n, 1, height, width], align_corners=False)


def _resample(images: torch.Tensor, masks: torch.Tensor, grid: torch.Tensor,
              active: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Images and masks sampled at ``grid`` where ``active`` (masks stay binary: bilinear, then > 0.5)."""
    moved = F.grid_sample(images, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    moved_masks = F.grid_sample(masks, grid, mode="bilinear", padding_mode="zeros", align_corners=False) > 0.5
    a = active[:, None, None, None]
    return torch.where(a, moved, images), torch.where(a, moved_masks.float(), masks)


def _quarter_turns(images, masks, active, g):
    square = images.shape[-1] == images.shape[-2]
    turns = torch.randint(4, (len(images),), generator=g) if square else 2 * torch.randint(2, (len(images),),
                                                                                        generator=g)
    turns = torch.where(active, turns, torch.zeros_like(turns))
    out_i, out_m = images.clone(), masks.clone()
    for k in range(1, 4):  # at most three groups, each one batched
        sel = turns == k
        if sel.any():
            out_i[sel], out_m[sel] = images[sel].rot90(k, (-2, -1)), masks[sel].rot90(k, (-2, -1))
    return out_i, out_m


def _flip(images, masks, active, g):
    kind = torch.randint(3, (len(images),), generator=g)  # 0: vertical, 1: horizontal, 2: both
    vertical = (active & (kind != 1))[:, None, None, None]
    horizontal = (active & (kind != 0))[:, None, None, None]
    images = torch.where(vertical, images.flip(-2), images)
    masks = torch.where(vertical, masks.flip(-2), masks)
    return torch.where(horizontal, images.flip(-1), images), torch.where(horizontal, masks.flip(-1), masks)


def _transpose(images, masks, active, g):
    if images.shape[-1] != images.shape[-2]:
        return images, masks
    a = active[:, None, None, None]
    return torch.where(a, images.transpose(-1, -2), images), torch.where(a, masks.transpose(-1, -2), masks)


def _optical(images, masks, active, g):
    n, _, height, width = images.shape
    k = _uniform(n, -1.0, 1.0, g)[:, None, None, None]
    centre = _uniform(2 * n, -0.05, 0.05, g).view(n, 1, 1, 2) * 2  # shift in grid units ([−1, 1] spans 2)
    grid = _identity_grid(n, height, width)
    offset = grid - centre
    r2 = offset.pow(2).sum(-1, keepdim=True) / 4  # radius² in units of the image size
    return _resample(images, masks, centre + offset * (1 + k * r2), active)


def _noise(images, masks, active, g):
    std = _uniform(len(images), 0.01, 0.03, g)[:, None, None, None]
    noise = torch.randn(images.shape, generator=g) * std
    return torch.where(active[:, None, None, None], (images + noise).clamp(0, 1), images), masks


def _blur(images, masks, active, g):
    blurred = F.avg_pool2d(F.pad(images, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    return torch.where(active[:, None, None, None], blurred, images), masks


def _shift_scale_rotate(images, masks, active, g):
    n, _, height, width = images.shape
    angle = _uniform(n, -math.pi / 4, math.pi / 4, g)
    scale = _uniform(n, 0.8, 1.2, g)
    shift = _uniform(2 * n, -0.0625, 0.0625, g).view(n, 2) * 2
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale  # output → source: inverse rotation/scale
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
    grid = F.affine_grid(theta, [n, 1, height, width], align_corners=False)
    return _resample(images, masks, grid, active)


def _displacement(images, masks, active, g):
    n, _, height, width = images.shape
    coarse = _uniform(n * 2 * 25, -0.1, 0.1, g).view(n, 2, 5, 5)  # ± 0.05 of the image size per node
    field = F.interpolate(coarse, size=(height, width), mode="bicubic", align_corners=True).permute(0, 2, 3, 1)
    return _resample(images, masks, _identity_grid(n, height, width) + field, active)


def _brightness_contrast(images, masks, active, g):
    n = len(images)
    alpha = _uniform(n, 0.8, 1.2, g)[:, None, None, None]
    beta = _uniform(n, -0.2, 0.2, g)[:, None, None, None]
    return torch.where(active[:, None, None, None], (alpha * images + beta).clamp(0, 1), images), masks


def _value_shift(images, masks, active, g):
    shift = _uniform(len(images), -20 / 255, 20 / 255, g)[:, None, None, None]
    return torch.where(active[:, None, None, None], (images + shift).clamp(0, 1), images), masks


OPS = (_quarter_turns, _flip, _transpose, _optical, _noise, _blur, _shift_scale_rotate, _displacement,
       _brightness_contrast, _value_shift)


def rand_augment(images: torch.Tensor, masks: torch.Tensor,
                 generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Each image (N×C×H×W in [0, 1]) and its mask (N×H×W) through 3 of the 10 ops, drawn per sample without
    replacement; each drawn op then fires with its probability. Ops run in list order. On the CPU."""
    n = len(images)
    chosen = torch.zeros(n, N_OPS, dtype=torch.bool)
    picks = torch.rand(n, N_OPS, generator=generator).argsort(1)[:, :OPS_PER_SAMPLE]
    chosen.scatter_(1, picks, True)
    fires = chosen & (torch.rand(n, N_OPS, generator=generator) < PROBABILITY)
    images, m = images.float(), masks[:, None].float()
    for i, op in enumerate(OPS):
        images, m = op(images, m, fires[:, i], generator)
    return images, m[:, 0] > 0.5


def copy_paste(anomalies: torch.Tensor, masks: torch.Tensor, normals: torch.Tensor,
               generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """One synthetic anomaly per known anomaly: the anomaly and its mask augmented by ``rand_augment``, its
    masked pixels pasted in place onto a random normal image. Returns images N×C×H×W and masks N×H×W
    (bool), on the device of ``anomalies``."""
    device = anomalies.device
    aug, aug_masks = rand_augment(anomalies.cpu(), masks.cpu(), generator)
    dst = torch.randint(len(normals), (len(anomalies),), generator=generator)
    pasted = torch.where(aug_masks[:, None], aug, normals.cpu()[dst])
    return pasted.to(device), aug_masks.to(device)
