"""robust-ad-bench: adversarially robust anomaly detectors under one attack suite.

The public API for plugins, all from ``robust_ad_bench``:

- methods subclass :class:`Detector` (``fit``, then ``score``; higher is more anomalous) and register with
  ``@register_method("name")``;
- attacks subclass :class:`Attack` (``perturb_batch``) and register with ``@register_attack``;
- datasets subclass :class:`Dataset` (``classes``, ``split`` returning a :class:`Split`) and register
  with ``@register_dataset``.
"""

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

__version__ = "0.1.0"
__all__ = [
    "ATTACKS", "DATASETS", "METHODS", "Attack", "AttackConfig", "BenchError", "Dataset", "Detector",
    "DetectorConfig", "Split", "TrainSet", "attack_objective", "load_plugin_file", "register_attack",
    "register_dataset", "register_method", "__version__",
]
