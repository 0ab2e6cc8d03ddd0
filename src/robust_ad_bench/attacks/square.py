"""Square Attack (Andriushchenko et al., ECCV 2020): score-based black-box random search, our own code.

It needs only forward passes of the score, so it is the suite's gradient-masking check (a stochastic
score is searched under the model's fixed draws, see ``core.attack``): if it beats the
white-box attacks at the same eps, their gradients were misleading. The square's side shrinks on the
paper's schedule; a proposal is kept when it raises the attack objective; every image is searched at once.

- Linf (``square``): each query sets a random square to ±eps (one sign per channel).
- L2 (``square-l2``, the paper's L2 version): the perturbation starts as a grid of centred, peaked
  ("pseudo-Gaussian") blocks of random signs with norm eps. Each query picks two squares W1 and W2, takes
  the mass the perturbation has in W1 ∪ W2 plus the budget the box constraint left unused, and puts it
  all in W1 as a fresh peaked block (two halves of opposite sign, randomly transposed) added to the old
  direction there; W2 is emptied. The proposal's norm is eps again before clipping to [0, 1], so the
  search walks on the L2 sphere rather than inside the Linf ball inscribed in it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from robust_ad_bench.core.attack import Attack, AttackConfig, Settle, attack_objective
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


class _Queries:
    """The objective of a search, queried only on the images not settled (``core.attack.Settle``; then
    called as ``objective(z, rows)``). Proposals are still drawn for every image, so the random numbers, and
    the search of every image still active, are those of the search without settling."""

    def __init__(self, objective, n: int, device: torch.device, settle: Settle | None) -> None:
        self.objective, self.settle = objective, settle
        self.rows = settle.active() if settle is not None else torch.arange(n, device=device)
        self.n, self.device = n, device

    def __call__(self, z: torch.Tensor) -> torch.Tensor:
        if self.settle is None:
            return self.objective(z)
        value = torch.full((self.n,), -torch.inf, device=self.device, dtype=z.dtype)
        if len(self.rows):
            value[self.rows] = self.objective(z[self.rows], self.rows)
        return value

    def update(self, best_val: torch.Tensor) -> None:
        if self.settle is not None and len(self.rows):
            keep = self.settle.update(best_val[self.rows], self.rows)
            if not bool(keep.all()):
                self.rows = self.rows[keep]


def square_search(objective, x: torch.Tensor, eps: float, *, queries: int, p_init: float,
                  generator: torch.Generator | None = None, settle: Settle | None = None) -> torch.Tensor:
    """Maximize ``objective`` (per sample, forward passes only) over the Linf eps-ball ∩ [0, 1]; with
    ``settle``, only on the images not settled (``_Queries``)."""
    n, c, h, w = x.shape
    dev = x.device
    objective = _Queries(objective, n, dev, settle)

    def rand_sign(*shape: int) -> torch.Tensor:
        return torch.randint(0, 2, shape, generator=generator).to(dev, x.dtype) * 2 - 1

    # vertical stripes of ±eps: the paper's initialization
    delta = eps * rand_sign(n, c, 1, w).expand(n, c, h, w)
    best = (x + delta).clamp(0, 1)
    with torch.no_grad():
        best_val = objective(best)
        objective.update(best_val)
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
            objective.update(best_val)
    return best


def _per_sample_norm(t: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
    return t.pow(2).sum(dims, keepdim=True).sqrt()


def peaked_block(rows: int, cols: int) -> torch.Tensor:
    """A rows×cols block whose values fall from the centre by rings: ring k (Chebyshev distance from the
    centre) gets sum_{j >= k} 1/(j + 1)^2. Unit L2 norm."""
    di = (torch.arange(rows) - (rows - 1) / 2).abs()
    dj = (torch.arange(cols) - (cols - 1) / 2).abs()
    ring = torch.maximum(di[:, None], dj[None, :]).floor().long()
    weights = 1.0 / (torch.arange(int(ring.max()) + 1) + 1.0) ** 2
    tail = weights.flip(0).cumsum(0).flip(0)  # tail[k] = sum_{j >= k} weights[j]
    block = tail[ring]
    return block / block.norm()


def split_block(side: int) -> torch.Tensor:
    """side×side: a peaked block on each half, the halves of opposite sign (one block when side is 1)."""
    if side < 2:
        return peaked_block(side, side)
    half = side // 2
    block = torch.cat([peaked_block(side, half), -peaked_block(side, side - half)], dim=1)
    return block / block.norm()


def place(block: torch.Tensor, top: torch.Tensor, left: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """N×1×H×W: ``block`` (s×s) placed at each image's (top, left), zero elsewhere."""
    side = block.shape[0]
    dev = top.device
    rel_r = torch.arange(h, device=dev)[None, :] - top[:, None]  # N × H
    rel_c = torch.arange(w, device=dev)[None, :] - left[:, None]  # N × W
    inside = ((rel_r >= 0) & (rel_r < side))[:, :, None] & ((rel_c >= 0) & (rel_c < side))[:, None, :]
    values = block.to(dev)[rel_r.clamp(0, side - 1)[:, :, None], rel_c.clamp(0, side - 1)[:, None, :]]
    return (values * inside).unsqueeze(1)


def square_search_l2(objective, x: torch.Tensor, eps: float, *, queries: int, p_init: float,
                     generator: torch.Generator | None = None, settle: Settle | None = None) -> torch.Tensor:
    """Maximize ``objective`` (per sample, forward passes only) over the L2 eps-ball ∩ [0, 1]; with
    ``settle``, only on the images not settled (``_Queries``)."""
    n, c, h, w = x.shape
    dev, dims = x.device, (1, 2, 3)
    objective = _Queries(objective, n, dev, settle)

    def rand_sign(*shape: int) -> torch.Tensor:
        return torch.randint(0, 2, shape, generator=generator).to(dev, x.dtype) * 2 - 1

    def rand_pos(limit: int) -> torch.Tensor:
        return torch.randint(0, limit, (n,), generator=generator).to(dev)

    # initialization: tiles of peaked blocks with a random sign per image, channel and tile
    tile = max(1, min(h, w) // 5)
    tiles_h, tiles_w = -(-h // tile), -(-w // tile)
    signs = rand_sign(n, c, tiles_h, tiles_w).repeat_interleave(tile, 2).repeat_interleave(tile, 3)
    pattern = peaked_block(tile, tile).to(dev, x.dtype).repeat(tiles_h, tiles_w)
    delta = (signs * pattern)[:, :, :h, :w]
    delta = delta * eps / _per_sample_norm(delta, dims).clamp_min(1e-12)
    best = (x + delta).clamp(0, 1)
    with torch.no_grad():
        best_val = objective(best)
        objective.update(best_val)
        for query in range(queries):
            side = round(math.sqrt(square_fraction(p_init, query, queries) * h * w))
            side = max(1, min(h, w, max(side, 3)))
            block = split_block(side).to(x.dtype)
            delta = best - x
            top1, left1 = rand_pos(h - side + 1), rand_pos(w - side + 1)
            top2, left2 = rand_pos(h - side + 1), rand_pos(w - side + 1)
            ones = torch.ones(side, side, dtype=x.dtype)
            in1, in2 = place(ones, top1, left1, h, w), place(ones, top2, left2, h, w)  # N×1×H×W masks
            union = torch.maximum(in1, in2)
            # the mass in W1 ∪ W2 (per channel) plus the budget left unused, all moved into W1
            unused = (eps**2 - delta.pow(2).sum(dims, keepdim=True)).clamp_min(0) / c
            budget = (unused + (delta * union).pow(2).sum((2, 3), keepdim=True)).sqrt()  # N×C×1×1
            transposed = torch.rand(n, generator=generator).to(dev) < 0.5
            fresh = torch.where(transposed.view(-1, 1, 1, 1), place(block.T, top1, left1, h, w),
                                place(block, top1, left1, h, w))  # N×1×H×W
            old = delta * in1
            direction = fresh * rand_sign(n, c, 1, 1) + old / _per_sample_norm(old, (2, 3)).clamp_min(1e-12)
            direction = direction / _per_sample_norm(direction, (2, 3)).clamp_min(1e-12)
            proposal = (x + delta * (1 - union) + direction * budget).clamp(0, 1)
            value = objective(proposal)
            better = value > best_val
            best = torch.where(better.view(-1, 1, 1, 1), proposal, best)
            best_val = torch.where(better, value, best_val)
            objective.update(best_val)
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
    iteration_params = ("queries",)
    search = staticmethod(square_search)
    # 5: settled images are not searched (deterministic detectors; rank metrics unchanged)
    # 4: a stochastic score is searched under fixed draws; the clean image is a candidate
    version = "5"

    def perturb_batch(self, detector, x, y, eps):
        # a stochastic score under the model's fixed draws: a deterministic slice the random search can
        # climb (with fresh draws per query it keeps whichever proposal drew lucky noise)
        score = self.fixed(detector, self.score_fn(detector))
        generator = torch.Generator().manual_seed(int(torch.randint(0, 2**31 - 1, (1,))))

        def objective(z: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
            return attack_objective(score, z, y if rows is None else y[rows])

        settle = None if getattr(detector, "stochastic", False) else self.settle()  # deterministic scores only
        return self.search(objective, x, eps, queries=self.config.queries, p_init=self.config.p_init,
                           generator=generator, settle=settle)


@dataclass
class SquareL2Config(SquareConfig):
    p_init: float = 0.1  # the paper's L2 default


@register_attack("square-l2", description="Square Attack (L2, the paper's L2 version): score-based black-box "
                                          "random search on the L2 sphere, the gradient-masking check")
class SquareL2(Square):
    """Black-box Square Attack on the anomaly score (L2): mass moved between squares on the eps-sphere."""

    Config = SquareL2Config
    norm = "l2"
    # 6: settled images are not searched; 5: fixed draws, clean candidate (4: the paper's L2 search, 3 searched
    # the inscribed Linf ball)
    version = "6"
    search = staticmethod(square_search_l2)
