"""Datasets. Importing this package registers the built-in ones."""

from robust_ad_bench.datasets import digits, tabular, textures  # noqa: F401  (registers)
