"""anomalib's image models (the optional extra ``[anomalib]``): they register only when anomalib imports."""

import importlib.util

if importlib.util.find_spec("anomalib") is not None:
    from robust_ad_bench.methods.anomalib import detector  # noqa: F401  (registers)
