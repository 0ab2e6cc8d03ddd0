"""COBRA (Mirzaei et al., ICLR 2025) and its ablations ``contrastive`` and ``contrastive-at``."""

from robust_ad_bench.methods.cobra import detector  # noqa: F401  (registers)
