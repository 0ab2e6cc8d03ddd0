"""Miniature datasets in the real on-disk formats, for tests and benchmarks (nothing is downloaded).

- ``make_industrial``: an MVTec AD tree (PNG, ``<name>_mask.png`` masks), or its BTAD (``ok``/``ko``, BMP
  images, masks with the image's name), VisA (one-class split: ``good``/``bad``, JPG images, PNG masks)
  and MPDD variants;
- ``make_cifar10`` / ``make_cifar100``: the python pickle batches as CIFAR ships them (Python 2 cPickle
  protocol 2: byte strings, numpy uint8 ``data``);
- ``make_mnist``: idx files of MNIST or Fashion-MNIST under torchvision's ``<root>/<Name>/raw/`` (plain or .gz);
- ``make_svhn``: ``train_32x32.mat`` / ``test_32x32.mat`` (``X`` 32×32×3×N, ``y`` with 10 for digit 0).

Command line (e.g. a 400-image category at MVTec's size, or a 224-px one):
    python tests/miniature_data.py mvtec OUT --categories carpet --size 1024 --n-train 280 --n-good 28 --n-defect 18
    python tests/miniature_data.py mvtec OUT --categories bottle --size 224
"""

from __future__ import annotations

import argparse
import gzip
import struct
from pathlib import Path

import numpy as np

DEFECTS = ("crack", "scratch", "hole", "stain", "cut")


def _texture(rng: np.random.Generator, height: int, width: int, channels: int, tone: float) -> np.ndarray:
    """A smooth random texture (compresses like a photo, not like white noise), H×W×C uint8."""
    coarse = rng.random((max(2, height // 16), max(2, width // 16), channels))
    rows = np.linspace(0, coarse.shape[0] - 1, height).astype(int)
    cols = np.linspace(0, coarse.shape[1] - 1, width).astype(int)
    image = 0.55 * tone + 0.35 * coarse[rows][:, cols] + 0.1 * rng.random((height, width, channels))
    return (np.clip(image, 0, 1) * 255).astype(np.uint8)


def _defect(rng: np.random.Generator, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A bright or dark rectangle somewhere in the image, and its mask (H×W uint8, 0 or 255)."""
    height, width = image.shape[:2]
    h, w = max(2, height // 5), max(2, width // 5)
    top, left = rng.integers(0, height - h + 1), rng.integers(0, width - w + 1)
    out = image.copy()
    out[top:top + h, left:left + w] = 255 if rng.random() < 0.5 else 0
    mask = np.zeros((height, width), np.uint8)
    mask[top:top + h, left:left + w] = 255
    return out, mask


def _save(array: np.ndarray, path: Path, fmt: str | None = None) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array[..., 0] if array.ndim == 3 and array.shape[2] == 1 else array).save(path, format=fmt)


LAYOUTS = {  # good folder, anomaly folders, image suffix, mask name, PIL format
    "mvtec": ("good", None, ".png", "{stem}_mask.png", "PNG"),
    "mpdd": ("good", None, ".png", "{stem}_mask.png", "PNG"),
    "btad": ("ok", ("ko",), ".bmp", "{stem}.png", "BMP"),
    "visa": ("good", ("bad",), ".JPG", "{stem}.png", "JPEG"),
}


def make_industrial(root: str | Path, layout: str = "mvtec", categories: tuple[str, ...] = ("bottle",),
                    size: int | tuple[int, int] = 40, n_train: int = 12, n_good: int = 4, n_defect: int = 3,
                    defects: tuple[str, ...] = DEFECTS[:2], gray: bool = False, seed: int = 0) -> Path:
    """A category tree per category under ``root`` (which is returned). Defect types follow ``defects``
    (BTAD and VisA have one anomaly folder: ``ko``, ``bad``)."""
    good, fixed, suffix, mask_name, fmt = LAYOUTS[layout]
    kinds = fixed or defects
    height, width = (size, size) if isinstance(size, int) else size
    channels = 1 if gray else 3
    rng = np.random.default_rng(seed)
    root = Path(root)
    for c, category in enumerate(categories):
        folder = root / category
        tone = 0.3 + 0.4 * (c % 3) / 2
        for i in range(n_train):
            _save(_texture(rng, height, width, channels, tone), folder / "train" / good / f"{i:03d}{suffix}", fmt)
        for i in range(n_good):
            _save(_texture(rng, height, width, channels, tone), folder / "test" / good / f"{i:03d}{suffix}", fmt)
        for kind in kinds:
            for i in range(n_defect):
                image, mask = _defect(rng, _texture(rng, height, width, channels, tone))
                stem = f"{i:03d}"
                _save(image, folder / "test" / kind / f"{stem}{suffix}", fmt)
                _save(mask, folder / "ground_truth" / kind / mask_name.format(stem=stem), "PNG")
    return root


# --- CIFAR: a Python 2 cPickle (protocol 2) writer for dicts of byte strings, ints, lists and uint8 arrays


def _py2_pickle(obj: object) -> bytes:
    out = bytearray(b"\x80\x02")

    def string(data: bytes) -> None:  # a Python 2 str
        out.extend(b"U" + bytes([len(data)]) if len(data) < 256 else b"T" + struct.pack("<I", len(data)))
        out.extend(data)

    def integer(value: int) -> None:
        out.extend(b"K" + bytes([value]) if 0 <= value < 256 else b"J" + struct.pack("<i", value))

    def emit(value: object) -> None:
        if isinstance(value, dict):
            out.extend(b"}(")
            for k, v in value.items():
                emit(k)
                emit(v)
            out.extend(b"u")
        elif isinstance(value, list):
            out.extend(b"](")
            for v in value:
                emit(v)
            out.extend(b"e")
        elif isinstance(value, bytes):
            string(value)
        elif isinstance(value, str):
            string(value.encode())
        elif isinstance(value, (int, np.integer)):
            integer(int(value))
        elif isinstance(value, np.ndarray):  # numpy 1.x's reduce of an array, as Python 2 wrote it
            out.extend(b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n")
            integer(0)
            out.extend(b"\x85")
            string(b"b")
            out.extend(b"\x87R(")  # TUPLE3 REDUCE, then the state tuple
            integer(1)
            out.extend(b"(")
            for dim in value.shape:
                integer(dim)
            out.extend(b"tcnumpy\ndtype\n")
            string(value.dtype.str[1:].encode())
            integer(0)
            integer(1)
            out.extend(b"\x87R(")
            integer(3)
            string(b"|" if value.dtype.itemsize == 1 else b"<")
            out.extend(b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xff")
            integer(0)
            out.extend(b"tb\x89")  # dtype state, BUILD, NEWFALSE (not Fortran order)
            string(np.ascontiguousarray(value).tobytes())
            out.extend(b"tb")
        else:
            raise TypeError(f"cannot write {type(value).__name__}")

    emit(obj)
    out.extend(b".")
    return bytes(out)


def _class_images(rng: np.random.Generator, labels: np.ndarray, shape: tuple[int, ...], classes: int) -> np.ndarray:
    """One mean tone per class plus noise, so the classes are separable."""
    tones = np.linspace(0.15, 0.85, classes)[labels]
    noise = rng.random((len(labels), *shape))
    return (np.clip(0.7 * tones.reshape(-1, *[1] * len(shape)) + 0.3 * noise, 0, 1) * 255).astype(np.uint8)


def make_cifar10(root: str | Path, n_train: int = 8, n_test: int = 4, seed: int = 0) -> Path:
    """``root/cifar-10-batches-py``: data_batch_1..5 (``n_train`` per class in all), test_batch, batches.meta."""
    rng = np.random.default_rng(seed)
    folder = Path(root) / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    train_labels = rng.permutation(np.repeat(np.arange(10), n_train))
    parts = np.array_split(np.arange(len(train_labels)), 5)
    for b, part in enumerate(parts, 1):
        labels = train_labels[part]
        data = _class_images(rng, labels, (3072,), 10)
        batch = {b"batch_label": b"training batch %d of 5" % b, b"labels": labels.tolist(), b"data": data,
                 b"filenames": [b"img_%d.png" % i for i in part]}
        (folder / f"data_batch_{b}").write_bytes(_py2_pickle(batch))
    labels = rng.permutation(np.repeat(np.arange(10), n_test))
    test = {b"batch_label": b"testing batch 1 of 1", b"labels": labels.tolist(),
            b"data": _class_images(rng, labels, (3072,), 10),
            b"filenames": [b"t_%d.png" % i for i in range(len(labels))]}
    (folder / "test_batch").write_bytes(_py2_pickle(test))
    names = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse", b"ship", b"truck"]
    (folder / "batches.meta").write_bytes(_py2_pickle({b"label_names": names, b"num_vis": 3072,
                                                       b"num_cases_per_batch": 10000}))
    return Path(root)


def make_cifar100(root: str | Path, n_train: int = 4, n_test: int = 2, seed: int = 0) -> Path:
    """``root/cifar-100-python``: train, test (fine and coarse labels), meta; ``n_*`` per superclass."""
    rng = np.random.default_rng(seed)
    folder = Path(root) / "cifar-100-python"
    folder.mkdir(parents=True, exist_ok=True)
    for name, n in (("train", n_train), ("test", n_test)):
        coarse = rng.permutation(np.repeat(np.arange(20), n))
        fine = coarse * 5 + rng.integers(0, 5, len(coarse))
        batch = {b"filenames": [b"f%d.png" % i for i in range(len(coarse))], b"batch_label": name.encode(),
                 b"fine_labels": fine.tolist(), b"coarse_labels": coarse.tolist(),
                 b"data": _class_images(rng, coarse, (3072,), 20)}
        (folder / name).write_bytes(_py2_pickle(batch))
    (folder / "meta").write_bytes(_py2_pickle({b"fine_label_names": [b"f%d" % i for i in range(100)],
                                               b"coarse_label_names": [b"c%d" % i for i in range(20)]}))
    return Path(root)


def _idx(array: np.ndarray) -> bytes:
    """The idx format: zero, zero, type 0x08 (ubyte), number of dimensions, sizes big-endian, then the data."""
    return struct.pack(">BBBB", 0, 0, 8, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()


def make_mnist(root: str | Path, name: str = "MNIST", n_train: int = 8, n_test: int = 4, gz: bool = False,
               seed: int = 0) -> Path:
    """torchvision's ``root/<name>/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]``."""
    rng = np.random.default_rng(seed)
    folder = Path(root) / name / "raw"
    folder.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        labels = rng.permutation(np.repeat(np.arange(10), n)).astype(np.uint8)
        images = _class_images(rng, labels, (28, 28), 10)
        for kind, array in (("images-idx3", images), ("labels-idx1", labels)):
            data = _idx(array)
            path = folder / f"{prefix}-{kind}-ubyte"
            if gz:
                path.with_name(path.name + ".gz").write_bytes(gzip.compress(data))
            else:
                path.write_bytes(data)
    return Path(root)


def make_svhn(root: str | Path, n_train: int = 6, n_test: int = 3, seed: int = 0) -> Path:
    """``root/train_32x32.mat`` and ``root/test_32x32.mat`` as SVHN ships them (MATLAB 5 files)."""
    from scipy.io import savemat

    rng = np.random.default_rng(seed)
    Path(root).mkdir(parents=True, exist_ok=True)
    for name, n in (("train", n_train), ("test", n_test)):
        digits = rng.permutation(np.repeat(np.arange(10), n))
        images = _class_images(rng, digits, (32, 32, 3), 10)  # N×32×32×3
        labels = np.where(digits == 0, 10, digits).astype(np.uint8).reshape(-1, 1)
        savemat(Path(root) / f"{name}_32x32.mat", {"X": images.transpose(1, 2, 3, 0), "y": labels})
    return Path(root)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("kind", choices=[*LAYOUTS, "cifar10", "cifar100", "mnist", "fashion-mnist", "svhn"])
    parser.add_argument("out")
    parser.add_argument("--categories", default="bottle", help="comma-separated (industrial layouts)")
    parser.add_argument("--size", type=int, default=40, help="image side in pixels (industrial layouts)")
    parser.add_argument("--n-train", type=int, default=12)
    parser.add_argument("--n-good", type=int, default=4, help="normal test images (industrial layouts)")
    parser.add_argument("--n-defect", type=int, default=3, help="images per defect type (industrial layouts)")
    parser.add_argument("--n-test", type=int, default=4, help="test images per class (one-class sets)")
    args = parser.parse_args()
    if args.kind in LAYOUTS:
        make_industrial(args.out, args.kind, tuple(args.categories.split(",")), args.size, args.n_train, args.n_good,
                        args.n_defect, DEFECTS)
    elif args.kind in ("mnist", "fashion-mnist"):
        make_mnist(args.out, "MNIST" if args.kind == "mnist" else "FashionMNIST", args.n_train, args.n_test)
    else:
        {"cifar10": make_cifar10, "cifar100": make_cifar100, "svhn": make_svhn}[args.kind](
            args.out, args.n_train, args.n_test)
    print(f"wrote a miniature {args.kind} under {args.out}")


if __name__ == "__main__":
    main()
