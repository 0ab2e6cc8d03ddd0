"""Pseudo-anomalies made from normal images, and the SimCLR-style view augmentations.

A pseudo-anomaly transform maps a batch to K groups (group 0 = the image itself): ``rotation`` gives the
four 90° rotations (for object-centred data such as digits or CIFAR), ``scar`` gives the image and a
"scar" CutPaste copy (a thin rotated strip cut from the image, colour-jittered, blurred and pasted
elsewhere; sometimes a black hole), for textures and industrial images. All ops are batched tensor ops.

Non-square images (H ≠ W): a quarter turn makes an H×W image W×H, so the 90° and 270° groups are resized
back to H×W (bilinear, antialiased, differentiable; ``quarter_turn``). The four groups stay four distinct
orientations. The shape-preserving alternatives were rejected: {0°, 180°, vertical flip, horizontal flip}
collapses to two groups under the random horizontal flips of the views and the mirror average of the
score (a flip of a 180° turn is a vertical flip). ``auto`` measures the same resized turns; the squeeze
alone does not move textures off their training set (grass, gravel, brick patches cropped to 32×24,
32×16 or 32×8: 0.84–1.33, as square; digits resized to 8×12, 8×16 or 12×8: 2.5–4.2, as square).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from robust_ad_bench.core.errors import unknown_choice

PSEUDO_ANOMALIES = ("auto", "rotation", "scar")
GROUPS = {"rotation": 4, "scar": 2}
SCAR_HOLE_PROBABILITY = 0.15  # share of scars that are a black hole instead of a pasted strip


def num_groups(kind: str) -> int:
    if kind not in GROUPS:
        raise unknown_choice("pseudo-anomaly", kind, GROUPS)
    return GROUPS[kind]


def _uniform(n: int, lo: float, hi: float, generator: torch.Generator | None) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=generator)


def scar(x: torch.Tensor, size: tuple[float, float] = (0.03, 0.18),
         generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Scar CutPaste on every image of ``x`` (N×C×H×W in [0, 1]); returns the images and the N×H×W mask.

    Strip width and length are drawn in ``size`` (fractions of the image side; (7/224, 40/224) is the
    authors' 7–40 px at 224 px), at least 1 and 2 px; the strip is rotated by ±45°, cut axis-aligned at
    one place and pasted rotated at another. Parameters come from ``generator`` (CPU) when given.
    """
    n, _, h, w = x.shape
    side = min(h, w)
    half_w = (_uniform(n, *size, generator) * side).clamp_min(1.0) / 2
    half_l = (_uniform(n, *size, generator) * side).clamp_min(2.0) / 2
    angle = _uniform(n, -math.pi / 4, math.pi / 4, generator)
    reach = torch.maximum(half_w, half_l)  # the strip fits in a square of this half-side at any angle
    src_y, src_x = (reach + torch.rand(n, generator=generator) * (d - 1 - 2 * reach).clamp_min(0) for d in (h, w))
    dst_y, dst_x = (reach + torch.rand(n, generator=generator) * (d - 1 - 2 * reach).clamp_min(0) for d in (h, w))
    brightness = _uniform(n, -0.1, 0.1, generator)
    contrast = _uniform(n, 0.9, 1.1, generator)
    hole = torch.rand(n, generator=generator) < SCAR_HOLE_PROBABILITY
    params = [t.to(x.device, x.dtype)[:, None, None] for t in
              (half_w, half_l, angle, src_y, src_x, dst_y, dst_x, brightness, contrast)]
    half_w, half_l, angle, src_y, src_x, dst_y, dst_x, brightness, contrast = params

    ys = torch.arange(h, device=x.device, dtype=x.dtype)[None, :, None]
    xs = torch.arange(w, device=x.device, dtype=x.dtype)[None, None, :]
    # destination pixel → strip frame (rotate back by the angle): u along the width, v along the length
    dy, dx = ys - dst_y, xs - dst_x
    cos, sin = torch.cos(angle), torch.sin(angle)
    u, v = dx * cos + dy * sin, -dx * sin + dy * cos
    mask = (u.abs() <= half_w) & (v.abs() <= half_l)
    # the same strip coordinates at the source, in grid_sample's [-1, 1] units (pixel centres)
    grid = torch.stack([(src_x + u) * 2 / (w - 1) - 1, (src_y + v) * 2 / (h - 1) - 1], dim=-1)
    blurred = F.avg_pool2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    strip = F.grid_sample(blurred, grid, mode="bilinear", padding_mode="border", align_corners=True)
    strip = (strip * contrast[:, None] + brightness[:, None]).clamp(0, 1)
    strip = torch.where(hole.to(x.device)[:, None, None, None], torch.zeros_like(strip), strip)
    return torch.where(mask[:, None], strip, x), mask


def quarter_turn(x: torch.Tensor, k: int) -> torch.Tensor:
    """``x`` turned by k·90°, as an H×W image: an odd turn of a non-square image is resized back to H×W."""
    turned = torch.rot90(x, k, dims=(2, 3))
    if turned.shape[-2:] == x.shape[-2:]:
        return turned
    return F.interpolate(turned, size=x.shape[-2:], mode="bilinear", align_corners=False, antialias=True)


def expand_groups(x: torch.Tensor, kind: str, scar_size: tuple[float, float] = (0.03, 0.18),
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """K·N images: group k of ``x`` for k = 0..K-1, group-major (rows k·N..(k+1)·N-1 are group k)."""
    if kind == "rotation":
        return torch.cat([quarter_turn(x, k) for k in range(4)])
    if kind == "scar":
        return torch.cat([x, scar(x, scar_size, generator)[0]])
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


def random_flip(x: torch.Tensor) -> torch.Tensor:
    flip = torch.rand(len(x), device=x.device) < 0.5
    return torch.where(flip[:, None, None, None], x.flip(3), x)


def simclr_augment(x: torch.Tensor, jitter: float, crop_min_scale: float) -> torch.Tensor:
    """Random resized crop (area in [crop_min_scale, 1], aspect 3/4–4/3) and, with probability 0.8,
    brightness/contrast/saturation jitter of strength ``jitter``; colour images turn gray with p = 0.2."""
    n, c = x.shape[:2]
    dev, dt = x.device, x.dtype
    if crop_min_scale < 1:
        area = crop_min_scale + (1 - crop_min_scale) * torch.rand(n, device=dev, dtype=dt)
        log_ratio = (torch.rand(n, device=dev, dtype=dt) * 2 - 1) * math.log(4 / 3)
        sx = (area * log_ratio.exp()).sqrt().clamp(max=1)
        sy = (area / log_ratio.exp()).sqrt().clamp(max=1)
        tx = (torch.rand(n, device=dev, dtype=dt) * 2 - 1) * (1 - sx)
        ty = (torch.rand(n, device=dev, dtype=dt) * 2 - 1) * (1 - sy)
        zero = torch.zeros_like(sx)
        theta = torch.stack([torch.stack([sx, zero, tx], 1), torch.stack([zero, sy, ty], 1)], 1)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    if jitter > 0:
        apply = (torch.rand(n, 1, 1, 1, device=dev) < 0.8).to(dt)

        def factor() -> torch.Tensor:
            return 1 + apply * jitter * (torch.rand(n, 1, 1, 1, device=dev, dtype=dt) * 2 - 1)

        x = x * factor()
        mean = x.mean((1, 2, 3), keepdim=True)
        x = (x - mean) * factor() + mean
        if c == 3:
            gray = (x * torch.tensor([0.299, 0.587, 0.114], device=dev, dtype=dt)[:, None, None]).sum(1, True)
            x = (x - gray) * factor() + gray
            to_gray = torch.rand(n, 1, 1, 1, device=dev) < 0.2
            x = torch.where(to_gray, gray.expand_as(x), x)
    return x.clamp(0, 1)
