"""Test-only plugin methods for the executors' fault handling: one hangs in fit, one hangs while attacked,
one kills its own process while attacked. Loaded with --plugin (or load_plugin_file)."""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from robust_ad_bench.core.detector import Detector
from robust_ad_bench.core.registry import register_method


@register_method("mean-test")
class _Mean(Detector):
    """Distance to the mean training image (differentiable, deterministic, fast)."""

    hidden = True

    def __init__(self, image_shape, config=None):
        super().__init__(image_shape, config)
        self.register_buffer("mean_image", torch.zeros(image_shape))

    def fit(self, train):
        self.mean_image = train.images.mean(0)

    def score(self, x):
        return (x - self.mean_image).pow(2).flatten(1).sum(1)


@register_method("hang-fit")
class HangFit(_Mean):
    """Never finishes training."""

    def fit(self, train):
        time.sleep(3600)


@register_method("hang-attacked")
class HangAttacked(_Mean):
    """Scores clean images, but hangs once an attack asks for a gradient."""

    def score(self, x):
        if x.requires_grad:
            time.sleep(3600)
        return super().score(x)


@dataclass
class DieConfig:
    marker: str = ""  # a file: the first attacked score creates it and dies; later ones work ("" : die always)


@register_method("die-attacked")
class DieAttacked(_Mean):
    """Kills its own process with SIGKILL when attacked: every time, or only the first time (``marker``)."""

    Config = DieConfig

    def score(self, x):
        if x.requires_grad:
            marker = Path(self.config.marker) if self.config.marker else None
            if marker is None or not marker.exists():
                if marker is not None:
                    marker.touch()
                os.kill(os.getpid(), signal.SIGKILL)
        return super().score(x)


@dataclass
class GateConfig:
    gate: str = ""  # fit waits until this file exists (at most two minutes)


@register_method("gate-fit")
class GateFit(_Mean):
    """Trains only once a file appears: lets a test hold a run inside a step."""

    Config = GateConfig

    def fit(self, train):
        deadline = time.time() + 120
        while self.config.gate and not Path(self.config.gate).exists():
            if time.time() > deadline:
                raise TimeoutError(f"gate {self.config.gate} never opened")
            time.sleep(0.05)
        super().fit(train)
