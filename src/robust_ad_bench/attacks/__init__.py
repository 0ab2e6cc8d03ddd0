"""Attacks. Importing this package registers the built-in ones."""

from robust_ad_bench.attacks import autoattack, ensemble, gradient, square  # noqa: F401  (registers)
