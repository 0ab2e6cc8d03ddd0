"""A conditional normalizing flow over feature vectors: affine coupling blocks with soft clamping.

The math of FrEIA's ``AllInOneBlock`` (the authors' block), written here: n of our blocks are n + 1 of
FrEIA's with the weights carried over (``tests/test_bgad_libraries.py``, equal to 1e-10, the same speed);
kept because our initialization (the identity flow) and stack order differ from FrEIA's, so taking its block
would change the trained results. Each block: a learnable per-dimension affine map (ActNorm-like), a fixed
random rotation (a "soft permutation", log-det 0), then an affine coupling whose subnet sees one half of the
vector and the condition (a 2-D positional encoding) and scales/shifts the other half.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

LOG_2PI = math.log(2 * math.pi)


def positional_encoding(dim: int, height: int, width: int) -> torch.Tensor:
    """2-D sinusoidal encoding, ``dim×height×width``: the first half encodes the column, the second the row."""
    if dim % 4:
        raise ValueError(f"positional encoding size must be a multiple of 4, got {dim}")
    quarter = dim // 4
    freqs = torch.exp(-math.log(10000.0) * torch.arange(quarter, dtype=torch.float32) / quarter)
    cols = torch.arange(width, dtype=torch.float32)[:, None] * freqs  # width × quarter
    rows = torch.arange(height, dtype=torch.float32)[:, None] * freqs
    col_enc = torch.cat([cols.sin(), cols.cos()], 1).T[:, None, :].expand(2 * quarter, height, width)
    row_enc = torch.cat([rows.sin(), rows.cos()], 1).T[:, :, None].expand(2 * quarter, height, width)
    return torch.cat([col_enc, row_enc], 0).contiguous()


class CouplingBlock(nn.Module):
    """Global affine, fixed rotation, then an affine coupling conditioned on ``cond``."""

    def __init__(self, dim: int, cond_dim: int, clamp: float, generator: torch.Generator) -> None:
        super().__init__()
        if dim < 2:
            raise ValueError(f"a coupling block needs at least 2 dimensions, got {dim}")
        self.clamp = clamp
        self.split = dim // 2
        rest = dim - self.split
        hidden = 2 * (self.split + cond_dim)
        self.subnet = nn.Sequential(nn.Linear(self.split + cond_dim, hidden), nn.ReLU(), nn.Linear(hidden, 2 * rest))
        # start as the identity coupling: a flow that begins near a standard Gaussian trains stably
        nn.init.zeros_(self.subnet[-1].weight)
        nn.init.zeros_(self.subnet[-1].bias)
        # softplus(raw) is the scale; raw = log(e - 1) gives scale 1
        self.raw_scale = nn.Parameter(torch.full((dim,), math.log(math.e - 1)))
        self.shift = nn.Parameter(torch.zeros(dim))
        rotation, _ = torch.linalg.qr(torch.randn(dim, dim, generator=generator))
        self.register_buffer("rotation", rotation)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(z, log|det J|)`` for ``x`` N×dim and ``cond`` N×cond_dim."""
        scale = F.softplus(self.raw_scale)
        x = (x * scale + self.shift) @ self.rotation
        log_det = scale.log().sum().expand(len(x))
        x1, x2 = x[:, : self.split], x[:, self.split:]
        s, t = self.subnet(torch.cat([x1, cond], 1)).chunk(2, 1)
        s = self.clamp * torch.tanh(s / self.clamp)  # soft clamp keeps exp(s) in [e^-clamp, e^clamp]
        return torch.cat([x1, x2 * s.exp() + t], 1), log_det + s.sum(1)


class ConditionalFlow(nn.Module):
    """A stack of coupling blocks; ``log_prob`` is the exact log-density of x under the flow."""

    def __init__(self, dim: int, cond_dim: int, blocks: int = 8, clamp: float = 1.9, seed: int = 0) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.dim = dim
        self.blocks = nn.ModuleList(CouplingBlock(dim, cond_dim, clamp, generator) for _ in range(blocks))

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        log_det = torch.zeros(len(x), device=x.device, dtype=x.dtype)
        for block in self.blocks:
            x, ld = block(x, cond)
            log_det = log_det + ld
        return x, log_det

    def log_prob(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """log p(x) = log N(f(x); 0, I) + log|det ∂f/∂x|, one value per row."""
        z, log_det = self(x, cond)
        return -0.5 * (z.pow(2).sum(1) + self.dim * LOG_2PI) + log_det
