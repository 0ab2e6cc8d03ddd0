"""Our load-time colour, resize and crop are torchvision's transforms on PIL images (the pipeline of the
authors' data loaders), exactly, for image files and for in-memory sets. Kept on Pillow rather than moved to
torchvision's batched tensor resize: that one is faster but differs from Pillow by up to 2 grey levels when
the scale is not a power of two (CONTRIBUTING.md, "Hand-written pieces and the libraries beside them"); the
last test shows the difference, so that a switch would be noticed."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import v2

from robust_ad_bench.datasets import files
from robust_ad_bench.datasets.transforms import transform_arrays


def torchvision_pipeline(image: Image.Image, color: str, resize: int, crop: int) -> np.ndarray:
    """torchvision's Grayscale / Resize((N, N)) / CenterCrop on a PIL image, as C×H×W uint8."""
    steps = []
    if color == "gray" and image.mode != "L":
        steps.append(v2.Grayscale())
    if resize:
        steps.append(v2.Resize((resize, resize)))
    if crop:
        steps.append(v2.CenterCrop(crop))
    array = np.asarray(v2.Compose(steps)(image) if steps else image)
    if color == "rgb" and array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=-1)
    return array[None] if array.ndim == 2 else array.transpose(2, 0, 1)


def _smooth(rng: np.random.Generator, side: int, channels: int) -> np.ndarray:
    """Noise plus a ramp: resizing it exercises both the filter's rounding and its edges."""
    ramp = np.linspace(0, 120, side)[None, :, None] + np.linspace(0, 80, side)[:, None, None]
    noise = rng.integers(0, 56, (side, side, channels))
    return np.clip(ramp + noise, 0, 255).astype(np.uint8)


SIZES = [(37, 28, 0), (37, 32, 28), (32, 100, 96), (64, 224, 224), (28, 31, 30), (16, 0, 12)]
COLORS = ["", "gray", "rgb"]


@pytest.mark.parametrize("color", COLORS)
@pytest.mark.parametrize("side,resize,crop", SIZES)
def test_file_loading_is_torchvisions_pil_pipeline(tmp_path, side, resize, crop, color):
    rng = np.random.default_rng(side + resize)
    paths, expected = [], []
    for i, array in enumerate((_smooth(rng, side, 3), _smooth(rng, side, 1)[..., 0], _smooth(rng, side, 4))):
        if color == "" and i == 1:
            continue  # mixed gray and colour files are promoted to RGB: the "rgb" case
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray(array).save(paths[-1])
        image = Image.open(paths[-1])
        expected.append(torchvision_pipeline(image.convert("RGB") if image.mode == "RGBA" else image, color, resize,
                                             crop))
    np.testing.assert_array_equal(files.read_images(paths, color, resize, crop), np.stack(expected))


@pytest.mark.parametrize("color", COLORS)
@pytest.mark.parametrize("side,resize,crop", SIZES)
@pytest.mark.parametrize("channels", [1, 3])
def test_in_memory_transforms_are_torchvisions_pil_pipeline(side, resize, crop, color, channels):
    rng = np.random.default_rng(side * channels)
    images = np.stack([_smooth(rng, side, channels) for _ in range(3)]).transpose(0, 3, 1, 2)
    expected = [torchvision_pipeline(Image.fromarray(im[0] if channels == 1 else im.transpose(1, 2, 0)), color,
                                     resize, crop) for im in images]
    got = transform_arrays(images, files.ImageOptions(resize=resize, crop=crop, color=color))
    np.testing.assert_array_equal(got, np.stack(expected))


def test_torchvisions_tensor_resize_is_not_pillows():
    """The measured reason to keep Pillow: the batched tensor resize (antialiased bilinear) rounds differently
    at scales that are not powers of two, so a switch would change every resized data set's images."""
    rng = np.random.default_rng(0)
    images = np.stack([_smooth(rng, 37, 3) for _ in range(4)]).transpose(0, 3, 1, 2)
    ours = transform_arrays(images, files.ImageOptions(resize=28))
    tensor = v2.functional.resize(torch.from_numpy(images), [28, 28], antialias=True).numpy()
    difference = np.abs(ours.astype(int) - tensor.astype(int))
    assert 0 < difference.max() <= 2
    # at a power-of-two scale the two agree
    halved = v2.functional.resize(torch.from_numpy(images[..., :36, :36]), [18, 18], antialias=True).numpy()
    np.testing.assert_array_equal(transform_arrays(np.ascontiguousarray(images[..., :36, :36]),
                                                   files.ImageOptions(resize=18)), halved)
