"""Methods (detectors). Importing this package registers the built-in ones."""

from robust_ad_bench.methods import advrad, baselines, bgad, cobra, sla2p  # noqa: F401  (registers)
