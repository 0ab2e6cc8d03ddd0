"""robust-ad-bench: adversarially robust anomaly detectors under one attack suite.

The public API for plugins, all from ``robust_ad_bench``:

- methods subclass :class:`Detector` (``fit``, then ``score``; higher is more anomalous) and register with
  ``@register_method("name")``;
- attacks subclass :class:`Attack` (``perturb_batch``) and register with ``@register_attack``;
- datasets subclass :class:`Dataset` (``classes``, ``split`` returning a :class:`Split`) and register
  with ``@register_dataset``.

And the Python API beside the command line: ``evaluate(detector, dataset, attacks=..., eps=..., out=...)``
runs a grid as ``robust-ad-bench run`` does and returns its rows as a DataFrame; ``load_detector(out,
method, dataset, normal_class, seed)`` restores a trained model from a results folder. Both live in
``benchmark.api`` and are imported on first use, so a plugin importing this package loads none of the
benchmark.
"""

from typing import Any

from robust_ad_bench.core.attack import Attack, AttackConfig, attack_objective
from robust_ad_bench.core.dataset import Dataset, Split, TrainSet
from robust_ad_bench.core.detector import Detector, DetectorConfig
from robust_ad_bench.core.errors import BenchError
from robust_ad_bench.core.registry import (
    ATTACKS,
    DATASETS,
    METHODS,
    load_plugin_file,
    register_attack,
    register_dataset,
    register_method,
)
from robust_ad_bench.core.version import __version__

__all__ = [
    "ATTACKS", "DATASETS", "METHODS", "Attack", "AttackConfig", "BenchError", "Dataset", "Detector",
    "DetectorConfig", "Split", "TrainSet", "attack_objective", "evaluate", "load_detector", "load_plugin_file",
    "register_attack", "register_dataset", "register_method", "__version__",
]


def __getattr__(name: str) -> Any:
    """``evaluate`` and ``load_detector``, imported when first used (PEP 562)."""
    if name in ("evaluate", "load_detector"):
        from robust_ad_bench.benchmark.api import evaluate, load_detector

        return {"evaluate": evaluate, "load_detector": load_detector}[name]
    raise AttributeError(f"module 'robust_ad_bench' has no attribute '{name}'")
