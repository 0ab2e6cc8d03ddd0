"""Surrogate objectives (Tramer et al., 2020): a score that saturates or takes a max is also attacked through
the smooth stand-ins its method declares; per image the candidate best on the TRUE score is kept."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import TINY_METHOD_PARAMS
from robust_ad_bench.benchmark.protocol.metrics import auroc
from robust_ad_bench.core.attack import attack_objective
from robust_ad_bench.core.dataset import TrainSet
from robust_ad_bench.core.registry import ATTACKS, DATASETS, METHODS, load_plugin_file

PLUGIN = Path(__file__).parent / "plugins" / "attack_doubles.py"
# methods whose score takes a max (over pixels or a feature bank) or saturates (exp, softmax, a clip)
SATURATING = ("bgad", "bgad-unsup", "advrad", "diffpure-ae", "contrastive", "contrastive-at", "cobra",
              "cobra-no-opposite", "sla2p", "sla")


@pytest.fixture(scope="module")
def digits():
    load_plugin_file(PLUGIN)
    return DATASETS.get("digits")().split("3", 0)


def fitted(name, split, params=None):
    torch.manual_seed(0)
    detector = METHODS.get(name)(tuple(split.train.shape[1:]), params)
    detector.fit(TrainSet(split.train))
    return detector.eval()


def attacked(detector, split, attack, eps, params=None, seed=0):
    torch.manual_seed(seed)
    a = ATTACKS.get(attack)(params)
    a.calibrate(detector, split.train)
    x_adv = a.perturb(detector, split.test, split.test_labels, eps)
    with torch.no_grad():
        return auroc(split.test_labels.numpy(), detector.score(x_adv).numpy()), x_adv, a.describe(detector)


def test_a_saturating_score_is_broken_through_its_surrogate(digits):
    saturated = fitted("saturated", digits)
    plain, _, _ = attacked(saturated, digits, "pgd", 32 / 255, {"surrogates": False})
    adaptive, _, detail = attacked(saturated, digits, "pgd", 32 / 255)
    assert adaptive < plain - 0.1  # the sigmoid's zero gradient hid the far anomalies from plain PGD
    assert "won=" in detail and "distance:" in detail


@pytest.mark.parametrize("attack,params", [("pgd", {}), ("fgsm", {}),
                                           ("autoattack", {"iters": 5, "components": ["apgd-ce"]})])
def test_the_kept_candidate_is_never_worse_on_the_true_score(digits, attack, params, monkeypatch):
    saturated = fitted("saturated", digits)
    seen = []
    original = ATTACKS.get(attack).candidates

    def spy(self, detector, x, y, eps):
        found = original(self, detector, x, y, eps)
        seen.append((found, y))
        return found

    monkeypatch.setattr(ATTACKS.get(attack), "candidates", spy)
    _, x_adv, _ = attacked(saturated, digits, attack, 32 / 255, {**params, "batch_size": 1024})  # one batch
    (found, y), = seen
    assert set(found) == {"score", "distance"}
    with torch.no_grad():
        best = attack_objective(saturated, x_adv, y)
        for candidate in found.values():
            assert (best >= attack_objective(saturated, candidate, y)).all()


def test_autoattack_thresholds_each_objective_on_its_own_scale(digits):
    saturated = fitted("saturated", digits)
    attack = ATTACKS.get("autoattack")({"components": ["apgd-ce"], "iters": 5})
    attack.calibrate(saturated, digits.train)
    with torch.no_grad():
        distance = saturated.distance(digits.train)
    assert set(attack.thresholds) == {"", "distance"}
    assert attack.thresholds["distance"] == pytest.approx(float(distance.quantile(0.5)), rel=1e-5)
    assert 0 <= attack.thresholds[""] <= 1  # the sigmoid's own scale


def test_black_box_attacks_ignore_surrogates(digits):
    saturated = fitted("saturated", digits)
    assert ATTACKS.get("square")().objectives(saturated) == [""]
    assert ATTACKS.get("pgd")({"surrogates": False}).objectives(saturated) == [""]
    assert ATTACKS.get("pgd")().objectives(saturated) == ["", "distance"]


@pytest.mark.parametrize("name", SATURATING)
def test_methods_with_a_max_or_a_saturating_score_declare_faithful_surrogates(digits, name):
    """Each surrogate is a finite per-sample score of the same direction as the true score (it ranks the
    test images alike) and is differentiable."""
    detector = fitted(name, digits, TINY_METHOD_PARAMS.get(name))
    surrogates = detector.surrogates()
    assert surrogates, f"{name} declares no surrogate"
    x = digits.test[:64]
    torch.manual_seed(1)
    with torch.no_grad():
        truth = detector.score(x).numpy()
    for label, fn in surrogates.items():
        z = x.clone().requires_grad_(True)
        torch.manual_seed(1)  # the same diffusion noise as the true score for stochastic methods
        values = fn(z)
        assert values.shape == (len(x),) and torch.isfinite(values).all(), label
        (grad,) = torch.autograd.grad(values.sum(), z)
        assert torch.isfinite(grad).all() and grad.abs().sum() > 0, label
        rho = np.corrcoef(np.argsort(np.argsort(truth)), np.argsort(np.argsort(values.detach().numpy())))[0, 1]
        assert rho > 0.5, (name, label, rho)


def test_methods_without_one_declare_none():
    assert METHODS.get("ae")((1, 8, 8)).surrogates() == {}
