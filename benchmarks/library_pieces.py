"""The hand-written pieces beside the maintained libraries that could replace them: speed, memory and
exactness, measured (never asserted in tests; the exactness is pinned by tests, see CONTRIBUTING.md's
"Hand-written pieces and the libraries beside them").

    python benchmarks/library_pieces.py metrics --sizes 1e6 1e7
    python benchmarks/library_pieces.py metrics --sizes 500 10000 --repeats 21
    python benchmarks/library_pieces.py decode resize readers flow augment

Each prints one table: the median wall time of ``--repeats`` runs on one thread (``OMP_NUM_THREADS=1``
recommended), the peak of numpy's allocations (``tracemalloc``) where that is what a piece allocates, and
the largest difference from the library's result.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import tracemalloc
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "src"), str(ROOT / "tests")]


def timed(fn: Callable[[], object], repeats: int) -> tuple[float, object]:
    """Median seconds of ``repeats`` calls and the last result."""
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def peak_mib(fn: Callable[[], object]) -> float:
    """Peak of the Python/numpy allocations made by one call, MiB."""
    tracemalloc.start()
    fn()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return peak / 2**20


def row(*cells: object) -> None:
    print("| " + " | ".join(str(c) for c in cells) + " |")


# --------------------------------------------------------------------------------------------------
# c. AUROC / AUPR / FPR95 beside scikit-learn
# --------------------------------------------------------------------------------------------------


def bench_metrics(args: argparse.Namespace) -> None:
    from sklearn import metrics as skm

    from robust_ad_bench.benchmark.protocol import metrics

    def sk_fpr95(y, s):
        fpr, tpr, _ = skm.roc_curve(y, s, drop_intermediate=False)
        return float(fpr[np.argmax(tpr >= 0.95)])

    pieces = [("auroc", metrics.auroc, skm.roc_auc_score), ("aupr", metrics.aupr, skm.average_precision_score),
              ("fpr95", metrics.fpr_at_tpr, sk_fpr95)]
    row("pixels", "scores", "metric", "ours ms", "sklearn ms", "ours peak MiB", "sklearn peak MiB", "|ours - sklearn|")
    row(*["---"] * 8)
    for n in args.sizes:
        rng = np.random.default_rng(0)
        y = rng.random(n) < 0.05  # a few % anomalous pixels, as in MVTec masks
        continuous = (rng.normal(size=n) + 1.5 * y).astype(np.float32)
        for kind, s in (("float32", continuous), ("256 levels", np.round(continuous * 32) / 32)):
            for name, ours, lib in pieces:
                t_ours, v_ours = timed(lambda o=ours, s=s, y=y: o(y, s), args.repeats)
                t_lib, v_lib = timed(lambda f=lib, s=s, y=y: f(y, s), args.repeats)
                m_ours = peak_mib(lambda o=ours, s=s, y=y: o(y, s))
                m_lib = peak_mib(lambda f=lib, s=s, y=y: f(y, s))
                row(f"{n:.0e}", kind, name, f"{1000 * t_ours:.3g}", f"{1000 * t_lib:.3g}", f"{m_ours:.3g}",
                    f"{m_lib:.3g}", f"{abs(v_ours - v_lib):.1e}")
            if n <= 10_000:  # image level: a bootstrap CI calls the metric once a round
                rounds = args.bootstrap_rounds
                t_ours, _ = timed(lambda s=s, y=y, r=rounds: metrics.bootstrap_ci(y, s, n=r), 1)
                t_lib, _ = timed(lambda s=s, y=y, r=rounds: metrics.bootstrap_ci(y, s, skm.roc_auc_score, n=r), 1)
                row(f"{n:.0e}", kind, f"bootstrap CI of auroc, {rounds} rounds", f"{1000 * t_ours:.3g}",
                    f"{1000 * t_lib:.3g}", "", "", "")


# --------------------------------------------------------------------------------------------------
# a. decoding and resizing beside Pillow, torchvision.io and tifffile
# --------------------------------------------------------------------------------------------------


def _write_images(folder: Path, side: int) -> dict[str, Path]:
    import tifffile
    from PIL import Image

    from test_decoders import write_png16

    rng = np.random.default_rng(0)
    rgb8 = rng.integers(0, 256, (side, side, 3), dtype=np.uint8)
    rgba8 = rng.integers(0, 256, (side, side, 4), dtype=np.uint8)
    gray16 = rng.integers(0, 65536, (side, side), dtype=np.uint16)
    rgb16 = rng.integers(0, 65536, (side, side, 3), dtype=np.uint16)
    paths = {name: folder / f"{name}.{ext}" for name, ext in
             (("png-rgb8", "png"), ("png-rgba8", "png"), ("png-gray8", "png"), ("png-gray16", "png"),
              ("png-rgb16", "png"), ("jpeg-rgb8", "jpg"), ("tiff-rgb16", "tif"))}
    Image.fromarray(rgb8).save(paths["png-rgb8"])
    Image.fromarray(rgba8).save(paths["png-rgba8"])
    Image.fromarray(rgb8[..., 0]).save(paths["png-gray8"])
    Image.fromarray(gray16).save(paths["png-gray16"])
    write_png16(paths["png-rgb16"], rgb16)
    Image.fromarray(rgb8).save(paths["jpeg-rgb8"], quality=90)
    tifffile.imwrite(paths["tiff-rgb16"], rgb16, photometric="rgb")
    return paths


def _torchvision_decode(path: Path) -> np.ndarray | None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from torchvision.io import ImageReadMode, decode_image, read_file

        try:
            tensor = decode_image(read_file(str(path)), mode=ImageReadMode.UNCHANGED)
        except (RuntimeError, ValueError):
            return None
    return tensor.permute(1, 2, 0).numpy()


def _pillow_decode(path: Path) -> np.ndarray | None:
    from PIL import Image

    try:
        array = np.asarray(Image.open(path))
    except OSError:
        return None
    return array if array.ndim == 3 else array[..., None]


def _tifffile_decode(path: Path) -> np.ndarray | None:
    import tifffile

    if path.suffix != ".tif":
        return None
    return tifffile.imread(path)


def _diff(ours: np.ndarray, other: np.ndarray | None) -> str:
    """How a library's raw decode compares with ours (ours drops alpha; the library may keep it)."""
    if other is None:
        return "cannot read"
    if other.ndim == 2:
        other = other[..., None]
    if other.shape[-1] in (2, 4) and other.shape[-1] != ours.shape[-1]:
        other = other[..., :-1]
    if other.shape != ours.shape:
        return f"shape {other.shape}"
    if other.dtype != ours.dtype:
        return f"{other.dtype}: max diff {np.abs(other.astype(np.int64) - ours.astype(np.int64)).max()}"
    return f"max diff {np.abs(other.astype(np.int64) - ours.astype(np.int64)).max()}"


def bench_decode(args: argparse.Namespace) -> None:
    from robust_ad_bench.datasets import decode

    libraries = (("Pillow", _pillow_decode), ("torchvision.io", _torchvision_decode), ("tifffile", _tifffile_decode))
    row("file", "ours ms", *[f"{name} ms" for name, _ in libraries], *[f"{name} vs ours" for name, _ in libraries])
    row(*["---"] * 8)
    with tempfile.TemporaryDirectory() as tmp:
        for name, path in _write_images(Path(tmp), args.side).items():
            t_ours, ours = timed(lambda p=path: decode.decode(p), args.repeats)
            times, diffs = [], []
            for _, fn in libraries:
                t, out = timed(lambda p=path, f=fn: f(p), args.repeats)
                times.append("—" if out is None else f"{1000 * t:.1f}")
                diffs.append(_diff(ours, out))
            row(f"{name} {args.side}²", f"{1000 * t_ours:.1f}", *times, *diffs)


def bench_resize(args: argparse.Namespace) -> None:
    """Ours (Pillow per image: files and ``transforms.transform_arrays``) beside torchvision's batched tensor
    resize (antialiased bilinear) on uint8 images."""
    import torch
    from torchvision.transforms.v2 import functional as TF

    from robust_ad_bench.datasets import decode
    from robust_ad_bench.datasets.files import ImageOptions
    from robust_ad_bench.datasets.transforms import transform_arrays

    rng = np.random.default_rng(0)
    row("images", "from → to", "ours (Pillow) s", "torchvision tensor s", "max |diff| (of 255)", "pixels differing")
    row(*["---"] * 6)
    for n, side, size in ((1000, 32, 64), (1000, 32, 16), (20, 1024, 256)):
        images = rng.integers(0, 256, (n, 3, side, side), dtype=np.uint8)
        options = ImageOptions(resize=size)
        t_ours, ours = timed(lambda im=images, o=options: transform_arrays(im, o), args.repeats)
        tensor = torch.from_numpy(images)
        t_tv, tv = timed(lambda t=tensor, s=size: TF.resize(t, [s, s], antialias=True).numpy(), args.repeats)
        diff = np.abs(ours.astype(int) - tv.astype(int))
        row(n, f"{side}² → {size}²", f"{t_ours:.3f}", f"{t_tv:.3f}", diff.max(), f"{(diff > 0).mean():.1%}")
    # 16-bit: ours resizes in Pillow's float mode; torchvision's uint16 resize is not supported, float32 is
    image16 = rng.integers(0, 65536, (1024, 1024, 3), dtype=np.uint16)
    t_ours, ours = timed(lambda: decode.resize(image16, 256), args.repeats)
    t_tv, tv = timed(lambda: TF.resize(torch.from_numpy(image16.astype(np.float32)).permute(2, 0, 1), [256, 256],
                                       antialias=True).round().clamp(0, 65535).permute(1, 2, 0).numpy(), args.repeats)
    diff = np.abs(ours.astype(int) - tv.astype(int))
    row(1, "1024² → 256² 16-bit", f"{t_ours:.3f}", f"{t_tv:.3f}", f"{diff.max()} (of 65535)",
        f"{(diff > 0).mean():.1%}")


# --------------------------------------------------------------------------------------------------
# b. CIFAR / MNIST / SVHN readers beside torchvision.datasets
# --------------------------------------------------------------------------------------------------


def bench_readers(args: argparse.Namespace) -> None:
    import torchvision.datasets as tvd

    import miniature_data as mini
    from robust_ad_bench.core.registry import DATASETS
    from test_readers_torchvision import torchvision_arrays

    makers = {"cifar10": lambda r: mini.make_cifar10(r, n_train=args.per_class, n_test=args.per_class // 5),
              "cifar100": lambda r: mini.make_cifar100(r, n_train=args.per_class, n_test=args.per_class // 5),
              "mnist": lambda r: mini.make_mnist(r, n_train=args.per_class, n_test=args.per_class // 5),
              "svhn": lambda r: mini.make_svhn(r, n_train=args.per_class, n_test=args.per_class // 5)}
    row("dataset", "images", "ours s", "torchvision s", "identical")
    row(*["---"] * 5)
    with tempfile.TemporaryDirectory() as tmp:
        for name, make in makers.items():
            root = make(Path(tmp) / name)
            dataset = DATASETS.get(name).create({"root": str(root)}, None)
            t_ours, ours = timed(lambda d=dataset, r=root: d.read(r), args.repeats)
            t_tv, theirs = timed(lambda n=name, r=root: torchvision_arrays(tvd, n, r), args.repeats)
            if name == "cifar100":  # torchvision gives the fine labels only (the miniature's are coarse * 5 + r)
                theirs = {**theirs, **{k: theirs[k] // 5 for k in ("train_labels", "test_labels")}}
            same = all(np.array_equal(ours[k], theirs[k]) for k in ("train", "train_labels", "test", "test_labels"))
            row(name, len(ours["train"]) + len(ours["test"]), f"{t_ours:.3f}", f"{t_tv:.3f}", same)


# --------------------------------------------------------------------------------------------------
# d. BGAD's flow beside FrEIA's AllInOneBlock; e. BGAD's augmentations beside torchvision.transforms.v2
# --------------------------------------------------------------------------------------------------


def _ours_step(flow, x, cond):
    flow.zero_grad()
    out = flow.log_prob(x, cond)
    out.sum().backward()
    return out.detach()


def _freia_step(twin, x, cond) -> None:
    """8 AllInOneBlocks forward and backward (the twin's first block, an identity coupling, left out)."""
    twin.zero_grad()
    z, log_det = x, 0
    for block in twin.blocks[1:]:
        (z,), ld = block([z], c=[cond])
        log_det = log_det + ld
    (-0.5 * z.pow(2).sum(1) + log_det).sum().backward()


def bench_flow(args: argparse.Namespace) -> None:
    import torch

    from robust_ad_bench.methods.bgad.flow import ConditionalFlow
    from test_bgad_libraries import freia_twin

    torch.manual_seed(0)
    row("vectors × dim", "blocks", "ours fwd+bwd s", "FrEIA fwd+bwd s", "max |Δ log p| / max |log p| (float32)")
    row(*["---"] * 5)
    for n, dim in ((4096, 64), (4096, 200)):
        flow = ConditionalFlow(dim, cond_dim=128, blocks=8, clamp=1.9)
        for p in flow.parameters():
            p.data.add_(0.05 * torch.randn_like(p))
        twin = freia_twin(flow)
        x, cond = torch.randn(n, dim), torch.randn(n, 128)

        t_ours, a = timed(lambda f=flow, x=x, c=cond: _ours_step(f, x, c), args.repeats)
        t_freia, _ = timed(lambda t=twin, x=x, c=cond: _freia_step(t, x, c), args.repeats)
        b = twin.log_prob(x, cond).detach()
        row(f"{n} × {dim}", 8, f"{t_ours:.3f}", f"{t_freia:.3f}", f"{((a - b).abs().max() / a.abs().max()).item():.1e}")


def bench_augment(args: argparse.Namespace) -> None:
    import torch
    from torchvision.transforms import v2

    from robust_ad_bench.methods.bgad.augment import rand_augment

    g = torch.Generator().manual_seed(0)
    row("images", "size", "ours (batched, per-image draws) s", "torchvision v2 (a loop over images) s")
    row(*["---"] * 4)
    # the closest v2 pipeline: 3 of the ops drawn per image, each with its own parameters, so one call per image
    ops = [v2.RandomChoice([v2.RandomRotation((90, 90)), v2.RandomRotation((180, 180)), v2.RandomRotation((270, 270))]),
           v2.RandomHorizontalFlip(), v2.RandomVerticalFlip(), v2.ElasticTransform(alpha=10.0),
           v2.GaussianNoise(sigma=0.02), v2.GaussianBlur(3), v2.RandomAffine(45, (0.0625, 0.0625), (0.8, 1.2)),
           v2.RandomPerspective(), v2.ColorJitter(0.2, 0.2), v2.ColorJitter(brightness=0.08)]

    def torchvision_loop(images, masks):
        out = []
        for image, mask in zip(images, masks):
            picks = torch.randperm(len(ops), generator=g)[:3].sort().values
            pipeline = v2.Compose([ops[i] for i in picks.tolist()])
            out.append(pipeline(image, mask))
        return out

    for n, side in ((64, 32), (64, 256)):
        images, masks = torch.rand(n, 3, side, side), torch.rand(n, side, side) > 0.9
        t_ours, _ = timed(lambda i=images, m=masks: rand_augment(i, m, g), args.repeats)
        from torchvision import tv_tensors

        wrapped = (tv_tensors.Image(images), tv_tensors.Mask(masks[:, None]))
        t_tv, _ = timed(lambda w=wrapped: torchvision_loop(*w), args.repeats)
        row(n, f"{side}²", f"{t_ours:.3f}", f"{t_tv:.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("pieces", nargs="+", choices=["metrics", "decode", "resize", "readers", "flow", "augment"])
    parser.add_argument("--sizes", type=float, nargs="+", default=[1e6, 1e7], help="metrics: pixels")
    parser.add_argument("--side", type=int, default=1024, help="decode: image side")
    parser.add_argument("--per-class", type=int, default=500, help="readers: training images per class")
    parser.add_argument("--bootstrap-rounds", type=int, default=1000, help="metrics: rounds of the bootstrap CI")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    args.sizes = [int(s) for s in args.sizes]
    import torch

    torch.set_num_threads(1)
    for piece in args.pieces:
        {"metrics": bench_metrics, "decode": bench_decode, "resize": bench_resize, "readers": bench_readers,
         "flow": bench_flow, "augment": bench_augment}[piece](args)


if __name__ == "__main__":
    main()
