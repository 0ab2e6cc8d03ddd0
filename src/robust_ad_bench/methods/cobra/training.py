"""Optimizers of the contrastive methods: Adam, or LARS (SGD whose step per layer is scaled by the ratio of
weight norm to gradient norm, as in SimCLR/CSI/COBRA), both with linear warm-up and cosine decay."""

from __future__ import annotations

import math

import torch
from torch import nn

OPTIMIZERS = ("adam", "lars")
LARS_TRUST = 1e-3  # trust coefficient of the paper code's LARS wrapper
LARS_MOMENTUM = 0.9


class LARS(torch.optim.SGD):
    """SGD with momentum where each weight matrix's gradient (with weight decay) is rescaled by
    ``trust·‖w‖ / ‖g + wd·w‖``; biases and batch-norm parameters are left unscaled."""

    def __init__(self, params, lr: float, weight_decay: float) -> None:
        super().__init__(params, lr=lr, momentum=LARS_MOMENTUM, weight_decay=0.0)
        self.lars_weight_decay = weight_decay

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[override]
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None or p.dim() < 2:
                    continue
                g = p.grad.add(p, alpha=self.lars_weight_decay)
                w_norm, g_norm = p.norm(), g.norm()
                trust = torch.where((w_norm > 0) & (g_norm > 0), LARS_TRUST * w_norm / g_norm,
                                    torch.ones_like(w_norm))
                p.grad.copy_(g * trust)
        return super().step(closure)


def make_optimizer(kind: str, model: nn.Module, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    if kind == "lars":
        return LARS(model.parameters(), lr=lr, weight_decay=weight_decay)
    return torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)


def set_learning_rate(optimizer: torch.optim.Optimizer, base_lr: float, step: int, total: int,
                      warmup: int) -> None:
    """Linear warm-up over ``warmup`` steps, then cosine decay to zero at ``total``."""
    if step < warmup:
        lr = base_lr * (step + 1) / warmup
    else:
        progress = (step - warmup) / max(total - warmup, 1)
        lr = base_lr * 0.5 * (1 + math.cos(math.pi * progress))
    for group in optimizer.param_groups:
        group["lr"] = lr
