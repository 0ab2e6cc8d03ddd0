"""Today's behaviour, pinned: the job, training, check and certificate keys of small grids (exactly) and the
test scores and AUROC of tiny fitted models (``data/pinned_behaviour.json``). A finished job is never
recomputed only while its key stays the same: a change that alters results must come with a bumped
``version`` of the method, attack or dataset whose results it changes, and new pins.

Keys are strings and pinned exactly. Scores are floats that depend on the platform: the same code gives
other last bits with another torch or numpy release, kernel or thread count, and training amplifies them.
Each job is therefore compared at tolerances measured from real variation (``score_tolerance``,
``auroc_tolerance``): its first scores in units of the job's score spread (the standard deviation of its
test scores, pinned with them, so one rule serves scores of any scale and offset), and its AUROC.

``python tests/test_pinned_behaviour.py dump FILE`` writes every score of the pinned grids in the current
environment; ``... variation REF FILE...`` prints, per method, the largest change against REF.
``benchmarks/PINNED_VARIATION.md`` lists the environments measured (torch releases, thread counts, CPU
instruction sets) and the figures. The test computes the scores at one torch thread."""

from __future__ import annotations

import itertools
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import tiny_grid
from robust_ad_bench.benchmark.execution.runner import Runner
from robust_ad_bench.benchmark.grid.jobs import certificate_key, check_key
from robust_ad_bench.benchmark.results.store import Store
from robust_ad_bench.core.registry import METHODS

PINS_FILE = Path(__file__).parent / "data" / "pinned_behaviour.json"
PINNED = json.loads(PINS_FILE.read_text())
GRIDS = {
    # contrastive: contrastive-at's encoder and score without adversarial training, pinned by its scores
    "one-class": dict(methods="ae,knn,deep-svdd,bgad-unsup,advrad,sla2p,contrastive,contrastive-at",
                      attacks="clean,pgd", eps="32/255", classes="0"),
    "few": dict(methods="bgad,knn", attacks="clean,fgsm", eps="32/255", classes="3", n_anomalies=4,
                known_defects=["digit-1", "digit-2"]),
    "transductive": dict(methods="knn", attacks="clean", classes="5", protocol="transductive", contamination=0.1),
}
N_PINNED_SCORES = 6  # the first test images of each job

# Per pinned job (method, attack), the largest change measured over the environments of
# benchmarks/PINNED_VARIATION.md: of its pinned scores (in units of the job's score spread) and of its AUROC.
MEASURED_CHANGE: dict[tuple[str, str], tuple[float, float]] = {
    ("ae", "clean"): (8.5e-07, 0.0), ("ae", "pgd"): (4.7e-07, 0.0),
    ("knn", "clean"): (0.0, 0.0), ("knn", "pgd"): (0.15, 0.00069), ("knn", "fgsm"): (0.0, 0.0),
    ("deep-svdd", "clean"): (2.7e-07, 0.0), ("deep-svdd", "pgd"): (1.4e-06, 0.0),
    ("bgad-unsup", "clean"): (1.7e-06, 0.0), ("bgad-unsup", "pgd"): (7.7e-07, 0.0),
    ("bgad", "clean"): (1.6e-06, 3.1e-05), ("bgad", "fgsm"): (1.3e-06, 0.0),
    ("advrad", "clean"): (1.8e-06, 0.0), ("advrad", "pgd"): (4.4e-06, 0.0),
    ("sla2p", "clean"): (7.2e-05, 0.0), ("sla2p", "pgd"): (6.9e-05, 0.0),
    ("contrastive", "clean"): (6e-06, 0.0), ("contrastive", "pgd"): (5e-06, 0.0),
    ("contrastive-at", "clean"): (0.00035, 0.0), ("contrastive-at", "pgd"): (0.00026, 0.0),
}
# A score that moves by more than a hundredth of its spread with the platform is chaotic there: a step that
# takes the sign of a gradient (PGD, and PGD inside adversarial training) turns a last-bit change of a
# near-zero gradient into a full step. A score pin wide enough for it would let real changes through, so such
# a job is pinned by its AUROC only.
CHAOTIC = 1e-2


def score_tolerance(job: tuple[str, str]) -> float | None:
    """Ten times the measured change, at least 1e-5 (float32 rounding of a spread-sized score); None: not
    pinned (chaotic)."""
    change = MEASURED_CHANGE[job][0]
    return None if change > CHAOTIC else max(1e-5, 10 * change)


def auroc_tolerance(job: tuple[str, str]) -> float:
    """AUROC to three decimals, or ten times the measured change where that is larger."""
    return max(1e-3, 10 * MEASURED_CHANGE[job][1])


def pinned_grid(out, name):
    cfg = tiny_grid(out, **GRIDS[name])
    cfg.attack_params = {"pgd": {"steps": 2}}
    cfg.checks.square_queries = 5
    cfg.certify.n0, cfg.certify.n = 2, 4
    cfg.certify.batch_size = 1024  # the pins predate the default grid's 256 (the key function is unchanged)
    return cfg


def model_keys(runner: Runner) -> dict[str, dict[str, str]]:
    groups = [list(g) for _, g in itertools.groupby(runner.jobs, key=lambda j: j.train_key)]
    return {g[0].method: {"check_key": check_key(g, runner.cfg.checks),
                          "cert_key": certificate_key(g, runner.cfg.certify, METHODS.get(g[0].method).certifiable)}
            for g in groups}


def run_pinned(out, name: str) -> tuple[Runner, list[dict]]:
    """Run one pinned grid (keys checked by the caller) and return each job's scores and AUROC."""
    runner = Runner(pinned_grid(out, name))
    summary = runner.run()
    assert not summary.failed, summary.failed
    rows = []
    with Store(out) as store:
        results = store.results().set_index("key")
        for job in runner.jobs:
            _, scores = store.scores(job.key)
            rows.append({"method": job.method, "attack": job.attack, "eps": job.eps, "key": job.key,
                         "train_key": job.train_key, "auroc": float(results.loc[job.key, "auroc"]),
                         "spread": float(np.std(scores)), "scores": [float(s) for s in scores]})
    return runner, rows


def score_change(got: dict, pinned: dict, n: int = N_PINNED_SCORES) -> float:
    """Largest change of the first ``n`` scores, in units of the pinned spread."""
    a, b = np.asarray(got["scores"][:n], dtype=np.float64), np.asarray(pinned["scores"][:n], dtype=np.float64)
    return float(np.abs(a - b).max() / max(pinned["spread"], 1e-12))


def mismatches(got: list[dict], pinned: list[dict]) -> list[str]:
    """What differs beyond the tolerances, one line per job (empty: the results are the pinned ones)."""
    lines = []
    for g, p in zip(got, pinned):
        job = (p["method"], p["attack"])
        change, tol = score_change(g, p), score_tolerance(job)
        if tol is not None and not change <= tol:
            lines.append(f"{p['method']} {p['attack']}: scores moved by {change:.3g} spreads (tolerance {tol:.3g})")
        if not abs(g["auroc"] - p["auroc"]) <= auroc_tolerance(job):
            lines.append(f"{p['method']} {p['attack']}: AUROC {g['auroc']:.4f}, pinned {p['auroc']:.4f} "
                         f"(tolerance {auroc_tolerance(job):.3g})")
    return lines


@pytest.mark.parametrize("name", list(GRIDS))
def test_keys_and_scores_are_unchanged(tmp_path, name, one_thread):
    expected = PINNED[name]
    runner = Runner(pinned_grid(tmp_path, name))
    got = [(j.method, j.attack, j.eps, j.key, j.train_key) for j in runner.jobs]
    assert got == [(r["method"], r["attack"], r["eps"], r["key"], r["train_key"]) for r in expected["jobs"]]
    assert model_keys(runner) == expected["models"]
    _, rows = run_pinned(tmp_path, name)
    assert not mismatches(rows, expected["jobs"])


def test_every_pinned_job_has_a_measured_tolerance():
    jobs = {(r["method"], r["attack"]) for grid in PINNED.values() for r in grid["jobs"]}
    assert jobs == set(MEASURED_CHANGE)


def test_a_change_without_a_version_bump_fails(tmp_path, one_thread, monkeypatch):
    """The double: a silent change of the shared training loop's learning rate by 1 % (keys unchanged) is
    caught for every trained method of the pinned grid, the adversarially trained one with the widest
    tolerance included."""
    adam = torch.optim.Adam

    def slightly_faster(params, lr=1e-3, **kwargs):
        return adam(params, lr=lr * 1.01, **kwargs)

    monkeypatch.setattr(torch.optim, "Adam", slightly_faster)
    cfg = pinned_grid(tmp_path, "one-class")
    cfg.methods, cfg.attacks = ["ae", "deep-svdd", "contrastive-at"], ["clean"]
    runner = Runner(cfg)
    expected = {r["key"]: r for r in PINNED["one-class"]["jobs"]}
    assert all(job.key in expected for job in runner.jobs)  # the keys do not see the change ...
    assert not runner.run().failed
    with Store(tmp_path) as store:
        rows = [{"method": j.method, "attack": j.attack, "scores": store.scores(j.key)[1].tolist(),
                 "auroc": float(store.results().set_index("key").loc[j.key, "auroc"])} for j in runner.jobs]
    found = mismatches(rows, [expected[j.key] for j in runner.jobs])
    assert {line.split()[0] for line in found} == {"ae", "deep-svdd", "contrastive-at"}, found  # ... the pins do


def regenerate(path: Path = PINS_FILE) -> None:
    """Rewrite the pins from the same grids (run from the repository root: ``PYTHONPATH=src:tests python
    tests/test_pinned_behaviour.py``), after bumping the version of what changed."""
    pins = {}
    for name, (runner, rows) in dump_grids().items():
        for row in rows:
            row["scores"] = row["scores"][:N_PINNED_SCORES]
        pins[name] = {"jobs": rows, "models": model_keys(runner)}
    path.write_text(json.dumps(pins, indent=1) + "\n")


def dump_grids() -> dict[str, tuple[Runner, list[dict]]]:
    import tempfile

    torch.set_num_threads(int(__import__("os").environ.get("PINNED_THREADS", "1")))
    out = {}
    for name in GRIDS:
        with tempfile.TemporaryDirectory() as folder:
            torch.manual_seed(0)  # as the suite's autouse fixture
            out[name] = run_pinned(folder, name)
    return out


def environment() -> dict[str, str]:
    import os
    import platform

    return {"torch": torch.__version__, "numpy": np.__version__, "threads": str(torch.get_num_threads()),
            "python": platform.python_version(), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            **{k: v for k, v in os.environ.items() if k.startswith(("ONEDNN", "ATEN", "MKL_ENABLE"))}}


def dump(path: str) -> None:
    """Every score of the pinned grids in this environment (``PINNED_THREADS`` torch threads, default 1)."""
    grids = {name: rows for name, (_, rows) in dump_grids().items()}
    Path(path).write_text(json.dumps({"environment": environment(), "grids": grids}) + "\n")


def variation(reference: str, *others: str) -> None:
    """Per pinned job (method, attack), the largest change against ``reference`` of its pinned scores and of
    every test score (in spreads), and of its AUROC; rows of another version (other keys) are left out."""
    ref = json.loads(Path(reference).read_text())
    for other in others:
        data = json.loads(Path(other).read_text())
        print(f"{other}: " + ", ".join(f"{k}={v}" for k, v in data["environment"].items()))
        other_rows = {g["key"]: g for rows in data["grids"].values() for g in rows}
        per_job: dict[tuple[str, str], list[float]] = {}
        for p in (p for rows in ref["grids"].values() for p in rows):
            g = other_rows.get(p["key"])
            if g is None:
                continue
            new = [score_change(g, p), score_change(g, p, n=len(p["scores"])), abs(g["auroc"] - p["auroc"])]
            old = per_job.get((p["method"], p["attack"]), [0.0, 0.0, 0.0])
            per_job[(p["method"], p["attack"])] = [max(o, n) for o, n in zip(old, new)]
        for (method, attack), (pinned, every, auroc) in sorted(per_job.items()):
            print(f"  {method:16s} {attack:6s} pinned scores {pinned:.3g}  all scores {every:.3g} spreads  "
                  f"AUROC {auroc:.4f}")


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    if len(sys.argv) > 1 and sys.argv[1] == "dump":
        dump(sys.argv[2])
    elif len(sys.argv) > 1 and sys.argv[1] == "variation":
        variation(*sys.argv[2:])
    else:
        regenerate()
