"""AUPRO against an independent reference: a plain loop over every threshold that binarizes the maps,
labels each image's defects with scikit-image and averages the overlaps region by region."""

from __future__ import annotations

import numpy as np
import pytest
from skimage.measure import label

from robust_ad_bench.benchmark.protocol.aupro import aupro


def reference_aupro(masks: np.ndarray, maps: np.ndarray, limit: float = 0.3) -> float:
    regions = []  # (image, boolean region mask)
    for i, mask in enumerate(masks):
        lab = label(mask.astype(int), connectivity=1)
        regions += [(i, lab == r) for r in range(1, lab.max() + 1)]
    normal = ~masks.astype(bool)
    points = [(0.0, 0.0)]
    for t in sorted(set(maps.ravel().tolist()), reverse=True):
        predicted = maps >= t
        overlaps = [predicted[i][region].sum() / region.sum() for i, region in regions]
        fpr = (predicted & normal).sum() / normal.sum()
        points.append((fpr, float(np.mean(overlaps))))
    area = 0.0
    for (x0, y0), (x1, y1) in zip(points, points[1:]):
        if x0 >= limit:
            break
        if x1 > limit:  # cut the segment at the limit
            y1 = y0 + (y1 - y0) * (limit - x0) / (x1 - x0)
            x1 = limit
        area += (x1 - x0) * (y0 + y1) / 2
    return area / limit


def masks_with_regions(rng: np.random.Generator, n: int = 3, size: int = 12) -> np.ndarray:
    masks = np.zeros((n, size, size), dtype=np.uint8)
    for i in range(n):
        for _ in range(rng.integers(0, 3)):
            r, c = rng.integers(0, size - 3, 2)
            h, w = rng.integers(1, 4, 2)
            masks[i, r:r + h, c:c + w] = 1
    if not masks.any():
        masks[0, 2, 2] = 1
    return masks


@pytest.mark.parametrize("seed", range(6))
def test_aupro_matches_the_per_threshold_reference(seed):
    rng = np.random.default_rng(seed)
    masks = masks_with_regions(rng)
    maps = rng.random(masks.shape) + 0.7 * masks  # informative but imperfect
    assert aupro(masks, maps) == pytest.approx(reference_aupro(masks, maps), abs=1e-12)


def test_ties_enter_together():
    rng = np.random.default_rng(7)
    masks = masks_with_regions(rng)
    maps = np.round(rng.random(masks.shape) * 4 + 2 * masks) / 4  # few distinct values: many ties
    assert aupro(masks, maps) == pytest.approx(reference_aupro(masks, maps), abs=1e-12)


def test_one_pixel_region_and_a_large_one_count_equally():
    masks = np.zeros((2, 8, 8), np.uint8)
    masks[0, 1, 1] = 1  # one pixel
    masks[1, 2:7, 2:7] = 1  # 25 pixels
    maps = np.zeros(masks.shape)
    maps[0, 1, 1] = 1.0  # the one-pixel region found at the top threshold, the large one never above normal
    value = aupro(masks, maps)
    assert value == pytest.approx(reference_aupro(masks, maps), abs=1e-12)
    # one region of two found at FPR 0 (PRO 0.5); the rest only at the last threshold (FPR 1, PRO 1): PRO at
    # FPR 0.3 is 0.65 on that segment, so the area is 0.3 * (0.5 + 0.65) / 2, normalized: 0.575
    assert value == pytest.approx(0.575, abs=1e-12)


def test_regions_touching_diagonally_are_two_regions():
    masks = np.zeros((1, 6, 6), np.uint8)
    masks[0, 1, 1] = masks[0, 2, 2] = 1
    maps = np.zeros(masks.shape)
    maps[0, 1, 1] = 1.0
    assert aupro(masks, maps) == pytest.approx(0.575)  # 4-connectivity: two regions, one found (as above)


def test_perfect_and_inverted_maps():
    rng = np.random.default_rng(3)
    masks = masks_with_regions(rng)
    assert aupro(masks, masks.astype(float)) == pytest.approx(1.0)
    assert aupro(masks, -masks.astype(float)) == pytest.approx(0.0)
    constant = np.ones(masks.shape)  # every pixel tied: one jump from (0,0) to (1,1), past the limit
    assert aupro(masks, constant) == pytest.approx(reference_aupro(masks, constant))


def test_no_defect_and_bad_input_are_errors():
    with pytest.raises(ValueError, match="no defect region"):
        aupro(np.zeros((2, 4, 4)), np.zeros((2, 4, 4)))
    with pytest.raises(ValueError, match="no normal pixel"):
        aupro(np.ones((1, 4, 4)), np.zeros((1, 4, 4)))
    with pytest.raises(ValueError, match="one shape"):
        aupro(np.zeros((2, 4, 4)), np.zeros((2, 4, 5)))
    with pytest.raises(ValueError, match="only 0 and 1"):
        aupro(np.full((1, 4, 4), 2), np.zeros((1, 4, 4)))


def test_a_region_spanning_two_images_is_two_regions():
    masks = np.zeros((2, 4, 4), np.uint8)
    masks[:, 1, 1] = 1  # the same pixel in both images: two regions, not one
    maps = np.zeros(masks.shape)
    maps[0, 1, 1] = 1.0
    assert aupro(masks, maps) == pytest.approx(0.575)  # two regions, one found (as above)
