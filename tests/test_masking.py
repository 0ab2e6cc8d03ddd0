"""The paired masking test and the noise thresholds of the image-level checks: each can fail, on
deterministic and on noisy scores, and none fails for noise alone."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from conftest import tiny_grid
from robust_ad_bench.benchmark.execution.runner import Runner
from robust_ad_bench.benchmark.protocol.masking import (
    FLOAT_TOLERANCE,
    deterministic_test,
    difference_threshold,
    stochastic_test,
    stratified_sample,
    worse,
)
from robust_ad_bench.benchmark.protocol.metrics import auroc
from robust_ad_bench.benchmark.results.store import Store
from robust_ad_bench.core.registry import load_plugin_file

PLUGIN = Path(__file__).parent / "plugins" / "attack_doubles.py"


def toy(n=32, seed=0):
    rng = np.random.default_rng(seed)
    labels = np.repeat([0, 1], n).astype(np.uint8)
    return labels, rng.normal(size=2 * n) + 1.4 * labels


def test_stratified_sample_is_seeded_and_balanced():
    labels = np.repeat([0, 1], [100, 40])
    sample = stratified_sample(labels, 32, 32, seed=3)
    assert (labels[sample] == 0).sum() == 32 and (labels[sample] == 1).sum() == 32
    assert np.array_equal(sample, stratified_sample(labels, 32, 32, seed=3))
    assert not np.array_equal(sample, stratified_sample(labels, 32, 32, seed=4))
    assert len(stratified_sample(labels, 32, 64, seed=0)) == 72  # all 40 anomalies when fewer than asked


def test_deterministic_test_flags_any_image_square_makes_worse():
    labels, white = toy()
    assert not deterministic_test(labels, white, white - labels * 1e-7).flagged  # float rounding only
    square = white.copy()
    square[-3:] -= 3.0  # three anomalies Square pushes below the normals
    test = deterministic_test(labels, white, square)
    assert test.flagged and test.images == 3 and test.combined < test.white
    assert np.array_equal(worse(labels, white, np.full_like(white, np.nan)), white)  # nan: not attacked


def noisy(true, noise, draws=8):
    return lambda seed: true + noise / np.sqrt(draws) * np.random.default_rng(seed).normal(size=len(true))


@pytest.mark.parametrize("noise", [0.05, 0.5])
def test_stochastic_test_flags_masking_and_not_noise(noise):
    labels, white = toy()
    false_alarms = sum(stochastic_test(labels, noisy(white, noise), noisy(white, noise), 8).flagged
                       for _ in range(1)) + sum(
        stochastic_test(labels, noisy(white, noise), noisy(white - 0.01 * (labels == 1), noise), 8).flagged
        for _ in range(1))
    assert false_alarms == 0
    masked = white.copy()
    masked[-4:] -= 3.0  # Square breaks 4 of 32 anomalies that the white-box attack could not move
    assert stochastic_test(labels, noisy(white, noise), noisy(masked, noise), 8).flagged


def test_the_stochastic_test_is_calibrated_on_equal_images():
    labels, white = toy()
    flags = [stochastic_test(labels, lambda s, k=k: noisy(white, 0.5)(1000 * k + s),
                             lambda s, k=k: noisy(white, 0.5)(1000 * k + 500 + s), 8).flagged for k in range(100)]
    assert sum(flags) <= 5  # one-sided 1 % test: about 1 in 100


def test_difference_threshold_follows_the_noise_of_the_paired_difference():
    labels, a = toy(100)
    rng = np.random.default_rng(1)
    close = difference_threshold(labels, a, a + 0.01 * rng.normal(size=len(a)), 3.0, 200, 0)
    far = difference_threshold(labels, a, a + 1.0 * rng.normal(size=len(a)), 3.0, 200, 0)
    assert 1 / (100 * 100) <= close < far
    assert difference_threshold(labels, a, a, 3.0, 200, 0) == 1 / (100 * 100)  # identical: one pair
    assert FLOAT_TOLERANCE < 1e-3


def test_worst_case_is_never_above_any_figure_the_checks_included(tmp_path):
    """ae on digits and the masked double at 8/255 and 32/255: the worst case is below every job's AUROC,
    every more-steps figure and Square's on every image when the masking test ran it, and does not rise
    with eps."""
    load_plugin_file(PLUGIN)
    cfg = tiny_grid(tmp_path, methods="ae,masked", attacks="clean,fgsm,pgd", classes="3", eps="8/255,32/255")
    assert not Runner(cfg).run().failed
    with Store(tmp_path) as store:
        results, checks = store.results(), store.checks()
    for method in ("ae", "masked"):
        rows = results[(results["method"] == method) & (results["status"] == "ok")]
        mine = checks[checks["method"] == method]
        worst = rows[rows["attack"] == "worst-linf"].set_index("eps")["auroc"].sort_index()
        assert len(worst) == 2 and worst.iloc[1] <= worst.iloc[0]  # no rise with eps
        for eps, value in worst.items():
            figures = list(rows.loc[(rows["eps"] == eps) & (rows["attack"] != "worst-linf"), "auroc"])
            if eps == worst.index.max():
                figures += list(mine.loc[mine["name"] == "more-steps", "value"])
            for detail in mine.loc[mine["name"] == "black-box", "detail"]:
                figures += [float(a) for a, e in re.findall(r"AUROC ([0-9.]+) at eps ([0-9.e-]+)", detail)
                            if abs(float(e) - eps) < 1e-9]
            assert value <= min(figures) + 1e-12, (method, eps, value, figures)
    masked = checks[(checks["method"] == "masked") & (checks["name"] == "black-box")]
    assert not masked["passed"].any() and "folded into the worst case" in masked["detail"].iloc[0]
    rows = results[(results["method"] == "masked") & (results["attack"] == "worst-linf")].sort_values("eps")
    with Store(tmp_path) as store:
        labels, scores = store.scores(rows["key"].iloc[-1])
    assert auroc(labels, scores) < 0.7  # at 32/255 Square's images broke the masked detector in the worst case
    assert "square-check" in rows["attack_detail"].iloc[-1]


def test_attacks_with_a_square_part_are_not_white_box():
    from robust_ad_bench.core.registry import ATTACKS

    assert ATTACKS.get("pgd").is_white_box({}) and not ATTACKS.get("square").is_white_box({})
    assert not ATTACKS.get("ensemble").is_white_box({"parts": ["pgd", "apgd-ce", "square"]})
    assert ATTACKS.get("ensemble").is_white_box({"parts": ["pgd", "apgd-ce"]})
    assert not ATTACKS.get("autoattack").is_white_box({"components": ["apgd-ce", "square"]})
    assert ATTACKS.get("autoattack").is_white_box({"components": ["apgd-ce"]})
