"""The ground layer: errors, hyper-parameter parsing, the registries and the three plugin contracts.

It imports nothing else of robust_ad_bench. ``methods``, ``attacks`` and ``datasets`` stand on it, and
``benchmark`` (grid, runner, store, evaluation, reports, CLI) stands on all of them; see CONTRIBUTING.md.
"""
