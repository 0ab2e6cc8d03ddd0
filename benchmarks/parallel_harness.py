"""Performance harness of the executors: prints figures and ratios measured within one run; asserts nothing.

Parts (``--parts``, default all but ``default``, which takes minutes per executor):

- ``throughput``: a grid of 8 jobs of >= 10 s each (PGD with many steps on textures, models trained
  beforehand and copied into every folder, so only jobs run) under serial, local and Ray; wall-time ratios,
  and whether the stores are identical bit for bit (at the same torch thread count) or how far apart.
- ``store``: the store's overhead per job (one result written, one claim taken and released per model).
- ``default``: the default run (``run --methods all`` in a fresh folder) per executor: wall time, the peak RSS
  of the largest process (what ``/usr/bin/time -v`` reports) and the peak PSS of the whole process tree
  (sampled; what a run with worker processes really takes).
- ``rerun``: time to rerun a finished grid (nothing to compute).
- ``scaling``: wall time of grids with more classes and methods, and the fitted seconds per trained model.

Every run is the CLI in a subprocess (imports and start-up included). Usage:
    python benchmarks/parallel_harness.py [--parts throughput,store,rerun,scaling,default] [--steps N]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from robust_ad_bench.benchmark.grid.jobs import content_key
from robust_ad_bench.benchmark.results.store import JobResult, Store

CLI = [sys.executable, "-m", "robust_ad_bench.benchmark.cli"]
EXECUTORS = {  # label -> run flags
    "serial (2 threads)": ["--executor", "serial", "--threads", "2"],
    "serial (1 thread)": ["--executor", "serial", "--threads", "1"],
    "local (2 workers x 1 thread)": ["--executor", "local", "--workers", "2", "--threads", "1"],
    "ray (2 CPUs x 1 thread)": ["--executor", "ray", "--workers", "2", "--threads", "1"],
}


def tree_memory(pid: int) -> tuple[int, int]:
    """(RSS, PSS) in bytes of ``pid`` and all its descendants. RSS counts the shared libraries (torch's are
    ~450 MB) once per process; PSS splits each shared page between the processes that map it, so the PSS
    sum is the memory the whole run takes."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parents[int(stat.parent.name)] = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
    family, grew = {pid}, True
    while grew:
        grew = False
        for child, parent in parents.items():
            if parent in family and child not in family:
                family.add(child)
                grew = True
    rss = pss = 0
    for member in family:
        try:
            for line in Path(f"/proc/{member}/smaps_rollup").read_text().splitlines():
                name, _, rest = line.partition(":")
                if name in ("Rss", "Pss"):
                    value = int(rest.split()[0]) * 1024
                    rss, pss = (rss + value, pss) if name == "Rss" else (rss, pss + value)
        except (OSError, ValueError, IndexError):
            continue
    return rss, pss


def run(args: list[str]) -> tuple[float, float, float, str]:
    """Run the CLI: (wall seconds, peak RSS of the largest process in GiB, peak PSS of the whole process
    tree in GiB (sampled every 0.2 s), output). The largest process comes from GNU time when present (as
    ``/usr/bin/time -v`` reports it: the largest single process, not the sum of the driver and its workers)."""
    timer = shutil.which("time")
    cmd = [timer, "-v", *CLI, *args] if timer else [*CLI, *args]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak = [0]

    def sample() -> None:
        while proc.poll() is None:
            peak[0] = max(peak[0], tree_memory(proc.pid)[1])
            time.sleep(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out, err = proc.communicate()
    wall = time.perf_counter() - start
    sampler.join()
    largest = float("nan")
    for line in err.splitlines():
        if "Maximum resident set size" in line:
            largest = int(line.split(":")[1]) / 2**20
    if proc.returncode != 0:
        print(f"  ! exit status {proc.returncode}: {err.strip().splitlines()[-1] if err.strip() else ''}")
    return wall, largest, peak[0] / 2**30, out + err


def stored(folder: Path) -> tuple[dict[str, float], dict[str, bytes], dict[str, float]]:
    with Store(folder) as store:
        results = store.results(status="ok")
        scores = {k: store.scores(k)[1].tobytes() for k in results["key"]}
    return dict(zip(results["key"], results["auroc"])), scores, dict(zip(results["key"], results["seconds"]))


def throughput(steps: int) -> None:
    print(f"\n== throughput: 8 PGD jobs ({steps} steps) on textures, models trained beforehand")
    root = Path(tempfile.mkdtemp(prefix="rab-throughput-"))
    grid = root / "grid.yaml"
    grid.write_text(f"""methods: [ae, deep-svdd]
datasets: [textures]
classes: {{textures: [brick, grass]}}
attacks: [pgd]
eps: {{linf: [2/255, 4/255]}}
attack_params: {{pgd: {{steps: {steps}}}}}
checks: false
certify: {{methods: none}}
""")
    warm = root / "warm"
    wall, *_ = run(["run", "--config", str(grid), "--out", str(warm), "--device", "cpu", "--threads", "2"])
    print(f"warm-up (trains the 4 models, runs the jobs serially): {wall:.1f} s")
    walls, figures = {}, {}
    for label, flags in EXECUTORS.items():
        folder = root / label.split()[0] / label.split("(")[1].split()[0]
        shutil.copytree(warm / "models", folder / "models")
        wall, _, tree, _ = run(["run", "--config", str(grid), "--out", str(folder), "--device", "cpu", *flags])
        walls[label], figures[label] = wall, stored(folder)
        seconds = sorted(figures[label][2].values())
        print(f"{label:<32} {wall:7.1f} s wall, {len(seconds)} jobs of {seconds[0]:.1f}-{seconds[-1]:.1f} s "
              f"(median {np.median(seconds):.1f} s), peak PSS of the tree {tree:.2f} GiB")
    base = walls["serial (2 threads)"]
    for label in EXECUTORS:
        print(f"speed-up of {label} over serial (2 threads): {base / walls[label]:.2f}x; "
              f"over serial (1 thread): {walls['serial (1 thread)'] / walls[label]:.2f}x")
    one = figures["serial (1 thread)"]
    for label in EXECUTORS:
        auroc, scores, _ = figures[label]
        same = scores == one[1]
        gap = max(abs(auroc[k] - one[0][k]) for k in auroc) if auroc.keys() == one[0].keys() else float("nan")
        print(f"{label:<32} vs serial (1 thread): {'identical bit for bit' if same else 'different'} "
              f"(largest AUROC difference {gap:.2e})")


def store_overhead(rounds: int = 300) -> None:
    print("\n== store overhead per job")
    folder = Path(tempfile.mkdtemp(prefix="rab-store-"))
    rng = np.random.default_rng(0)
    labels, scores = (rng.random(400) > 0.7).astype(np.uint8), rng.random(400).astype(np.float32)
    config = {"method": "ae", "params": {"epochs": 30}, "attack": "pgd", "eps": 8 / 255}
    with Store(folder) as store:
        start = time.perf_counter()
        for i in range(rounds):
            store.put(JobResult(content_key({"i": i}), "t", "ok", "ae", "digits", "0", 0, "pgd", "linf", 8 / 255,
                                config, {"auroc": 0.9, "aupr": 0.8}, 400, 1.0, labels=labels, scores=scores))
        put = (time.perf_counter() - start) / rounds
        from robust_ad_bench.benchmark.execution.claims import Claims

        with Claims(store.path) as claims:
            start = time.perf_counter()
            for i in range(rounds):
                claims.claim(f"model-{i}")
                claims.release(f"model-{i}")
            claim = (time.perf_counter() - start) / rounds
        start = time.perf_counter()
        store.results(status="ok", keys=[content_key({"i": i}) for i in range(12)])
        refresh = time.perf_counter() - start
    print(f"writing one job (row + 400 scores, its own transaction): {put * 1e3:.2f} ms")
    print(f"claiming and releasing one model: {claim * 1e3:.2f} ms; "
          f"re-reading a model's 12 jobs: {refresh * 1e3:.2f} ms")
    print(f"per job of the default grid (5 jobs per model, median job ~1 s): "
          f"{(put + (claim + refresh) / 5) * 1e3:.2f} ms, i.e. {(put + (claim + refresh) / 5) * 100:.2f} % of 1 s")


def default_run(executors: list[str]) -> None:
    print("\n== the default run (run --methods all in a fresh folder)")
    for label in executors:
        folder = Path(tempfile.mkdtemp(prefix="rab-default-"))
        wall, largest, tree, out = run(["run", "--methods", "all", "--out", str(folder), *EXECUTORS[label]])
        again, *_ = run(["run", "--methods", "all", "--out", str(folder), *EXECUTORS[label]])
        line = next((s for s in out.splitlines() if " computed, " in s), "").strip()
        print(f"{label:<32} {wall:6.1f} s wall, peak RSS of the largest process {largest:.2f} GiB (time -v), "
              f"peak PSS of the process tree {tree:.2f} GiB; "
              f"rerun {again:.1f} s; {line}")


def rerun_time() -> None:
    print("\n== rerun of a finished grid")
    folder = Path(tempfile.mkdtemp(prefix="rab-rerun-"))
    args = ["run", "--methods", "knn,ae", "--datasets", "digits", "--classes", "0,1", "--out", str(folder)]
    first, *_ = run(args)
    times = [run(args)[0] for _ in range(3)]
    print(f"first run {first:.1f} s; reruns (nothing to compute) {', '.join(f'{t:.2f}' for t in times)} s")


def scaling() -> None:
    print("\n== scaling with classes and methods (digits, the default grid's attacks and checks, serial)")
    methods = ["knn", "deep-svdd", "ae", "contrastive"]
    points = [(1, 1), (2, 1), (4, 1), (1, 2), (1, 4), (2, 2), (4, 4)]
    rows = []
    for classes, n_methods in points:
        folder = Path(tempfile.mkdtemp(prefix="rab-scale-"))
        wall, *_ = run(["run", "--datasets", "digits", "--classes", ",".join(map(str, range(classes))),
                        "--methods", ",".join(methods[:n_methods]), "--out", str(folder)])
        rows.append((classes, n_methods, wall))
        print(f"classes {classes}  methods {n_methods} ({','.join(methods[:n_methods])}): {wall:6.1f} s")
    for n_methods in (1, 4):
        same = [(c, w) for c, m, w in rows if m == n_methods]
        if len(same) > 1:
            slope, intercept = np.polyfit([c for c, _ in same], [w for _, w in same], 1)
            print(f"{n_methods} method(s): {slope:.1f} s per class (fixed cost {intercept:.1f} s)")
    one_class = [(m, w) for c, m, w in rows if c == 1]
    slope, intercept = np.polyfit([m for m, _ in one_class], [w for _, w in one_class], 1)
    print(f"1 class: {slope:.1f} s per method added in this order (fixed cost {intercept:.1f} s)")
    models = np.array([c * m for c, m, _ in rows], float)
    slope, intercept = np.polyfit(models, [w for *_, w in rows], 1)
    print(f"all points: {slope:.1f} s per trained model (classes x methods), fixed cost {intercept:.1f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", default="throughput,store,rerun,scaling")
    parser.add_argument("--steps", type=int, default=400, help="PGD steps of the throughput grid's jobs")
    parser.add_argument("--executors", default="serial (2 threads),local (2 workers x 1 thread)",
                        help="comma-separated labels for the default part")
    args = parser.parse_args()
    parts = args.parts.split(",")
    if "throughput" in parts:
        throughput(args.steps)
    if "store" in parts:
        store_overhead()
    if "rerun" in parts:
        rerun_time()
    if "scaling" in parts:
        scaling()
    if "default" in parts:
        default_run([s.strip() for s in args.executors.split(",")])


if __name__ == "__main__":
    main()
