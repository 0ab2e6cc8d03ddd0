"""Smooth pieces for the surrogate objectives methods declare (``Detector.surrogates``, Tramer et al. 2020).

A score that is the max of a map, or passes through ``exp`` or a clip, has gradients that vanish or
touch a single pixel; attacks also follow these smooth stand-ins and judge every candidate on the true
score, so a surrogate can only add strength.
"""

from __future__ import annotations

import torch


def smooth_max(values: torch.Tensor, temperature: float | torch.Tensor = 1.0) -> torch.Tensor:
    """Per sample, ``T · logsumexp(v / T)`` over all but the first dimension: a max whose gradient reaches
    every entry near the top."""
    flat = values.flatten(1)
    return temperature * torch.logsumexp(flat / temperature, dim=1)


def relative_smooth_max(values: torch.Tensor, ratio: float = 20.0) -> torch.Tensor:
    """``smooth_max`` at a temperature of 1/``ratio`` of each sample's largest |value| (detached): the
    same softness whatever the map's units."""
    flat = values.flatten(1)
    scale = flat.detach().abs().amax(1, keepdim=True).clamp_min(1e-12) / ratio
    return scale[:, 0] * torch.logsumexp(flat / scale, dim=1)


def top_fraction_mean(values: torch.Tensor, fraction: float = 0.05) -> torch.Tensor:
    """Per sample, the mean of the largest ``fraction`` of the entries (at least one)."""
    flat = values.flatten(1)
    k = max(1, round(fraction * flat.shape[1]))
    return flat.topk(k, dim=1).values.mean(1)


def straight_through_clamp(x: torch.Tensor, low: float, high: float) -> torch.Tensor:
    """The value of ``x.clamp(low, high)`` with the gradient of the identity (no zero gradient where the
    clamp saturates)."""
    return x + (x.clamp(low, high) - x).detach()
