"""Plots: every expected PNG is written from a synthetic store, and eps labels read as intended."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from robust_ad_bench.benchmark.results.plots import eps_label, make_plots, safe_name
from robust_ad_bench.benchmark.results.store import CertifiedRow, JobResult, Store

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
METHODS = ["deep-svdd", "ae/robust"]  # the slash checks file-name sanitizing
DATASETS = ["digits", "toy"]
ATTACKS = [("clean", "none", 0.0), ("pgd", "linf", 2 / 255), ("pgd", "linf", 8 / 255), ("pgd-l2", "l2", 0.5)]


def _fill(store: Store, rng: np.random.Generator, with_scores: bool = True) -> None:
    for method in METHODS:
        for dataset in DATASETS:
            for normal_class in ("0", "1"):
                for seed in (0, 1):
                    for attack, norm, eps in ATTACKS:
                        labels = (rng.random(200) < 0.4).astype(np.uint8)
                        shift = 2.0 - 150 * eps if norm == "linf" else 2.0 - eps
                        scores = (rng.normal(size=200) + shift * labels).astype(np.float32)
                        key = f"{method}|{dataset}|{normal_class}|{seed}|{attack}|{eps}"
                        store.put(JobResult(
                            key=key, train_key=f"{method}|{dataset}|{normal_class}|{seed}", status="ok",
                            method=method, dataset=dataset, normal_class=normal_class, seed=seed,
                            attack=attack, norm=norm, eps=eps, config={"eps": eps},
                            metrics={"auroc": float(rng.uniform(0.3, 0.95))}, n_test=200,
                            labels=labels if with_scores else None, scores=scores if with_scores else None,
                        ))
    store.put_certified([CertifiedRow(f"c-{m}-{c}", f"{m}|digits|{c}|0", m, "digits", c, 0, 0.25, r, 0.0,
                                      max(0.0, 0.9 - r), 0.5, 0.1)
                         for m in METHODS for c in ("0", "1") for r in (0.0, 0.25, 0.5)])
    store.put(JobResult(key="failed", train_key="t", status="failed", method=METHODS[0], dataset=DATASETS[0],
                        normal_class="0", seed=0, attack="pgd", norm="linf", eps=16 / 255, config={},
                        error="boom"))


def _assert_png(path: Path) -> None:
    assert path.is_file(), path
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE, path
    assert len(data) > 5_000, (path, len(data))


def test_make_plots_writes_every_png(tmp_path: Path) -> None:
    (tmp_path / "results").mkdir()
    with Store(tmp_path / "results") as store:
        _fill(store, np.random.default_rng(0))
        paths = make_plots(store, tmp_path / "plots")
    expected = {f"auroc_vs_eps_{d}.png" for d in DATASETS} | {f"robustness_{d}.png" for d in DATASETS}
    expected.add("certified_digits.png")
    expected |= {f"scores_{d}_{safe_name(m)}.png" for d in DATASETS for m in METHODS}
    assert {p.name for p in paths} == expected
    assert "scores_toy_ae_robust.png" in expected
    for path in paths:
        assert path.parent == tmp_path / "plots"
        _assert_png(path)


def test_make_plots_filters_and_skips_missing_scores(tmp_path: Path) -> None:
    (tmp_path / "results").mkdir()
    with Store(tmp_path / "results") as store:
        _fill(store, np.random.default_rng(1), with_scores=False)
        paths = make_plots(store, tmp_path / "plots", methods=[METHODS[0]], datasets=["toy"])
    assert [p.name for p in paths] == ["auroc_vs_eps_toy.png", "robustness_toy.png"]  # no scores: no histograms
    _assert_png(paths[0])


def test_make_plots_empty_store(tmp_path: Path) -> None:
    (tmp_path / "results").mkdir()
    with Store(tmp_path / "results") as store:
        assert make_plots(store, tmp_path / "plots") == []
    assert (tmp_path / "plots").is_dir()


@pytest.mark.parametrize(("eps", "norm", "label"), [
    (8 / 255, "linf", "8/255"),
    (1 / 255, "linf", "1/255"),
    (0.0, "linf", "0"),
    (0.0, "none", "0"),
    (0.5, "l2", "0.5"),
    (8 / 255, "l2", f"{8 / 255:g}"),
    (0.01, "linf", "0.01"),
    (1.0, "linf", "255/255"),
])
def test_eps_label(eps: float, norm: str, label: str) -> None:
    assert eps_label(eps, norm) == label


def test_safe_name() -> None:
    assert safe_name("ae/robust v2:x") == "ae_robust_v2_x"
    assert safe_name("ok-name_1.0") == "ok-name_1.0"
