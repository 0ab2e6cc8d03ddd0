"""The attack contract's guarantees, for every attack: the clean image is a candidate (no attack makes an
image less adversarial than leaving it alone), outputs are checked against the eps-ball and [0, 1], eps 0
runs the attack's own steps, and a stochastic detector's candidates are judged under fixed draws."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from robust_ad_bench.attacks.gradient import PGD
from robust_ad_bench.core.adaptive import fixed_draws
from robust_ad_bench.core.attack import attack_objective, check_budget
from robust_ad_bench.core.dataset import TrainSet
from robust_ad_bench.core.errors import BenchError
from robust_ad_bench.core.registry import ATTACKS, DATASETS, METHODS, load_plugin_file

PLUGIN = Path(__file__).parent / "plugins" / "attack_doubles.py"


@pytest.fixture(scope="module")
def digits():
    load_plugin_file(PLUGIN)
    split = DATASETS.get("digits")().split("3", 0)
    labels = split.test_labels
    pick = torch.cat([(labels == 0).nonzero().flatten()[:30], (labels == 1).nonzero().flatten()[:30]])
    return split.test[pick], labels[pick], split


def fitted(name, split, config=None):
    detector = METHODS.get(name)((1, 8, 8), config)
    detector.fit(TrainSet(split.train))
    return detector


class Helpful(PGD):
    """Descends the objective: every candidate it finds is worse for the attacker than ``x``."""

    name = "helpful-test"

    def perturb_batch(self, detector, x, y, eps):
        return (x + eps * (1 - 2 * y.view(-1, 1, 1, 1)) * -torch.sign(x - detector.centre)).clamp(0, 1)


def test_the_clean_image_is_always_a_candidate(digits):
    x, y, split = digits
    detector = fitted("half-masked", split)
    clean = attack_objective(detector, x, y).detach()
    for attack in (Helpful(), ATTACKS.get("fgsm")(), ATTACKS.get("square")({"queries": 5})):
        x_adv = attack.perturb(detector, x, y, 8 / 255)
        assert (attack_objective(detector, x_adv, y) >= clean).all(), attack.name
    helpful = Helpful()
    x_adv = helpful.perturb(detector, x, y, 8 / 255)
    assert torch.equal(x_adv, x) and "won=" not in helpful.describe(detector)  # x won every image


class Leaky(PGD):
    name = "leaky-test"

    def perturb_batch(self, detector, x, y, eps):
        """PGD's direction at twice the budget: more adversarial, outside the ball."""
        return (x + 2 * eps * torch.sign(super().perturb_batch(detector, x, y, eps) - x)).clamp(0, 1)


def test_an_output_outside_the_budget_fails_naming_the_attack_and_the_excess(digits):
    x, y, split = digits
    detector = fitted("knn", split)
    x = x.clamp(0, 0.5)  # room to leave the ball without the box clipping it back
    with pytest.raises(BenchError, match=r"attack 'leaky-test' left the linf eps-ball: .*excess 0\.0314"):
        Leaky({"steps": 1}).perturb(detector, x, y, 8 / 255)
    with pytest.raises(BenchError, match=r"attack 'a' left \[0, 1\].*excess 0\.5"):
        check_budget("a", torch.zeros(2, 1, 2, 2), torch.full((2, 1, 2, 2), -0.5), 1.0, "linf")
    with pytest.raises(BenchError, match="left the l2 eps-ball"):
        check_budget("a", torch.zeros(2, 1, 2, 2), torch.full((2, 1, 2, 2), 0.5), 0.5, "l2")
    check_budget("a", torch.zeros(2, 1, 2, 2), torch.full((2, 1, 2, 2), 0.25), 0.5, "l2")  # norm 0.5: inside


def test_eps0_runs_the_attack_steps(digits):
    x, y, split = digits
    detector = fitted("knn", split)
    calls = []
    original = detector.score

    def counted(z):
        calls.append(z.requires_grad)
        return original(z)

    detector.score = counted
    x_adv = ATTACKS.get("pgd")({"steps": 3}).perturb(detector, x, y, 0.0)
    assert torch.equal(x_adv, x)
    assert sum(calls) == 3  # three gradient steps ran at eps 0


def test_fixed_draws_make_a_stochastic_score_a_deterministic_slice(digits):
    x, y, split = digits
    detector = fitted("noisy-score", split)
    torch.manual_seed(1)
    state = torch.get_rng_state()
    fixed = fixed_draws(detector.score, 7)
    with torch.no_grad():
        assert torch.equal(fixed(x), fixed(x))
        assert torch.equal(torch.get_rng_state(), state)  # the caller's stream is untouched
        assert not torch.equal(detector.score(x), detector.score(x))
        other = fixed_draws(detector.score, 8)(x)
    assert not torch.equal(other, fixed(x))


def test_square_climbs_a_stochastic_score_under_fixed_draws(digits):
    """Square scores each query under the model's fixed draws; with a fresh draw per query it keeps whichever
    proposal drew lucky noise and barely moves the true (noise-free) score."""
    x, y, split = digits
    detector = fitted("noisy-score", split)

    def gain(seed):
        torch.manual_seed(0)
        attack = ATTACKS.get("square")({"queries": 200, "eot_samples": 1})
        attack.common_seed = seed
        x_adv = attack.perturb(detector, x, y, 16 / 255)
        with torch.no_grad():
            return float((attack_objective(detector.distance, x_adv, y)
                          - attack_objective(detector.distance, x, y)).mean())

    assert gain(3) > 1.5 * gain(None) > 0, (gain(3), gain(None))
