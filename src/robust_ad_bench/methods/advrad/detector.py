"""AdvRAD (Cao, Lin, Chen, arXiv 2408.04839): a DDPM trained on normal images that detects and purifies in
one step, and ``diffpure-<detector>``, the naive purifier-in-front-of-a-detector it is compared with.

AdvRAD noises the test image to step k and reconstructs it with one UNet call (one-shot denoising; m DDIM
jumps with ``denoise_steps``). Normal regions come back, anomalous ones are repaired toward normal, and a
small adversarial perturbation drowns in the diffusion noise. Score: the multi-scale, mean-filtered
reconstruction-error map minus the mean map of the normal training images; image score = max over pixels
of the absolute deviation. Surrogates for the attacks (the max moves one pixel a step, the clip of the
denoised estimate zeroes gradients where it saturates): the deviation map through a straight-through clip,
pooled by logsumexp (``lse``) or by the mean of its top 5 % (``top5``); ``diffpure-ae``: its score through
a straight-through clip (``st-clip``). Fresh diffusion noise on every call: ``stochastic`` (attacks use EOT),
and ``certifiable`` by randomized smoothing (the attack suite's ``certify`` grid option). k is chosen in
``fit`` on held-out training normals unless given (``selection.py``).

``diffpure-ae`` purifies with the same kind of DDPM by DiffPure's reverse process (noise to t* = 0.1·T, then
DDPM ancestral steps back to 0; ``denoise_steps`` strided steps), then scores the purified image with the
``ae`` baseline, built through the registry (a method never imports another method). ``diffpure`` is the same
purifier in front of any registered detector, named by its option ``detector`` (e.g. ``anomalib-patchcore``);
the detector's own surrogates are followed behind the straight-through purifier too.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from robust_ad_bench.core.dataset import TrainSet
from robust_ad_bench.core.detector import Detector
from robust_ad_bench.core.errors import BenchError, unknown_choice
from robust_ad_bench.core.registry import METHODS, register_method
from robust_ad_bench.methods.advrad.diffusion import (
    SAMPLERS,
    LinearSchedule,
    SmallUNet,
    ddpm_loss,
    denoise,
    multiscale_error,
)
from robust_ad_bench.methods.advrad.selection import CANDIDATES, choose_noise_step
from robust_ad_bench.methods.common.surrogates import relative_smooth_max, top_fraction_mean
from robust_ad_bench.methods.common.training import TrainConfig, train_on_images

STAT_BATCH = 256  # training images per call when the mean error map is computed


@dataclass
class DDPMConfig(TrainConfig):
    """The DDPM: the paper's T = 1000 linear schedule; the UNet and training sized for the embedded data."""

    diffusion_steps: int = 1000  # T
    beta_start: float = 1e-4
    beta_end: float = 0.02
    width: int = 8  # UNet channels at full resolution (doubled at each halving)
    levels: int = 2  # UNet resolutions
    train_max_step: int = 0  # training draws t ~ U{1..train_max_step}; 0 = U{1..T} (the paper)
    noise_step: int = 100  # k: the test image is noised to this step
    denoise_steps: int = 1  # m: 1 = one-shot denoising (the paper); m > 1 = m jumps from k to 0
    sampler: str = "ddim"  # the jumps: "ddim" (deterministic) or "ancestral" (DDPM posterior draws)
    epochs: int = 40
    batch_size: int = 32
    lr: float = 2e-3


class DiffusionDetector(Detector):
    """Shared part: schedule, UNet, DDPM training, noising-and-denoising of [0, 1] images."""

    stochastic = True

    def __init__(self, image_shape, config=None) -> None:
        super().__init__(image_shape, config)
        c = self.config
        k = c.noise_step or min(CANDIDATES)  # 0: chosen in fit (advrad), from CANDIDATES
        if not 1 <= c.denoise_steps <= k <= c.diffusion_steps:
            raise BenchError(f"method '{self.name}' needs 1 <= denoise_steps ({c.denoise_steps}) <= noise_step "
                             f"({c.noise_step}) <= diffusion_steps ({c.diffusion_steps})")
        if c.sampler not in SAMPLERS:
            raise unknown_choice(f"method '{self.name}' sampler", c.sampler, SAMPLERS)
        if not 0 <= c.train_max_step <= c.diffusion_steps:
            raise BenchError(f"method '{self.name}'.train_max_step must be in 0..{c.diffusion_steps}, "
                             f"got {c.train_max_step}")
        self.schedule = LinearSchedule(c.diffusion_steps, c.beta_start, c.beta_end)
        channels, height, width = self.image_shape
        try:
            self.unet = SmallUNet(channels, (height, width), c.width, c.levels)
        except ValueError as exc:
            raise BenchError(f"method '{self.name}': {exc}; choose fewer levels") from None
        self.register_buffer("k", torch.tensor(c.noise_step))  # the noise step in use (chosen in fit when 0)

    def fit_ddpm(self, images: torch.Tensor) -> list[float]:
        """Train the noise predictor on normal images (scaled to [-1, 1], the DDPM's data range)."""
        c = self.config
        max_step = c.train_max_step or c.diffusion_steps
        return train_on_images(self, images, lambda x: ddpm_loss(self.unet, self.schedule, 2 * x - 1, max_step),
                               params=self.unet.parameters())

    def reconstruct(self, x: torch.Tensor, k: int | None = None, noise: torch.Tensor | None = None,
                    straight_through: bool = False) -> torch.Tensor:
        """Noise to step ``k`` (default: the step in use) with ``noise`` (fresh if None), denoise (one-shot or
        m jumps); returns an image in [0, 1]. ``straight_through``: the clip passes gradients (surrogates)."""
        c = self.config
        k = int(self.k) if k is None else k
        steps = min(c.denoise_steps, k)
        return (denoise(self.unet, self.schedule, 2 * x - 1, k, steps, noise, c.sampler,
                        straight_through=straight_through) + 1) / 2


@dataclass
class AdvRADConfig(DDPMConfig):
    noise_step: int = 0  # k; 0: chosen in fit on held-out training normals (selection.py)
    validation_fraction: float = 0.2  # of the training normals held out to choose k (when noise_step is 0)
    scales: int = 4  # error scales 1, 1/2, 1/4, 1/8
    filter_size: int = 3  # mean filter of the error map
    draws: int = 1  # diffusion-noise draws averaged inside one score call


@register_method("advrad")
class AdvRAD(DiffusionDetector):
    """AdvRAD: DDPM on normal images, noise to step k and one-shot denoise; multi-scale error map score."""

    Config = AdvRADConfig
    version = "2"
    certifiable = True

    def __init__(self, image_shape, config=None) -> None:
        super().__init__(image_shape, config)
        if self.config.draws < 1:
            raise BenchError(f"method 'advrad'.draws must be >= 1, got {self.config.draws}")
        if not 0 < self.config.validation_fraction < 1:
            raise BenchError(f"method 'advrad'.validation_fraction must be in (0, 1), got "
                             f"{self.config.validation_fraction}")
        self.register_buffer("train_error", torch.zeros(self.image_shape[1:]))

    def error_map(self, x: torch.Tensor, straight_through: bool = False) -> torch.Tensor:
        """Multi-scale reconstruction error (N×H×W), averaged over ``draws`` noise draws in one batch."""
        c = self.config
        repeated = x.repeat(c.draws, *([1] * (x.dim() - 1)))
        recon = self.reconstruct(repeated, straight_through=straight_through)
        errors = multiscale_error(repeated, recon, c.scales, c.filter_size)
        return errors.view(c.draws, len(x), *errors.shape[1:]).mean(0)

    def anomaly_map(self, x: torch.Tensor, straight_through: bool = False) -> torch.Tensor:
        return (self.error_map(x, straight_through) - self.train_error).abs()

    def score(self, x: torch.Tensor) -> torch.Tensor:
        return self.anomaly_map(x).flatten(1).amax(1)

    def surrogates(self) -> dict:
        return {"lse": lambda x: relative_smooth_max(self.anomaly_map(x, straight_through=True)),
                "top5": lambda x: top_fraction_mean(self.anomaly_map(x, straight_through=True), 0.05)}

    def fit(self, train: TrainSet) -> None:
        c = self.config
        images = train.images.to(self.device)
        self.set_input_stats(images)
        if c.noise_step:
            self.fit_ddpm(images)
        else:  # hold out training normals, train on the rest, choose k on the held-out ones
            held_out = round(c.validation_fraction * len(images))
            if not 1 <= held_out < len(images):
                raise BenchError(f"method 'advrad' chooses k on {c.validation_fraction:g} of the training images, "
                                 f"which leaves none of the {len(images)} to hold out or to train on; give noise_step")
            order = torch.randperm(len(images), device=self.device)
            self.fit_ddpm(images[order[held_out:]])
            eps = max(train.default_eps.get("linf", (8 / 255,)))
            generator = torch.Generator().manual_seed(int(torch.randint(2**62, (1,))))
            k, tried = choose_noise_step(self.reconstruct, images[order[:held_out]], eps, c.diffusion_steps,
                                         generator)
            self.k.fill_(k)
            self.report(c.epochs, c.epochs, f"noise step k = {k} (transmission of a ±{eps:.4f} perturbation: "
                        + ", ".join(f"k={t}: {v:.2f}" for t, v in tried.items()) + ")")
        with torch.no_grad():  # the normal level of the error, pixel by pixel
            maps = torch.cat([self.error_map(b) for b in images.split(STAT_BATCH)])
        self.train_error.copy_(maps.mean(0))


@dataclass
class DiffPureConfig(DDPMConfig):
    noise_step: int = 100  # DiffPure's t* = 0.1 of T (its CIFAR-10 Linf setting)
    denoise_steps: int = 4  # DiffPure's reverse process over 4 strided steps (the full chain: 100 UNet calls)
    sampler: str = "ancestral"  # DiffPure's stochastic reverse process; "ddim" + denoise_steps 1: one-shot
    detector_params: dict[str, Any] = field(default_factory=dict)  # hyper-parameters of the baseline


class DiffPure(DiffusionDetector):
    """DDPM purification (noise to t*, DiffPure's reverse process) in front of a baseline detector."""

    Config = DiffPureConfig
    version = "2"
    purifies = True
    differentiable_purifier = True  # m UNet calls, differentiated through: attacks use full gradients
    base: ClassVar[str] = ""  # the registered detector behind the purifier

    def __init__(self, image_shape, config=None) -> None:
        super().__init__(image_shape, config)
        if not self.config.noise_step:
            raise BenchError(f"method '{self.name}' needs noise_step >= 1 (DiffPure's t*), got 0")
        self.detector: Detector = METHODS.get(self.base_name())(self.image_shape, dict(self.config.detector_params))

    def base_name(self) -> str:
        """The registered detector behind the purifier."""
        return self.base

    def purify(self, x: torch.Tensor) -> torch.Tensor:
        return self.reconstruct(x)

    def score_purified(self, x: torch.Tensor) -> torch.Tensor:
        return self.detector.score(x)

    def score(self, x: torch.Tensor) -> torch.Tensor:
        return self.score_purified(self.purify(x))

    def surrogates(self) -> dict:
        # the clip of the denoised estimate, straight-through; the detector's own surrogates behind it
        found = {"st-clip": lambda x: self.score_purified(self.reconstruct(x, straight_through=True))}
        for name, fn in self.detector.surrogates().items():
            found[f"st-clip-{name}"] = (lambda f: lambda x: f(self.reconstruct(x, straight_through=True)))(fn)
        return found

    def fit(self, train: TrainSet) -> None:
        # The detector is trained on clean normal images, as in DiffPure: purification happens at test time.
        self.set_input_stats(train.images.to(self.device))
        self.fit_ddpm(train.images)
        self.detector.progress = self.progress
        self.detector.fit(train)
        self.detector.progress = None
        self.detector.eval()

    def restore(self, state: dict[str, torch.Tensor]) -> None:
        # the detector's own restore first (it may resize what its fit sized: feature banks, Gaussians)
        self.detector.restore({k.removeprefix("detector."): v for k, v in state.items() if k.startswith("detector.")})
        super().restore(state)
        self.detector.eval()


class DiffPureWithMap(DiffPure):
    def anomaly_map(self, x: torch.Tensor) -> torch.Tensor:
        return self.detector.anomaly_map(self.purify(x))


def make_diffpure(base: str, has_map: bool) -> type[DiffPure]:
    """Register ``diffpure-<base>``: the DDPM purifier in front of the registered detector ``base``."""
    parent = DiffPureWithMap if has_map else DiffPure
    cls = type(f"DiffPure_{base.replace('-', '_')}", (parent,), {
        "base": base, "__doc__": f"DDPM purifier (DiffPure's reverse process) in front of `{base}`: "
                                 "the naive combination AdvRAD shows failing"})
    return register_method(f"diffpure-{base}")(cls)


DiffPureAE = make_diffpure("ae", has_map=True)


@dataclass
class AnyDiffPureConfig(DiffPureConfig):
    detector: str = "ae"  # any registered method, trained on clean normal images behind the purifier

    def __post_init__(self) -> None:  # checked with the grid's options, before anything runs
        cls = METHODS.get(self.detector)
        if cls.purifies or cls.needs_anomalies:
            raise BenchError(f"method 'diffpure'.detector '{self.detector}' must be a detector that neither "
                             "purifies itself nor needs labelled anomalies")


@register_method("diffpure")
class AnyDiffPure(DiffPureWithMap):
    """DDPM purifier (DiffPure's reverse process) in front of any registered detector (option `detector`),
    attacked with full gradients through both"""

    Config = AnyDiffPureConfig
    hidden = True  # a combinator: `diffpure-ae` is its default in --methods all

    def __init__(self, image_shape, config=None) -> None:
        super().__init__(image_shape, config)
        # an anomaly map only when the detector behind has one (the class may; this instance says whether it does)
        self.has_anomaly_map = self.detector.has_anomaly_map  # type: ignore[method-assign]

    def base_name(self) -> str:
        return self.config.detector
