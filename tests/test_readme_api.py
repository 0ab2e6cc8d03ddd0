"""The README's Python API example, exactly as printed: it runs, its rows are the CLI's (same keys, same
store: a CLI run of the same grid computes nothing), and the restored detector scores like the cached one."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import torch

from robust_ad_bench.benchmark.cli import main
from robust_ad_bench.benchmark.results.store import Store

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"


def api_example() -> str:
    section = README.read_text().split("## Python API", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_readme_example_runs(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", api_example()], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    lines = done.stdout.splitlines()
    assert any("clean" in line and "ok" in line for line in lines) and any("pgd" in line for line in lines)
    assert "tensor([" in done.stdout  # four scores of new images
    with Store(tmp_path / "results-api") as store:
        rows = store.results()
    assert set(rows["attack"]) == {"clean", "pgd"} and (rows["status"] == "ok").all()


def test_evaluate_rows_are_the_cli_rows(tmp_path, capsys):
    import robust_ad_bench as rab

    out = tmp_path / "res"
    rows = rab.evaluate("knn", "digits", attacks="clean,fgsm,pgd", eps="8/255", out=out, checks=False)
    assert list(rows["attack"]) == ["clean", "fgsm", "pgd", "worst-linf"]  # the jobs and their worst case
    code = main(["run", "--methods", "knn", "--datasets", "digits", "--attacks", "clean,fgsm,pgd", "--eps", "8/255",
                 "--no-checks", "--out", str(out)])
    assert code == 0
    assert "0 computed, 3 already in the store" in " ".join(capsys.readouterr().err.split())
    with Store(out) as store:
        stored = store.results()
    assert sorted(stored["key"]) == sorted(rows["key"])  # the same keys, nothing added by the CLI

    from robust_ad_bench.core.registry import DATASETS

    detector = rab.load_detector(out, "knn", "digits", "0", 0)
    from robust_ad_bench.benchmark.grid.config import load_yaml

    options = load_yaml("default")["dataset_params"]["digits"]  # the default grid's test set, as evaluate ran it
    x = DATASETS.get("digits").create(options).split("0", 0).test
    with Store(out) as store:
        _, scores = store.scores(rows.loc[rows["attack"] == "clean", "key"].iloc[0])
    with torch.no_grad():
        assert torch.allclose(detector.score(x), torch.from_numpy(scores), atol=1e-5)  # as the run scored them


def test_evaluate_a_detector_class_and_bad_input(tmp_path):
    import pytest

    import robust_ad_bench as rab
    from robust_ad_bench import BenchError, Detector

    class MeanDistance(Detector):
        """Distance to the mean training image."""

        hidden = True

        def fit(self, train):
            self.register_buffer("mean", train.images.mean(0, keepdim=True))

        def score(self, x):
            return (x - self.mean).flatten(1).norm(dim=1)

    rows = rab.evaluate(MeanDistance, "digits", attacks="clean", out=tmp_path, checks=False)
    assert list(rows["method"]) == ["meandistance"] and rows["auroc"].iloc[0] > 0.8
    with pytest.raises(BenchError, match="smaller than the 8 px"):
        rab.evaluate("ae", "breast-cancer", attacks="clean", out=tmp_path)
    with pytest.raises(BenchError, match="no trained knn on digits/0 seed 0"):
        rab.load_detector(tmp_path, "knn", "digits", "0", 0)
