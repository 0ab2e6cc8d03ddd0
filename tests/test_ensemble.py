"""The recommended attack (``ensemble``): per image the best of its parts on the true score, so it is at least
as strong as each part on every image and every cell."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from robust_ad_bench.attacks.ensemble import Ensemble
from robust_ad_bench.benchmark.protocol.metrics import auroc
from robust_ad_bench.core.attack import attack_objective
from robust_ad_bench.core.dataset import TrainSet
from robust_ad_bench.core.errors import BenchError
from robust_ad_bench.core.registry import ATTACKS, DATASETS, METHODS, load_plugin_file

PLUGIN = Path(__file__).parent / "plugins" / "attack_doubles.py"
FAST = {"pgd_steps": 3, "pgd_restarts": 2, "apgd_iters": 5, "square_queries": 30, "batch_size": 1024}


@pytest.fixture(scope="module")
def digits():
    load_plugin_file(PLUGIN)
    return DATASETS.get("digits")().split("3", 0)


def fitted(name, split):
    detector = METHODS.get(name)(tuple(split.train.shape[1:]))
    detector.fit(TrainSet(split.train))
    return detector.eval()


@pytest.mark.parametrize("method", ["knn", "saturated", "half-masked"])
def test_ensemble_is_at_least_as_strong_as_each_part_on_every_image(digits, method, monkeypatch):
    detector = fitted(method, digits)
    seen = []
    original = Ensemble.candidates

    def spy(self, detector, x, y, eps):
        found = original(self, detector, x, y, eps)
        seen.append(found)
        return found

    monkeypatch.setattr(Ensemble, "candidates", spy)
    torch.manual_seed(0)
    attack = ATTACKS.get("ensemble")(FAST)
    attack.calibrate(detector, digits.train)
    x, y = digits.test, digits.test_labels
    x_adv = attack.perturb(detector, x, y, 32 / 255)
    (found,) = seen
    expected = {"pgd", "apgd-ce", "square"} | ({"pgd/distance", "apgd-ce/distance"} if method == "saturated" else set())
    assert set(found) == expected
    labels = y.numpy()
    with torch.no_grad():
        best = attack_objective(detector, x_adv, y)
        ensemble_auroc = auroc(labels, detector.score(x_adv).numpy())
        for name, candidate in found.items():
            assert (best >= attack_objective(detector, candidate, y)).all(), name  # every image
            assert ensemble_auroc <= auroc(labels, detector.score(candidate).numpy()) + 1e-12, name  # every cell
    detail = attack.describe(detector)
    assert detail.startswith("pgd(3x2)+apgd-ce(5)+square(30)") and "won=" in detail
    assert (x_adv - x).abs().max() <= 32 / 255 + 1e-6 and x_adv.min() >= 0 and x_adv.max() <= 1


def test_ensemble_l2_uses_l2_parts_and_stays_in_the_ball(digits):
    attack = ATTACKS.get("ensemble-l2")(FAST)
    assert {part.norm for part in attack.parts.values()} == {"l2"}
    detector = fitted("knn", digits)
    torch.manual_seed(0)
    attack.calibrate(detector, digits.train)
    x_adv = attack.perturb(detector, digits.test[:40], digits.test_labels[:40], 0.5)
    assert (x_adv - digits.test[:40]).flatten(1).norm(dim=1).max() <= 0.5 + 1e-5


def test_ensemble_options():
    with pytest.raises(BenchError, match="unknown ensemble part 'fab'.*apgd-ce"):
        ATTACKS.get("ensemble")({"parts": ["pgd", "fab"]})
    with pytest.raises(BenchError, match="square_queries must be >= 1"):
        ATTACKS.get("ensemble")({"square_queries": 0})
    assert set(ATTACKS.get("ensemble")({"parts": ["pgd"]}).parts) == {"pgd"}
    doubled = ATTACKS.get("ensemble").scaled_params({}, steps_factor=2)
    assert (doubled["pgd_steps"], doubled["apgd_iters"], doubled["square_queries"]) == (40, 100, 2000)
    square = ATTACKS.get("ensemble")().parts["square"]
    assert square.config.queries >= 1000 and square.config.eot_samples == 1
