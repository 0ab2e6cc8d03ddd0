"""Time and peak memory of the default benchmark (`robust-ad-bench run --methods all`) on this machine.

Runs the CLI twice in a fresh results folder (the second run must recompute nothing) under
``/usr/bin/time -v`` when available, and prints wall time and peak resident memory of each.
Usage: python benchmarks/default_run.py [--out FOLDER] [extra run flags...]
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import time


def measure(cmd: list[str]) -> tuple[float, float | None, int]:
    timer = shutil.which("time")  # GNU time reports the peak resident memory with -v
    full = [timer, "-v", *cmd] if timer else cmd
    start = time.perf_counter()
    proc = subprocess.run(full, capture_output=True, text=True)
    wall = time.perf_counter() - start
    peak = re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr)
    return wall, int(peak.group(1)) / 2**20 if peak else None, proc.returncode


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", help="results folder (default: a new temporary folder)")
    args, extra = parser.parse_known_args()
    out = args.out or tempfile.mkdtemp(prefix="rab-default-")
    cmd = [sys.executable, "-m", "robust_ad_bench.benchmark.cli", "run", "--methods", "all", "--out", out, *extra]
    for label in ("first run", "second run (all cached)"):
        wall, peak, code = measure(cmd)
        memory = f"{peak:.2f} GiB" if peak is not None else "n/a (no /usr/bin/time)"
        print(f"{label}: {wall:.1f} s wall, peak RSS {memory}, exit status {code}")


if __name__ == "__main__":
    main()
