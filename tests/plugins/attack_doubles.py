"""Test-only detectors and attacks built to fail the attack suite's sanity checks (hidden from "all").

- ``masked``: a nearest-mean score behind a rounding step whose gradient is zero: white-box attacks see
  nothing, a black-box search does.
- ``noisy-gradient``: a linear score whose value is exact but whose gradient carries large fresh noise on
  every call, as a randomized defense's does: plain PGD wanders, EOT averages the noise away.
- ``quantize-purifier``: a purifying detector (rounding to a few gray levels, not differentiable) in front
  of a nearest-mean score: full gradients are zero, BPDA's identity backward pass works.
- ``inner-step``: a score that contains its own gradient step (SLA²P-like), computed with create_graph.
- ``helpful-pgd``: an attack that descends the objective (helps the detector): AUROC rises with eps.
- ``eps0-leak``: an attack that perturbs even at eps 0.
"""

from __future__ import annotations

import torch

from robust_ad_bench.attacks.gradient import PGD, pgd
from robust_ad_bench.core.attack import check_eps
from robust_ad_bench.core.detector import Detector
from robust_ad_bench.core.registry import register_attack, register_method


class _MeanDistance(Detector):
    hidden = True

    def __init__(self, image_shape, config=None):
        super().__init__(image_shape, config)
        self.register_buffer("centre", torch.zeros(1, *image_shape))

    def fit(self, train):
        self.centre.copy_(train.images.mean(0, keepdim=True))

    def distance(self, x):
        return (x - self.centre).flatten(1).pow(2).sum(1)


@register_method("masked")
class Masked(_MeanDistance):
    """Distance to the training mean after a zero-gradient rounding step (gradient masking)."""

    def score(self, x):
        # the value of the rounded image, the gradient of 0 * x: every white-box step is zero
        return self.distance((torch.round(x * 255) / 255).detach() + 0 * x)


@register_method("noisy-gradient")
class NoisyGradient(_MeanDistance):
    """Exact distance value, gradient drowned in fresh noise (a stochastic defense)."""

    stochastic = True

    def score(self, x):
        noise = 4 * torch.randn_like(x)
        return self.distance(x) + (noise * x).flatten(1).sum(1) - (noise * x).detach().flatten(1).sum(1)


@register_method("quantize-purifier")
class QuantizePurifier(_MeanDistance):
    """Rounds to 4 gray levels (not differentiable), then scores the distance to the training mean."""

    purifies = True
    differentiable_purifier = False

    def purify(self, x):
        return torch.round(x * 3) / 3

    def score_purified(self, x):
        return self.distance(x)

    def score(self, x):
        return self.score_purified(self.purify(x))


@register_method("inner-step")
class InnerStep(_MeanDistance):
    """Score after one inner gradient step that lowers the distance (differentiable through the step)."""

    def score(self, x):
        with torch.enable_grad():
            z = x if x.requires_grad else x.detach().requires_grad_(True)
            (grad,) = torch.autograd.grad(self.distance(z).sum(), z, create_graph=x.requires_grad)
        return self.distance(x - 0.1 * grad)


@register_attack("helpful-pgd")
class HelpfulPGD(PGD):
    """Descends the attack objective: a broken attack that helps the detector more as eps grows."""

    def perturb_batch(self, detector, x, y, eps):
        score = self.score_fn(detector)
        return pgd(lambda z: -score(z) * (1 - 2 * y.to(z.dtype)), x, eps=eps, norm="linf",
                   steps=self.config.steps)


@register_attack("eps0-leak")
class Eps0Leak(PGD):
    """Adds noise even at eps 0: breaks the first check."""

    def perturb(self, detector, x, y, eps):
        check_eps(eps)
        return (x + 0.1 * torch.randn_like(x)).clamp(0, 1) if eps == 0 else super().perturb(detector, x, y, eps)
