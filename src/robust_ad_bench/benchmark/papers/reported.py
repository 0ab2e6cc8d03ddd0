"""Reported figures beside reproduced ones: the join that ``reproduce``, ``leaderboard --reported`` (and the
HTML report) share.

A reproduced value is matched to a figure on method, dataset, class, metric, attack, norm, eps and the
protocol it ran under (one-class, few-anomaly with n labelled anomalies, transductive with its
contamination). Aggregation follows the paper's granularity: a per-class figure is set beside the mean
over seeds of that class; a ``mean`` figure beside the mean over classes of those per-class means, and
only when every class of the dataset ran (``classes`` says how many did; a mean over a subset is shown in
``reproduce`` with its count, never matched on the leaderboard).
"""

from __future__ import annotations

from collections.abc import Iterable

import pandas as pd

from robust_ad_bench.benchmark.grid.jobs import StoredConfig
from robust_ad_bench.benchmark.papers.catalog import MEAN, Figure
from robust_ad_bench.core.errors import BenchError
from robust_ad_bench.core.registry import DATASETS

CELL = ["method", "dataset", "attack", "norm", "eps"]
Setting = tuple[str, float | None, int]


def run_setting(config: str | dict | None) -> Setting:
    """The protocol a stored job ran under: (protocol, contamination, labelled anomalies held out)."""
    payload = StoredConfig.parse(config).payload
    few = payload.get("few_anomalies") or {}
    contamination = payload.get("contamination")
    return (payload.get("protocol", "one-class"), None if contamination is None else float(contamination),
            int(few.get("n_anomalies", 0)))


def class_counts(datasets: Iterable[str]) -> dict[str, int]:
    """How many classes each dataset has (datasets whose classes depend on files they lack are left out)."""
    out = {}
    for name in set(datasets):
        try:
            out[name] = len(DATASETS.get(name).create().classes())
        except BenchError:
            continue
    return out


def reproduced(results: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Per cell (``CELL``), setting and class: ``value`` = the mean of ``metric`` over seeds (``n`` seeds);
    and per cell and setting, class ``mean``: the mean over classes of those values (``n`` classes)."""
    columns = [*CELL, "setting", "normal_class", "value", "n"]
    ok = results[(results["status"] == "ok") & results[metric].notna()] if not results.empty else results
    if ok.empty:
        return pd.DataFrame(columns=columns)
    ok = ok.assign(setting=ok["config"].map(run_setting), eps=ok["eps"].round(10))
    per_class = (ok.groupby([*CELL, "setting", "normal_class"], sort=False)[metric]
                 .agg(value="mean", n="count").reset_index())
    means = (per_class.groupby([*CELL, "setting"], sort=False)["value"].agg(value="mean", n="count").reset_index()
             .assign(normal_class=MEAN))
    return pd.concat([per_class, means[columns]], ignore_index=True)[columns]


def _key(method: str, dataset: str, normal_class: str, metric: str, attack: str, norm: str, eps: float,
         setting: Setting) -> tuple:
    return method, dataset, str(normal_class), metric, attack, norm, round(float(eps), 10), setting


def figure_index(figures: Iterable[Figure]) -> dict[tuple, list[Figure]]:
    index: dict[tuple, list[Figure]] = {}
    for f in figures:
        index.setdefault(_key(f.method, f.dataset, f.normal_class, f.metric, f.attack, f.norm, f.eps, f.setting),
                         []).append(f)
    return index


def compare(results: pd.DataFrame, figures: Iterable[Figure], metrics: Iterable[str] = ("auroc",)) -> pd.DataFrame:
    """One row per reproduced value (per class and ``mean``) and metric, with the matching figure:
    ``reported`` (percent, NaN where the paper has none or it was not found), ``found`` (True, False for
    "not found", None without a figure), ``reproduced`` and ``difference`` in percent (no difference for a
    mean over only some of the classes), ``n`` and ``of`` (seeds; or classes run of the dataset's classes
    for ``mean`` rows), ``source``. A figure of a method and dataset that ran without any successful job
    gets a row too, reproduced NaN and ``n`` 0."""
    figures = list(figures)
    index = figure_index(figures)
    totals = class_counts(results["dataset"]) if not results.empty else {}
    rows = []
    for metric in dict.fromkeys([*metrics, *(f.metric for f in figures)]):
        for r in reproduced(results, metric).itertuples(index=False):
            matches = index.get(_key(r.method, r.dataset, r.normal_class, metric, r.attack, r.norm, r.eps, r.setting),
                                [])
            found = [f for f in matches if f.value is not None]
            reported = found[0].value if found else float("nan")
            of = totals.get(r.dataset, 0) if r.normal_class == MEAN else r.n
            partial = r.normal_class == MEAN and r.n != of  # a mean over some classes: not comparable
            rows.append({"dataset": r.dataset, "class": r.normal_class, "method": r.method, "metric": metric,
                         "attack": r.attack, "norm": r.norm, "eps": r.eps, "setting": r.setting,
                         "reported": reported, "reproduced": 100 * r.value,
                         "difference": float("nan") if partial else 100 * r.value - reported,
                         "n": int(r.n), "of": of,
                         "found": bool(found) if matches else None,
                         "source": "; ".join(dict.fromkeys(_cite(f) for f in (found or matches)))})
    attempted = (set(zip(results["method"], results["dataset"], results["config"].map(run_setting)))
                 if not results.empty else set())
    matched = {(r["method"], r["dataset"], r["class"], r["metric"], r["attack"], r["norm"], round(r["eps"], 10),
                r["setting"]) for r in rows}
    for key, matches in index.items():  # figures of what ran but produced no value (every job failed)
        method, dataset = key[0], key[1]
        if (method, dataset, key[-1]) in attempted and key not in matched:
            f = matches[0]
            rows.append({"dataset": dataset, "class": f.normal_class, "method": method, "metric": f.metric,
                         "attack": f.attack, "norm": f.norm, "eps": f.eps, "setting": f.setting,
                         "reported": f.value if f.value is not None else float("nan"), "reproduced": float("nan"),
                         "difference": float("nan"), "n": 0, "of": totals.get(dataset, 0) if f.normal_class == MEAN
                         else 0, "found": f.value is not None, "source": _cite(f)})
    return pd.DataFrame(rows, columns=["dataset", "class", "method", "metric", "attack", "norm", "eps", "setting",
                                       "reported", "reproduced", "difference", "n", "of", "found", "source"])


def _cite(f: Figure) -> str:
    where = f"{f.table}, p. {f.page}" if f.page else f.table
    return f"{f.paper}: {where}" if f.value is not None else f"{f.paper}: {f.source}"


def cell_reported(results: pd.DataFrame, figures: Iterable[Figure], metric: str = "auroc") -> dict[tuple, str]:
    """For the leaderboard: (method, dataset, attack, norm, eps) → the reported figure as text ("0.994",
    "not found"), where the cell's runs share one protocol and cover either one class (a per-class figure)
    or every class of the dataset (a ``mean`` figure)."""
    index = figure_index(figures)
    ok = results[(results["status"] == "ok") & results[metric].notna()] if not results.empty else results
    if ok.empty or not index:
        return {}
    ok = ok.assign(setting=ok["config"].map(run_setting), eps=ok["eps"].round(10))
    totals = class_counts(ok["dataset"])
    out = {}
    for cell, rows in ok.groupby(CELL, sort=False):
        settings, classes = set(rows["setting"]), set(rows["normal_class"].astype(str))
        if len(settings) != 1:
            continue
        dataset = cell[1]
        if len(classes) == totals.get(dataset, -1):
            which = MEAN
        elif len(classes) == 1:
            which = next(iter(classes))
        else:
            continue
        method, _, attack, norm, eps = cell
        matches = index.get(_key(method, dataset, which, metric, attack, norm, eps, next(iter(settings))), [])
        texts = [f"{f.value / 100:.3f}" if f.value is not None else "not found" for f in matches]
        if texts:
            out[cell] = "; ".join(dict.fromkeys(texts))
    return out
