"""``folder``: the user's own images, in one of two layouts (the root from the ``root`` option or
``--data-root``):

- ``<root>/normal/*`` and ``<root>/anomalous/*`` (subfolders of ``anomalous/`` are defect types), with
  optional masks in ``<root>/masks/`` at the anomaly's relative path (``<stem>.png`` or
  ``<stem>_mask.png``). The normal images are split at random (per seed) into train and test
  (``test_fraction``, default 0.2);
- ``<root>/train/[good/]*`` and ``<root>/test/<good|normal|ok>/*``, ``<root>/test/<defect>/*``, optional
  ``<root>/ground_truth/<defect>/<stem>[_mask].png``: the MVTec AD layout, a fixed split.

When the root holds neither layout, each of its subfolders that does is a class (a category); otherwise
the one class is called ``default``. Images keep their size unless ``resize`` is set (they must end with
one size). The job key holds the folder's ``name`` (default: the root's folder name) and a fingerprint of
its files (relative names and sizes), so results are recomputed when the images change, not when the folder
moves.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from robust_ad_bench.core.dataset import Dataset, Split, seeded_generator
from robust_ad_bench.core.errors import BenchError
from robust_ad_bench.core.registry import register_dataset
from robust_ad_bench.datasets import cache
from robust_ad_bench.datasets.files import IMAGE_SUFFIXES, ImageOptions, data_root, read_images, read_masks
from robust_ad_bench.datasets.industrial import Layout, anomaly_counts, arrays_to_split, check_files, read_category

MVTEC_LIKE = Layout(good=("good", "normal", "ok"), masks=("{stem}_mask.png", "{stem}.png"), masks_required=False,
                    flat_train=True)
LAYOUT = ("<root>/normal/*.png + <root>/anomalous/[<defect>/]*.png [+ <root>/masks/...], or <root>/train/*.png + "
          "<root>/test/good/*.png + <root>/test/<defect>/*.png [+ <root>/ground_truth/<defect>/<name>_mask.png]; "
          "or one such folder per class")
SINGLE = "default"


@dataclass
class FolderOptions(ImageOptions):
    name: str = ""  # a label for the data in the job key (default: the root's folder name)
    test_fraction: float = 0.2  # normal/ + anomalous/ layout: share of the normal images tested on

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 < self.test_fraction < 1:
            raise BenchError(f"test_fraction must be between 0 and 1, got {self.test_fraction!r}")


def _kind(folder: Path) -> str | None:
    if (folder / "normal").is_dir() and (folder / "anomalous").is_dir():
        return "two-folders"
    if (folder / "train").is_dir() and (folder / "test").is_dir():
        return "train-test"
    return None


def _utf8(name: str) -> bool:
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:  # undecodable bytes in the name (surrogate escapes)
        return False
    return True


def _images_below(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                  and not any(part.startswith(".") for part in p.relative_to(folder).parts))


@register_dataset("folder")
class Folder(Dataset):
    """Your own images: normal/ + anomalous/ (+ masks/), or train/ + test/ folders; subfolders as classes."""

    Options = FolderOptions
    # 2: library decoders (16-bit files no longer clipped to white; masks checked for size and binary values)
    version = "2"
    hidden = True  # needs a root: not part of "--datasets all"
    image_shape = (3, 256, 256)  # whatever the files hold (or ``resize``)
    default_eps = {"linf": (2 / 255, 8 / 255), "l2": (0.25, 0.5)}

    def __init__(self, options: FolderOptions | None = None) -> None:
        self.options = options or FolderOptions()
        self.skipped_classes: list[str] = []  # subfolders whose names are not valid UTF-8

    def root(self) -> Path:
        given = self.options.root or data_root(self.data_root)
        if not given:
            raise BenchError("dataset 'folder': no folder given; set dataset_params: {folder: {root: DIR}} or pass "
                             f"--data-root DIR; expected layout: {LAYOUT}")
        root = Path(given).expanduser()
        if not root.is_dir():
            raise BenchError(f"dataset 'folder': data not found at {root}; expected layout: {LAYOUT}")
        return root

    def classes(self) -> list[str]:
        root = self.root()
        if _kind(root):
            return [SINGLE]
        found = sorted(p.name for p in root.iterdir() if p.is_dir() and _kind(p))
        # a class is a name in the store, the leaderboard and the terminal: one that is not valid UTF-8
        # (a file system's raw bytes) is skipped and reported, the other classes run
        self.skipped_classes = [n for n in found if not _utf8(n)]
        found = [n for n in found if _utf8(n)]
        if not found:
            skipped = f" (skipped, names not UTF-8: {', '.join(map(ascii, self.skipped_classes))})" \
                if self.skipped_classes else ""
            raise BenchError(f"dataset 'folder': {root} holds neither layout{skipped}; expected layout: {LAYOUT}")
        return found

    def key_params(self) -> dict[str, Any]:
        params = super().key_params()
        root = self.root()
        files = [(p.relative_to(root).as_posix(), p.stat().st_size) for p in _images_below(root)]
        params["name"] = self.options.name or root.name
        params["files"] = hashlib.sha256(repr(files).encode()).hexdigest()[:16]
        return params

    def category(self, normal_class: str) -> Path:
        root = self.root()
        return root if normal_class == SINGLE else root / self.check_class(normal_class)

    def check_data(self, normal_class: str) -> None:
        folder = self.category(self.check_class(normal_class))
        if _kind(folder) == "train-test":
            check_files(folder, MVTEC_LIKE, self.options, self.name)

    def anomaly_counts(self, normal_class: str) -> dict[str, int] | None:
        folder = self.category(self.check_class(normal_class))
        if _kind(folder) == "train-test":
            return anomaly_counts(folder, MVTEC_LIKE)
        counts: dict[str, int] = {}
        for path in _images_below(folder / "anomalous"):
            kind = path.parent.name if path.parent != folder / "anomalous" else "anomalous"
            counts[kind] = counts.get(kind, 0) + 1
        return counts

    def split(self, normal_class: str, seed: int) -> Split:
        folder = self.category(self.check_class(normal_class))
        if _kind(folder) == "train-test":
            return arrays_to_split(read_category(folder, MVTEC_LIKE, self.options, self.name, self.version))
        arrays = self._two_folders(folder)
        normal = arrays["normal"]
        g = seeded_generator("folder", normal_class, seed)
        perm = torch.randperm(len(normal), generator=g).numpy()
        n_test = min(len(normal) - 1, max(1, round(len(normal) * self.options.test_fraction)))
        test_idx, train_idx = np.sort(perm[:n_test]), np.sort(perm[n_test:])
        split: cache.Arrays = {
            "train": normal[train_idx], "test": np.concatenate([normal[test_idx], arrays["anomalous"]]),
            "labels": np.array([0] * n_test + [1] * len(arrays["anomalous"]), np.uint8),
            "defects": np.concatenate([np.array([""] * n_test), arrays["defects"]])}
        if "masks" in arrays:
            empty = np.zeros((n_test, *arrays["masks"].shape[1:]), bool)
            split["masks"] = np.concatenate([empty, arrays["masks"]])
        return arrays_to_split(split)

    def _two_folders(self, folder: Path) -> cache.Arrays:
        normals = _images_below(folder / "normal")
        anomalies = _images_below(folder / "anomalous")
        if len(normals) < 2 or not anomalies:
            raise BenchError(f"dataset 'folder': {folder} needs at least 2 images in normal/ and 1 in anomalous/ "
                             f"(found {len(normals)} and {len(anomalies)}); expected layout: {LAYOUT}")
        defects = [p.parent.name if p.parent != folder / "anomalous" else "anomalous" for p in anomalies]
        masks: list[Path] = []
        if (folder / "masks").is_dir():
            for path in anomalies:
                rel = path.relative_to(folder / "anomalous").with_suffix("")
                options = [folder / "masks" / f"{rel}.png", folder / "masks" / f"{rel}_mask.png"]
                found = next((m for m in options if m.is_file()), None)
                if found is None:
                    raise BenchError(f"anomaly image {path} has no mask: {options[0]} or {options[1]} not found")
                masks.append(found)
        o = self.options
        description = {"dataset": self.name, "version": self.version, "resize": o.resize, "crop": o.crop,
                       "color": o.color, "files": cache.fingerprint(normals + anomalies + masks, folder)}

        def decode() -> cache.Arrays:
            images = read_images(normals + anomalies, o.color, o.resize, o.crop)
            out = {"normal": images[:len(normals)], "anomalous": images[len(normals):],
                   "defects": np.array(defects, dtype=str)}
            if masks:
                out["masks"] = read_masks(masks, o.resize, o.crop, anomalies)
                if out["masks"].shape[1:] != images.shape[2:]:
                    raise BenchError(f"dataset 'folder': masks in {folder / 'masks'} are {out['masks'].shape[1:]} "
                                     f"but images {images.shape[2:]}")
            return out

        return cache.cached(description, decode, cache.cache_folder(o.cache_dir))
