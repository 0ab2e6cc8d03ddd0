"""COBRA and its ablations: pseudo-anomalies, losses, training attacks, score, grid, paper configs."""

import pytest
import torch
import torch.nn.functional as F

from conftest import tiny_grid
from robust_ad_bench.benchmark.execution.runner import Runner
from robust_ad_bench.benchmark.grid.config import make_grid_config
from robust_ad_bench.benchmark.papers.catalog import load_paper
from robust_ad_bench.benchmark.results.store import Store
from robust_ad_bench.core.dataset import TrainSet
from robust_ad_bench.core.errors import BenchError
from robust_ad_bench.core.params import build_config
from robust_ad_bench.core.registry import DATASETS, METHODS
from robust_ad_bench.methods.cobra import losses
from robust_ad_bench.methods.cobra.pseudo_anomalies import choose_pseudo_anomaly, expand_groups, simclr_augment
from robust_ad_bench.methods.cobra.scar import color_jitter, gaussian_blur, hsv_adjust, scar, shift_hue
from robust_ad_bench.methods.common.training import LARS, resample, warmup_cosine

TINY = {"epochs": 1, "width": 8, "train_steps": 2}


def small_textures(n_train: int):
    return DATASETS.get("textures").create({"n_train": n_train, "n_test_normal": 4, "n_test_anomalous": 4})


@pytest.fixture(scope="module")
def textures_train():
    return small_textures(32).split("brick", 0).train


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
    grass = small_textures(64).split("grass", 0).train
    wide_digits = F.interpolate(digits_train, size=(8, 12), mode="bilinear", align_corners=False)
    assert choose_pseudo_anomaly("auto", wide_digits, 2.0) == "rotation"
    assert choose_pseudo_anomaly("auto", grass[..., :24], 2.0) == "scar"


def test_auto_pseudo_anomaly_picks_rotation_for_digits_and_scar_for_textures(digits_train):
    grass = small_textures(64).split("grass", 0).train
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
    summary = Runner(tiny_grid(tmp_path, methods="contrastive,contrastive-at,cobra-no-opposite,cobra",
                               classes="0", checks=False)).run()  # checks: test_checks.py
    assert summary.failed == [] and summary.computed == 8
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
    if name == "cobra-cifar10":  # the authors' code: --epsilon and --eps default 0.0314 (8/255)
        assert params.train_eps == pytest.approx(8 / 255) and cfg.eps["linf"] == [pytest.approx(8 / 255)]


def test_paper_title_is_the_iclr_one():
    assert load_paper("cobra").title == ("Adversarially Robust Anomaly Detection through Spurious Negative Pair "
                                         "Mitigation")


# -- the authors' scar -------------------------------------------------------------------------------------
def _two_tone(n: int, side: int = 32) -> torch.Tensor:
    """Left half black (mean 0, outside the authors' (0.15, 0.8)), right half mid-gray."""
    x = torch.zeros(n, 1, side, side)
    x[..., side // 2:] = 0.5
    return x


def test_scar_destination_is_redrawn_until_its_intensity_is_in_range():
    x = _two_tone(200)
    _, mask = scar(x, generator=torch.Generator().manual_seed(0))
    cols = torch.arange(32.0)
    centre_x = (mask.float().sum(1) * cols).sum(1) / mask.float().sum((1, 2))
    # without the redraw about half of the strips would land on the black half
    assert (centre_x > 13.5).float().mean() > 0.97


def test_scar_rotates_over_the_full_circle():
    x = torch.full((300, 1, 64, 64), 0.5)
    _, mask = scar(x, width=(0.04, 0.05), length=(0.4, 0.45), generator=torch.Generator().manual_seed(1))
    ys, xs = torch.meshgrid(torch.arange(64.0), torch.arange(64.0), indexing="ij")
    m = mask.float()
    area = m.sum((1, 2))
    cy, cx = (m * ys).sum((1, 2)) / area, (m * xs).sum((1, 2)) / area
    dy, dx = ys - cy[:, None, None], xs - cx[:, None, None]
    syy, sxx, sxy = ((m * dy * dy).sum((1, 2)), (m * dx * dx).sum((1, 2)), (m * dx * dy).sum((1, 2)))
    axis = 0.5 * torch.atan2(2 * sxy, sxx - syy)  # orientation of the long axis from the x axis, (-90°, 90°]
    near_horizontal = axis.abs() < torch.pi / 6
    # ±45° around the vertical (the old scar) never gives a long axis within 30° of the horizontal
    assert near_horizontal.float().mean() > 0.15


def test_scar_colour_jitter_is_as_strong_as_torchvisions():
    gray = torch.full((500, 1, 4, 4), 0.5)
    out = color_jitter(gray, torch.Generator().manual_seed(0), shared=False)
    # brightness factor in [0.2, 1.8]: 0.1–0.9 on a flat 0.5 image (the old ±0.1 gave 0.4–0.6)
    assert out.min() < 0.2 and out.max() > 0.8
    red = torch.zeros(1, 3, 2, 2)
    red[:, 0] = 1
    green = shift_hue(red, torch.full((1, 1, 1, 1), 1 / 3))
    torch.testing.assert_close(green, red.roll(1, dims=1), atol=1e-5, rtol=0)
    x = torch.rand(6, 3, 5, 5, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(shift_hue(x, torch.zeros(6, 1, 1, 1)), x, atol=1e-5, rtol=0)


def test_gaussian_blur_has_the_kernel_extent_and_a_sigma_per_image():
    delta = torch.zeros(2, 1, 21, 21)
    delta[:, :, 10, 10] = 1
    out = gaussian_blur(delta, torch.tensor([1.0, 4.0]), kernel=(5, 9))
    torch.testing.assert_close(out.sum((1, 2, 3)), torch.ones(2))
    support = out[0, 0] > 0
    assert support.any(0).sum() == 5 and support.any(1).sum() == 9  # 5 wide, 9 tall
    assert out[1, 0, 10, 10] < out[0, 0, 10, 10]  # the larger sigma spreads more


def test_scar_shared_draws_one_geometry_for_the_batch(textures_train):
    x = textures_train[:8]
    _, mask = scar(x, generator=torch.Generator().manual_seed(5), shared=True)
    area = mask.flatten(1).sum(1)
    assert (area - area[0]).abs().max() <= 0.35 * area[0]  # same strip (only the destination may differ)


# -- score ----------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def scar_cobra(textures_train):
    torch.manual_seed(0)
    detector = METHODS.get("cobra")((1, 32, 32), {**TINY, "blocks": [1], "pseudo_anomaly": "scar"})
    detector.fit(TrainSet(textures_train, default_eps={"linf": (4 / 255,)}))
    return detector.eval()


def test_score_is_deterministic_and_independent_of_the_batch(scar_cobra, textures_train):
    x = textures_train[:6]
    with torch.no_grad():
        first, again, part = scar_cobra.score(x), scar_cobra.score(x), scar_cobra.score(x[2:5])
    assert torch.equal(first, again)
    torch.testing.assert_close(part, first[2:5], atol=1e-5, rtol=1e-5)


def test_score_uses_both_groups_over_ten_draws(scar_cobra, textures_train):
    x = textures_train[:3]
    rows = []
    handle = scar_cobra.encoder.register_forward_hook(lambda m, i, o: rows.append(len(i[0])))
    try:
        with torch.no_grad():
            base = scar_cobra.score(x)
            weight = scar_cobra.encoder.classifier.weight
            saved = weight.detach().clone()
            weight.data[1] += 0.5  # the scar class's logit: used by the score only through the scar group
            moved = scar_cobra.score(x)
            weight.data.copy_(saved)
    finally:
        handle.remove()
    assert rows[0] == 10 * 2 * 3
    assert not torch.allclose(base, moved)
    identity = METHODS.get("cobra")((1, 32, 32), {**TINY, "blocks": [1], "score_groups": "identity"})
    identity.restore(scar_cobra.state_dict())
    with torch.no_grad():
        base = identity.eval().score(x)
        identity.encoder.classifier.weight.data[1] += 0.5
        torch.testing.assert_close(identity.score(x), base)


# -- optimizer, schedule, epoch size ----------------------------------------------------------------------------
def test_lars_scales_every_parameter_as_torchlars():
    bias = torch.nn.Parameter(torch.ones(2))
    bias.grad = torch.full((2,), 10.0)
    LARS([bias], lr=1.0, weight_decay=0.0).step()
    # trust 1e-3·‖w‖/‖g‖ times g: a step of 1e-3 (unscaled, the step would be 10)
    torch.testing.assert_close(bias.detach(), torch.full((2,), 0.999))
    w = torch.nn.Parameter(torch.full((2, 2), 2.0))
    w.grad = torch.full((2, 2), 1.0)
    LARS([w], lr=1.0, weight_decay=0.5).step()
    # (g + wd·w)·1e-3·‖w‖/(‖g‖ + wd·‖w‖) = 2·1e-3·4/(2 + 2)
    torch.testing.assert_close(w.detach(), torch.full((2, 2), 2.0 - 2e-3))


def test_warmup_ramps_to_ten_times_the_base_lr():
    assert warmup_cosine(0, 100, 10, multiplier=10) == 1
    assert warmup_cosine(5, 100, 10, multiplier=10) == pytest.approx(5.5)
    assert warmup_cosine(10, 100, 10, multiplier=10) == pytest.approx(10)
    assert warmup_cosine(99, 100, 10, multiplier=10) < 0.01
    assert warmup_cosine(0, 100, 0, multiplier=10) == 1  # no warm-up: the base lr
    assert warmup_cosine(4, 100, 10) == pytest.approx(0.5)  # multiplier 1 unchanged


def test_samples_per_epoch_repeats_the_set_and_sets_the_steps(digits_train, monkeypatch):
    images = torch.arange(4.0)[:, None]
    rows = resample(images, 10)[:, 0]
    counts = torch.bincount(rows.long(), minlength=4)
    assert len(rows) == 10 and counts.min() >= 2 and counts.max() <= 3
    assert len(set(resample(images, 3)[:, 0].tolist())) == 3
    calls = []
    cls = METHODS.get("contrastive")
    monkeypatch.setattr(cls, "training_loss", lambda self, x: calls.append(len(x)) or self.encoder(
        self.normalize(x))[0].sum())
    cls((1, 8, 8), {"epochs": 2, "width": 4, "batch_size": 20, "samples_per_epoch": 100}).fit(
        TrainSet(digits_train))
    assert calls == [20] * 10


# -- the ablation arm ------------------------------------------------------------------------------------------
def test_cobra_no_opposite_is_cobra_without_the_opposite_pair_attack(digits_train, monkeypatch):
    assert "cobra-no-opposite" in METHODS.resolve("all")  # in --methods all
    arm = METHODS.get("cobra-no-opposite")
    assert issubclass(arm, METHODS.get("cobra")) and not getattr(arm, "hidden", False)
    assert arm.adversarially_trained and arm.version == METHODS.get("cobra").version
    used = []
    for name in ("cobra", "cobra-no-opposite"):
        detector = METHODS.get(name)((1, 8, 8), TINY)
        detector.set_input_stats(digits_train)
        detector.train_eps = 8 / 255
        original = type(detector).opposite_pair_attack
        monkeypatch.setattr(type(detector), "opposite_pair_attack",
                            lambda self, v2, _o=original, _n=name: used.append(_n) or _o(self, v2))
        assert torch.isfinite(detector.training_loss(digits_train[:8]))
        monkeypatch.undo()
    assert used == ["cobra"]


def test_bad_score_options_are_named():
    with pytest.raises(BenchError, match="unknown score groups 'both'"):
        METHODS.get("cobra")((1, 8, 8), {"score_groups": "both"})


# -- the authors' view augmentation ------------------------------------------------------------------------
def test_view_augmentation_off_is_the_identity_and_crop_scale_is_the_area():
    x = torch.rand(8, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(1)
    # no jitter, no crop: only the gray draw (p = 0.2) can change an image, and then to its gray version
    out = simclr_augment(x, 0.0, (1.0, 1.0), g, hue=0.0)
    same = (out == x).flatten(1).all(1)
    assert 0 < same.sum() < 8 or same.all()
    gray_rows = out[~same]
    torch.testing.assert_close(gray_rows[:, 0], gray_rows[:, 1])
    # a fixed crop area of 0.25 zooms a 1-px checkerboard-free ramp by about 2x: the output's horizontal
    # range of a linear ramp shrinks to about half
    ramp = torch.linspace(0, 1, 32).expand(200, 1, 32, 32).contiguous()
    crop = simclr_augment(ramp, 0.0, (0.25, 0.25), torch.Generator().manual_seed(2), hue=0.0)
    span = crop[:, 0, 16].amax(1) - crop[:, 0, 16].amin(1)
    wide = simclr_augment(ramp, 0.0, (0.9, 0.9), torch.Generator().manual_seed(2), hue=0.0)
    assert span.median() < 0.65 < (wide[:, 0, 16].amax(1) - wide[:, 0, 16].amin(1)).median()


def test_view_colour_jitter_turns_hue_in_either_order_and_keeps_channel_means_under_contrast():
    red = torch.zeros(400, 3, 4, 4)
    red[:, 0] = 0.8
    red[:, 1] = 0.2
    out = simclr_augment(red, 0.0, (1.0, 1.0), torch.Generator().manual_seed(0), hue=0.1)
    hue_moved = (out[:, 2] > 1e-4).flatten(1).any(1) | ((out[:, 1] - 0.2).abs() > 1e-3).flatten(1).any(1)
    # hue ± 0.1 · 255/360 of the circle on 80 % of the images (and gray on 20 %): most colours move
    assert hue_moved.float().mean() > 0.5
    # the draws, redone by hand: contrast about each channel's own mean (the authors' adjust_contrast) and the
    # HSV change, in the order of one coin per call
    x = torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(3)) * 0.5 + 0.2
    orders = set()
    for seed in range(30):
        g = torch.Generator().manual_seed(seed)
        apply = torch.rand(1, 1, 1, 1, generator=g) < 0.8
        c, sat, val = (1 + 0.4 * (torch.rand(1, 1, 1, 1, generator=g) * 2 - 1) for _ in range(3))
        shift = 0.1 * (torch.rand(1, 1, 1, 1, generator=g) * 2 - 1) * 255 / 360
        contrast_first = bool(torch.rand(1, generator=g)[0] < 0.5)
        to_gray = torch.rand(1, 1, 1, 1, generator=g) < 0.2

        def contrast(y, c=c):
            m = y.mean((2, 3), keepdim=True)
            return ((y - m) * c + m).clamp(0, 1)

        def hsv(y, shift=shift, sat=sat, val=val):
            return hsv_adjust(y, shift, sat, val)

        expected = hsv(contrast(x)) if contrast_first else contrast(hsv(x))
        expected = torch.where(apply, expected, x)
        gray = (expected * torch.tensor([0.299, 0.587, 0.114])[:, None, None]).sum(1, True).expand_as(x)
        expected = torch.where(to_gray, gray, expected)
        out = simclr_augment(x, 0.4, (1.0, 1.0), torch.Generator().manual_seed(seed), hue=0.1)
        torch.testing.assert_close(out, expected.clamp(0, 1))
        orders.add(contrast_first if bool(apply) else None)
    assert {True, False} <= orders  # both orders are drawn


def test_hsv_adjust_scales_saturation_and_value():
    x = torch.tensor([0.8, 0.4, 0.2]).view(1, 3, 1, 1)
    torch.testing.assert_close(hsv_adjust(x, 0.0, 1.0, 0.5), x * 0.5)  # value: every channel scaled
    gray = hsv_adjust(x, 0.0, 0.0, 1.0)  # saturation 0: every channel at the value (the max)
    torch.testing.assert_close(gray, torch.full_like(x, 0.8))
    y = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(hsv_adjust(y, torch.full((1, 1, 1, 1), 0.05), 1.2, 0.9).sum(), y)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_score_crop_is_fixed_where_the_views_are_cropped(digits_train):
    cropped = METHODS.get("cobra")((1, 8, 8), {"crop_min_scale": 0.08})
    assert cropped.score_crop == (0.54, 0.54)  # the authors' eval.py: resize_factor 0.54, resize_fix
    assert METHODS.get("cobra")((1, 8, 8), {"crop_min_scale": 0.08, "score_crop_scale": None}).score_crop == (
        0.08, 1.0)
    assert METHODS.get("cobra")((1, 8, 8)).score_crop == (1.0, 1.0)  # no crop at training: none at scoring
    with pytest.raises(BenchError, match="score_crop_scale"):
        METHODS.get("cobra")((1, 8, 8), {"score_crop_scale": 1.5})
