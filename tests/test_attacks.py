import pytest
import torch

from robust_ad_bench.benchmark.protocol import metrics
from robust_ad_bench.core.attack import attack_objective
from robust_ad_bench.core.dataset import TrainSet
from robust_ad_bench.core.errors import BenchError
from robust_ad_bench.core.registry import ATTACKS, DATASETS, METHODS


@pytest.fixture(scope="module")
def knn_digits():
    split = DATASETS.get("digits")().split("0", seed=0)
    detector = METHODS.get("knn")((1, 8, 8))
    detector.fit(TrainSet(split.train))
    return detector, split


@pytest.fixture(scope="module")
def ae_digits():
    torch.manual_seed(0)
    split = DATASETS.get("digits")().split("3", seed=0)
    detector = METHODS.get("ae")((1, 8, 8), {"epochs": 15})
    detector.fit(TrainSet(split.train))
    return detector, split


def robust_auroc(detector, split, attack, eps, **params):
    x_adv = ATTACKS.get(attack)(params).perturb(detector, split.test, split.test_labels, eps)
    with torch.no_grad():
        return metrics.auroc(split.test_labels.numpy(), detector.score(x_adv).numpy()), x_adv


@pytest.mark.parametrize("attack", ["clean", "fgsm", "fgsm-l2", "pgd", "pgd-l2"])
def test_eps_zero_is_the_identity(knn_digits, attack):
    detector, split = knn_digits
    x_adv = ATTACKS.get(attack)().perturb(detector, split.test, split.test_labels, 0.0)
    assert torch.equal(x_adv, split.test)


@pytest.mark.parametrize("attack,eps", [("fgsm", 8 / 255), ("pgd", 8 / 255), ("fgsm-l2", 0.5), ("pgd-l2", 0.5)])
def test_eps_ball_and_pixel_range_are_respected(ae_digits, attack, eps):
    detector, split = ae_digits
    _, x_adv = robust_auroc(detector, split, attack, eps)
    delta = (x_adv - split.test).flatten(1)
    if ATTACKS.get(attack).norm == "linf":
        assert delta.abs().max() <= eps + 1e-6
    else:
        assert delta.norm(dim=1).max() <= eps + 1e-5
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    assert delta.abs().max() > 0  # it did move


def test_pgd_lowers_auroc_of_non_robust_baselines(knn_digits, ae_digits):
    for detector, split in (knn_digits, ae_digits):
        clean, _ = robust_auroc(detector, split, "clean", 0.0)
        attacked, _ = robust_auroc(detector, split, "pgd", 32 / 255)
        assert attacked < clean - 0.05, (detector.name, clean, attacked)


def test_robust_auroc_falls_with_eps_and_large_eps_drives_it_to_zero(ae_digits):
    detector, split = ae_digits
    values = [robust_auroc(detector, split, "pgd", eps)[0] for eps in (0, 8 / 255, 32 / 255, 0.5)]
    assert all(b <= a + 1e-9 for a, b in zip(values, values[1:])), values
    assert values[-1] < 0.05, values


def test_pgd_is_at_least_as_strong_as_fgsm_per_sample(ae_digits):
    detector, split = ae_digits
    _, x_fgsm = robust_auroc(detector, split, "fgsm", 32 / 255)
    _, x_pgd = robust_auroc(detector, split, "pgd", 32 / 255)
    with torch.no_grad():
        clean = attack_objective(detector, split.test, split.test_labels)
        pgd_obj = attack_objective(detector, x_pgd, split.test_labels)
        fgsm_obj = attack_objective(detector, x_fgsm, split.test_labels)
    assert pgd_obj.mean() > clean.mean()
    assert pgd_obj.mean() >= fgsm_obj.mean()


def test_attacks_are_repeatable_given_the_seed(ae_digits):
    detector, split = ae_digits
    torch.manual_seed(1)
    a = ATTACKS.get("pgd")().perturb(detector, split.test[:50], split.test_labels[:50], 8 / 255)
    torch.manual_seed(1)
    b = ATTACKS.get("pgd")().perturb(detector, split.test[:50], split.test_labels[:50], 8 / 255)
    assert torch.equal(a, b)


def test_bad_eps_and_params_are_clear_errors(knn_digits):
    detector, split = knn_digits
    with pytest.raises(BenchError, match="eps must be a number >= 0, got -0.1"):
        ATTACKS.get("pgd")().perturb(detector, split.test, split.test_labels, -0.1)
    with pytest.raises(BenchError, match="unknown parameter of attack 'pgd' 'stepz'.*did you mean 'steps'"):
        ATTACKS.get("pgd")({"stepz": 3})
    with pytest.raises(BenchError, match="attack 'pgd'.steps must be int"):
        ATTACKS.get("pgd")({"steps": "many"})
