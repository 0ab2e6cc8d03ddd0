"""DDPM pieces shared by the diffusion-based methods (``advrad``, ``diffpure-*``).

- ``LinearSchedule``: the linear beta schedule of Ho et al. (2020), ``beta_t`` from ``beta_start`` to
  ``beta_end`` over steps t = 1..T, with ``alpha_bar_t = prod_{s<=t} (1 - beta_s)`` (``alpha_bar_0 = 1``).
- ``SmallUNet``: an epsilon-prediction UNet sized to the image (a few resolution levels, GroupNorm so that
  every sample is independent of the others in its batch: EOT repeats images inside one batch); any H×W
  (padded inside to a multiple of 2^(levels-1), cropped back).
- ``denoise``: noise an image to step k and come back in ``steps`` jumps, deterministic (DDIM, eta = 0) or
  ancestral (DDPM posterior draws, DiffPure's reverse process); one jump is the one-shot estimate
  ``x0 = (x_k - sqrt(1 - alpha_bar_k) eps) / sqrt(alpha_bar_k)``.
- ``multiscale_error``: AdvRAD's reconstruction-error map at scales 1, 1/2, 1/4, 1/8, mean-filtered.

The DDPM works on images scaled to [-1, 1] (its data range); callers pass images in [0, 1].
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from robust_ad_bench.methods.common.networks import Padding
from robust_ad_bench.methods.common.surrogates import straight_through_clamp

SAMPLERS = ("ddim", "ancestral")


class LinearSchedule(nn.Module):
    """Linear beta schedule; ``alpha_bar[t]`` for t = 0..T (index 0 is the clean image)."""

    def __init__(self, steps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> None:
        super().__init__()
        if steps < 1 or not 0 < beta_start <= beta_end < 1:
            raise ValueError(f"bad schedule: steps {steps}, betas {beta_start}..{beta_end}")
        self.steps = steps
        betas = torch.linspace(beta_start, beta_end, steps, dtype=torch.float64)
        alpha_bar = torch.cat([torch.ones(1, dtype=torch.float64), torch.cumprod(1 - betas, 0)])
        self.register_buffer("betas", betas.float(), persistent=False)
        self.register_buffer("alpha_bar", alpha_bar.float(), persistent=False)

    def noise(self, x0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """``x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) eps`` for per-sample steps ``t``."""
        a = self.alpha_bar[t].view(-1, *([1] * (x0.dim() - 1)))
        return a.sqrt() * x0 + (1 - a).sqrt() * eps


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding of integer steps (Vaswani et al., as in DDPM)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    angles = t.float()[:, None] * freqs[None]
    return torch.cat([angles.sin(), angles.cos()], dim=1)


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(math.gcd(8, channels), channels)  # up to 8 groups that divide the channels


class ResBlock(nn.Module):
    """Two 3×3 convolutions with the step embedding added in between, and a residual connection."""

    def __init__(self, in_ch: int, out_ch: int, time_dim: int) -> None:
        super().__init__()
        self.conv1 = nn.Sequential(_norm(in_ch), nn.SiLU(), nn.Conv2d(in_ch, out_ch, 3, padding=1))
        self.time = nn.Linear(time_dim, out_ch)
        self.conv2 = nn.Sequential(_norm(out_ch), nn.SiLU(), nn.Conv2d(out_ch, out_ch, 3, padding=1))
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(x) + self.time(emb)[:, :, None, None]
        return self.skip(x) + self.conv2(h)


class SmallUNet(nn.Module):
    """Epsilon-prediction UNet: ``levels`` resolutions (width doubling at each halving), one residual
    block per level on the way down and up, skip connections by concatenation. ``size`` (a side, or
    (H, W)): an image whose sides are not multiples of 2^(levels-1) is replicate-padded to them on the way
    in and the prediction cropped back to H×W."""

    def __init__(self, channels: int, size: int | tuple[int, int], width: int = 16, levels: int = 2,
                 time_dim: int = 64) -> None:
        super().__init__()
        height, image_width = (size, size) if isinstance(size, int) else size
        if levels < 1 or min(height, image_width) < 2 ** (levels - 1):  # the coarsest level below 1 px
            raise ValueError(f"image size {min(height, image_width)} cannot be halved {levels - 1} times")
        self.padding = Padding(height, image_width, 2 ** (levels - 1))
        self.time_dim = time_dim
        self.time_mlp = nn.Sequential(nn.Linear(time_dim, time_dim), nn.SiLU(), nn.Linear(time_dim, time_dim))
        self.inp = nn.Conv2d(channels, width, 3, padding=1)
        widths = [width * 2**i for i in range(levels)]
        self.down = nn.ModuleList()
        self.pool = nn.ModuleList()
        ch = width
        for i, w in enumerate(widths):
            self.down.append(ResBlock(ch, w, time_dim))
            self.pool.append(nn.Conv2d(w, w, 3, stride=2, padding=1) if i < levels - 1 else nn.Identity())
            ch = w
        self.mid = ResBlock(ch, ch, time_dim)
        self.up = nn.ModuleList()
        self.unpool = nn.ModuleList()
        for i, w in reversed(list(enumerate(widths))):
            self.unpool.append(nn.Identity() if i == levels - 1 else nn.Conv2d(ch, ch, 3, padding=1))
            self.up.append(ResBlock(ch + w, w, time_dim))
            ch = w
        self.out = nn.Sequential(_norm(ch), nn.SiLU(), nn.Conv2d(ch, channels, 3, padding=1))
        nn.init.zeros_(self.out[-1].weight)  # start as the zero predictor: stable early training
        nn.init.zeros_(self.out[-1].bias)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        emb = self.time_mlp(timestep_embedding(t, self.time_dim).to(self.inp.weight.dtype))
        h = self.inp(self.padding.pad(x))
        skips = []
        for block, pool in zip(self.down, self.pool):
            h = block(h, emb)
            skips.append(h)
            h = pool(h)
        h = self.mid(h, emb)
        for block, unpool in zip(self.up, self.unpool):
            skip = skips.pop()
            if h.shape[-1] != skip.shape[-1]:
                h = F.interpolate(h, size=skip.shape[-2:], mode="nearest")
            h = block(torch.cat([unpool(h), skip], dim=1), emb)
        return self.padding.crop(self.out(h))


def ddpm_loss(unet: nn.Module, schedule: LinearSchedule, x0: torch.Tensor, max_step: int) -> torch.Tensor:
    """Simple DDPM objective: ``|eps - eps_theta(x_t, t)|²`` with ``t ~ U{1..max_step}`` (x0 in [-1, 1])."""
    t = torch.randint(1, max_step + 1, (len(x0),), device=x0.device)
    eps = torch.randn_like(x0)
    return F.mse_loss(unet(schedule.noise(x0, t, eps), t), eps)


def denoise(unet: nn.Module, schedule: LinearSchedule, x0: torch.Tensor, k: int, steps: int = 1,
            eps: torch.Tensor | None = None, sampler: str = "ddim", straight_through: bool = False) -> torch.Tensor:
    """Noise ``x0`` (in [-1, 1]) to step ``k`` with ``eps`` (fresh if None), then come back to step 0 in
    ``steps`` jumps k = t_0 > t_1 > ... > t_steps = 0 (evenly spaced); each estimate of x0 is clipped to
    [-1, 1]. ``sampler``:

    - "ddim": deterministic DDIM jumps (eta = 0); one jump is the one-shot estimate
      ``x0 = (x_k - sqrt(1 - alpha_bar_k) eps_theta) / sqrt(alpha_bar_k)``.
    - "ancestral": DDPM ancestral sampling, a draw from the posterior q(x_s | x_t, x0_hat) at every jump
      (fresh noise); with steps = k it is DiffPure's reverse process (``p_sample`` with clipped x0 at every
      step from t* down to 0), with fewer steps the same posterior over strided steps (DDIM with eta = 1).

    Differentiable with respect to ``x0`` (the noise draws are constants); ``straight_through``: the clip
    passes gradients unchanged (for the attacks' surrogates; same values)."""
    if not 1 <= k <= schedule.steps or not 1 <= steps <= k:
        raise ValueError(f"need 1 <= steps ({steps}) <= k ({k}) <= T ({schedule.steps})")
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; valid: {', '.join(SAMPLERS)}")
    eps = torch.randn_like(x0) if eps is None else eps
    k_t = torch.full((len(x0),), k, device=x0.device, dtype=torch.long)
    x = schedule.noise(x0, k_t, eps)
    times = torch.linspace(k, 0, steps + 1).round().long().tolist()
    estimate = x0
    for t, s in zip(times[:-1], times[1:]):
        a_t, a_s = schedule.alpha_bar[t], schedule.alpha_bar[s]
        predicted = unet(x, torch.full((len(x0),), t, device=x0.device, dtype=torch.long))
        estimate = (x - (1 - a_t).sqrt() * predicted) / a_t.sqrt()
        estimate = straight_through_clamp(estimate, -1, 1) if straight_through else estimate.clamp(-1, 1)
        if sampler == "ddim":
            x = a_s.sqrt() * estimate + (1 - a_s).sqrt() * predicted  # s = 0: x = estimate
        elif s > 0:  # the posterior q(x_s | x_t, x0) of the forward process between steps s < t
            a_ts = a_t / a_s
            mean = (a_s.sqrt() * (1 - a_ts) * estimate + a_ts.sqrt() * (1 - a_s) * x) / (1 - a_t)
            x = mean + ((1 - a_ts) * (1 - a_s) / (1 - a_t)).sqrt() * torch.randn_like(x)
    return estimate


def multiscale_error(x: torch.Tensor, reconstruction: torch.Tensor, scales: int = 4,
                     filter_size: int = 3) -> torch.Tensor:
    """Squared error averaged over channels at scales 1, 1/2, ..., 1/2^(scales-1) (both images
    downsampled by average pooling, the error upsampled back), averaged over scales, then mean-filtered:
    N×H×W. Scales that would go below 1 pixel are skipped. A side that is not a multiple of the pooling
    factor is replicate-padded to one first, and the upsampled error cropped back, so every coarse cell
    covers the same pixels at every size."""
    height, width = x.shape[-2:]
    maps = []
    for level in range(scales):
        factor = 2**level
        if min(height, width) < factor:
            break
        if factor == 1:
            maps.append((x - reconstruction).pow(2).mean(1, keepdim=True))
            continue
        padding = Padding(height, width, factor)
        a = F.avg_pool2d(padding.pad(x), factor)
        b = F.avg_pool2d(padding.pad(reconstruction), factor)
        error = (a - b).pow(2).mean(1, keepdim=True)
        maps.append(padding.crop(F.interpolate(error, size=padding.padded, mode="bilinear", align_corners=False)))
    error = torch.stack(maps).mean(0)
    if filter_size > 1:
        error = F.avg_pool2d(error, filter_size, stride=1, padding=filter_size // 2, count_include_pad=False)
    return error[:, 0]
