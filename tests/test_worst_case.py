"""The per-image worst case over the attacks of one model at one eps (``worst-<norm>``), and the number of
draws a stochastic detector's scores are evaluated with (``eval_samples``)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import tiny_grid
from robust_ad_bench.benchmark.evaluation.scoring import score_images
from robust_ad_bench.benchmark.execution.runner import Runner
from robust_ad_bench.benchmark.grid.config import expand_grid
from robust_ad_bench.benchmark.grid.jobs import StoredConfig, worst_case_groups
from robust_ad_bench.benchmark.protocol.metrics import auroc
from robust_ad_bench.benchmark.protocol.worst_case import AdversarialImages, worst_scores
from robust_ad_bench.benchmark.results import leaderboard
from robust_ad_bench.benchmark.results.audit import audit_tables
from robust_ad_bench.benchmark.results.plots import make_plots
from robust_ad_bench.benchmark.results.store import Store
from robust_ad_bench.core.errors import BenchError
from robust_ad_bench.core.registry import METHODS, load_plugin_file

PLUGIN = Path(__file__).parent / "plugins" / "attack_doubles.py"


@pytest.fixture(scope="module", autouse=True)
def doubles():
    load_plugin_file(PLUGIN)


def test_worst_scores_take_the_highest_normal_and_the_lowest_anomaly():
    labels = np.array([0, 0, 1, 1])
    scores = np.array([[0.1, 0.9, 0.5, 0.2],
                       [0.4, 0.3, 0.1, 0.8]])
    worst, pick = worst_scores(labels, scores)
    assert worst.tolist() == [0.4, 0.9, 0.1, 0.2] and pick.tolist() == [1, 0, 1, 0]


def test_per_image_worst_is_below_the_lowest_attack_when_attacks_break_different_images():
    """Two attacks that each break half of each class: each leaves AUROC 0.25, together they break all."""
    labels = np.array([0] * 4 + [1] * 4)
    clean = np.array([0.0, 0.1, 0.2, 0.3, 1.0, 1.1, 1.2, 1.3])
    first = clean + np.array([2, 2, 0, 0, -2, -2, 0, 0])  # breaks the first half of each class
    second = clean + np.array([0, 0, 2, 2, 0, 0, -2, -2])
    per_attack = min(auroc(labels, first), auroc(labels, second))
    worst, _ = worst_scores(labels, np.stack([first, second]))
    assert auroc(labels, worst) == 0.0 < per_attack == 0.25


def worst_rows(results):
    return results[leaderboard.is_worst(results["attack"])]


def test_worst_case_rows_are_stored_from_the_jobs_scores(tmp_path):
    cfg = tiny_grid(tmp_path, methods="knn", attacks="clean,fgsm,pgd,square", classes="3", eps="32/255")
    cfg.attack_params = {"square": {"queries": 50}}
    summary = Runner(cfg).run()
    assert summary.worst == 1 and not summary.failed
    with Store(tmp_path) as store:
        results = store.results()
        worst = worst_rows(results).iloc[0]
        attacked = results[results["attack"].isin(["fgsm", "pgd", "square"])]
        labels, _ = store.scores(worst["key"])
        stack = np.stack([store.scores(k)[1] for k in attacked["key"]])
        stored = store.scores(worst["key"])[1]
    assert worst["attack"] == "worst-linf" and worst["norm"] == "linf"
    expected, _ = worst_scores(labels, stack)
    sign = 1.0 - 2.0 * labels
    # per image at least as bad as every job's (the checks' images are candidates too)
    assert (stored * sign >= expected.astype(np.float32) * sign).all()
    assert worst["auroc"] <= auroc(labels, expected) + 1e-12
    assert worst["auroc"] <= attacked["auroc"].min() + 1e-12
    assert "won=" in worst["attack_detail"] and set(json.loads(worst["config"])["attacks"]) == {"fgsm", "pgd", "square"}
    table = leaderboard.wide(results)
    assert table.loc["knn", "digits worst-linf 32/255"].startswith(f"{worst['auroc']:.3f}")
    assert "worst-linf" not in set(leaderboard.summarize(results[results["attack"] != "worst-linf"])["attack"])
    with Store(tmp_path) as store:
        audit = " ".join(str(c) for t in audit_tables(results, store.checks()) for col in t.columns
                         for c in col._cells)
    assert f"linf 32/255: {worst['auroc']:.3f}" in audit
    # a second run recomputes nothing; a new attack recomputes only the worst case (and its own jobs)
    again = Runner(cfg).run()
    assert (again.computed, again.worst) == (0, 0)
    more = Runner(tiny_grid(tmp_path, methods="knn", attacks="clean,fgsm,pgd,square,autoattack", classes="3",
                            eps="32/255", attack_params={"square": {"queries": 50},
                                                          "autoattack": {"iters": 3, "components": ["apgd-ce"]}})
                  ).run()
    assert (more.computed, more.worst, more.trained) == (1, 1, 0)
    with Store(tmp_path) as store:
        results = store.results()
    assert len(worst_rows(results)) == 2  # the earlier worst case (over three attacks) stays in the store
    rows = worst_rows(results)
    newest = rows[[len(json.loads(c)["attacks"]) == 4 for c in rows["config"]]].iloc[0]
    shown = leaderboard.worst_per_model(results)
    assert list(shown["key"]) == [newest["key"]]  # reports read the one over every attack
    assert leaderboard.wide(results).loc["knn", "digits worst-linf 32/255"].startswith(f"{newest['auroc']:.3f}")


def test_reports_use_the_per_image_worst_case(tmp_path):
    cfg = tiny_grid(tmp_path, methods="knn", attacks="clean,fgsm,pgd", classes="3", eps="8/255,32/255")
    Runner(cfg).run()
    with Store(tmp_path) as store:
        results = store.results()
        curve = leaderboard.worst_per_model(results)
        assert set(curve["attack"]) == {"worst-linf"} and len(curve) == 2
        paths = make_plots(store, tmp_path / "plots")
    assert any(p.name.startswith("robustness_") for p in paths)


def test_a_stochastic_worst_case_is_scored_with_fresh_draws(tmp_path):
    """Two attacks that barely move the images: the minimum of their noisy stored scores is biased toward
    the attacker; the stored worst case re-scores the chosen images with fresh draws."""
    cfg = tiny_grid(tmp_path, methods="noisy-score", attacks="clean,fgsm,pgd", classes="3", eps="1/255")
    cfg.eval_samples = 1
    cfg.checks.enabled = False
    assert Runner(cfg).run().worst == 1
    with Store(tmp_path) as store:
        results = store.results()
        worst = worst_rows(results).iloc[0]
        jobs = results[results["attack"].isin(["fgsm", "pgd"])]
        labels, _ = store.scores(worst["key"])
        naive, _ = worst_scores(labels, np.stack([store.scores(k)[1] for k in jobs["key"]]))
    assert auroc(labels, naive) < worst["auroc"] - 0.02
    assert worst["auroc"] > jobs["auroc"].min() - 0.05  # no bias left beyond the noise of one draw
    assert worst["auroc"] <= jobs["auroc"].min()  # and never above the lowest single attack
    assert "fresh draw" in worst["attack_detail"]
    assert len(list((tmp_path / "adversarial").glob("*.pt"))) == 2  # fgsm and pgd images kept


def test_kept_images_are_reused_and_regenerated_when_missing(tmp_path):
    def grid(attacks):
        cfg = tiny_grid(tmp_path, methods="noisy-score", attacks=attacks, classes="3", eps="8/255",
                        attack_params={"autoattack": {"iters": 3, "components": ["apgd-ce"]}})
        cfg.checks.enabled = False
        return cfg

    Runner(grid("clean,pgd")).run()
    Runner(grid("clean,pgd,fgsm")).run()  # the worst case needs pgd's images from the first run
    with Store(tmp_path) as store:
        detail = worst_rows(store.results()).iloc[0]["attack_detail"]
    assert "run again" not in detail
    for path in (tmp_path / "adversarial").glob("*.pt"):
        path.unlink()
    Runner(grid("clean,pgd,fgsm,autoattack")).run()  # a new worst case over pgd, fgsm and autoattack
    with Store(tmp_path) as store:
        details = list(worst_rows(store.results())["attack_detail"])
    assert any("run again from their seed" in d for d in details)


def test_adversarial_images_round_trip_inside_the_ball(tmp_path):
    torch.manual_seed(0)
    x = torch.rand(5, 3, 4, 4)
    for eps, norm in ((8 / 255, "linf"), (0.5, "l2")):
        delta = torch.randn_like(x)
        norms = delta.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
        delta = delta.clamp(-eps, eps) if norm == "linf" else delta / norms * eps
        x_adv = (x + delta).clamp(0, 1)
        images = AdversarialImages(tmp_path)
        images.save(norm, x, x_adv, eps)
        back = images.load(norm, x)
        assert (back - x_adv).abs().max() <= eps / 32767 + 1e-6
        assert ((back - x).abs() <= (x_adv - x).abs() + 1e-7).all()  # never further from x than the original
    assert images.load("missing", x) is None


def test_eval_samples_average_draws_for_stochastic_detectors_only(tmp_path):
    jobs = expand_grid(tiny_grid(tmp_path, methods="noisy-score,knn", classes="3"))
    draws = {j.method: j.eval_samples for j in jobs}
    assert draws == {"noisy-score": 8, "knn": 1}
    assert all(j.config.get("eval_samples") == 8 for j in jobs if j.method == "noisy-score")
    assert all("eval_samples" not in j.config for j in jobs if j.method == "knn")
    detector = METHODS.get("noisy-score")((1, 8, 8))
    detector.centre.fill_(0.5)
    x = torch.rand(400, 1, 8, 8)
    exact = detector.distance(x).numpy()
    one, eight = (score_images(detector, x, n, seed=1) - exact for n in (1, 8))
    assert eight.std() < one.std() / 2  # sqrt(8) less noise
    np.testing.assert_array_equal(score_images(detector, x, 8, seed=1), score_images(detector, x, 8, seed=1))
    with pytest.raises(BenchError, match="eval_samples must be an integer >= 1, got 0"):
        tiny_grid(tmp_path, eval_samples=0)


def test_worst_case_rows_keep_the_test_set_and_draws_of_their_jobs(tmp_path):
    jobs = expand_grid(tiny_grid(tmp_path, methods="noisy-score", attacks="clean,fgsm,pgd", classes="3",
                                 n_anomalies=4))
    (group,) = worst_case_groups(jobs)
    config, first = StoredConfig.parse(group.config), StoredConfig.parse(group.jobs[0].config)
    assert config.split() == first.split() and config.split().n_anomalies == 4  # `defects` reads it
    assert config.payload["eval_samples"] == 8 and config.payload["attacks"] == ["fgsm", "pgd"]
    assert group.key not in {j.key for j in jobs}
