"""AutoAttack (Croce & Hein, 2020) on an anomaly score, through the ``pyautoattack`` package.

The detector becomes a two-class model with logits ``[-m, m]``, ``m = (score - t) / s``: class 1
(anomaly) wins when the score passes the threshold ``t``, a quantile of the training scores. The scale
``s`` is twice the largest ``|score - t|`` of the clean batch, so margins start inside [-0.5, 0.5] where
cross-entropy is nearly linear: a far-off sample's gradient does not vanish in the softmax. The
standard version's DLR losses need three or more classes, so ``version='custom'`` runs the components that
work with two: APGD-CE, FAB, Square.

AutoAttack counts a sample as broken once it crosses the threshold and returns the clean image for the
others, which suits accuracy but not AUROC, where every sample's score matters. The default
``selection = "objective"`` therefore runs each component on every image (APGD with ``best_loss=True``
returns its highest-loss point) and keeps, per image, the candidate with the highest attack objective.
``selection = "standard"`` returns what ``run_standard_evaluation`` returns.

Iterations: pyautoattack fixes APGD's step-size checkpoints (``n_iter_2``, ``n_iter_min``, ``size_decr``)
from ``n_iter`` when it builds the object; ``set_iterations`` recomputes them whenever ``iters`` changes.
A surrogate objective gets its own threshold (the same quantile of its own training values).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from robust_ad_bench.core.adaptive import ScoreFn
from robust_ad_bench.core.attack import Attack, WhiteBoxConfig, select_best
from robust_ad_bench.core.errors import BenchError, unknown_choice
from robust_ad_bench.core.registry import register_attack

TWO_CLASS_COMPONENTS = ("apgd-ce", "fab", "square")
SELECTIONS = ("objective", "standard")
_AA_NORM = {"linf": "Linf", "l2": "L2"}


class TwoLogitDetector(nn.Module):
    """A score as a two-class model: logits ``[-m, m]`` with ``m = (score - threshold) / scale``."""

    def __init__(self, score: ScoreFn, threshold: float, scale: float) -> None:
        super().__init__()
        self.score, self.threshold, self.scale = score, threshold, scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        margin = (self.score(x) - self.threshold) / self.scale
        return torch.stack([-margin, margin], dim=1)


@dataclass
class AutoAttackConfig(WhiteBoxConfig):
    components: tuple[str, ...] = TWO_CLASS_COMPONENTS
    iters: int = 100  # APGD and FAB iterations (AutoAttack's default)
    restarts: int = 1  # APGD and FAB restarts
    square_queries: int = 1000  # AutoAttack's default is 5000
    threshold_quantile: float = 0.5  # of the training scores
    selection: str = "objective"  # objective (per-image best over components) or standard

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in self.components:
            if name not in TWO_CLASS_COMPONENTS:
                raise unknown_choice("AutoAttack component for a two-class detector (the DLR and targeted "
                                     "ones need 3+ classes)", name, TWO_CLASS_COMPONENTS)
        if not self.components:
            raise BenchError("autoattack needs at least one component")
        if self.selection not in SELECTIONS:
            raise unknown_choice("AutoAttack selection", self.selection, SELECTIONS)
        if not 0 < self.threshold_quantile < 1:
            raise BenchError(f"threshold_quantile must be in (0, 1), got {self.threshold_quantile}")


@register_attack("autoattack", description="AutoAttack (pyautoattack, custom version: APGD-CE, FAB, Square) "
                                           "on the thresholded score, Linf")
class AutoAttack(Attack):
    """AutoAttack's two-class components on the detector's score (Linf)."""

    Config = AutoAttackConfig
    norm = "linf"
    # 5: the clean image is a candidate, judged under fixed draws (4: APGD checkpoints follow iters; surrogate
    # objectives; eps 0 runs the attack)
    version = "5"
    iteration_params = ("iters", "square_queries")

    @classmethod
    def is_white_box(cls, params: dict[str, Any]) -> bool:
        return "square" not in params.get("components", TWO_CLASS_COMPONENTS)

    def __init__(self, config: Any = None) -> None:
        super().__init__(config)
        self.thresholds: dict[str, float] = {}

    @property
    def threshold(self) -> float:
        return self.thresholds.get(self.objective, 0.0)

    def calibrate(self, detector: Any, train_images: torch.Tensor) -> None:
        """The threshold of each objective: a quantile of its values on the training images."""
        with torch.no_grad():
            for name in self.objectives(detector):
                fn = detector.surrogates()[name] if name else detector.score
                scores = torch.cat([fn(b) for b in train_images.split(self.config.batch_size)]).float()
                self.thresholds[name] = float(scores.quantile(self.config.threshold_quantile))

    def describe(self, detector: Any) -> str:
        base = super().describe(detector)
        parts = ["+".join(self.config.components), f"select={self.config.selection}"]
        return ",".join([*parts, base] if base else parts)

    def adversary(self, model: nn.Module, eps: float, device: torch.device) -> Any:
        from pyautoattack import AutoAttack as PyAutoAttack

        c = self.config
        seed = int(torch.randint(0, 2**31 - 1, (1,)))
        adversary = PyAutoAttack(model, norm=_AA_NORM[self.norm], eps=eps, version="custom",
                                 attacks=list(c.components), seed=seed, device=device)
        adversary.verbose = False
        set_iterations(adversary.apgd, c.iters)
        adversary.fab.n_iter = c.iters
        adversary.apgd.n_restarts = adversary.fab.n_restarts = c.restarts
        adversary.square.n_queries = c.square_queries
        return adversary

    def perturb_batch(self, detector, x, y, eps):
        score = self.score_fn(detector)
        with torch.no_grad():
            scale = 2 * float((score(x) - self.threshold).abs().max().clamp_min(1e-6))
        model = TwoLogitDetector(score, self.threshold, scale)
        adversary = self.adversary(model, eps, x.device)
        labels = y.long()
        if self.config.selection == "standard":
            x_adv, _ = adversary.run_standard_evaluation(x, labels, batch_size=len(x))
            return x_adv.detach()
        candidates = {}
        for name in self.config.components:
            if name == "apgd-ce":
                candidates[name] = adversary.apgd.perturb(x, labels, best_loss=True)
            elif name == "fab":
                candidates[name] = adversary.fab.perturb(x, labels)
            else:
                candidates[name] = adversary.square.perturb(x, labels)
        if len(candidates) == 1:
            return next(iter(candidates.values())).detach()
        # judged on the true score, whichever objective the components followed
        return select_best(self.selection_score(detector), candidates, y)[0]


def set_iterations(apgd: Any, iters: int) -> None:
    """APGD's iteration count with the step-size checkpoints pyautoattack derives from it in ``__init__``."""
    apgd.n_iter = apgd.n_iter_orig = iters
    apgd.n_iter_2 = max(int(0.22 * iters), 1)
    apgd.n_iter_min = max(int(0.06 * iters), 1)
    apgd.size_decr = max(int(0.03 * iters), 1)


@register_attack("autoattack-l2", description="AutoAttack (pyautoattack, custom version: APGD-CE, FAB, "
                                              "Square) on the thresholded score, L2")
class AutoAttackL2(AutoAttack):
    """AutoAttack's two-class components on the detector's score (L2)."""

    norm = "l2"
