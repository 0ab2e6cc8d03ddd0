"""BGAD's hand-written flow and augmentations beside the libraries the authors' code builds on (kept: see
CONTRIBUTING.md, "Hand-written pieces and the libraries beside them").

The flow: our stack of n blocks (global affine, fixed rotation, affine coupling) is exactly FrEIA's
``AllInOneBlock`` (affine coupling, then softplus global affine and a fixed "soft" permutation), the authors'
block, stacked n + 1 times with the weights carried over: the first FrEIA block's coupling is the identity
(its subnet zero), the last one's global affine and permutation are the identity, and our parametrizations
(log-scale clamp·tanh(s/clamp), softplus scale) are FrEIA's (clamp·tanh(0.1·s), 0.1·softplus_β=0.5) after
rescaling the subnet's last layer and the scale parameter. Equal outputs and log-determinants (to 1e-10, relative) show
that our block computes the authors' block.

The augmentations: the geometric ops are torchvision.transforms.v2's rotations and flips, image and mask.
"""

from __future__ import annotations

import math

import pytest
import torch
from FrEIA.modules import AllInOneBlock
from torch import nn
from torchvision.transforms.v2 import functional as TF

from robust_ad_bench.methods.bgad import augment
from robust_ad_bench.methods.bgad.flow import LOG_2PI, ConditionalFlow


class FreiaTwin(nn.Module):
    """n + 1 FrEIA ``AllInOneBlock`` s computing the same function as a ``ConditionalFlow`` of n blocks."""

    def __init__(self, flow: ConditionalFlow) -> None:
        super().__init__()
        first = flow.blocks[0]
        dim, cond_dim = flow.dim, first.subnet[0].in_features - first.split
        if dim % 2:
            raise ValueError("FrEIA's block keeps the larger half of an odd vector fixed, ours the smaller one")
        self.dim = dim

        def subnet(c_in: int, c_out: int) -> nn.Module:
            hidden = first.subnet[0].out_features
            return nn.Sequential(nn.Linear(c_in, hidden), nn.ReLU(), nn.Linear(hidden, c_out))

        self.blocks = nn.ModuleList(
            AllInOneBlock([(dim,)], [(cond_dim,)], subnet_constructor=subnet, affine_clamping=first.clamp,
                          global_affine_type="SOFTPLUS", permute_soft=True)
            for _ in range(len(flow.blocks) + 1))
        self.to(first.rotation.dtype)
        with torch.no_grad():
            for k, twin in enumerate(self.blocks):
                if k == 0:  # identity coupling: a = 0 → exp(0)·x + 0
                    for p in twin.subnet.parameters():
                        p.zero_()
                else:
                    ours = flow.blocks[k - 1]
                    twin.subnet[0].load_state_dict(ours.subnet[0].state_dict())
                    half = dim // 2  # FrEIA: a·0.1, log-scale clamp·tanh(a_s), shift a_t; ours: clamp·tanh(s/clamp), t
                    factor = torch.tensor([10 / ours.clamp] * half + [10.0] * half, dtype=ours.rotation.dtype)
                    twin.subnet[2].weight.copy_(ours.subnet[2].weight * factor[:, None])
                    twin.subnet[2].bias.copy_(ours.subnet[2].bias * factor)
                if k < len(flow.blocks):
                    ours = flow.blocks[k]
                    scale = nn.functional.softplus(ours.raw_scale)
                    # 0.1·softplus_β=0.5(g) = scale  ⇔  g = 2·log(exp(5·scale) − 1)
                    twin.global_scale.copy_((2 * torch.log(torch.expm1(5 * scale)))[None])
                    twin.global_offset.copy_(ours.shift[None])
                    twin.w_perm.copy_(ours.rotation.T)  # FrEIA: F.linear(x, W) = x Wᵀ; ours: x R
                    twin.w_perm_inv.copy_(ours.rotation)
                else:  # identity global affine and permutation
                    twin.global_scale.fill_(2 * math.log(math.expm1(5.0)))
                    twin.global_offset.zero_()
                    twin.w_perm.copy_(torch.eye(dim))
                    twin.w_perm_inv.copy_(torch.eye(dim))

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        log_det = torch.zeros(len(x), dtype=x.dtype)
        for block in self.blocks:
            (x,), ld = block([x], c=[cond])
            log_det = log_det + ld
        return x, log_det

    def log_prob(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        z, log_det = self(x, cond)
        return -0.5 * (z.pow(2).sum(1) + self.dim * LOG_2PI) + log_det


def freia_twin(flow: ConditionalFlow) -> FreiaTwin:
    return FreiaTwin(flow)


def _trained_looking_flow(dim: int, cond_dim: int, blocks: int, seed: int) -> ConditionalFlow:
    torch.manual_seed(seed)
    flow = ConditionalFlow(dim, cond_dim, blocks=blocks, clamp=1.9, seed=seed).double()
    with torch.no_grad():  # leave the identity initialization: every parameter matters
        for p in flow.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return flow


@pytest.mark.parametrize("dim,cond_dim,blocks", [(4, 3, 1), (6, 4, 3), (16, 8, 8)])
def test_our_flow_is_freias_all_in_one_block(dim, cond_dim, blocks):
    flow = _trained_looking_flow(dim, cond_dim, blocks, seed=dim)
    twin = FreiaTwin(flow)
    x, cond = torch.randn(64, dim, dtype=torch.float64), torch.randn(64, cond_dim, dtype=torch.float64)
    z, log_det = flow(x, cond)
    z_twin, log_det_twin = twin(x, cond)
    torch.testing.assert_close(z, z_twin, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(log_det, log_det_twin, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(flow.log_prob(x, cond), twin.log_prob(x, cond), rtol=1e-10, atol=1e-10)
    # the gradient an attack follows is the same too
    xa, xb = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    ga, = torch.autograd.grad(flow.log_prob(xa, cond).sum(), xa)
    gb, = torch.autograd.grad(twin.log_prob(xb, cond).sum(), xb)
    torch.testing.assert_close(ga, gb, rtol=1e-9, atol=1e-9)


def test_the_freia_comparison_can_fail():
    """Doubles of our block that differ from the authors' in one detail each (the clamp's form, the scale's
    activation, the rotation's side) are told apart from FrEIA's block."""
    flow = _trained_looking_flow(6, 4, 2, seed=1)
    x, cond = torch.randn(32, 6, dtype=torch.float64), torch.randn(32, 4, dtype=torch.float64)
    reference = FreiaTwin(flow).log_prob(x, cond)
    for change in ("clamp", "scale", "rotation"):
        double = FreiaTwin(flow)
        with torch.no_grad():
            if change == "clamp":  # clamp·tanh(s) instead of our clamp·tanh(s/clamp): the log-scale rows × clamp
                double.blocks[1].subnet[2].weight[:3].mul_(1.9)
                double.blocks[1].subnet[2].bias[:3].mul_(1.9)
            elif change == "scale":  # softplus with β = 1 instead of FrEIA's 0.1·softplus_β=0.5
                double.blocks[0].global_scale.copy_(2 * torch.log(torch.expm1(5 * double.blocks[0].global_scale)))
            else:
                double.blocks[0].w_perm.copy_(double.blocks[0].w_perm.T.clone())
        assert (double.log_prob(x, cond) - reference).abs().max() > 1e-3, change


def _which(out: torch.Tensor, candidates: list[torch.Tensor]) -> int:
    """The index of the candidate ``out`` equals exactly (−1: none)."""
    return next((i for i, c in enumerate(candidates) if torch.equal(out, c)), -1)


def test_geometric_augmentations_are_torchvisions():
    """Quarter turns, flips and the transpose move image and mask as torchvision.transforms.v2 does."""
    g = torch.Generator().manual_seed(0)
    images, masks = torch.rand(48, 3, 8, 8), (torch.rand(48, 1, 8, 8) > 0.7).float()
    active = torch.ones(48, dtype=torch.bool)
    turns = [lambda t, k=k: TF.rotate(t, 90.0 * k) for k in range(4)]  # v2: counter-clockwise degrees
    flips = [TF.vertical_flip, TF.horizontal_flip, lambda t: TF.vertical_flip(TF.horizontal_flip(t))]
    for op, library, kinds in ((augment._quarter_turns, turns, 4), (augment._flip, flips, 3),
                               (augment._transpose, [lambda t: TF.vertical_flip(TF.rotate(t, 90.0))], 1)):
        out_i, out_m = op(images, masks, active, g)
        seen = set()
        for i in range(len(images)):
            kind = _which(out_i[i], [f(images[i]) for f in library])
            assert kind >= 0, (op.__name__, i)
            assert torch.equal(out_m[i], library[kind](masks[i])), (op.__name__, i)
            seen.add(kind)
        assert len(seen) == kinds, op.__name__  # every variant drawn
    # inactive images stay as they are; a double (a clockwise turn) is not torchvision's counter-clockwise one
    out_i, _ = augment._quarter_turns(images, masks, torch.zeros(48, dtype=torch.bool), g)
    assert torch.equal(out_i, images)
    assert not torch.equal(images[0].rot90(-1, (-2, -1)), TF.rotate(images[0], 90.0))


@pytest.mark.parametrize("op", augment.OPS, ids=[op.__name__ for op in augment.OPS])
def test_each_op_works_on_the_firing_images_only_and_as_on_the_whole_batch(op):
    """The ops compute on the images whose op fires (for speed): those come out as when every image fires, the
    others untouched, and the random stream is the same whichever fire."""
    images, masks = torch.rand(12, 3, 16, 16), (torch.rand(12, 1, 16, 16) > 0.7).float()
    some = torch.arange(12) % 3 == 0
    all_i, all_m = op(images, masks, torch.ones(12, dtype=torch.bool), torch.Generator().manual_seed(5))
    g = torch.Generator().manual_seed(5)
    some_i, some_m = op(images, masks, some, g)
    torch.testing.assert_close(some_i[some], all_i[some], rtol=0, atol=0)
    torch.testing.assert_close(some_m[some], all_m[some], rtol=0, atol=0)
    assert torch.equal(some_i[~some], images[~some]) and torch.equal(some_m[~some], masks[~some])
    after = torch.rand(1, generator=g)
    g_all = torch.Generator().manual_seed(5)
    op(images, masks, torch.zeros(12, dtype=torch.bool), g_all)
    assert torch.equal(after, torch.rand(1, generator=g_all))
