"""The scar CutPaste pseudo-anomaly as the COBRA authors make it (rohban-lab/COBRA,
``models/transform_layers.py``, ``CutPasteLayer.scar``), batched over the images.

Per image: a strip of width 7–40 px and length 10–40 px (at 224 px; sizes scale with the smaller image
side) is cut axis-aligned at a random place, colour-jittered as torchvision's ``ColorJitter(0.8, 0.8, 0.8,
0.2)`` (brightness, contrast, saturation, hue in a random order), turned gray with p = 0.1, Gaussian-blurred
(a 5 × 9 kernel, sigma in [0.1, 5], both at 224 px and scaled with the side), mirrored with p = 0.5, rotated
by 0–360° and pasted at a destination that is redrawn (up to 20 times, as the authors) until the mean
intensity of the image there is in (0.15, 0.8); 15 % of the scars are a black hole instead.

Where ours differs, and why: the authors rotate the whole canvas about the image centre (moving the strip
after the intensity check) and blur and flip a zero-padded canvas (the flip is not applied to the mask, so a
flipped strip mostly pastes black, and the blur darkens the strip's rim); we rotate and flip the strip about
its own centre and blur the jittered image before the strip is sampled, so the checked destination is where
the strip lands and a strip is what gets pasted.

``shared=True`` draws one set of parameters for the whole batch (only the destination, which depends on the
image's content, differs per image): the score uses it so that an image's score does not depend on the
other images of its batch.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

REFERENCE_SIDE = 224  # the authors' image side, at which the sizes below are given
STRIP_WIDTH = (7 / 224, 40 / 224)
STRIP_LENGTH = (10 / 224, 40 / 224)
JITTER = (0.8, 0.8, 0.8, 0.2)  # brightness, contrast, saturation, hue
GRAYSCALE_PROBABILITY = 0.1
BLUR_KERNEL = (5, 9)  # x, y extent at 224 px (torchvision's kernel_size=(5, 9))
BLUR_SIGMA = (0.1, 5.0)  # at 224 px
DESTINATION_INTENSITY = (0.15, 0.8)
DESTINATION_TRIES = 21  # the authors accept the 21st draw whatever its intensity
HOLE_PROBABILITY = 0.15
GRAY_WEIGHTS = (0.299, 0.587, 0.114)


def draw(n: int, generator: torch.Generator | None, shared: bool, *size: int) -> torch.Tensor:
    """Uniform [0, 1) numbers on the CPU, shape (n, *size); one row repeated when ``shared``."""
    values = torch.rand(1 if shared else n, *size, generator=generator)
    return values.expand(n, *size) if shared else values


def _uniform(n: int, lo: float, hi: float, generator, shared: bool) -> torch.Tensor:
    return lo + (hi - lo) * draw(n, generator, shared)


def grayscale(x: torch.Tensor) -> torch.Tensor:
    if x.shape[1] != 3:
        return x
    weights = torch.tensor(GRAY_WEIGHTS, device=x.device, dtype=x.dtype)[:, None, None]
    return (x * weights).sum(1, keepdim=True)


def hsv_adjust(x: torch.Tensor, hue_shift: torch.Tensor | float, saturation: torch.Tensor | float = 1.0,
               value: torch.Tensor | float = 1.0) -> torch.Tensor:
    """RGB images through HSV: hue turned by ``hue_shift`` (a fraction of the circle), saturation and value
    multiplied by their factors and clipped to [0, 1] (each N×1×1×1 or a number). The round trip keeps
    gradients (divisions guarded); with factors 1 and shift 0 it returns the image."""
    r, g, b = x.unbind(1)
    v, _ = x.max(1)
    chroma = v - x.min(1).values
    safe = chroma.clamp_min(1e-8)
    hue = torch.where(v == r, ((g - b) / safe) % 6,
                      torch.where(v == g, (b - r) / safe + 2, (r - g) / safe + 4)) / 6
    if isinstance(hue_shift, torch.Tensor):
        hue_shift = hue_shift[:, 0]
    hue = (hue + hue_shift) % 1
    sat = chroma / v.clamp_min(1e-8)
    if isinstance(saturation, torch.Tensor) or saturation != 1:
        sat = (sat * (saturation[:, 0] if isinstance(saturation, torch.Tensor) else saturation)).clamp(0, 1)
    if isinstance(value, torch.Tensor) or value != 1:
        v = (v * (value[:, 0] if isinstance(value, torch.Tensor) else value)).clamp(0, 1)
    k = (torch.tensor([5.0, 3.0, 1.0], device=x.device, dtype=x.dtype)[None, :, None, None] + hue[:, None] * 6) % 6
    return v[:, None] - (v * sat)[:, None] * torch.minimum(k, 4 - k).clamp(0, 1)


def shift_hue(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """RGB images with their hue turned by ``shift`` (N×1×1×1, a fraction of the hue circle)."""
    return hsv_adjust(x, shift)


def color_jitter(x: torch.Tensor, generator, shared: bool) -> torch.Tensor:
    """torchvision's ColorJitter(0.8, 0.8, 0.8, 0.2) on every image: the four adjustments in a random order
    per image (all four are computed at each position and the drawn one kept: no per-image loop)."""
    n = len(x)
    b, c, s = (1 + JITTER[i] * (2 * draw(n, generator, shared, 1, 1, 1) - 1) for i in range(3))
    h = JITTER[3] * (2 * draw(n, generator, shared, 1, 1, 1) - 1)
    order = draw(n, generator, shared, 4).argsort(1).to(x.device)
    b, c, s, h = (t.to(x.device, x.dtype) for t in (b, c, s, h))
    colour = x.shape[1] == 3
    ops = (
        lambda y: (y * b).clamp(0, 1),
        lambda y: (c * y + (1 - c) * grayscale(y).mean((1, 2, 3), keepdim=True)).clamp(0, 1),
        lambda y: (s * y + (1 - s) * grayscale(y)).clamp(0, 1) if colour else y,
        lambda y: shift_hue(y, h) if colour else y,
    )
    for position in range(4):
        pick = order[:, position, None, None, None]
        x = torch.stack([op(x) for op in ops]).gather(0, pick[None].expand(1, *x.shape))[0]
    return x


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor, kernel: tuple[int, int]) -> torch.Tensor:
    """Separable Gaussian blur with one sigma per image (``sigma``: N), kernel (x, y) in pixels (odd),
    reflect padding as torchvision; one grouped convolution per axis."""
    n, ch, h, w = x.shape
    out = x.reshape(1, n * ch, h, w)
    for axis, size in ((3, kernel[0]), (2, kernel[1])):
        if size < 2:
            continue
        offsets = torch.arange(size, device=x.device, dtype=x.dtype) - (size - 1) / 2
        weights = torch.exp(-0.5 * (offsets[None] / sigma.to(x.device, x.dtype)[:, None]) ** 2)
        weights = (weights / weights.sum(1, keepdim=True)).repeat_interleave(ch, 0)
        shape = (n * ch, 1, 1, size) if axis == 3 else (n * ch, 1, size, 1)
        pad = (size // 2, size // 2, 0, 0) if axis == 3 else (0, 0, size // 2, size // 2)
        mode = "reflect" if size // 2 < out.shape[axis] else "replicate"
        out = F.conv2d(F.pad(out, pad, mode=mode), weights.view(shape), groups=n * ch)
    return out.view(n, ch, h, w)


def _odd(pixels: float) -> int:
    return max(1, 2 * round((pixels - 1) / 2) + 1)


def _box_means(x: torch.Tensor, top: torch.Tensor, left: torch.Tensor, bh: torch.Tensor,
               bw: torch.Tensor) -> torch.Tensor:
    """Mean intensity of each image over boxes (top, left, height, width; N×R integer tensors), from a
    summed-area table."""
    n, _, h, w = x.shape
    table = F.pad(x.mean(1).cumsum(1).cumsum(2), (1, 0, 1, 0)).flatten(1)  # N×(H+1)(W+1)

    def at(y, xx):
        return table.gather(1, (y * (w + 1) + xx).flatten(1)).view(y.shape)

    total = at(top + bh, left + bw) - at(top, left + bw) - at(top + bh, left) + at(top, left)
    return total / (bh * bw).to(x.dtype)


def scar(x: torch.Tensor, width: tuple[float, float] = STRIP_WIDTH, length: tuple[float, float] = STRIP_LENGTH,
         generator: torch.Generator | None = None, shared: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Scar CutPaste on every image of ``x`` (N×C×H×W in [0, 1]); returns the images and the N×H×W mask.
    ``width``/``length``: the strip's sides as fractions of the smaller image side. Random numbers come
    from ``generator`` (CPU; the global one when None)."""
    n, _, h, w = x.shape
    side = min(h, w)
    dev, dt = x.device, x.dtype
    strip_w = (_uniform(n, *width, generator, shared) * side).clamp(1.0, w - 1)
    strip_l = (_uniform(n, *length, generator, shared) * side).clamp(1.0, h - 1)
    box_w, box_h = strip_w.round().clamp_min(1).long(), strip_l.round().clamp_min(1).long()
    angle = _uniform(n, 0, 2 * math.pi, generator, shared)
    mirror = torch.where(draw(n, generator, shared) < 0.5, -1.0, 1.0)
    hole = draw(n, generator, shared) < HOLE_PROBABILITY
    gray = draw(n, generator, shared) < GRAYSCALE_PROBABILITY
    sigma = _uniform(n, *BLUR_SIGMA, generator, shared) * side / REFERENCE_SIDE
    # top-left corners: the source once, the destination DESTINATION_TRIES candidates
    src_top = (draw(n, generator, shared) * (h - box_h + 1)).long()
    src_left = (draw(n, generator, shared) * (w - box_w + 1)).long()
    cand_top = (draw(n, generator, shared, DESTINATION_TRIES) * (h - box_h + 1)[:, None]).long()
    cand_left = (draw(n, generator, shared, DESTINATION_TRIES) * (w - box_w + 1)[:, None]).long()
    bh, bw = box_h[:, None].expand_as(cand_top), box_w[:, None].expand_as(cand_top)
    with torch.no_grad():
        means = _box_means(x.detach(), *(t.to(dev) for t in (cand_top, cand_left, bh, bw))).cpu()
    ok = (means > DESTINATION_INTENSITY[0]) & (means < DESTINATION_INTENSITY[1])
    chosen = torch.where(ok.any(1), ok.float().argmax(1), torch.full((n,), DESTINATION_TRIES - 1))
    dst_top, dst_left = cand_top.gather(1, chosen[:, None])[:, 0], cand_left.gather(1, chosen[:, None])[:, 0]

    def centre(top, size):
        return top.to(dt) + (size.to(dt) - 1) / 2

    params = [t.to(dev, dt)[:, None, None] for t in (
        strip_w / 2, strip_l / 2, angle, mirror, centre(src_top, box_h), centre(src_left, box_w),
        centre(dst_top, box_h), centre(dst_left, box_w))]
    half_w, half_l, angle, mirror, src_y, src_x, dst_y, dst_x = params
    ys = torch.arange(h, device=dev, dtype=dt)[None, :, None]
    xs = torch.arange(w, device=dev, dtype=dt)[None, None, :]
    # destination pixel → strip frame (turned back by the angle): u along the width, v along the length
    dy, dx = ys - dst_y, xs - dst_x
    cos, sin = torch.cos(angle), torch.sin(angle)
    u, v = dx * cos + dy * sin, -dx * sin + dy * cos
    mask = (u.abs() <= half_w) & (v.abs() <= half_l)
    content = color_jitter(x, generator, shared)
    content = torch.where(gray.to(dev)[:, None, None, None], grayscale(content).expand_as(content), content)
    kernel = (_odd(BLUR_KERNEL[0] * side / REFERENCE_SIDE), _odd(BLUR_KERNEL[1] * side / REFERENCE_SIDE))
    content = gaussian_blur(content, sigma, kernel)
    # the same strip coordinates at the source (mirrored across the strip's axis when drawn), in
    # grid_sample's [-1, 1] units (pixel centres)
    grid = torch.stack([(src_x + mirror * u) * 2 / (w - 1) - 1, (src_y + v) * 2 / (h - 1) - 1], dim=-1)
    strip = F.grid_sample(content, grid, mode="bilinear", padding_mode="border", align_corners=True)
    strip = torch.where(hole.to(dev)[:, None, None, None], torch.zeros_like(strip), strip)
    return torch.where(mask[:, None], strip, x), mask
