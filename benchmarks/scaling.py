"""How the default run's time grows with classes per dataset and with methods.

Runs `robust-ad-bench run` of the default grid (each point in a fresh results folder, the CLI's default
executor) with the first k classes of each embedded dataset, then with the first m methods of a list, and
prints each point's wall time and the least-squares slope (seconds per added class, per added method).
Usage: python benchmarks/scaling.py [--classes 1,2,4] [--methods knn,ae,deep-svdd] [--method-counts 1,2,3]
       [--datasets digits,textures] [extra run flags...]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time

import numpy as np

from robust_ad_bench.core.registry import DATASETS


def run(flags: list[str]) -> float:
    out = tempfile.mkdtemp(prefix="rab-scaling-")
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "robust_ad_bench.benchmark.cli", "run", "--out", out, *flags],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"run {' '.join(flags)} failed:\n{proc.stderr[-2000:]}")
    return time.perf_counter() - start


DEFAULT_CLASS = {"digits": "0", "textures": "brick"}  # the default grid's


def classes_flag(k: int, datasets: list[str]) -> str:
    """The first ``k`` classes of each dataset, the default grid's class first."""
    picked = []
    for name in datasets:
        first = DEFAULT_CLASS.get(name, "")
        names = DATASETS.get(name)().classes()
        ordered = [first] + [c for c in names if c != first]
        picked += [f"{name}:{c}" for c in ordered[:k]]
    return ",".join(picked)


def slope(xs: list[int], ys: list[float]) -> float:
    return float(np.polyfit(np.asarray(xs, float), np.asarray(ys, float), 1)[0]) if len(xs) > 1 else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--classes", default="1,2,4", help="classes per dataset at each point")
    parser.add_argument("--methods", default="all", help="methods of the class points; the method list")
    parser.add_argument("--method-counts", default="", help="first m methods of --methods at each point")
    parser.add_argument("--datasets", default="digits,textures")
    args, extra = parser.parse_known_args()
    counts = [int(k) for k in args.classes.split(",") if k]
    datasets = args.datasets.split(",")
    grid = ["--datasets", args.datasets, *extra]
    walls = [run(["--methods", args.methods, "--classes", classes_flag(k, datasets), *grid]) for k in counts]
    for k, wall in zip(counts, walls):
        print(f"{k} class(es) per dataset, methods {args.methods}: {wall:.1f} s")
    print(f"slope: {slope(counts, walls):.1f} s per added class per dataset")
    if args.method_counts:
        names = args.methods.split(",")
        ms = [int(m) for m in args.method_counts.split(",") if m]
        walls = [run(["--methods", ",".join(names[:m]), "--classes", classes_flag(1, datasets), *grid]) for m in ms]
        for m, wall in zip(ms, walls):
            print(f"{m} method(s) ({','.join(names[:m])}), 1 class per dataset: {wall:.1f} s")
        print(f"slope: {slope(ms, walls):.1f} s per added method")


if __name__ == "__main__":
    main()
