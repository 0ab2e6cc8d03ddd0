"""SLA²P and its ablation SLA (see README.md beside this file)."""

from robust_ad_bench.methods.sla2p.detector import SLA, SLA2P, SLA2PConfig, SLA2PConstantInner

__all__ = ["SLA", "SLA2P", "SLA2PConfig", "SLA2PConstantInner"]
