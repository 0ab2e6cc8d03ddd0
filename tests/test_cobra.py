"""COBRA and its ablations: pseudo-anomalies, losses, training attacks, score, grid, paper configs."""

import pytest
import torch
import torch.nn.functional as F

from conftest import tiny_grid
from robust_ad_bench.benchmark.config import make_grid_config
from robust_ad_bench.benchmark.papers import load_paper
from robust_ad_bench.benchmark.runner import Runner
from robust_ad_bench.benchmark.store import Store
from robust_ad_bench.core.dataset import TrainSet
from robust_ad_bench.core.errors import BenchError
from robust_ad_bench.core.params import build_config
from robust_ad_bench.core.registry import DATASETS, METHODS
from robust_ad_bench.methods.cobra import losses
from robust_ad_bench.methods.cobra.pseudo_anomalies import choose_pseudo_anomaly, expand_groups, scar

TINY = {"epochs": 1, "width": 8, "train_steps": 2}


@pytest.fixture(scope="module")
def textures_train():
    return DATASETS.get("textures")(n_train=32, n_test_normal=4, n_test_anomalous=4).split("brick", 0).train


@pytest.fixture(scope="module")
def digits_train():
    return DATASETS.get("digits")().split("0", 0).train


def test_scar_shape_range_determinism_and_small_region(textures_train):
    x = textures_train[:16]
    out, mask = scar(x, generator=torch.Generator().manual_seed(3))
    again, mask_again = scar(x, generator=torch.Generator().manual_seed(3))
    other, _ = scar(x, generator=torch.Generator().manual_seed(4))
    assert out.shape == x.shape and mask.shape == (16, 32, 32)
    assert out.min() >= 0 and out.max() <= 1
    assert torch.equal(out, again) and torch.equal(mask, mask_again) and not torch.equal(out, other)
    # only the strip changes, it is small, and it does change the image
    assert torch.equal(out[~mask[:, None].expand_as(x)], x[~mask[:, None].expand_as(x)])
    area = mask.flatten(1).float().mean(1)
    assert (area > 0).all() and (area < 0.1).all()
    assert ((out - x).abs().flatten(1).amax(1) > 0.02).float().mean() > 0.8


def test_rotation_groups(digits_train):
    x = digits_train[:5]
    groups = expand_groups(x, "rotation")
    assert groups.shape == (20, 1, 8, 8) and groups.min() >= 0 and groups.max() <= 1
    torch.testing.assert_close(groups[:5], x)
    torch.testing.assert_close(groups[10:15], x.flip(2).flip(3))  # 180°


def test_rotation_groups_of_non_square_images_keep_their_shape(digits_train):
    x = digits_train[:5, :, :, :6].clone().requires_grad_(True)  # 8×6
    groups = expand_groups(x, "rotation")
    assert groups.shape == (20, 1, 8, 6)
    torch.testing.assert_close(groups[:5], x)
    torch.testing.assert_close(groups[10:15], x.flip(2).flip(3))  # 180° needs no resize
    assert not torch.allclose(groups[5:10], groups[15:20])  # 90° and 270° stay distinct
    (grad,) = torch.autograd.grad(groups.sum(), x)
    assert torch.isfinite(grad).all()


def test_auto_pseudo_anomaly_on_non_square_images(digits_train):
    grass = DATASETS.get("textures")(n_train=64, n_test_normal=4, n_test_anomalous=4).split("grass", 0).train
    wide_digits = F.interpolate(digits_train, size=(8, 12), mode="bilinear", align_corners=False)
    assert choose_pseudo_anomaly("auto", wide_digits, 2.0) == "rotation"
    assert choose_pseudo_anomaly("auto", grass[..., :24], 2.0) == "scar"


def test_auto_pseudo_anomaly_picks_rotation_for_digits_and_scar_for_textures(digits_train):
    grass = DATASETS.get("textures")(n_train=64, n_test_normal=4, n_test_anomalous=4).split("grass", 0).train
    assert choose_pseudo_anomaly("auto", digits_train, 2.0) == "rotation"
    assert choose_pseudo_anomaly("auto", grass, 2.0) == "scar"
    assert choose_pseudo_anomaly("scar", digits_train, 2.0) == "scar"


def test_multi_positive_nt_xent_is_low_for_matching_views_and_finite():
    torch.manual_seed(0)
    z = torch.randn(6, 16)
    matched = losses.multi_positive_nt_xent(torch.cat([z, z]), views=2)
    shuffled = losses.multi_positive_nt_xent(torch.cat([z, torch.randn(6, 16)]), views=2)
    assert matched.shape == (12,) and torch.isfinite(matched).all()
    assert matched.mean() < shuffled.mean()
    assert torch.isfinite(losses.opposite_pair_term(z, groups=2))


@pytest.mark.parametrize("name", ["contrastive", "cobra"])
def test_training_loss_is_finite_and_decreases(name, digits_train):
    torch.manual_seed(0)
    detector = METHODS.get(name)((1, 8, 8), {**({} if name == "contrastive" else TINY), "epochs": 1})
    detector.set_input_stats(digits_train)
    detector.train_eps = 8 / 255
    x = digits_train[:32]

    def loss() -> float:
        torch.manual_seed(1)  # the same views and attack starts each time
        return float(detector.training_loss(x).detach())

    before = loss()
    optimizer = torch.optim.Adam(detector.parameters(), lr=3e-3)
    for _ in range(15):
        value = detector.training_loss(x)
        assert torch.isfinite(value)
        optimizer.zero_grad()
        value.backward()
        optimizer.step()
    assert loss() < before


def test_opposite_pair_loss_option_changes_the_loss(digits_train):
    torch.manual_seed(0)
    plain = METHODS.get("cobra")((1, 8, 8), TINY)
    explicit = METHODS.get("cobra")((1, 8, 8), {**TINY, "opposite_pair_loss": True})
    explicit.load_state_dict(plain.state_dict())
    for d in (plain, explicit):
        d.set_input_stats(digits_train)
        d.train_eps = 8 / 255
    values = []
    for d in (plain, explicit):
        torch.manual_seed(1)
        values.append(float(d.training_loss(digits_train[:16]).detach()))
    assert values[1] < values[0]  # the term is subtracted


def test_opposite_pair_attack_moves_normals_toward_their_pseudo_anomaly(textures_train):
    torch.manual_seed(0)
    detector = METHODS.get("cobra")((1, 32, 32), {**TINY, "pseudo_anomaly": "scar", "train_steps": 10})
    detector.set_input_stats(textures_train)
    detector.train_eps = 8 / 255
    detector.eval()
    groups = expand_groups(textures_train[:16], "scar", generator=torch.Generator().manual_seed(0))
    adv = detector.opposite_pair_attack(groups)
    assert (adv - groups).abs().max() <= 8 / 255 + 1e-6
    detector.eval()  # the training attacks leave the model in training mode
    with torch.no_grad():
        # the attack's targets: each normal image's own scar, and each scar's own normal image
        targets = detector.embed(torch.cat([groups[16:], groups[:16]]))[0]
        # contrastive closeness of each row to its own target, among all targets
        before = -losses.pair_nt_xent(detector.embed(groups)[0], targets)[:16]
        after = -losses.pair_nt_xent(detector.embed(adv)[0], targets)[:16]
    assert (after > before).float().mean() > 0.9


def test_score_is_differentiable_and_restores_with_scar(textures_train):
    torch.manual_seed(0)
    detector = METHODS.get("cobra")((1, 32, 32), {**TINY, "blocks": [1]})
    detector.fit(TrainSet(textures_train, default_eps={"linf": (4 / 255,)}))
    assert detector.pseudo_anomaly == "scar" and detector.encoder.classifier.out_features == 2
    x = textures_train[:4].clone().requires_grad_(True)
    score = detector.eval().score(x)
    (grad,) = torch.autograd.grad(score.sum(), x)
    assert score.shape == (4,) and torch.isfinite(grad).all() and grad.abs().sum() > 0
    clone = METHODS.get("cobra")((1, 32, 32), {**TINY, "blocks": [1]})  # built for "auto": 4 groups
    clone.restore(detector.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(clone.score(textures_train[:4]), detector.score(textures_train[:4]))


def test_bad_parameters_are_named():
    with pytest.raises(BenchError, match="unknown pseudo-anomaly 'cutout'"):
        METHODS.get("cobra")((1, 8, 8), {"pseudo_anomaly": "cutout"})
    with pytest.raises(BenchError, match="unknown backbone 'vit'"):
        METHODS.get("contrastive")((1, 8, 8), {"backbone": "vit"})
    assert METHODS.get("cobra").adversarially_trained and not METHODS.get("contrastive").adversarially_trained


def test_methods_run_in_the_grid(tmp_path):
    summary = Runner(tiny_grid(tmp_path, methods="contrastive,contrastive-at,cobra", classes="0")).run()
    assert summary.failed == [] and summary.computed == 6
    with Store(tmp_path) as store:
        results = store.results()
    assert (results["status"] == "ok").all() and results["auroc"].notna().all()


@pytest.mark.parametrize("name", ["cobra-cifar10", "cobra-mvtec"])
def test_paper_configs_load(name):
    paper = load_paper("cobra")  # the reported figures live in papers/cobra.yaml
    assert name in paper.configs and {f.method for f in paper.figures} == {"cobra"}
    cfg = make_grid_config(name)  # validates the options (the datasets are checked when the grid expands)
    assert cfg.methods == ["cobra"] and cfg.attack_params["pgd"]["steps"] >= 100
    params = build_config(METHODS.get("cobra").Config, cfg.method_params["cobra"], "method 'cobra'")
    assert (params.backbone, params.width, params.blocks, params.stem_stride, params.train_steps) == (
        "resnet", 64, (2, 2, 2, 2), 1, 10)
