"""Every packaged config: passes ``run --config NAME --dry-run`` without any data, and runs end to end at a
tiny budget on miniature data generated in the real formats (one class per dataset, 32-px images, tiny
training and attack budgets: the numbers mean nothing, the plumbing is what is checked: the config loads,
its datasets resolve and load, the grid expands and every job runs)."""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import pytest

import miniature_data as mini
from conftest import TINY_FLOW, TINY_METHOD_PARAMS, TINY_SLA
from robust_ad_bench.benchmark.cli import main
from robust_ad_bench.benchmark.execution.runner import Runner
from robust_ad_bench.benchmark.grid.config import _as_list, load_yaml, make_grid_config, packaged_configs
from robust_ad_bench.core.registry import ATTACKS, DATASETS
from robust_ad_bench.datasets import cache

# the papers' configs and the default grid; ``full`` (the default grid at final-table strength) is tested below
CONFIGS = sorted(set(packaged_configs()) - {"full"})
# paper settings that need weights or hours, swapped for tiny ones (the rest of each config stays as it is)
TINY = {
    **TINY_METHOD_PARAMS,
    "bgad": {**TINY_FLOW, "backbone": "pretext", "pasted_repeats": 1, "normal_only_epochs": 1},
    "bgad-unsup": {**TINY_FLOW, "backbone": "pretext"},
    "sla2p": {**TINY_SLA, "features": "auto"}, "sla": {**TINY_SLA, "features": "auto"},
    "sla2p-const-inner": {**TINY_SLA, "features": "auto"},
    "cobra": {"epochs": 1, "width": 8, "train_steps": 1, "batch_size": 8, "warmup_epochs": 0, "samples_per_epoch": 0},
    "advrad": {"epochs": 2, "width": 4, "batch_size": 8},
    "diffpure-ae": {"epochs": 1, "width": 4, "batch_size": 8, "noise_step": 5, "denoise_steps": 2,
                    "detector_params": {"epochs": 1}},
}


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data")
    mini.make_industrial(root / "mvtec", "mvtec", ("bottle",), size=36, n_train=8, n_good=3, n_defect=6)
    mini.make_industrial(root / "VisA_pytorch" / "1cls", "visa", ("candle",), size=36, n_train=8, n_good=3,
                         n_defect=3)
    mini.make_industrial(root / "btad", "btad", ("01",), size=36, n_train=8, n_good=3, n_defect=3)
    mini.make_cifar10(root, n_train=8, n_test=4)
    return root


@pytest.mark.parametrize("name", CONFIGS)
def test_dry_run_without_data(tmp_path, capsys, name, monkeypatch):
    """A dry run checks what a run checks: with no data present it fails, naming where it looked."""
    monkeypatch.delenv("ROBUST_AD_BENCH_DATA", raising=False)
    code = main(["run", "--config", name, "--dry-run", "--out", str(tmp_path)])
    captured = capsys.readouterr()
    if name == "default":  # the embedded datasets: nothing to find
        assert code == 0 and "grid: 140 jobs" in captured.out
        return
    err = " ".join(captured.err.split())
    assert code == 2 and "no data root given" in err and "expected layout" in err and "Traceback" not in err


@pytest.mark.parametrize("name", CONFIGS)
def test_dry_run_with_data(tmp_path, capsys, name, data_root, monkeypatch):
    monkeypatch.setenv("ROBUST_AD_BENCH_WEIGHTS", str(tmp_path))  # no backbone weights: only configs without
    present = {"mvtec": "bottle", "visa": "candle", "btad": "01", "cifar10": "0", "digits": "0", "textures": "brick"}
    classes = ",".join(f"{d}:{present[d]}" for d in _as_list(load_yaml(name)["datasets"]))
    code = main(["run", "--config", name, "--dry-run", "--out", str(tmp_path), "--data-root", str(data_root),
                 "--classes", classes])
    captured = capsys.readouterr()
    if code == 2:  # a config of a pretrained backbone whose weights are not here: said before anything runs
        assert "no pretrained weights for backbone" in captured.err
    else:
        assert code == 0 and "grid:" in captured.out and "sanity checks:" in captured.out


def has_option(dataset: str, name: str) -> bool:
    options = DATASETS.get(dataset).Options
    return options is not None and name in {f.name for f in dataclasses.fields(options)}


def tiny(name: str, data_root: Path, out: Path):
    cfg = make_grid_config(name, out=str(out), device="cpu", seeds="0", data_root=str(data_root))
    datasets = DATASETS.resolve(cfg.datasets)
    cfg.classes = {d: [DATASETS.get(d).create().classes()[0]] for d in datasets}
    cfg.dataset_params = {d: {**(cfg.dataset_params.get(d) or {}), "resize": 32}
                          for d in datasets if has_option(d, "resize")}
    cfg.method_params = {m: {**(cfg.method_params.get(m) or {}), **TINY.get(m, {})}
                         for m in {*cfg.method_params, *TINY}}
    for attack in cfg.attacks:  # 2 steps for every iterative attack, 2 EOT draws where the config asks for more
        fields = {f.name for f in dataclasses.fields(ATTACKS.get(attack).Config)}
        params = cfg.attack_params.setdefault(attack, {})
        params.update({k: 2 for k in ("steps", "eot_samples") if k in fields and (k == "steps" or k in params)})
    if cfg.eps:  # the first budget of each norm (the grid's expansion over eps is what the dry run shows)
        cfg.eps = {norm: values[:1] for norm, values in cfg.eps.items()}
    cfg.checks.enabled = False
    cfg.certify.n0, cfg.certify.n = 2, 4
    if name == "bgad_mvtec":
        cfg.n_anomalies = 4  # the paper's 10 of a miniature category's 12 anomalies would leave 2 to test
    if name == "default":  # every method on the embedded sets is what the rest of the suite runs; one suffices
        cfg.methods = ["knn"]
    if name == "advrad_mvtec":  # EOT attacks through two diffusion models take minutes here (tests/test_advrad.py
        cfg.attacks = ["clean"]  # attacks them); every method trains and scores on MVTec, the cheapest on the rest
        cfg.certify.methods = "none"
    return cfg


def runners(name: str, data_root: Path, out: Path) -> list[Runner]:
    cfg = tiny(name, data_root, out)
    if name != "advrad_mvtec":
        return [Runner(cfg)]
    rest = copy.deepcopy(cfg)
    cfg.datasets, rest.datasets, rest.methods = ["mvtec"], ["visa", "btad"], ["ae"]
    return [Runner(cfg), Runner(rest)]


@pytest.mark.parametrize("name", CONFIGS)
def test_config_runs_at_a_tiny_budget(tmp_path, data_root, name):
    cache.clear()
    expected = {"default": {"digits", "textures"}, "advrad_mvtec": {"mvtec", "visa", "btad"},
                "bgad_mvtec": {"mvtec"}, "cobra-mvtec": {"mvtec"}, "cobra-cifar10": {"cifar10"},
                "sla2p_cifar10": {"cifar10"}}[name]
    grids = runners(name, data_root, tmp_path)
    assert {job.dataset for runner in grids for job in runner.jobs} == expected
    for runner in grids:
        summary = runner.run()
        assert summary.computed == len(runner.jobs) > 0
        assert not summary.failed, summary.failed[:3]


def test_the_full_profile_is_the_default_grid_on_full_test_sets_at_final_strength(tmp_path):
    from robust_ad_bench.benchmark.grid.config import expand_grid, make_grid_config

    quick = expand_grid(make_grid_config("default", out=str(tmp_path)))
    full = expand_grid(make_grid_config("full", out=str(tmp_path)))
    assert {j.method for j in full} == {j.method for j in quick}
    assert {j.dataset for j in full} == {j.dataset for j in quick} == {"digits", "textures"}
    assert {j.attack for j in full} == {"clean", "fgsm", "pgd", "ensemble"}
    pgd = next(j for j in full if j.attack == "pgd")
    assert (pgd.attack_spec.params["steps"], pgd.attack_spec.params["restarts"]) == (100, 5)
    assert "dataset_params" in next(j for j in quick if j.dataset == "digits").config  # the quick subsets
    assert "dataset_params" not in next(j for j in full if j.dataset == "digits").config  # the full test sets
