"""The Attack contract: ``perturb(detector, x, y, eps) -> x_adv``.

``y`` is 0 for normal and 1 for anomaly. The attacker wants the detector to be wrong: raise the score of
normal images and lower the score of anomalies, i.e. maximize ``score(x) * (1 - 2y)`` inside the eps-ball
and [0, 1]. An attack knows a detector only through ``score``, its class flags and its ``surrogates()``;
the adaptive parts (EOT for ``stochastic`` scores, BPDA for non-differentiable purifiers, surrogate
objectives) come from ``core.adaptive``.

Surrogates: a gradient attack (not ``black_box``, with ``surrogates: true``) runs ``perturb_batch`` once on
the score and once on each surrogate the detector declares, and keeps per image the candidate with the
highest attack objective on the TRUE score (under the same EOT); ``describe`` records which won.

Every attack returns, per image, the best of its candidates and the clean image ``x`` itself on the
attack objective (the candidate ``x``), so no attack ever makes an image less adversarial than leaving it
alone. Candidates are judged under common random numbers on a stochastic detector: the same fixed draws
(``common_seed``, which the benchmark derives from the trained model) for every candidate and every attack
of that model, so a choice compares images, not noise. The output is checked to lie in the eps-ball and in
[0, 1] (``check_budget``); an attack that leaves them fails with a message naming it and the excess.

Settled images (an exact saving the benchmark enables for deterministic detectors): the caller may set
``settle_above`` (per image, an attack-objective value beyond which the image already ranks beyond every
score the other class can reach, so no rank metric can change any more) and ``settled`` (images settled
before the attack starts). Searches that support it (PGD, FGSM, Square) stop working on an image once its
best objective passes that value; their random numbers are drawn as without it, so every other image gets
the same result.

Iteration budget: ``iteration_params`` names the config fields that count iterations (steps, iters,
queries) and ``eps_scaled_params`` those holding absolute step sizes; the sanity checks rescale both
through ``scaled_params``, whatever the attack calls them.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from robust_ad_bench.core.adaptive import (
    GRADIENT_MODES,
    ScoreFn,
    attack_score,
    describe_adaptive,
    eot_draws,
    fixed_draws,
    surrogate_names,
)
from robust_ad_bench.core.errors import BenchError, unknown_choice
from robust_ad_bench.core.params import build_config

NORMS = ("linf", "l2", "none")
TARGETS = ("both", "normal", "anomaly")  # which test images the attacker perturbs
REFERENCE_PIXELS = 32 * 32  # batch sizes count images of this size (the embedded data's largest)
CLEAN_CANDIDATE = "x"  # the name of the clean image among an attack's candidates
COMMON_SEED = 0  # the fixed draws of a stochastic detector when the caller names none (the benchmark does)
# an output farther than this outside the eps-ball or [0, 1] is a broken attack, not float rounding
BUDGET_TOLERANCE = 1e-5


def images_per_call(batch_size: int, image_shape: Sequence[int]) -> int:
    """How many images of ``image_shape`` (..., H, W) make ``batch_size`` 32×32 images' worth of pixels: a
    call's memory stays bounded on large images (at 224×224, a batch of 128 is 2 images; a stochastic UNet
    detector at 256 images per call took about 10 GB there), and small images go many to a call (8×8 digits:
    16× the batch), where a call's fixed cost would otherwise dominate."""
    pixels = int(image_shape[-2]) * int(image_shape[-1])
    return max(1, batch_size * REFERENCE_PIXELS // max(pixels, 1))


@dataclass
class AttackConfig:
    # images per score call, EOT copies included (128 // 8 = 16 stochastic images), counted in 32×32 images
    # (``images_per_call``: fewer larger images). 128, not 256: a PGD step of diffpure-ae (8 EOT draws of a
    # 4-step reverse process) on 32×32 images peaked at 2.08 GiB with 256 and 1.44 GiB with 128, and ran no slower
    batch_size: int = 128
    target: str = "both"  # both (the protocol's default), normal (only normals), anomaly (only anomalies)
    eot_samples: int = 8  # draws averaged per gradient when the detector is ``stochastic`` (EOT)
    gradient: str = "auto"  # auto, full (through the purifier), bpda (identity/surrogate backward)

    def __post_init__(self) -> None:
        if self.target not in TARGETS:
            raise unknown_choice("attack target", self.target, TARGETS)
        if self.gradient not in GRADIENT_MODES:
            raise unknown_choice("attack gradient mode", self.gradient, GRADIENT_MODES)
        if self.eot_samples < 1:
            raise BenchError(f"eot_samples must be >= 1, got {self.eot_samples}")
        if self.batch_size < 1:
            raise BenchError(f"batch_size must be >= 1, got {self.batch_size}")


@dataclass
class WhiteBoxConfig(AttackConfig):
    """Options of gradient (white-box) attacks."""

    surrogates: bool = True  # also attack each surrogate the detector declares; keep the per-image best


TRUE_SCORE = "score"  # the candidate name of the attack on the true score


def attack_objective(score: ScoreFn | Any, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-sample value the attacker maximizes: the score of normals, minus the score of anomalies.

    ``score`` is a score function or a detector (then its plain ``score`` is used)."""
    fn = score.score if hasattr(score, "score") else score
    return fn(x) * (1.0 - 2.0 * y.to(x.dtype))


def select_best(score: ScoreFn, candidates: dict[str, torch.Tensor], y: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per image, the candidate with the highest attack objective on ``score``: (images, index of the
    winning candidate in ``candidates`` order). Ties go to the first candidate."""
    stacked = torch.stack([c.detach() for c in candidates.values()])  # K × N × ...
    with torch.no_grad():
        values = torch.stack([attack_objective(score, c, y) for c in stacked])  # K × N
    pick = values.argmax(0)
    return stacked[pick, torch.arange(len(y), device=y.device)], pick


@dataclass
class Settle:
    """Per image of a batch: the objective value beyond which it is settled (``above``) and whether it is
    settled already (``done``, updated by the search)."""

    above: torch.Tensor
    done: torch.Tensor

    def update(self, best: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """Mark the images ``rows`` whose best objective ``best`` (one value per row) passed their bound;
        returns which of ``rows`` are still active."""
        passed = best > self.above[rows]
        self.done[rows] |= passed
        return ~passed

    def active(self) -> torch.Tensor:
        return (~self.done).nonzero().flatten()


class Attack:
    """Base class of attacks. Register subclasses with ``@register_attack``."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    version: ClassVar[str] = "3"  # bump when a change alters results: part of the job key
    norm: ClassVar[str] = "linf"  # threat model: "linf", "l2", or "none" (clean)
    Config: ClassVar[type] = AttackConfig
    black_box: ClassVar[bool] = False  # uses forward passes only
    masking_check: ClassVar[bool] = False  # the black-box attack the sanity checks run for its norm
    hidden: ClassVar[bool] = False  # left out of ``--attacks all`` and ``list`` (test doubles)
    iteration_params: ClassVar[tuple[str, ...]] = ()  # config fields counting iterations: the attack is iterative
    eps_scaled_params: ClassVar[tuple[str, ...]] = ()  # config fields holding absolute step sizes (None: default)

    def __init__(self, config: Any = None) -> None:
        if config is None or isinstance(config, dict):
            config = build_config(self.Config, config, f"attack '{self.name}'")
        self.config = config
        self.objective = ""  # "" = the true score, else the name of the surrogate being attacked
        # seed of the fixed draws candidates of a stochastic detector are judged (and black-box searches
        # climb) under; None: fresh draws on every call
        self.common_seed: int | None = COMMON_SEED
        self.wins: Counter[str] = Counter()  # images won by each candidate (surrogates, ensemble parts)
        # settled images (see the module docstring): per image of the x given to ``perturb``, or None
        self.settle_above: torch.Tensor | None = None
        self.settled: torch.Tensor | None = None
        self._settle: Settle | None = None  # the current batch's

    # -- iteration budget (read by the sanity checks) ------------------------------------------------
    @classmethod
    def is_iterative(cls, params: dict[str, Any]) -> bool:
        return bool(cls.iteration_params)

    @classmethod
    def is_white_box(cls, params: dict[str, Any]) -> bool:
        """Whether the attack with ``params`` uses gradients only: the masking check compares Square with
        these (an attack with a black-box part, such as the ensemble's Square, would hide the masking)."""
        return not cls.black_box

    @classmethod
    def scaled_params(cls, params: dict[str, Any], steps_factor: int = 1, eps_factor: float = 1.0) -> dict[str, Any]:
        """``params`` with every iteration count times ``steps_factor`` and every explicit step size times
        ``eps_factor`` (for a run at ``eps_factor`` times the eps)."""
        out = dict(params)
        defaults = cls.Config()
        for name in cls.iteration_params:
            out[name] = int(out.get(name, getattr(defaults, name))) * steps_factor
        for name in cls.eps_scaled_params:
            value = out.get(name, getattr(defaults, name))
            if value is not None:
                out[name] = value * eps_factor
        return out

    def calibrate(self, detector: Any, train_images: torch.Tensor) -> None:
        """Called once before ``perturb`` with the normal training images (e.g. for a threshold)."""

    def describe(self, detector: Any) -> str:
        """How the detector was attacked (stored beside the result), e.g. ``eot=8``, and which candidate
        won how many images when there were several (``won=score:70%+nll-lse:30%``)."""
        parts = [describe_adaptive(detector, self.config)] if self.norm != "none" else []
        if self.config.target != "both":
            parts.append(f"target={self.config.target}")
        total = sum(self.wins.values())
        if total and sum(n > 0 for n in self.wins.values()) > 1:  # several candidates won images
            parts.append("won=" + "+".join(f"{name}:{100 * n / total:.0f}%" for name, n in self.wins.most_common()
                                           if n))
        return ",".join(p for p in parts if p)

    def score_fn(self, detector: Any) -> ScoreFn:
        """The (adaptive) score the attack differentiates: EOT and BPDA according to the flags, or the
        surrogate being attacked (``self.objective``)."""
        return attack_score(detector, self.config, self.objective)

    def fixed(self, detector: Any, score: ScoreFn) -> ScoreFn:
        """``score`` under the model's fixed draws (``common_seed``) when the detector is stochastic."""
        if getattr(detector, "stochastic", False) and self.common_seed is not None:
            return fixed_draws(score, self.common_seed)
        return score

    def selection_score(self, detector: Any) -> ScoreFn:
        """The true score (with EOT, under the model's fixed draws) that candidates are judged on, whatever
        objective produced them."""
        return self.fixed(detector, attack_score(detector, self.config))

    def settle(self) -> Settle | None:
        """The current batch's settled images, for a search on the true score (never on a surrogate)."""
        return self._settle if self.objective == "" else None

    def objectives(self, detector: Any) -> list[str]:
        """What ``perturb_batch`` is run on: the true score (""), then each surrogate of a gradient attack."""
        if self.black_box or self.norm == "none" or not getattr(self.config, "surrogates", False):
            return [""]
        return ["", *surrogate_names(detector)]

    def candidates(self, detector: Any, x: torch.Tensor, y: torch.Tensor, eps: float) -> dict[str, torch.Tensor]:
        """``perturb_batch`` on each objective, by name (``score`` for the true score)."""
        out = {}
        for name in self.objectives(detector):
            self.objective = name
            try:
                out[name or TRUE_SCORE] = self.perturb_batch(detector, x, y, eps).detach()
            finally:
                self.objective = ""
        return out

    def attack_batch(self, detector: Any, x: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
        """One batch: per image, the best of the candidates and ``x`` itself on the true score."""
        found = {**self.candidates(detector, x, y, eps), CLEAN_CANDIDATE: x.detach()}
        names = list(found)
        best, pick = select_best(self.selection_score(detector), found, y)
        self.wins.update({names[i]: int(n) for i, n in enumerate(torch.bincount(pick, minlength=len(names)))})
        return best

    def perturb(self, detector: Any, x: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
        """Adversarial copies of ``x`` (same shape, in [0, 1], within ``eps`` of ``x``), in batches.
        Images outside the attack target are returned unchanged. At eps 0 the attack runs as at any other
        eps (the sanity checks verify that it then returns ``x``)."""
        check_eps(eps)
        self.wins.clear()
        if self.norm == "none":
            return x.clone()
        chosen = torch.ones_like(y, dtype=torch.bool)
        if self.config.target != "both":
            chosen = y == (1 if self.config.target == "anomaly" else 0)
        x_adv = x.clone()
        idx = chosen.nonzero().flatten()
        was_training = detector.training
        detector.eval()  # attack the deployed model: no dropout, frozen batch-norm statistics
        # A stochastic detector is scored on eot_samples copies of each image in one call: the batch
        # bounds the images per call, so the memory of an attack does not grow with the EOT draws.
        per_call = images_per_call(self.config.batch_size, x.shape)
        per_batch = max(1, per_call // eot_draws(detector, self.config.eot_samples))
        try:
            for part in idx.split(per_batch):
                if self.settle_above is not None:
                    rows = part.cpu()
                    done = self.settled[rows] if self.settled is not None else torch.zeros(len(rows), dtype=torch.bool)
                    self._settle = Settle(self.settle_above[rows].to(x.device, x.dtype), done.to(x.device).clone())
                x_adv[part] = self.attack_batch(detector, x[part], y[part], eps).detach()
        finally:
            detector.train(was_training)
            self._settle = None
        check_budget(self.name, x, x_adv, eps, self.norm)
        return x_adv

    def perturb_batch(self, detector: Any, x: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
        raise NotImplementedError


def check_budget(attack: str, x: torch.Tensor, x_adv: torch.Tensor, eps: float, norm: str) -> None:
    """Raise when ``x_adv`` leaves the eps-ball of ``norm`` around ``x`` or [0, 1] by more than float
    rounding (``BUDGET_TOLERANCE``, relative to eps for L2), naming the attack and the excess."""
    if x_adv.shape != x.shape:
        raise BenchError(f"attack '{attack}' returned shape {tuple(x_adv.shape)} for images of {tuple(x.shape)}")
    delta = (x_adv - x).detach().flatten(1).double()
    size = delta.abs().amax(1) if norm == "linf" else delta.norm(dim=1)
    slack = BUDGET_TOLERANCE * (1 + eps)  # absolute for small eps, relative for large (L2) budgets
    excess = float((size - eps).max()) if len(size) else 0.0
    if not excess <= slack:  # also catches nan
        raise BenchError(f"attack '{attack}' left the {norm} eps-ball: a perturbation of {excess + eps:.6g} at eps "
                         f"{eps:.6g} (excess {excess:.3g})")
    low, high = float(x_adv.min()) if x_adv.numel() else 0.0, float(x_adv.max()) if x_adv.numel() else 1.0
    if not (low >= -BUDGET_TOLERANCE and high <= 1 + BUDGET_TOLERANCE):
        raise BenchError(f"attack '{attack}' left [0, 1]: values from {low:.6g} to {high:.6g} "
                         f"(excess {max(-low, high - 1):.3g})")


def check_eps(eps: float) -> None:
    if not isinstance(eps, (int, float)) or eps != eps or eps < 0:
        raise BenchError(f"eps must be a number >= 0, got {eps!r}")
