"""Transfer matrix, black-box folding into the worst case, the transfer flag, galleries, the robustness area
and plot styles, on a tiny digits grid."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from conftest import tiny_grid
from robust_ad_bench.benchmark.execution.runner import Runner
from robust_ad_bench.benchmark.execution.transfer import MARK, SplitTransfer, TransferSummary, transfer_key
from robust_ad_bench.benchmark.protocol.masking import objective
from robust_ad_bench.benchmark.results import gallery
from robust_ad_bench.benchmark.results.method_styles import method_styles
from robust_ad_bench.benchmark.results.robustness_area import normalized_area, robustness_areas, sort_table, with_areas
from robust_ad_bench.benchmark.results.store import Store
from robust_ad_bench.core.errors import BenchError
from robust_ad_bench.core.registry import METHODS as METHOD_REGISTRY

METHODS = ["knn", "ae", "deep-svdd"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("transfer")
    cfg = tiny_grid(out, methods=",".join(METHODS), attacks="clean,fgsm,pgd", classes="0")
    cfg.checks.square_queries = 20
    summary = Runner(cfg).run()
    return out, summary, cfg


def test_every_source_target_pair_is_scored_and_the_diagonal_is_white_box(run):
    out, summary, _ = run
    with Store(out) as store:
        frame, results = store.transfer(), store.results(status="ok")
    assert summary.transfer is not None and summary.transfer.targets == len(METHODS)
    assert set(zip(frame["source"], frame["target"])) == {(s, t) for s in METHODS for t in METHODS}
    # the diagonal: the method's own attacks at that eps, per image the worst by its own scores
    for method in METHODS:
        own = results[(results["method"] == method) & results["attack"].isin(["fgsm", "pgd"])]
        diag = frame[(frame["source"] == method) & (frame["target"] == method)]["auroc"].iloc[0]
        assert diag <= own["auroc"].min() + 1e-12


def test_transfer_recomputes_the_same_figures_from_the_stored_images(run):
    """The off-diagonal AUROC comes from the images on disk: scoring them again by hand gives it."""
    out, _, cfg = run
    from robust_ad_bench.benchmark.execution.model_cache import ModelCache
    from robust_ad_bench.benchmark.protocol import metrics
    from robust_ad_bench.benchmark.protocol.worst_case import AdversarialImages, choose
    from robust_ad_bench.datasets.protocols import make_split

    jobs = Runner(cfg).jobs
    split = make_split(jobs[0].model.split)
    labels = split.test_labels.numpy()
    source = [j for j in jobs if j.method == "ae" and j.norm == "linf"]
    target = next(j for j in jobs if j.method == "knn")
    with Store(out) as store:
        own = np.stack([store.scores(j.key)[1] for j in source])
        row = store.transfer()
    detector, _ = ModelCache(out / "models", "cpu").get(target.model, split)
    images = [AdversarialImages(out / "adversarial").load(j.key, split.test) for j in source]
    assert all(x is not None for x in images)  # a deterministic method's images are kept too
    pick = choose(labels, own)
    scored = np.stack([detector.score(x).detach().numpy() for x in images])[pick, np.arange(len(labels))]
    expected = metrics.auroc(labels, scored)
    got = row[(row["source"] == "ae") & (row["target"] == "knn")]["auroc"].iloc[0]
    assert got == pytest.approx(expected, abs=1e-6)


def test_worst_cases_carry_the_transfers_and_never_rise(run):
    out, _, _ = run
    with Store(out) as store:
        worst = store.results(status="ok")
    worst = worst[worst["attack"].str.startswith("worst-")]
    assert len(worst) == len(METHODS) and all(MARK in d for d in worst["attack_detail"])


def test_a_transfer_that_beats_the_white_box_attacks_raises_the_flag(run, tmp_path):
    """A double: the target's stored worst case made weak (its normal scores set low), so the transferred
    images beat it; the flag must be raised, the worst case lowered and the check row failed."""
    out, _, cfg = run
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    jobs = [j for j in Runner(cfg).jobs]
    target = next(j for j in jobs if j.method == "ae")
    with Store(copy) as store:
        rows = store.results(status="ok")
        row = rows[(rows["train_key"] == target.train_key) & rows["attack"].str.startswith("worst-")].iloc[0]
        labels, scores = store.scores(row["key"])
        clean = rows[(rows["train_key"] == target.train_key) & (rows["attack"] == "clean")].iloc[0]
        # weak: the clean scores (the worst case as if no attack had run), and no transfer mark
        weak = store.scores(clean["key"])[1]
        store.conn.execute("UPDATE scores SET scores = ? WHERE key = ?", (weak.astype(np.float32).tobytes(),
                                                                          row["key"]))
        store.conn.execute("UPDATE results SET attack_detail = 'weak' WHERE key = ?", (row["key"],))
        store.conn.execute("DELETE FROM transfer")
        store.conn.commit()
        summary = TransferSummary()
        SplitTransfer(jobs, store, copy, "cpu").run(summary)
        after = store.results(status="ok")
        checks = store.checks()
    assert any(f.startswith("ae ") for f in summary.flagged), summary.flagged
    new = after[after["key"] == row["key"]].iloc[0]
    assert MARK in new["attack_detail"] and "transferred images won" in new["attack_detail"]
    failed = checks[(checks["name"] == "transfer") & (checks["train_key"] == target.train_key)]
    assert not failed.empty and not failed["passed"].any()
    # the other targets were not touched by the double: their checks still pass
    others = checks[(checks["name"] == "transfer") & (checks["train_key"] != target.train_key)]
    assert others["passed"].all()


def test_transfer_key_follows_the_sources():
    assert transfer_key("t", ["a", "b"]) == transfer_key("t", ["b", "a"])
    assert transfer_key("t", ["a", "b"]) != transfer_key("t", ["a", "c"])


def test_galleries_pick_by_rule_and_plot(run, tmp_path):
    out, _, _ = run
    entries = gallery.load_all(out / gallery.GALLERY_FOLDER)
    assert sorted(e["meta"]["method"] for e in entries) == sorted(METHODS)
    for entry in entries:
        assert entry["clean"].shape == entry["adversarial"].shape and len(entry["index"]) == 3
        assert list(entry["labels"][:2]) == [0, 1]  # the normal raised most, then the anomaly lowered most
        assert ("maps_clean" in entry) == METHOD_REGISTRY.get(entry["meta"]["method"]).has_anomaly_map()
        # the attacked image differs from the clean one and stays in the eps-ball
        delta = np.abs(entry["adversarial"] - entry["clean"]).max()
        assert 0 < delta <= entry["meta"]["eps"] + 1e-6
    paths = gallery.plot_galleries(out / gallery.GALLERY_FOLDER, tmp_path)
    assert len(paths) == len(METHODS) and all(p.read_bytes()[:4] == b"\x89PNG" for p in paths)


def test_pick_images_rule():
    labels = np.array([0, 0, 0, 1, 1, 1])
    clean = np.zeros(6)
    worst = np.array([0.1, 0.9, 0.3, -0.2, -1.0, -0.5])
    assert gallery.pick_images(labels, clean, worst)[:2] == [1, 4]
    assert gallery.pick_images(labels, clean, worst)[2] not in (1, 4)
    assert np.all(objective(labels, worst) >= objective(labels, clean))


def test_f1_threshold_separates_separable_scores():
    labels = np.array([0, 0, 0, 1, 1])
    scores = np.array([0.1, 0.2, 0.3, 0.8, 0.9])
    assert gallery.f1_threshold(labels, scores) == pytest.approx(0.8)


def test_normalized_area_is_anchored_at_clean():
    assert normalized_area(np.array([1.0]), np.array([0.5]), 1.0) == pytest.approx(0.75)
    assert normalized_area(np.array([2.0, 1.0]), np.array([0.0, 1.0]), 1.0) == pytest.approx(0.75)
    assert normalized_area(np.array([0.5, 1.0]), np.array([0.9, 0.9]), 0.9) == pytest.approx(0.9)


def test_robustness_areas_and_sort(run):
    out, _, _ = run
    with Store(out) as store:
        results = store.results()
    areas = robustness_areas(results)
    assert sorted(areas["method"]) == sorted(METHODS)
    assert ((areas["area"] >= 0) & (areas["area"] <= 1)).all()
    from robust_ad_bench.benchmark.results import leaderboard

    table = with_areas(leaderboard.wide(results), results)
    column = next(c for c in table.columns if " area-linf" in c)
    assert list(table.columns).index(column) == list(table.columns).index("digits clean") + 1
    ranked = sort_table(table, "robustness")
    values = [float(v.split()[0]) for v in ranked[column]]
    assert values == sorted(values, reverse=True)
    with pytest.raises(BenchError, match="valid: method, robustness, clean"):
        sort_table(table, "speed")


def test_fourteen_methods_get_fourteen_distinct_styles():
    names = [f"m{i}" for i in range(14)]
    styles = method_styles(names)
    assert len(set(styles.values())) == 14
    assert len({c for c, _ in styles.values()}) == 14 and len({m for _, m in styles.values()}) >= 7
    assert len(set(method_styles([f"m{i}" for i in range(140)]).values())) == 140


def test_robustness_plot_uses_the_styles(tmp_path):
    """14 methods on one robustness plot: each line gets its own (colour, marker)."""
    import matplotlib.pyplot as plt

    from robust_ad_bench.benchmark.results import plots

    rows = []
    for i in range(14):
        for attack, eps, auroc in (("clean", 0.0, 0.9), ("worst-linf", 0.1, 0.5 - i / 100)):
            rows.append(dict(method=f"m{i:02d}", dataset="d", normal_class="0", seed=0, attack=attack,
                             norm="none" if attack == "clean" else "linf", eps=eps, auroc=auroc, status="ok",
                             train_key=f"t{i}", key=f"k{i}{attack}", config="{}", attack_detail="",
                             adversarially_trained=False))
    captured = []
    original = plt.Axes.plot

    def spy(self, *args, **kwargs):
        captured.append((tuple(kwargs.get("color")), kwargs.get("marker")))
        return original(self, *args, **kwargs)

    plt.Axes.plot = spy
    try:
        plots.plot_robustness_curves(pd.DataFrame(rows), tmp_path)
    finally:
        plt.Axes.plot = original
    assert len(captured) == 14 and len(set(captured)) == 14


def test_a_schema_2_store_gets_the_aupro_column_and_the_transfer_table(tmp_path):
    import sqlite3

    Store(tmp_path).close()
    conn = sqlite3.connect(tmp_path / "results.sqlite")
    conn.execute("ALTER TABLE results DROP COLUMN aupro")
    conn.execute("DROP TABLE transfer")
    conn.execute("PRAGMA user_version = 2")
    conn.commit()
    conn.close()
    with Store(tmp_path) as store:
        columns = {r[1] for r in store.conn.execute("PRAGMA table_info(results)")}
        assert "aupro" in columns and store.transfer().empty
        assert store.conn.execute("PRAGMA user_version").fetchone()[0] == 3
