"""Choosing AdvRAD's noise step k without test data.

The paper's k was not found. AdvRAD's argument for k: the diffusion noise at step k must wash out an
eps-sized perturbation while the reconstruction keeps normal detail; the smaller k, the more detail is kept.
We therefore take **the k on a grid whose reconstruction of held-out training normals keeps the smallest share
of the worst eps-sized perturbation we find**:

    transmission(k) = median over held-out normals x of E‖r_k(x + δ) − r_k(x)‖ / E‖δ‖

where r_k is AdvRAD's reconstruction (noise to k, one-shot denoise), the expectations run over ``DRAWS``
noise draws (the same for x and x + δ), and δ (‖δ‖∞ ≤ eps, eps the dataset's largest default Linf budget,
x + δ clipped to [0, 1]) is found by ``STEPS`` steps of sign-gradient ascent on the same draws from a random
±eps start: one δ per image for all draws, as an EOT attacker. The held-out normals are a fraction of the
training images the DDPM never saw. Only training normals are used, and every draw comes from one seeded
generator, so the choice is deterministic given the job's seed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

CANDIDATES = (10, 20, 50, 100, 200, 500)  # a 1-2-5 grid over the first half of T = 1000
DRAWS = 4  # noise draws per held-out image
STEPS = 5  # sign-gradient steps of the perturbation search


def transmission(reconstruct: Callable[[torch.Tensor, int, torch.Tensor], torch.Tensor], images: torch.Tensor,
                 k: int, eps: float, generator: torch.Generator) -> float:
    """Median over ``images`` of the share of an eps-bounded perturbation, searched to move the reconstruction
    the most, that survives reconstruction at step ``k``; ``reconstruct(x, k, noise)`` maps [0, 1] images to
    [0, 1] reconstructions, differentiably."""
    n = len(images)
    x = images.repeat(DRAWS, 1, 1, 1)
    noise = torch.randn(x.shape, generator=generator).to(x)
    with torch.no_grad():
        base = reconstruct(x, k, noise)
    delta = eps * (torch.randint(2, images.shape, generator=generator).to(x) * 2 - 1)
    for _ in range(STEPS):
        delta.requires_grad_(True)
        moved = reconstruct((x + delta.repeat(DRAWS, 1, 1, 1)).clamp(0, 1), k, noise) - base
        (grad,) = torch.autograd.grad(moved.pow(2).sum(), delta)
        delta = (delta.detach() + 2.5 * eps / STEPS * grad.sign()).clamp(-eps, eps)
    perturbed = (x + delta.repeat(DRAWS, 1, 1, 1)).clamp(0, 1)
    with torch.no_grad():
        kept = (reconstruct(perturbed, k, noise) - base).flatten(1).norm(dim=1).view(DRAWS, n).sum(0)
    given = (perturbed - x).flatten(1).norm(dim=1).view(DRAWS, n).sum(0).clamp_min(1e-12)
    return float((kept / given).median())


def choose_noise_step(reconstruct: Callable[[torch.Tensor, int, torch.Tensor], torch.Tensor],
                      images: torch.Tensor, eps: float, max_step: int, generator: torch.Generator,
                      candidates: Sequence[int] = CANDIDATES) -> tuple[int, dict[int, float]]:
    """The candidate k (≤ ``max_step``) with the lowest transmission (the smallest such k on ties), and the
    transmission of every candidate."""
    usable = [k for k in candidates if k <= max_step] or [max_step]
    tried = {k: transmission(reconstruct, images, k, eps, generator) for k in usable}
    return min(usable, key=lambda k: (tried[k], k)), tried
