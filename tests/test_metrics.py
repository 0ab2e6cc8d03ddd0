"""Metrics agree with scikit-learn (ties included) and reject bad input with clear messages."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn import metrics as skm

from robust_ad_bench.benchmark.protocol import metrics


def _data(seed: int, n: int = 500, decimals: int = 1, pos_frac: float = 0.3):
    """Random labels and scores; rounding the scores creates many ties."""
    rng = np.random.default_rng(seed)
    labels = (rng.random(n) < pos_frac).astype(int)
    labels[:2] = [0, 1]  # both classes always present
    scores = np.round(rng.normal(size=n) + labels, decimals)
    return labels, scores


def _sk_fpr_at_tpr(labels, scores, target=0.95) -> float:
    fpr, tpr, _ = skm.roc_curve(labels, scores, drop_intermediate=False)
    return float(fpr[np.argmax(tpr >= target)])


SEEDS = range(6)
DECIMALS = [0, 1, 2, 8]


@pytest.mark.parametrize("decimals", DECIMALS)
def test_roc_curve_matches_sklearn(decimals):
    for seed in SEEDS:
        labels, scores = _data(seed, decimals=decimals)
        fpr, tpr, thr = metrics.roc_curve(labels, scores)
        sk_fpr, sk_tpr, sk_thr = skm.roc_curve(labels, scores, drop_intermediate=False)
        np.testing.assert_allclose(fpr, sk_fpr)
        np.testing.assert_allclose(tpr, sk_tpr)
        assert np.isinf(thr[0]) and np.isinf(sk_thr[0])
        np.testing.assert_allclose(thr[1:], sk_thr[1:])
        assert (fpr[0], tpr[0]) == (0.0, 0.0)
        assert (fpr[-1], tpr[-1]) == (1.0, 1.0)


@pytest.mark.parametrize("decimals", DECIMALS)
def test_auroc_matches_sklearn_with_ties(decimals):
    for seed in SEEDS:
        labels, scores = _data(seed, decimals=decimals)
        expected = skm.roc_auc_score(labels, scores)
        assert metrics.auroc(labels, scores) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("decimals", DECIMALS)
def test_aupr_matches_average_precision(decimals):
    for seed in SEEDS:
        labels, scores = _data(seed, decimals=decimals)
        expected = skm.average_precision_score(labels, scores)
        assert metrics.aupr(labels, scores) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("decimals", DECIMALS)
@pytest.mark.parametrize("target", [0.5, 0.9, 0.95, 1.0])
def test_fpr_at_tpr_matches_sklearn_roc_curve(decimals, target):
    for seed in SEEDS:
        labels, scores = _data(seed, decimals=decimals)
        got = metrics.fpr_at_tpr(labels, scores, tpr=target)
        assert got == pytest.approx(_sk_fpr_at_tpr(labels, scores, target), abs=1e-12)


def test_fpr_at_tpr_exact_target_is_reached():
    # 20 positives: TPR 0.95 is hit exactly at the 19th positive, which needs no false positive here.
    labels = np.r_[np.ones(20), np.zeros(10)]
    scores = np.r_[np.arange(20, 1, -1), 0.5, np.linspace(1.5, 1.0, 10)]
    assert metrics.fpr_at_tpr(labels, scores) == 0.0
    assert metrics.fpr_at_tpr(labels, scores, tpr=1.0) == pytest.approx(1.0)


def test_fpr_at_tpr_rejects_bad_target():
    labels, scores = _data(0)
    with pytest.raises(ValueError, match="tpr"):
        metrics.fpr_at_tpr(labels, scores, tpr=1.5)


def test_perfect_inverted_and_constant_scores():
    labels = np.r_[np.zeros(50, dtype=int), np.ones(30, dtype=int)]
    scores = np.arange(80, dtype=float)
    assert metrics.auroc(labels, scores) == 1.0
    assert metrics.aupr(labels, scores) == 1.0
    assert metrics.fpr_at_tpr(labels, scores) == 0.0
    assert metrics.auroc(labels, -scores) == 0.0
    assert metrics.fpr_at_tpr(labels, -scores) == 1.0
    constant = np.full(80, 0.3)
    assert metrics.auroc(labels, constant) == 0.5
    assert metrics.aupr(labels, constant) == pytest.approx(30 / 80)
    assert metrics.fpr_at_tpr(labels, constant) == 1.0


def test_image_metrics_keys_and_values():
    labels, scores = _data(3)
    out = metrics.image_metrics(labels, scores)
    assert set(out) == {"auroc", "aupr", "fpr95"}
    assert out["auroc"] == pytest.approx(skm.roc_auc_score(labels, scores))
    assert out["aupr"] == pytest.approx(skm.average_precision_score(labels, scores))
    assert out["fpr95"] == pytest.approx(_sk_fpr_at_tpr(labels, scores))
    assert all(isinstance(v, float) for v in out.values())


def test_accepts_bool_and_float_labels_and_float32_scores():
    labels, scores = _data(4, decimals=2)
    expected = skm.roc_auc_score(labels, scores.astype(np.float32))
    for lab in (labels.astype(bool), labels.astype(np.float32), labels.astype(np.uint8)):
        assert metrics.auroc(lab, scores.astype(np.float32)) == pytest.approx(expected, abs=1e-12)


def test_pixel_auroc_matches_sklearn_on_flattened_arrays():
    rng = np.random.default_rng(7)
    masks = rng.random((4, 32, 24)) < 0.1
    maps = np.round(rng.random((4, 32, 24)) + 0.5 * masks, 2).astype(np.float32)
    expected = skm.roc_auc_score(masks.ravel(), maps.ravel())
    assert metrics.pixel_auroc(masks, maps) == pytest.approx(expected, abs=1e-12)
    # A singleton channel axis (N x 1 x H x W) is accepted on either side.
    assert metrics.pixel_auroc(masks[:, None], maps) == pytest.approx(expected, abs=1e-12)
    assert metrics.pixel_auroc(masks, maps[:, None]) == pytest.approx(expected, abs=1e-12)


def test_pixel_auroc_shape_mismatch_names_both_shapes():
    masks = np.zeros((2, 64, 64), dtype=bool)
    masks[0, :8, :8] = True
    maps = np.zeros((2, 32, 32), dtype=np.float32)
    with pytest.raises(ValueError, match=r"\(2, 32, 32\).*\(2, 64, 64\)"):
        metrics.pixel_auroc(masks, maps)


def test_pixel_auroc_all_normal_masks_rejected():
    masks = np.zeros((2, 8, 8), dtype=bool)
    with pytest.raises(ValueError, match="masks must contain both 0 and 1, got only 0"):
        metrics.pixel_auroc(masks, np.random.default_rng(0).random((2, 8, 8)))


def test_torch_input():
    torch = pytest.importorskip("torch")
    labels, scores = _data(5, decimals=2)
    t_labels = torch.tensor(labels)
    t_scores = torch.tensor(scores, dtype=torch.float32, requires_grad=True)
    expected = skm.roc_auc_score(labels, scores.astype(np.float32))
    assert metrics.auroc(t_labels, t_scores) == pytest.approx(expected, abs=1e-12)
    out = metrics.image_metrics(t_labels.bool(), t_scores * 2)
    assert out["auroc"] == pytest.approx(expected, abs=1e-12)
    masks = torch.rand(2, 1, 8, 8) < 0.2
    maps = torch.rand(2, 8, 8, dtype=torch.bfloat16)
    expected_px = skm.roc_auc_score(masks.numpy().ravel(), maps.float().numpy().ravel())
    assert metrics.pixel_auroc(masks, maps) == pytest.approx(expected_px, abs=1e-12)


def test_nan_scores_message():
    labels, scores = _data(0, n=20)
    scores[[1, 5, 9]] = np.nan
    with pytest.raises(ValueError, match="scores contain 3 NaN values"):
        metrics.auroc(labels, scores)
    with pytest.raises(ValueError, match="scores contain 3 NaN values"):
        metrics.image_metrics(labels, scores)


def test_infinite_scores_message():
    labels, scores = _data(0, n=20)
    scores[[2, 3]] = [np.inf, -np.inf]
    scores[4] = np.nan
    with pytest.raises(ValueError, match="scores contain 1 NaN and 2 infinite values"):
        metrics.aupr(labels, scores)


@pytest.mark.parametrize("only", [0, 1])
def test_single_class_message(only):
    with pytest.raises(ValueError, match=f"labels must contain both 0 and 1, got only {only}"):
        metrics.auroc(np.full(10, only), np.arange(10.0))


def test_length_mismatch_message():
    with pytest.raises(ValueError, match="same length, got 10 and 9"):
        metrics.fpr_at_tpr(np.r_[np.zeros(5), np.ones(5)], np.arange(9.0))


def test_non_binary_labels_message():
    with pytest.raises(ValueError, match="labels must contain only 0 and 1.*2"):
        metrics.auroc(np.array([0, 1, 2, 1]), np.arange(4.0))


def test_bootstrap_ci_contains_estimate_and_is_deterministic():
    labels, scores = _data(1, n=300, decimals=2)
    point = metrics.auroc(labels, scores)
    low, high = metrics.bootstrap_ci(labels, scores, n=200, seed=3)
    assert 0.0 <= low < point < high <= 1.0
    assert (low, high) == metrics.bootstrap_ci(labels, scores, n=200, seed=3)
    assert (low, high) != metrics.bootstrap_ci(labels, scores, n=200, seed=4)
    # Any metric with the (labels, scores) signature works.
    ap = metrics.aupr(labels, scores)
    ap_low, ap_high = metrics.bootstrap_ci(labels, scores, metric=metrics.aupr, n=100, seed=0)
    assert ap_low < ap < ap_high


def test_bootstrap_ci_rejects_bad_arguments():
    labels, scores = _data(1, n=50)
    with pytest.raises(ValueError, match="alpha"):
        metrics.bootstrap_ci(labels, scores, alpha=1.5)
    with pytest.raises(ValueError, match="n "):
        metrics.bootstrap_ci(labels, scores, n=0)
    scores[0] = np.nan
    with pytest.raises(ValueError, match="scores contain 1 NaN values"):
        metrics.bootstrap_ci(labels, scores)


def _sk_all(labels, scores) -> dict[str, float]:
    return {"auroc": skm.roc_auc_score(labels, scores), "aupr": skm.average_precision_score(labels, scores),
            "fpr95": _sk_fpr_at_tpr(labels, scores)}


def _tied_cases():
    """Scores where ties decide the result: the cases a hand-written rank sum gets wrong first."""
    rng = np.random.default_rng(11)
    n = 20_000
    labels = (rng.random(n) < 0.05).astype(int)  # few positives, as anomalous pixels are
    labels[:2] = [0, 1]
    noisy = rng.normal(size=n) + labels
    yield "all-equal", labels, np.full(n, 0.25)
    yield "two-values", labels, (rng.random(n) < 0.3 + 0.4 * labels).astype(float)
    yield "three-values", labels, rng.integers(0, 3, n) + labels * (rng.random(n) < 0.5)
    yield "uint8-map", labels, np.clip(np.round(noisy * 40 + 100), 0, 255).astype(np.uint8)
    yield "float16", labels, noisy.astype(np.float16)
    yield "256-levels", labels, np.round(noisy * 32) / 32
    yield "positives-all-tied", labels, np.where(labels == 1, 0.7, np.round(rng.random(n), 1))
    yield "tie-at-95-tpr", np.r_[np.ones(20), np.zeros(20)].astype(int), np.r_[np.arange(19, 0, -1), 0, 0, 0,
                                                                                 np.arange(-1, -19, -1)].astype(float)


@pytest.mark.parametrize("name,labels,scores", list(_tied_cases()), ids=[c[0] for c in _tied_cases()])
def test_every_metric_equals_sklearn_on_heavily_tied_scores(name, labels, scores):
    """The hand-written metrics are kept for speed (CONTRIBUTING.md: hand-written pieces): pinned here to
    scikit-learn to 1e-12 where ties decide the value."""
    expected = _sk_all(labels, scores)
    got = metrics.image_metrics(labels, scores)
    for key in expected:
        assert got[key] == pytest.approx(expected[key], abs=1e-12), key
    fpr, tpr, thr = metrics.roc_curve(labels, scores)
    sk_fpr, sk_tpr, sk_thr = skm.roc_curve(labels, scores, drop_intermediate=False)
    np.testing.assert_allclose(fpr, sk_fpr, rtol=0, atol=1e-12)
    np.testing.assert_allclose(tpr, sk_tpr, rtol=0, atol=1e-12)
    np.testing.assert_array_equal(thr[1:], sk_thr[1:])


def test_pixel_auroc_equals_sklearn_on_quantized_maps():
    rng = np.random.default_rng(12)
    masks = np.zeros((3, 64, 64), dtype=bool)
    masks[:, 20:30, 10:40] = True
    maps = np.clip(np.round(rng.normal(size=masks.shape) * 30 + 90 + 40 * masks), 0, 255).astype(np.uint8)
    assert metrics.pixel_auroc(masks, maps) == pytest.approx(skm.roc_auc_score(masks.ravel(), maps.ravel()), abs=1e-12)


def test_the_sklearn_comparison_can_fail():
    """A double of the metric that splits ties the wrong way (ties counted as wins) differs from sklearn by
    more than the tolerance on tied scores: the comparison above would catch it."""
    labels = np.r_[np.zeros(50, dtype=int), np.ones(50, dtype=int)]
    scores = np.r_[np.zeros(50), np.zeros(25), np.ones(25)]
    pos, neg = scores[labels == 1], scores[labels == 0]
    ties_as_wins = float((pos[:, None] >= neg[None, :]).mean())
    assert abs(ties_as_wins - skm.roc_auc_score(labels, scores)) > 1e-12
    assert metrics.auroc(labels, scores) == pytest.approx(skm.roc_auc_score(labels, scores), abs=1e-12)
