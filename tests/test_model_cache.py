"""The model cache: a trained detector is scored in channels-last layout, and a reloaded one scores the same."""

from __future__ import annotations

import copy

import torch

from conftest import TINY_METHOD_PARAMS
from robust_ad_bench.benchmark.execution.model_cache import ModelCache
from robust_ad_bench.benchmark.grid.config import expand_grid, make_grid_config
from robust_ad_bench.datasets.protocols import make_split


def conv_weights(detector: torch.nn.Module) -> list[torch.Tensor]:
    return [p for p in detector.parameters() if p.dim() == 4]


def test_trained_and_reloaded_detectors_score_alike_in_channels_last(tmp_path):
    cfg = make_grid_config(methods="ae", datasets="textures", attacks="clean", classes="brick",
                           out=str(tmp_path), device="cpu", method_params={"ae": TINY_METHOD_PARAMS["ae"]})
    job = expand_grid(cfg)[0]
    split = make_split(job.model.split)
    cache = ModelCache(tmp_path / "models", torch.device("cpu"))
    trained, fitted = cache.get(job.model, split)
    reloaded, refitted = cache.get(job.model, split)
    assert fitted and not refitted
    for detector in (trained, reloaded):
        weights = conv_weights(detector)
        assert weights and all(w.is_contiguous(memory_format=torch.channels_last) for w in weights)
    plain = copy.deepcopy(trained).to(memory_format=torch.contiguous_format)
    assert not all(w.is_contiguous(memory_format=torch.channels_last) for w in conv_weights(plain))
    with torch.no_grad():
        scores = trained.score(split.test)
        assert torch.equal(scores, reloaded.score(split.test))
        torch.testing.assert_close(scores, plain.score(split.test), rtol=1e-5, atol=1e-6)
