"""Sanity checks of the evaluation protocol, run for every trained model and stored with its results. They
compare images: each attack run returns its per-image scores, and each threshold comes from the measured
noise of the detector (``masking``: the rule). The checks that run attacks (1, 3, 4, 5) run them on one
stratified sample of the test set (``masking_normals`` + ``masking_anomalies`` images, seeded by the
model's checks), compared image by image with the grid's scores of the same images: their cost does not
grow with the test set. Check 2 needs no attack and uses every test image.

1. ``eps0``: the attack at eps 0 runs its own steps (no short cut) and must give every image the score of
   its clean image, up to float rounding; a stochastic detector is scored with the same draws (drawn apart
   from the attack's random numbers, so the draws an attack spends never shift them).
2. ``monotone``: robust AUROC does not rise as eps grows, beyond the noise of the paired difference
   between consecutive eps (the clean scores at eps 0).
3. ``large-eps``: a very large eps (Linf 0.5, or the L2 ball holding that cube) drives robust AUROC
   below ``large_eps_max_auroc``; a differentiable detector cannot resist it. Explicit step sizes are
   scaled with the eps.
4. ``more-steps``: ``steps_factor`` (2) times the attack's iteration budget changes robust AUROC by no
   more than the noise of the paired difference. Higher means the attack is inconsistent; lower means it
   had not converged and the grid's figure overstates robustness. Either way the cell is flagged.
5. ``black-box``: the paired masking test (``verification``): Square on a stratified sample of the test
   images, compared image by image with the per-image worst white-box candidate of the norm and target at
   the grid's largest eps. When it flags, Square runs on every test image and joins the worst case.

Checks 3 and 4 apply to every iterative attack: those that declare an iteration budget
(``Attack.iteration_params``: PGD's ``steps``, AutoAttack's ``iters``, Square's ``queries``...). A check that
raises is stored as failed (name ``error:<check>``, its message as detail) and flagged ``!``; a failed
check is never dropped: the leaderboard prints its flag next to the number and ``audit`` lists it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from robust_ad_bench.benchmark.protocol import metrics
from robust_ad_bench.benchmark.protocol.masking import FLOAT_TOLERANCE, difference_threshold
from robust_ad_bench.core.errors import BenchError
from robust_ad_bench.core.registry import ATTACKS

CHECK_NAMES = ("eps0", "monotone", "large-eps", "more-steps", "black-box")
FLAGS = {"eps0": "0", "monotone": "m", "large-eps": "L", "more-steps": "s", "black-box": "B", "transfer": "T",
         "error": "!"}
ERROR = "error"  # check rows named "error:<check>": the check raised
# 5: every check that attacks runs on the stratified sample; 4: image-level checks with thresholds from the
# measured noise, the paired masking test on a sample
CHECKS_VERSION = "5"


@dataclass
class Evaluated:
    """One attack run of a check: the per-image scores of the attacked test images (and the images, kept
    when the worst case needs them)."""

    scores: np.ndarray
    images: object = None


# (attack name, attack params, eps, the test images attacked: a sample's indices or None for all) -> the run
Evaluate = Callable[[str, dict, float, "np.ndarray | None"], Evaluated]
Run = Callable[[str, dict, float], Evaluated]  # an attack run on the checks' sample
# (norm, target, white-box attacks of that norm and target, eps) -> the masking check's results
Masking = Callable[[str, str, list[str], float], list["CheckResult"]]


@dataclass
class CheckConfig:
    enabled: bool = True
    noise_sigmas: float = 3.0  # an AUROC difference counts beyond this many standard deviations of its noise
    noise_rounds: int = 200  # resamples of the test images that measure that noise
    large_eps_linf: float = 0.5  # the "very large" budget; L2 uses the ball that holds this Linf cube
    large_eps_max_auroc: float = 0.2
    steps_factor: int = 2
    # 1000 queries catch a detector whose gradient is masked on half its images (100 do not)
    square_queries: int = 1000
    # draws per Square query on a stochastic score, a fixed slice of it (the model's common draws): 1 keeps
    # the check affordable (EOT would multiply its forward passes)
    square_eot_samples: int = 1
    # the checks' stratified sample of the test set (per model, seeded by its checks): the masking test and
    # every other check that runs an attack
    masking_normals: int = 32
    masking_anomalies: int = 32
    masking_rounds: int = 8  # stochastic detectors: re-scorings that measure the noise the test must beat

    def __post_init__(self) -> None:
        if self.noise_sigmas < 0 or self.steps_factor < 2 or self.square_queries < 1 or self.large_eps_linf <= 0:
            raise BenchError("checks need noise_sigmas >= 0, steps_factor >= 2, square_queries >= 1 and "
                             f"large_eps_linf > 0; got {self.noise_sigmas}, {self.steps_factor}, "
                             f"{self.square_queries}, {self.large_eps_linf}")
        if self.masking_normals < 1 or self.masking_anomalies < 1 or self.masking_rounds < 2 or self.noise_rounds < 2:
            raise BenchError("checks need masking_normals >= 1, masking_anomalies >= 1, masking_rounds >= 2 and "
                             f"noise_rounds >= 2; got {self.masking_normals}, {self.masking_anomalies}, "
                             f"{self.masking_rounds}, {self.noise_rounds}")


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


def run_checks(attacks: dict[str, dict], grid: dict[tuple[str, float], np.ndarray], labels: np.ndarray,
               evaluate: Evaluate, masking: Masking, cfg: CheckConfig, image_numel: int,
               seed: int = 0, sample: np.ndarray | None = None) -> list[CheckResult]:
    """The five checks for one trained model.

    ``attacks`` maps each attack of the grid to its parameters, ``grid`` maps (attack, eps) to the per-image
    test scores the grid stored, ``evaluate`` runs one more attack on the same model (on the images
    ``sample`` names, all when None), and ``masking`` runs the masking test of one norm and target."""
    rec = _Recorder()
    clean: list[np.ndarray] = []  # every image's clean scores, then the sample's scored as the sample's attacks are
    rec.run(["*"], "clean", lambda: clean.extend(evaluate("clean", {}, 0.0, s).scores for s in (None, sample)) or [])
    if not clean:
        return rec.results  # nothing can be compared with the clean scores
    part = sample if sample is not None else np.arange(len(labels))
    every = _Noise(labels, cfg, seed)  # the monotone check's: every test image
    noise = _Noise(labels[part], cfg, seed)

    def run(name: str, params: dict, eps: float) -> Evaluated:  # an attack on the sample
        return evaluate(name, params, eps, sample)

    white_box: dict[tuple[str, str], list[str]] = {}
    for name, params in attacks.items():
        attack = ATTACKS.get(name)
        if attack.norm == "none":
            continue
        curve = [(0.0, clean[0])] + sorted(((e, v) for (a, e), v in grid.items() if a == name and e > 0),
                                           key=lambda ev: ev[0])
        eps_max = max((e for (a, e) in grid if a == name), default=0.0)
        rec.run([name], "eps0", _eps0, name, params, clean[1], run)
        rec.run([name], "monotone", _monotone, name, curve, every)
        if attack.is_iterative(params) and eps_max > 0:
            big = large_eps(attack.norm, cfg, image_numel)
            rec.run([name], "large-eps", _large_eps, name, params, eps_max, big, cfg, labels[part], run)
            rec.run([name], "more-steps", _more_steps, name, params, eps_max, grid[(name, eps_max)][part], cfg,
                    noise, run)
        if attack.is_white_box(params) and eps_max > 0:  # anything with a Square part is not white-box here
            white_box.setdefault((attack.norm, params.get("target", "both")), []).append(name)
    for (norm, target), names in white_box.items():
        eps_max = max(e for (a, e) in grid if a in names)
        rec.run(names, "black-box", masking, norm, target, names, eps_max)
    return rec.results


class _Noise:
    """The noise threshold of AUROC differences between paired score sets of this model's test set."""

    def __init__(self, labels: np.ndarray, cfg: CheckConfig, seed: int) -> None:
        self.labels, self.cfg, self.seed = labels, cfg, seed

    def auroc(self, scores: np.ndarray) -> float:
        return metrics.auroc(self.labels, scores)

    def threshold(self, a: np.ndarray, b: np.ndarray) -> float:
        return difference_threshold(self.labels, a, b, self.cfg.noise_sigmas, self.cfg.noise_rounds, self.seed)


def _eps0(name: str, params: dict, clean: np.ndarray, evaluate: Run) -> list[CheckResult]:
    at_zero = evaluate(name, params, 0.0).scores
    gap = np.abs(np.asarray(at_zero, np.float64) - clean) / (1.0 + np.abs(clean))
    worst = float(np.nanmax(gap)) if len(gap) else 0.0
    ok = bool(np.isfinite(gap).all()) and worst <= FLOAT_TOLERANCE
    moved = int((~(gap <= FLOAT_TOLERANCE)).sum())
    return [CheckResult(name, "eps0", ok, worst, FLOAT_TOLERANCE,
                        "" if ok else f"eps 0 changed the score of {moved} images (relative change up to {worst:.3g})")]


def _monotone(name: str, curve: list[tuple[float, np.ndarray]], noise: _Noise) -> list[CheckResult]:
    """The largest rise of AUROC between consecutive eps, against the noise of that paired difference."""
    worst_rise, worst_threshold, where = -math.inf, 0.0, ""
    for (e0, a), (e1, b) in zip(curve, curve[1:]):
        rise, threshold = noise.auroc(b) - noise.auroc(a), noise.threshold(b, a)
        if rise - threshold > worst_rise - worst_threshold:
            worst_rise, worst_threshold, where = rise, threshold, f"eps {e0:g} to {e1:g}"
    if worst_rise == -math.inf:
        return [CheckResult(name, "monotone", True, 0.0, 0.0)]
    ok = worst_rise <= worst_threshold
    return [CheckResult(name, "monotone", ok, worst_rise, worst_threshold,
                        "" if ok else f"AUROC rises by {worst_rise:.4f} from {where} (noise threshold "
                                      f"{worst_threshold:.4f})")]


def _large_eps(name: str, params: dict, eps_max: float, big: float, cfg: CheckConfig, labels: np.ndarray,
               evaluate: Run) -> list[CheckResult]:
    scaled = ATTACKS.get(name).scaled_params(params, eps_factor=big / eps_max)  # explicit step sizes grow too
    value = metrics.auroc(labels, evaluate(name, scaled, big).scores)
    return [CheckResult(name, "large-eps", value <= cfg.large_eps_max_auroc, value, cfg.large_eps_max_auroc,
                        f"eps {big:g}")]


def _more_steps(name: str, params: dict, eps_max: float, stored: np.ndarray, cfg: CheckConfig, noise: _Noise,
                evaluate: Run) -> list[CheckResult]:
    attack = ATTACKS.get(name)
    stronger = attack.scaled_params(params, steps_factor=cfg.steps_factor)
    scores = evaluate(name, stronger, eps_max).scores
    value, ref = noise.auroc(scores), noise.auroc(stored)
    threshold = noise.threshold(scores, stored)
    ok = abs(value - ref) <= threshold
    budget = ", ".join(f"{p} {stronger[p]}" for p in attack.iteration_params)
    detail = f"{budget}: noise threshold {threshold:.4f}"
    if not ok:
        detail += f", {'lower' if value < ref else 'higher'}: " + ("not converged" if value < ref
                                                                    else "inconsistent attack")
    return [CheckResult(name, "more-steps", ok, value, ref, detail)]
