"""Datasets read from files, on miniature data generated in each real on-disk format (``miniature_data``):
the MVTec AD tree and its BTAD / VisA / MPDD variants, CIFAR-10/100 pickles, MNIST / Fashion-MNIST idx
files (plain and .gz), SVHN .mat files, and the ``folder`` layouts."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import miniature_data as mini
from robust_ad_bench.core.errors import BenchError
from robust_ad_bench.core.registry import DATASETS
from robust_ad_bench.datasets import cache, files
from robust_ad_bench.datasets.readers import load_cifar_pickle
from robust_ad_bench.datasets.transforms import to_gray

pytestmark = pytest.mark.usefixtures("fresh_data")


def make(name, data_dir, **params):
    return DATASETS.get(name).create(params or None, str(data_dir))


def check_split(split, n_train, n_normal, n_anomalous, shape):
    assert tuple(split.train.shape) == (n_train, *shape) and split.train.dtype == torch.float32
    assert tuple(split.test.shape) == (n_normal + n_anomalous, *shape)
    assert split.train.min() >= 0 and split.train.max() <= 1
    assert split.test_labels.tolist() == [0.0] * n_normal + [1.0] * n_anomalous
    assert [d == "" for d in split.test_defects] == [True] * n_normal + [False] * n_anomalous


@pytest.mark.parametrize("layout,name,category,folder,kinds", [
    ("mvtec", "mvtec", "bottle", "mvtec", {"crack", "scratch"}),
    ("mpdd", "mpdd", "tubes", "mpdd", {"crack", "scratch"}),
    ("btad", "btad", "01", "btad", {"ko"}),
    ("visa", "visa", "candle", "VisA_pytorch/1cls", {"bad"}),
])
def test_industrial_layouts(tmp_path, layout, name, category, folder, kinds):
    mini.make_industrial(tmp_path / folder, layout, (category,), size=(36, 44), n_train=5, n_good=3, n_defect=2)
    split = make(name, tmp_path, resize=32).split(category, seed=0)
    n_anomalous = 2 * len(kinds)
    check_split(split, 5, 3, n_anomalous, (3, 32, 32))
    assert set(split.test_defects) - {""} == kinds  # defect folder names are the defect types
    masks = split.test_masks
    assert masks is not None and masks.dtype == torch.bool and tuple(masks.shape) == (3 + n_anomalous, 32, 32)
    assert not masks[:3].any() and masks[3:].flatten(1).any(1).all()  # normals empty, every anomaly marked
    again = make(name, tmp_path, resize=32).split(category, seed=5)  # the dataset's own split: same for all seeds
    assert torch.equal(again.test, split.test) and torch.equal(again.train, split.train)


def test_mvtec_pixels_masks_and_transforms(tmp_path):
    mini.make_industrial(tmp_path / "mvtec", "mvtec", ("grid",), size=40, n_train=3, n_good=2, n_defect=1,
                         defects=("bent",), gray=True)
    native = make("mvtec", tmp_path, resize=0, color="").split("grid", 0)
    assert tuple(native.train.shape[1:]) == (1, 40, 40)  # a gray category stays one channel when asked
    first = np.array(Image.open(tmp_path / "mvtec/grid/train/good/000.png"))
    assert torch.equal(native.train[0, 0], torch.from_numpy(first).float() / 255)  # exact pixels
    mask = np.asarray(Image.open(tmp_path / "mvtec/grid/ground_truth/bent/000_mask.png")) > 0
    assert torch.equal(native.test_masks[-1], torch.from_numpy(mask))
    rgb = make("mvtec", tmp_path).split("grid", 0)  # default: 256×256 RGB (gray repeated)
    assert tuple(rgb.train.shape[1:]) == (3, 256, 256)
    assert torch.equal(rgb.train[:, 0], rgb.train[:, 1])
    cropped = make("mvtec", tmp_path, resize=40, crop=24, color="gray").split("grid", 0)
    assert tuple(cropped.test.shape[1:]) == (1, 24, 24) and tuple(cropped.test_masks.shape[1:]) == (24, 24)
    assert torch.equal(cropped.train, native.train[:, :, 8:32, 8:32])  # resize to its own size, then center crop
    expected = Image.open(tmp_path / "mvtec/grid/train/good/000.png").resize((32, 32), Image.Resampling.BILINEAR)
    resized = make("mvtec", tmp_path, resize=32, color="gray").split("grid", 0)
    assert torch.equal(resized.train[0, 0], torch.from_numpy(np.array(expected)).float() / 255)


def test_options_key_and_root(tmp_path, monkeypatch):
    mini.make_industrial(tmp_path / "data" / "mvtec_anomaly_detection", "mvtec", ("bottle",), n_defect=1)
    assert make("mvtec", tmp_path / "data").key_params() == {}  # defaults: nothing in the key
    assert make("mvtec", tmp_path / "data", resize=256, root=str(tmp_path)).key_params() == {}  # root never
    assert make("mvtec", tmp_path / "data", resize=64, crop=56).key_params() == {"resize": 64, "crop": 56}
    assert make("mvtec", tmp_path / "data", resize=32).split("bottle", 0).train.shape[-1] == 32
    direct = DATASETS.get("mvtec").create({"root": str(tmp_path / "data" / "mvtec_anomaly_detection"),
                                           "resize": 32})
    assert direct.split("bottle", 0).train.shape[0] == 12  # the root option is the dataset's own folder
    monkeypatch.setenv(files.DATA_ENV, str(tmp_path / "data"))
    assert DATASETS.get("mvtec").create({"resize": 32}).split("bottle", 0).train.shape[0] == 12
    for bad, text in (({"resize": -1}, "resize"), ({"color": "cmyk"}, "cmyk"), ({"size": 3}, "size")):
        with pytest.raises(BenchError, match=text):
            DATASETS.get("mvtec").create(bad)
    with pytest.raises(BenchError, match="takes no options"):
        DATASETS.get("breast-cancer").create({"resize": 32})


def test_visa_raw_download_is_explained(tmp_path):
    (tmp_path / "visa" / "candle" / "Data" / "Images" / "Normal").mkdir(parents=True)
    with pytest.raises(BenchError, match="raw VisA download.*prepare_data.py"):
        make("visa", tmp_path).check_data("candle")


def _cifar_reference(path: Path) -> dict:
    with open(path, "rb") as f:  # our own generated file: safe to load with pickle here
        return pickle.load(f, encoding="bytes")


def test_cifar10_one_class(tmp_path):
    mini.make_cifar10(tmp_path, n_train=6, n_test=3)
    split = make("cifar10", tmp_path).split("3", seed=0)
    check_split(split, 6, 3, 27, (3, 32, 32))
    assert set(split.test_defects) - {""} == {"airplane", "automobile", "bird", "deer", "dog", "frog", "horse",
                                              "ship", "truck"}
    test = _cifar_reference(tmp_path / "cifar-10-batches-py" / "test_batch")
    first_normal = test[b"labels"].index(3)  # channel-major rows: R plane, G plane, B plane
    assert torch.equal(split.test[0], torch.from_numpy(test[b"data"][first_normal].reshape(3, 32, 32)).float() / 255)
    assert make("cifar10", tmp_path).classes() == [str(i) for i in range(10)]


def test_cifar100_superclasses(tmp_path):
    mini.make_cifar100(tmp_path, n_train=3, n_test=2)
    dataset = make("cifar100", tmp_path, color="gray", resize=16)
    assert len(dataset.classes()) == 20
    split = dataset.split("7", seed=0)
    check_split(split, 3, 2, 38, (1, 16, 16))
    assert "insects" not in split.test_defects and "trees" in split.test_defects


def test_cifar_unpickler_runs_nothing(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    folder = tmp_path / "cifar-10-batches-py"
    mini.make_cifar10(tmp_path)
    (folder / "data_batch_2").write_bytes(pickle.dumps({b"data": Evil(), b"labels": []}, protocol=2))
    with pytest.raises(BenchError, match=r"data_batch_2.*refusing to load global (posix|nt)\.system"):
        make("cifar10", tmp_path).split("0", 0)
    assert not marker.exists()
    (folder / "data_batch_2").write_bytes(pickle.dumps({b"data": np.zeros((2, 3072), object)}, protocol=2))
    with pytest.raises(BenchError, match="data_batch_2"):
        load_cifar_pickle(folder / "data_batch_2")


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("name,folder", [("mnist", "MNIST"), ("fashion-mnist", "FashionMNIST")])
def test_idx_sets(tmp_path, name, folder, gz):
    mini.make_mnist(tmp_path, folder, n_train=5, n_test=2, gz=gz)
    split = make(name, tmp_path).split("0", seed=0)
    check_split(split, 5, 2, 18, (1, 28, 28))
    assert make(name, tmp_path, color="rgb", resize=32).split("9", 0).train.shape[1:] == (3, 32, 32)


def test_idx_truncated_file_is_named(tmp_path):
    mini.make_mnist(tmp_path, n_train=2, n_test=1)
    path = tmp_path / "MNIST" / "raw" / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(BenchError, match="train-images-idx3-ubyte.*truncated"):
        make("mnist", tmp_path).split("0", 0)


def test_svhn(tmp_path):
    mini.make_svhn(tmp_path / "svhn", n_train=4, n_test=2)
    split = make("svhn", tmp_path).split("0", seed=0)  # digit 0 is stored as label 10
    check_split(split, 4, 2, 18, (3, 32, 32))
    assert "digit-0" not in split.test_defects and "digit-9" in split.test_defects


def test_gray_matches_pillow():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (4, 3, 8, 8), dtype=np.uint8)
    ours = to_gray(images)[:, 0]
    pillow = np.stack([np.asarray(Image.fromarray(im.transpose(1, 2, 0)).convert("L")) for im in images])
    assert np.array_equal(ours, pillow)


def test_folder_two_folders_layout(tmp_path):
    rng = np.random.default_rng(0)
    for i in range(10):
        mini._save(rng.integers(0, 255, (20, 20), dtype=np.uint8), tmp_path / "parts" / "normal" / f"n{i}.png")
    for kind in ("dent", "rust"):
        for i in range(2):
            image, mask = mini._defect(rng, rng.integers(0, 255, (20, 20, 1), dtype=np.uint8))
            mini._save(image, tmp_path / "parts" / "anomalous" / kind / f"{kind}{i}.png")
            mini._save(mask, tmp_path / "parts" / "masks" / kind / f"{kind}{i}_mask.png")
    dataset = make("folder", tmp_path / "parts")
    assert dataset.classes() == ["default"]
    split = dataset.split("default", seed=0)
    check_split(split, 8, 2, 4, (1, 20, 20))
    assert set(split.test_defects) == {"", "dent", "rust"} and split.test_masks[2:].flatten(1).any(1).all()
    other = dataset.split("default", seed=1)
    assert not torch.equal(other.train, split.train)  # the normal images are split per seed
    key = dataset.key_params()
    assert key["name"] == "parts" and len(key["files"]) == 16
    (tmp_path / "parts" / "normal" / "n0.png").unlink()
    assert make("folder", tmp_path / "parts").key_params()["files"] != key["files"]  # changed data, new key


def test_folder_subfolders_as_classes_and_train_test_layout(tmp_path):
    mini.make_industrial(tmp_path / "mine", "mvtec", ("left", "right"), size=24, n_train=4, n_good=2, n_defect=1)
    dataset = make("folder", tmp_path / "mine")
    assert dataset.classes() == ["left", "right"]
    check_split(dataset.split("right", 0), 4, 2, 2, (3, 24, 24))
    with pytest.raises(BenchError, match="neither layout"):
        make("folder", tmp_path / "mine" / "left" / "train").classes()


def test_decoded_images_are_cached(tmp_path, monkeypatch):
    mini.make_industrial(tmp_path / "mvtec", "mvtec", ("bottle",), n_train=3, n_good=1, n_defect=1)
    calls = []
    real = files.read_image
    monkeypatch.setattr(files, "read_image", lambda *a: calls.append(a[0]) or real(*a))
    first = make("mvtec", tmp_path, resize=16).split("bottle", 0)
    decoded = len(calls)
    assert decoded == 3 + 1 + 2
    make("mvtec", tmp_path, resize=16).split("bottle", 1)
    assert len(calls) == decoded  # in memory: no decoding for the next job
    monkeypatch.setenv(cache.CACHE_ENV, str(tmp_path / "cache"))
    cache.clear()  # another process: decodes and fills the disk cache
    make("mvtec", tmp_path, resize=16).split("bottle", 0)
    assert len(calls) == 2 * decoded
    cache.clear()  # and another: reads it
    calls.clear()
    again = make("mvtec", tmp_path, resize=16).split("bottle", 0)
    assert calls == [] and list((tmp_path / "cache").glob("*.npz"))  # read back from disk, nothing decoded
    assert torch.equal(again.test, first.test) and torch.equal(again.test_masks, first.test_masks)
    make("mvtec", tmp_path, resize=8).split("bottle", 0)
    assert len(calls) == decoded  # other transforms: decoded again


def test_download_is_off_by_default_and_asks_torchvision_when_on(tmp_path, monkeypatch):
    import torchvision

    calls = []

    def fake_cifar10(root, download=False, train=True):  # stands in for torchvision's downloader (offline here)
        calls.append((root, download, train))
        mini.make_cifar10(root, n_train=2, n_test=1)

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", fake_cifar10)
    with pytest.raises(BenchError, match="data not found"):
        make("cifar10", tmp_path).split("0", 0)
    assert calls == []
    split = make("cifar10", tmp_path, download=True).split("0", 0)
    assert calls == [(str(tmp_path), True, True), (str(tmp_path), True, False)] and len(split.train) == 2
    assert make("cifar10", tmp_path, download=True).key_params() == {}  # not part of the key
