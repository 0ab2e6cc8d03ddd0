"""The attack suite: AutoAttack, Square, adaptive attacks (EOT, BPDA, inner gradient steps), attack target,
sanity checks on detectors built to fail them, certification by randomized smoothing, audit."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import tiny_grid
from robust_ad_bench.benchmark.execution.runner import Runner
from robust_ad_bench.benchmark.protocol.certification import (
    CertifyConfig,
    certified_auroc,
    certify,
    lower_bounds,
    min_count,
    noisy_scores,
)
from robust_ad_bench.benchmark.protocol.metrics import auroc
from robust_ad_bench.benchmark.results import leaderboard
from robust_ad_bench.benchmark.results.audit import audit_tables
from robust_ad_bench.benchmark.results.store import Store
from robust_ad_bench.core.attack import images_per_call
from robust_ad_bench.core.dataset import TrainSet
from robust_ad_bench.core.errors import BenchError
from robust_ad_bench.core.registry import ATTACKS, DATASETS, METHODS, load_plugin_file

PLUGIN = Path(__file__).parent / "plugins" / "attack_doubles.py"


@pytest.fixture(scope="module")
def digits():
    load_plugin_file(PLUGIN)
    return DATASETS.get("digits")().split("3", 0)


def fitted(name, split, params=None):
    detector = METHODS.get(name)(tuple(split.train.shape[1:]), params)
    detector.fit(TrainSet(split.train))
    return detector.eval()


def robust_auroc(detector, split, attack, eps, params=None, seed=0):
    torch.manual_seed(seed)
    a = ATTACKS.get(attack)(params)
    a.calibrate(detector, split.train)
    x_adv = a.perturb(detector, split.test, split.test_labels, eps)
    with torch.no_grad():
        return auroc(split.test_labels.numpy(), detector.score(x_adv).numpy())


def test_autoattack_is_at_least_as_strong_as_pgd_and_breaks_large_eps(digits):
    knn = fitted("knn", digits)
    fast = {"iters": 20, "square_queries": 50}
    pgd = robust_auroc(knn, digits, "pgd", 32 / 255)
    aa = robust_auroc(knn, digits, "autoattack", 32 / 255, fast)
    assert aa <= pgd + 0.02
    assert robust_auroc(knn, digits, "autoattack", 0.5, fast) < 0.2
    assert robust_auroc(knn, digits, "autoattack-l2", 2.0, {**fast, "components": ["apgd-ce"]}) < pgd


def test_autoattack_standard_selection_and_bad_components(digits):
    knn = fitted("knn", digits)
    clean = robust_auroc(knn, digits, "clean", 0.0)
    standard = robust_auroc(knn, digits, "autoattack", 0.5, {"selection": "standard", "components": ["apgd-ce"],
                                                              "iters": 10})
    assert standard < clean
    with pytest.raises(BenchError, match="apgd-dlr.*apgd-ce"):
        ATTACKS.get("autoattack")({"components": ["apgd-dlr"]})
    with pytest.raises(BenchError, match="selection"):
        ATTACKS.get("autoattack")({"selection": "best"})


def test_square_is_a_black_box_that_beats_masked_gradients(digits):
    masked = fitted("masked", digits)
    clean = robust_auroc(masked, digits, "clean", 0.0)
    white = robust_auroc(masked, digits, "pgd", 32 / 255)
    blind = robust_auroc(masked, digits, "square", 32 / 255, {"queries": 200})
    assert white > clean - 0.05  # white-box PGD sees zero gradients: robustness that looks real
    assert blind < white - 0.1


def test_eot_beats_plain_pgd_on_a_stochastic_detector(digits):
    noisy = fitted("noisy-gradient", digits)
    plain = robust_auroc(noisy, digits, "pgd", 32 / 255, {"eot_samples": 1})
    eot = robust_auroc(noisy, digits, "pgd", 32 / 255, {"eot_samples": 32})
    assert eot < plain - 0.05
    assert ATTACKS.get("pgd")().describe(noisy) == "eot=8"


def test_attack_batches_count_the_eot_copies(digits):
    noisy = fitted("noisy-gradient", digits)
    sizes = []
    score = noisy.score
    noisy.score = lambda x: sizes.append(len(x)) or score(x)
    x, y = digits.test[:40], digits.test_labels[:40]
    per_call = images_per_call(1, x.shape)  # 8×8 digits: 16 to a 32×32 image's worth of pixels
    ATTACKS.get("pgd")({"batch_size": 1, "eot_samples": 8, "steps": 2}).perturb(noisy, x, y, 8 / 255)
    assert max(sizes) == per_call == 16  # 2 images x 8 draws per call, not 16 x 8
    sizes.clear()
    ATTACKS.get("pgd")({"batch_size": 1, "eot_samples": 1, "steps": 2}).perturb(noisy, x, y, 8 / 255)
    assert max(sizes) == 16


def test_batches_count_pixels_so_large_images_take_fewer_per_call():
    """batch_size counts 32×32 images: at 64×64 a batch of 16 is 4 images (attacks, scoring, certificates),
    and small images go more to a call (8×8: 16× the batch; certificates never more than their batch)."""
    assert [images_per_call(256, s) for s in ((1, 8, 8), (3, 32, 32), (3, 64, 96), (3, 224, 224))] == [4096, 256, 42, 5]
    assert images_per_call(1, (3, 224, 224)) == 1
    train, test = torch.rand(8, 1, 64, 64), torch.rand(12, 1, 64, 64)
    detector = METHODS.get("knn")((1, 64, 64), {})
    detector.fit(TrainSet(train))
    sizes = []
    score = detector.score
    detector.score = lambda x: sizes.append(len(x)) or score(x)
    ATTACKS.get("pgd")({"batch_size": 16, "steps": 1}).perturb(detector, test, torch.zeros(12).long(), 8 / 255)
    assert max(sizes) == 4
    sizes.clear()
    noisy_scores(detector.score, test[:3], 0.25, draws=10, batch_size=16)
    assert max(sizes) == 4


def test_bpda_attacks_a_non_differentiable_purifier(digits):
    purifier = fitted("quantize-purifier", digits)
    full = robust_auroc(purifier, digits, "pgd", 32 / 255, {"gradient": "full", "random_start": False})
    bpda = robust_auroc(purifier, digits, "pgd", 32 / 255)  # auto: the detector says BPDA
    assert bpda < full - 0.1
    assert "bpda" in ATTACKS.get("pgd")().describe(purifier)


def test_attacks_differentiate_through_an_inner_gradient_step(digits):
    inner = fitted("inner-step", digits)
    x = digits.test[:4].clone().double().requires_grad_(True)
    inner.double()
    assert torch.autograd.gradcheck(inner.score, (x,), eps=1e-6, atol=1e-4)
    inner.float()
    assert robust_auroc(inner, digits, "pgd", 32 / 255) < robust_auroc(inner, digits, "clean", 0.0) - 0.05


@pytest.mark.parametrize("target", ["normal", "anomaly"])
def test_attack_target_leaves_the_other_class_alone(digits, target):
    knn = fitted("knn", digits)
    x, y = digits.test, digits.test_labels
    x_adv = ATTACKS.get("pgd")({"target": target}).perturb(knn, x, y, 32 / 255)
    attacked = y == (0 if target == "normal" else 1)
    assert torch.equal(x_adv[~attacked], x[~attacked])
    assert (x_adv[attacked] - x[attacked]).abs().amax() > 0
    with pytest.raises(BenchError, match="target.*both"):
        ATTACKS.get("pgd")({"target": "normals"})


def test_lower_bounds_and_min_count():
    bound = lower_bounds(100, 0.001)
    assert bound[0] == 0 and np.all(np.diff(bound) > 0) and bound[-1] < 1
    assert min_count(0.0, 0.25, 100, 0.001) < min_count(0.25, 0.25, 100, 0.001) <= 101
    assert min_count(10.0, 0.25, 100, 0.001) == 101  # no count out of 100 certifies 40 sigma


def test_certificates_are_sound_for_a_linear_score():
    # score w·x with |w| = 1: the exact L2 distance to the decision boundary is |w·x - t|
    torch.manual_seed(0)
    w = torch.randn(1, 1, 4, 4)
    w /= w.norm()
    x = torch.rand(200, 1, 4, 4)
    labels = (torch.rand(200) < 0.5).numpy().astype(int)
    x[labels == 1] += 0.3 * w[0]  # anomalies sit further along w

    def score(z):
        return (z * w).flatten(1).sum(1)

    cfg = CertifyConfig(sigmas=(0.25,), n0=50, n=500, radii=(0.0, 0.1, 0.2, 0.4), threshold_quantile=0.5)
    rows = certify(score, x, labels, x[labels == 0], 0.25, cfg)
    accuracy = [r["certified_accuracy"] for r in rows]
    aurocs = [r["certified_auroc"] for r in rows]
    assert accuracy == sorted(accuracy, reverse=True) and aurocs == sorted(aurocs, reverse=True)
    assert aurocs[0] <= auroc(labels, score(x).numpy()) + 0.02
    # soundness: no image is certified beyond its true distance to the boundary
    margin = (score(x) - rows[0]["threshold"]).abs().numpy()
    correct = (score(x).numpy() > rows[0]["threshold"]).astype(int) == labels
    for r in rows:
        assert r["certified_accuracy"] <= np.mean(correct & (margin >= r["radius"])) + 0.01
    assert certified_auroc(np.sort(np.random.rand(10, 5)), np.array([0, 1] * 5), 6) == 0.0


def test_sanity_checks_flag_masking_and_broken_attacks(tmp_path, digits):
    cfg = tiny_grid(tmp_path, methods="masked,knn,ae", attacks="clean,pgd,helpful-pgd,eps0-leak", classes="3",
                    eps="8/255,32/255")
    cfg.checks.square_queries = 200
    summary = Runner(cfg).run()
    assert not summary.failed and summary.checked == 3
    with Store(tmp_path) as store:
        checks, results = store.checks(), store.results()
    failed = {(r.method, r.attack, r.name) for r in checks.itertuples() if not r.passed}
    assert ("masked", "pgd", "black-box") in failed
    assert ("masked", "pgd", "large-eps") in failed
    assert ("ae", "helpful-pgd", "monotone") in failed
    assert ("knn", "eps0-leak", "error:eps0") in failed  # the runtime guard: it leaves the eps-ball at eps 0
    leak = checks[(checks["method"] == "knn") & (checks["attack"] == "eps0-leak")].set_index("name")
    assert "attack 'eps0-leak' left the linf eps-ball" in leak.loc["error:eps0", "detail"]
    # a sound attack passes the checks of the attack itself; kNN's nearest neighbour switches, so Square finds a
    # worse point than PGD-10 on a few images (no scoring noise: any such image flags, and Square joins the
    # worst case)
    assert not {(a, n) for m, a, n in failed if m == "knn" and a == "pgd"} - {("pgd", "black-box")}
    table = leaderboard.wide(results, checks=checks)
    assert "!" in table.loc["masked", "digits pgd 32/255"] and "B" in table.loc["masked", "digits pgd 32/255"]
    # the per-image worst case carries the flags of every attack it combines (eps0-leak's !, helpful-pgd's m)
    worst = table.loc["knn", "digits worst-linf 32/255"]
    assert "!" in worst and "!" in worst.split("!", 1)[1]
    assert any("gradient masking" in line for line in leaderboard.flag_legend(table))
    audit = audit_tables(results, checks)[0]
    assert "black-box on pgd" in " ".join(str(c) for col in audit.columns for c in col._cells)
    # a second run computes no job; the checks of a model where a check raised (eps0-leak's) run again
    again = Runner(cfg).run()
    assert again.computed == 0 and again.checked == 3


def test_certification_runs_for_certifiable_or_all_methods(tmp_path):
    cfg = tiny_grid(tmp_path, methods="knn", attacks="clean", classes="3")
    cfg.checks.enabled = False
    cfg.certify.methods, cfg.certify.n0, cfg.certify.n = "all", 20, 100
    assert Runner(cfg).run().certified == 1
    with Store(tmp_path) as store:
        table = store.certified()
    assert len(table) == len(cfg.certify.radii)
    assert table["certified_accuracy"].is_monotonic_decreasing
    cfg.certify.methods = "certifiable"  # knn is not flagged certifiable: nothing to do
    assert Runner(cfg).run().certified == 0


def test_checks_missing_from_an_earlier_run_are_computed_without_recomputing_jobs(tmp_path):
    cfg = tiny_grid(tmp_path, methods="knn", classes="3")
    cfg.checks.enabled = False
    assert Runner(cfg).run().computed == 2
    cfg.checks.enabled = True  # e.g. a run killed after its jobs, before its checks
    summary = Runner(cfg).run()
    assert (summary.computed, summary.checked, summary.trained) == (0, 1, 0)
    with Store(tmp_path) as store:
        assert set(store.checks()["name"]) == {"eps0", "monotone", "large-eps", "more-steps", "black-box"}


def test_more_steps_check_flags_an_attack_that_has_not_converged(tmp_path):
    cfg = tiny_grid(tmp_path, methods="knn", classes="3")
    # on every test image: on the default sample of 32 + 32 this attack's shortfall (about 0.04 AUROC) is within
    # the noise of a 64-image AUROC (the checks' sample trades this power for a cost that does not grow with the
    # test set; README, sanity checks)
    cfg.checks.masking_normals = cfg.checks.masking_anomalies = 10_000
    cfg.attack_params = {"pgd": {"steps": 1, "step_size": 8 / 255, "random_start": False}}  # far from the edge
    Runner(cfg).run()
    with Store(tmp_path) as store:
        checks = store.checks().set_index("name")
    assert not checks.loc["more-steps", "passed"]
    assert checks.loc["more-steps", "value"] < checks.loc["more-steps", "reference"]
    assert "not converged" in checks.loc["more-steps", "detail"]
