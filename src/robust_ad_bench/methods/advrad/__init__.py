"""AdvRAD and DiffPure + detector (importing registers ``advrad`` and ``diffpure-ae``)."""

from robust_ad_bench.methods.advrad import detector  # noqa: F401  (registers)
