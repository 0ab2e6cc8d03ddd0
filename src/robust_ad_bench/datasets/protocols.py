"""The data of a job: a dataset's split under the grid's protocol, described by one hashable ``SplitSpec``.

- one-class (the leaderboard's protocol): train on the normal training images, test on held-out normals
  and anomalies;
- few-anomaly option: ``n_anomalies`` labelled test anomalies (optionally only of the ``known_defects``
  types) are moved out of the test set for every method, and methods with ``needs_anomalies`` train on
  them (``few_anomalies.hold_out_anomalies``);
- transductive: one contaminated set is both trained on and scored (``transductive_split``).

The runner and ``defects`` both build splits here, so a split is the same wherever it is rebuilt.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from functools import lru_cache
from typing import Any

import torch

from robust_ad_bench.core.dataset import Dataset, Split, seeded_generator
from robust_ad_bench.core.errors import BenchError
from robust_ad_bench.core.registry import DATASETS
from robust_ad_bench.datasets.few_anomalies import hold_out_anomalies

PROTOCOLS = ("one-class", "transductive")


@dataclass(frozen=True)
class SplitSpec:
    """Everything that determines the tensors of a job's split."""

    dataset: str
    normal_class: str
    seed: int
    n_anomalies: int = 0  # few-anomaly option: labelled anomalies held out of the test set (0: off)
    known_defects: tuple[str, ...] | None = None  # the types they are drawn from (None: every type)
    protocol: str = "one-class"
    contamination: float | None = None  # transductive only: anomalies per normal image
    # the dataset's options as given (``freeze_params``), and the grid's data root: where files are read
    dataset_params: tuple[tuple[str, Any], ...] = ()
    data_root: str | None = None


def freeze_params(params: dict[str, Any] | None) -> tuple[tuple[str, Any], ...]:
    """Dataset options as a hashable, ordered tuple (lists become tuples)."""
    return tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in (params or {}).items()))


def stored_params(dataset: str, key_params: dict[str, Any] | None) -> tuple[tuple[str, Any], ...]:
    """The options among a job's stored ``dataset_params`` (which may also hold a data fingerprint), frozen."""
    options = DATASETS.get(dataset).Options
    names = {f.name for f in fields(options)} if options is not None else set()
    return freeze_params({k: v for k, v in (key_params or {}).items() if k in names})


def test_only_options(dataset: str) -> frozenset[str]:
    """The options of ``dataset`` that shape only its test set (kept out of the trained weights' key)."""
    return DATASETS.get(dataset).test_only_options()


def make_dataset(spec: SplitSpec) -> Dataset:
    """The dataset of ``spec`` with its options and data root."""
    return DATASETS.get(spec.dataset).create(dict(spec.dataset_params), spec.data_root)


@lru_cache(maxsize=2)  # consecutive jobs share a split (the grid is ordered dataset → class → seed)
def make_split(spec: SplitSpec) -> Split:
    """The split of ``spec``: deterministic, so the same spec always gives the same tensors."""
    split = make_dataset(spec).split(spec.normal_class, spec.seed)
    if spec.n_anomalies > 0:
        generator = seeded_generator(spec.dataset, spec.seed, spec.normal_class, "known-anomalies")
        known = list(spec.known_defects) if spec.known_defects else None
        split = hold_out_anomalies(split, spec.n_anomalies, known, generator)
    if spec.protocol == "transductive":
        split = transductive_split(split, spec.contamination, spec.seed)
    return split


def transductive_split(split: Split, contamination: float | None, seed: int) -> Split:
    """The unsupervised (transductive) protocol: one contaminated set that is both trained on and scored.

    The set holds every normal image of ``split`` (train and test) and ``int(n_normal · contamination)``
    anomalies drawn from its test anomalies (so ``contamination`` is anomalies per normal, as in the
    SLA²P and E3Outlier loaders: 0.1 gives 9.1 % anomalies). Deterministic given ``seed``.
    """
    if contamination is None or not contamination > 0:
        raise BenchError(f"contamination must be > 0 for the transductive protocol, got {contamination!r}")
    normal = split.test_labels == 0
    normals = torch.cat([split.train, split.test[normal]])
    pool = torch.nonzero(~normal).flatten()
    n_anomalies = int(len(normals) * contamination)
    if n_anomalies > len(pool):
        raise BenchError(f"contamination {contamination:g} needs {n_anomalies} anomalies but the split has "
                         f"{len(pool)}; valid: contamination <= {len(pool) / len(normals):.3f}")
    g = seeded_generator("transductive", seed, contamination, len(normals), len(pool))
    chosen = pool[torch.randperm(len(pool), generator=g)[:n_anomalies]]
    images = torch.cat([normals, split.test[chosen]])
    masks = None
    if split.test_masks is not None:
        empty = torch.zeros(len(normals), *split.test_masks.shape[1:], dtype=split.test_masks.dtype)
        masks = torch.cat([empty, split.test_masks[chosen]])
    defects = None
    if split.test_defects is not None:
        defects = [""] * len(normals) + [split.test_defects[i] for i in chosen.tolist()]
    labels = torch.cat([torch.zeros(len(normals)), torch.ones(n_anomalies)]).float()
    return Split(train=images, test=images.clone(), test_labels=labels, test_masks=masks, test_defects=defects)
