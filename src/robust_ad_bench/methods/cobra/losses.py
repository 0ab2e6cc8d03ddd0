"""Contrastive losses over several views of the same instances.

Features come as ``views`` stacked chunks of M rows each (row r of every chunk is the same instance:
one image under one pseudo-anomaly group). Two rows are a positive pair when they are the same instance
in different chunks; every other row is a negative (including other normal images: the "spurious"
negatives of plain NT-Xent).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

MAX_NEG_LOG = 18.42  # -log(1e-8): caps the opposite-pair term, which is maximized and otherwise unbounded


def log_probabilities(features: torch.Tensor, temperature: float) -> torch.Tensor:
    """Row-wise log-softmax of cosine similarities / temperature, self-similarity left out (-inf)."""
    z = F.normalize(features, dim=1)
    logits = z @ z.T / temperature
    eye = torch.eye(len(z), dtype=torch.bool, device=z.device)
    return torch.log_softmax(logits.masked_fill(eye, float("-inf")), dim=1)


def positive_mask(views: int, instances: int, device: torch.device) -> torch.Tensor:
    """(views·M)² mask of positive pairs: same instance, different view."""
    ids = torch.arange(instances, device=device).repeat(views)
    same = ids[:, None] == ids[None, :]
    return same & ~torch.eye(len(ids), dtype=torch.bool, device=device)


def multi_positive_nt_xent(features: torch.Tensor, views: int, temperature: float = 0.5) -> torch.Tensor:
    """Per-row loss: sum over the row's positives of -log p(positive | row). Shape: (views·M,).

    With two views this is SimCLR's NT-Xent; with four it is the loss of the authors' code over clean
    view 1, clean view 2 and two adversarial copies.
    """
    instances = len(features) // views
    log_p = log_probabilities(features, temperature)
    positives = positive_mask(views, instances, features.device)
    return -(log_p.masked_fill(~positives, 0.0)).sum(1)


def pair_nt_xent(anchors: torch.Tensor, targets: torch.Tensor, temperature: float = 0.5) -> torch.Tensor:
    """Per-anchor InfoNCE of ``anchors[i]`` with ``targets[i]`` as its positive and the other targets as its
    negatives. Shape: (M,). The training attacks maximize or minimize it with the targets fixed.

    The authors' attack loss (``adv_training/attack.py`` with ``pairwise_similarity`` of
    ``adv_training/loss.py``) is NT-Xent over [anchors, targets] whose similarity columns are detached: each
    anchor's gradient also flows through its own row only, but that row's denominator holds the other anchors'
    current embeddings as (fixed) negatives besides the targets. Here they are left out: row i is a function
    of ``anchors[i]`` and the targets only, so a sample's attack does not depend on the other images of its
    batch and is not also pushed away from the other anchors' current positions.
    """
    a, t = F.normalize(anchors, dim=1), F.normalize(targets, dim=1)
    log_p = torch.log_softmax(a @ t.T / temperature, dim=1)
    return -log_p.diagonal()


def opposite_pair_term(features: torch.Tensor, groups: int, temperature: float = 0.5) -> torch.Tensor:
    """Mean -log p(own pseudo-anomaly | normal) over the normal rows of one view (rows in group-major order:
    B normals, then B per pseudo-anomaly group), capped. Subtracting it pushes each normal image away from
    its own pseudo-anomalies (the explicit opposite-pair term of the authors' code, which its training
    loop leaves off)."""
    batch = len(features) // groups
    log_p = log_probabilities(features, temperature)
    rows = torch.arange(batch, device=features.device)
    own = torch.stack([log_p[rows, rows + k * batch] for k in range(1, groups)])
    return (-own).clamp(max=MAX_NEG_LOG).mean()
