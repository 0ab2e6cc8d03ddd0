"""AUROC per defect type, and on seen vs unseen types, for grids run with the few-anomaly protocol.

The store keeps every job's test scores in test-set order; the defect type of each test image is rebuilt
from the (deterministic) split, so no extra column is needed. "seen": normals against the anomalies of the
types the known anomalies were drawn from; "unseen": against the other types.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from robust_ad_bench.benchmark.grid.jobs import StoredConfig
from robust_ad_bench.benchmark.protocol import metrics
from robust_ad_bench.benchmark.results.store import Store
from robust_ad_bench.core.dataset import Split
from robust_ad_bench.datasets.protocols import SplitSpec, make_split


def defect_aurocs(labels: np.ndarray, scores: np.ndarray, defects: list[str],
                  known: list[str] | None) -> dict[str, float]:
    """AUROC of the normals against each defect type, and against the seen and the unseen types."""
    labels, scores = np.asarray(labels), np.asarray(scores)
    kinds = np.asarray(defects, dtype=object)
    normal = labels == 0
    groups = {str(k): kinds == k for k in sorted(set(kinds[~normal]))}
    if known:
        seen = np.isin(kinds, known) & ~normal
        groups["seen"], groups["unseen"] = seen, ~seen & ~normal
    out = {}
    for name, anomalous in groups.items():
        if anomalous.any():
            pick = normal | anomalous
            out[name] = metrics.auroc(labels[pick], scores[pick])
    return out


def defect_table(store: Store, data_root: str | None = None) -> pd.DataFrame:
    """One row per finished few-anomaly job and group (defect type, seen, unseen) with its AUROC (splits of
    datasets read from files are rebuilt from ``data_root``, else ``$ROBUST_AD_BENCH_DATA``)."""
    results = store.results(status="ok")
    rows: list[dict[str, Any]] = []
    splits: dict[SplitSpec, Split] = {}  # rows come method by method: keep every split they test on
    for job in results.itertuples():
        spec = StoredConfig.parse(job.config).split(data_root)
        stored = store.scores(job.key)
        if not spec.n_anomalies or stored is None:
            continue
        if spec not in splits:
            splits[spec] = make_split(spec)  # the split the job was tested on, protocol included
        split = splits[spec]
        labels, scores = stored
        if split.test_defects is None or len(split.test_defects) != len(scores):
            continue  # a dataset without defect names, or a store from other data
        for group, auroc in defect_aurocs(labels, scores, split.test_defects, split.known_defects).items():
            rows.append({"method": job.method, "dataset": job.dataset, "normal_class": job.normal_class,
                         "seed": job.seed, "attack": job.attack, "norm": job.norm, "eps": job.eps,
                         "group": group, "auroc": auroc})
    return pd.DataFrame(rows, columns=["method", "dataset", "normal_class", "seed", "attack", "norm", "eps",
                                       "group", "auroc"])


def summarize(table: pd.DataFrame) -> pd.DataFrame:
    """Mean AUROC over classes and seeds: rows method × dataset × attack × eps, columns the groups."""
    if table.empty:
        return pd.DataFrame()
    wide = table.pivot_table(index=["dataset", "method", "attack", "eps"], columns="group", values="auroc",
                             aggfunc="mean")
    first = [g for g in ("seen", "unseen") if g in wide.columns]
    return wide[first + [g for g in wide.columns if g not in first]].round(3)
