"""One configuration per leaderboard cell: rows that differ in an attack or method parameter are never
averaged, the latest configuration is shown, older ones are noted and listed on request, and fall-backs are
marked in the cell, the audit and the plots."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
from rich.console import Console

from conftest import tiny_grid
from robust_ad_bench.benchmark.execution.runner import Runner
from robust_ad_bench.benchmark.results import leaderboard
from robust_ad_bench.benchmark.results.audit import audit_tables
from robust_ad_bench.benchmark.results.cells import configuration, difference, latest, worst_per_model
from robust_ad_bench.benchmark.results.store import Store


def row(cls, auroc, steps, order, attack="pgd", **extra):
    config = {"method": "a", "normal_class": cls, "seed": 0, "attack": attack, "attack_params": {"steps": steps}}
    return {"method": "a", "dataset": "d", "normal_class": cls, "seed": 0, "attack": attack, "norm": "linf",
            "eps": 8 / 255, "auroc": auroc, "status": "ok", "config": json.dumps(config), "attack_detail": "",
            "adversarially_trained": False, "train_key": f"a-{cls}", "row_order": order, **extra}


def test_two_configurations_are_never_averaged():
    results = pd.DataFrame([row("0", 0.6, 10, 1), row("1", 0.62, 10, 2), row("0", 0.2, 100, 3), row("1", 0.24, 100, 4)])
    assert configuration(results["config"][0]) == configuration(results["config"][1])  # class and seed only
    assert configuration(results["config"][0]) != configuration(results["config"][2])
    cell = leaderboard.wide(results).loc["a", "d pgd 8/255"]
    assert cell == "0.220 ± 0.028 [+1 older]"  # PGD-100's two classes, not 0.400 ± 0.283 over four rows
    listed = leaderboard.wide(results, configurations=True)
    older = "d pgd 8/255 [older: attack_params.steps=10]"
    assert list(listed.columns[1:3]) == ["d pgd 8/255", older] and listed.loc["a", older] == "0.610 ± 0.014"
    # the latest configuration is the one written last, whatever its parameters
    flipped = results.assign(row_order=[3, 4, 1, 2])
    assert leaderboard.wide(flipped).loc["a", "d pgd 8/255"].startswith("0.610 ± 0.014")
    assert difference(results["config"][0], results["config"][2]) == "attack_params.steps=10"
    shown, rest = latest(results)
    assert len(shown) == 2 and len(rest) == 2


def test_failed_rows_and_fallbacks_are_marked():
    worst = row("0", 0.3, 10, 5, attack="worst-linf",
                attack_detail="per-image worst of 3 candidates,fallback: pgd alone is lower (0.300 < 0.310)")
    results = pd.DataFrame([row("0", 0.3, 10, 1), row("1", np.nan, 10, 2, status="failed"),
                            row("0", 0.5, 10, 3, attack="fgsm"), row("1", 0.6, 10, 4, attack="fgsm"), worst])
    table = leaderboard.wide(results)
    assert table.loc["a", "d pgd 8/255"].endswith("[1 failed]")
    assert table.loc["a", "d worst-linf 8/255"].endswith("[1 fallback]")
    console = Console(record=True, width=250)
    leaderboard.render(table, console)
    text = console.export_text()
    assert "[1 failed]" in text and "never averaged" in text
    curve = worst_per_model(results).set_index("train_key")
    assert curve.loc["a-1", "attack"] == "fgsm" and curve.loc["a-1", "fallback"] == "only fgsm succeeded (pgd failed)"
    assert curve.loc["a-0", "fallback"] == "pgd alone is lower (0.300 < 0.310)"


def test_a_grid_run_twice_with_different_pgd_steps_shows_one_configuration(tmp_path, capsys):
    for steps in (10, 3):
        cfg = tiny_grid(tmp_path, methods="knn", attacks="clean,fgsm,pgd", classes="0,1", eps="8/255")
        cfg.attack_params = {"pgd": {"steps": steps}}
        cfg.checks.enabled = False
        assert not Runner(cfg).run().failed
    with Store(tmp_path) as store:
        results = store.results()
    pgd = results[results["attack"] == "pgd"]
    assert len(pgd) == 4  # two classes × two configurations stored
    newest = pgd[pgd["config"].str.contains('"steps": 3')]["auroc"]
    table = leaderboard.wide(results, configurations=True)
    print(leaderboard.to_markdown(table))
    cell = table.loc["knn", "digits pgd 8/255"]
    assert cell.startswith(f"{newest.mean():.3f} ± {newest.std():.3f}") and cell.endswith("[+1 older]")
    older = [c for c in table.columns if c.startswith("digits pgd 8/255 [older:")]
    assert older == ["digits pgd 8/255 [older: attack_params.steps=10]"]
    # the worst case over fgsm and PGD-3 is a configuration of its own too: PGD-10's worst case is older
    assert table.loc["knn", "digits worst-linf 8/255"].endswith("[+1 older]")
    assert "[+1 older]" not in table.loc["knn", "digits fgsm 8/255"]
    audit = " ".join(str(c) for t in audit_tables(results, pd.DataFrame(columns=["train_key", "name", "attack",
                                                                               "passed", "detail"]))
                     for col in t.columns for c in col._cells)
    assert "fallback" not in audit
