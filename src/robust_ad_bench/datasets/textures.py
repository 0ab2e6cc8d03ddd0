"""Patches of scikit-image's gray textures with synthetic defects (scratch, blob, foreign patch)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import lru_cache

import torch
import torch.nn.functional as F

from robust_ad_bench.core.dataset import Dataset, Split, seeded_generator
from robust_ad_bench.core.errors import BenchError
from robust_ad_bench.core.registry import register_dataset

CATEGORIES = ("brick", "grass", "gravel")
PATCH = 32
TRAIN_ROWS = 0.7  # train patches come from the top 70 % of rows, test patches from the rest
DEFECT_KINDS = ("scratch", "blob", "patch")


def _uniform(n: int, lo: float, hi: float, g: torch.Generator) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=g)


@lru_cache(maxsize=1)
def _textures() -> torch.Tensor:
    """All categories as one C×256×256 float32 tensor in [0, 1] (shipped with scikit-image, no download)."""
    from skimage import data  # only import scikit-image when the dataset is used

    images = [torch.from_numpy(getattr(data, name)()).float() / 255.0 for name in CATEGORIES]
    # 2×2 average pooling: 512² → 256², so a 32-px patch holds several texture elements
    return F.avg_pool2d(torch.stack(images).unsqueeze(1), 2).squeeze(1).contiguous()


def _crop(images: torch.Tensor, which: torch.Tensor, r0: torch.Tensor, c0: torch.Tensor,
          size: int) -> torch.Tensor:
    """Batch crop: ``images[which[i], r0[i]:r0[i]+size, c0[i]:c0[i]+size]`` for all i at once."""
    ar = torch.arange(size)
    rows = r0[:, None, None] + ar[None, :, None]
    cols = c0[:, None, None] + ar[None, None, :]
    return images[which[:, None, None], rows, cols]


def _positions(n: int, row_lo: int, row_hi: int, width: int, g: torch.Generator,
               size: int = PATCH) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-left corners of n size×size crops lying wholly in rows [row_lo, row_hi) and cols [0, width)."""
    r0 = torch.randint(row_lo, row_hi - size + 1, (n,), generator=g)
    c0 = torch.randint(0, width - size + 1, (n,), generator=g)
    return r0, c0


def _grid() -> tuple[torch.Tensor, torch.Tensor]:
    """Pixel-centre coordinates, shaped 1×P×1 (y) and 1×1×P (x) to broadcast against n×1×1 parameters."""
    ar = torch.arange(PATCH, dtype=torch.float32)
    return ar[None, :, None], ar[None, None, :]


def _scratch(patches: torch.Tensor, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """A thin straight segment set to a bright or dark value; mask = pixels within width/2 of it."""
    n = len(patches)
    angle = _uniform(n, 0.0, math.pi, g)
    length = _uniform(n, 12.0, 26.0, g)
    width = _uniform(n, 1.5, 2.5, g)
    bright = torch.rand(n, generator=g) < 0.5
    value = torch.where(bright, _uniform(n, 0.85, 1.0, g), _uniform(n, 0.0, 0.15, g))
    dy, dx = torch.sin(angle), torch.cos(angle)
    # clip the centre so that the whole segment (plus half its width) lies inside the patch
    my = length / 2 * dy.abs() + width / 2
    mx = length / 2 * dx.abs() + width / 2
    cy = my + torch.rand(n, generator=g) * (PATCH - 1 - 2 * my)
    cx = mx + torch.rand(n, generator=g) * (PATCH - 1 - 2 * mx)
    y0, x0 = cy - length / 2 * dy, cx - length / 2 * dx  # segment start
    y, x = _grid()
    py, px = y - y0[:, None, None], x - x0[:, None, None]
    # distance to a segment: project onto its direction, clamp to [0, length], measure the rest
    t = (py * dy[:, None, None] + px * dx[:, None, None]).clamp(min=0)
    t = torch.minimum(t, length[:, None, None])
    dist = torch.hypot(py - t * dy[:, None, None], px - t * dx[:, None, None])
    mask = dist <= width[:, None, None] / 2
    return torch.where(mask, value[:, None, None], patches), mask


def _blob(patches: torch.Tensor, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """A rotated ellipse whose pixels are brightened or darkened; mask = the ellipse."""
    n = len(patches)
    a, b = _uniform(n, 3.0, 7.0, g), _uniform(n, 3.0, 7.0, g)
    phi = _uniform(n, 0.0, math.pi, g)
    shift = _uniform(n, 0.25, 0.45, g) * torch.where(torch.rand(n, generator=g) < 0.5, -1.0, 1.0)
    # the longer semi-axis bounds the rotated ellipse, so this margin keeps it inside the patch
    margin = torch.maximum(a, b) + 0.5
    cy = margin + torch.rand(n, generator=g) * (PATCH - 1 - 2 * margin)
    cx = margin + torch.rand(n, generator=g) * (PATCH - 1 - 2 * margin)
    y, x = _grid()
    py, px = y - cy[:, None, None], x - cx[:, None, None]
    cos, sin = torch.cos(phi)[:, None, None], torch.sin(phi)[:, None, None]
    u, v = px * cos + py * sin, -px * sin + py * cos
    mask = (u / a[:, None, None]) ** 2 + (v / b[:, None, None]) ** 2 <= 1
    shifted = (patches + shift[:, None, None]).clamp(0.0, 1.0)
    return torch.where(mask, shifted, patches), mask


def _foreign_patch(patches: torch.Tensor, category: int, g: torch.Generator,
                   textures: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A square replaced by the same-size region of another texture; mask = the square."""
    n, n_cat = len(patches), len(textures)
    side = torch.randint(8, 15, (n,), generator=g)
    r0 = (torch.rand(n, generator=g) * (PATCH - side + 1)).long()  # square fits: r0 ≤ PATCH - side
    c0 = (torch.rand(n, generator=g) * (PATCH - side + 1)).long()
    other = (category + 1 + torch.randint(0, n_cat - 1, (n,), generator=g)) % n_cat
    max_side = 14
    src_r0, src_c0 = _positions(n, 0, textures.shape[1], textures.shape[2], g, size=max_side)
    # cut a max_side² source square per sample; pixel (y, x) of the square maps to (y - r0, x - c0)
    source = _crop(textures, other, src_r0, src_c0, max_side)
    y, x = (t.long() for t in _grid())
    dy, dx = y - r0[:, None, None], x - c0[:, None, None]
    mask = (dy >= 0) & (dy < side[:, None, None]) & (dx >= 0) & (dx < side[:, None, None])
    idx = torch.arange(n)[:, None, None]
    pasted = source[idx, dy.clamp(0, max_side - 1), dx.clamp(0, max_side - 1)]
    return torch.where(mask, pasted, patches), mask


@dataclass
class TexturesOptions:
    """How many patches a split holds (YAML ``dataset_params: {textures: {...}}``); part of the job key. The
    test set's sizes are not part of the trained weights' key: the training patches are drawn first."""

    n_train: int = 240
    n_test_normal: int = field(default=60, metadata={"test_only": True})
    n_test_anomalous: int = field(default=60, metadata={"test_only": True})

    def __post_init__(self) -> None:
        for name in ("n_train", "n_test_normal", "n_test_anomalous"):
            if getattr(self, name) < 1:
                raise BenchError(f"textures option {name} must be >= 1, got {getattr(self, name)}")


@register_dataset("textures")
class Textures(Dataset):
    """Gray texture patches (scikit-image brick/grass/gravel) with synthetic defects and pixel masks."""

    version = "1"
    image_shape = (1, PATCH, PATCH)
    default_eps = {"linf": (2 / 255, 4 / 255), "l2": (0.25, 0.5)}
    defect_kinds = DEFECT_KINDS
    Options = TexturesOptions

    def __init__(self, options: TexturesOptions | None = None) -> None:
        self.options = options or TexturesOptions()

    def classes(self) -> list[str]:
        return list(CATEGORIES)

    def anomaly_counts(self, normal_class: str) -> dict[str, int] | None:
        self.check_class(normal_class)
        n = self.options.n_test_anomalous  # equal thirds in blocks, as ``split`` makes them
        kinds = [k * len(DEFECT_KINDS) // n for k in range(n)]
        return {name: kinds.count(i) for i, name in enumerate(DEFECT_KINDS) if kinds.count(i)}

    def split(self, normal_class: str, seed: int) -> Split:
        normal_class = self.check_class(normal_class)
        category = CATEGORIES.index(normal_class)
        textures = _textures()
        _, height, width = textures.shape
        top = round(height * TRAIN_ROWS)
        g = seeded_generator("textures", seed, normal_class)
        n_train = self.options.n_train
        which = torch.full((n_train,), category)
        train = _crop(textures, which, *_positions(n_train, 0, top, width, g), PATCH)

        n_norm, n_anom = self.options.n_test_normal, self.options.n_test_anomalous
        which = torch.full((n_norm + n_anom,), category)
        test = _crop(textures, which, *_positions(n_norm + n_anom, top, height, width, g), PATCH)
        masks = torch.zeros(n_norm + n_anom, PATCH, PATCH, dtype=torch.bool)

        # equal thirds of the three kinds (as equal as n_anom allows), in blocks
        kind = torch.arange(n_anom) * len(DEFECT_KINDS) // max(n_anom, 1)
        defects = [""] * n_norm
        for k, name in enumerate(DEFECT_KINDS):
            sel = n_norm + torch.nonzero(kind == k).flatten()
            if len(sel) == 0:
                continue
            if name == "scratch":
                test[sel], masks[sel] = _scratch(test[sel], g)
            elif name == "blob":
                test[sel], masks[sel] = _blob(test[sel], g)
            else:
                test[sel], masks[sel] = _foreign_patch(test[sel], category, g, textures)
            defects += [name] * len(sel)

        labels = torch.cat([torch.zeros(n_norm), torch.ones(n_anom)]).float()
        return Split(
            train=train.unsqueeze(1).contiguous(),
            test=test.unsqueeze(1).contiguous(),
            test_labels=labels,
            test_masks=masks,
            test_defects=defects,
        )
