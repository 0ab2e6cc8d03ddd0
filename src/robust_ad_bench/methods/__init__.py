"""Methods (detectors). Importing this package registers the built-in ones."""

from robust_ad_bench.methods import advrad, baselines, bgad, cobra, sla2p  # noqa: F401  (registers)
from robust_ad_bench.methods.base import Detector, DetectorConfig, TrainConfig

__all__ = ["Detector", "DetectorConfig", "TrainConfig"]
