"""How often the gradient-masking check flags a detector masked on part of its images: the old check (Square
on every test image, one fresh draw per query, flag when its AUROC is below PGD's by more than 0.02) against
the paired per-image test on a stratified sample (``benchmark.protocol.masking``, as the checks run it).

The doubles: a linear score (per-class std about 1.4) on 1×8×8 images; a marker pixel (weight 0, beyond the
eps's reach) masks a share of the images, whose score is taken of the image rounded to 1/255 (value intact,
gradient zero: white-box attacks leave them alone, a black-box search does not); optional Gaussian score
noise (a stochastic detector, 8 draws per evaluated score and per PGD gradient). Unmasked doubles (share 0)
give the false-alarm rate. Prints a table; asserts nothing.
Usage: python benchmarks/masking_check_power.py [--seeds 20] [--shares 0,0.05,0.1,0.2,0.5] [--noise 0,0.05,0.5]
       [--n 100] [--queries 1000]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from robust_ad_bench.benchmark.evaluation.scoring import score_images
from robust_ad_bench.benchmark.protocol import metrics
from robust_ad_bench.benchmark.protocol.checks import CheckConfig
from robust_ad_bench.benchmark.protocol.masking import deterministic_test, stochastic_test, stratified_sample
from robust_ad_bench.core.detector import Detector
from robust_ad_bench.core.registry import ATTACKS

EPS = 2 / 255
OLD_TOLERANCE = 0.02  # the old check's AUROC tolerance
EVAL_DRAWS = 8  # draws per evaluated score of a stochastic detector (the grid's eval_samples)
SCALE = 14.0  # score = SCALE * w·(x - 0.5), |w| = 1: per-class std 0.1 * SCALE = 1.4


class MaskedLinear(Detector):
    """A linear score, gradient-masked on the images whose marker pixel is bright, plus optional noise."""

    hidden = True

    def __init__(self, w: torch.Tensor, noise: float) -> None:
        super().__init__((1, 8, 8))
        self.register_buffer("w", w)
        self.noise = noise
        self.stochastic = noise > 0

    def score(self, x: torch.Tensor) -> torch.Tensor:
        masked = x[:, 0, 0, 0] > 0.5
        rounded = (torch.round(x * 255) / 255).detach() + 0 * x  # the value of the image, no gradient
        z = torch.where(masked.view(-1, 1, 1, 1), rounded, x)
        s = SCALE * ((z - 0.5) * self.w).flatten(1).sum(1)
        return s + self.noise * torch.randn_like(s) if self.noise else s


def make_double(share: float, noise: float, n: int, seed: int) -> tuple[MaskedLinear, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(1, 1, 8, 8, generator=g)
    w[..., 0, 0] = 0  # the marker pixel does not count
    w /= w.norm()
    labels = torch.cat([torch.zeros(n), torch.ones(n)])
    x = 0.5 + 0.1 * torch.randn(2 * n, 1, 8, 8, generator=g) + 0.2 * labels.view(-1, 1, 1, 1) * w
    masked = torch.rand(2 * n, generator=g) < share
    x[:, 0, 0, 0] = torch.where(masked, 0.9, 0.1)
    return MaskedLinear(w, noise), x.clamp(0, 1), labels


def attack(name: str, detector: MaskedLinear, x: torch.Tensor, y: torch.Tensor, params: dict, seed: int,
           common: int | None) -> torch.Tensor:
    torch.manual_seed(seed)
    a = ATTACKS.get(name)(params)
    a.common_seed = common
    return a.perturb(detector, x, y, EPS)


def one_run(share: float, noise: float, n: int, seed: int, cfg: CheckConfig) -> tuple[bool, bool]:
    """(old check flagged, new check flagged) on one double."""
    detector, x, y = make_double(share, noise, n, seed)
    labels = y.numpy().astype(np.uint8)
    draws = EVAL_DRAWS if detector.stochastic else 1
    x_pgd = attack("pgd", detector, x, y, {"steps": 10}, seed, common=seed)  # the grid's PGD, EOT from the flags
    pgd_scores = score_images(detector, x_pgd, draws, seed + 1)
    # old: Square on every image, a fresh draw per query, against PGD's AUROC with a 0.02 tolerance
    square = {"queries": cfg.square_queries, "eot_samples": cfg.square_eot_samples}
    x_old = attack("square", detector, x, y, square, seed + 2, common=None)
    old = metrics.auroc(labels, score_images(detector, x_old, draws, seed + 3)) < \
        metrics.auroc(labels, pgd_scores) - OLD_TOLERANCE
    # new: Square on the stratified sample under fixed draws, compared image by image with PGD's images
    sample = stratified_sample(labels, cfg.masking_normals, cfg.masking_anomalies, seed)
    index = torch.as_tensor(sample)
    x_new = attack("square", detector, x[index], y[index], square, seed + 4, common=seed)
    if detector.stochastic:
        def rescore(images: torch.Tensor):
            return lambda s: score_images(detector, images, draws, seed * 1000 + s)
        test = stochastic_test(labels[sample], rescore(x_pgd[index]), rescore(x_new), cfg.masking_rounds)
    else:
        test = deterministic_test(labels[sample], pgd_scores[sample], score_images(detector, x_new, 1, 0))
    return old, test.flagged


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--shares", default="0,0.05,0.1,0.2,0.5", help="shares of masked images (0: unmasked)")
    parser.add_argument("--noise", default="0,0.05,0.5", help="score noise std per draw (0: deterministic)")
    parser.add_argument("--n", type=int, default=100, help="normal and anomalous test images each")
    parser.add_argument("--queries", type=int, default=CheckConfig.square_queries)
    args = parser.parse_args()
    torch.set_num_threads(1)
    cfg = CheckConfig(square_queries=args.queries)
    shares = [float(s) for s in args.shares.split(",")]
    noises = [float(s) for s in args.noise.split(",")]
    start = time.perf_counter()
    print(f"{args.seeds} seeds, {2 * args.n} test images, eps {EPS:.4f}, Square {cfg.square_queries} queries, sample "
          f"{cfg.masking_normals}+{cfg.masking_anomalies}, {cfg.masking_rounds} re-scorings (stochastic)")
    print("| noise std | masked share | old check flags | new check flags |")
    print("|---:|---:|---:|---:|")
    for noise in noises:
        for share in shares:
            found = np.array([one_run(share, noise, args.n, seed, cfg) for seed in range(args.seeds)])
            what = "unmasked (false alarms)" if share == 0 else f"{100 * share:g} %"
            print(f"| {noise:g} | {what} | {found[:, 0].mean():.0%} | {found[:, 1].mean():.0%} |", flush=True)
    print(f"{time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
