"""The per-image worst case over every candidate of one trained model at one norm and eps.

RobustBench and AutoAttack count a sample as robust only if it survives every attack; for AUROC the
analogue is, per test image, the worst of its attacked scores: the highest score of each normal image,
the lowest of each anomaly (the highest attack objective ``score·(1 − 2y)``). Its AUROC is never above
the lowest per-candidate AUROC (AUROC only falls when normal scores rise and anomaly scores fall), and is
often well below it when different attacks break different images.

Candidates: every attack's output at that eps (each already the best of its candidates and the clean image),
the model's attacks of the norm at smaller eps (inside the ball too: the worst case cannot rise with eps),
and the checks' adversarial images at that eps or below (more steps, Square on the masking sample, and
Square on every image when the masking test flagged).

- Deterministic detectors: chosen and scored from the candidates' scores.
- Stochastic detectors: candidates are chosen per image under the model's fixed draws (common random
  numbers: every candidate scored with the same draws) and the chosen images scored again with fresh
  draws. The adversarial images of jobs are therefore kept on disk (``AdversarialImages``: a compact int16
  form) by the run that computed them; a job whose images are missing (an older store, a deleted folder) is
  attacked again from its own seed. If a single candidate's own figure is still lower, it is reported, and
  the row says so (``FALLBACK`` in its detail: the leaderboard marks the cell).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

# 3: every candidate (the checks' images, smaller eps), stochastic choices under common draws, fall-backs marked
WORST_CASE_VERSION = "3"
FALLBACK = "fallback:"  # in a row's attack_detail: the figure is not what the cell's label says (leaderboard mark)
_STEPS = 32767  # int16 steps per eps


@dataclass
class Candidate:
    """Adversarial test images one source gave at ``eps``: their scores (nan where it attacked no image:
    Square on the masking sample) and, for a stochastic detector, the images (``key``: a job's, on disk)."""

    name: str
    norm: str
    eps: float
    scores: np.ndarray
    key: str = ""
    images: torch.Tensor | None = None

    @property
    def complete(self) -> bool:
        """Whether it attacked every test image (then its AUROC is a figure the worst case must not exceed)."""
        return bool(np.isfinite(self.scores).all())


def choose(labels: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Per image, the index (into the K rows of ``scores``, K×N) of the attack with the highest attack
    objective; ties go to the first attack, nan (not attacked) never wins."""
    sign = 1.0 - 2.0 * np.asarray(labels, dtype=np.float64)
    value = np.asarray(scores, dtype=np.float64) * sign[None, :]
    return np.argmax(np.nan_to_num(value, nan=-np.inf), axis=0)


def worst_scores(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(the per-image worst score, the index of the attack that gave it) from K×N scores."""
    pick = choose(labels, scores)
    return np.asarray(scores)[pick, np.arange(scores.shape[1])], pick


def wins_text(names: list[str], pick: np.ndarray) -> str:
    """``pgd:61%+square:39%``: the share of images each candidate won, most first (those that won none are
    left out)."""
    counts = np.bincount(pick, minlength=len(names))
    order = sorted(range(len(names)), key=lambda i: -counts[i])
    return "+".join(f"{names[i]}:{100 * counts[i] / max(len(pick), 1):.0f}%" for i in order if counts[i])


class AdversarialImages:
    """Adversarial test images kept on disk by job key. The perturbation is stored as int16 steps of
    eps/32767, truncated toward zero: a restored image is never outside the eps-ball (Linf or L2) nor
    [0, 1], and differs from the attacked one by less than eps/32767 per pixel."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)

    def path(self, key: str) -> Path:
        return self.folder / f"{key}.pt"

    def save(self, key: str, x: torch.Tensor, x_adv: torch.Tensor, eps: float) -> None:
        if eps <= 0:
            return
        steps = torch.trunc((x_adv - x).detach().cpu().double() / eps * _STEPS).clamp(-_STEPS, _STEPS)
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.path(key)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        torch.save({"steps": steps.to(torch.int16), "eps": float(eps)}, tmp)
        os.replace(tmp, path)  # atomic: a killed run never leaves a half-written file

    def load(self, key: str, x: torch.Tensor) -> torch.Tensor | None:
        """The adversarial images of job ``key`` for clean images ``x``, or None when not stored."""
        path = self.path(key)
        if not path.is_file():
            return None
        try:
            data = torch.load(path, map_location="cpu", weights_only=True)
        except Exception:  # a corrupt file: the caller attacks again
            return None
        if tuple(data["steps"].shape) != tuple(x.shape):
            return None
        delta = (data["steps"].double() * (data["eps"] / _STEPS)).to(x.device, x.dtype)
        return (x + delta).clamp(0, 1)
