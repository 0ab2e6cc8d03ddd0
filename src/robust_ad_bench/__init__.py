"""robust-ad-bench: adversarially robust anomaly detectors under one attack suite.

The three plugin kinds and their registries:

- methods (:class:`robust_ad_bench.methods.base.Detector`), registered with ``@register_method``;
- attacks (:class:`robust_ad_bench.attacks.base.Attack`), registered with ``@register_attack``;
- datasets (:class:`robust_ad_bench.datasets.base.Dataset`), registered with ``@register_dataset``.
"""

__version__ = "0.1.0"
