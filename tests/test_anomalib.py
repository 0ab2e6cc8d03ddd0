"""anomalib's image models through the suite (the optional extra): trained by anomalib's code, scored by its
``pred_score`` through a differentiable path that equals it, keyed by their options, run from the README."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import torch

pytest.importorskip("anomalib")

import miniature_data as mini  # noqa: E402
from conftest import TINY_METHOD_PARAMS  # noqa: E402
from robust_ad_bench.benchmark.cli import main  # noqa: E402
from robust_ad_bench.benchmark.results.store import Store  # noqa: E402
from robust_ad_bench.core.dataset import TrainSet  # noqa: E402
from robust_ad_bench.core.errors import BenchError  # noqa: E402
from robust_ad_bench.core.registry import DATASETS, METHODS  # noqa: E402

MODELS = ["anomalib-padim", "anomalib-patchcore", "anomalib-stfpm", "anomalib-fastflow"]
README = Path(__file__).resolve().parent.parent / "README.md"


@pytest.fixture(scope="module")
def digits():
    return DATASETS.get("digits")().split("0", seed=0)


@pytest.fixture(scope="module")
def fitted(digits):
    models = {}
    for name in MODELS:
        torch.manual_seed(0)
        model = METHODS.get(name)((1, 8, 8), TINY_METHOD_PARAMS[name])
        model.fit(TrainSet(digits.train))
        models[name] = model.eval()
    return models


@pytest.mark.parametrize("name", MODELS)
def test_the_differentiable_score_is_anomalibs_pred_score(name, fitted, digits):
    model = fitted[name]
    x = digits.test[::8][:24].clone().requires_grad_(True)
    score = model.score(x)
    (grad,) = torch.autograd.grad(score.sum(), x)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0
    # anomalib's own forward, with gradients enabled, on the same images
    x_anomalib = x.detach().clone().requires_grad_(True)
    output = model.anomalib_output(x_anomalib)
    torch.testing.assert_close(score.detach(), output.pred_score.flatten().detach(), rtol=1e-5, atol=1e-5)
    maps = model.score_and_maps(model.preprocess(x.detach()))[1]
    torch.testing.assert_close(maps.detach(), output.anomaly_map.detach(), rtol=1e-5, atol=1e-5)
    assert model.anomaly_map(x.detach()).shape == (24, 8, 8)
    # the gradient a white-box attack through anomalib as shipped would get: none (PaDiM, PatchCore: the
    # features are computed under no_grad), the student's half only (STFPM: the teacher's is), or the full one
    # (FastFlow runs its frozen backbone with gradients)
    shipped = (torch.autograd.grad(output.pred_score.sum(), x_anomalib)[0] if output.pred_score.requires_grad
               else torch.zeros_like(grad))
    if name == "anomalib-fastflow":
        torch.testing.assert_close(shipped, grad, rtol=1e-4, atol=1e-6)
    else:
        assert not torch.allclose(shipped, grad, rtol=1e-2, atol=1e-6)


def test_memory_banks_and_training_are_anomalibs(fitted, digits):
    padim, patchcore = fitted["anomalib-padim"].model, fitted["anomalib-patchcore"].model
    # PaDiM: one Gaussian per position of the stride-4 map (32 px input: 8×8), on 100 of 448 resnet18 channels
    assert padim.gaussian.mean.shape == (100, 64) and padim.gaussian.inv_covariance.shape == (64, 100, 100)
    # PatchCore: the coreset is anomalib's 10 % of the training patches (stride 8: 4×4 per image)
    assert len(patchcore.memory_bank) == int(0.1 * len(digits.train) * 16)
    student = fitted["anomalib-stfpm"].model.student_model
    untrained = METHODS.get("anomalib-stfpm")((1, 8, 8), TINY_METHOD_PARAMS["anomalib-stfpm"]).model.student_model
    assert not torch.allclose(next(student.parameters()), next(untrained.parameters()))  # the loop stepped it


def test_options_pass_through_and_are_checked():
    model = METHODS.get("anomalib-padim")((1, 8, 8), {"image_size": 32, "model_params": {"n_features": 50}})
    assert model.model.n_features == 50 and model.model.layers == ["layer1", "layer2", "layer3"]
    with pytest.raises(BenchError, match="unknown model_params keyword of PatchcoreModel .num_neigbors.*num_neighbors"):
        METHODS.get("anomalib-patchcore")((1, 8, 8), {"model_params": {"num_neigbors": 3}})
    with pytest.raises(BenchError, match="anomalib-padim' model_params: .*n_features"):  # anomalib's own check
        METHODS.get("anomalib-padim")((1, 8, 8), {"image_size": 32, "model_params": {"n_features": 10_000}})
    with pytest.raises(BenchError, match="image_size must be >= 16"):
        METHODS.get("anomalib-stfpm")((1, 8, 8), {"image_size": 8})


def test_pretrained_backbones_are_keyed_by_their_weights():
    pytest.importorskip("timm")
    from robust_ad_bench.benchmark.grid.config import expand_grid, make_grid_config

    def key(model_params):
        cfg = make_grid_config(methods="anomalib-padim", datasets="digits", attacks="clean", classes="0",
                               method_params={"anomalib-padim": {"model_params": model_params}})
        return expand_grid(cfg)[0]

    offline, pretrained = key({}), key({"pre_trained": True})
    assert offline.config["params"]["weights_id"] == ""
    assert pretrained.config["params"]["weights_id"].startswith("timm:timm/resnet18.")
    assert offline.key != pretrained.key


def readme_example() -> list[str]:
    section = README.read_text().split("## Evaluate your anomalib model", 1)[1].split("\n## ", 1)[0]
    command = re.search(r"^(robust-ad-bench run .*?)$", section.replace("\\\n", " "), re.M).group(1)
    return shlex.split(command)[1:]


def test_the_readme_example_runs_on_miniature_mvtec_data(tmp_path, capsys):
    mini.make_industrial(tmp_path / "data" / "mvtec", "mvtec", ("bottle",), size=24, n_train=8, n_good=3,
                         n_defect=2)
    args = readme_example()
    assert "pre_trained: false" in " ".join(args)
    args[args.index("--data-root") + 1] = str(tmp_path / "data")
    args[args.index("--out") + 1] = str(tmp_path / "out")
    # the miniature images are small: a smaller input size and no sanity checks keep the test short
    args += ["--no-checks", "--set", "method_params.anomalib-patchcore.image_size=32", "--set",
             "dataset_params.mvtec.resize=32", "--device", "cpu"]
    assert main(args) == 0, capsys.readouterr().err
    with Store(tmp_path / "out") as store:
        results = store.results()
    assert {"clean", "fgsm", "pgd"} <= set(results["attack"]) and (results["status"] == "ok").all()
    attacked = results[results["attack"].isin(["clean", "fgsm", "pgd"])]
    assert attacked["pixel_auroc"].notna().all()  # the anomaly map against the defect masks
