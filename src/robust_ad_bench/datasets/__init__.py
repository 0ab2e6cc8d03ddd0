"""Datasets. Importing this package registers the built-in ones."""

from robust_ad_bench.datasets import (  # noqa: F401  (registers)
    classification,
    digits,
    folder,
    industrial,
    tabular,
    textures,
)
