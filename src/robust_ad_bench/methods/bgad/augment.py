"""BGAD's defect cut-and-paste (Yao et al., CVPR 2023): more known anomalies made from the few labelled
ones, by cutting a masked defect out of a known anomaly, flipping/rotating it and pasting it at a random
place on a normal image. All ops are batched tensor ops."""

from __future__ import annotations

import torch

from robust_ad_bench.core.errors import BenchError


def paste_defects(anomalies: torch.Tensor, masks: torch.Tensor, normals: torch.Tensor, n: int,
                  generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` synthetic anomalies: random known defects (their masked pixels), randomly flipped and
    rotated by multiples of 90°, pasted at a random shift onto random normal images. Returns images
    N×C×H×W and masks N×H×W (bool)."""
    if masks is None or not masks.flatten(1).any(1).all():
        raise BenchError("defect cut-and-paste needs a non-empty pixel mask for every known anomaly")
    device = anomalies.device
    _, _, height, width = anomalies.shape
    src = torch.randint(len(anomalies), (n,), generator=generator).to(device)
    dst = torch.randint(len(normals), (n,), generator=generator).to(device)
    images, cuts = anomalies[src], masks[src].unsqueeze(1).float()
    # flips and (for square images) quarter turns, each drawn per sample; applied as masked selects
    flips = torch.rand(n, 2, generator=generator).to(device) < 0.5
    images = torch.where(flips[:, 0, None, None, None], images.flip(-1), images)
    cuts = torch.where(flips[:, 0, None, None, None], cuts.flip(-1), cuts)
    images = torch.where(flips[:, 1, None, None, None], images.flip(-2), images)
    cuts = torch.where(flips[:, 1, None, None, None], cuts.flip(-2), cuts)
    if height == width:
        turn = torch.rand(n, generator=generator).to(device) < 0.5
        images = torch.where(turn[:, None, None, None], images.transpose(-1, -2), images)
        cuts = torch.where(turn[:, None, None, None], cuts.transpose(-1, -2), cuts)
    # shift so that the defect's bounding box stays inside the image: out[y, x] = cut[y - dy, x - dx]
    rows, cols = cuts[:, 0].amax(2) > 0, cuts[:, 0].amax(1) > 0  # N×H, N×W
    ar_h, ar_w = torch.arange(height, device=device), torch.arange(width, device=device)
    top = torch.where(rows, ar_h, height).amin(1)
    bottom = torch.where(rows, ar_h, -1).amax(1)
    left = torch.where(cols, ar_w, width).amin(1)
    right = torch.where(cols, ar_w, -1).amax(1)
    u = torch.rand(n, 2, generator=generator).to(device)
    dy = (-top + u[:, 0] * (height - 1 - bottom + top + 1)).floor().long().clamp(max=height - 1 - bottom)
    dx = (-left + u[:, 1] * (width - 1 - right + left + 1)).floor().long().clamp(max=width - 1 - right)
    sy, sx = ar_h[None, :] - dy[:, None], ar_w[None, :] - dx[:, None]  # N×H source rows, N×W columns
    inside = ((sy >= 0) & (sy < height))[:, :, None] & ((sx >= 0) & (sx < width))[:, None, :]
    sy, sx = sy.clamp(0, height - 1)[:, :, None], sx.clamp(0, width - 1)[:, None, :]
    idx = torch.arange(n, device=device)[:, None, None]
    moved = images.permute(0, 2, 3, 1)[idx, sy, sx].permute(0, 3, 1, 2)
    moved_mask = (cuts[:, 0][idx, sy, sx] > 0.5) & inside
    out = torch.where(moved_mask[:, None], moved, normals[dst])
    return out, moved_mask
