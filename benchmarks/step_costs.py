"""Write the reference step-cost table (``robust_ad_bench/benchmark/step_costs.json``) from a results folder.

`run --dry-run` and the progress display estimate a grid's time from the step durations stored in the target
folder, else from this table scaled by a calibration (``step_costs``). Regenerate it after the default run:

    robust-ad-bench run --out results          # the default grid, on an otherwise idle machine
    python benchmarks/step_costs.py --out results

It keeps, per step kind, method, dataset and detail (attack, norm), the summed seconds and work units of
every measured step, and times the calibration workload now, on this machine, at the threads the run's
workers had (run it on the machine that made the results, idle). Nothing in the folder is written.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import sys
from pathlib import Path

import torch

from robust_ad_bench.benchmark.execution.step_costs import REFERENCE, calibrate, rates_of
from robust_ad_bench.benchmark.results.store import open_existing
from robust_ad_bench.core.errors import BenchError

PACKAGED = Path(__file__).resolve().parents[1] / "src" / REFERENCE[0] / REFERENCE[1]


def reference_table(folder: str | Path, calibration: float | None = None) -> dict:
    """The table of ``folder``'s stored step durations (``calibration``: measured now when None)."""
    with open_existing(folder) as store:
        frame = store.step_times()
    if frame.empty:
        raise BenchError(f"{folder} holds no step durations: run a grid into it with this version first")
    threads = int(frame["threads"].dropna().mode().iloc[0]) if frame["threads"].notna().any() else 1
    workers = int(frame["workers"].dropna().mode().iloc[0]) if frame["workers"].notna().any() else 1
    counts = frame.groupby(["kind", "method", "dataset", "detail"]).size()
    steps = [{"kind": k[0], "method": k[1], "dataset": k[2], "detail": k[3], "seconds": round(s, 4),
              "units": u, "count": int(counts[k])} for k, (s, u) in sorted(rates_of(frame).items())]
    machine = {"calibration_seconds": round(calibration if calibration is not None else calibrate(threads), 5),
               "threads": threads, "workers": workers, "cpu": platform.processor() or platform.machine(),
               "torch": torch.__version__, "measured": datetime.date.today().isoformat()}
    return {"machine": machine, "steps": steps}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="the results folder whose step durations are kept")
    parser.add_argument("--json", default=str(PACKAGED), help=f"where to write the table (default: {PACKAGED})")
    args = parser.parse_args(argv)
    try:
        table = reference_table(args.out)
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    steps = ",\n  ".join(json.dumps(step) for step in table["steps"])  # one rate a line: diffs stay readable
    Path(args.json).write_text(f'{{"machine": {json.dumps(table["machine"])},\n "steps": [\n  {steps}\n ]}}\n')
    print(f"wrote {args.json}: {len(table['steps'])} rates, calibration {table['machine']['calibration_seconds']} s "
          f"at {table['machine']['threads']} thread(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
