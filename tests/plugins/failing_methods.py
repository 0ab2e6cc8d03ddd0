"""Test-only plugin methods: one raises in fit, one returns NaN scores. Loaded with --plugin."""

from __future__ import annotations

import torch

from robust_ad_bench.core.detector import Detector
from robust_ad_bench.core.registry import register_method


@register_method("broken-fit")
class BrokenFit(Detector):
    """Raises during training (tests that a failing job is recorded and the grid goes on)."""

    hidden = True

    def fit(self, train):
        raise RuntimeError("deliberate failure in fit")

    def score(self, x):
        return x.flatten(1).sum(1)


@register_method("nan-score")
class NaNScore(Detector):
    """Returns NaN scores (tests that non-finite scores fail the job)."""

    hidden = True

    def fit(self, train):
        pass

    def score(self, x):
        return torch.full((len(x),), float("nan")) + 0 * x.flatten(1).sum(1)
