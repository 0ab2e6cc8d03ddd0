"""BGAD's boundary-guided loss terms on per-dimension log-likelihoods (Yao et al., CVPR 2023), in the form of
the authors' code (xcyao00/BGAD, ``losses/losses.py``): the boundary is an order statistic of the batch's
normal log-likelihoods, and the asymmetric focal weights (``normal_fl_weighting``, ``abnormal_fl_weighting``)
weight both the likelihood term and the semi-push-pull terms."""

from __future__ import annotations

import torch
import torch.nn.functional as F

# the authors' focal-weighting constants (losses/losses.py): normal gamma 0.5, alpha 11.7, threshold -0.2;
# abnormal gamma 2, alpha 0.53, threshold -1 (on l / normalizer)
NORMAL_GAMMA, NORMAL_ALPHA, NORMAL_CUT = 0.5, 11.7, -0.2
ABNORMAL_GAMMA, ABNORMAL_ALPHA, ABNORMAL_CUT = 2.0, 0.53, -1.0
MIN_ABS = 1e-6  # |l / normalizer| floor in the abnormal weight's division (the authors divide unguarded)


def normal_focal_weights(l_normal: torch.Tensor, normalizer: float) -> torch.Tensor:
    """Per normal vector: 1 where l/normalizer > −0.2, else 11.7·(1 − e^{l/normalizer})^0.5·|l/normalizer|
    (hard normals, far below the typical likelihood, count more). Detached."""
    u = l_normal.detach() / normalizer
    focal = NORMAL_ALPHA * (1 - u.exp()).clamp_min(0).pow(NORMAL_GAMMA) * u.abs()
    return torch.where(u > NORMAL_CUT, torch.ones_like(u), focal)


def abnormal_focal_weights(l_anomalous: torch.Tensor, normalizer: float) -> torch.Tensor:
    """Per anomalous vector: 1 where l/normalizer ≤ −1, else 0.53·(1 + e^{l/normalizer})²/|l/normalizer|
    (anomalies that still look likely count more). Detached."""
    u = l_anomalous.detach() / normalizer
    focal = ABNORMAL_ALPHA * (1 + u.exp()).pow(ABNORMAL_GAMMA) / u.abs().clamp_min(MIN_ABS)
    return torch.where(u <= ABNORMAL_CUT, torch.ones_like(u), focal)


def normal_boundary(l_normal: torch.Tensor, beta: float, normalizer: float) -> torch.Tensor:
    """b_n: the normal log-likelihood of rank ⌊n·β⌋ (0-based, ascending) over ``normalizer``, detached (the
    authors' ``get_logp_boundary``: an order statistic, not an interpolated quantile)."""
    values = l_normal.detach()
    rank = min(int(len(values) * beta), len(values) - 1)
    return values.kthvalue(rank + 1).values / normalizer


def pull_term(l_normal: torch.Tensor, beta: float, normalizer: float,
              focal: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """``(pull, b_n)``: pull = mean(b_n − l/normalizer) over the normals at or below b_n (each weighted by its
    normal focal weight when ``focal``), b_n = ``normal_boundary``. The authors' unsupervised form adds it
    to the likelihood term (``calculate_bg_spp_loss_normal`` in ``engines/bgad_train_engine.py``); an empty
    set contributes 0."""
    ln = l_normal / normalizer
    b_n = normal_boundary(l_normal, beta, normalizer)
    below = ln <= b_n
    w_n = normal_focal_weights(l_normal, normalizer) if focal else torch.ones_like(ln)
    pull = ((b_n - ln) * w_n)[below].mean() if below.any() else ln.sum() * 0
    return pull, b_n


def semi_push_pull(l_normal: torch.Tensor, l_anomalous: torch.Tensor, beta: float, tau: float,
                   normalizer: float, focal: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(pull, push, b_n)``: the boundary-guided terms of BGAD on per-dimension log-likelihoods.

    b_n = ``normal_boundary`` (anomalies never move it); pull = ``pull_term``; push = mean(l/normalizer − b_a)
    over anomalies above b_a = b_n − τ. ``focal``: each term is weighted by the vector's focal weight. An
    empty set contributes 0 (in the authors' code its mean is NaN and its gradient empty, which is the same
    step).
    """
    pull, b_n = pull_term(l_normal, beta, normalizer, focal)
    la = l_anomalous / normalizer
    above = la >= b_n - tau
    w_a = abnormal_focal_weights(l_anomalous, normalizer) if focal else torch.ones_like(la)
    push = ((la - (b_n - tau)) * w_a)[above].mean() if above.any() else la.sum() * 0
    return pull, push, b_n


def pushed_weight_max(l_normal: torch.Tensor, l_anomalous: torch.Tensor, beta: float, tau: float,
                      normalizer: float) -> torch.Tensor:
    """The largest abnormal focal weight among the anomalous vectors the push term acts on (those above b_a);
    0 when there are none. Logged per run: the weight grows as 1/|l/normalizer| near 0."""
    b_a = normal_boundary(l_normal, beta, normalizer) - tau
    weights = abnormal_focal_weights(l_anomalous, normalizer)[l_anomalous.detach() / normalizer >= b_a]
    return weights.max() if len(weights) else weights.new_zeros(())


def likelihood_loss(l_normal: torch.Tensor, normalizer: float, focal: bool = False) -> torch.Tensor:
    """The maximum-likelihood term on normal vectors: mean −log σ(l), each vector weighted by its normal focal
    weight when ``focal`` (as in the authors' ``train_meta_epoch``)."""
    nll = -F.logsigmoid(l_normal)
    if focal:
        nll = nll * normal_focal_weights(l_normal, normalizer)
    return nll.mean()
