import numpy as np
import pandas as pd
import pytest
from rich.console import Console

from robust_ad_bench.benchmark.results import leaderboard


def frame(rows):
    base = {"status": "ok", "norm": "linf", "adversarially_trained": False, "pixel_auroc": np.nan, "config": "{}",
            "attack_detail": ""}
    rows = [{**base, "train_key": f"{r['method']}-{r['dataset']}-{r['normal_class']}", **r} for r in rows]
    return pd.DataFrame(rows)


RESULTS = frame([
    {"method": "a", "dataset": "d", "normal_class": "0", "attack": "clean", "norm": "none", "eps": 0.0, "auroc": 0.9},
    {"method": "a", "dataset": "d", "normal_class": "1", "attack": "clean", "norm": "none", "eps": 0.0, "auroc": 0.7},
    {"method": "a", "dataset": "d", "normal_class": "0", "attack": "pgd", "eps": 8 / 255, "auroc": 0.4},
    {"method": "a", "dataset": "d", "normal_class": "1", "attack": "pgd", "eps": 8 / 255, "auroc": 0.2},
    {"method": "b", "dataset": "d", "normal_class": "0", "attack": "clean", "norm": "none", "eps": 0.0, "auroc": 0.8,
     "adversarially_trained": True},
    {"method": "b", "dataset": "d", "normal_class": "1", "attack": "pgd", "eps": 8 / 255, "auroc": None,
     "status": "failed"},
])


def test_summary_is_mean_and_std_over_classes():
    long = leaderboard.summarize(RESULTS)
    row = long[(long["method"] == "a") & (long["attack"] == "clean")].iloc[0]
    assert row["mean"] == pytest.approx(0.8) and row["std"] == pytest.approx(np.std([0.9, 0.7], ddof=1))
    assert row["n"] == 2
    assert list(long["attack"][long["method"] == "a"]) == ["clean", "pgd"]  # clean first


def test_wide_table_cells_flags_and_failures():
    table = leaderboard.wide(RESULTS)
    assert list(table.columns) == ["AT", "d clean", "d pgd 8/255", "failed"]
    assert table.loc["a", "d clean"] == "0.800 ± 0.141"
    assert table.loc["b", "d clean"] == "0.800"  # one run: no fake ± 0
    assert table.loc["b", "d pgd 8/255"] == "–"
    assert table.loc["b", "AT"] == "yes" and table.loc["b", "failed"] == 1 and table.loc["a", "failed"] == 0


def test_markdown_and_latex():
    table = leaderboard.wide(RESULTS)
    md = leaderboard.to_markdown(table)
    assert md.splitlines()[0] == "| method | AT | d clean | d pgd 8/255 | failed |"
    tex = leaderboard.to_latex(table)
    assert r"\begin{tabular}{lrrrr}" in tex and r"0.800 $\pm$ 0.141" in tex


def test_metric_without_values_is_left_out():
    assert leaderboard.summarize(RESULTS, "pixel_auroc").empty
    assert leaderboard.wide(RESULTS, "pixel_auroc").empty


@pytest.mark.parametrize("eps,norm,label", [(8 / 255, "linf", "8/255"), (0.5, "l2", "0.5"), (0.0, "none", "0")])
def test_eps_label(eps, norm, label):
    assert leaderboard.eps_label(eps, norm) == label


def test_worst_case_column_shows_the_stored_per_image_worst_case_and_its_flags():
    config = '{"attacks": ["pgd", "square"], "derived": "worst-case"}'
    extra = frame([
        {"method": "a", "dataset": "d", "normal_class": "0", "attack": "square", "eps": 8 / 255, "auroc": 0.3},
        {"method": "a", "dataset": "d", "normal_class": "1", "attack": "square", "eps": 8 / 255, "auroc": 0.5},
        # per image, below both attacks' AUROC: 0.25 and 0.15 (not min(0.4, 0.3) and min(0.2, 0.5))
        {"method": "a", "dataset": "d", "normal_class": "0", "attack": "worst-linf", "eps": 8 / 255, "auroc": 0.25,
         "attack_detail": "per-image worst of 2 attacks,won=square:60%+pgd:40%", "config": config},
        {"method": "a", "dataset": "d", "normal_class": "1", "attack": "worst-linf", "eps": 8 / 255, "auroc": 0.15,
         "attack_detail": "per-image worst of 2 attacks,won=pgd:70%+square:30%", "config": config},
    ])
    results = pd.concat([RESULTS, extra], ignore_index=True)
    checks = pd.DataFrame([
        {"method": "a", "dataset": "d", "attack": "pgd", "name": "black-box", "passed": False, "train_key": key}
        for key in ("a-d-0", "a-d-1")])
    table = leaderboard.wide(results, checks=checks)
    worst = table.loc["a", "d worst-linf 8/255"]
    assert worst.startswith("0.200 ± 0.071") and "!B" in worst and "square" in worst
    assert table.loc["a", "d pgd 8/255"].endswith("!B")
    assert leaderboard.flag_legend(table) == [f"!B: {leaderboard.FLAG_LEGEND['B']}"]
    assert "d worst-linf 8/255" in leaderboard.wide(results.assign(aupr=0.5), "aupr", checks).columns
    curve = leaderboard.worst_per_model(results)
    assert sorted(curve["auroc"]) == [0.15, 0.25]


def test_cells_of_unchecked_models_and_raising_checks_are_flagged():
    checks = pd.DataFrame([{"method": "a", "dataset": "d", "attack": "pgd", "name": "error:large-eps",
                            "passed": False, "train_key": "a-d-0"}])
    table = leaderboard.wide(RESULTS, checks=checks)
    # class 0: its large-eps check raised (!); class 1: no checks at all (?)
    assert table.loc["a", "d pgd 8/255"].endswith("!!?")
    assert table.loc["a", "d clean"] == "0.800 ± 0.141"  # clean cells are not attacked: never flagged
    assert [line[:2] for line in leaderboard.flag_legend(table)] == ["!!", "!?"]
    assert not leaderboard.wide(RESULTS).loc["a", "d pgd 8/255"].endswith("?")  # no checks given: no flags


def test_seen_anomalies_are_marked_per_dataset():
    seen, plain = '{"anomalies_seen": {"n_anomalies": 10}}', "{}"
    results = frame([
        {"method": "s", "dataset": "t", "normal_class": "0", "attack": "clean", "norm": "none", "eps": 0.0,
         "auroc": 0.9, "config": seen},
        {"method": "s", "dataset": "d", "normal_class": "0", "attack": "clean", "norm": "none", "eps": 0.0,
         "auroc": 0.8, "config": plain},
        {"method": "u", "dataset": "t", "normal_class": "0", "attack": "clean", "norm": "none", "eps": 0.0,
         "auroc": 0.7, "config": plain},
        {"method": "v", "dataset": "t", "normal_class": "0", "attack": "clean", "norm": "none", "eps": 0.0,
         "auroc": 0.7, "config": seen},
    ])
    table = leaderboard.wide(results)
    # s saw anomalies on t only (a per-dataset few-anomaly protocol); v ran on t only
    assert table.loc["s", "SA"] == "t" and table.loc["v", "SA"] == "t" and table.loc["u", "SA"] == ""
    assert leaderboard.sa_for("t", "t") == "yes" and leaderboard.sa_for("t", "d") == ""
    console = Console(record=True, width=200)
    leaderboard.render(table, console)
    text = console.export_text()
    digits_table = text[text.index("on d "):text.index("on t ")]
    assert "yes" not in digits_table and "yes" in text[text.index("on t "):]
    assert not leaderboard.wide(frame([{**results.iloc[2].to_dict()}])).columns.isin(["SA"]).any()


def test_a_documented_method_below_chance_gets_one_legend_line(monkeypatch):
    from robust_ad_bench.core.registry import METHODS

    monkeypatch.setattr(METHODS.get("knn"), "below_chance_note", "why it is low")
    results = frame([
        {"method": "knn", "dataset": "d", "normal_class": "0", "attack": "clean", "norm": "none", "eps": 0.0,
         "auroc": 0.4},
        {"method": "knn", "dataset": "t", "normal_class": "0", "attack": "clean", "norm": "none", "eps": 0.0,
         "auroc": 0.9},
        {"method": "ae", "dataset": "d", "normal_class": "0", "attack": "clean", "norm": "none", "eps": 0.0,
         "auroc": 0.3},  # below chance without a note: no line (the number speaks)
    ])
    table = leaderboard.wide(results)
    assert leaderboard.below_chance_notes(table) == ["knn below 0.5 clean on d: why it is low"]
    monkeypatch.setattr(METHODS.get("knn"), "below_chance_note", "")
    assert leaderboard.below_chance_notes(table) == []


def test_a_single_run_cell_shows_its_bootstrap_ci():
    rows = RESULTS.assign(auroc_ci_low=[0.85, 0.6, 0.3, 0.1, 0.71, np.nan],
                          auroc_ci_high=[0.95, 0.8, 0.5, 0.3, 0.88, np.nan])
    table = leaderboard.wide(rows)
    assert table.loc["b", "d clean"] == "0.800 [0.71, 0.88]"  # one run: its CI over the test images
    assert table.loc["a", "d clean"] == "0.800 ± 0.141"  # several: their spread, never one run's CI
    long = leaderboard.summarize(rows)
    assert long.loc[long["method"] == "b", "ci_low"].item() == pytest.approx(0.71)
