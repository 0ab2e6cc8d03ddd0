"""The Detector contract, checked on every registered built-in method."""

import pytest
import torch

from conftest import TINY_METHOD_PARAMS
from robust_ad_bench.benchmark.protocol import metrics
from robust_ad_bench.core.dataset import TrainSet
from robust_ad_bench.core.errors import BenchError
from robust_ad_bench.core.registry import DATASETS, METHODS

BUILTIN = [n for n in METHODS.resolve("all")]


@pytest.fixture(scope="module")
def digits_split():
    return DATASETS.get("digits")().split("0", seed=0)


def fitted(name, split):
    torch.manual_seed(0)
    detector = METHODS.get(name)(tuple(split.train.shape[1:]), TINY_METHOD_PARAMS.get(name))
    detector.fit(TrainSet(split.train, default_eps={"linf": (8 / 255,)}))
    return detector.eval()


@pytest.mark.parametrize("name", BUILTIN)
def test_score_shape_finite_and_differentiable(name, digits_split):
    detector = fitted(name, digits_split)
    x = digits_split.test[:16].clone().requires_grad_(True)
    score = detector.score(x)
    assert score.shape == (16,) and torch.isfinite(score).all()
    (grad,) = torch.autograd.grad(score.sum(), x)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0


@pytest.mark.parametrize("name", BUILTIN)
def test_state_dict_restores_the_same_scores(name, digits_split):
    detector = fitted(name, digits_split)
    clone = METHODS.get(name)((1, 8, 8), TINY_METHOD_PARAMS.get(name))
    clone.restore({k: v.clone() for k, v in detector.state_dict().items()})
    with torch.no_grad():
        torch.manual_seed(1)  # stochastic scores draw the same noise for both
        expected = detector.score(digits_split.test)
        torch.manual_seed(1)
        torch.testing.assert_close(clone.score(digits_split.test), expected)


@pytest.mark.parametrize("name", ["knn", "deep-svdd"])
def test_anomalies_score_higher(name, digits_split):
    detector = fitted(name, digits_split)
    with torch.no_grad():
        auroc = metrics.auroc(digits_split.test_labels.numpy(), detector.score(digits_split.test).numpy())
    assert auroc > 0.9


def test_autoencoder_anomaly_map_matches_its_score(digits_split):
    detector = fitted("ae", digits_split)
    x = digits_split.test[:8]
    with torch.no_grad():
        maps = detector.anomaly_map(x)
        assert maps.shape == (8, 8, 8)
        torch.testing.assert_close(maps.flatten(1).mean(1), detector.score(x))
    assert METHODS.get("ae").has_anomaly_map() and not METHODS.get("knn").has_anomaly_map()


def test_normalization_happens_inside(digits_split):
    detector = fitted("knn", digits_split)
    assert detector.input_mean.item() == pytest.approx(digits_split.train.mean().item(), abs=1e-5)


def test_flags_and_bad_params():
    assert METHODS.get("ae-at").adversarially_trained and not METHODS.get("ae").adversarially_trained
    for name in BUILTIN:
        cls = METHODS.get(name)
        assert cls.stochastic == (name in ("advrad", "diffpure-ae")) and cls.certifiable == (name == "advrad")
        assert cls.purifies == name.startswith("diffpure-")
        assert cls.needs_anomalies == (name == "bgad")
    with pytest.raises(BenchError, match="unknown knn features 'edges'"):
        METHODS.get("knn")((1, 8, 8), {"features": "edges"})
    with pytest.raises(BenchError, match="method 'ae'.epochs must be int"):
        METHODS.get("ae")((1, 8, 8), {"epochs": 2.5})
