"""Image files decode to [0, 1] without clipping: every format and bit depth against a reference decode.

The reference of a lossless file is the array it was written from (by Pillow, tifffile, or a minimal PNG
writer for 16-bit colour, which Pillow cannot write); of a JPEG, libjpeg's decode through torchvision.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

import miniature_data as mini
from robust_ad_bench.core.errors import BenchError
from robust_ad_bench.core.registry import DATASETS
from robust_ad_bench.datasets import decode, files

pytestmark = pytest.mark.usefixtures("fresh_data")
RNG = np.random.default_rng(0)
H, W = 9, 13


def write_png16(path: Path, array: np.ndarray) -> None:
    """A 16-bit PNG (gray, gray+alpha, RGB or RGBA) written by hand: IHDR, one zlib IDAT, IEND."""
    channels = 1 if array.ndim == 2 else array.shape[2]
    color_type = {1: 0, 2: 4, 3: 2, 4: 6}[channels]
    rows = array.reshape(array.shape[0], -1).astype(">u2")
    raw = b"".join(b"\x00" + row.tobytes() for row in rows)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", array.shape[1], array.shape[0], 16, color_type, 0, 0, 0)
    path.write_bytes(decode.PNG_SIGNATURE + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw))
                     + chunk(b"IEND", b""))


def u8(*shape):
    return RNG.integers(0, 256, (H, W, *shape), dtype=np.uint8)


def u16(*shape):
    return RNG.integers(0, 65536, (H, W, *shape), dtype=np.uint16)


def pil(fmt: str, mode: str | None = None):
    def write(path: Path, array: np.ndarray) -> None:
        image = Image.fromarray(array)
        (image.convert(mode) if mode else image).save(path, format=fmt)
    return write


def tiff(**kwargs):
    return lambda path, array: tifffile.imwrite(path, array, **kwargs)


# name, suffix, writer, source array, expected H×W×C values, their maximum
def cases():
    gray8, rgb8, rgba8, la8 = u8(), u8(3), u8(4), u8(2)
    gray16, rgb16, rgba16, ga16 = u16(), u16(3), u16(4), u16(2)
    palette = Image.fromarray(rgb8).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    palette_rgb = np.asarray(palette.convert("RGB"))
    bilevel = u8() > 127
    floats = RNG.random((H, W)).astype(np.float32)
    return [
        ("png-gray8", ".png", pil("PNG"), gray8, gray8[..., None], 255),
        ("png-rgb8", ".png", pil("PNG"), rgb8, rgb8, 255),
        ("png-rgba8", ".png", pil("PNG"), rgba8, rgba8[..., :3], 255),
        ("png-gray-alpha8", ".png", pil("PNG"), la8, la8[..., :1], 255),
        ("png-palette", ".png", lambda p, a: palette.save(p), None, palette_rgb, 255),
        ("png-1bit", ".png", pil("PNG", "1"), bilevel.astype(np.uint8) * 255, bilevel[..., None] * 255, 255),
        ("png-gray16", ".png", pil("PNG"), gray16, gray16[..., None], 65535),
        ("png-gray16-handwritten", ".png", write_png16, gray16, gray16[..., None], 65535),
        ("png-gray-alpha16", ".png", write_png16, ga16, ga16[..., :1], 65535),
        ("png-rgb16", ".png", write_png16, rgb16, rgb16, 65535),
        ("png-rgba16", ".png", write_png16, rgba16, rgba16[..., :3], 65535),
        ("bmp-gray8", ".bmp", pil("BMP"), gray8, gray8[..., None], 255),
        ("bmp-rgb8", ".bmp", pil("BMP"), rgb8, rgb8, 255),
        ("bmp-rgba8", ".bmp", pil("BMP"), rgba8, rgba8[..., :3], 255),
        ("bmp-palette", ".bmp", lambda p, a: palette.save(p, format="BMP"), None, palette_rgb, 255),
        ("tiff-gray8", ".tif", tiff(), gray8, gray8[..., None], 255),
        ("tiff-rgb8", ".tiff", tiff(photometric="rgb"), rgb8, rgb8, 255),
        ("tiff-rgba8", ".tif", tiff(photometric="rgb", extrasamples=["unassalpha"]), rgba8, rgba8[..., :3], 255),
        ("tiff-gray16", ".tif", tiff(), gray16, gray16[..., None], 65535),
        ("tiff-rgb16", ".tif", tiff(photometric="rgb"), rgb16, rgb16, 65535),
        ("tiff-rgb16-planar", ".tif", lambda p, a: tifffile.imwrite(p, np.moveaxis(a, -1, 0), photometric="rgb",
                                                                    planarconfig="separate"), rgb16, rgb16, 65535),
        ("tiff-rgba16", ".tif", tiff(photometric="rgb", extrasamples=["unassalpha"]), rgba16, rgba16[..., :3], 65535),
        ("tiff-gray16-pillow", ".tif", pil("TIFF"), gray16, gray16[..., None], 65535),
        ("tiff-palette", ".tif", lambda p, a: palette.save(p, format="TIFF"), None, palette_rgb, 255),
        ("tiff-float", ".tif", tiff(), floats, np.rint(floats.astype(np.float64) * 65535)[..., None], 65535),
    ]


CASES = cases()


@pytest.mark.parametrize("name,suffix,write,source,expected,top", CASES, ids=[c[0] for c in CASES])
def test_every_format_and_bit_depth_decodes_exactly(tmp_path, name, suffix, write, source, expected, top):
    path = tmp_path / f"image{suffix}"
    write(path, source)
    array = decode.decode(path)
    assert array.dtype == (np.uint16 if top == 65535 else np.uint8)
    np.testing.assert_array_equal(array, expected)
    images = files.read_images([path], "", 0, 0)
    floats = files.as_float(images)
    assert floats.dtype == torch.float32 and floats.shape == (1, expected.shape[2], H, W)
    reference = torch.from_numpy(np.moveaxis(expected, -1, 0)[None].astype(np.float64) / top).float()
    assert torch.equal(floats, reference)  # [0, 1] exactly: nothing clipped, nothing cut to 8 bits


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torchvision 0.29 deprecates its decoders
@pytest.mark.parametrize("channels", [1, 3])
def test_jpeg_matches_libjpeg_through_torchvision(tmp_path, channels):
    from torchvision.io import ImageReadMode, decode_jpeg, read_file

    path = tmp_path / "image.jpg"
    array = mini._texture(RNG, 32, 24, channels, 0.5)
    Image.fromarray(array[..., 0] if channels == 1 else array).save(path, quality=90)
    mode = ImageReadMode.GRAY if channels == 1 else ImageReadMode.RGB
    reference = decode_jpeg(read_file(str(path)), mode=mode).permute(1, 2, 0).numpy()
    ours = decode.decode(path)
    assert ours.dtype == np.uint8 and ours.shape == reference.shape
    assert np.abs(ours.astype(int) - reference.astype(int)).max() <= 1  # two builds of libjpeg: IDCT rounding


def test_sixteen_bit_resize_and_color_keep_their_precision(tmp_path):
    """Resizing and the gray conversion of 16-bit data agree with the 8-bit path on the same picture, at
    16-bit precision (the 8-bit path is the one every earlier result used)."""
    rgb8 = mini._texture(RNG, 40, 40, 3, 0.5)
    write_png16(tmp_path / "wide.png", rgb8.astype(np.uint16) * 257)
    Image.fromarray(rgb8).save(tmp_path / "narrow.png")
    for color in ("", "gray", "rgb"):
        wide = files.as_float(files.read_images([tmp_path / "wide.png"], color, 24, 20))
        narrow = files.as_float(files.read_images([tmp_path / "narrow.png"], color, 24, 20))
        assert wide.shape == narrow.shape == (1, 1 if color == "gray" else 3, 20, 20)
        assert (wide - narrow).abs().max() <= 1.5 / 255  # Pillow's 8-bit filter rounds its fixed-point sums
    wide = files.read_images([tmp_path / "wide.png"], "", 24, 0)
    assert wide.dtype == np.uint16 and len(np.unique(wide % 257)) > 1  # values between the 8-bit levels


def test_mixed_bit_depths_stack_on_the_16_bit_scale(tmp_path):
    gray8, gray16 = u8(), u16()
    Image.fromarray(gray8).save(tmp_path / "a.png")
    write_png16(tmp_path / "b.png", gray16)
    floats = files.as_float(files.read_images([tmp_path / "a.png", tmp_path / "b.png"], "", 0, 0))
    assert torch.equal(floats[0, 0], torch.from_numpy(gray8 / 255).float())
    assert torch.equal(floats[1, 0], torch.from_numpy(gray16 / 65535).float())


def test_a_16_bit_mvtec_category_is_not_white(tmp_path):
    """The report's case: 16-bit gray PNGs once decoded to all-white images."""
    root = mini.make_industrial(tmp_path / "mvtec", "mvtec", ("bottle",), size=16, n_train=4, n_good=2,
                                n_defect=1, gray=True)
    originals = {}
    for path in (root / "bottle").rglob("*.png"):
        if "ground_truth" not in path.parts:
            array = np.asarray(Image.open(path)).astype(np.uint16) * 200  # 16-bit values up to 51000
            originals[path] = array
            Image.fromarray(array).save(path)
    split = DATASETS.get("mvtec").create({"resize": 0, "color": ""}, str(tmp_path)).split("bottle", 0)
    train = sorted(p for p in originals if "train" in p.parts)
    expected = torch.from_numpy(np.stack([originals[p] for p in train]) / 65535).float()
    assert torch.equal(split.train[:, 0], expected)
    assert split.train.max() < 0.8 and split.train.std() > 0.01


@pytest.fixture
def category(tmp_path) -> Path:
    return mini.make_industrial(tmp_path / "mvtec", "mvtec", ("bottle",), size=32, n_train=3, n_good=2, n_defect=1)


def test_mask_of_another_size_is_one_line_naming_the_file(category, tmp_path):
    mask = category / "bottle/ground_truth/crack/000_mask.png"
    Image.fromarray(np.full((8, 40), 255, np.uint8)).save(mask)  # 40×8 for a 32×32 image
    with pytest.raises(BenchError) as info:
        DATASETS.get("mvtec").create({"resize": 16}, str(tmp_path)).split("bottle", 0)
    assert str(info.value) == (f"mask {mask} is 40x8 but its image {category / 'bottle/test/crack/000.png'} "
                               "is 32x32")


def test_mask_that_is_not_binary_is_one_line_naming_the_file(category, tmp_path):
    mask = category / "bottle/ground_truth/scratch/000_mask.png"
    Image.fromarray(np.tile(np.arange(32, dtype=np.uint8) * 8, (32, 1))).save(mask)
    with pytest.raises(BenchError, match=f"^mask {mask} is not binary: it holds 32 values"):
        DATASETS.get("mvtec").create({"resize": 16}, str(tmp_path)).split("bottle", 0)


def test_masks_of_0_and_1_and_16_bit_masks_are_binary(category, tmp_path):
    ones = category / "bottle/ground_truth/crack/000_mask.png"
    Image.fromarray((np.asarray(Image.open(ones)) > 0).astype(np.uint8)).save(ones)
    wide = category / "bottle/ground_truth/scratch/000_mask.png"
    write_png16(wide, (np.asarray(Image.open(wide)) > 0).astype(np.uint16) * 65535)
    split = DATASETS.get("mvtec").create({"resize": 16}, str(tmp_path)).split("bottle", 0)
    assert split.test_masks is not None and split.test_masks[2:].flatten(1).any(1).all()
