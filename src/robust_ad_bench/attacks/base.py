"""The Attack contract: ``perturb(detector, x, y, eps) -> x_adv``.

``y`` is 0 for normal and 1 for anomaly. The attacker wants the detector to be wrong: raise the score of
normal images and lower the score of anomalies, i.e. maximize ``score(x) * (1 - 2y)`` inside the eps-ball
and [0, 1]. An attack knows a detector only through ``score`` and its class flags.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from robust_ad_bench.benchmark.errors import BenchError
from robust_ad_bench.benchmark.params import build_config

NORMS = ("linf", "l2", "none")


@dataclass
class AttackConfig:
    batch_size: int = 256  # images attacked at once


def attack_objective(detector: Any, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-sample value the attacker maximizes: the score of normals, minus the score of anomalies."""
    return detector.score(x) * (1.0 - 2.0 * y.to(x.dtype))


class Attack:
    """Base class of attacks. Register subclasses with ``@register_attack``."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    version: ClassVar[str] = "1"  # bump when a change alters results: part of the job key
    norm: ClassVar[str] = "linf"  # threat model: "linf", "l2", or "none" (clean)
    Config: ClassVar[type] = AttackConfig

    def __init__(self, config: Any = None) -> None:
        if config is None or isinstance(config, dict):
            config = build_config(self.Config, config, f"attack '{self.name}'")
        self.config = config

    def perturb(self, detector: Any, x: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
        """Adversarial copies of ``x`` (same shape, in [0, 1], within ``eps`` of ``x``), in batches."""
        check_eps(eps)
        if eps == 0 or self.norm == "none":
            return x.clone()
        was_training = detector.training
        detector.eval()  # attack the deployed model: no dropout, frozen batch-norm statistics
        try:
            parts = [
                self.perturb_batch(detector, xb, yb, eps)
                for xb, yb in zip(x.split(self.config.batch_size), y.split(self.config.batch_size))
            ]
        finally:
            detector.train(was_training)
        return torch.cat(parts) if parts else x.clone()

    def perturb_batch(self, detector: Any, x: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
        raise NotImplementedError


def check_eps(eps: float) -> None:
    if not isinstance(eps, (int, float)) or eps != eps or eps < 0:
        raise BenchError(f"eps must be a number >= 0, got {eps!r}")
