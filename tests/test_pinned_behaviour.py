"""Today's behaviour, pinned: the job, training, check and certificate keys of small grids and the test
scores of tiny fitted models (``data/pinned_behaviour.json``, written on fbe082c before the architecture
refactor). A finished job is never recomputed only while its key stays the same: a change here must come
with a bumped ``version`` of the method, attack or dataset whose results it changes, and new pins.

The scores are compared at one torch thread: adversarially trained models amplify the last-bit
differences between thread counts (contrastive-at moves by 0.05 between one and two threads)."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import tiny_grid
from robust_ad_bench.benchmark.jobs import certificate_key, check_key
from robust_ad_bench.benchmark.runner import Runner
from robust_ad_bench.benchmark.store import Store
from robust_ad_bench.core.registry import METHODS

PINNED = json.loads((Path(__file__).parent / "data" / "pinned_behaviour.json").read_text())
GRIDS = {
    "one-class": dict(methods="ae,knn,deep-svdd,bgad-unsup,advrad,sla2p,contrastive-at", attacks="clean,pgd",
                      eps="32/255", classes="0"),
    "few": dict(methods="bgad,knn", attacks="clean,fgsm", eps="32/255", classes="3", n_anomalies=4,
                known_defects=["digit-1", "digit-2"]),
    "transductive": dict(methods="knn", attacks="clean", classes="5", protocol="transductive", contamination=0.1),
}


def pinned_grid(out, name):
    cfg = tiny_grid(out, **GRIDS[name])
    cfg.attack_params = {"pgd": {"steps": 2}}
    cfg.checks.square_queries = 5
    cfg.certify.n0, cfg.certify.n = 2, 4
    cfg.certify.batch_size = 1024  # the pins predate the default grid's 256 (the key function is unchanged)
    return cfg


@pytest.mark.parametrize("name", list(GRIDS))
def test_keys_and_scores_are_unchanged(tmp_path, name, one_thread):
    expected = PINNED[name]
    runner = Runner(pinned_grid(tmp_path, name))
    got = [(j.method, j.attack, j.eps, j.key, j.train_key) for j in runner.jobs]
    assert got == [(r["method"], r["attack"], r["eps"], r["key"], r["train_key"]) for r in expected["jobs"]]
    groups = [list(g) for _, g in itertools.groupby(runner.jobs, key=lambda j: j.train_key)]
    certifiable = {g[0].method: METHODS.get(g[0].method).certifiable for g in groups}
    models = {g[0].method: {"check_key": check_key(g, runner.cfg.checks),
                            "cert_key": certificate_key(g, runner.cfg.certify, certifiable[g[0].method])}
              for g in groups}
    assert models == expected["models"]

    summary = runner.run()
    assert not summary.failed, summary.failed
    with Store(tmp_path) as store:
        for job, row in zip(runner.jobs, expected["jobs"]):
            _, scores = store.scores(job.key)
            np.testing.assert_allclose(scores[:6], row["scores"], rtol=1e-5, atol=1e-7,
                                       err_msg=f"{job.method} {job.attack}")


def regenerate(path: Path = Path(__file__).parent / "data" / "pinned_behaviour.json") -> None:
    """Rewrite the pins from the same grids (run from the repository root: ``PYTHONPATH=src:tests python
    tests/test_pinned_behaviour.py``), after bumping the version of what changed."""
    import tempfile

    torch.set_num_threads(1)
    pins = {}
    for name in GRIDS:
        with tempfile.TemporaryDirectory() as out:
            torch.manual_seed(0)  # as the suite's autouse fixture
            runner = Runner(pinned_grid(out, name))
            groups = [list(g) for _, g in itertools.groupby(runner.jobs, key=lambda j: j.train_key)]
            models = {g[0].method: {"check_key": check_key(g, runner.cfg.checks),
                                    "cert_key": certificate_key(g, runner.cfg.certify,
                                                                METHODS.get(g[0].method).certifiable)}
                      for g in groups}
            summary = runner.run()
            assert not summary.failed, summary.failed
            with Store(out) as store:
                jobs = [{"method": j.method, "attack": j.attack, "eps": j.eps, "key": j.key, "train_key": j.train_key,
                         "scores": [float(s) for s in store.scores(j.key)[1][:6]]} for j in runner.jobs]
        pins[name] = {"jobs": jobs, "models": models}
    path.write_text(json.dumps(pins, indent=1) + "\n")


if __name__ == "__main__":
    regenerate()
