"""The Attack contract: ``perturb(detector, x, y, eps) -> x_adv``.

``y`` is 0 for normal and 1 for anomaly. The attacker wants the detector to be wrong: raise the score of
normal images and lower the score of anomalies, i.e. maximize ``score(x) * (1 - 2y)`` inside the eps-ball
and [0, 1]. An attack knows a detector only through ``score`` and its class flags; the adaptive parts
(EOT for ``stochastic`` scores, BPDA for non-differentiable purifiers) come from ``core.adaptive``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from robust_ad_bench.core.adaptive import GRADIENT_MODES, ScoreFn, attack_score, describe_adaptive, eot_draws
from robust_ad_bench.core.errors import BenchError, unknown_choice
from robust_ad_bench.core.params import build_config

NORMS = ("linf", "l2", "none")
TARGETS = ("both", "normal", "anomaly")  # which test images the attacker perturbs


@dataclass
class AttackConfig:
    batch_size: int = 256  # images per score call, EOT copies included (256 // 8 = 32 stochastic images)
    target: str = "both"  # both (the protocol's default), normal (only normals), anomaly (only anomalies)
    eot_samples: int = 8  # draws averaged per gradient when the detector is ``stochastic`` (EOT)
    gradient: str = "auto"  # auto, full (through the purifier), bpda (identity/surrogate backward)

    def __post_init__(self) -> None:
        if self.target not in TARGETS:
            raise unknown_choice("attack target", self.target, TARGETS)
        if self.gradient not in GRADIENT_MODES:
            raise unknown_choice("attack gradient mode", self.gradient, GRADIENT_MODES)
        if self.eot_samples < 1:
            raise BenchError(f"eot_samples must be >= 1, got {self.eot_samples}")
        if self.batch_size < 1:
            raise BenchError(f"batch_size must be >= 1, got {self.batch_size}")


def attack_objective(score: ScoreFn | Any, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-sample value the attacker maximizes: the score of normals, minus the score of anomalies.

    ``score`` is a score function or a detector (then its plain ``score`` is used)."""
    fn = score.score if hasattr(score, "score") else score
    return fn(x) * (1.0 - 2.0 * y.to(x.dtype))


class Attack:
    """Base class of attacks. Register subclasses with ``@register_attack``."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    version: ClassVar[str] = "3"  # bump when a change alters results: part of the job key
    norm: ClassVar[str] = "linf"  # threat model: "linf", "l2", or "none" (clean)
    Config: ClassVar[type] = AttackConfig
    black_box: ClassVar[bool] = False  # uses forward passes only
    masking_check: ClassVar[bool] = False  # the black-box attack the sanity checks run for its norm
    hidden: ClassVar[bool] = False  # left out of ``--attacks all`` and ``list`` (test doubles)

    def __init__(self, config: Any = None) -> None:
        if config is None or isinstance(config, dict):
            config = build_config(self.Config, config, f"attack '{self.name}'")
        self.config = config

    def calibrate(self, detector: Any, train_images: torch.Tensor) -> None:
        """Called once before ``perturb`` with the normal training images (e.g. for a threshold)."""

    def describe(self, detector: Any) -> str:
        """How the detector was attacked (stored beside the result), e.g. ``eot=8``."""
        parts = [describe_adaptive(detector, self.config)] if self.norm != "none" else []
        if self.config.target != "both":
            parts.append(f"target={self.config.target}")
        return ",".join(p for p in parts if p)

    def score_fn(self, detector: Any) -> ScoreFn:
        """The (adaptive) score the attack differentiates: EOT and BPDA according to the flags."""
        return attack_score(detector, self.config)

    def perturb(self, detector: Any, x: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
        """Adversarial copies of ``x`` (same shape, in [0, 1], within ``eps`` of ``x``), in batches.
        Images outside the attack target are returned unchanged."""
        check_eps(eps)
        if eps == 0 or self.norm == "none":
            return x.clone()
        chosen = torch.ones_like(y, dtype=torch.bool)
        if self.config.target != "both":
            chosen = y == (1 if self.config.target == "anomaly" else 0)
        x_adv = x.clone()
        idx = chosen.nonzero().flatten()
        was_training = detector.training
        detector.eval()  # attack the deployed model: no dropout, frozen batch-norm statistics
        # A stochastic detector is scored on eot_samples copies of each image in one call: the batch
        # bounds the images per call, so the memory of an attack does not grow with the EOT draws.
        per_batch = max(1, self.config.batch_size // eot_draws(detector, self.config.eot_samples))
        try:
            for part in idx.split(per_batch):
                x_adv[part] = self.perturb_batch(detector, x[part], y[part], eps).detach()
        finally:
            detector.train(was_training)
        return x_adv

    def perturb_batch(self, detector: Any, x: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
        raise NotImplementedError


def check_eps(eps: float) -> None:
    if not isinstance(eps, (int, float)) or eps != eps or eps < 0:
        raise BenchError(f"eps must be a number >= 0, got {eps!r}")
