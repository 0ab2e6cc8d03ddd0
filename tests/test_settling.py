"""The exact savings for deterministic detectors: settled images are not attacked further, Square skips the
images the white-box attacks settled, and a model's clean scores are computed once. Each gives the same
AUROC, AUPR, FPR95, worst cases and check outcomes as without it, and each saves work."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import tiny_grid
from robust_ad_bench.attacks import gradient, square
from robust_ad_bench.benchmark.evaluation import scoring
from robust_ad_bench.benchmark.execution.runner import Runner
from robust_ad_bench.benchmark.protocol import settling
from robust_ad_bench.benchmark.results.store import Store
from robust_ad_bench.core.attack import Settle, attack_objective
from robust_ad_bench.core.dataset import TrainSet
from robust_ad_bench.core.registry import ATTACKS, DATASETS, METHODS


def test_bounds_are_the_other_class_reachable_extremes():
    labels = np.array([0, 0, 1, 1])
    clean = np.array([1.0, 3.0, 2.0, 5.0])
    bounds = settling.settle_bounds(labels, clean)
    # normals: above the highest clean anomaly (5); anomalies: below the lowest clean normal (1): objective -1
    assert bounds[0] == pytest.approx(5.0, rel=1e-4) and bounds[0] > 5.0
    assert bounds[2] == pytest.approx(-1.0, rel=1e-4) and bounds[2] > -1.0
    assert not settling.settled(labels, clean, bounds).any()
    moved = np.array([5.0 + 1e-7, 6.0, 0.99, np.nan])  # rounding beyond the bound does not settle; nan never
    assert settling.settled(labels, moved, bounds).tolist() == [False, True, True, False]
    assert settling.settled(labels, np.array([1.0, 3.0, 2.0, 0.5]), bounds).tolist() == [False, False, False, True]
    assert np.isinf(settling.settle_bounds(np.zeros(3), np.ones(3))).all()  # no anomalies: never settled


@pytest.fixture(scope="module")
def ae_digits():
    torch.manual_seed(0)
    split = DATASETS.get("digits")().split("3", seed=0)
    detector = METHODS.get("ae")((1, 8, 8), {"epochs": 5})
    detector.fit(TrainSet(split.train))
    detector.eval()
    return detector, split


class Counting:
    """The attack objective, counting the images it is evaluated on."""

    def __init__(self) -> None:
        self.images = 0

    def __call__(self, score, z, y):
        self.images += len(z)
        return attack_objective(score, z, y)


@pytest.mark.parametrize("attack,eps", [("pgd", 16 / 255), ("fgsm", 16 / 255), ("square", 16 / 255),
                                        ("pgd-l2", 1.0), ("square-l2", 1.0)])
def test_settled_images_stop_and_the_others_are_unchanged(ae_digits, monkeypatch, attack, eps):
    detector, split = ae_digits
    x, y = split.test, split.test_labels
    clean = scoring.score_images(detector, x, 1, 0)
    bounds = settling.settle_bounds(y.numpy(), clean)
    params = {"queries": 60} if attack.startswith("square") else {}
    counts = {}
    runs = {}
    for settle in (False, True):
        counter = Counting()
        monkeypatch.setattr(gradient, "attack_objective", counter)
        monkeypatch.setattr(square, "attack_objective", counter)
        instance = ATTACKS.get(attack)(params)
        if settle:
            instance.settle_above = torch.as_tensor(bounds)
            instance.settled = torch.as_tensor(settling.settled(y.numpy(), clean, bounds))
        torch.manual_seed(1)
        runs[settle] = instance.perturb(detector, x, y, eps)
        counts[settle] = counter.images
    with torch.no_grad():
        scores = {k: detector.score(v).numpy() for k, v in runs.items()}
    done = settling.settled(y.numpy(), scores[True], bounds)
    assert done.any(), "the test needs settled images"
    # every image that did not settle got exactly the images of the attack without settling
    assert torch.equal(runs[True][~torch.as_tensor(done)], runs[False][~torch.as_tensor(done)])
    # the settled ones moved at least as far as they needed, and so every rank metric is the same
    off = settling.settled(y.numpy(), scores[False], bounds)
    assert (off | ~done).all()
    from robust_ad_bench.benchmark.protocol import metrics
    assert metrics.image_metrics(y.numpy(), scores[True]) == metrics.image_metrics(y.numpy(), scores[False])
    assert counts[True] < counts[False]  # and it saved objective evaluations


def test_pgd_with_nothing_settled_is_pgd(ae_digits):
    detector, split = ae_digits
    x, y = split.test[:40], split.test_labels[:40]

    def objective(z, rows=None):
        return attack_objective(detector, z, y if rows is None else y[rows])

    outs = []
    for settle in (None, Settle(torch.full((40,), torch.inf), torch.zeros(40, dtype=torch.bool))):
        torch.manual_seed(3)
        outs.append(gradient.pgd(objective, x, eps=8 / 255, steps=5, restarts=2, settle=settle))
    assert torch.equal(outs[0], outs[1])


def grid_results(out, enabled: bool, monkeypatch):
    monkeypatch.setattr(settling, "ENABLED", enabled)
    counter = Counting()
    monkeypatch.setattr(gradient, "attack_objective", counter)
    monkeypatch.setattr(square, "attack_objective", counter)
    cfg = tiny_grid(out, methods="ae,deep-svdd", classes="0", attacks="clean,fgsm,pgd", eps="8/255,32/255")
    Runner(cfg).run()
    with Store(cfg.out) as store:
        results, checks = store.results(), store.checks()
    results = results.sort_values(["method", "attack", "eps"])[["method", "attack", "eps", "status", "auroc",
                                                                 "aupr", "fpr95"]].reset_index(drop=True)
    checks = checks.sort_values(["method", "attack", "name"])[["method", "attack", "name", "passed", "value",
                                                               "reference"]].reset_index(drop=True)
    return results, checks, counter.images


def test_a_grid_gives_the_same_figures_with_and_without_the_savings(tmp_path, monkeypatch, one_thread):
    with_, checks_with, work_with = grid_results(tmp_path / "on", True, monkeypatch)
    without, checks_without, work_without = grid_results(tmp_path / "off", False, monkeypatch)
    assert (with_["status"] == "ok").all() and len(with_) == 2 * (5 + 2)  # 5 jobs, 2 worst cases per model
    pd_equal(with_, without)
    pd_equal(checks_with, checks_without)  # every check: the same outcome and the same measured figure
    assert work_with < work_without


def pd_equal(a, b):
    import pandas as pd

    pd.testing.assert_frame_equal(a, b, check_exact=True)


def test_clean_scores_are_computed_once_per_model(ae_digits, monkeypatch):
    detector, split = ae_digits
    calls = []
    original = scoring.score_images
    monkeypatch.setattr(scoring, "score_images", lambda *a, **k: calls.append(len(a[1])) or original(*a, **k))
    scoring._clean.clear()
    first = scoring.attacked_scores(detector, split, "clean", {}, 0.0, torch.device("cpu"), train_key="m")[1]
    again = scoring.attacked_scores(detector, split, "clean", {}, 0.0, torch.device("cpu"), train_key="m")[1]
    scoring.attacked_scores(detector, split, "fgsm", {}, 8 / 255, torch.device("cpu"), train_key="m")
    assert calls.count(len(split.test)) == 2  # the clean scores once, then the FGSM images once
    assert np.array_equal(first, again)
    assert np.array_equal(first, original(detector, split.test, 1, 0))
