"""Our readers of torchvision's on-disk formats give torchvision's own arrays, on miniature files in the real
formats. The readers are kept (CONTRIBUTING.md: hand-written pieces) because torchvision's CIFAR reader
unpickles with ``pickle.load`` (a file can run code), insists on the official files' MD5 sums, reads no
gzipped idx files and gives no CIFAR-100 superclass labels; this test pins ours to it where both read."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType
from unittest import mock

import numpy as np
import pytest
import torchvision.datasets as tvd

import miniature_data as mini
from robust_ad_bench.core.registry import DATASETS


def torchvision_arrays(datasets: ModuleType, name: str, root: Path) -> dict[str, np.ndarray]:
    """``train``, ``train_labels``, ``test``, ``test_labels`` as torchvision's dataset classes read them
    (N×C×H×W uint8; CIFAR-100: fine labels, torchvision has no others). MD5 checks are switched off: the
    miniature files are not the official ones."""
    from torchvision.datasets import cifar, svhn

    with mock.patch.object(cifar, "check_integrity", lambda *a, **k: True), \
            mock.patch.object(svhn, "check_integrity", lambda *a, **k: True):
        if name in ("cifar10", "cifar100"):
            cls = datasets.CIFAR10 if name == "cifar10" else datasets.CIFAR100
            parts = [cls(str(root), train=train, download=False) for train in (True, False)]
            arrays = [(p.data.transpose(0, 3, 1, 2), np.asarray(p.targets, dtype=np.int64)) for p in parts]
        elif name in ("mnist", "fashion-mnist"):
            cls = datasets.MNIST if name == "mnist" else datasets.FashionMNIST
            parts = [cls(str(root), train=train, download=False) for train in (True, False)]
            arrays = [(p.data.numpy()[:, None], p.targets.numpy().astype(np.int64)) for p in parts]
        else:
            parts = [datasets.SVHN(str(root), split=split, download=False) for split in ("train", "test")]
            arrays = [(p.data, p.labels.astype(np.int64)) for p in parts]
    (train, train_labels), (test, test_labels) = arrays
    return {"train": train, "train_labels": train_labels, "test": test, "test_labels": test_labels}


MAKERS = {
    "cifar10": lambda root: mini.make_cifar10(root, n_train=3, n_test=2),
    "cifar100": lambda root: mini.make_cifar100(root, n_train=2, n_test=1),
    "mnist": lambda root: mini.make_mnist(root, n_train=3, n_test=2),
    "fashion-mnist": lambda root: mini.make_mnist(root, "FashionMNIST", n_train=3, n_test=2),
    "svhn": lambda root: mini.make_svhn(root, n_train=3, n_test=2),
}


@pytest.mark.parametrize("name", list(MAKERS))
def test_our_readers_give_torchvisions_arrays(tmp_path, name):
    root = MAKERS[name](tmp_path / name)
    ours = DATASETS.get(name).create({"root": str(root)}, None).read(root)
    theirs = torchvision_arrays(tvd, name, root)
    for key in ("train", "test"):
        assert ours[key].dtype == theirs[key].dtype == np.uint8
        np.testing.assert_array_equal(ours[key], theirs[key])
        # a reader that mixed up the channel order or the rows would be caught
        assert not np.array_equal(ours[key], theirs[key][:, ::-1]) or ours[key].shape[1] == 1
        assert not np.array_equal(ours[key], theirs[key][..., ::-1, :])
    for key in ("train_labels", "test_labels"):
        if name == "cifar100":  # ours: the 20 superclasses; torchvision: the 100 fine classes (coarse * 5 + r here)
            np.testing.assert_array_equal(ours[key], theirs[key] // 5)
        else:
            np.testing.assert_array_equal(ours[key], theirs[key])


def test_gzipped_mnist_reads_as_the_plain_files(tmp_path):
    """torchvision needs the idx files unpacked; ours reads the ``.gz`` files as they are downloaded."""
    plain = mini.make_mnist(tmp_path / "plain")
    packed = mini.make_mnist(tmp_path / "packed", gz=True)
    a = DATASETS.get("mnist").create({"root": str(plain)}, None).read(plain)
    b = DATASETS.get("mnist").create({"root": str(packed)}, None).read(packed)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    np.testing.assert_array_equal(a["train"], torchvision_arrays(tvd, "mnist", plain)["train"])
