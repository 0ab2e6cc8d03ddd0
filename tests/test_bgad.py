"""BGAD: the flow's log-likelihood, the boundary and the semi-push-pull loss, the few-anomaly protocol."""

import json
import math

import pytest
import torch

from conftest import TINY_FLOW, tiny_grid
from robust_ad_bench.benchmark import defects, leaderboard
from robust_ad_bench.benchmark.config import expand_grid
from robust_ad_bench.benchmark.runner import Runner
from robust_ad_bench.benchmark.store import Store
from robust_ad_bench.core.dataset import TrainSet, seeded_generator
from robust_ad_bench.core.errors import BenchError
from robust_ad_bench.core.registry import DATASETS, METHODS
from robust_ad_bench.datasets.few_anomalies import hold_out_anomalies
from robust_ad_bench.datasets.protocols import SplitSpec, make_split
from robust_ad_bench.methods.bgad.augment import paste_defects
from robust_ad_bench.methods.bgad.flow import ConditionalFlow, positional_encoding
from robust_ad_bench.methods.bgad.losses import semi_push_pull

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


def test_boundary_is_the_quantile_and_the_loss_is_semi_push_pull():
    torch.manual_seed(0)
    l_normal = (torch.randn(1000) * 5).requires_grad_(True)
    l_anom = (torch.randn(50) * 5).requires_grad_(True)
    beta, tau, norm = 0.05, 0.1, 10.0
    pull, push, b_n = semi_push_pull(l_normal, l_anom, beta, tau, norm)
    assert b_n.item() == pytest.approx(torch.quantile(l_normal.detach() / norm, beta).item())
    g_n, g_a = torch.autograd.grad(pull + push, [l_normal, l_anom])
    below = l_normal.detach() / norm <= b_n
    above = l_anom.detach() / norm >= b_n - tau
    # only normals below the boundary are pulled (gradient < 0: loss falls as l rises), only anomalies
    # above the anomaly boundary are pushed
    assert (g_n[below] < 0).all() and (g_n[~below] == 0).all()
    assert (g_a[above] > 0).all() and (g_a[~above] == 0).all()
    assert 0 < below.sum() < len(below) and 0 < above.sum() < len(above)
    # nothing to pull or push: anomalies far below the margin, normals... at least the quantile is on it
    _, push_far, _ = semi_push_pull(l_normal, torch.full((5,), -1e3), beta, tau, norm)
    assert push_far.item() == 0


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
    plain = expand_grid(tiny_grid(tmp_path, **options))
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


def test_pasted_defects_keep_their_shape_and_the_normal_background():
    split = make_split(SplitSpec("textures", "brick", 0, **FEW))
    g = torch.Generator().manual_seed(0)
    images, masks = paste_defects(split.anomalies, split.anomaly_masks, split.train, 40, g)
    assert images.shape == (40, 1, 32, 32) and masks.shape == (40, 32, 32)
    sizes = set(split.anomaly_masks.flatten(1).sum(1).tolist())
    assert set(masks.flatten(1).sum(1).tolist()) <= sizes  # flips, turns and shifts keep the whole defect
    # outside the mask every pixel is one of the normal training images
    outside = torch.where(masks[:, None], 0.0, images)
    matches = [(torch.where(masks[i], 0.0, split.train[:, 0]) == outside[i, 0]).flatten(1).all(1).any()
               for i in range(40)]
    assert all(matches)


def test_bgad_trains_on_known_anomalies_and_scores_differentiably():
    split = make_split(SplitSpec("textures", "grass", 0, **FEW))
    torch.manual_seed(0)
    model = METHODS.get("bgad")((1, 32, 32), {**TINY_FLOW, "n_pasted": 8})
    model.fit(TrainSet(split.train, split.anomalies, split.anomaly_masks))
    x = split.test[:4].clone().requires_grad_(True)
    maps = model.anomaly_map(x)
    assert maps.shape == (4, 32, 32) and torch.isfinite(maps).all()
    (grad,) = torch.autograd.grad(model.score(x).sum(), x)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_bgad_and_its_ablation_share_the_pretext_backbone():
    split = make_split(SplitSpec("textures", "grass", 0, **FEW))
    models = []
    for name, seed, extra in (("bgad", 1, {"n_pasted": 8}), ("bgad-unsup", 2, {})):  # seeded apart, as in runs
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
    from robust_ad_bench.benchmark.config import load_yaml
    from robust_ad_bench.core.params import build_config

    data = load_yaml("bgad_mvtec")  # the mvtec data is not needed to check the grid options
    assert data["n_anomalies"] == 10 and data["datasets"] == ["mvtec"]
    for name, params in data["method_params"].items():
        config = build_config(METHODS.get(name).Config, params, name)
        assert config.backbone == "efficientnet_b6" and config.image_size == 256
    assert build_config(METHODS.get("bgad").Config, data["method_params"]["bgad"], "bgad").beta == 0.01
