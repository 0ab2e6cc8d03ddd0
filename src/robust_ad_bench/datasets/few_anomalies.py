"""The few-anomaly protocol: a handful of labelled test anomalies handed to supervised methods.

``hold_out_anomalies`` moves ``n`` anomalies (optionally only of the ``known_defects`` types, so the other
types stay unseen) out of the test set into ``Split.anomalies``. The runner does this for every method of
a grid cell, so all methods are tested on the same reduced test set.
"""

from __future__ import annotations

from dataclasses import replace

import torch

from robust_ad_bench.core.dataset import Split
from robust_ad_bench.core.errors import BenchError, unknown_choice


def hold_out_anomalies(split: Split, n: int, known_defects: list[str] | None,
                       generator: torch.Generator) -> Split:
    """A copy of ``split`` whose test set lacks ``n`` anomalies, which become ``split.anomalies``.

    The anomalies are spread over the known defect types in turn (each type's order is a random
    permutation drawn from ``generator``), so 10 anomalies of 2 types are 5 + 5.
    """
    if n <= 0:
        return split
    labels = split.test_labels
    anomalous = torch.nonzero(labels == 1).flatten()
    defects = split.test_defects or [""] * len(labels)
    kinds = sorted({defects[i] for i in anomalous.tolist()})
    known = sorted(set(known_defects)) if known_defects else kinds
    for kind in known:
        if kind not in kinds:
            raise unknown_choice("known defect type", kind, kinds)
    pools = []
    for kind in known:
        pool = anomalous[[defects[i] == kind for i in anomalous.tolist()]]
        pools.append(pool[torch.randperm(len(pool), generator=generator)].tolist())
    available = sum(map(len, pools))
    if n > available:
        raise BenchError(f"n_anomalies {n} is more than the {available} test anomalies of types "
                         f"{', '.join(known)}")
    chosen: list[int] = []
    rank = 0
    while len(chosen) < n:  # round robin over the types
        chosen += [pool[rank] for pool in pools if rank < len(pool)][: n - len(chosen)]
        rank += 1
    taken = torch.tensor(sorted(chosen))
    keep = torch.ones(len(labels), dtype=torch.bool)
    keep[taken] = False
    return replace(
        split,
        test=split.test[keep],
        test_labels=labels[keep],
        test_masks=None if split.test_masks is None else split.test_masks[keep],
        test_defects=None if split.test_defects is None else [d for d, k in zip(defects, keep.tolist()) if k],
        anomalies=split.test[taken],
        anomaly_masks=None if split.test_masks is None else split.test_masks[taken],
        known_defects=known,
    )
