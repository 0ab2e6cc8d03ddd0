"""Reported figures as data, ``reproduce PAPER`` and ``leaderboard --reported``."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest

import miniature_data as mini
from robust_ad_bench.benchmark import cli_reports
from robust_ad_bench.benchmark.cli import main
from robust_ad_bench.benchmark.grid.config import packaged_configs
from robust_ad_bench.benchmark.papers.catalog import Figure, Paper, load_paper, paper_names, parse_paper
from robust_ad_bench.benchmark.papers.reported import cell_reported, compare
from robust_ad_bench.benchmark.results import leaderboard
from robust_ad_bench.core.errors import BenchError

MVTEC = ("bottle", "cable", "capsule", "carpet", "grid", "hazelnut", "leather", "metal_nut", "pill", "screw", "tile",
         "toothbrush", "transistor", "wood", "zipper")


pytestmark = pytest.mark.usefixtures("fresh_data")


def test_packaged_papers_are_valid():
    assert paper_names() == ["advrad", "bgad", "cobra", "sla2p"]
    configs = set()
    for name in paper_names():
        paper = load_paper(name)
        assert paper.figures and all(f.source.strip() and f.table.strip() for f in paper.figures)
        configs.update(paper.configs)
    assert configs == set(packaged_configs()) - {"default", "full"}  # every paper config belongs to a paper
    bgad = {(f.metric, f.value) for f in load_paper("bgad").figures if f.value is not None}
    assert bgad == {("auroc", 99.4), ("pixel_auroc", 99.3)}


ROW = ("{method: ae, dataset: mvtec, class: mean, metric: auroc, attack: pgd, norm: linf, eps: 2/255, "
       "value: 80.5, table: Table 1, source: paper}")


@pytest.mark.parametrize("change,message", [
    (("dataset: mvtec", "dataset: mvtek"), "unknown dataset in bad.yaml, figure 1 'mvtek'"),
    (("class: mean", "class: bottel"), "unknown class of dataset 'mvtec' 'bottel'"),
    (("value: 80.5", "value: 120"), "value must be a percentage"),
    (("value: 80.5", "value: 0.9 maybe"), "value must be a percentage"),
    (("norm: linf", "norm: l2"), "attack 'pgd' has norm 'linf', not 'l2'"),
    (("source: paper", "source: ''"), "'source' must say where the figure comes from"),
    (("metric: auroc", "metric: accuracy"), "unknown metric"),
    ((", table: Table 1", ""), "missing 'table'"),
])
def test_bad_paper_files_are_named(tmp_path, change, message):
    text = f"paper: x\ntitle: t\nreference: r\nconfigs: [cobra-mvtec]\nfigures:\n  - {ROW.replace(*change)}\n"
    (tmp_path / "bad.yaml").write_text(text)
    with pytest.raises(BenchError, match=message):
        parse_paper(tmp_path / "bad.yaml")
    (tmp_path / "ok.yaml").write_text(text.replace(f"  - {ROW.replace(*change)}", f"  - {ROW}"))
    assert parse_paper(tmp_path / "ok.yaml").figures[0].eps == pytest.approx(2 / 255)


def test_list_papers(capsys):
    assert main(["list", "papers"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in ("advrad", "bgad", "cobra", "sla2p")) and "not found" in out


def test_reproduce_without_data_lists_what_is_skipped(tmp_path, capsys):
    code = main(["reproduce", "cobra", "--data-root", str(tmp_path), "--out", str(tmp_path / "res")])
    err = " ".join(capsys.readouterr().err.split())
    assert code == 2
    assert "skipped mvtec (all classes)" in err and "skipped cifar10 (all classes)" in err
    assert "expected layout" in err and "cifar-10-batches-py/data_batch_1" in err
    assert "nothing of paper 'cobra' can run" in err


TINY_FLOW = "pretext_epochs: 1, epochs: 1, coupling_blocks: 2, pos_dim: 8, backbone: pretext"


def test_reproduce_bgad_on_a_miniature_tree(tmp_path, capsys):
    mini.make_industrial(tmp_path / "mvtec", "mvtec", ("bottle",), size=20, n_train=6, n_good=4, n_defect=6)
    out = tmp_path / "res"
    args = ["reproduce", "bgad", "--data-root", str(tmp_path), "--out", str(out), "--attacks", "clean",
            "--no-checks", "--device", "cpu", "--set", "dataset_params.mvtec.resize=16", "--set",
            f"method_params.bgad={{{TINY_FLOW}, pasted_repeats: 1}}", "--set",
            f"method_params.bgad-unsup={{{TINY_FLOW}}}"]
    assert main([*args, "--dry-run"]) == 0
    dry = capsys.readouterr()
    assert "bgad" in dry.out and "bottle" in dry.out and "skipped mvtec (cable, capsule" in " ".join(dry.err.split())
    assert not (out / "results.sqlite").exists()

    assert main(args) == 0
    captured = capsys.readouterr()
    assert "reported vs reproduced" in captured.out and "99.4" in captured.out and "1/15 classes" in captured.out
    table = pd.read_csv(out / "reproduce_bgad.csv")
    mean = table[(table["class"] == "mean") & (table["method"] == "bgad") & (table["metric"] == "auroc")].iloc[0]
    assert mean["reported"] == 99.4 and mean["n"] == 1 and mean["of"] == 15
    assert math.isnan(mean["difference"])  # a mean over 1 of 15 categories is not set against the paper's
    per_class = table[(table["class"] == "bottle") & (table["method"] == "bgad") & (table["metric"] == "auroc")]
    assert len(per_class) == 1 and 0 <= per_class["reproduced"].iloc[0] <= 100
    assert "skipped mvtec (cable, capsule" in " ".join(captured.err.split())


def _results(classes, method="ae", value=0.8, few=None):
    config = {"dataset": "mvtec", **({"few_anomalies": {"n_anomalies": few}} if few else {})}
    return pd.DataFrame([{"method": method, "dataset": "mvtec", "normal_class": c, "seed": 0, "attack": "pgd",
                          "norm": "linf", "eps": 2 / 255, "auroc": value + 0.01 * i, "status": "ok",
                          "config": json.dumps(config)} for i, c in enumerate(classes)])


def _figure(value, normal_class="mean", setting=("one-class", None, 0)):
    return Figure("p", "ae", "mvtec", normal_class, "auroc", "pgd", "linf", 2 / 255, value, "Table 2", "paper",
                  setting, page="7")


def test_compare_aggregates_to_the_papers_granularity():
    every = _results(MVTEC)
    table = compare(every, [_figure(80.0), _figure(None, "bottle")])
    mean = table[table["class"] == "mean"].iloc[0]
    assert mean["n"] == 15 and mean["of"] == 15 and mean["reported"] == 80.0
    assert mean["reproduced"] == pytest.approx(100 * (0.8 + 0.07)) and mean["difference"] == pytest.approx(7.0)
    assert mean["source"] == "p: Table 2, p. 7"
    bottle = table[table["class"] == "bottle"].iloc[0]
    assert bottle["found"] is not None and not bottle["found"]  # a "not found" figure
    assert math.isnan(bottle["reported"])
    assert compare(_results(MVTEC, few=10), [_figure(80.0)])["reported"].isna().all()  # another protocol
    assert compare(_results(MVTEC, few=10), [_figure(80.0, setting=("one-class", None, 10))])["reported"].notna().any()


def test_leaderboard_reported_column():
    figures = [_figure(80.0), _figure(70.0, "bottle")]
    shown = cell_reported(_results(MVTEC), figures)
    assert shown == {("ae", "mvtec", "pgd", "linf", round(2 / 255, 10)): "0.800"}
    assert cell_reported(_results(MVTEC[:2]), figures) == {}  # two of fifteen classes: no figure fits
    assert cell_reported(_results(["bottle"]), figures) == {("ae", "mvtec", "pgd", "linf", round(2 / 255, 10)): "0.700"}
    results = _results(MVTEC).assign(adversarially_trained=False, aupr=0.5, fpr95=0.5, pixel_auroc=None,
                                     train_key=[f"k{i}" for i in range(15)], key=[f"j{i}" for i in range(15)])
    table = leaderboard.wide(results, reported=shown)
    assert list(table.columns) == ["AT", "mvtec pgd 2/255", "mvtec pgd 2/255 reported", "failed"]
    assert table.loc["ae", "mvtec pgd 2/255 reported"] == "0.800"


def test_leaderboard_reported_flag(tmp_path, capsys, monkeypatch):
    out = str(tmp_path)
    assert main(["run", "--methods", "knn", "--datasets", "digits", "--classes", "0", "--attacks", "clean",
                 "--no-checks", "--device", "cpu", "--out", out]) == 0
    figure = Figure("demo", "knn", "digits", "0", "auroc", "clean", "none", 0.0, 91.5, "Table 9", "demo paper")
    monkeypatch.setattr(cli_reports, "paper_names", lambda: ["demo"])
    monkeypatch.setattr(cli_reports, "load_paper", lambda name: Paper("demo", "Demo", "ref", [], [figure]))
    capsys.readouterr()
    assert main(["leaderboard", "--out", out, "--reported"]) == 0
    text = capsys.readouterr().out
    assert "clean reported" in text and "0.915" in text
    assert "0.915" in (tmp_path / "leaderboard.md").read_text()
    assert main(["leaderboard", "--out", out]) == 0
    assert "reported" not in capsys.readouterr().out


def test_reproduce_lists_the_figures_of_failed_runs(tmp_path, capsys):
    mini.make_industrial(tmp_path / "mvtec", "mvtec", ("bottle",), size=20, n_train=4, n_good=2, n_defect=6)
    bad = tmp_path / "mvtec/bottle/train/good/000.png"
    bad.write_bytes(b"not a png")  # found only when decoding: the run fails (missing weights would stop it before)
    code = main(["reproduce", "bgad", "--data-root", str(tmp_path), "--out", str(tmp_path / "res"), "--methods",
                 "bgad", "--attacks", "clean", "--no-checks", "--device", "cpu", "--set",
                 "dataset_params.mvtec.resize=16", "--set", "method_params.bgad.backbone=pretext"])
    captured = capsys.readouterr()
    assert code == 1 and f"cannot decode image {bad}" in " ".join(captured.err.split())
    assert "99.4" in captured.out and "99.3" in captured.out and "no result" in captured.out
