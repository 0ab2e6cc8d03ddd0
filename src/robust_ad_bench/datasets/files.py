"""Where a dataset's files are, and reading them: the data root, image listing and decoding.

The root of a dataset is, in order: its ``root`` option (``dataset_params: {mvtec: {root: DIR}}``: the
dataset's own folder), else a known subfolder of the grid's data root (``--data-root DIR`` or
``$ROBUST_AD_BENCH_DATA``). A missing root is a one-line ``BenchError`` that names the expected layout and
every place looked at. Nothing is downloaded here.

Images are decoded by library decoders (``datasets.decode``: 8-bit files to uint8, 16-bit ones to uint16,
nothing clipped), converted to the requested colour mode (``gray``: ITU-R 601-2 luma, as Pillow's ``L``;
``rgb``: gray repeated), resized to N×N with Pillow's bilinear filter (antialiased when shrinking: what
torchvision's ``Resize`` does to PIL images), then center-cropped as torchvision's ``CenterCrop`` (offsets
rounded). Masks go through the same geometry with nearest-neighbour resizing; a mask of another size than
its image, or one that is not binary, is an error. A file that cannot be decoded (corrupt, truncated)
raises a ``BenchError`` naming it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from robust_ad_bench.core.errors import BenchError, unknown_choice
from robust_ad_bench.datasets import decode

DATA_ENV = "ROBUST_AD_BENCH_DATA"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
COLORS = ("", "rgb", "gray")  # "": the file's own mode (gray stays one channel, anything else RGB)


@dataclass
class ImageOptions:
    """Options of the datasets read from files (YAML ``dataset_params: {NAME: {...}}``). ``resize``,
    ``crop`` and ``color`` change the images, so they are part of the job key; ``root`` and ``cache_dir``
    only say where files are."""

    root: str = field(default="", metadata={"key": False})  # the dataset's own folder (else: data root)
    resize: int = 0  # N: resize to N×N (bilinear, antialiased); 0: keep the size
    crop: int = 0  # N: center crop N×N after resizing; 0: no crop
    color: str = ""  # "rgb", "gray", or "" (the files' own: gray stays gray)
    cache_dir: str = field(default="", metadata={"key": False})  # on-disk cache of decoded images

    def __post_init__(self) -> None:
        check_size("resize", self.resize)
        check_size("crop", self.crop)
        check_color(self.color)
        if self.resize and self.crop > self.resize:
            raise BenchError(f"dataset option crop {self.crop} is larger than resize {self.resize}: the crop is "
                             f"taken from the resized {self.resize}x{self.resize} image; crop at most {self.resize} "
                             f"or resize to at least {self.crop}")


def data_root(grid_root: str | None) -> str | None:
    """The grid's data root: ``--data-root`` / YAML ``data_root``, else ``$ROBUST_AD_BENCH_DATA``."""
    return grid_root or os.environ.get(DATA_ENV) or None


def find_root(dataset: str, option_root: str, grid_root: str | None, subfolders: Sequence[str],
              looks_right: Callable[[Path], bool], layout: str) -> Path:
    """The folder of ``dataset``: ``option_root`` if given, else the first of ``subfolders`` of the data
    root (``""`` is the data root itself) that ``looks_right``."""
    if option_root:
        root = Path(option_root).expanduser()
        if root.is_dir() and looks_right(root):
            return root
        raise BenchError(f"dataset '{dataset}': data not found at {root} (its 'root' option); expected layout: "
                         f"{layout}")
    base = data_root(grid_root)
    if not base:
        raise BenchError(f"dataset '{dataset}': no data root given; pass --data-root DIR (or set {DATA_ENV}, or "
                         f"dataset_params: {{{dataset}: {{root: ROOT}}}}); expected layout, with ROOT = "
                         f"DIR/{subfolders[0] or '.'}: {layout}")
    candidates = [Path(base).expanduser() / sub if sub else Path(base).expanduser() for sub in subfolders]
    for root in candidates:
        if root.is_dir() and looks_right(root):
            return root
    looked = ", ".join(str(c) for c in candidates)
    raise BenchError(f"dataset '{dataset}': data not found at {looked}; expected layout: {layout}")


def list_images(folder: Path) -> list[Path]:
    """Image files directly in ``folder``, sorted by name (hidden files skipped)."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES)


def check_color(color: str) -> str:
    if color not in COLORS:
        raise unknown_choice("color (\"\" keeps the file's own)", color, COLORS)
    return color


def check_size(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise BenchError(f"{name} must be a non-negative integer number of pixels (0: off), got {value!r}")
    return value


def geometry(image, resize: int, crop: int, resample: int, path: Path | str):  # -> PIL.Image.Image
    """Resize then center-crop a Pillow image (the in-memory transforms of ``datasets.transforms``)."""
    if resize:
        image = image.resize((resize, resize), resample)
    if crop:
        width, height = image.size
        if crop > width or crop > height:
            raise BenchError(f"crop {crop} is larger than image {path} ({width}x{height} after resizing)")
        top, left = int(round((height - crop) / 2.0)), int(round((width - crop) / 2.0))
        image = image.crop((left, top, left + crop, top + crop))
    return image


def read_image(path: Path, color: str, resize: int, crop: int) -> np.ndarray:
    """One image as a C×H×W array (uint8, or uint16 for 16-bit files) after colour, resize and crop."""
    return decode.read_image(path, color, resize, crop)


def read_mask(path: Path, resize: int, crop: int, image: Path | None = None) -> np.ndarray:
    """A ground-truth mask as an H×W bool array; ``image``: the image it belongs to (same size required)."""
    return decode.read_mask(path, image, resize, crop)


def _workers() -> int:
    return max(1, min(4, os.cpu_count() or 1))


def read_images(paths: Sequence[Path], color: str, resize: int, crop: int) -> np.ndarray:
    """N×C×H×W uint8; decoded on a few threads (Pillow releases the GIL while decoding). All images must
    end with the same size: otherwise a ``BenchError`` names the odd one and suggests ``resize``."""
    with ThreadPoolExecutor(_workers()) as pool:
        arrays = list(pool.map(lambda p: read_image(p, color, resize, crop), paths))
    return stack(arrays, paths, "image")


def read_masks(paths: Sequence[Path], resize: int, crop: int, images: Sequence[Path | None] | None = None
               ) -> np.ndarray:
    """Masks as N×H×W bool; ``images[i]`` is the image of ``paths[i]`` (its size is checked)."""
    pairs = list(zip(paths, images or [None] * len(paths)))
    with ThreadPoolExecutor(_workers()) as pool:
        arrays = list(pool.map(lambda pair: read_mask(pair[0], resize, crop, pair[1]), pairs))
    return stack(arrays, paths, "mask")


def stack(arrays: list[np.ndarray], paths: Sequence[Path], what: str) -> np.ndarray:
    if not arrays:
        raise BenchError(f"no {what}s to stack")
    if len({a.shape[-2:] for a in arrays}) > 1:
        first = arrays[0].shape[-2:]
        odd = next(p for a, p in zip(arrays, paths) if a.shape[-2:] != first)
        raise BenchError(f"{what} {odd} is {odd_size(arrays, paths, odd)} but {paths[0]} is {first[1]}x{first[0]}; "
                         "set the dataset's 'resize' option so that all images get one size")
    channels = {a.shape[0] for a in arrays if a.ndim == 3}
    if len(channels) > 1:  # some gray, some colour files: promote the gray ones to RGB
        arrays = [np.repeat(a, 3, axis=0) if a.shape[0] == 1 else a for a in arrays]
    if any(a.dtype == np.uint16 for a in arrays):  # some 16-bit files: 8-bit x 257 is the same value exactly
        arrays = [a.astype(np.uint16) * 257 if a.dtype == np.uint8 else a for a in arrays]
    return np.stack(arrays)


def odd_size(arrays: list[np.ndarray], paths: Sequence[Path], path: Path) -> str:
    height, width = arrays[list(paths).index(path)].shape[-2:]
    return f"{width}x{height}"


def as_float(images: np.ndarray) -> torch.Tensor:
    """uint8 or uint16 N×C×H×W → float32 in [0, 1] (a new tensor: the cached array stays untouched)."""
    if images.dtype == np.uint16:
        return torch.from_numpy(images.astype(np.float32)).div_(65535.0)
    return torch.from_numpy(images).float().div_(255.0)
