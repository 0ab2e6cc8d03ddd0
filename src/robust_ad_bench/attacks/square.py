"""Square Attack (Andriushchenko et al., ECCV 2020): score-based black-box random search, our own code.

It needs only forward passes of the score, so it is the suite's gradient-masking check: if it beats the
white-box attacks at the same eps, their gradients were misleading. Each query proposes, for every
image at once, a new square of ±eps values (one sign per channel) at a random place; a proposal is kept
when it raises the attack objective. The square's side shrinks on the paper's schedule.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from robust_ad_bench.core.attack import Attack, AttackConfig, attack_objective
from robust_ad_bench.core.errors import BenchError
from robust_ad_bench.core.registry import register_attack

# (fraction of a 10 000-query budget, divisor of p_init) as in the paper's Linf schedule
_P_SCHEDULE = ((0.001, 1), (0.005, 2), (0.02, 4), (0.05, 8), (0.1, 16), (0.2, 32), (0.4, 64), (0.6, 128),
               (0.8, 256))


def square_fraction(p_init: float, query: int, queries: int) -> float:
    """Fraction of the image a square covers at ``query`` of ``queries`` (the paper's halving schedule)."""
    progress = query / max(queries, 1)
    for limit, divisor in _P_SCHEDULE:
        if progress <= limit:
            return p_init / divisor
    return p_init / 512


def square_search(objective, x: torch.Tensor, eps: float, *, queries: int, p_init: float,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """Maximize ``objective`` (per sample, forward passes only) over the Linf eps-ball ∩ [0, 1]."""
    n, c, h, w = x.shape
    dev = x.device

    def rand_sign(*shape: int) -> torch.Tensor:
        return torch.randint(0, 2, shape, generator=generator).to(dev, x.dtype) * 2 - 1

    # vertical stripes of ±eps: the paper's initialization
    delta = eps * rand_sign(n, c, 1, w).expand(n, c, h, w)
    best = (x + delta).clamp(0, 1)
    with torch.no_grad():
        best_val = objective(best)
        rows, cols = torch.arange(h, device=dev), torch.arange(w, device=dev)
        for query in range(queries):
            side = max(1, min(h, w, round(math.sqrt(square_fraction(p_init, query, queries) * h * w))))
            top = torch.randint(0, h - side + 1, (n,), generator=generator).to(dev)
            left = torch.randint(0, w - side + 1, (n,), generator=generator).to(dev)
            in_rows = (rows >= top[:, None]) & (rows < top[:, None] + side)
            in_cols = (cols >= left[:, None]) & (cols < left[:, None] + side)
            window = (in_rows[:, None, :, None] & in_cols[:, None, None, :]).expand(n, c, h, w)
            proposal = torch.where(window, x + eps * rand_sign(n, c, 1, 1), best).clamp(0, 1)
            value = objective(proposal)
            better = value > best_val
            best = torch.where(better.view(-1, 1, 1, 1), proposal, best)
            best_val = torch.where(better, value, best_val)
    return best


@dataclass
class SquareConfig(AttackConfig):
    queries: int = 1000  # score evaluations per image
    p_init: float = 0.05  # initial fraction of the image covered by a square (the paper's Linf default)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.queries < 1 or not 0 < self.p_init <= 1:
            raise BenchError(f"square needs queries >= 1 and 0 < p_init <= 1, got {self.queries}, {self.p_init}")


@register_attack("square", description="Square Attack (Linf): score-based black-box random search, the "
                                       "gradient-masking check")
class Square(Attack):
    """Black-box Square Attack on the anomaly score (Linf)."""

    Config = SquareConfig
    norm = "linf"
    black_box = True  # not itself checked against a black-box attack
    masking_check = True  # the sanity checks' gradient-masking check for its norm

    def linf_radius(self, eps: float, x: torch.Tensor) -> float:
        return eps

    def perturb_batch(self, detector, x, y, eps):
        score = self.score_fn(detector)
        generator = torch.Generator().manual_seed(int(torch.randint(0, 2**31 - 1, (1,))))

        def objective(z: torch.Tensor) -> torch.Tensor:
            return attack_objective(score, z, y)

        return square_search(objective, x, self.linf_radius(eps, x), queries=self.config.queries,
                             p_init=self.config.p_init, generator=generator)


@register_attack("square-l2", description="Square Attack inside the L2 ball, searched over the inscribed "
                                          "Linf ball (eps/sqrt(d)): a valid but weaker black-box check")
class SquareL2(Square):
    """Square random search over the largest Linf ball inside the L2 eps-ball."""

    norm = "l2"

    def linf_radius(self, eps: float, x: torch.Tensor) -> float:
        return eps / math.sqrt(x[0].numel())
