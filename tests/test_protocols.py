"""The transductive protocol (grid option and split) and the tabular breast-cancer dataset."""

import pytest
import torch

from conftest import tiny_grid
from robust_ad_bench.benchmark.execution.runner import Runner
from robust_ad_bench.benchmark.grid.config import expand_grid, make_grid_config
from robust_ad_bench.benchmark.results.store import Store
from robust_ad_bench.core.errors import BenchError
from robust_ad_bench.core.registry import DATASETS, METHODS
from robust_ad_bench.datasets.protocols import transductive_split


def test_transductive_split_counts_and_determinism():
    split = DATASETS.get("textures")().split("brick", seed=0)
    a = transductive_split(split, 0.1, seed=0)
    b = transductive_split(split, 0.1, seed=0)
    c = transductive_split(split, 0.1, seed=1)
    n_normal = len(split.train) + int((split.test_labels == 0).sum())
    assert len(a.train) == n_normal + int(n_normal * 0.1)
    assert torch.equal(a.train, a.test)  # trained on and scored on the same set
    assert int(a.test_labels.sum()) == int(n_normal * 0.1)
    torch.testing.assert_close(a.train, b.train)
    assert not torch.equal(a.train, c.train)
    assert a.test_masks.shape[0] == len(a.test) and not a.test_masks[:n_normal].any()
    assert a.test_defects[:n_normal] == [""] * n_normal and all(a.test_defects[n_normal:])
    with pytest.raises(BenchError, match="contamination 0.5 needs 150 anomalies but the split has 60"):
        transductive_split(split, 0.5, seed=0)


def test_protocol_is_part_of_the_training_key(tmp_path):
    one_class = expand_grid(tiny_grid(tmp_path, methods="knn", attacks="clean"))
    explicit = expand_grid(tiny_grid(tmp_path, methods="knn", attacks="clean", protocol="one-class"))
    assert [j.key for j in one_class] == [j.key for j in explicit]  # default keys unchanged
    p1 = expand_grid(tiny_grid(tmp_path, methods="knn", attacks="clean", protocol="transductive"))
    p3 = expand_grid(tiny_grid(tmp_path, methods="knn", attacks="clean", protocol="transductive",
                               contamination=0.3))
    keys = [{j.train_key for j in grid} for grid in (one_class, p1, p3)]
    assert not (keys[0] & keys[1]) and not (keys[1] & keys[2])
    assert p1[0].config["protocol"] == "transductive" and p3[0].config["contamination"] == 0.3
    with pytest.raises(BenchError, match="unknown protocol 'transductiv'.*did you mean 'transductive'"):
        expand_grid(make_grid_config(methods="knn", datasets="digits", protocol="transductiv"))
    with pytest.raises(BenchError, match="contamination must be > 0"):
        expand_grid(make_grid_config(methods="knn", datasets="digits", protocol="transductive",
                                     contamination=0))


def test_runner_trains_and_scores_the_contaminated_set(tmp_path):
    cfg = tiny_grid(tmp_path, methods="knn,sla", attacks="clean,pgd", classes="0", protocol="transductive",
                    contamination=0.2)
    cfg.method_params["sla"] = {"n_projections": 8, "projection_dim": 8, "features": "pixels"}
    summary = Runner(cfg).run()
    assert summary.computed == 4 and not summary.failed
    with Store(tmp_path) as store:
        results = store.results()
    split = DATASETS.get("digits")().split("0", seed=0)
    n_normal = len(split.train) + int((split.test_labels == 0).sum())
    assert set(results["n_test"]) == {n_normal + int(n_normal * 0.2)}


def test_breast_cancer_vectors():
    dataset = DATASETS.get("breast-cancer")()
    assert dataset.classes() == ["benign", "malignant"]
    split = dataset.split("benign", seed=0)
    assert split.train.shape[1:] == (1, 1, 30) and split.test.shape[1:] == (1, 1, 30)
    assert split.train.min() == 0 and split.train.max() == 1  # min-max of the training part
    assert split.test.min() >= 0 and split.test.max() <= 1
    assert int(split.test_labels.sum()) == int((split.test_labels == 0).sum())  # balanced test set
    torch.testing.assert_close(dataset.split("benign", seed=0).test, split.test)
    assert "breast-cancer" not in DATASETS.resolve("all")  # convolutional methods need images
    assert METHODS.get("sla2p")(dataset.image_shape).feature_kind == "pixels"
    with pytest.raises(BenchError, match="unknown class of dataset 'breast-cancer' 'healthy'"):
        dataset.split("healthy", seed=0)


def test_few_anomaly_options_per_dataset(tmp_path):
    options = dict(methods="knn,bgad", datasets="digits,textures", attacks="clean", eps=None,
                   classes="digits:0,textures:brick")
    none = {j.method + j.dataset: j for j in expand_grid(tiny_grid(tmp_path, **options, n_anomalies=0))}
    per = {j.method + j.dataset: j for j in expand_grid(tiny_grid(tmp_path, **options,
                                                                         n_anomalies={"textures": 10}))}
    # digits is unchanged (same keys as a grid without the protocol); textures holds 10 out for every method
    assert per["knndigits"].key == none["knndigits"].key and per["bgaddigits"].key == none["bgaddigits"].key
    assert per["knntextures"].model.split.n_anomalies == 10 and per["knntextures"].key != none["knntextures"].key
    assert "anomalies_seen" in per["bgadtextures"].config and "anomalies_seen" not in per["bgaddigits"].config
    # a plain number applies to every dataset; known defect types apply where anomalies are held out
    flat = {j.method + j.dataset: j for j in expand_grid(tiny_grid(tmp_path, **options, n_anomalies=4))}
    assert flat["knndigits"].model.split.n_anomalies == 4 and flat["knntextures"].model.split.n_anomalies == 4
    known = {j.method + j.dataset: j for j in expand_grid(
        tiny_grid(tmp_path, **options, n_anomalies={"textures": 6}, known_defects="blob"))}
    assert known["knntextures"].model.split.known_defects == ("blob",)
    assert known["knndigits"].model.split.known_defects is None
    by_dataset = {j.method + j.dataset: j for j in expand_grid(tiny_grid(
        tmp_path, **options, n_anomalies={"textures": 6, "digits": 2},
        known_defects={"textures": ["patch"], "digits": ["digit-3"]}))}
    assert by_dataset["knntextures"].model.split.known_defects == ("patch",)
    assert by_dataset["knndigits"].model.split.known_defects == ("digit-3",)
    # the default grid gives bgad its anomalies on textures only
    default = make_grid_config(out=str(tmp_path))
    assert default.n_anomalies == {"textures": 10}
    with pytest.raises(BenchError, match="n_anomalies must be a non-negative integer, got -1"):
        tiny_grid(tmp_path, **options, n_anomalies={"textures": -1})
    with pytest.raises(BenchError, match="unknown dataset in n_anomalies 'textrues'"):
        expand_grid(tiny_grid(tmp_path, **options, n_anomalies={"textrues": 10}))
    with pytest.raises(BenchError, match="known_defects is set but n_anomalies is 0"):
        tiny_grid(tmp_path, **options, n_anomalies={"textures": 0}, known_defects="blob")
