"""The Dataset contract: a name, an image shape, and one split per normal class or category."""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from robust_ad_bench.core.errors import BenchError, unknown_choice
from robust_ad_bench.core.params import build_config


@dataclass
class Split:
    """One normal class (or category) of a dataset, ready for training and testing.

    All images are float tensors in [0, 1] of shape N×C×H×W. ``test_labels`` is 0 for normal and 1 for
    anomaly. ``test_masks`` (N×H×W, bool) exists where the dataset has pixel ground truth.
    ``anomalies`` are a few labelled anomalies (kept out of the test set) for methods with
    ``needs_anomalies``; ``test_defects`` names the kind of each test anomaly ("" for normals);
    ``known_defects`` are the kinds the held-out anomalies were drawn from (the others are unseen).
    """

    train: torch.Tensor
    test: torch.Tensor
    test_labels: torch.Tensor
    test_masks: torch.Tensor | None = None
    test_defects: list[str] | None = None
    anomalies: torch.Tensor | None = None
    anomaly_masks: torch.Tensor | None = None
    known_defects: list[str] | None = None

    def __post_init__(self) -> None:
        n = len(self.test)
        if len(self.test_labels) != n:
            raise ValueError(f"{n} test images but {len(self.test_labels)} labels")
        if self.test_masks is not None and self.test_masks.shape[0] != n:
            raise ValueError(f"{n} test images but {self.test_masks.shape[0]} masks")


@dataclass
class TrainSet:
    """What a detector's ``fit`` receives: normal images and, for supervised methods, a few anomalies."""

    images: torch.Tensor
    anomalies: torch.Tensor | None = None
    anomaly_masks: torch.Tensor | None = None
    default_eps: dict[str, tuple[float, ...]] = field(default_factory=dict)  # the dataset's attack budgets


class Dataset:
    """Base class of datasets. Subclasses set the class attributes and implement ``split``.

    A dataset must be deterministic given ``seed``: the same (class, seed) gives the same tensors.

    Options: a dataset that takes options (a data folder, load-time transforms) names a dataclass as
    ``Options``; ``create(params, data_root)`` validates them into ``self.options``. The options that
    change the data a split yields are part of the job key (``key_params``); a field with
    ``metadata={"key": False}`` (where the data lives, whether to download) is not, so moving the data
    does not invalidate results. A field with ``metadata={"test_only": True}`` shapes only the test set
    (how many test images): it is part of the job key but not of the trained weights' key, so a smaller
    test set evaluates the very model the full one does (the dataset must draw its training images
    before, and independently of, such options; ``tests/test_weights_key.py`` checks it).
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    version: ClassVar[str] = "1"  # bump when the data a split yields changes (part of the job key)
    image_shape: ClassVar[tuple[int, int, int]] = (1, 8, 8)
    # eps values of the default grid, per norm, in pixel units ([0, 1] images)
    default_eps: ClassVar[dict[str, tuple[float, ...]]] = {"linf": (8 / 255,), "l2": (0.5,)}
    # the anomaly types named in ``test_defects`` when they are the same for every class (checked
    # before a run with ``known_defects``); empty: checked when the split is made
    defect_kinds: ClassVar[tuple[str, ...]] = ()
    hidden: ClassVar[bool] = False  # left out of ``--datasets all`` (e.g. vectors that conv methods cannot take)
    Options: ClassVar[type | None] = None  # dataclass of the dataset's options; None: it takes none
    options: Any = None  # the validated options (an ``Options`` instance) of a dataset made by ``create``
    data_root: str | None = None  # the grid's data root (``--data-root``), for datasets that read files

    @classmethod
    def create(cls, params: dict[str, Any] | None = None, data_root: str | None = None) -> Dataset:
        """An instance with validated ``params`` (unknown names and bad values raise a ``BenchError``)."""
        if cls.Options is None:
            if params:
                raise BenchError(f"dataset '{cls.name}' takes no options, got {', '.join(sorted(params))}")
            dataset = cls()
        else:
            dataset = cls(build_config(cls.Options, params, f"dataset '{cls.name}'"))  # type: ignore[call-arg]
        dataset.data_root = data_root
        return dataset

    @classmethod
    def test_only_options(cls) -> frozenset[str]:
        """The options that shape only the test set (``metadata={"test_only": True}``)."""
        if cls.Options is None:
            return frozenset()
        return frozenset(f.name for f in dataclasses.fields(cls.Options) if f.metadata.get("test_only"))

    def key_params(self) -> dict[str, Any]:
        """The options that determine the data, where they differ from their defaults (empty for a
        dataset without options, so its job keys stay what they were)."""
        if self.options is None or self.Options is None:
            return {}
        default = self.Options()
        out = {}
        for f in dataclasses.fields(self.options):
            value = getattr(self.options, f.name)
            if f.metadata.get("key", True) and value != getattr(default, f.name):
                out[f.name] = list(value) if isinstance(value, tuple) else value
        return out

    def check_data(self, normal_class: str) -> None:
        """Raise a ``BenchError`` naming the expected layout when the files of ``normal_class`` are not
        there (cheap: looks at folders, decodes nothing). Datasets that need no files pass."""

    def anomaly_counts(self, normal_class: str) -> dict[str, int] | None:
        """The test anomalies of ``normal_class`` per defect type, counted cheaply (nothing decoded), so
        that ``n_anomalies`` and ``known_defects`` are checked before a run; None: known only once the
        split is made."""
        return None

    def classes(self) -> list[str]:
        """The normal classes or categories, as strings (CLI ``--classes`` picks among them)."""
        raise NotImplementedError

    def split(self, normal_class: str, seed: int) -> Split:
        raise NotImplementedError

    def check_class(self, normal_class: str) -> str:
        normal_class = str(normal_class)
        valid = self.classes()
        if normal_class not in valid:
            raise unknown_choice(f"class of dataset '{self.name}'", normal_class, valid)
        return normal_class


def seeded_generator(*parts: object) -> torch.Generator:
    """A torch generator seeded from ``parts`` with a stable hash (Python's ``hash`` of str is salted)."""
    digest = hashlib.sha256(":".join(map(str, parts)).encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & (2**63 - 1))
