"""`diffpure`: DiffPure's purifier in front of any registered detector, with full gradients through both."""

from __future__ import annotations

import pytest
import torch

from robust_ad_bench.core.dataset import TrainSet
from robust_ad_bench.core.errors import BenchError
from robust_ad_bench.core.registry import DATASETS, METHODS

TINY = {"epochs": 1, "width": 4}


@pytest.fixture(scope="module")
def digits():
    return DATASETS.get("digits")().split("0", seed=0)


def fitted(digits, detector, **params):
    torch.manual_seed(0)
    model = METHODS.get("diffpure")((1, 8, 8), {**TINY, "detector": detector, **params})
    model.fit(TrainSet(digits.train))
    return model.eval()


def test_any_detector_behind_the_purifier_with_gradients_through_both(digits):
    model = fitted(digits, "knn", detector_params={"features": "random-conv"})
    assert type(model.detector).name == "knn" and model.purifies and model.stochastic
    x = digits.test[:8].clone().requires_grad_(True)
    torch.manual_seed(1)
    score = model.score(x)
    torch.manual_seed(1)
    torch.testing.assert_close(score, model.detector.score(model.purify(x)))  # score = detector(purify(x))
    score.sum().backward()
    unet = [p.grad for p in model.unet.parameters()]
    assert x.grad.abs().sum() > 0 and any(g is not None and g.abs().sum() > 0 for g in unet)
    # the input gradient passes through the purifier: it differs from the detector's own on x
    x2 = x.detach().clone().requires_grad_(True)
    model.detector.score(x2).sum().backward()
    assert not torch.allclose(x.grad, x2.grad)
    assert not model.has_anomaly_map() and METHODS.get("diffpure").hidden


def test_a_detector_with_a_map_and_surrogates_behind_the_purifier(digits):
    model = fitted(digits, "ae", detector_params={"epochs": 2})
    assert model.has_anomaly_map() and model.anomaly_map(digits.test[:4]).shape == (4, 8, 8)
    assert set(model.surrogates()) == {"st-clip"}  # ae declares none of its own
    clone = METHODS.get("diffpure")((1, 8, 8), {**TINY, "detector": "ae", "detector_params": {"epochs": 2}})
    clone.restore({k: v.clone() for k, v in model.state_dict().items()})
    with torch.no_grad():
        torch.manual_seed(2)
        expected = model.score(digits.test[:8])
        torch.manual_seed(2)
        torch.testing.assert_close(clone.score(digits.test[:8]), expected)


def test_the_detector_option_is_checked():
    from robust_ad_bench.benchmark.grid.config import expand_grid, make_grid_config

    with pytest.raises(BenchError, match="unknown method 'knnn'"):  # with the grid's options, before any run
        expand_grid(make_grid_config(methods="diffpure", datasets="digits",
                                     method_params={"diffpure": {"detector": "knnn"}}))
    with pytest.raises(BenchError, match="unknown method 'patchcor'"):
        METHODS.get("diffpure")((1, 8, 8), {"detector": "patchcor"})
    with pytest.raises(BenchError, match="'diffpure'.detector 'diffpure-ae' must be a detector that neither purifies"):
        METHODS.get("diffpure")((1, 8, 8), {"detector": "diffpure-ae"})


def test_anomalib_patchcore_behind_the_purifier(digits):
    pytest.importorskip("anomalib")
    model = fitted(digits, "anomalib-patchcore", detector_params={"image_size": 32})
    assert {"st-clip", "st-clip-lse", "st-clip-top5"} == set(model.surrogates())
    x = digits.test[:4].clone().requires_grad_(True)
    model.score(x).sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    clone = METHODS.get("diffpure")((1, 8, 8), {**TINY, "detector": "anomalib-patchcore",
                                                "detector_params": {"image_size": 32}})
    clone.restore({k: v.clone() for k, v in model.state_dict().items()})  # the coreset bank is resized
    assert clone.detector.model.memory_bank.shape == model.detector.model.memory_bank.shape
