"""Load-time transforms of images already in memory (the classification sets), with the same Pillow
operations as the file loaders (``files.read_image``): colour conversion, N×N bilinear resize
(antialiased), center crop. Only the images of a split are transformed, as uint8. Equal to torchvision's
``Grayscale``/``Resize``/``CenterCrop`` on PIL images (``tests/test_transforms_torchvision.py``); torchvision's
batched tensor resize is faster but rounds differently (CONTRIBUTING.md, hand-written pieces)."""

from __future__ import annotations

import numpy as np

from robust_ad_bench.datasets.files import ImageOptions, geometry


def to_gray(images: np.ndarray) -> np.ndarray:
    """N×3×H×W → N×1×H×W with Pillow's ``L`` formula (ITU-R 601-2 luma, rounded)."""
    r, g, b = (images[:, i].astype(np.uint32) for i in range(3))
    return ((r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16).astype(np.uint8)[:, None]


def transform_arrays(images: np.ndarray, options: ImageOptions) -> np.ndarray:
    """uint8 N×C×H×W → uint8 N×C'×H'×W' after ``options.color``, ``resize`` and ``crop``."""
    if options.color == "gray" and images.shape[1] == 3:
        images = to_gray(images)
    elif options.color == "rgb" and images.shape[1] == 1:
        images = np.repeat(images, 3, axis=1)
    if not options.resize and not options.crop:
        return np.ascontiguousarray(images)
    from PIL import Image

    out = []
    for image in images:
        pil = Image.fromarray(image[0] if image.shape[0] == 1 else image.transpose(1, 2, 0))
        array = np.asarray(geometry(pil, options.resize, options.crop, Image.Resampling.BILINEAR, "in memory"))
        out.append(array[None] if array.ndim == 2 else array.transpose(2, 0, 1))
    return np.stack(out) if out else images
