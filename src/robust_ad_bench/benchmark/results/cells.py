"""One configuration per leaderboard cell, and fall-backs that say so.

A cell is (method, dataset, attack, norm, eps). Rows of one cell that differ in anything but the class and
the seed (an attack or method parameter, a version, the draws, the test set, the attacks a worst case
combines) are different configurations: they are never averaged. The cell shows the latest configuration
(the one whose newest row was stored last) and notes how many older ones the store holds; ``older_rows``
gives those for listing side by side. A cell also says when rows of its configuration failed and when a
worst-case row reports a fall-back (``worst_case.FALLBACK``), and a model's worst case taken from its only
successful attack because the others failed is marked wherever it is used (audit, plots).
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pandas as pd

from robust_ad_bench.benchmark.grid.jobs import StoredConfig, content_key
from robust_ad_bench.benchmark.protocol.worst_case import FALLBACK

CELL = ["method", "dataset", "attack", "norm", "eps"]
MODEL_EPS = ["train_key", "norm", "eps"]
WORST_PREFIX = "worst-"
# what varies over the classes and seeds of one configuration (the worst case's job and check keys and the
# weights' key follow them)
IDENTITY = ("normal_class", "seed", "jobs", "checks", "weights")
_ORDER = "_order"


def is_worst(attacks: pd.Series) -> pd.Series:
    return attacks.astype(str).str.startswith(WORST_PREFIX)


def payload(config: Any) -> dict[str, Any]:
    """A stored config without what varies over classes and seeds."""
    return {k: v for k, v in StoredConfig.parse(config).payload.items() if k not in IDENTITY}


def configuration(config: Any) -> str:
    """The id of a row's configuration."""
    return content_key(payload(config))


def _flat(value: Any, prefix: str = "") -> dict[str, str]:
    if isinstance(value, dict):
        out: dict[str, str] = {}
        for key, item in value.items():
            out.update(_flat(item, f"{prefix}{key}."))
        return out
    return {prefix.rstrip("."): json.dumps(value, sort_keys=True, default=str)}


def difference(config: Any, reference: Any, most: int = 3) -> str:
    """What ``config`` sets differently from ``reference`` (``attack_params.steps=10``), at most ``most``."""
    mine, theirs = _flat(payload(config)), _flat(payload(reference))
    changed = [f"{k}={mine.get(k, '–')}" for k in sorted(set(mine) | set(theirs)) if mine.get(k) != theirs.get(k)]
    return ", ".join(changed[:most]) + (f" (+{len(changed) - most})" if len(changed) > most else "")


def _ordered(results: pd.DataFrame) -> pd.DataFrame:
    """``results`` with its storage order (``row_order``, else ``finished_at``, else as given) and config id."""
    for column, empty in (("config", "{}"), ("attack_detail", "")):  # frames built by hand may lack them
        if column not in results:
            results = results.assign(**{column: empty})
    order = results["row_order"] if "row_order" in results else pd.Series(range(len(results)), results.index)
    if "finished_at" in results and "row_order" not in results:
        order = results["finished_at"].astype(str) + order.map(lambda n: f"{n:012d}")
    return results.assign(_config=results["config"].map(configuration), **{_ORDER: order})


def latest(results: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(the rows of each cell's latest configuration, the rows of its older configurations); both carry a
    ``_config`` column."""
    if results.empty:
        return results.assign(_config=[]), results.assign(_config=[])
    frame = _ordered(results)
    newest = frame.sort_values(_ORDER).drop_duplicates(CELL, keep="last")[[*CELL, "_config"]]
    marked = frame.merge(newest.rename(columns={"_config": "_latest"}), on=CELL, how="left")
    marked.index = frame.index
    current = marked["_config"] == marked["_latest"]
    return frame[current.values].drop(columns=_ORDER), frame[~current.values].drop(columns=_ORDER)


def cell_notes(results: pd.DataFrame) -> dict[tuple, str]:
    """Per cell: ``+N older`` (older configurations stored), ``N failed`` (rows of its configuration that
    failed), ``N fallback`` (worst-case rows that report a fall-back)."""
    shown, older = latest(results)
    notes: dict[tuple, list[str]] = {}
    for key, rows in older.groupby(CELL):
        notes.setdefault(key, []).append(f"+{rows['_config'].nunique()} older")
    for key, rows in shown.groupby(CELL):
        failed = int((rows["status"] == "failed").sum())
        fallback = int(rows["attack_detail"].fillna("").str.contains(FALLBACK, regex=False).sum())
        found = notes.setdefault(key, [])
        found.extend([f"{failed} failed"] * bool(failed) + [f"{fallback} fallback"] * bool(fallback))
    return {key: "[" + ", ".join(parts) + "]" for key, parts in notes.items() if parts}


def older_rows(results: pd.DataFrame) -> list[tuple[tuple, str, pd.DataFrame]]:
    """Per cell with older configurations: (cell, how each differs from the latest, its ok rows), newest first."""
    shown, older = latest(results)
    reference = {key: rows["config"].iloc[0] for key, rows in shown.groupby(CELL)}
    out = []
    ordered = older.assign(**{_ORDER: _ordered(older)[_ORDER]}) if not older.empty else older
    for key, rows in ordered.groupby(CELL):
        for _, group in sorted(rows.groupby("_config"), key=lambda kv: kv[1][_ORDER].max(), reverse=True):
            ok = group[group["status"] == "ok"]
            if not ok.empty and key in reference:
                out.append((key, difference(ok["config"].iloc[0], reference[key]), ok))
    return out


def worst_per_model(results: pd.DataFrame) -> pd.DataFrame:
    """Per model (train_key), norm and eps > 0: its ``worst-<norm>`` row of the latest configuration (the
    per-image worst case over every candidate), or the row of the only attack that succeeded there. A
    ``fallback`` column says why a row stands in for a worst case it is not: a worst case that reports a
    single candidate, or the only attack left when the others (or the worst case) failed."""
    shown, _ = latest(results)
    ok = shown[(shown["status"] == "ok") & (shown["norm"] != "none") & shown["auroc"].notna()]
    if ok.empty:
        return ok.assign(fallback=[])
    worst = ok[is_worst(ok["attack"])]
    worst = worst.assign(fallback=[d.split(FALLBACK, 1)[1].split(",", 1)[0].strip() if FALLBACK in str(d) else ""
                                   for d in worst["attack_detail"]])
    single = ok[~is_worst(ok["attack"])]
    single = single[single.groupby(MODEL_EPS)["attack"].transform("nunique") == 1]
    covered = set(map(tuple, worst[MODEL_EPS].values))
    single = single[np.array([tuple(v) not in covered for v in single[MODEL_EPS].values], dtype=bool)]
    tried = shown[shown["norm"] != "none"].groupby(MODEL_EPS)["attack"].agg(lambda a: sorted(set(a)))
    reasons = []
    for model_eps, attack in zip(map(tuple, single[MODEL_EPS].values), single["attack"]):
        others = [a for a in tried.get(model_eps, []) if a != attack]
        reasons.append(f"only {attack} succeeded ({', '.join(others)} failed)" if others else "")
    return pd.concat([worst, single.assign(fallback=reasons)]).drop(columns="_config")
