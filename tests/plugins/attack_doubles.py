"""Test-only detectors and attacks built to fail the attack suite's sanity checks (hidden from "all").

- ``masked``: a nearest-mean score behind a rounding step whose gradient is zero: white-box attacks see
  nothing, a black-box search does.
- ``noisy-gradient``: a linear score whose value is exact but whose gradient carries large fresh noise on
  every call, as a randomized defense's does: plain PGD wanders, EOT averages the noise away.
- ``quantize-purifier``: a purifying detector (rounding to a few gray levels, not differentiable) in front
  of a nearest-mean score: full gradients are zero, BPDA's identity backward pass works.
- ``inner-step``: a score that contains its own gradient step (SLA²P-like), computed with create_graph.
- ``half-masked``: the nearest-mean score with its gradient masked on the images whose score passes a
  threshold set at fit (about half the digits test images), or (``marker``) on those with a bright corner:
  white-box attacks move only the other half, a strong enough black-box search moves all; ``window``
  scores only a central square (a local score, as anomaly maps are).
- ``noisy-score``: the nearest-mean score plus fresh noise on every call (a stochastic score value).
- ``saturated``: a score that saturates (a sigmoid of the distance: value 1 and gradient exactly 0 in
  float32 far from the mean) and declares its smooth surrogate, the distance.
- ``helpful-pgd``: an attack that uses 1/255 of any budget from 16/255 up: AUROC rises with eps.
- ``eps0-leak``: an attack whose ``perturb_batch`` perturbs even at eps 0 (the runtime guard stops it).
- ``eps0-raise``: an attack whose ``perturb_batch`` raises at eps 0 (and works otherwise).
- ``large-eps-raise``: an attack that raises at eps >= 0.4 (a check that raises, grid jobs that pass).
- ``always-raise``: an attack that always raises (a failed job).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from robust_ad_bench.attacks.gradient import PGD, pgd
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


@dataclass
class HalfMaskedConfig:
    quantile: float = 0.7  # of the training scores, times ``factor``: images above it are masked
    factor: float = 2.0
    window: int = 0  # > 0: score only the central window×window pixels
    marker: bool = False  # mask the images whose top-left 4×4 corner is bright instead (eps cannot flip it)


@register_method("half-masked")
class HalfMasked(_MeanDistance):
    """Nearest-mean score whose gradient is zero on the images scoring above a threshold."""

    Config = HalfMaskedConfig

    def __init__(self, image_shape, config=None):
        super().__init__(image_shape, config)
        self.register_buffer("threshold", torch.zeros(()))

    def distance(self, x):
        k = self.config.window
        diff = x - self.centre
        if k:
            h, w = x.shape[-2:]
            diff = diff[..., (h - k) // 2:(h + k) // 2, (w - k) // 2:(w + k) // 2]
        return diff.flatten(1).pow(2).sum(1)

    def fit(self, train):
        super().fit(train)
        scores = self.distance(train.images)
        self.threshold.fill_(float(scores.quantile(self.config.quantile)) * self.config.factor)

    def masked(self, x):
        if self.config.marker:
            return x[..., :4, :4].flatten(1).mean(1) > 0.5
        return self.distance(x) > self.threshold

    def score(self, x):
        d = self.distance(x)
        return torch.where(self.masked(x.detach()), d.detach() + 0 * d, d)


@register_method("noisy-score")
class NoisyScore(_MeanDistance):
    """Nearest-mean score plus fresh Gaussian noise (a stochastic score value)."""

    stochastic = True

    def score(self, x):
        d = self.distance(x)
        return d + d.detach().mean() * 0.3 * torch.randn_like(d)


@register_method("saturated")
class Saturated(_MeanDistance):
    """``sigmoid(k (d - d0))``: saturates (value 1, gradient exactly 0 in float32) far from the training
    mean, like a likelihood through ``exp``; its surrogate is the distance ``d`` itself."""

    def __init__(self, image_shape, config=None):
        super().__init__(image_shape, config)
        self.register_buffer("offset", torch.zeros(()))

    def fit(self, train):
        super().fit(train)
        self.offset.fill_(float(self.distance(train.images).quantile(0.9)))

    def score(self, x):
        return torch.sigmoid(20 * (self.distance(x) - self.offset))

    def surrogates(self):
        return {"distance": self.distance}


@register_attack("helpful-pgd")
class HelpfulPGD(PGD):
    """Uses less of a larger budget: a broken attack that is weaker at a large eps than at a small one (it
    cannot help the detector beyond the clean image, which every attack keeps as a candidate)."""

    def perturb_batch(self, detector, x, y, eps):
        score = self.score_fn(detector)
        used = eps if eps < 16 / 255 else 1 / 255
        return pgd(lambda z: score(z) * (1 - 2 * y.to(z.dtype)), x, eps=used, norm="linf", steps=self.config.steps)


@register_attack("eps0-leak")
class Eps0Leak(PGD):
    """Adds noise even at eps 0, inside ``perturb_batch``: breaks the first check."""

    def perturb_batch(self, detector, x, y, eps):
        return (x + 0.1 * torch.randn_like(x)).clamp(0, 1) if eps == 0 else super().perturb_batch(detector, x, y, eps)


@register_attack("eps0-raise")
class Eps0Raise(PGD):
    """Raises at eps 0 (a broken code path the eps-0 check must reach)."""

    def perturb_batch(self, detector, x, y, eps):
        if eps == 0:
            raise RuntimeError("deliberate failure at eps 0")
        return super().perturb_batch(detector, x, y, eps)


@register_attack("large-eps-raise")
class LargeEpsRaise(PGD):
    """Raises at eps >= 0.4: its grid jobs pass, the large-eps check raises."""

    def perturb_batch(self, detector, x, y, eps):
        if eps >= 0.4:
            raise RuntimeError("deliberate failure at a large eps")
        return super().perturb_batch(detector, x, y, eps)


@register_attack("always-raise")
class AlwaysRaise(PGD):
    """Always raises: a failed job."""

    def perturb_batch(self, detector, x, y, eps):
        raise RuntimeError("deliberate failure of an attack")
