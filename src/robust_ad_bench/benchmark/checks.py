"""Sanity checks of the evaluation protocol, run for every trained model and stored with its results.

1. ``eps0``: the attack at eps 0 (its own ``perturb_batch`` path) reproduces the clean AUROC exactly; the
   scores of a stochastic detector are drawn from a stream seeded apart from the attack's, so the draws an
   attack spends (calibration, random starts) never shift this figure.
2. ``monotone``: robust AUROC does not rise (by more than ``tolerance``) as eps grows.
3. ``large-eps``: a very large eps (Linf 0.5, or the L2 ball holding that cube) drives robust AUROC
   below ``large_eps_max_auroc``; a differentiable detector cannot resist it. Explicit step sizes are
   scaled with the eps.
4. ``more-steps``: ``steps_factor`` (2) times the attack's iteration budget changes robust AUROC by no
   more than ``tolerance``. Higher means the attack is inconsistent; lower means it had not converged and
   the grid's figure overstates robustness. Either way the cell is flagged.
5. ``black-box``: the Square Attack of the norm (forward passes only, ``square_queries`` queries, the
   white-box attack's ``target``) must not beat the strongest white-box attack of that norm and target by
   more than ``tolerance`` at the grid's largest eps; if it does, the gradients were masked.

Checks 3 and 4 apply to every iterative attack: those that declare an iteration budget
(``Attack.iteration_params``: PGD's ``steps``, AutoAttack's ``iters``, Square's ``queries``...). A check that
raises is stored as failed (name ``error:<check>``, its message as detail) and flagged ``!``; a failed
check is never dropped: the leaderboard prints its flag next to the number and ``audit`` lists it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from robust_ad_bench.core.errors import BenchError
from robust_ad_bench.core.registry import ATTACKS

CHECK_NAMES = ("eps0", "monotone", "large-eps", "more-steps", "black-box")
FLAGS = {"eps0": "0", "monotone": "m", "large-eps": "L", "more-steps": "s", "black-box": "B", "error": "!"}
ERROR = "error"  # check rows named "error:<check>": the check raised
CHECKS_VERSION = "3"  # 3: eps 0 runs the attack, generic iteration budgets, Square-L2, targets; errors stored

Evaluate = Callable[[str, dict, float], float]  # (attack name, attack params, eps) -> AUROC


@dataclass
class CheckConfig:
    enabled: bool = True
    tolerance: float = 0.02  # AUROC differences below this are noise
    large_eps_linf: float = 0.5  # the "very large" budget; L2 uses the ball that holds this Linf cube
    large_eps_max_auroc: float = 0.2
    steps_factor: int = 2
    # 1000 queries catch a detector whose gradient is masked on half its images (100 do not)
    square_queries: int = 1000
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


def flag_of(name: str) -> str:
    """The leaderboard flag of a check row's name (``!`` for a check that raised)."""
    return FLAGS.get(name, FLAGS[ERROR])


def masking_check_attack(norm: str) -> str:
    """The registered black-box attack that checks white-box attacks of ``norm`` for gradient masking."""
    found = [name for name, cls in ATTACKS if cls.masking_check and cls.norm == norm]
    if len(found) != 1:
        raise BenchError(f"need exactly one attack with masking_check = True for norm {norm}, found {found or 'none'}")
    return found[0]


def large_eps(norm: str, cfg: CheckConfig, image_numel: int) -> float:
    return cfg.large_eps_linf if norm == "linf" else cfg.large_eps_linf * math.sqrt(image_numel)


class _Recorder:
    """Collects check results; a check that raises becomes a failed ``error:<check>`` row."""

    def __init__(self) -> None:
        self.results: list[CheckResult] = []

    def run(self, attacks: list[str], name: str, check: Callable[..., list[CheckResult]], *args: object) -> None:
        try:
            self.results.extend(check(*args))
        except Exception as exc:  # stored and flagged on every attack it concerned, never silently dropped
            detail = f"{type(exc).__name__}: {exc}"
            self.results.extend(CheckResult(a, f"{ERROR}:{name}", False, detail=detail) for a in attacks)


def run_checks(attacks: dict[str, dict], grid: dict[tuple[str, float], float], evaluate: Evaluate,
               cfg: CheckConfig, image_numel: int) -> list[CheckResult]:
    """The five checks for one trained model.

    ``attacks`` maps each attack of the grid to its parameters, ``grid`` maps (attack, eps) to the AUROC
    the grid measured, and ``evaluate`` runs one more attack on the same model and test set."""
    tol = cfg.tolerance
    rec = _Recorder()
    clean: list[float] = []
    rec.run(["*"], "clean", lambda: clean.append(evaluate("clean", {}, 0.0)) or [])  # noqa: B023
    if not clean:
        return rec.results  # nothing can be compared with the clean AUROC
    ref = clean[0]
    white_box: dict[tuple[str, str], list[str]] = {}
    for name, params in attacks.items():
        attack = ATTACKS.get(name)
        if attack.norm == "none":
            continue
        curve = [(0.0, ref)] + sorted((e, v) for (a, e), v in grid.items() if a == name and e > 0)
        eps_max = max((e for (a, e) in grid if a == name), default=0.0)
        rec.run([name], "eps0", _eps0, name, params, ref, evaluate)
        rec.run([name], "monotone", _monotone, name, curve, tol)
        if attack.is_iterative(params) and eps_max > 0:
            big = large_eps(attack.norm, cfg, image_numel)
            rec.run([name], "large-eps", _large_eps, name, params, eps_max, big, cfg, evaluate)
            rec.run([name], "more-steps", _more_steps, name, params, eps_max, grid[(name, eps_max)], cfg, evaluate)
        if not getattr(attack, "black_box", False) and eps_max > 0:
            white_box.setdefault((attack.norm, params.get("target", "both")), []).append(name)
    for (norm, target), names in white_box.items():
        rec.run(names, "black-box", _black_box, norm, target, names, grid, cfg, evaluate)
    return rec.results


def _eps0(name: str, params: dict, clean: float, evaluate: Evaluate) -> list[CheckResult]:
    at_zero = evaluate(name, params, 0.0)
    return [CheckResult(name, "eps0", at_zero == clean, at_zero, clean,
                        "" if at_zero == clean else "eps 0 differs from the clean AUROC")]


def _monotone(name: str, curve: list[tuple[float, float]], tol: float) -> list[CheckResult]:
    rise = max((b[1] - a[1] for a, b in zip(curve, curve[1:])), default=0.0)
    return [CheckResult(name, "monotone", rise <= tol, rise, tol,
                        f"AUROC rises by {rise:.3f} between consecutive eps" if rise > tol else "")]


def _large_eps(name: str, params: dict, eps_max: float, big: float, cfg: CheckConfig,
               evaluate: Evaluate) -> list[CheckResult]:
    scaled = ATTACKS.get(name).scaled_params(params, eps_factor=big / eps_max)  # explicit step sizes grow too
    value = evaluate(name, scaled, big)
    return [CheckResult(name, "large-eps", value <= cfg.large_eps_max_auroc, value, cfg.large_eps_max_auroc,
                        f"eps {big:g}")]


def _more_steps(name: str, params: dict, eps_max: float, ref: float, cfg: CheckConfig,
                evaluate: Evaluate) -> list[CheckResult]:
    attack = ATTACKS.get(name)
    stronger = attack.scaled_params(params, steps_factor=cfg.steps_factor)
    value = evaluate(name, stronger, eps_max)
    ok = abs(value - ref) <= cfg.tolerance
    budget = ", ".join(f"{p} {stronger[p]}" for p in attack.iteration_params)
    detail = "" if ok else (f"{budget}: {'lower' if value < ref else 'higher'}, "
                            + ("not converged" if value < ref else "inconsistent attack"))
    return [CheckResult(name, "more-steps", ok, value, ref, detail)]


def _black_box(norm: str, target: str, names: list[str], grid: dict[tuple[str, float], float], cfg: CheckConfig,
               evaluate: Evaluate) -> list[CheckResult]:
    """Square against the strongest white-box attack of the norm and target: a weak FGSM is not masking."""
    eps_max = max(e for (a, e) in grid if a in names)
    strongest = min(grid[(a, eps_max)] for a in names if (a, eps_max) in grid)
    blind = evaluate(masking_check_attack(norm), {"queries": cfg.square_queries, "eot_samples": cfg.square_eot_samples,
                                                  "target": target}, eps_max)
    masked = blind < strongest - cfg.tolerance
    detail = (f"Square beats every white-box {norm} attack (target {target}) at eps {eps_max:g}: gradient masking"
              if masked else "")
    return [CheckResult(name, "black-box", not masked, blind, strongest, detail) for name in names]
