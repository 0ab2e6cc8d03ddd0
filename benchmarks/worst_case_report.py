"""Tables from stored results: the per-image worst case against the lowest per-attack AUROC, surrogates
on and off, and the cost of one attack against another (from the jobs' wall times).

Usage:
  python benchmarks/worst_case_report.py OUT                       # worst-<norm>: per-image vs lowest attack
  python benchmarks/worst_case_report.py OUT --without OUT2        # robust AUROC with (OUT) / without (OUT2)
  python benchmarks/worst_case_report.py OUT --cost ensemble --reference pgd   # time ratio per method
Figures are means over the models (classes, seeds) of each method and dataset.
"""

from __future__ import annotations

import argparse

import pandas as pd

from robust_ad_bench.benchmark.results.leaderboard import eps_label, is_worst
from robust_ad_bench.benchmark.results.store import open_existing

KEY = ["method", "dataset", "norm", "eps"]


def load(folder: str) -> pd.DataFrame:
    with open_existing(folder) as store:
        results = store.results(status="ok")
    return results[results["norm"] != "none"]


def worst_table(results: pd.DataFrame) -> pd.DataFrame:
    """Per method, dataset, norm and eps: the mean of each model's per-image worst case and of its lowest
    per-attack AUROC over the same attacks (the old, optimistic ``worst-<norm>``)."""
    worst = results[is_worst(results["attack"])]
    attacks = results[~is_worst(results["attack"])]
    lowest = attacks.groupby(["train_key", *KEY])["auroc"].min().rename("lowest attack").reset_index()
    merged = worst.merge(lowest, on=["train_key", *KEY])
    table = merged.groupby(KEY).agg(models=("auroc", "size"), lowest=("lowest attack", "mean"),
                                    per_image=("auroc", "mean")).reset_index()
    table["difference"] = table["per_image"] - table["lowest"]
    return table


def surrogate_table(with_: pd.DataFrame, without: pd.DataFrame) -> pd.DataFrame:
    """Per method, dataset, attack and eps present in both: mean robust AUROC with and without surrogates."""
    group = [*KEY[:2], "attack", *KEY[2:]]
    a = with_.groupby(group)["auroc"].mean().rename("with surrogates")
    b = without.groupby(group)["auroc"].mean().rename("without")
    table = pd.concat([b, a], axis=1, join="inner").reset_index()
    table["difference"] = table["with surrogates"] - table["without"]
    return table


def cost_table(results: pd.DataFrame, attack: str, reference: str) -> pd.DataFrame:
    """Per method and dataset: total job seconds of ``attack`` and of ``reference`` and their ratio."""
    seconds = results[results["attack"].isin([attack, reference])].pivot_table(
        index=["method", "dataset"], columns="attack", values="seconds", aggfunc="sum")
    seconds["ratio"] = seconds[attack] / seconds[reference]
    return seconds.reset_index()


def show(table: pd.DataFrame) -> None:
    if "eps" in table:
        table = table.assign(eps=[eps_label(e, n) for e, n in zip(table["eps"], table["norm"])])
    print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out")
    parser.add_argument("--without", help="results of the same grid run with surrogates: false")
    parser.add_argument("--cost", help="attack whose cost to measure")
    parser.add_argument("--reference", default="pgd")
    args = parser.parse_args()
    results = load(args.out)
    if args.without:
        show(surrogate_table(results, load(args.without)))
    elif args.cost:
        table = cost_table(results, args.cost, args.reference)
        show(table)
        total = table[[args.cost, args.reference]].sum()
        print(f"all methods: {total[args.cost]:.1f} s vs {total[args.reference]:.1f} s, "
              f"ratio {total[args.cost] / total[args.reference]:.1f}")
    else:
        show(worst_table(results))


if __name__ == "__main__":
    main()
