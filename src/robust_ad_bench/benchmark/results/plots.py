"""PNG plots built from the store: AUROC against eps per dataset (every attack, and the worst case per
model), certified accuracy against L2 radius, and clean vs attacked score histograms."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402

from robust_ad_bench.benchmark.results.leaderboard import eps_label, is_worst, worst_per_model  # noqa: E402
from robust_ad_bench.benchmark.results.method_styles import method_styles  # noqa: E402
from robust_ad_bench.benchmark.results.store import Store  # noqa: E402

NORM_ORDER = ("linf", "l2")
NORM_TITLE = {"linf": r"$L_\infty$ attacks", "l2": r"$L_2$ attacks"}
LINESTYLES = ("-", "--", "-.", (0, (5, 1, 1, 1, 1, 1)))  # ":" is kept for the chance line
MARKERS = ("o", "s", "^", "D", "v", "P")


def _save(fig: plt.Figure, path: Path) -> Path:
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def safe_name(name: str) -> str:
    """File-name-safe version of ``name``: characters outside [A-Za-z0-9._-] become ``_``."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", name)


def _mean_std(values: pd.Series) -> tuple[float, float]:
    values = values.dropna()
    return float(values.mean()), (float(values.std(ddof=1)) if len(values) > 1 else 0.0)


def _norms(frame: pd.DataFrame) -> list[str]:
    present = set(frame.loc[frame["attack"] != "clean", "norm"]) - {"none"}
    return [n for n in NORM_ORDER if n in present] + sorted(present - set(NORM_ORDER))


def _attacked_datasets(ok: pd.DataFrame) -> Iterator[tuple[str, pd.DataFrame, list[str], list[str]]]:
    """``(dataset, its rows, its attack norms, its methods)`` for each dataset that was attacked."""
    for dataset in sorted(ok["dataset"].unique()):
        data = ok[ok["dataset"] == dataset]
        norms = _norms(data)
        if norms:
            yield dataset, data, norms, sorted(data["method"].unique())


def plot_auroc_vs_eps(results: pd.DataFrame, folder: Path) -> list[Path]:
    """One PNG per dataset: mean ± std AUROC (over classes and seeds) against eps, one subplot per norm."""
    ok = results[(results["status"] == "ok") & ~is_worst(results["attack"])]  # the worst case: its own plot
    paths: list[Path] = []
    for dataset, data, norms, methods in _attacked_datasets(ok):
        looks = method_styles(methods)  # a colour and a marker per method; the line style tells the attack
        colours = {m: looks[m][0] for m in methods}
        attacks = sorted(data.loc[data["norm"].isin(norms), "attack"].unique())
        styles = {a: LINESTYLES[i % len(LINESTYLES)] for i, a in enumerate(attacks)}
        band_alpha = 0.15 if len(methods) <= 3 else 0.08  # many overlapping bands turn to mud
        fig, axes = plt.subplots(1, len(norms), figsize=(5.2 * len(norms) + 2.2, 4.2), squeeze=False,
                                 layout="constrained")
        for ax, norm in zip(axes[0], norms):
            ticks: set[float] = set()
            for method in methods:
                rows = data[data["method"] == method]
                clean = rows.loc[rows["attack"] == "clean", "auroc"].dropna()
                for attack in sorted(rows.loc[rows["norm"] == norm, "attack"].unique()):
                    sub = rows[(rows["attack"] == attack) & rows["auroc"].notna()]
                    stats = [(float(e), *_mean_std(g["auroc"])) for e, g in sub.groupby("eps")]
                    if not clean.empty:
                        stats.insert(0, (0.0, *_mean_std(clean)))
                    if not stats:
                        continue
                    x, mean, std = (np.array(c) for c in zip(*stats))
                    ticks.update(x.tolist())
                    ax.plot(x, mean, ls=styles[attack], marker=looks[method][1], color=colours[method], lw=1.6, ms=5)
                    ax.fill_between(x, mean - std, mean + std, color=colours[method], alpha=band_alpha, lw=0)
            ax.axhline(0.5, color="grey", ls=":", lw=1)
            xt = sorted(ticks)
            labels = [eps_label(e, norm) for e in xt]
            if len(xt) > 4:  # small budgets crowd near 0 on a linear axis
                ax.set_xticks(xt, labels, rotation=45, ha="right", rotation_mode="anchor")
            else:
                ax.set_xticks(xt, labels)
            ax.set_ylim(0, 1)
            ax.set_xlabel(f"eps ({norm})")
            ax.set_ylabel("AUROC")
            ax.set_title(NORM_TITLE.get(norm, f"{norm} attacks"))
            ax.grid(alpha=0.3)
        handles = [Line2D([], [], color=colours[m], marker=looks[m][1], lw=2, label=m) for m in methods]
        handles += [Line2D([], [], color="black", ls=styles[a], label=a) for a in attacks]
        handles.append(Line2D([], [], color="grey", ls=":", label="chance"))
        fig.legend(handles=handles, loc="outside right center", fontsize="small", frameon=False)
        fig.suptitle(f"{dataset}: AUROC under attack (mean ± std over classes and seeds)")
        paths.append(_save(fig, folder / f"auroc_vs_eps_{safe_name(str(dataset))}.png"))
    return paths


def plot_robustness_curves(results: pd.DataFrame, folder: Path) -> list[Path]:
    """One PNG per dataset: per method, mean ± std over models of the per-image worst-case AUROC over all
    attacks of a norm at each eps (eps 0 is the clean AUROC); one subplot per norm."""
    ok = results[(results["status"] == "ok") & results["auroc"].notna()]
    paths: list[Path] = []
    for dataset, data, norms, methods in _attacked_datasets(ok):
        lowest = worst_per_model(data)  # the per-image worst case, or the only attack run at an eps
        looks = method_styles(methods)
        fig, axes = plt.subplots(1, len(norms), figsize=(5.2 * len(norms) + 2.2, 4.2), squeeze=False,
                                 layout="constrained")
        for ax, norm in zip(axes[0], norms):
            for method in methods:
                clean = data.loc[(data["method"] == method) & (data["attack"] == "clean"), "auroc"]
                rows = lowest[(lowest["method"] == method) & (lowest["norm"] == norm)]
                stats = [(float(e), *_mean_std(g["auroc"])) for e, g in rows.groupby("eps")]
                if not clean.empty:
                    stats.insert(0, (0.0, *_mean_std(clean)))
                if not stats:
                    continue
                x, mean, std = (np.array(c) for c in zip(*stats))
                colour, marker = looks[method]
                # a fall-back (a single attack standing in for the worst case) is never silent
                label = f"{method} (fallback at {rows['fallback'].astype(bool).sum()} points)" \
                    if rows["fallback"].astype(bool).any() else method
                ax.plot(x, mean, marker=marker, color=colour, lw=1.6, ms=5, label=label)
                ax.fill_between(x, mean - std, mean + std, color=colour, alpha=0.1, lw=0)
            ax.axhline(0.5, color="grey", ls=":", lw=1, label="chance")
            ticks = sorted({0.0, *map(float, lowest.loc[lowest["norm"] == norm, "eps"])})
            ax.set_xticks(ticks, [eps_label(e, norm) for e in ticks])
            ax.set_ylim(0, 1)
            ax.set_xlabel(f"eps ({norm})")
            ax.set_ylabel("worst-case AUROC")
            ax.set_title(NORM_TITLE.get(norm, f"{norm} attacks"))
            ax.grid(alpha=0.3)
        handles, labels = axes[0][0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="outside right center", fontsize="small", frameon=False)
        fig.suptitle(f"{dataset}: robustness curve\nper-image worst case over attacks (mean ± std over classes "
                     "and seeds)", fontsize="medium")
        paths.append(_save(fig, folder / f"robustness_{safe_name(str(dataset))}.png"))
    return paths


def plot_certified(certified: pd.DataFrame, folder: Path) -> list[Path]:
    """One PNG per dataset: certified accuracy against L2 radius, a line per method and sigma."""
    paths: list[Path] = []
    for dataset in sorted(certified["dataset"].unique()):
        data = certified[certified["dataset"] == dataset]
        fig, ax = plt.subplots(figsize=(7.5, 4.2), layout="constrained")
        for i, ((method, sigma), rows) in enumerate(data.groupby(["method", "sigma"])):
            curve = rows.groupby("radius")["certified_accuracy"].mean()
            ax.plot(curve.index, curve.values, marker=MARKERS[i % len(MARKERS)],
                    ls=LINESTYLES[i % len(LINESTYLES)], label=f"{method} σ={sigma:g}")
        ax.set_ylim(0, 1)
        ax.set_xlabel("L2 radius")
        ax.set_ylabel("certified accuracy")
        ax.grid(alpha=0.3)
        fig.legend(loc="outside right center", fontsize="small", frameon=False)
        fig.suptitle(f"{dataset}: certified accuracy of the smoothed detectors (mean over classes and seeds)")
        paths.append(_save(fig, folder / f"certified_{safe_name(str(dataset))}.png"))
    return paths


def _strongest(rows: pd.DataFrame) -> pd.Series | None:
    """The attacked job to show: pgd if run, else any Linf attack, else any attack; at the largest eps."""
    attacked = rows[rows["attack"] != "clean"]
    for pick in (attacked["attack"] == "pgd", attacked["norm"] == "linf", attacked["attack"].notna()):
        if pick.any():
            return attacked[pick].sort_values(["eps", "attack"], ascending=[False, True]).iloc[0]
    return None


def _panel(ax: plt.Axes, data: tuple[np.ndarray, np.ndarray] | None, bins: np.ndarray, title: str) -> None:
    ax.set_title(title, fontsize="medium")
    ax.set_xlabel("anomaly score")
    if data is None:
        ax.text(0.5, 0.5, "no scores stored", ha="center", va="center", transform=ax.transAxes)
        return
    labels, scores = data
    for value, name, colour in ((0, "normal", "tab:blue"), (1, "anomaly", "tab:red")):
        values = scores[(labels == value) & np.isfinite(scores)]
        if len(values):
            ax.hist(values, bins=bins, density=True, alpha=0.5, color=colour, label=f"{name} (n={len(values)})")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize="small")


def _auroc_text(row: pd.Series) -> str:
    return "" if pd.isna(row["auroc"]) else f", AUROC {row['auroc']:.3f}"


def plot_score_histograms(store: Store, results: pd.DataFrame, folder: Path) -> list[Path]:
    """One PNG per (method, dataset): score histograms of normal vs anomaly, clean next to strongest attack."""
    ok = results[results["status"] == "ok"]
    paths: list[Path] = []
    for (method, dataset), rows in ok.groupby(["method", "dataset"], sort=True):
        normal_class = rows["normal_class"].iloc[0]
        rows = rows[rows["normal_class"] == normal_class]
        seed = rows["seed"].iloc[0]
        rows = rows[rows["seed"] == seed]
        clean_rows = rows[rows["attack"] == "clean"]
        clean = clean_rows.iloc[0] if not clean_rows.empty else None
        attacked = _strongest(rows)
        clean_data = store.scores(clean["key"]) if clean is not None else None
        attacked_data = store.scores(attacked["key"]) if attacked is not None else None
        stored = [d[1][np.isfinite(d[1])] for d in (clean_data, attacked_data) if d is not None]
        if sum(len(s) for s in stored) == 0:
            continue  # no scores stored for this method and dataset: nothing to draw
        bins = np.histogram_bin_edges(np.concatenate(stored), bins=40)
        fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharex=True, layout="constrained")
        clean_title = "clean (not run)" if clean is None else f"clean{_auroc_text(clean)}"
        _panel(axes[0], clean_data, bins, clean_title)
        if attacked is None:
            attacked_title = "no attacked job"
        else:
            label = f"{attacked['attack']} eps={eps_label(float(attacked['eps']), str(attacked['norm']))}"
            attacked_title = f"{label}{_auroc_text(attacked)}"
        _panel(axes[1], attacked_data, bins, attacked_title)
        axes[0].set_ylabel("density")
        fig.suptitle(f"{dataset} / {method}: test scores (normal class {normal_class}, seed {seed})")
        paths.append(_save(fig, folder / f"scores_{safe_name(str(dataset))}_{safe_name(str(method))}.png"))
    return paths


def make_plots(store: Store, folder: Path, methods: list[str] | None = None,
               datasets: list[str] | None = None) -> list[Path]:
    """Write every plot for the finished jobs of ``store`` (optionally only some methods/datasets) into ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    results = store.results(status="ok")
    if methods is not None:
        results = results[results["method"].isin(methods)]
    if datasets is not None:
        results = results[results["dataset"].isin(datasets)]
    certified = store.certified()
    if methods is not None:
        certified = certified[certified["method"].isin(methods)]
    if datasets is not None:
        certified = certified[certified["dataset"].isin(datasets)]
    from robust_ad_bench.benchmark.results import gallery, transfer_report

    transfers = store.transfer()
    if methods is not None:
        transfers = transfers[transfers["source"].isin(methods) & transfers["target"].isin(methods)]
    if datasets is not None:
        transfers = transfers[transfers["dataset"].isin(datasets)]
    galleries = gallery.plot_galleries(store.folder / gallery.GALLERY_FOLDER, folder, methods, datasets)
    return (plot_auroc_vs_eps(results, folder) + plot_robustness_curves(results, folder)
            + plot_certified(certified, folder) + plot_score_histograms(store, results, folder)
            + transfer_report.plot_transfer(transfers, folder) + galleries)
