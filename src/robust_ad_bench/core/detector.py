"""The Detector contract that every method implements (PyOD-like: ``fit``, then ``score``).

- ``fit(train)`` trains on normal images (and, with ``needs_anomalies``, a few labelled anomalies).
- ``score(x) -> Tensor[N]``: higher means more anomalous, differentiable with respect to ``x``.
  ``x`` is always a float tensor in [0, 1], N×C×H×W; normalization happens inside (``normalize``),
  so every eps is in pixel units and means the same for all methods.
- ``anomaly_map(x) -> Tensor[N, H, W]`` (optional) for pixel metrics.
- Flags read by the attack suite: ``stochastic``, ``purifies``, ``needs_anomalies``, ``certifiable``;
  ``surrogates()`` names smooth objectives that gradient attacks also follow.
- Hyper-parameters are the fields of the ``Config`` dataclass; ``state_dict()`` restores a trained model.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from robust_ad_bench.core.dataset import TrainSet
from robust_ad_bench.core.params import build_config

ProgressFn = Callable[[int, int, str], None]  # (done, total, message)


@dataclass
class DetectorConfig:
    """Base of method configs. Subclasses add their hyper-parameters as fields with defaults."""


class Detector(nn.Module):
    """Base class of anomaly detectors (methods). Register subclasses with ``@register_method``."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    version: ClassVar[str] = "1"  # bump when a change alters results: part of the job key
    Config: ClassVar[type] = DetectorConfig
    stochastic: ClassVar[bool] = False  # score has randomness: attacks use EOT
    purifies: ClassVar[bool] = False  # score = score_purified(purify(x)): attacks go through it or BPDA
    differentiable_purifier: ClassVar[bool] = True  # False: attacks use BPDA (``bpda_surrogate`` backward)
    needs_anomalies: ClassVar[bool] = False  # fit uses a few labelled anomalies
    certifiable: ClassVar[bool] = False  # supports randomized-smoothing certification
    adversarially_trained: ClassVar[bool] = False  # trained against an attack (for the leaderboard)
    # a known limit, in one line: the leaderboard legend shows it for a method with a clean cell below 0.5
    # (its README gives the measured reason)
    below_chance_note: ClassVar[str] = ""
    hidden: ClassVar[bool] = False  # left out of ``--methods all`` (test doubles)
    # the smallest image side (px) the method takes, checked before a run (e.g. 8 for the conv encoders;
    # a tabular dataset's 1-px "images" are refused then, not when training)
    min_image_size: ClassVar[int] = 1

    def __init__(self, image_shape: tuple[int, int, int], config: Any = None) -> None:
        super().__init__()
        if config is None or isinstance(config, dict):
            config = build_config(self.Config, config, f"method '{self.name}'")
        self.config = config
        self.image_shape = tuple(image_shape)
        channels = self.image_shape[0]
        self.register_buffer("input_mean", torch.zeros(1, channels, 1, 1))
        self.register_buffer("input_std", torch.ones(1, channels, 1, 1))
        self.progress: ProgressFn | None = None

    # -- the contract ------------------------------------------------------------------------------
    def fit(self, train: TrainSet) -> None:
        raise NotImplementedError

    def score(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def anomaly_map(self, x: torch.Tensor) -> torch.Tensor | None:
        """Per-pixel anomaly scores N×H×W, or None when the method has none."""
        return None

    # -- purifying detectors (``purifies = True``) split their score in two; attacks use the parts ------
    def purify(self, x: torch.Tensor) -> torch.Tensor:
        """The preprocessing/purification step of a purifying detector."""
        return x

    def score_purified(self, x: torch.Tensor) -> torch.Tensor:
        """The score of an already purified image (``score(x) == score_purified(purify(x))``)."""
        raise NotImplementedError(f"method '{self.name}' sets purifies but has no score_purified")

    def bpda_surrogate(self, x: torch.Tensor) -> torch.Tensor:
        """Differentiable stand-in for ``purify`` on the backward pass of BPDA (identity by default)."""
        return x

    def surrogates(self) -> dict[str, Callable[[torch.Tensor], torch.Tensor]]:
        """Named smooth stand-ins for ``score`` that every gradient attack also follows (Tramer et al., 2020).

        A score that saturates (exp of a log-likelihood), takes a max over pixels or clips has zero or
        purely local gradients; declare here per-sample objectives of the same direction as ``score``
        (higher = more anomalous), e.g. the log-likelihood pooled by logsumexp, or a top-k mean through a
        straight-through clip. The attack keeps, per image, the candidate that is best on the true score,
        so a poor surrogate costs time, never strength. Default: none."""
        return {}

    @classmethod
    def has_anomaly_map(cls) -> bool:
        return cls.anomaly_map is not Detector.anomaly_map

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.score(x)

    # -- helpers for subclasses ----------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.input_mean.device

    def set_input_stats(self, images: torch.Tensor) -> None:
        """Per-channel mean and std of the training images, used by ``normalize``."""
        dims = (0, 2, 3)
        self.input_mean.copy_(images.mean(dims, keepdim=True))
        self.input_std.copy_(images.std(dims, keepdim=True).clamp_min(1e-3))

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.input_mean) / self.input_std

    def report(self, done: int, total: int, message: str = "") -> None:
        if self.progress is not None:
            self.progress(done, total, message)

    # -- checkpoints ---------------------------------------------------------------------------------
    def restore(self, state: dict[str, torch.Tensor]) -> None:
        """Load a ``state_dict``; buffers whose size is set by ``fit`` (feature banks) are resized."""
        buffers = dict(self.named_buffers())
        for key, value in state.items():
            if key in buffers and buffers[key].shape != value.shape:
                module_name, _, attr = key.rpartition(".")
                module = self.get_submodule(module_name) if module_name else self
                module._buffers[attr] = torch.empty_like(value, device=buffers[key].device)
        self.load_state_dict(state)
        self.eval()
