"""The sanity checks can fail: each is failed by a test double built for it, and none fails a sound attack
for a reason that is not the attack's (calibration draws, an explicit step size, the attack's target)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from conftest import tiny_grid
from robust_ad_bench.attacks.square import square_search
from robust_ad_bench.benchmark.execution.runner import Runner
from robust_ad_bench.benchmark.protocol.checks import CheckConfig
from robust_ad_bench.benchmark.protocol.metrics import auroc
from robust_ad_bench.benchmark.results import leaderboard
from robust_ad_bench.benchmark.results.audit import audit_tables
from robust_ad_bench.benchmark.results.store import Store
from robust_ad_bench.core.attack import attack_objective
from robust_ad_bench.core.dataset import TrainSet
from robust_ad_bench.core.registry import ATTACKS, DATASETS, METHODS, load_plugin_file

PLUGIN = Path(__file__).parent / "plugins" / "attack_doubles.py"


@pytest.fixture(scope="module", autouse=True)
def doubles():
    load_plugin_file(PLUGIN)


def run_grid(tmp_path, **options):
    cfg = tiny_grid(tmp_path, classes="3", eps="32/255", **options)
    summary = Runner(cfg).run()
    with Store(tmp_path) as store:
        return summary, store.results(), store.checks()


def outcome(checks, method, attack, name):
    rows = checks[(checks["method"] == method) & (checks["attack"] == attack) & (checks["name"] == name)]
    assert len(rows) == 1, (method, attack, name, checks[["method", "attack", "name"]].values.tolist())
    return rows.iloc[0]


def audit_text(results, checks):
    return " ".join(str(c) for table in audit_tables(results, checks) for col in table.columns for c in col._cells)


def robust(detector, x, y, attack, eps, params=None):
    torch.manual_seed(0)
    a = ATTACKS.get(attack)(params)
    x_adv = a.perturb(detector, x, y, eps)
    with torch.no_grad():
        return auroc(y.numpy(), detector.score(x_adv).numpy())


# -- eps 0 -------------------------------------------------------------------------------------------
def test_eps0_runs_the_attacks_own_code(tmp_path):
    summary, results, checks = run_grid(tmp_path, methods="knn", attacks="clean,pgd,eps0-leak,eps0-raise")
    assert not summary.failed
    leak = outcome(checks, "knn", "eps0-leak", "error:eps0")  # perturb_batch leaks at eps 0: the guard stops it
    assert not leak["passed"] and "left the linf eps-ball" in leak["detail"]
    raised = outcome(checks, "knn", "eps0-raise", "error:eps0")
    assert not raised["passed"] and "deliberate failure at eps 0" in raised["detail"]
    assert outcome(checks, "knn", "pgd", "eps0")["passed"]
    table = leaderboard.wide(results, checks=checks)
    assert table.loc["knn", "digits eps0-raise 32/255"].endswith("!!")
    assert "error:eps0 on eps0-raise" in audit_text(results, checks)


def test_eps0_is_not_shifted_by_the_draws_an_attack_spends(tmp_path):
    """AutoAttack's calibration and random starts consume random numbers; the scores of a stochastic
    detector are drawn apart from them, so eps 0 reproduces clean exactly."""
    cfg = tiny_grid(tmp_path, methods="noisy-score", attacks="clean,pgd,autoattack", classes="3", eps="32/255")
    cfg.attack_params = {"autoattack": {"iters": 5, "square_queries": 20, "components": ["apgd-ce", "square"]},
                         "pgd": {"steps": 3}}
    cfg.checks.square_queries = 20
    assert not Runner(cfg).run().failed
    with Store(tmp_path) as store:
        checks = store.checks()
    for attack in ("pgd", "autoattack"):
        row = outcome(checks, "noisy-score", attack, "eps0")
        assert row["passed"], (attack, row["value"], row["reference"])


# -- iteration budgets ------------------------------------------------------------------------------
def test_large_eps_and_more_steps_run_for_every_iterative_attack(tmp_path):
    cfg = tiny_grid(tmp_path, methods="knn", attacks="clean,fgsm,autoattack,square", classes="3", eps="32/255")
    cfg.attack_params = {"autoattack": {"iters": 5, "square_queries": 20, "components": ["apgd-ce"]},
                         "square": {"queries": 30}}
    cfg.checks.square_queries = 20
    Runner(cfg).run()
    with Store(tmp_path) as store:
        checks = store.checks()
    for attack in ("autoattack", "square"):
        names = set(checks.loc[checks["attack"] == attack, "name"])
        assert {"large-eps", "more-steps"} <= names, (attack, names)
    assert "iters 10, square_queries 40" in outcome(checks, "knn", "autoattack", "more-steps")["detail"] or \
        outcome(checks, "knn", "autoattack", "more-steps")["passed"]
    assert "large-eps" not in set(checks.loc[checks["attack"] == "fgsm", "name"])  # one step: not iterative


def test_scaled_params_double_every_declared_budget_and_scale_step_sizes():
    assert ATTACKS.get("pgd").scaled_params({"steps": 7}, steps_factor=2) == {"steps": 14}
    assert ATTACKS.get("autoattack").scaled_params({}, steps_factor=2) == {"iters": 200, "square_queries": 2000}
    assert ATTACKS.get("pgd").scaled_params({"step_size": 2 / 255}, eps_factor=4)["step_size"] == 8 / 255
    assert ATTACKS.get("square").is_iterative({}) and not ATTACKS.get("fgsm").is_iterative({})


def test_apgd_step_size_checkpoints_follow_the_iterations():
    attack = ATTACKS.get("autoattack")({"iters": 20})
    adversary = attack.adversary(torch.nn.Linear(1, 2), 0.1, torch.device("cpu"))
    apgd = adversary.apgd
    assert (apgd.n_iter, apgd.n_iter_orig) == (20, 20)
    assert (apgd.n_iter_2, apgd.n_iter_min, apgd.size_decr) == (4, 1, 1)  # not those of 100 iterations (22, 6, 3)


def test_large_eps_rescales_an_explicit_step_size(tmp_path):
    summary, _, checks = run_grid(tmp_path, methods="knn", attacks="clean,pgd",
                                  attack_params={"pgd": {"step_size": 2 / 255}})
    row = outcome(checks, "knn", "pgd", "large-eps")
    assert row["passed"], row["value"]  # 2/255 steps never reach eps 0.5: a false !L before


# -- the black-box check -----------------------------------------------------------------------------
def test_default_black_box_budget_catches_a_half_masked_detector():
    split = DATASETS.get("digits")().split("3", 0)
    detector = METHODS.get("half-masked")((1, 8, 8))
    detector.fit(TrainSet(split.train))
    x, y, eps = split.test, split.test_labels, 32 / 255
    white = robust(detector, x, y, "pgd", eps)
    assert robust(detector, x, y, "square", eps, {"queries": CheckConfig().square_queries}) < white - 0.1
    assert robust(detector, x, y, "square", eps, {"queries": 100}) > white - 0.02  # the old default missed it


def local_toy():
    """3×32×32 images; anomalies differ in a central 8×8 patch; half the images carry a bright corner that
    masks the gradient of the ``half-masked`` double."""
    g = torch.Generator().manual_seed(0)

    def images(n, anomalous):
        x = 0.5 + 0.02 * torch.randn(n, 3, 32, 32, generator=g)
        x[: n // 2, :, :4, :4] = 0.8
        if anomalous:
            x[:, :, 12:20, 12:20] += 0.03 * torch.randn(n, 3, 1, 1, generator=g).sign()
        return x.clamp(0, 1)

    detector = METHODS.get("half-masked")((3, 32, 32), {"marker": True, "window": 8})
    detector.fit(TrainSet(images(100, False)))
    return detector, torch.cat([images(30, False), images(30, True)]), torch.cat([torch.zeros(30), torch.ones(30)])


def test_square_l2_searches_the_l2_ball_and_catches_local_masking():
    detector, x, y = local_toy()
    eps = 0.5
    white = robust(detector, x, y, "pgd-l2", eps)
    blind = robust(detector, x, y, "square-l2", eps, {"queries": CheckConfig().square_queries})
    assert blind < white - 0.2
    # the Linf ball inscribed in the L2 ball (what square-l2 searched before) cannot reach the patch
    g = torch.Generator().manual_seed(1)
    inscribed = square_search(lambda z: attack_objective(detector, z, y), x, eps / math.sqrt(x[0].numel()),
                              queries=CheckConfig().square_queries, p_init=0.05, generator=g)
    with torch.no_grad():
        assert auroc(y.numpy(), detector.score(inscribed).numpy()) > white - 0.02


def test_square_l2_stays_in_the_ball_and_the_box():
    detector, x, y = local_toy()
    torch.manual_seed(0)
    x_adv = ATTACKS.get("square-l2")({"queries": 50}).perturb(detector, x, y, 0.5)
    assert (x_adv - x).flatten(1).norm(dim=1).max() <= 0.5 + 1e-5
    assert x_adv.min() >= 0 and x_adv.max() <= 1 and not torch.equal(x_adv, x)


def test_black_box_check_copies_the_white_box_target(tmp_path):
    _, _, checks = run_grid(tmp_path, methods="knn", attacks="clean,pgd",
                            attack_params={"pgd": {"target": "normal"}})
    row = outcome(checks, "knn", "pgd", "black-box")
    assert row["passed"], (row["value"], row["reference"])  # Square on both classes would win: a false !B


# -- checks that raise or do not run ----------------------------------------------------------------
def test_a_check_that_raises_is_stored_flagged_and_run_again(tmp_path):
    summary, results, checks = run_grid(tmp_path, methods="knn", attacks="clean,pgd,large-eps-raise")
    row = outcome(checks, "knn", "large-eps-raise", "error:large-eps")
    assert not row["passed"] and "deliberate failure at a large eps" in row["detail"]
    assert outcome(checks, "knn", "large-eps-raise", "more-steps")["passed"]  # the other checks still ran
    cell = leaderboard.wide(results, checks=checks).loc["knn", "digits large-eps-raise 32/255"]
    assert "!!" in cell
    assert any(line.startswith("!!") for line in leaderboard.flag_legend(leaderboard.wide(results, checks=checks)))
    again = Runner(tiny_grid(tmp_path, methods="knn", attacks="clean,pgd,large-eps-raise", classes="3",
                             eps="32/255")).run()
    assert again.computed == 0 and again.checked == 1  # a check that raised is tried again


def test_cells_of_a_model_whose_checks_did_not_run_are_flagged(tmp_path):
    summary, results, checks = run_grid(tmp_path, methods="knn", attacks="clean,pgd,always-raise")
    assert len(summary.failed) == 1 and summary.checked == 0
    table = leaderboard.wide(results, checks=checks)
    assert table.loc["knn", "digits pgd 32/255"].endswith("!?")
    assert not table.loc["knn", "digits clean"].endswith("?")  # clean is not attacked
    assert "checks not run: 1/1 models" in audit_text(results, checks)


def test_audit_does_not_say_all_passed_when_a_class_was_not_checked(tmp_path):
    cfg = tiny_grid(tmp_path, methods="knn", classes="3")
    Runner(cfg).run()
    cfg = tiny_grid(tmp_path, methods="knn", classes="3,4")
    cfg.checks.enabled = False
    Runner(cfg).run()
    with Store(tmp_path) as store:
        results, checks = store.results(), store.checks()
    text = audit_text(results, checks)
    assert "checks not run: 1/2 models" in text and "passed" not in text


def test_checks_attack_only_their_stratified_sample(tmp_path, monkeypatch):
    """Every check that runs an attack runs it on the stratified sample (its cost does not grow with the test
    set); its images at a grid eps still join the worst case, on the sample's images only."""
    from robust_ad_bench.benchmark.evaluation import scoring

    sizes = []
    original = scoring.attacked_scores

    def recording(detector, split, attack, params, eps, *args, **kwargs):
        out = original(detector, split, attack, params, eps, *args, **kwargs)
        sizes.append((attack, len(out[1])))
        return out

    cfg = tiny_grid(tmp_path, methods="ae", attacks="clean,fgsm,pgd", classes="3", eps="32/255")
    cfg.checks.masking_normals, cfg.checks.masking_anomalies = 6, 10
    monkeypatch.setattr(scoring, "attacked_scores", recording)
    assert not Runner(cfg).run().failed
    with Store(tmp_path) as store:
        results, checks = store.results(), store.checks()
    n_test = int(results["n_test"].iloc[0])
    assert n_test > 16
    check_runs = sizes[3:]  # after the grid's three jobs
    assert ("clean", n_test) in check_runs and ("clean", 16) in check_runs
    assert {size for attack, size in check_runs if attack != "clean"} == {16}  # eps 0, large eps, steps, Square
    assert len(checks) and checks["passed"].notna().all()
    worst = results[results["attack"] == "worst-linf"].iloc[0]
    # fgsm, pgd, and the checks' pgd (more steps) and Square on the sample
    assert worst["attack_detail"].startswith("per-image worst of 4 candidates"), worst["attack_detail"]
