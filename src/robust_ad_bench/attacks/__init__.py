"""Attacks. Importing this package registers the built-in ones."""

from robust_ad_bench.attacks import autoattack, gradient, square  # noqa: F401  (registers)
from robust_ad_bench.attacks.base import Attack, AttackConfig, attack_objective
from robust_ad_bench.attacks.gradient import pgd

__all__ = ["Attack", "AttackConfig", "attack_objective", "pgd"]
