"""One-class versions of torchvision's classification sets: ``cifar10``, ``cifar100`` (its 20 superclasses),
``mnist``, ``fashion-mnist``, ``svhn``.

The standard one-class protocol of the robust-AD papers: one class is normal; training uses the normal
images of the official training set only; the test set is the whole official test set, the normal class
labelled 0 and every other class 1 (its name in ``Split.test_defects``). Classes are named by their index
("0".."9", "0".."19" for the superclasses). The split is the official one, the same for every seed.

Files are read where torchvision puts them under the data root (``--data-root``, or the ``root`` option):
``cifar-10-batches-py/``, ``cifar-100-python/``, ``MNIST/raw/``, ``FashionMNIST/raw/`` and
``train_32x32.mat`` / ``test_32x32.mat``. ``download: true`` lets torchvision fetch them first (off by
default: nothing is downloaded unless asked). Options ``resize``, ``crop`` and ``color`` transform the
images at load time (eps stays in pixel units of the transformed images).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch

from robust_ad_bench.core.dataset import Dataset, Split
from robust_ad_bench.core.errors import BenchError
from robust_ad_bench.core.registry import register_dataset
from robust_ad_bench.datasets import cache
from robust_ad_bench.datasets.files import ImageOptions, as_float, data_root, find_root
from robust_ad_bench.datasets.readers import cifar_images, load_cifar_pickle, read_idx, read_svhn_mat
from robust_ad_bench.datasets.transforms import transform_arrays


@dataclass
class ClassificationOptions(ImageOptions):
    download: bool = field(default=False, metadata={"key": False})  # let torchvision fetch the files first


class OneClassDataset(Dataset):
    """Base of the one-vs-rest sets: subclasses name their files and read them into uint8 arrays."""

    Options = ClassificationOptions
    hidden = True  # reads files: named explicitly, not part of "--datasets all"
    default_eps = {"linf": (2 / 255, 8 / 255), "l2": (0.25, 0.5)}
    label_names: ClassVar[tuple[str, ...]] = ()
    files: ClassVar[tuple[str, ...]] = ()  # relative to the root, all needed
    subfolders: ClassVar[tuple[str, ...]] = ("",)  # where under the data root the files may be
    torchvision_name: ClassVar[str] = ""

    def __init__(self, options: ClassificationOptions | None = None) -> None:
        self.options = options or ClassificationOptions()

    def classes(self) -> list[str]:
        return [str(i) for i in range(len(self.label_names))]

    def layout(self) -> str:
        return ", ".join(f"<root>/{f}" for f in self.files)

    def root(self) -> Path:
        if self.options.download:
            self._download()
        return find_root(self.name, self.options.root, self.data_root, self.subfolders,
                         lambda root: all(self._exists(root / f) for f in self.files), self.layout())

    @staticmethod
    def _exists(path: Path) -> bool:
        return path.is_file() or path.with_name(path.name + ".gz").is_file()

    def _download(self) -> None:
        import torchvision

        folder = self.options.root or data_root(self.data_root)
        if not folder:
            raise BenchError(f"dataset '{self.name}': download needs a folder: pass --data-root DIR or 'root'")
        cls = getattr(torchvision.datasets, self.torchvision_name)
        for split in (True, False):
            kwargs = {"split": "train" if split else "test"} if self.name == "svhn" else {"train": split}
            try:
                cls(folder, download=True, **kwargs)
            except Exception as exc:  # offline, or a server error: say so in one line
                raise BenchError(f"dataset '{self.name}': download into {folder} failed: {exc}") from exc

    def check_data(self, normal_class: str) -> None:
        self.check_class(normal_class)
        self.root()

    def read(self, root: Path) -> cache.Arrays:
        """``train``, ``train_labels``, ``test``, ``test_labels`` (images N×C×H×W uint8)."""
        raise NotImplementedError

    def split(self, normal_class: str, seed: int) -> Split:
        label = int(self.check_class(normal_class))
        root = self.root()
        files = [root / f if (root / f).is_file() else root / (f + ".gz") for f in self.files]
        description = {"dataset": self.name, "version": self.version, "files": cache.fingerprint(files, root)}
        arrays = cache.cached(description, lambda: self.read(root), cache.cache_folder(self.options.cache_dir))
        normal_test = arrays["test_labels"] == label
        order = np.concatenate([np.nonzero(normal_test)[0], np.nonzero(~normal_test)[0]])
        train = transform_arrays(arrays["train"][arrays["train_labels"] == label], self.options)
        test = transform_arrays(arrays["test"][order], self.options)
        labels = (~normal_test[order]).astype(np.float32)
        names = [self.label_names[i] for i in arrays["test_labels"][order]]
        return Split(train=as_float(train), test=as_float(test), test_labels=torch.from_numpy(labels),
                     test_defects=["" if y == 0 else n for y, n in zip(labels, names)])


@register_dataset("cifar10")
class CIFAR10(OneClassDataset):
    """CIFAR-10, one class normal and the other nine anomalous (torchvision's cifar-10-batches-py)."""

    image_shape = (3, 32, 32)
    label_names = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
    files = tuple(f"cifar-10-batches-py/data_batch_{i}" for i in range(1, 6)) + ("cifar-10-batches-py/test_batch",)
    torchvision_name = "CIFAR10"

    def read(self, root: Path) -> cache.Arrays:
        parts = [cifar_images(load_cifar_pickle(root / f), root / f, "labels") for f in self.files]
        return {"train": np.concatenate([x for x, _ in parts[:5]]),
                "train_labels": np.concatenate([y for _, y in parts[:5]]),
                "test": parts[5][0], "test_labels": parts[5][1]}


@register_dataset("cifar100")
class CIFAR100(OneClassDataset):
    """CIFAR-100 by its 20 superclasses (coarse labels), one superclass normal, as robust-AD papers use it."""

    image_shape = (3, 32, 32)
    label_names = ("aquatic_mammals", "fish", "flowers", "food_containers", "fruit_and_vegetables",
                   "household_electrical_devices", "household_furniture", "insects", "large_carnivores",
                   "large_man-made_outdoor_things", "large_natural_outdoor_scenes", "large_omnivores_and_herbivores",
                   "medium_mammals", "non-insect_invertebrates", "people", "reptiles", "small_mammals", "trees",
                   "vehicles_1", "vehicles_2")
    files = ("cifar-100-python/train", "cifar-100-python/test")
    torchvision_name = "CIFAR100"

    def read(self, root: Path) -> cache.Arrays:
        (train, train_y), (test, test_y) = (cifar_images(load_cifar_pickle(root / f), root / f, "coarse_labels")
                                            for f in self.files)
        return {"train": train, "train_labels": train_y, "test": test, "test_labels": test_y}


class _IdxDataset(OneClassDataset):
    image_shape = (1, 28, 28)
    folder: ClassVar[str] = ""

    def read(self, root: Path) -> cache.Arrays:
        arrays = {}
        for prefix, key in (("train", "train"), ("t10k", "test")):
            images = read_idx(self._file(root, f"{prefix}-images-idx3-ubyte"))
            labels = read_idx(self._file(root, f"{prefix}-labels-idx1-ubyte"))
            if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
                raise BenchError(f"dataset '{self.name}': {prefix} images {images.shape} do not match labels "
                                 f"{labels.shape} under {root / self.folder}")
            arrays[key], arrays[f"{key}_labels"] = images[:, None], labels.astype(np.int64)
        return arrays

    def _file(self, root: Path, name: str) -> Path:
        path = root / self.folder / "raw" / name
        return path if path.is_file() else path.with_name(name + ".gz")


def _idx_files(folder: str) -> tuple[str, ...]:
    return tuple(f"{folder}/raw/{p}-{k}-ubyte" for p in ("train", "t10k") for k in ("images-idx3", "labels-idx1"))


@register_dataset("mnist")
class MNIST(_IdxDataset):
    """MNIST digits, one digit normal and the other nine anomalous (torchvision's MNIST/raw idx files)."""

    default_eps = {"linf": (8 / 255, 32 / 255), "l2": (0.5, 1.0)}
    label_names = tuple(f"digit-{d}" for d in range(10))
    folder = "MNIST"
    files = _idx_files("MNIST")
    torchvision_name = "MNIST"


@register_dataset("fashion-mnist")
class FashionMNIST(_IdxDataset):
    """Fashion-MNIST, one article normal and the other nine anomalous (torchvision's FashionMNIST/raw)."""

    default_eps = {"linf": (8 / 255, 32 / 255), "l2": (0.5, 1.0)}
    label_names = ("t-shirt-top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag",
                   "ankle-boot")
    folder = "FashionMNIST"
    files = _idx_files("FashionMNIST")
    torchvision_name = "FashionMNIST"


@register_dataset("svhn")
class SVHN(OneClassDataset):
    """SVHN house numbers, one digit normal and the other nine anomalous (train_32x32.mat, test_32x32.mat)."""

    image_shape = (3, 32, 32)
    label_names = tuple(f"digit-{d}" for d in range(10))
    files = ("train_32x32.mat", "test_32x32.mat")
    subfolders = ("", "svhn", "SVHN")
    torchvision_name = "SVHN"

    def read(self, root: Path) -> cache.Arrays:
        (train, train_y), (test, test_y) = (read_svhn_mat(root / f) for f in self.files)
        return {"train": train, "train_labels": train_y, "test": test, "test_labels": test_y}
