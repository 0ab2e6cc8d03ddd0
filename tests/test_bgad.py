"""BGAD: the flow's log-likelihood, the boundary and the semi-push-pull loss, the few-anomaly protocol."""

import json
import math

import pytest
import torch

from conftest import TINY_FLOW, tiny_grid
from robust_ad_bench.benchmark.execution.runner import Runner
from robust_ad_bench.benchmark.grid.config import expand_grid
from robust_ad_bench.benchmark.results import defects, leaderboard
from robust_ad_bench.benchmark.results.store import Store
from robust_ad_bench.core.dataset import TrainSet, seeded_generator
from robust_ad_bench.core.errors import BenchError
from robust_ad_bench.core.registry import DATASETS, METHODS
from robust_ad_bench.datasets.few_anomalies import hold_out_anomalies
from robust_ad_bench.datasets.protocols import SplitSpec, make_split
from robust_ad_bench.methods.bgad.augment import copy_paste, rand_augment
from robust_ad_bench.methods.bgad.flow import ConditionalFlow, positional_encoding
from robust_ad_bench.methods.bgad.losses import (
    abnormal_focal_weights,
    likelihood_loss,
    normal_boundary,
    normal_focal_weights,
    pull_term,
    pushed_weight_max,
    semi_push_pull,
)

FEW = {"n_anomalies": 6, "known_defects": ("blob", "scratch")}


def test_flow_log_likelihood_of_a_gaussian_is_the_analytic_density():
    # subnets start at zero (identity coupling); the first block's affine map whitens N(mu, sigma^2), the
    # rotations keep N(0, I): the flow's density must be exactly the Gaussian's
    torch.manual_seed(0)
    dim, mu, sigma = 6, torch.randn(6), torch.rand(6) + 0.5
    flow = ConditionalFlow(dim, cond_dim=4, blocks=3)
    with torch.no_grad():
        scale = 1 / sigma
        flow.blocks[0].raw_scale.copy_(torch.log(torch.expm1(scale)))  # softplus^-1
        flow.blocks[0].shift.copy_(-mu / sigma)
    x = mu + sigma * torch.randn(50, dim)
    expected = torch.distributions.Normal(mu, sigma).log_prob(x).sum(1)
    torch.testing.assert_close(flow.log_prob(x, torch.randn(50, 4)), expected, atol=1e-4, rtol=1e-5)


def test_flow_log_det_matches_the_jacobian():
    torch.manual_seed(1)
    flow = ConditionalFlow(4, cond_dim=3, blocks=4, clamp=1.9)
    for p in flow.parameters():  # leave the identity initialization
        p.data.add_(0.3 * torch.randn_like(p))
    x, cond = torch.randn(3, 4, dtype=torch.float64), torch.randn(3, 3, dtype=torch.float64)
    flow = flow.double()
    z, log_det = flow(x, cond)
    for i in range(3):
        # the rotations are orthogonal to float32 precision: log|det| 0 up to ~1e-7
        jac = torch.autograd.functional.jacobian(lambda v, i=i: flow(v[None], cond[i:i + 1])[0][0], x[i])
        assert log_det[i].item() == pytest.approx(torch.linalg.slogdet(jac)[1].item(), abs=1e-5)
    gauss = -0.5 * (z.pow(2).sum(1) + 4 * math.log(2 * math.pi))
    torch.testing.assert_close(flow.log_prob(x, cond), gauss + log_det)


def test_positional_encoding_distinguishes_positions():
    pos = positional_encoding(16, 4, 5)
    assert pos.shape == (16, 4, 5)
    flat = pos.flatten(1).T
    assert torch.cdist(flat, flat).add(torch.eye(20)).min() > 1e-3
    with pytest.raises(ValueError, match="multiple of 4"):
        positional_encoding(6, 2, 2)


def test_boundary_is_the_order_statistic_and_the_loss_is_semi_push_pull():
    torch.manual_seed(0)
    l_normal = (torch.randn(1000) * 5).requires_grad_(True)
    l_anom = (torch.randn(50) * 5).requires_grad_(True)
    beta, tau, norm = 0.05, 0.1, 10.0
    pull, push, b_n = semi_push_pull(l_normal, l_anom, beta, tau, norm)
    # the authors' get_logp_boundary: the normal value of rank int(n * beta) in ascending order
    assert b_n.item() == pytest.approx(torch.sort(l_normal.detach())[0][50].item() / norm)
    assert normal_boundary(torch.tensor([3.0, 1.0, 2.0]), 0.0, 1.0).item() == 1.0
    assert normal_boundary(torch.tensor([3.0, 1.0, 2.0]), 0.99, 1.0).item() == 3.0
    g_n, g_a = torch.autograd.grad(pull + push, [l_normal, l_anom])
    below = l_normal.detach() / norm <= b_n
    above = l_anom.detach() / norm >= b_n - tau
    # only normals below the boundary are pulled (gradient < 0: loss falls as l rises), only anomalies
    # above the anomaly boundary are pushed
    assert (g_n[below] < 0).all() and (g_n[~below] == 0).all()
    assert (g_a[above] > 0).all() and (g_a[~above] == 0).all()
    assert 0 < below.sum() < len(below) and 0 < above.sum() < len(above)
    # nothing to pull or push: anomalies far below the margin, normals... at least the order statistic is on it
    _, push_far, _ = semi_push_pull(l_normal, torch.full((5,), -1e3), beta, tau, norm)
    assert push_far.item() == 0


def test_focal_weights_are_the_authors_and_weight_every_term():
    u = torch.tensor([-5.0, -1.0, -0.5, -0.2, -0.1, 0.5])  # l / normalizer
    l_values = 10 * u
    expected_n = [11.7 * (1 - math.exp(v)) ** 0.5 * abs(v) if v <= -0.2 else 1.0 for v in u.tolist()]
    expected_a = [1.0 if v <= -1 else 0.53 * (1 + math.exp(v)) ** 2 / abs(v) for v in u.tolist()]
    torch.testing.assert_close(normal_focal_weights(l_values, 10.0), torch.tensor(expected_n))
    torch.testing.assert_close(abnormal_focal_weights(l_values, 10.0), torch.tensor(expected_a))
    # nearly continuous at the cuts (the authors' constants), detached, and hard cases weigh more
    assert normal_focal_weights(torch.tensor([-2.0001]), 10.0).item() == pytest.approx(1.0, abs=0.01)
    assert abnormal_focal_weights(torch.tensor([-9.999]), 10.0).item() == pytest.approx(1.0, abs=0.02)
    assert not normal_focal_weights(l_values.requires_grad_(True), 10.0).requires_grad
    # the likelihood term and both boundary terms are weighted
    l_normal = torch.tensor([1.0, -3.0, -30.0, 0.5])
    l_anom = torch.tensor([-0.5, -50.0, 2.0])
    w_n, w_a = normal_focal_weights(l_normal, 10.0), abnormal_focal_weights(l_anom, 10.0)
    expected = (-torch.nn.functional.logsigmoid(l_normal) * w_n).mean()
    torch.testing.assert_close(likelihood_loss(l_normal, 10.0, focal=True), expected)
    assert likelihood_loss(l_normal, 10.0) < likelihood_loss(l_normal, 10.0, focal=True)
    pull, push, b_n = semi_push_pull(l_normal, l_anom, 0.3, 0.1, 10.0, focal=True)
    assert b_n.item() == pytest.approx(-0.3)  # rank int(4 * 0.3) = 1 of [-30, -3, 0.5, 1]
    below, above = l_normal / 10 <= b_n, l_anom / 10 >= b_n - 0.1
    torch.testing.assert_close(pull, ((b_n - l_normal / 10) * w_n)[below].mean())
    torch.testing.assert_close(push, ((l_anom / 10 - (b_n - 0.1)) * w_a)[above].mean())


def test_pull_term_and_pushed_weight_maximum():
    l_normal = torch.tensor([1.0, -3.0, -30.0, 0.5, -8.0])
    pull, b_n = pull_term(l_normal, 0.4, 10.0)  # rank int(5 * 0.4) = 2 of [-30, -8, -3, 0.5, 1]: b_n = -0.3
    assert b_n.item() == pytest.approx(-0.3)
    torch.testing.assert_close(pull, torch.tensor((0.0 + 0.5 + 2.7) / 3))  # the normals at or below b_n
    w_n = normal_focal_weights(l_normal, 10.0)
    focal, _ = pull_term(l_normal, 0.4, 10.0, focal=True)
    torch.testing.assert_close(focal, ((b_n - l_normal / 10) * w_n)[l_normal / 10 <= b_n].mean())
    # the pushed anomalies are those above b_a = b_n - 0.1 = -0.4: l = -0.01 (weight 0.53·(1+e^-0.001)²/0.001)
    # and 2; l = -50 is below b_a and not pushed
    l_anom = torch.tensor([-0.01, -50.0, 2.0])
    expected = 0.53 * (1 + math.exp(-0.001)) ** 2 / 0.001
    assert pushed_weight_max(l_normal, l_anom, 0.4, 0.1, 10.0).item() == pytest.approx(expected, rel=1e-4)
    assert pushed_weight_max(l_normal, torch.tensor([-50.0]), 0.4, 0.1, 10.0).item() == 0


def test_bgad_unsup_adds_the_pull_term_after_the_normal_only_epochs():
    torch.manual_seed(0)
    model = METHODS.get("bgad-unsup")((1, 32, 32), TINY_FLOW)
    x, cond = torch.randn(400, model.flows[0].dim), torch.randn(400, TINY_FLOW["pos_dim"])
    l_normal = model.flows[0].log_prob(x, cond) / x.shape[1]
    # the first epoch: −log σ(l) alone
    torch.testing.assert_close(model.step_loss(0, x, cond, epoch=0), -torch.nn.functional.logsigmoid(l_normal).mean())
    # later: the focal likelihood term plus the pull term on the lowest β of the batch (the authors' unsupervised
    # bgad_train_engine), which is not zero
    pull, _ = pull_term(l_normal, 0.01, 10.0, focal=True)
    assert pull.item() > 0
    torch.testing.assert_close(model.step_loss(0, x, cond, epoch=1), likelihood_loss(l_normal, 10.0, focal=True) + pull)
    plain = METHODS.get("bgad-unsup")((1, 32, 32), {**TINY_FLOW, "focal_weighting": False, "boundary_weight": 0})
    plain.flows.load_state_dict(model.flows.state_dict())
    torch.testing.assert_close(plain.step_loss(0, x, cond, epoch=1), -torch.nn.functional.logsigmoid(l_normal).mean())


def test_bgad_area_cell_labels_and_the_logged_focal_weight():
    split = make_split(SplitSpec("textures", "grass", 0, **FEW))
    torch.manual_seed(0)
    model = METHODS.get("bgad")((1, 32, 32), {**TINY_FLOW, "cell_labels": "area", "cell_area_fraction": 0.25})
    # one defect pixel in each 2×2 block, off the block's top-left pixel (the one nearest neighbour reads):
    # every level-0 cell (2×2 pixels) is a quarter defect, so "area" at 0.25 marks them all, "nearest" none
    masks = torch.zeros(2, 32, 32, dtype=torch.bool)
    masks[:, 1::2, 1::2] = True
    area = model.labelled_cells(split.anomalies[:2], masks)
    assert area[0][2].bool().all() and area[1][2].bool().all()  # level 1: 4×4 pixels, 4 of 16 defect
    nearest = METHODS.get("bgad")((1, 32, 32), TINY_FLOW).labelled_cells(split.anomalies[:2], masks)
    assert not nearest[0][2].bool().any()
    high = METHODS.get("bgad")((1, 32, 32), {**TINY_FLOW, "cell_labels": "area", "cell_area_fraction": 0.3})
    assert not high.labelled_cells(split.anomalies[:2], masks)[0][2].bool().any()
    with pytest.raises(BenchError, match="unknown cell labelling 'bilinear'"):
        METHODS.get("bgad")((1, 32, 32), {"cell_labels": "bilinear"})
    # the largest pushed focal weight of the run is kept with the model (and reported at the end of fit)
    messages = []
    model.progress = lambda done, total, message: messages.append(message)
    model.fit(TrainSet(split.train, split.anomalies, split.anomaly_masks))
    assert (model.push_weight_max > 0).all() and "largest pushed focal weight" in messages[-1]
    assert "push_weight_max" in model.state_dict()


def test_features_standardized_only_for_the_pretext_backbone_by_default(tmp_path):
    split = make_split(SplitSpec("textures", "grass", 0))
    for setting, standardized in (("auto", True), ("never", False), ("always", True)):
        torch.manual_seed(0)
        model = METHODS.get("bgad-unsup")((1, 32, 32), {**TINY_FLOW, "epochs": 1, "standardize": setting})
        model.fit(TrainSet(split.train))
        assert model.standardizes == standardized
        assert (model.feat_std0 != 1).any() == standardized and (model.feat_mean0 != 0).any() == standardized
    torchvision = pytest.importorskip("torchvision")
    path = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)
    raw = METHODS.get("bgad-unsup")((1, 32, 32), {"backbone": "resnet18", "weights": str(path), "image_size": 64,
                                                  "coupling_blocks": 1, "pos_dim": 4})
    assert not raw.standardizes  # a pretrained backbone: raw features, as the authors
    with pytest.raises(BenchError, match="unknown standardize setting 'yes'"):
        METHODS.get("bgad")((1, 32, 32), {"standardize": "yes"})


def test_known_anomalies_are_kept_out_of_the_test_set_for_every_method(tmp_path):
    full = DATASETS.get("textures")().split("grass", 0)
    split = make_split(SplitSpec("textures", "grass", 0, **FEW))
    assert split.anomalies.shape == (6, 1, 32, 32) and split.anomaly_masks.shape == (6, 32, 32)
    assert len(split.test) == len(full.test) - 6 and split.test_masks.shape[0] == len(split.test)
    # none of the held-out images is still in the test set; they come from the known types, 3 + 3
    dist = torch.cdist(split.anomalies.flatten(1), split.test.flatten(1))
    assert dist.min() > 0
    taken = [i for i in range(len(full.test)) if torch.cdist(full.test[i].flatten()[None],
                                                                split.anomalies.flatten(1)).min() == 0]
    assert sorted(full.test_defects[i] for i in taken) == ["blob"] * 3 + ["scratch"] * 3
    assert split.known_defects == ["blob", "scratch"]
    again = make_split(SplitSpec("textures", "grass", 0, **FEW))  # deterministic given the seed
    assert torch.equal(again.anomalies, split.anomalies)
    assert not torch.equal(make_split(SplitSpec("textures", "grass", 1, **FEW)).anomalies, split.anomalies)
    with pytest.raises(BenchError, match="unknown known defect type 'dent'"):
        hold_out_anomalies(full, 2, ["dent"], seeded_generator(0))
    with pytest.raises(BenchError, match="more than the 20 test anomalies"):
        hold_out_anomalies(full, 21, ["blob"], seeded_generator(0))


def test_grid_keys_and_runner_hand_anomalies_only_to_supervised_methods(tmp_path):
    options = dict(methods="knn,bgad", datasets="textures", classes="grass", attacks="clean", eps=None,
                   method_params={"bgad": TINY_FLOW})
    plain = expand_grid(tiny_grid(tmp_path, **options, n_anomalies=0))  # the default grid holds some out
    few = expand_grid(tiny_grid(tmp_path, **options, n_anomalies=6, known_defects="scratch,blob"))
    by = {j.method: j for j in few}
    assert {j.key for j in plain}.isdisjoint(j.key for j in few)  # the test set differs for every method
    assert by["knn"].train_key == plain[0].train_key  # knn trains as before
    assert by["bgad"].train_key != plain[1].train_key and "anomalies_seen" in by["bgad"].config
    with pytest.raises(BenchError, match="unknown known defect type of dataset 'textures' 'dent'"):
        expand_grid(tiny_grid(tmp_path, **options, n_anomalies=6, known_defects="dent"))
    with pytest.raises(BenchError, match="n_anomalies must be a non-negative integer"):
        tiny_grid(tmp_path, **options, n_anomalies="-1")

    summary = Runner(tiny_grid(tmp_path, **options, n_anomalies=6, known_defects="scratch,blob")).run()
    assert summary.failed == [] and summary.computed == 2
    with Store(tmp_path) as store:
        results = store.results()
        table = defects.defect_table(store)
    assert (results["n_test"] == 114).all()
    seen = {m: "anomalies_seen" in json.loads(c) for m, c in zip(results["method"], results["config"])}
    assert seen == {"knn": False, "bgad": True}
    board = leaderboard.wide(results)
    assert board.loc["bgad", "SA"] == "yes" and board.loc["knn", "SA"] == ""
    assert set(table["group"]) == {"seen", "unseen", "blob", "scratch", "patch"}


def test_defect_aurocs_split_seen_and_unseen():
    labels = [0, 0, 1, 1, 1]
    scores = [0.0, 0.2, 1.0, 0.1, 0.5]
    out = defects.defect_aurocs(labels, scores, ["", "", "a", "b", "a"], ["a"])
    assert out == {"a": 1.0, "b": 0.5, "seen": 1.0, "unseen": 0.5}


def test_copy_paste_pastes_an_augmented_defect_onto_a_normal_image():
    split = make_split(SplitSpec("textures", "brick", 0, **FEW))
    g = torch.Generator().manual_seed(0)
    anomalies, masks = split.anomalies.repeat(5, 1, 1, 1), split.anomaly_masks.repeat(5, 1, 1)
    images, pasted_masks = copy_paste(anomalies, masks, split.train, g)
    assert images.shape == (30, 1, 32, 32) and pasted_masks.shape == (30, 32, 32)
    assert pasted_masks.dtype == torch.bool and pasted_masks.flatten(1).any(1).float().mean() > 0.8
    # outside the mask every pixel is one of the normal training images
    outside = torch.where(pasted_masks[:, None], 0.0, images)
    matches = [(torch.where(pasted_masks[i], 0.0, split.train[:, 0]) == outside[i, 0]).flatten(1).all(1).any()
               for i in range(30)]
    assert all(matches)
    again, _ = copy_paste(anomalies, masks, split.train, torch.Generator().manual_seed(0))
    assert torch.equal(again, images)  # deterministic given the generator


def test_rand_augment_draws_three_ops_and_moves_masks_with_images():
    g = torch.Generator().manual_seed(0)
    images = torch.rand(200, 1, 16, 16)
    masks = torch.zeros(200, 16, 16, dtype=torch.bool)
    masks[:, 2:6, 3:9] = True
    out, out_masks = rand_augment(images, masks, g)
    assert out.shape == images.shape and out_masks.shape == masks.shape and out.min() >= 0 and out.max() <= 1
    assert (out_masks != masks).flatten(1).any(1).float().mean() > 0.3  # geometric ops move the defects
    # 3 ops drawn per image, each fires with its probability: about 1 image in 5 comes through unchanged
    assert 0.6 < (out != images).flatten(1).any(1).float().mean() < 0.95
    rect, _ = rand_augment(images[:4, :, :16, :12], masks[:4, :16, :12], g)  # non-square images work
    assert rect.shape == (4, 1, 16, 12)


def test_bgad_labels_cells_like_the_authors_and_refreshes_pastes_every_epoch():
    split = make_split(SplitSpec("textures", "grass", 0, **FEW))
    torch.manual_seed(0)
    model = METHODS.get("bgad")((1, 32, 32), {**TINY_FLOW, "epochs": 3})
    train = TrainSet(split.train, split.anomalies, split.anomaly_masks)
    seen = {}
    original = model.step_loss

    def spy(level, x, cond, labels, epoch):
        seen.setdefault((level, epoch), []).append(labels)
        return original(level, x, cond, labels, epoch=epoch)
    model.step_loss = spy
    model.fit(train)
    n_img, n_known = len(split.train), len(split.anomalies)
    for level, cells in enumerate((16 * 16, 8 * 8, 4 * 4)):
        first = torch.cat(seen[(level, 0)])
        later = torch.cat(seen[(level, 1)])
        assert len(first) == n_img * cells and first.sum() == 0  # the first epoch: normal images only
        assert len(later) == (n_img + 10 * n_known) * cells  # + 5 real and 5 pasted copies of each anomaly
        # normal cells of anomalous images count as normal: far fewer anomalous cells than anomalous images' cells
        assert 0 < later.sum() < 10 * n_known * cells / 2
    # the anomalous cells of an image are where its nearest-neighbour downsampled mask is set
    cells = model.labelled_cells(split.anomalies, split.anomaly_masks)
    nearest = split.anomaly_masks[:, ::2, ::2]  # 32 -> 16 by nearest neighbour: every other pixel
    assert torch.equal(cells[0][2].view(n_known, 16, 16).bool(), nearest)


def test_bgad_trains_on_known_anomalies_and_scores_differentiably():
    split = make_split(SplitSpec("textures", "grass", 0, **FEW))
    torch.manual_seed(0)
    model = METHODS.get("bgad")((1, 32, 32), TINY_FLOW)
    model.fit(TrainSet(split.train, split.anomalies, split.anomaly_masks))
    x = split.test[:4].clone().requires_grad_(True)
    maps = model.anomaly_map(x)
    assert maps.shape == (4, 32, 32) and torch.isfinite(maps).all()
    (grad,) = torch.autograd.grad(model.score(x).sum(), x)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0
    with pytest.raises(BenchError, match="real_repeats and pasted_repeats"):
        METHODS.get("bgad")((1, 32, 32), {"real_repeats": 0, "pasted_repeats": 0})
    with pytest.warns(UserWarning, match="bgad got no known anomalies"):
        torch.manual_seed(0)
        METHODS.get("bgad")((1, 32, 32), TINY_FLOW).fit(TrainSet(split.train))


def test_bgad_and_its_ablation_share_the_pretext_backbone():
    split = make_split(SplitSpec("textures", "grass", 0, **FEW))
    models = []
    for name, seed, extra in (("bgad", 1, {"pasted_repeats": 1}), ("bgad-unsup", 2, {})):  # seeded apart, as in runs
        torch.manual_seed(seed)
        model = METHODS.get(name)((1, 32, 32), {**TINY_FLOW, **extra})
        model.fit(TrainSet(split.train, split.anomalies, split.anomaly_masks))
        models.append(model)
    with torch.no_grad():
        for a, b in zip(*(m.backbone(split.test[:8]) for m in models)):
            torch.testing.assert_close(a, b)  # the same features ...
    flows = [torch.cat([p.flatten() for p in m.flows.parameters()]) for m in models]
    assert not torch.allclose(*flows)  # ... while the flows are trained (and seeded) apart


def test_torchvision_backbone_from_a_local_weights_file(tmp_path):
    torchvision = pytest.importorskip("torchvision")
    path = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)
    model = METHODS.get("bgad-unsup")((1, 32, 32), {"backbone": "resnet18", "weights": str(path),
                                                    "image_size": 64, "coupling_blocks": 1, "pos_dim": 4})
    feats = model.backbone(torch.rand(2, 1, 32, 32))
    assert [tuple(f.shape[1:]) for f in feats] == [(64, 16, 16), (128, 8, 8), (256, 4, 4)]
    with pytest.raises(BenchError, match="backbone weights file .* does not exist"):
        METHODS.get("bgad")((1, 32, 32), {"backbone": "resnet18", "weights": str(tmp_path / "none.pth")})
    with pytest.raises(BenchError, match="unknown torchvision backbone 'vgg1'"):
        METHODS.get("bgad")((1, 32, 32), {"backbone": "vgg1"})


def test_paper_config_parses_and_its_parameters_are_valid():
    from robust_ad_bench.benchmark.grid.config import load_yaml
    from robust_ad_bench.core.params import build_config

    data = load_yaml("bgad_mvtec")  # the mvtec data is not needed to check the grid options
    assert data["n_anomalies"] == 10 and data["datasets"] == ["mvtec"]
    for name, params in data["method_params"].items():
        config = build_config(METHODS.get(name).Config, params, name)
        assert config.backbone == "efficientnet_b6" and config.image_size == 256
    bgad = build_config(METHODS.get("bgad").Config, data["method_params"]["bgad"], "bgad")
    assert bgad.beta == 0.01 and bgad.focal_weighting and (bgad.real_repeats, bgad.pasted_repeats) == (5, 5)
    for name, params in data["method_params"].items():  # raw features, as the authors
        assert build_config(METHODS.get(name).Config, params, name).standardize == "never"
