"""Industrial inspection sets in the MVTec AD layout: ``mvtec``, ``mpdd``, ``btad``, ``visa``.

One category per normal class. Train: the normal images of ``train/<good>``; test: ``test/<good>``
(normal) and every other folder of ``test/`` (anomalies, the folder name is the defect type in
``Split.test_defects``, so ``--known-defects crack`` works), with pixel masks from
``ground_truth/<defect>/``. The split is the dataset's own and the same for every seed. Images are
resized to 256×256 RGB by default (options ``resize``, ``crop``, ``color``); eps is in pixel units of the
transformed images.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch

from robust_ad_bench.core.dataset import Dataset, Split
from robust_ad_bench.core.errors import BenchError
from robust_ad_bench.core.registry import register_dataset
from robust_ad_bench.datasets import cache
from robust_ad_bench.datasets.decode import image_size
from robust_ad_bench.datasets.files import (
    ImageOptions,
    as_float,
    find_root,
    list_images,
    read_images,
    read_masks,
)


@dataclass
class IndustrialOptions(ImageOptions):
    resize: int = 256
    color: str = "rgb"


@dataclass(frozen=True)
class Layout:
    """How one category folder is organised."""

    good: tuple[str, ...] = ("good",)  # the normal folders under train/ and test/
    masks: tuple[str, ...] = ("{stem}_mask.png",)  # mask names under ground_truth/<defect>/
    masks_required: bool = True  # an anomaly without a mask is an error (else: no masks at all)
    flat_train: bool = False  # images directly in train/ are normal too

    def describe(self) -> str:
        good, mask = self.good[0], self.masks[0].format(stem="<name>")
        return (f"<root>/<category>/train/{good}/*.png, <root>/<category>/test/{good}/*.png, "
                f"<root>/<category>/test/<defect>/*.png, <root>/<category>/ground_truth/<defect>/{mask}")


def _train_images(folder: Path, layout: Layout) -> list[Path]:
    for good in layout.good:
        files = list_images(folder / "train" / good)
        if files:
            return files
    return list_images(folder / "train") if layout.flat_train else []


def _test_folders(folder: Path, layout: Layout) -> tuple[list[Path], dict[str, list[Path]]]:
    """Normal test images and the anomalous ones per defect type."""
    test = folder / "test"
    normals: list[Path] = []
    defects: dict[str, list[Path]] = {}
    for sub in sorted(p for p in test.iterdir() if p.is_dir() and not p.name.startswith(".")):
        files = list_images(sub)
        if sub.name in layout.good:
            normals += files
        elif files:
            defects[sub.name] = files
    return normals, defects


def _mask_path(folder: Path, defect: str, image: Path, layout: Layout) -> Path | None:
    for pattern in layout.masks:
        path = folder / "ground_truth" / defect / pattern.format(stem=image.stem)
        if path.is_file():
            return path
    return None


def check_category(folder: Path, layout: Layout, dataset: str) -> None:
    """Cheap checks of a category folder (no decoding): it exists and has train and test images."""
    expected = f"expected layout: {layout.describe()}"
    if not folder.is_dir():
        raise BenchError(f"dataset '{dataset}': category folder {folder} not found; {expected}")
    if not (folder / "train").is_dir() or not (folder / "test").is_dir():
        raise BenchError(f"dataset '{dataset}': {folder} has no train/ and test/ folders; {expected}")
    if not _train_images(folder, layout):
        looked = ", ".join(str(folder / "train" / g) for g in layout.good)
        raise BenchError(f"dataset '{dataset}': no training images in {looked} (empty category); {expected}")


def find_masks(folder: Path, layout: Layout, anomalies: list[tuple[str, Path]]) -> tuple[list[Path | None], bool]:
    """The mask of each anomaly (None: it has none) and whether the category has masks at all; an anomaly
    without its mask, where masks are expected, is an error naming both."""
    masks = [_mask_path(folder, kind, path, layout) for kind, path in anomalies]
    has_masks = layout.masks_required or (folder / "ground_truth").is_dir()
    if has_masks:
        for (kind, path), mask in zip(anomalies, masks):
            if mask is None:
                looked = " or ".join(str(folder / "ground_truth" / kind / p.format(stem=path.stem))
                                     for p in layout.masks)
                raise BenchError(f"anomaly image {path} has no mask: {looked} not found")
    return masks, has_masks


def anomaly_counts(folder: Path, layout: Layout) -> dict[str, int]:
    """Test anomalies per defect type of a category folder (a listing, nothing decoded)."""
    return {kind: len(files) for kind, files in _test_folders(folder, layout)[1].items()}


def check_files(folder: Path, layout: Layout, options: ImageOptions, dataset: str) -> None:
    """Before a run: the category's layout, every anomaly's mask and its size, and a crop that fits the
    images when they keep their size (sizes read from file headers)."""
    check_category(folder, layout, dataset)
    if (folder / "test").is_dir():
        _, defects = _test_folders(folder, layout)
        anomalies = [(kind, path) for kind, files in defects.items() for path in files]
        masks, _ = find_masks(folder, layout, anomalies)
        for (_, path), mask in zip(anomalies, masks):  # sizes from the headers: nothing decoded
            if mask is not None and image_size(mask) != image_size(path):
                (mw, mh), (iw, ih) = image_size(mask), image_size(path)
                raise BenchError(f"mask {mask} is {mw}x{mh} but its image {path} is {iw}x{ih}")
    if options.crop and not options.resize:
        first = _train_images(folder, layout)[0]
        width, height = image_size(first)
        if options.crop > min(width, height):
            raise BenchError(f"crop {options.crop} is larger than image {first} ({width}x{height}); set 'resize' "
                             f"or a smaller 'crop'")


def read_category(folder: Path, layout: Layout, options: ImageOptions, dataset: str, version: str) -> cache.Arrays:
    """Every image of one category as uint8 arrays (cached: see ``datasets.cache``)."""
    check_category(folder, layout, dataset)
    train = _train_images(folder, layout)
    normals, defects = _test_folders(folder, layout)
    if not normals or not defects:
        which = "normal" if not normals else "anomalous"
        raise BenchError(f"dataset '{dataset}': no {which} test images under {folder / 'test'}; expected layout: "
                         f"{layout.describe()}")
    anomalies = [(kind, path) for kind, files in defects.items() for path in files]
    masks, has_masks = find_masks(folder, layout, anomalies)
    files = train + normals + [p for _, p in anomalies] + ([m for m in masks if m] if has_masks else [])
    description = {"dataset": dataset, "version": version, "folder": folder.name, "layout": repr(layout),
                   "resize": options.resize, "crop": options.crop, "color": options.color,
                   "files": cache.fingerprint(files, folder)}

    def decode() -> cache.Arrays:
        size, crop = options.resize, options.crop
        test_images = read_images(normals + [p for _, p in anomalies], options.color, size, crop)
        arrays = {"train": read_images(train, options.color, size, crop), "test": test_images,
                  "labels": np.array([0] * len(normals) + [1] * len(anomalies), dtype=np.uint8),
                  "defects": np.array([""] * len(normals) + [k for k, _ in anomalies], dtype=str)}
        if arrays["train"].shape[1:] != test_images.shape[1:]:
            raise BenchError(f"dataset '{dataset}': train images of {folder} are {arrays['train'].shape[1:]} but "
                             f"test images {test_images.shape[1:]}; set 'resize' (and 'color') so they match")
        if has_masks:
            found = read_masks([m for m in masks if m is not None], size, crop,
                               [path for (_, path), m in zip(anomalies, masks) if m is not None])
            if found.shape[1:] != test_images.shape[2:]:
                raise BenchError(f"dataset '{dataset}': masks of {folder} are {found.shape[1:]} but images "
                                 f"{test_images.shape[2:]}")
            arrays["masks"] = np.concatenate([np.zeros((len(normals), *found.shape[1:]), bool), found])
        return arrays

    return cache.cached(description, decode, cache.cache_folder(options.cache_dir))


def arrays_to_split(arrays: cache.Arrays) -> Split:
    masks = arrays.get("masks")
    return Split(train=as_float(arrays["train"]), test=as_float(arrays["test"]),
                 test_labels=torch.from_numpy(arrays["labels"].astype(np.float32)),
                 test_masks=None if masks is None else torch.from_numpy(masks.copy()),
                 test_defects=[str(d) for d in arrays["defects"]])


class IndustrialDataset(Dataset):
    """Base of the datasets in the MVTec AD layout (subclasses set the categories and the layout)."""

    Options = IndustrialOptions
    # 2: library decoders (16-bit files no longer clipped to white; masks checked for size and binary values)
    version = "2"
    hidden = True  # reads files: named explicitly, not part of "--datasets all"
    image_shape = (3, 256, 256)
    default_eps = {"linf": (2 / 255, 4 / 255), "l2": (0.25, 0.5)}
    categories: ClassVar[tuple[str, ...]] = ()
    subfolders: ClassVar[tuple[str, ...]] = ()  # where under the data root the dataset may be
    layout: ClassVar[Layout] = Layout()

    def __init__(self, options: IndustrialOptions | None = None) -> None:
        self.options = options or IndustrialOptions()

    def classes(self) -> list[str]:
        return list(self.categories)

    def expected_layout(self) -> str:
        return self.layout.describe()

    def root(self) -> Path:
        return find_root(self.name, self.options.root, self.data_root, self.subfolders,
                         lambda root: any((root / c).is_dir() for c in self.categories), self.expected_layout())

    def category(self, normal_class: str) -> Path:
        return self.root() / self.check_class(normal_class)

    def check_data(self, normal_class: str) -> None:
        check_files(self.category(normal_class), self.layout, self.options, self.name)

    def anomaly_counts(self, normal_class: str) -> dict[str, int] | None:
        return anomaly_counts(self.category(normal_class), self.layout)

    def split(self, normal_class: str, seed: int) -> Split:
        folder = self.category(normal_class)
        return arrays_to_split(read_category(folder, self.layout, self.options, self.name, self.version))


@register_dataset("mvtec")
class MVTecAD(IndustrialDataset):
    """MVTec AD (Bergmann et al., CVPR 2019): 15 categories, <root>/<category>/{train,test,ground_truth}."""

    categories = ("bottle", "cable", "capsule", "carpet", "grid", "hazelnut", "leather", "metal_nut", "pill",
                  "screw", "tile", "toothbrush", "transistor", "wood", "zipper")
    subfolders = ("mvtec", "mvtec_anomaly_detection", "mvtec_ad", "MVTec")


@register_dataset("mpdd")
class MPDD(IndustrialDataset):
    """MPDD metal parts (Jezek et al., 2021): 6 categories in the MVTec AD layout."""

    categories = ("bracket_black", "bracket_brown", "bracket_white", "connector", "metal_plate", "tubes")
    subfolders = ("mpdd", "MPDD")


@register_dataset("btad")
class BTAD(IndustrialDataset):
    """BTAD (Mishra et al., 2021): products 01, 02, 03; train/ok, test/ok, test/ko, ground_truth/ko."""

    categories = ("01", "02", "03")
    subfolders = ("btad", "BTAD", "BTech_Dataset_transformed")
    # normal folders are "ok", anomalies "ko"; a mask has its image's name, .png (01, 02) or .bmp (03)
    layout = Layout(good=("ok",), masks=("{stem}.png", "{stem}.bmp"))


@register_dataset("visa")
class VisA(IndustrialDataset):
    """VisA (Zou et al., ECCV 2022) after its one-class split: 12 categories, train/good, test/good|bad."""

    categories = ("candle", "capsules", "cashew", "chewinggum", "fryum", "macaroni1", "macaroni2", "pcb1", "pcb2",
                  "pcb3", "pcb4", "pipe_fryum")
    # the authors' prepare_data.py writes <save-folder>/1cls/<category>/...
    subfolders = ("VisA_pytorch/1cls", "visa_pytorch/1cls", "VisA_pytorch", "visa_pytorch", "visa", "VisA")
    # masks: ground_truth/bad/<image name>.png (binarized by prepare_data.py)
    layout = Layout(masks=("{stem}.png",))

    def category(self, normal_class: str) -> Path:
        folder = super().category(normal_class)
        if (folder / "Data" / "Images").is_dir() and not (folder / "train").is_dir():
            raise BenchError(f"dataset 'visa': {folder} is the raw VisA download; make its one-class split first "
                             "(prepare_data.py --split-type 1cls of github.com/amazon-science/spot-diff) and point "
                             "the root at the folder it writes (<save-folder>/1cls)")
        return folder
