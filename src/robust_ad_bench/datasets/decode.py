"""Decoding image files into arrays with library decoders, without losing bits.

Every file becomes an H×W×C array (C = 1 for gray, 3 for colour; an alpha channel is dropped, as
torchvision's ``ImageReadMode.RGB`` does) of ``uint8`` for 8-bit sources and ``uint16`` for 16-bit ones, so
``as_float`` maps both to [0, 1] exactly (divide by 255 or 65535); nothing is clipped or truncated:

- TIFF: ``tifffile`` (8/16-bit gray, RGB, RGBA, planar or interleaved; float samples in [0, 1]); palette
  TIFFs and those tifffile cannot read go to Pillow;
- 16-bit PNG: ``torchvision.io.decode_png`` (libpng; Pillow would cut 16-bit colour to 8 bits);
- everything else (8-bit PNG incl. palette and gray+alpha, JPEG, BMP): Pillow, converted by mode.

Resizing goes through Pillow's bilinear filter (antialiased when shrinking): 8-bit images in ``L``/``RGB``
mode as before, 16-bit ones channel by channel in Pillow's 32-bit float mode ``F``, rounded back. Masks are
read with the same decoders, must have their image's size and hold two values at most (0 and one other).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from robust_ad_bench.core.errors import BenchError

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N")


def _bad(path: Path, why: object) -> BenchError:
    return BenchError(f"cannot decode image {path}: {why}")


def _png_bit_depth(path: Path) -> int | None:
    """The bit depth in a PNG's IHDR chunk (None: not a PNG)."""
    with open(path, "rb") as f:
        head = f.read(26)
    if len(head) < 26 or not head.startswith(PNG_SIGNATURE) or head[12:16] != b"IHDR":
        return None
    return head[24]


def _png16(path: Path) -> np.ndarray:
    import torch

    try:
        with warnings.catch_warnings():  # torchvision 0.29 deprecates its decoders for TorchCodec's
            warnings.simplefilter("ignore", DeprecationWarning)
            from torchvision.io import ImageReadMode, decode_png, read_file

            tensor = decode_png(read_file(str(path)), mode=ImageReadMode.UNCHANGED)
    except (RuntimeError, ValueError) as exc:
        raise _bad(path, str(exc).splitlines()[-1]) from None
    if tensor.dtype != torch.uint16:  # older torchvision gave int32 holding 16-bit values
        tensor = tensor.to(torch.int32)
    return tensor.permute(1, 2, 0).numpy().astype(np.uint16)


def _from_float(array: np.ndarray, path: Path) -> np.ndarray:
    """Float samples (TIFF, Pillow ``F``) must lie in [0, 1]; kept as 16-bit."""
    if array.size and (not np.isfinite(array).all() or array.min() < 0 or array.max() > 1):
        raise _bad(path, f"float samples must lie in [0, 1], found {np.nanmin(array):g}..{np.nanmax(array):g}")
    return np.rint(array.astype(np.float64) * 65535).astype(np.uint16)


def _from_int(array: np.ndarray, path: Path) -> np.ndarray:
    """Integer samples: 8 and 16 bits as they are, wider ones only when they fit 16 bits."""
    if array.dtype == np.bool_:
        return array.astype(np.uint8) * 255
    if array.dtype == np.uint8 or array.dtype == np.uint16:
        return array
    if np.issubdtype(array.dtype, np.floating):
        return _from_float(array, path)
    if np.issubdtype(array.dtype, np.integer) and (not array.size or (array.min() >= 0 and array.max() <= 65535)):
        return array.astype(np.uint16)
    raise _bad(path, f"{array.dtype} samples outside 0..65535 are not supported")


def _tiff(path: Path) -> np.ndarray | None:
    """A TIFF's first page, H×W×C; None for what Pillow reads better (palette) or tifffile cannot read."""
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            page = tif.pages.first
            if page.photometric == tifffile.PHOTOMETRIC.PALETTE:
                return None
            array, axes = page.asarray(), page.axes
    except Exception:  # compression tifffile cannot decode without imagecodecs, or not a TIFF: Pillow tries
        return None
    if array.ndim == 3 and axes.startswith("S"):  # planar: samples first
        array = np.moveaxis(array, 0, -1)
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3 or array.shape[-1] not in (1, 2, 3, 4):
        raise _bad(path, f"unsupported TIFF layout {axes} {array.shape}")
    if page.photometric == tifffile.PHOTOMETRIC.MINISWHITE:
        array = np.iinfo(array.dtype).max - array if np.issubdtype(array.dtype, np.integer) else 1 - array
    return _from_int(array, path)


def _pillow(path: Path) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        image = Image.open(path)
        image.load()  # decode now: a truncated or corrupt file fails here, with its name
    except (OSError, SyntaxError, ValueError, UnidentifiedImageError) as exc:
        raise _bad(path, exc) from None
    mode = image.mode
    if mode in _SIXTEEN_BIT or mode in ("I", "F"):
        return _from_int(np.asarray(image), path)[..., None]
    if mode == "L":
        return np.asarray(image)[..., None]
    if mode in ("1", "LA", "La"):
        return np.asarray(image.convert("L"))[..., None]
    return np.asarray(image if mode == "RGB" else image.convert("RGB"))


def decode(path: Path) -> np.ndarray:
    """One image file as H×W×C (C 1 or 3; alpha dropped), ``uint8`` or ``uint16``."""
    path = Path(path)
    try:
        suffix = path.suffix.lower()
        array = None
        if suffix in (".tif", ".tiff"):
            array = _tiff(path)
        elif _png_bit_depth(path) == 16:
            array = _png16(path)
        if array is None:
            array = _pillow(path)
    except OSError as exc:
        raise _bad(path, exc.strerror or exc) from None
    if array.shape[-1] in (2, 4):  # gray + alpha, RGBA: the colour only
        array = array[..., :-1]
    return np.ascontiguousarray(array)


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) from the header when Pillow can read it (cheap), else from a full decode."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            return image.size
    except Exception:
        height, width = decode(path).shape[:2]
        return width, height


def to_color(array: np.ndarray, color: str) -> np.ndarray:
    """H×W×C in the requested colour mode: ``gray`` (ITU-R 601-2 luma, Pillow's ``L`` formula, rounded),
    ``rgb`` (gray repeated), ``""`` (as decoded)."""
    if color == "gray" and array.shape[-1] == 3:
        r, g, b = (array[..., i].astype(np.uint64) for i in range(3))
        return ((r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16).astype(array.dtype)[..., None]
    if color == "rgb" and array.shape[-1] == 1:
        return np.repeat(array, 3, axis=-1)
    return array


def resize(array: np.ndarray, size: int, nearest: bool = False) -> np.ndarray:
    """H×W×C → size×size×C with Pillow (bilinear, antialiased; ``nearest`` for masks)."""
    from PIL import Image

    resample = Image.Resampling.NEAREST if nearest else Image.Resampling.BILINEAR
    if array.dtype == np.uint8:
        image = Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array)
        out = np.asarray(image.resize((size, size), resample))
        return out[..., None] if out.ndim == 2 else out
    planes = [np.asarray(Image.fromarray(array[..., c].astype(np.float32), mode="F").resize((size, size), resample))
              for c in range(array.shape[-1])]
    return np.clip(np.rint(np.stack(planes, axis=-1)), 0, 65535).astype(np.uint16)


def center_crop(array: np.ndarray, crop: int, path: Path | str) -> np.ndarray:
    """torchvision's ``CenterCrop`` (offsets rounded) of an H×W×C array."""
    height, width = array.shape[:2]
    if crop > width or crop > height:
        raise BenchError(f"crop {crop} is larger than image {path} ({width}x{height} after resizing)")
    top, left = int(round((height - crop) / 2.0)), int(round((width - crop) / 2.0))
    return array[top:top + crop, left:left + crop]


def read_image(path: Path, color: str, resize_to: int, crop: int) -> np.ndarray:
    """One image as C×H×W (uint8 or uint16) after the colour conversion, resize and crop."""
    array = to_color(decode(path), color)
    if resize_to:
        array = resize(array, resize_to)
    if crop:
        array = center_crop(array, crop, path)
    return np.ascontiguousarray(array.transpose(2, 0, 1))


def read_mask(path: Path, image: Path | None, resize_to: int, crop: int) -> np.ndarray:
    """A ground-truth mask as H×W bool. It must have the size of ``image`` and be binary (0 and one other
    value: 255, 1, 65535, ...): anything else is a ``BenchError`` naming the file."""
    array = decode(path)
    height, width = array.shape[:2]
    if image is not None:
        expected = image_size(image)
        if (width, height) != expected:
            raise BenchError(f"mask {path} is {width}x{height} but its image {image} is {expected[0]}x{expected[1]}")
    values = np.unique(array)
    if len(values) > 2 or (len(values) == 2 and values[0] != 0):
        shown = ", ".join(str(v) for v in values[:6]) + (", ..." if len(values) > 6 else "")
        raise BenchError(f"mask {path} is not binary: it holds {len(values)} values ({shown}); a mask holds 0 "
                         "(normal) and one other value (anomalous)")
    if array.shape[-1] == 3 and not (array == array[..., :1]).all():
        raise BenchError(f"mask {path} is not binary: its colour channels differ")
    mask = (array[..., 0] > 0).astype(np.uint8) * 255
    if resize_to:
        mask = resize(mask[..., None], resize_to, nearest=True)[..., 0]
    if crop:
        mask = center_crop(mask[..., None], crop, path)[..., 0]
    return mask > 0
