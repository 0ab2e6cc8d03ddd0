"""BGAD's boundary-guided loss terms on per-dimension log-likelihoods (Yao et al., CVPR 2023)."""

from __future__ import annotations

import torch


def semi_push_pull(l_normal: torch.Tensor, l_anomalous: torch.Tensor, beta: float, tau: float,
                   normalizer: float, gamma: float = 0.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(pull, push, b_n)``: the boundary-guided terms of BGAD on per-dimension log-likelihoods.

    b_n is the β-quantile of the normal ``l / normalizer`` (detached: the boundary is a target, and
    anomalies never enter it); pull = mean(b_n − l) over normals below b_n; push = mean(l − b_a) over
    anomalies above b_a = b_n − τ. An empty set contributes 0. ``gamma`` > 0: focal weights (our form)
    (1 − σ(l))^γ for normals and σ(l)^γ for anomalies, so the hardest vectors count most.
    """
    ln, la = l_normal / normalizer, l_anomalous / normalizer
    b_n = torch.quantile(ln.detach(), beta)
    b_a = b_n - tau
    below, above = ln <= b_n, la >= b_a
    w_n = (1 - torch.sigmoid(l_normal)).pow(gamma) if gamma > 0 else torch.ones_like(ln)
    w_a = torch.sigmoid(l_anomalous).pow(gamma) if gamma > 0 else torch.ones_like(la)
    zero = ln.sum() * 0
    pull = ((b_n - ln) * w_n)[below].mean() if below.any() else zero
    push = ((la - b_a) * w_a)[above].mean() if above.any() else zero
    return pull, push, b_n
