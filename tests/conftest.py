"""Shared fixtures: tiny training budgets so the suite stays fast."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from robust_ad_bench.benchmark.grid.config import make_grid_config

TINY_FLOW = {"pretext_epochs": 2, "epochs": 2, "coupling_blocks": 2, "pos_dim": 8}
TINY_SLA = {"n_projections": 16, "projection_dim": 16, "encoder_epochs": 2}
TINY_METHOD_PARAMS = {
    "ae": {"epochs": 3}, "ae-at": {"epochs": 2}, "deep-svdd": {"epochs": 3},
    "bgad": TINY_FLOW, "bgad-unsup": TINY_FLOW, "sla2p": TINY_SLA, "sla": TINY_SLA,
    "advrad": {"epochs": 5, "width": 4, "noise_step": 100},
    "diffpure-ae": {"epochs": 2, "width": 4, "detector_params": {"epochs": 3}},
    "diffpure": {"epochs": 2, "width": 4, "detector": "knn"},
    # 2 score draws (the authors' 10 are tested in test_cobra.py): the score runs inside every attack step
    "contrastive": {"epochs": 1, "width": 8, "score_draws": 2},
    "contrastive-at": {"epochs": 1, "width": 8, "train_steps": 1, "score_draws": 2},
    "cobra": {"epochs": 1, "width": 8, "train_steps": 1, "score_draws": 2},
    "cobra-no-opposite": {"epochs": 1, "width": 8, "train_steps": 1, "score_draws": 2},
}
if importlib.util.find_spec("anomalib") is not None:  # the extra's methods: the smallest input resnet18 takes well
    TINY_METHOD_PARAMS.update({
        "anomalib-padim": {"image_size": 32}, "anomalib-patchcore": {"image_size": 32},
        "anomalib-stfpm": {"image_size": 32, "epochs": 1}, "anomalib-fastflow": {"image_size": 32, "epochs": 1}})


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _serial_cli(monkeypatch) -> None:
    """The CLI's own default executor is worker processes on a machine with several cores; the tests of other
    things run its commands in this process (``test_executors`` tests the default itself)."""
    from robust_ad_bench.benchmark import cli

    monkeypatch.setattr(cli, "default_executor", lambda: "serial")


@pytest.fixture
def one_thread():
    """One torch thread for the test: results that must match bit for bit across processes."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def fresh_data(monkeypatch):
    """No decoded images cached from another test, and no data root or cache folder from the environment."""
    from robust_ad_bench.datasets import cache, files

    cache.clear()
    monkeypatch.delenv(files.DATA_ENV, raising=False)
    monkeypatch.delenv(cache.CACHE_ENV, raising=False)
    yield
    cache.clear()


def tiny_grid(out, **overrides):
    """A small grid on two digit classes with tiny training budgets."""
    # the embedded data's full test sets (the default grid's are small subsets): the tests' statistics need them
    options = dict(methods="knn,ae", datasets="digits", attacks="clean,pgd", eps="32/255",
                   classes="0,1", out=str(out), device="cpu", dataset_params={})
    options.update(overrides)
    cfg = make_grid_config(**options)
    cfg.method_params = {**TINY_METHOD_PARAMS, **cfg.method_params}
    cfg.checks.square_queries = 200  # the default (1000) is tested on its own in test_checks.py
    return cfg
