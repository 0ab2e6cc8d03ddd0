"""BGAD and its unsupervised ablation (importing registers ``bgad`` and ``bgad-unsup``)."""

from robust_ad_bench.methods.bgad import detector  # noqa: F401  (registers)
