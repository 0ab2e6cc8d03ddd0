"""Time and peak memory of loading one MVTec-size category (never asserted in tests).

Generates a category of about 400 images in the MVTec AD layout (``tests/miniature_data.py``: 280 train,
28 good test, 5 defect types × 18 with masks) at ``--source-size`` pixels, then, in a fresh process each,
makes its split at ``--resize`` (decode + resize + cache), makes it again (in-memory cache), and reads it
from the on-disk cache in a third process. Prints wall time, the peak RSS while the first split is made
(one float split held, as the runner holds it) and the RSS before loading (Python, torch and numpy).

    python benchmarks/dataset_loading.py --source-size 1024 --resize 256
    python benchmarks/dataset_loading.py --source-size 256 --resize 256
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

CHILD = """
import json, resource, sys, time
sys.path[:0] = [{src!r}]
def rss():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
from robust_ad_bench.core.registry import DATASETS
ds = DATASETS.get("mvtec").create({{"resize": {resize}}}, {root!r})
ds.classes()
base = rss()
t0 = time.perf_counter()
split = ds.split("carpet", 0)
first = time.perf_counter() - t0
peak = rss()
images = len(split.train) + len(split.test)
floats = (split.train.numel() + split.test.numel()) * 4 / 2**20
del split
t1 = time.perf_counter()
again = ds.split("carpet", 1)
second = time.perf_counter() - t1
print(json.dumps({{"images": images, "first_s": first, "second_s": second, "split_MiB": floats,
                   "base_MiB": base, "peak_MiB": peak}}))
"""


def measure(root: Path, resize: int, cache_dir: str | None) -> dict:
    env = {"ROBUST_AD_BENCH_CACHE": cache_dir} if cache_dir else {}
    code = CHILD.format(src=str(ROOT / "src"), resize=resize, root=str(root))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, **env})
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source-size", type=int, default=1024, help="side of the generated images (carpet: 1024)")
    parser.add_argument("--resize", type=int, default=256)
    parser.add_argument("--data", help="reuse a generated data root instead of a temporary one")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT / "tests"))
    import miniature_data

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.data or tmp)
        if not (root / "mvtec" / "carpet").is_dir():
            miniature_data.make_industrial(root / "mvtec", "mvtec", ("carpet",), size=args.source_size, n_train=280,
                                           n_good=28, n_defect=18, defects=miniature_data.DEFECTS)
        size = sum(p.stat().st_size for p in (root / "mvtec").rglob("*") if p.is_file()) / 2**20
        print(f"category: {size:.0f} MiB of files at {args.source_size} px, loaded at {args.resize} px")
        plain = measure(root, args.resize, None)
        print(f"decode: {plain['images']} images in {plain['first_s']:.2f} s, again (memory cache) "
              f"{plain['second_s']:.3f} s; float split {plain['split_MiB']:.0f} MiB; peak RSS "
              f"{plain['peak_MiB']:.0f} MiB ({plain['base_MiB']:.0f} MiB before loading: Python, torch, numpy)")
        cache = str(Path(tmp) / "cache")
        measure(root, args.resize, cache)
        disk = measure(root, args.resize, cache)
        print(f"from the disk cache (a new process): {disk['first_s']:.2f} s; peak RSS {disk['peak_MiB']:.0f} MiB "
              f"({disk['base_MiB']:.0f} MiB before loading)")


if __name__ == "__main__":
    main()
