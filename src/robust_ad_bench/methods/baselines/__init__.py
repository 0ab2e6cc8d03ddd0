"""Plain baselines: Deep SVDD, a convolutional autoencoder (and its adversarially trained twin), kNN."""

from robust_ad_bench.methods.baselines import autoencoder, deep_svdd, knn  # noqa: F401  (registers)
