"""Adaptive attacks chosen from a detector's flags, with no method-specific code.

- ``stochastic`` scores: Expectation over Transformation (EOT): the attacked score is the mean of
  ``eot_samples`` independent draws, so its gradient is the mean of the draws' gradients (Athalye et al.,
  2018). The draws are one batched call on a repeated batch.
- ``purifies`` detectors split their score into ``purify(x)`` and ``score_purified(x_purified)``. With
  ``gradient="full"`` the attack differentiates through the whole purify-then-score graph (``score``
  itself); with ``"bpda"`` the forward pass uses the true purifier and the backward pass the detector's
  ``bpda_surrogate`` (identity unless the method supplies a differentiable approximation). ``"auto"``
  picks BPDA only when the detector says its purifier is not differentiable
  (``differentiable_purifier = False``).
- Scores with their own inner gradient step (SLA²P-like) need nothing here: the method computes that step
  with ``create_graph=True`` when its input requires grad, and every attack differentiates through it.
- Surrogates (Tramer et al., 2020): a detector whose score saturates, takes a max or clips names smooth
  stand-ins in ``surrogates()``; ``attack_score(..., surrogate=name)`` differentiates one of them instead of
  the score (EOT still applies; BPDA does not: a surrogate is a whole score, purifier included).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

ScoreFn = Callable[[torch.Tensor], torch.Tensor]
GRADIENT_MODES = ("auto", "full", "bpda")


def gradient_mode(detector: Any, requested: str) -> str:
    """The gradient path actually used: ``full`` or ``bpda``."""
    if not getattr(detector, "purifies", False):
        return "full"
    if requested == "auto":
        return "full" if getattr(detector, "differentiable_purifier", True) else "bpda"
    return requested


def eot_draws(detector: Any, eot_samples: int) -> int:
    return eot_samples if getattr(detector, "stochastic", False) else 1


def bpda_score(detector: Any) -> ScoreFn:
    """Score whose forward pass purifies for real and whose backward pass goes through the surrogate."""

    def score(x: torch.Tensor) -> torch.Tensor:
        surrogate = detector.bpda_surrogate(x)
        with torch.no_grad():
            purified = detector.purify(x)
        # straight-through: value of ``purified``, gradient of ``surrogate``
        return detector.score_purified(surrogate + (purified - surrogate).detach())

    return score


def expectation(score: ScoreFn, draws: int) -> ScoreFn:
    """Mean of ``draws`` independent evaluations of a stochastic score, in one batched call."""
    if draws == 1:
        return score

    def mean_score(x: torch.Tensor) -> torch.Tensor:
        repeated = x.repeat(draws, *([1] * (x.dim() - 1)))
        return score(repeated).view(draws, len(x)).mean(0)

    return mean_score


def fixed_draws(score: ScoreFn, seed: int) -> ScoreFn:
    """``score`` evaluated under the same random draws on every call (common random numbers): the torch
    generators are seeded with ``seed`` for the call and restored after it, so a stochastic score becomes a
    deterministic slice of itself. Two candidates scored so are compared like with like (the same draws for
    the same batch position), and a black-box search can climb the slice."""

    def fixed(x: torch.Tensor) -> torch.Tensor:
        with torch.random.fork_rng(devices=[x.device] if x.device.type == "cuda" else []):
            torch.manual_seed(seed)
            return score(x)

    return fixed


def surrogate_names(detector: Any) -> list[str]:
    """Names of the smooth surrogate objectives the detector declares (none for most)."""
    declared = getattr(detector, "surrogates", None)
    return list(declared()) if callable(declared) else []


def attack_score(detector: Any, config: Any, surrogate: str = "") -> ScoreFn:
    """The score an attack optimizes, adapted to the detector's flags (see the module docstring); with
    ``surrogate`` the detector's surrogate of that name instead of its score."""
    score: ScoreFn = detector.score
    if surrogate:
        score = detector.surrogates()[surrogate]
    elif gradient_mode(detector, config.gradient) == "bpda":
        score = bpda_score(detector)
    return expectation(score, eot_draws(detector, config.eot_samples))


def describe_adaptive(detector: Any, config: Any) -> str:
    parts = []
    draws = eot_draws(detector, config.eot_samples)
    if draws > 1:
        parts.append(f"eot={draws}")
    if getattr(detector, "purifies", False):
        parts.append(gradient_mode(detector, config.gradient))
    return ",".join(parts)
