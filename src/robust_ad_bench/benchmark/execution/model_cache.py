"""Trained detectors cached by the key of their weights (``ModelSpec.weights_key``), so every attack on a
model reuses one training.

A model is written atomically (a temporary file, then ``os.replace``), so a killed run never leaves a
half-written file; one that cannot be loaded (corrupt, or from an older architecture) is trained again.
Checkpoints are read with ``weights_only=True``: nothing is unpickled.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import torch

from robust_ad_bench.benchmark.grid.jobs import ModelSpec
from robust_ad_bench.benchmark.grid.runtime import seed_everything
from robust_ad_bench.core.dataset import Split, TrainSet
from robust_ad_bench.core.detector import Detector, ProgressFn
from robust_ad_bench.core.registry import DATASETS, METHODS


class ModelCache:
    """The ``models/`` folder of a results folder (``None``: no folder; models come as state dicts)."""

    def __init__(self, folder: str | Path | None, device: torch.device) -> None:
        self.folder = Path(folder) if folder is not None else None
        self.device = device

    def path(self, weights_key: str) -> Path | None:
        return self.folder / f"{weights_key}.pt" if self.folder is not None else None

    def get(self, model: ModelSpec, split: Split,
            progress: Callable[[], ProgressFn | None] = lambda: None,
            state: dict[str, torch.Tensor] | None = None) -> tuple[Detector, bool]:
        """The trained detector: from ``state`` (a shipped state dict), from the cache, or fitted now and
        cached. Returns (detector, fitted)."""
        method = METHODS.get(model.method)
        key = model.weights_key  # shared by the grids that differ only in their test sets
        seed_everything(key)  # before construction: the initial weights come from it
        detector = method(tuple(split.train.shape[1:]), model.params).to(self.device)
        path = self.path(key)
        if state is None and path is not None and path.is_file():
            try:
                state = self.load(path, self.device)
            except Exception:  # a corrupt cache file: train again
                path.unlink(missing_ok=True)
        if state is not None:
            try:
                detector.restore({k: v.to(self.device) for k, v in state.items()})
            except Exception:  # from an older architecture: train again
                if path is not None:
                    path.unlink(missing_ok=True)
                seed_everything(key)
                detector = method(tuple(split.train.shape[1:]), model.params).to(self.device)
            else:
                return fast_layout(detector), False
        dataset = DATASETS.get(model.split.dataset)
        train = TrainSet(split.train.to(self.device), default_eps=dict(dataset.default_eps))
        if method.needs_anomalies and split.anomalies is not None:
            train.anomalies = split.anomalies.to(self.device)
            if split.anomaly_masks is not None:
                train.anomaly_masks = split.anomaly_masks.to(self.device)
        detector.progress = progress()
        try:
            detector.fit(train)
        finally:
            detector.progress = None
        detector.eval()
        if path is not None:
            self.save(detector.state_dict(), path)
        return fast_layout(detector), True

    @staticmethod
    def load(path: Path, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
        return torch.load(path, map_location=device, weights_only=True)

    @staticmethod
    def save(state: dict[str, torch.Tensor], path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        torch.save(state, tmp)
        os.replace(tmp, path)  # atomic: a killed run never leaves a half-written model


def fast_layout(detector: Detector) -> Detector:
    """The trained detector with its 4-D (convolution) weights in channels-last layout, for scoring and
    attacks only (training keeps the default layout, so trained weights are what they were). oneDNN's
    convolutions are faster on CPU in this layout at the small channel counts of these models; measured
    on one thread on trained default-grid textures models, Square with 100 queries: cobra 25.7 s -> 12.3 s,
    ae 2.2 -> 1.9 s; PGD-10: cobra 10.4 -> 7.7 s, advrad 49.3 -> 43.7 s. Values do not change, but the
    convolutions may sum in another order: the SmallUNet and the pinned models score bit for bit as before,
    a ResNet encoder's scores can move in the 7th significant digit (float rounding)."""
    return detector.to(memory_format=torch.channels_last)
