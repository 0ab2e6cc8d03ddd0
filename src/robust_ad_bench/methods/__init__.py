"""Methods (detectors). Importing this package registers the built-in ones.

One folder per method family: ``detector.py`` holds its registered classes, files beside it its own parts
(``losses.py``, ``flow.py``, ``diffusion.py``, ...), ``README.md`` its description and measurements;
``baselines/`` has one module per baseline. ``common/`` holds what several methods share: networks,
frozen feature extractors, and the training loop every method's training goes through.

A method imports ``core``, ``common`` and, for adversarial training, the generic PGD of
``attacks.gradient``; never another method (``diffpure-ae`` gets ``ae`` through the registry),
``datasets`` or ``benchmark``.
"""

from robust_ad_bench.methods import advrad, anomalib, baselines, bgad, cobra, sla2p  # noqa: F401  (registers)
