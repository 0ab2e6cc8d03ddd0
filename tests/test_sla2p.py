"""SLA²P and SLA: projections, classifier, perturbation, scores, gradients through the inner step."""

import pytest
import torch

from robust_ad_bench.benchmark.grid.config import load_yaml
from robust_ad_bench.benchmark.protocol import metrics
from robust_ad_bench.core.dataset import TrainSet
from robust_ad_bench.core.errors import BenchError
from robust_ad_bench.core.registry import DATASETS, METHODS

TINY = {"n_projections": 8, "projection_dim": 8, "features": "pixels"}


def toy_vectors(n_normal=120, n_outlier=20, dim=16, seed=0):
    """Normals: a tight cluster around a random point; outliers: uniform in [0, 1]^dim. Shape N×1×1×dim."""
    g = torch.Generator().manual_seed(seed)
    center = 0.3 + 0.4 * torch.rand(dim, generator=g)
    normals = (center + 0.05 * torch.randn(n_normal, dim, generator=g)).clamp(0, 1)
    outliers = torch.rand(n_outlier, dim, generator=g)
    return normals.view(-1, 1, 1, dim), outliers.view(-1, 1, 1, dim)


def fitted(name="sla2p", train=None, **params):
    torch.manual_seed(0)
    if train is None:
        train, _ = toy_vectors()
    detector = METHODS.get(name)(tuple(train.shape[1:]), {**TINY, **params})
    detector.fit(TrainSet(train))
    return detector.eval()


def test_projections_shape_and_determinism():
    a = METHODS.get("sla2p")((1, 1, 16), {**TINY, "projection_seed": 3})
    b = METHODS.get("sla2p")((1, 1, 16), {**TINY, "projection_seed": 3})
    c = METHODS.get("sla2p")((1, 1, 16), {**TINY, "projection_seed": 4})
    assert a.projections.shape == (16, 8 * 8)
    torch.testing.assert_close(a.projections, b.projections)
    assert not torch.allclose(a.projections, c.projections)
    assert "projections" in a.state_dict()  # stored with the model
    f = torch.nn.functional.normalize(torch.randn(5, 16), dim=1)
    z = a.project(f)
    assert z.shape == (5, 8, 8)
    for k in range(8):  # block k of the batched matmul is f · W_k
        torch.testing.assert_close(z[:, k], f @ a.projections[:, k * 8:(k + 1) * 8])


def test_classifier_learns_the_pseudo_classes():
    normals, _ = toy_vectors()
    detector = fitted(train=normals, accuracy_threshold=0.8, max_epochs=50)
    assert detector.train_accuracy > 0.8 and detector.train_steps > 0
    with torch.no_grad():
        z = detector.project(detector.features(normals))
        predicted = detector.classifier(z.reshape(-1, 8)).argmax(1).view(len(normals), 8)
    accuracy = (predicted == torch.arange(8)).float().mean()
    assert accuracy > 0.8  # chance is 1/8


def test_early_stop_on_running_accuracy():
    quick = fitted(accuracy_threshold=0.3)
    slow = fitted(accuracy_threshold=0.8, max_epochs=50)
    assert quick.train_accuracy > 0.3 and quick.train_steps < slow.train_steps


def test_step_is_relative_to_the_norm_of_the_projected_features():
    normals, _ = toy_vectors()
    for d in (8, 32):
        detector = fitted(train=normals, projection_dim=d, perturbation=7.8125)
        with torch.no_grad():
            norms = detector.project(detector.features(normals)).norm(dim=2)
        # unit features times Gaussian matrices: norm about sqrt(d); the authors' is sqrt(256) = 16
        assert detector.projected_norm.item() == pytest.approx(norms.mean().item(), rel=1e-5)
        assert detector.projected_norm.item() == pytest.approx(d ** 0.5, rel=0.2)
        assert detector.step_size.item() == pytest.approx(7.8125 * norms.mean().item() / 16, rel=1e-5)
    # at the authors' d = 256 the step is their ε / 128
    paper = fitted(train=normals, projection_dim=256, n_projections=4, perturbation=7.8125)
    assert paper.step_size.item() == pytest.approx(7.8125, rel=0.1)


def test_sla_stops_at_the_authors_threshold():
    assert METHODS.get("sla").Config().accuracy_threshold == 0.8  # sla.py
    assert METHODS.get("sla2p").Config().accuracy_threshold == 0.6  # sla2p.py and the README commands
    assert METHODS.get("sla").Config().perturbation == 0.0


def test_perturbation_lowers_the_predicted_class_probability():
    normals, outliers = toy_vectors()
    detector = fitted(train=normals, perturbation=1.0)
    with torch.no_grad():
        rows = detector.project(detector.features(torch.cat([normals, outliers]))).reshape(-1, 8)
        probs = detector.classifier(rows).softmax(1)
        label = probs.argmax(1, keepdim=True)
        perturbed = detector.classifier(detector.perturb(rows)).softmax(1)
    drop = probs.gather(1, label) - perturbed.gather(1, label)
    assert drop.mean() > 0 and (drop > 0).float().mean() > 0.9


@pytest.mark.parametrize("name", ["sla2p", "sla"])
def test_planted_outliers_rank_above_normals(name):
    normals, outliers = toy_vectors()
    # a small step: on this toy set the paper's step (7.8 per feature) lowers the AUROC (see the README)
    detector = fitted(name, train=normals, perturbation=0.3 if name == "sla2p" else 0.0)
    x = torch.cat([normals[:40], outliers])  # the transductive flavour: scored on what it saw
    labels = torch.cat([torch.zeros(40), torch.ones(len(outliers))])
    with torch.no_grad():
        scores = detector.score(x)
    assert metrics.auroc(labels.numpy(), scores.numpy()) > 0.9


def test_sla_is_sla2p_without_the_step():
    normals, outliers = toy_vectors()
    sla2p = fitted(train=normals)
    sla = METHODS.get("sla")((1, 1, 16), TINY)
    sla.restore(sla2p.state_dict())
    sla2p.config.perturbation = 0.0
    with torch.no_grad():
        torch.testing.assert_close(sla.score(outliers), sla2p.score(outliers))


def _directional_derivatives(detector, x, v, h=1e-5):
    """(autograd derivative of the score along v, central finite difference), in float64."""
    x = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(detector.score(x).sum(), x)
    with torch.no_grad():
        numeric = (detector.score(x + h * v) - detector.score(x - h * v)) / (2 * h)
    return (grad * v).flatten(1).sum(1), numeric


def test_gradients_flow_through_the_inner_step():
    normals, outliers = toy_vectors()
    through = fitted(train=normals, perturbation=1.0).double()
    constant = METHODS.get("sla2p-const-inner")((1, 1, 16), {**TINY, "perturbation": 1.0}).double()
    constant.restore(through.state_dict())
    x = torch.cat([normals[:4], outliers[:4]]).double()
    v = torch.randn(x.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    with torch.no_grad():  # both variants score the same
        torch.testing.assert_close(through.score(x), constant.score(x))
    analytic, numeric = _directional_derivatives(through, x, v)
    torch.testing.assert_close(analytic, numeric, rtol=1e-3, atol=1e-6)  # the true derivative
    analytic_const, _ = _directional_derivatives(constant, x, v)
    assert not torch.allclose(analytic_const, numeric, rtol=1e-2, atol=1e-6)  # misses the inner term
    # what the variants differ in: sla2p's attacks go through its inner step, sla2p-const-inner's do not
    assert through.config.attack_through_inner_step and through.config.perturbation > 0
    assert not constant.config.attack_through_inner_step


def test_score_is_differentiable_under_no_grad_callers_and_images():
    split = DATASETS.get("digits")().split("0", seed=0)
    detector = fitted(train=split.train, features="autoencoder", encoder_epochs=1)
    assert detector.feature_kind == "autoencoder"
    with torch.no_grad():  # the runner scores under no_grad: the inner step still runs
        clean = detector.score(split.test[:8])
    assert torch.isfinite(clean).all()
    x = split.test[:8].clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(detector.score(x).sum(), x)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_feature_choice_and_bad_params():
    assert METHODS.get("sla2p")((1, 1, 30)).feature_kind == "pixels"  # vectors: the raw values
    with pytest.raises(BenchError, match="unknown sla2p features 'vgg'"):
        METHODS.get("sla2p")((1, 8, 8), {"features": "vgg"})
    with pytest.raises(BenchError, match="perturbation must be >= 0"):
        METHODS.get("sla2p")((1, 8, 8), {"perturbation": -1.0})


def test_missing_backbone_weights_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("ROBUST_AD_BENCH_WEIGHTS", str(tmp_path))
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    with pytest.raises(BenchError, match="no pretrained weights for backbone 'resnet50'"):
        METHODS.get("sla2p")((3, 32, 32), {"features": "resnet50"})
    assert METHODS.get("sla2p")((3, 32, 32), {"encoder_latent": 8}).feature_kind == "autoencoder"


def test_paper_config_loads():
    data = load_yaml("sla2p_cifar10")
    assert data["protocol"] == "transductive" and data["datasets"] == ["cifar10"]
    params = data["method_params"]["sla2p"]
    assert (params["n_projections"], params["projection_dim"], params["accuracy_threshold"]) == (256, 256, 0.6)
    assert params["perturbation"] == pytest.approx(1000 / 128)
