"""Overhead of the attack suite: our PGD against a bare hand-written torch PGD loop, and our AutoAttack
path against calling ``pyautoattack`` directly, on the same trained model and batch.

Each pair is timed alternately ``--repeats`` times after a warm-up; the script prints the median times and
their ratio (ours / bare). Usage: python benchmarks/attack_speed.py [--dataset textures] [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

from robust_ad_bench.attacks.autoattack import TwoLogitDetector
from robust_ad_bench.core.attack import select_best
from robust_ad_bench.core.dataset import TrainSet
from robust_ad_bench.core.registry import ATTACKS, DATASETS, METHODS


def bare_pgd(detector: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, steps: int) -> torch.Tensor:
    """The textbook loop: random start, signed gradient steps on score·(1 − 2y), projection, clipping."""
    sign = 1 - 2 * y.float()
    alpha = 2.5 * eps / steps
    x_adv = (x + torch.empty_like(x).uniform_(-eps, eps)).clamp(0, 1)
    for _ in range(steps):
        x_adv.requires_grad_(True)
        (grad,) = torch.autograd.grad((detector.score(x_adv) * sign).sum(), x_adv)
        x_adv = (x + (x_adv.detach() + alpha * grad.sign() - x).clamp(-eps, eps)).clamp(0, 1)
    return x_adv


def bare_autoattack(detector: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, threshold: float,
                    iters: int, queries: int, components: list[str]) -> torch.Tensor:
    """pyautoattack called directly on a hand-made two-logit model, components run on every image."""
    from pyautoattack import AutoAttack

    with torch.no_grad():
        scale = 2 * float((detector.score(x) - threshold).abs().max())
    model = TwoLogitDetector(detector.score, threshold, scale)
    adversary = AutoAttack(model, norm="Linf", eps=eps, version="custom", attacks=components, seed=0, device="cpu")
    adversary.verbose = False
    adversary.apgd.n_iter, adversary.apgd.n_restarts = iters, 1
    adversary.fab.n_iter, adversary.fab.n_restarts = iters, 1
    adversary.square.n_queries = queries
    runs = {"apgd-ce": lambda: adversary.apgd.perturb(x, y.long(), best_loss=True),
            "fab": lambda: adversary.fab.perturb(x, y.long()),
            "square": lambda: adversary.square.perturb(x, y.long())}
    return select_best(detector.score, {c: runs[c]() for c in components}, y)[0]


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def compare(label: str, ours, bare, repeats: int) -> None:
    ours(), bare()  # warm-up
    t_ours, t_bare = [], []
    for _ in range(repeats):
        t_ours.append(timed(ours))
        t_bare.append(timed(bare))
    a, b = statistics.median(t_ours), statistics.median(t_bare)
    print(f"{label}: ours {a:.3f} s, bare {b:.3f} s, ratio {a / b:.3f}  (medians of {repeats})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dataset", default="textures")
    parser.add_argument("--method", default="ae")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--iters", type=int, default=20, help="AutoAttack APGD/FAB iterations")
    parser.add_argument("--queries", type=int, default=100, help="AutoAttack Square queries")
    args = parser.parse_args()
    torch.manual_seed(0)
    dataset = DATASETS.get(args.dataset)()
    split = dataset.split(dataset.classes()[0], 0)
    detector = METHODS.get(args.method)(tuple(split.train.shape[1:]), {"epochs": 1})
    detector.fit(TrainSet(split.train, default_eps=dict(dataset.default_eps)))
    detector.eval()
    x, y = split.test, split.test_labels
    eps = max(dataset.default_eps["linf"])
    print(f"{args.method} on {args.dataset}: batch {tuple(x.shape)}, eps {eps:.4f}, torch threads "
          f"{torch.get_num_threads()}")

    pgd = ATTACKS.get("pgd")({"steps": args.steps, "batch_size": len(x)})
    compare(f"PGD-{args.steps}", lambda: pgd.perturb(detector, x, y, eps),
            lambda: bare_pgd(detector, x, y, eps, args.steps), args.repeats)

    components = ["apgd-ce", "fab", "square"]
    aa = ATTACKS.get("autoattack")({"iters": args.iters, "square_queries": args.queries, "batch_size": len(x)})
    aa.calibrate(detector, split.train)
    compare(f"AutoAttack ({'+'.join(components)}, {args.iters} iters, {args.queries} queries)",
            lambda: aa.perturb(detector, x, y, eps),
            lambda: bare_autoattack(detector, x, y, eps, aa.threshold, args.iters, args.queries, components),
            args.repeats)


if __name__ == "__main__":
    main()
