"""One robustness number per method: the normalized area under its per-image worst-case AUROC against eps.

Per model and norm, the curve runs from eps 0, where it is anchored at the model's clean AUROC, through the
worst-case AUROC (``cells.worst_per_model``) at every eps that ran; the trapezoid area from 0 to the largest
eps, divided by that eps, lies in [0, 1] (the mean AUROC over the eps range, linear between the points). A
model attacked at one eps gets the mean of its clean and attacked AUROC. The figure is averaged over the
models (classes, seeds) of a method and dataset; it compares methods only over the same eps range (each
dataset's grid), which the column name states.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from robust_ad_bench.benchmark.results.cells import latest, worst_per_model
from robust_ad_bench.benchmark.results.leaderboard import eps_label

AREA_PREFIX = "area-"


def normalized_area(eps: np.ndarray, auroc: np.ndarray, clean: float) -> float:
    """Trapezoid area under (0, clean), (eps_i, auroc_i) up to the largest eps, divided by it."""
    order = np.argsort(eps)
    x = np.r_[0.0, np.asarray(eps, np.float64)[order]]
    y = np.r_[clean, np.asarray(auroc, np.float64)[order]]
    return float(np.trapezoid(y, x) / x[-1])


def robustness_areas(results: pd.DataFrame) -> pd.DataFrame:
    """Per method, dataset and norm: clean AUROC, the normalized area (mean ± std over models), the models
    it averages and the largest eps (columns method, dataset, norm, clean, area, area_std, n, eps_max)."""
    columns = ["method", "dataset", "norm", "clean", "area", "area_std", "n", "eps_max"]
    if results.empty:
        return pd.DataFrame(columns=columns)
    shown = latest(results)[0]
    clean = shown[(shown["status"] == "ok") & (shown["attack"] == "clean")].groupby("train_key")["auroc"].mean()
    worst = worst_per_model(results)
    rows = []
    for (method, dataset, norm, train_key), curve in worst.groupby(["method", "dataset", "norm", "train_key"]):
        if train_key not in clean.index or curve.empty:
            continue
        points = curve.groupby("eps")["auroc"].mean()
        area = normalized_area(points.index.to_numpy(float), points.to_numpy(float), float(clean[train_key]))
        rows.append((method, dataset, norm, float(clean[train_key]), area, float(points.index.max())))
    if not rows:
        return pd.DataFrame(columns=columns)
    frame = pd.DataFrame(rows, columns=["method", "dataset", "norm", "clean", "area", "eps_max"])
    out = frame.groupby(["method", "dataset", "norm"]).agg(
        clean=("clean", "mean"), area=("area", "mean"), area_std=("area", "std"), n=("area", "size"),
        eps_max=("eps_max", "max")).reset_index()
    out["area_std"] = out["area_std"].fillna(0.0)
    return out[columns]


def area_column(dataset: str, norm: str, eps_max: float) -> str:
    return f"{dataset} {AREA_PREFIX}{norm} 0..{eps_label(eps_max, norm)}"


def with_areas(table: pd.DataFrame, results: pd.DataFrame) -> pd.DataFrame:
    """The wide leaderboard with one robustness-area column per dataset and norm, right after the dataset's
    clean column ("mean ± std" over models, like the other cells)."""
    areas = robustness_areas(results)
    if table.empty or areas.empty:
        return table
    out = table.copy()
    for (dataset, norm), rows in areas.groupby(["dataset", "norm"], sort=True):
        label = area_column(str(dataset), str(norm), float(rows["eps_max"].max()))
        cells = {r.method: (f"{r.area:.3f} ± {r.area_std:.3f}" if r.n > 1 else f"{r.area:.3f}")
                 for r in rows.itertuples()}
        values = [cells.get(m, "–") for m in out.index]
        clean = f"{dataset} clean"
        where = list(out.columns).index(clean) + 1 if clean in out.columns else len(out.columns) - 1
        out.insert(where, label, values)
    return out


SORT_CHOICES = ("method", "robustness", "clean")


def sort_table(table: pd.DataFrame, by: str) -> pd.DataFrame:
    """Rows sorted by ``by``: method (name), robustness (mean of the area columns, best first), clean (mean of
    the clean columns, best first), or any column's exact name (its leading number, highest first)."""
    if table.empty or by == "method":
        return table.sort_index()
    if by == "robustness":
        cols = [c for c in table.columns if f" {AREA_PREFIX}" in str(c)]
    elif by == "clean":
        cols = [c for c in table.columns if str(c).endswith(" clean")]
    elif by in table.columns:
        cols = [by]
    else:
        from robust_ad_bench.core.errors import BenchError

        raise BenchError(f"unknown --sort '{by}'; valid: {', '.join(SORT_CHOICES)} or a column of the table: "
                         f"{', '.join(map(str, table.columns))}")
    key = table[cols].apply(lambda col: col.map(_number)).mean(axis=1) if cols else pd.Series(0.0, table.index)
    return table.loc[key.sort_values(ascending=False, na_position="last", kind="stable").index]


def _number(cell: object) -> float:
    try:
        return float(str(cell).split()[0])
    except (ValueError, IndexError):
        return float("nan")
