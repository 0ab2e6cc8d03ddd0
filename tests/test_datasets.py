"""The built-in datasets: shapes, ranges, determinism, disjoint train/test, masks and defects."""

from __future__ import annotations

from collections import Counter

import pytest
import torch

from robust_ad_bench.core.errors import BenchError
from robust_ad_bench.core.registry import DATASETS
from robust_ad_bench.datasets import textures as tex

CASES = [("digits", "0"), ("digits", "7"), ("textures", "brick"), ("textures", "gravel")]


def make(name: str):
    return DATASETS.get(name)()


@pytest.mark.parametrize("name", ["digits", "textures"])
def test_registered(name: str) -> None:
    cls = DATASETS.get(name)
    assert cls.name == name
    assert cls.description
    assert set(cls.default_eps) == {"linf", "l2"}


def test_classes() -> None:
    assert make("digits").classes() == [str(d) for d in range(10)]
    assert make("textures").classes() == ["brick", "grass", "gravel"]


@pytest.mark.parametrize("name,cls", CASES)
def test_split_shapes_and_ranges(name: str, cls: str) -> None:
    ds = make(name)
    s = ds.split(cls, seed=0)
    for images in (s.train, s.test):
        assert images.dtype == torch.float32
        assert images.ndim == 4 and tuple(images.shape[1:]) == ds.image_shape
        assert images.min() >= 0 and images.max() <= 1
    assert s.test_labels.dtype == torch.float32
    assert set(s.test_labels.unique().tolist()) == {0.0, 1.0}
    assert len(s.test_labels) == len(s.test) == len(s.test_defects)
    for label, defect in zip(s.test_labels.tolist(), s.test_defects):
        assert (defect == "") == (label == 0)


@pytest.mark.parametrize("name,cls", CASES)
def test_deterministic(name: str, cls: str) -> None:
    ds = make(name)
    a, b, c = ds.split(cls, seed=3), ds.split(cls, seed=3), ds.split(cls, seed=4)
    assert torch.equal(a.train, b.train) and torch.equal(a.test, b.test)
    assert torch.equal(a.test_labels, b.test_labels) and a.test_defects == b.test_defects
    if a.test_masks is not None:
        assert torch.equal(a.test_masks, b.test_masks)
    assert not torch.equal(a.train, c.train)
    assert not torch.equal(a.test, c.test)


@pytest.mark.parametrize("name", ["digits", "textures"])
def test_bad_class(name: str) -> None:
    ds = make(name)
    with pytest.raises(BenchError) as info:
        ds.check_class("nope")
    assert all(c in str(info.value) for c in ds.classes())
    with pytest.raises(BenchError):
        ds.split("nope", seed=0)


def test_digits_one_vs_rest() -> None:
    s = make("digits").split("3", seed=0)
    n_normal = int((s.test_labels == 0).sum())
    assert len(s.train) == round((len(s.train) + n_normal) * 2 / 3)
    assert s.test_masks is None
    counts = Counter(d for d in s.test_defects if d)
    assert counts == {f"digit-{k}": 30 for k in range(10) if k != 3}


def test_digits_test_set_options() -> None:
    full = make("digits").split("3", seed=0)
    small = DATASETS.get("digits").create({"anomalies_per_digit": 6, "test_normals": 40}).split("3", seed=0)
    assert Counter(d for d in small.test_defects if d) == {f"digit-{k}": 6 for k in range(10) if k != 3}
    assert int((small.test_labels == 0).sum()) == 40
    assert torch.equal(small.train, full.train)  # the options shrink the test set only
    assert torch.equal(small.test[:40], full.test[:40])  # a prefix of the same held-out normals


@pytest.mark.parametrize("params, bad", [({"anomalies_per_digit": 0}, "anomalies_per_digit"),
                                         ({"anomalies_per_digit": 175}, "1..174"),
                                         ({"test_normals": -1}, "test_normals")])
def test_digits_bad_options(params: dict, bad: str) -> None:
    with pytest.raises(BenchError, match=bad):
        DATASETS.get("digits").create(params)


@pytest.mark.parametrize("name, params", [("digits", {"anomalies_per_digit": 6}),
                                          ("textures", {"n_test_normal": 30})])
def test_size_options_are_part_of_the_key_only_when_set(name: str, params: dict) -> None:
    cls = DATASETS.get(name)
    assert cls.create().key_params() == {}  # the default sizes keep every stored key what it was
    assert cls.create(params).key_params() == params
    with pytest.raises(BenchError, match="n_train"):
        DATASETS.get("textures").create({"n_train": 0})


@pytest.mark.parametrize("cls", ["brick", "grass", "gravel"])
def test_textures_split(cls: str) -> None:
    s = make("textures").split(cls, seed=0)
    assert (len(s.train), int((s.test_labels == 0).sum()), int(s.test_labels.sum())) == (240, 60, 60)
    # train and test come from disjoint rows, so no test patch equals a train patch
    assert torch.cdist(s.test.flatten(1), s.train.flatten(1)).min() > 0
    m = s.test_masks
    assert m is not None and m.dtype == torch.bool and tuple(m.shape) == (len(s.test), 32, 32)
    normal = s.test_labels == 0
    assert not m[normal].any()
    assert (m[~normal].flatten(1).sum(1) >= 5).all()
    assert Counter(s.test_defects) == {"": 60, "scratch": 20, "blob": 20, "patch": 20}


def test_textures_odd_sizes() -> None:
    s = tex.Textures.create({"n_train": 10, "n_test_normal": 5, "n_test_anomalous": 7}).split("grass", seed=1)
    assert len(s.train) == 10 and len(s.test) == 12
    kinds = Counter(d for d in s.test_defects if d)
    assert set(kinds) == {"scratch", "blob", "patch"} and sum(kinds.values()) == 7


@pytest.mark.parametrize("kind", ["scratch", "blob", "patch"])
def test_defects_change_exactly_the_mask(kind: str) -> None:
    g = torch.Generator().manual_seed(0)
    if kind == "patch":
        # -1 is outside any texture's range, so every pasted pixel differs from it
        clean = torch.full((50, 32, 32), -1.0)
        out, mask = tex._foreign_patch(clean, 0, g, tex._textures())
        min_change = 0.99
    else:
        clean = torch.full((50, 32, 32), 0.5)
        out, mask = (tex._scratch if kind == "scratch" else tex._blob)(clean, g)
        min_change = 0.24  # scratch values are ≥ 0.35 away from 0.5, blob shifts ≥ 0.25
    change = (out - clean).abs()
    assert (mask.flatten(1).sum(1) >= 5).all()
    assert torch.equal(change > 0, mask)
    assert change[mask].min() >= min_change
