"""The profiling and masking-power scripts under ``benchmarks/`` still run against the current engine (they wrap
or reuse internals, so a changed signature would break them silently): run on tiny inputs, every phase or row
printed. Times and shares are printed, never asserted."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TINY = """methods: [knn]
datasets: [digits]
classes: {digits: ["0"]}
attacks: [clean, fgsm, pgd]
eps: {linf: [8/255]}
checks: {square_queries: 20}
certify: false
"""


def test_profile_script_runs_on_a_tiny_grid(tmp_path):
    config = tmp_path / "tiny.yaml"
    config.write_text(TINY)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "profile_default_run.py"), "--config",
                           str(config), "--methods", "knn", "--threads", "1", "--out", str(tmp_path / "res")],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "3 jobs (3 computed, 0 failed), 1 models trained, 1 checked" in proc.stdout
    for heading in ("training", "attack jobs", "worst cases", "checks", "masking sample"):
        assert heading in proc.stdout


def test_masking_power_script_runs_on_tiny_inputs():
    """Old and new masking checks on one tiny double per row: every row printed (shares are not asserted)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "masking_check_power.py"), "--seeds", "1",
                           "--shares", "0,0.5", "--noise", "0,0.5", "--n", "16", "--queries", "20"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [line for line in proc.stdout.splitlines() if line.startswith("| 0")]
    assert len(rows) == 4 and "unmasked (false alarms)" in rows[0] and "| 50 % |" in rows[1]
