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
from collections.abc import Callable

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


def _on_active(images: torch.Tensor, masks: torch.Tensor, active: torch.Tensor,
               fn: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """``fn(images[idx], masks[idx], idx)`` on the images whose op fires, the others as they are. Each op draws
    its parameters for every image first, so the random stream does not depend on which images fire, and the
    work (grid sampling at full image size) is done for the firing few only."""
    idx = active.nonzero()[:, 0]
    if not len(idx):
        return images, masks
    new_images, new_masks = fn(images[idx], masks[idx], idx)
    return images.index_copy(0, idx, new_images), masks.index_copy(0, idx, new_masks)


def _resample(images: torch.Tensor, masks: torch.Tensor, grid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Images and masks sampled at ``grid`` (masks stay binary: bilinear, then > 0.5)."""
    moved = F.grid_sample(images, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    moved_masks = F.grid_sample(masks, grid, mode="bilinear", padding_mode="zeros", align_corners=False) > 0.5
    return moved, moved_masks.float()


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

    def flip(im, m, idx):
        vertical = (kind[idx] != 1)[:, None, None, None]
        horizontal = (kind[idx] != 0)[:, None, None, None]
        im, m = torch.where(vertical, im.flip(-2), im), torch.where(vertical, m.flip(-2), m)
        return torch.where(horizontal, im.flip(-1), im), torch.where(horizontal, m.flip(-1), m)

    return _on_active(images, masks, active, flip)


def _transpose(images, masks, active, g):
    if images.shape[-1] != images.shape[-2]:
        return images, masks
    return _on_active(images, masks, active, lambda im, m, idx: (im.transpose(-1, -2), m.transpose(-1, -2)))


def _optical(images, masks, active, g):
    n, _, height, width = images.shape
    k = _uniform(n, -1.0, 1.0, g)[:, None, None, None]
    centre = _uniform(2 * n, -0.05, 0.05, g).view(n, 1, 1, 2) * 2  # shift in grid units ([−1, 1] spans 2)

    def distort(im, m, idx):
        offset = _identity_grid(len(idx), height, width) - centre[idx]
        r2 = offset.pow(2).sum(-1, keepdim=True) / 4  # radius² in units of the image size
        return _resample(im, m, centre[idx] + offset * (1 + k[idx] * r2))

    return _on_active(images, masks, active, distort)


def _noise(images, masks, active, g):
    std = _uniform(len(images), 0.01, 0.03, g)[:, None, None, None]
    noise = torch.randn(images.shape, generator=g) * std
    return _on_active(images, masks, active, lambda im, m, idx: ((im + noise[idx]).clamp(0, 1), m))


def _blur(images, masks, active, g):
    return _on_active(images, masks, active,
                      lambda im, m, idx: (F.avg_pool2d(F.pad(im, (1, 1, 1, 1), mode="replicate"), 3, stride=1), m))


def _shift_scale_rotate(images, masks, active, g):
    n, _, height, width = images.shape
    angle = _uniform(n, -math.pi / 4, math.pi / 4, g)
    scale = _uniform(n, 0.8, 1.2, g)
    shift = _uniform(2 * n, -0.0625, 0.0625, g).view(n, 2) * 2
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale  # output → source: inverse rotation/scale
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
    return _on_active(images, masks, active, lambda im, m, idx: _resample(
        im, m, F.affine_grid(theta[idx], [len(idx), 1, height, width], align_corners=False)))


def _displacement(images, masks, active, g):
    n, _, height, width = images.shape
    coarse = _uniform(n * 2 * 25, -0.1, 0.1, g).view(n, 2, 5, 5)  # ± 0.05 of the image size per node

    def displace(im, m, idx):
        field = F.interpolate(coarse[idx], size=(height, width), mode="bicubic", align_corners=True)
        return _resample(im, m, _identity_grid(len(idx), height, width) + field.permute(0, 2, 3, 1))

    return _on_active(images, masks, active, displace)


def _brightness_contrast(images, masks, active, g):
    n = len(images)
    alpha = _uniform(n, 0.8, 1.2, g)[:, None, None, None]
    beta = _uniform(n, -0.2, 0.2, g)[:, None, None, None]
    return _on_active(images, masks, active, lambda im, m, idx: ((alpha[idx] * im + beta[idx]).clamp(0, 1), m))


def _value_shift(images, masks, active, g):
    shift = _uniform(len(images), -20 / 255, 20 / 255, g)[:, None, None, None]
    return _on_active(images, masks, active, lambda im, m, idx: ((im + shift[idx]).clamp(0, 1), m))


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
