"""Scoring throughput of SLA²P (images/s) on this machine, for K pseudo-classes (default 256).

Fits ``sla2p`` (default settings otherwise) on one class of each embedded dataset, then times
- clean scoring as the runner does it (under ``no_grad``; the inner perturbation step still runs), and
- one attack step: score and gradient wrt the input, through the inner step (double backprop) and with
  the inner step as a constant (``sla2p-const-inner``), and ``sla`` (no inner step) for reference.
Usage: OMP_NUM_THREADS=1 python benchmarks/sla2p_throughput.py [--k 256] [--repeats 3]
"""

from __future__ import annotations

import argparse
import time

import torch

from robust_ad_bench.core.dataset import TrainSet
from robust_ad_bench.core.registry import DATASETS, METHODS


def best_rate(fn, x: torch.Tensor, repeats: int) -> float:
    """Images per second of ``fn(x)``, best of ``repeats`` timings."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn(x)
        best = min(best, time.perf_counter() - start)
    return len(x) / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--k", type=int, default=256, help="number of projections (pseudo-classes)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch", type=int, default=256, help="images scored at once")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), K = {args.k}")
    for dataset, cls in (("digits", "0"), ("textures", "brick")):
        split = DATASETS.get(dataset)().split(cls, seed=0)
        torch.manual_seed(0)
        base = METHODS.get("sla2p")(tuple(split.train.shape[1:]), {"n_projections": args.k})
        start = time.perf_counter()
        base.fit(TrainSet(split.train))
        fit_s = time.perf_counter() - start
        x = split.test[: args.batch]
        for name in ("sla2p", "sla2p-const-inner", "sla"):
            detector = METHODS.get(name)(tuple(split.train.shape[1:]), {"n_projections": args.k})
            detector.restore(base.state_dict())

            def clean(batch: torch.Tensor, detector=detector) -> None:
                with torch.no_grad():
                    detector.score(batch)

            def attack_step(batch: torch.Tensor, detector=detector) -> None:
                batch = batch.clone().requires_grad_(True)
                torch.autograd.grad(detector.score(batch).sum(), batch)

            print(f"{dataset}/{cls} {name:18s} features {detector.feature_kind}: clean scoring "
                  f"{best_rate(clean, x, args.repeats):7.1f} img/s, score+gradient "
                  f"{best_rate(attack_step, x, args.repeats):7.1f} img/s (batch {len(x)}; fit {fit_s:.1f} s)")


if __name__ == "__main__":
    main()
