"""A smaller test set evaluates the very model the full one does: the dataset options that shape only the test
set (``metadata={"test_only": True}``) stay out of the trained weights' key, and every embedded dataset draws
its training images independently of them."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from conftest import tiny_grid
from robust_ad_bench.benchmark.api import load_detector
from robust_ad_bench.benchmark.cli import main
from robust_ad_bench.benchmark.grid.config import expand_grid
from robust_ad_bench.benchmark.results.store import Store
from robust_ad_bench.core.registry import DATASETS
from robust_ad_bench.datasets.protocols import make_split

QUICK = {"digits": {"test_normals": 5, "anomalies_per_digit": 2},
         "textures": {"n_test_normal": 7, "n_test_anomalous": 16}}


def smaller(name: str) -> dict:
    """Every test-only option of ``name`` set away from its default."""
    options = DATASETS.get(name).Options()
    return {f.name: max(1, getattr(options, f.name) // 3 or 4) for f in dataclasses.fields(options)
            if f.metadata.get("test_only")}


@pytest.mark.parametrize("name", [n for n, cls in DATASETS if cls.test_only_options()])
def test_the_training_images_do_not_depend_on_the_test_only_options(name):
    dataset = DATASETS.get(name)
    cls = dataset.create({}).classes()[0]
    full = dataset.create({}).split(cls, 3)
    small = dataset.create(smaller(name)).split(cls, 3)
    assert torch.equal(full.train, small.train)
    assert len(small.test) < len(full.test)


def test_quick_and_full_grids_share_weights_but_not_results(tmp_path):
    quick = expand_grid(tiny_grid(tmp_path, datasets="digits,textures", classes={"digits": ["0"],
                                                                               "textures": ["brick"]},
                                  dataset_params=QUICK))
    full = expand_grid(tiny_grid(tmp_path, datasets="digits,textures", classes={"digits": ["0"],
                                                                              "textures": ["brick"]}))
    by_cell = {(j.method, j.dataset, j.attack, j.eps): j for j in full}
    for job in quick:
        twin = by_cell[(job.method, job.dataset, job.attack, job.eps)]
        assert job.model.weights_key == twin.model.weights_key == twin.train_key  # the full grid's model
        assert job.train_key != twin.train_key and job.key != twin.key  # another test set: other results
        assert job.config["weights"] == twin.train_key


def test_models_trained_on_test_anomalies_keep_their_test_set_in_the_weights_key(tmp_path):
    """bgad's labelled anomalies are drawn from the test anomalies; the transductive set is the test set."""
    kw = dict(methods="bgad,knn", datasets="textures", classes="brick", attacks="clean", n_anomalies=4)
    quick = {j.method: j for j in expand_grid(tiny_grid(tmp_path, dataset_params=QUICK, **kw))}
    full = {j.method: j for j in expand_grid(tiny_grid(tmp_path, **kw))}
    assert quick["bgad"].model.weights_key != full["bgad"].model.weights_key
    assert quick["bgad"].model.weights_key == quick["bgad"].train_key
    assert quick["knn"].model.weights_key == full["knn"].model.weights_key  # the hold-out leaves its data alone
    kw = dict(methods="knn", datasets="digits", classes="0", attacks="clean", protocol="transductive",
              contamination=0.1)
    trans_quick = expand_grid(tiny_grid(tmp_path, dataset_params=QUICK, **kw))[0].model
    trans_full = expand_grid(tiny_grid(tmp_path, **kw))[0].model
    assert trans_quick.weights_key != trans_full.weights_key


def test_a_quick_run_then_a_full_run_train_once_and_score_the_shared_images_alike(tmp_path):
    out = tmp_path / "res"
    common = ["run", "--methods", "ae", "--datasets", "digits", "--classes", "3", "--attacks", "clean",
              "--out", str(out), "--no-checks", "--set", "method_params.ae.epochs=2"]
    assert main([*common, "--set", "dataset_params.digits={test_normals: 6, anomalies_per_digit: 2}"]) == 0
    assert main([*common, "--set", "dataset_params.digits={}"]) == 0
    assert len(list((out / "models").glob("*.pt"))) == 1
    with Store(out) as store:
        rows = store.results(status="ok")
        assert len(rows) == 2 and rows["train_key"].nunique() == 2
        by_size = {int(r.n_test): store.scores(r.key)[1] for r in rows.itertuples()}
    quick, full = by_size[6 + 18], by_size[max(by_size)]
    # digits draws the quick test set as the first images of the full one's per-digit orders
    full_split = make_split(expand_grid(tiny_grid(tmp_path, methods="ae", classes="3", attacks="clean"))[0]
                            .model.split)
    normals = int((full_split.test_labels == 0).sum())
    shared = list(range(6)) + [normals + 30 * d + i for d in range(9) for i in range(2)]
    np.testing.assert_allclose(quick, full[shared], rtol=1e-5)
    with pytest.raises(Exception, match="2 trained models"):  # two test sets: the caller names one
        load_detector(out, "ae", "digits", 3)
    for key in rows["train_key"]:
        assert load_detector(out, "ae", "digits", 3, train_key=key) is not None


def test_the_classes_of_a_quick_grid_are_one_leaderboard_configuration(tmp_path):
    """The weights' key differs per class, like the class itself: cells still average over classes."""
    from robust_ad_bench.benchmark.results.cells import configuration

    jobs = expand_grid(tiny_grid(tmp_path, dataset_params=QUICK))
    by_cell: dict = {}
    for job in jobs:
        by_cell.setdefault((job.method, job.attack, job.eps), set()).add(configuration(job.config))
    assert {job.normal_class for job in jobs} == {"0", "1"}
    assert all(len(configs) == 1 for configs in by_cell.values())
