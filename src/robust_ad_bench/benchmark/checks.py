"""Sanity checks of the evaluation protocol, run for every trained model and stored with its results.

1. ``eps0``: the attack at eps 0 reproduces the clean AUROC exactly.
2. ``monotone``: robust AUROC does not rise (by more than ``tolerance``) as eps grows.
3. ``large-eps``: a very large eps (Linf 0.5, or the L2 ball holding that cube) drives robust AUROC
   below ``large_eps_max_auroc``; a differentiable detector cannot resist it.
4. ``more-steps``: ``steps_factor`` (2) times more steps change robust AUROC by no more than ``tolerance``.
   Higher means the attack is inconsistent; lower means it had not converged and the grid's figure
   overstates robustness. Either way the cell is flagged.
5. ``black-box``: Square (forward passes only) must not beat the strongest white-box attack of its norm by
   more than ``tolerance`` at the grid's largest eps; if it does, the gradients were masked.

Checks 3 and 4 apply to iterative attacks (those with a ``steps`` parameter). A failed check is never
dropped: the leaderboard prints its flag next to the number and ``audit`` lists it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from robust_ad_bench.core.errors import BenchError
from robust_ad_bench.core.registry import ATTACKS

CHECK_NAMES = ("eps0", "monotone", "large-eps", "more-steps", "black-box")
FLAGS = {"eps0": "0", "monotone": "m", "large-eps": "L", "more-steps": "s", "black-box": "B", "error": "!"}
CHECKS_VERSION = "2"  # bump when a check's definition changes (part of the check key)

Evaluate = Callable[[str, dict, float], float]  # (attack name, attack params, eps) -> AUROC


@dataclass
class CheckConfig:
    enabled: bool = True
    tolerance: float = 0.02  # AUROC differences below this are noise
    large_eps_linf: float = 0.5  # the "very large" budget; L2 uses the ball that holds this Linf cube
    large_eps_max_auroc: float = 0.2
    steps_factor: int = 2
    square_queries: int = 200
    # draws per Square query on a stochastic score: 1 keeps the check affordable (EOT would multiply its
    # forward passes); single-draw random search is weaker, so it can miss masking but never invents it
    square_eot_samples: int = 1

    def __post_init__(self) -> None:
        if self.tolerance < 0 or self.steps_factor < 2 or self.square_queries < 1 or self.large_eps_linf <= 0:
            raise BenchError("checks need tolerance >= 0, steps_factor >= 2, square_queries >= 1 and "
                             f"large_eps_linf > 0; got {self.tolerance}, {self.steps_factor}, "
                             f"{self.square_queries}, {self.large_eps_linf}")


@dataclass
class CheckResult:
    attack: str
    name: str
    passed: bool
    value: float | None = None  # the figure the check measured
    reference: float | None = None  # what it was compared with
    detail: str = ""


def masking_check_attack(norm: str) -> str:
    """The registered black-box attack that checks white-box attacks of ``norm`` for gradient masking."""
    found = [name for name, cls in ATTACKS if cls.masking_check and cls.norm == norm]
    if len(found) != 1:
        raise BenchError(f"need exactly one attack with masking_check = True for norm {norm}, found {found or 'none'}")
    return found[0]


def large_eps(norm: str, cfg: CheckConfig, image_numel: int) -> float:
    return cfg.large_eps_linf if norm == "linf" else cfg.large_eps_linf * math.sqrt(image_numel)


def run_checks(attacks: dict[str, dict], grid: dict[tuple[str, float], float], evaluate: Evaluate,
               cfg: CheckConfig, image_numel: int) -> list[CheckResult]:
    """The five checks for one trained model.

    ``attacks`` maps each attack of the grid to its parameters, ``grid`` maps (attack, eps) to the AUROC
    the grid measured, and ``evaluate`` runs one more attack on the same model and test set."""
    tol = cfg.tolerance
    clean = evaluate("clean", {}, 0.0)
    results: list[CheckResult] = []
    white_box: dict[str, list[str]] = {}
    for name, params in attacks.items():
        attack = ATTACKS.get(name)
        if attack.norm == "none":
            continue
        at_zero = evaluate(name, params, 0.0)
        results.append(CheckResult(name, "eps0", at_zero == clean, at_zero, clean,
                                   "" if at_zero == clean else "eps 0 differs from the clean AUROC"))
        curve = [(0.0, clean)] + sorted((e, v) for (a, e), v in grid.items() if a == name and e > 0)
        rise = max((b[1] - a[1] for a, b in zip(curve, curve[1:])), default=0.0)
        results.append(CheckResult(name, "monotone", rise <= tol, rise, tol,
                                   f"AUROC rises by {rise:.3f} between consecutive eps" if rise > tol else ""))
        eps_max = max((e for (a, e) in grid if a == name), default=0.0)
        if "steps" in params and eps_max > 0:
            big = large_eps(attack.norm, cfg, image_numel)
            value = evaluate(name, params, big)
            results.append(CheckResult(name, "large-eps", value <= cfg.large_eps_max_auroc, value,
                                       cfg.large_eps_max_auroc, f"eps {big:g}"))
            stronger = {**params, "steps": params["steps"] * cfg.steps_factor}
            value, ref = evaluate(name, stronger, eps_max), grid[(name, eps_max)]
            detail = ("" if abs(value - ref) <= tol else
                      f"{stronger['steps']} steps {'lower' if value < ref else 'higher'}: "
                      + ("not converged" if value < ref else "inconsistent attack"))
            results.append(CheckResult(name, "more-steps", abs(value - ref) <= tol, value, ref, detail))
        if not getattr(attack, "black_box", False) and eps_max > 0:
            white_box.setdefault(attack.norm, []).append(name)
    for norm, names in white_box.items():
        eps_max = max(e for (a, e) in grid if a in names)
        strongest = min(grid[(a, eps_max)] for a in names if (a, eps_max) in grid)
        blind = evaluate(masking_check_attack(norm),
                         {"queries": cfg.square_queries, "eot_samples": cfg.square_eot_samples}, eps_max)
        masked = blind < strongest - tol
        for name in names:  # judged against the strongest white-box attack: a weak FGSM is not masking
            results.append(CheckResult(name, "black-box", not masked, blind, strongest,
                                       f"Square beats every white-box {norm} attack at eps {eps_max:g}: "
                                       "gradient masking" if masked else ""))
    return results
