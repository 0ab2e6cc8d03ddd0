"""AdvRAD and diffpure-ae: noise schedule, one-shot denoising, score, gradients, runner flags, paper config."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from conftest import TINY_METHOD_PARAMS, tiny_grid
from robust_ad_bench.benchmark.execution.runner import Runner
from robust_ad_bench.benchmark.grid.config import load_yaml, make_grid_config
from robust_ad_bench.benchmark.results.store import Store
from robust_ad_bench.core.dataset import TrainSet
from robust_ad_bench.core.errors import BenchError
from robust_ad_bench.core.registry import DATASETS, METHODS
from robust_ad_bench.methods.advrad.diffusion import LinearSchedule, SmallUNet, denoise, multiscale_error
from robust_ad_bench.methods.advrad.selection import CANDIDATES, choose_noise_step, transmission


@pytest.fixture(scope="module")
def digits():
    return DATASETS.get("digits")().split("0", seed=0)


def fitted(name, split, **params):
    torch.manual_seed(0)
    detector = METHODS.get(name)(tuple(split.train.shape[1:]), {**TINY_METHOD_PARAMS[name], **params})
    detector.fit(TrainSet(split.train))
    return detector.eval()


def test_linear_schedule_values():
    s = LinearSchedule(1000, 1e-4, 0.02)
    assert s.betas[0].item() == pytest.approx(1e-4) and s.betas[-1].item() == pytest.approx(0.02)
    assert s.betas[499].item() == pytest.approx(1e-4 + 499 * (0.02 - 1e-4) / 999, rel=1e-5)
    assert s.alpha_bar[0].item() == 1.0 and s.alpha_bar[1].item() == pytest.approx(1 - 1e-4)
    expected = np.cumprod(1 - np.linspace(1e-4, 0.02, 1000))
    np.testing.assert_allclose(s.alpha_bar[1:].numpy(), expected, rtol=1e-5)
    assert s.alpha_bar[1000].item() == pytest.approx(4.04e-5, rel=0.01)  # nearly pure noise at T
    assert torch.all(s.alpha_bar.diff() < 0)


class OracleNoise(nn.Module):
    """A perfectly trained noise predictor for one known clean image batch."""

    def __init__(self, x0, schedule):
        super().__init__()
        self.x0, self.schedule = x0, schedule

    def forward(self, x, t):
        a = self.schedule.alpha_bar[t].view(-1, 1, 1, 1)
        return (x - a.sqrt() * self.x0) / (1 - a).sqrt()


@pytest.mark.parametrize("sampler", ["ddim", "ancestral"])
@pytest.mark.parametrize("steps", [1, 5, 300])
def test_denoising_with_an_oracle_is_exact(steps, sampler):
    torch.manual_seed(0)
    schedule = LinearSchedule()
    x0 = torch.rand(6, 1, 8, 8, dtype=torch.float64) * 2 - 1
    schedule.double()
    out = denoise(OracleNoise(x0, schedule), schedule, x0, k=300, steps=steps, sampler=sampler)
    torch.testing.assert_close(out, x0)
    # a wrong predictor does not reconstruct: the check can fail
    wrong = denoise(lambda x, t: torch.zeros_like(x), schedule, x0, k=300, steps=steps, sampler=sampler)
    assert (wrong - x0).abs().max() > 0.1
    with pytest.raises(ValueError, match="unknown sampler 'euler'"):
        denoise(OracleNoise(x0, schedule), schedule, x0, k=300, steps=steps, sampler="euler")


class CountingPredictor(nn.Module):
    """Predicts zero noise and records the steps it is called at and the inputs it sees."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def forward(self, x, t):
        self.calls.append((int(t[0]), x.clone()))
        return torch.zeros_like(x)


def test_ancestral_steps_draw_from_the_forward_posterior():
    schedule = LinearSchedule().double()
    x0 = torch.zeros(4000, 1, 1, 1, dtype=torch.float64)
    unet = CountingPredictor()
    torch.manual_seed(0)
    denoise(unet, schedule, x0, k=100, steps=4, eps=torch.zeros_like(x0), sampler="ancestral")
    assert [t for t, _ in unet.calls] == [100, 75, 50, 25]  # strided DiffPure chain: t* to 0 in 4 jumps
    # zero noise in and a zero-noise predictor: x0_hat = x_t / sqrt(a_t) = 0, so x_75 is the posterior's noise
    # alone, with variance (1 - a_t/a_s)(1 - a_s)/(1 - a_t)
    a_t, a_s = schedule.alpha_bar[100], schedule.alpha_bar[75]
    expected = ((1 - a_t / a_s) * (1 - a_s) / (1 - a_t)).sqrt().item()
    assert unet.calls[1][1].std().item() == pytest.approx(expected, rel=0.05)
    unet.calls.clear()
    denoise(unet, schedule, x0, k=100, steps=4, eps=torch.zeros_like(x0), sampler="ddim")
    assert unet.calls[1][1].abs().max() == 0  # DDIM jumps add no noise


def test_one_ancestral_step_is_the_one_shot_estimate():
    schedule = LinearSchedule()
    unet = SmallUNet(1, 8, width=4, levels=2)
    nn.init.normal_(unet.out[-1].weight, std=0.3)
    x0, eps = torch.rand(3, 1, 8, 8) * 2 - 1, torch.randn(3, 1, 8, 8)
    one_shot = denoise(unet, schedule, x0, 50, 1, eps, "ddim")
    torch.testing.assert_close(denoise(unet, schedule, x0, 50, 1, eps, "ancestral"), one_shot)


def test_multiscale_error_is_zero_for_a_perfect_reconstruction_and_local():
    x = torch.rand(2, 3, 16, 16)
    assert multiscale_error(x, x).abs().max() == 0
    y = x.clone()
    y[:, :, 2, 2] += 1.0
    error = multiscale_error(x, y)
    assert error.shape == (2, 16, 16) and error[:, 2, 2].min() > error[:, 12, 12].max()


def test_unet_keeps_the_shape_and_rejects_bad_sizes():
    unet = SmallUNet(3, 32, width=8, levels=3)
    assert unet(torch.randn(2, 3, 32, 32), torch.tensor([1, 999])).shape == (2, 3, 32, 32)
    with pytest.raises(BenchError, match="halved"):
        METHODS.get("advrad")((1, 8, 8), {"levels": 5})
    with pytest.raises(BenchError, match="noise_step"):
        METHODS.get("advrad")((1, 8, 8), {"noise_step": 2000})
    with pytest.raises(BenchError, match="unknown method 'advrad' sampler 'euler'"):
        METHODS.get("advrad")((1, 8, 8), {"sampler": "euler"})
    with pytest.raises(BenchError, match="needs noise_step >= 1"):
        METHODS.get("diffpure-ae")((1, 8, 8), {"noise_step": 0})
    with pytest.raises(BenchError, match="validation_fraction must be in"):
        METHODS.get("advrad")((1, 8, 8), {"validation_fraction": 1.0})


def test_transmission_measures_how_much_of_a_perturbation_the_reconstruction_keeps():
    images = torch.rand(6, 1, 8, 8) * 0.5 + 0.25
    g = torch.Generator().manual_seed(0)
    identity = transmission(lambda x, k, noise: x, images, 10, 0.1, g)
    constant = transmission(lambda x, k, noise: 0 * x + noise, images, 10, 0.1, g)
    halved = transmission(lambda x, k, noise: 0.5 * x + noise, images, 10, 0.1, g)
    assert identity == pytest.approx(1.0) and constant == 0.0 and halved == pytest.approx(0.5, abs=1e-5)

    def top_row(x, k, noise):  # passes one row of eight: the share of a ±eps delta is 1/sqrt(8)
        return torch.where(torch.arange(8).view(1, 1, 8, 1) == 0, x, 0 * x)
    assert transmission(top_row, images, 10, 0.1, g) == pytest.approx(1 / 8 ** 0.5, rel=1e-3)


def test_noise_step_is_the_candidate_with_the_least_transmission():
    images = torch.rand(4, 1, 8, 8)
    share = {10: 0.9, 20: 0.4, 50: 0.3, 100: 0.3, 200: 0.8, 500: 0.9}

    def shrink(x, k, noise):  # keeps share[k] of any change to its input
        return share[k] * x
    k, tried = choose_noise_step(shrink, images, 0.05, 1000, torch.Generator().manual_seed(0))
    assert k == 50 and list(tried) == list(CANDIDATES)  # ties go to the smaller k
    assert choose_noise_step(shrink, images, 0.05, 20, torch.Generator().manual_seed(0))[0] == 20


def test_advrad_chooses_k_on_held_out_normals_and_keeps_it(digits):
    detector = fitted("advrad", digits, noise_step=0)
    assert int(detector.k) in CANDIDATES
    again = fitted("advrad", digits, noise_step=0)
    assert int(again.k) == int(detector.k)  # deterministic given the seed
    restored = METHODS.get("advrad")((1, 8, 8), {**TINY_METHOD_PARAMS["advrad"], "noise_step": 0})
    restored.restore(detector.state_dict())
    assert int(restored.k) == int(detector.k)
    with pytest.raises(BenchError, match="leaves none of the 2"):
        fitted("advrad", SimpleNamespace(train=digits.train[:2]), noise_step=0, validation_fraction=0.1)


def test_advrad_score_shape_sign_and_map(digits):
    detector = fitted("advrad", digits)
    with torch.no_grad():
        normal = detector.score(digits.train[:32])
        noise = detector.score(torch.rand(32, 1, 8, 8))
        maps = detector.anomaly_map(digits.test[:5])
    assert normal.shape == (32,) and torch.all(normal >= 0) and torch.isfinite(normal).all()
    assert noise.mean() > normal.mean()  # far from the normal data = higher score
    assert maps.shape == (5, 8, 8) and torch.all(maps >= 0)
    assert detector.train_error.abs().sum() > 0
    torch.manual_seed(3)
    a = detector.score(digits.test[:8])
    torch.manual_seed(3)
    b = detector.score(digits.test[:8])
    c = detector.score(digits.test[:8])
    assert torch.equal(a, b) and not torch.equal(a, c)  # fresh diffusion noise on every call


def test_score_gradient_goes_through_the_unet():
    torch.manual_seed(0)
    detector = METHODS.get("advrad")((1, 8, 8), {"noise_step": 200, "width": 4, "denoise_steps": 2}).double()
    nn.init.normal_(detector.unet.out[-1].weight, std=0.3)  # a zero-initialised output would hide the UNet
    detector.train_error.uniform_(0, 0.01)
    x = (torch.rand(3, 1, 8, 8, dtype=torch.float64) * 0.8 + 0.1).requires_grad_(True)

    def fixed_noise_score(z):
        torch.manual_seed(1)
        return detector.score(z)

    assert torch.autograd.gradcheck(fixed_noise_score, (x,), eps=1e-6, atol=1e-5)
    (with_unet,) = torch.autograd.grad(fixed_noise_score(x).sum(), x)
    for p in detector.unet.parameters():
        p.requires_grad_(False)
    torch.manual_seed(1)
    with torch.no_grad():
        frozen = detector.reconstruct(x)
    error = multiscale_error(x, frozen)  # reconstruction treated as a constant
    (without_unet,) = torch.autograd.grad((error - detector.train_error).abs().flatten(1).amax(1).sum(), x)
    assert not torch.allclose(with_unet, without_unet)


def test_diffpure_scores_the_purified_image(digits):
    detector = fitted("diffpure-ae", digits)
    assert detector.config.sampler == "ancestral" and detector.config.denoise_steps > 1  # DiffPure's reverse
    x = digits.test[:8]
    torch.manual_seed(5)
    whole = detector.score(x)
    torch.manual_seed(5)
    parts = detector.score_purified(detector.purify(x))
    torch.testing.assert_close(whole, parts)
    assert detector.anomaly_map(x).shape == (8, 8, 8)
    assert METHODS.get("diffpure-ae").purifies and METHODS.get("diffpure-ae").stochastic
    assert METHODS.get("advrad").certifiable and not METHODS.get("diffpure-ae").certifiable


def test_runner_uses_eot_for_stochastic_methods_and_certifies(tmp_path):
    cfg = tiny_grid(tmp_path, methods="advrad,diffpure-ae,knn", attacks="pgd", classes="0")
    cfg.checks.enabled = False
    cfg.attack_params = {"pgd": {"steps": 2}}
    cfg.certify.n0, cfg.certify.n, cfg.certify.radii = 10, 40, (0.0, 0.1)
    summary = Runner(cfg).run()
    assert not summary.failed and summary.certified == 1  # only advrad is flagged certifiable
    plain = make_grid_config(methods="advrad", datasets="digits", attacks="pgd", eps="32/255", classes="0",
                             out=str(tmp_path), device="cpu", dataset_params={})  # tiny_grid's full test sets
    plain.method_params = cfg.method_params
    plain.checks.enabled, plain.certify.methods = False, "none"
    plain.attack_params = {"pgd": {"steps": 2, "eot_samples": 1}}
    assert Runner(plain).run().trained == 0  # the trained model is reused
    with Store(tmp_path) as store:
        results, certified = store.results(status="ok"), store.certified()
    details = sorted(zip(results["method"], results["attack_detail"]))
    # EOT, the gradient path, the surrogates that won images, and the draws each evaluated score averages
    plain = sorted((m, ",".join(p for p in d.split(",") if not p.startswith(("won=", "eval=")))) for m, d in details)
    assert plain == [
        ("advrad", ""), ("advrad", "eot=8"), ("diffpure-ae", "eot=8,full"), ("knn", "")]
    assert all(d.endswith(",eval=8") and "score:" in d for m, d in details if m != "knn")
    assert set(certified["method"]) == {"advrad"} and len(certified) == 2


def test_paper_config_loads():
    data = load_yaml("advrad_mvtec")
    assert data["datasets"] == ["mvtec", "visa", "btad"] and "advrad" in data["methods"]
    assert 0.2 in data["certify"]["radii"] and data["eps"] == {"linf": ["2/255"], "l2": [0.2]}
