"""Dataset options in the grid: YAML ``dataset_params`` / ``--set`` / ``--data-root``, their place in the job key
(transforms in it only when set, the data root never), and the few-anomaly protocol on real defect folders."""

from __future__ import annotations

import pytest

import miniature_data as mini
from conftest import tiny_grid
from robust_ad_bench.benchmark.cli import main
from robust_ad_bench.benchmark.grid.config import apply_sets, expand_grid, make_grid_config
from robust_ad_bench.benchmark.grid.jobs import StoredConfig
from robust_ad_bench.core.errors import BenchError
from robust_ad_bench.datasets import cache
from robust_ad_bench.datasets.protocols import make_split


@pytest.fixture(autouse=True)
def _fresh():
    cache.clear()
    make_split.cache_clear()
    yield
    cache.clear()
    make_split.cache_clear()


def grid(tmp_path, **overrides):
    options = dict(methods="knn", datasets="mvtec", attacks="clean", classes="bottle", out=str(tmp_path / "res"),
                   device="cpu")
    return make_grid_config(**{**options, **overrides})


def test_transforms_enter_the_key_only_when_set_and_the_root_never(tmp_path):
    plain = expand_grid(grid(tmp_path))
    assert "dataset_params" not in plain[0].config
    moved = expand_grid(grid(tmp_path, data_root=str(tmp_path / "elsewhere"),
                             dataset_params={"mvtec": {"root": str(tmp_path / "x"), "resize": 256}}))
    assert [j.key for j in moved] == [j.key for j in plain]  # same data, moved: same keys
    resized = expand_grid(grid(tmp_path, dataset_params={"mvtec": {"resize": 224, "crop": 200}}))
    assert resized[0].config["dataset_params"] == {"resize": 224, "crop": 200}
    assert resized[0].key != plain[0].key and resized[0].train_key != plain[0].train_key
    digits = expand_grid(tiny_grid(tmp_path))
    assert all("dataset_params" not in j.config for j in digits)


def test_bad_dataset_options_are_named(tmp_path):
    with pytest.raises(BenchError, match="unknown dataset 'mvtech'.*did you mean 'mvtec'"):
        expand_grid(grid(tmp_path, dataset_params={"mvtech": {"resize": 64}}))
    with pytest.raises(BenchError, match="unknown parameter of dataset 'mvtec' 'rezise'"):
        expand_grid(grid(tmp_path, dataset_params={"mvtec": {"rezise": 64}}))
    with pytest.raises(BenchError, match="dataset_params.mvtec must be a mapping"):
        grid(tmp_path, dataset_params={"mvtec": 64})


def test_set_option_paths():
    data = apply_sets({"method_params": {"ae": {"epochs": 3}}},
                      ["method_params.ae.width=8", "dataset_params.mvtec.resize=224", "eps={linf: [2/255]}",
                       "method_params.bgad={backbone: pretext}"])
    assert data == {"method_params": {"ae": {"epochs": 3, "width": 8}, "bgad": {"backbone": "pretext"}},
                    "dataset_params": {"mvtec": {"resize": 224}}, "eps": {"linf": ["2/255"]}}
    with pytest.raises(BenchError, match="--set takes KEY.PATH=VALUE"):
        apply_sets({}, ["method_params.ae.epochs"])
    with pytest.raises(BenchError, match="unknown option in --set 'metod_params'"):
        apply_sets({}, ["metod_params.ae.epochs=3"])


def test_known_defects_from_defect_folders_and_defects_report(tmp_path, capsys):
    mini.make_industrial(tmp_path / "data" / "mvtec", "mvtec", ("bottle",), size=20, n_train=6, n_good=4,
                         n_defect=3)
    out = str(tmp_path / "res")
    args = ["--datasets", "mvtec", "--classes", "bottle", "--methods", "knn,bgad", "--attacks", "clean",
            "--data-root", str(tmp_path / "data"), "--set", "dataset_params.mvtec.resize=16", "--set",
            "method_params.bgad={pretext_epochs: 1, epochs: 1, coupling_blocks: 2, pos_dim: 8, pasted_repeats: 1}",
            "--n-anomalies", "2", "--known-defects", "crack", "--no-checks", "--device", "cpu", "--out", out]
    assert main(["run", *args]) == 0, capsys.readouterr().err
    code = main(["defects", "--out", out, "--data-root", str(tmp_path / "data")])
    text = capsys.readouterr().out
    assert code == 0 and "seen" in text and "unseen" in text and "scratch" in text
    from robust_ad_bench.benchmark.results.store import Store

    with Store(out) as store:
        config = store.results()["config"].iloc[0]
    spec = StoredConfig.parse(config).split(str(tmp_path / "data"))
    assert spec.dataset_params == (("resize", 16),) and spec.known_defects == ("crack",)
    split = make_split(spec)
    assert split.known_defects == ["crack"] and len(split.anomalies) == 2
    assert sorted(d for d in split.test_defects if d) == ["crack"] + ["scratch"] * 3


def test_embedded_test_set_sizes_through_the_grid(tmp_path):
    """``dataset_params`` shrink the embedded test sets; the sizes enter the key only when set."""
    options = dict(methods="knn", datasets="digits,textures", attacks="clean", classes={"digits": ["0"],
                   "textures": ["brick"]}, out=str(tmp_path / "res"), device="cpu")
    plain = {j.dataset: j for j in expand_grid(make_grid_config(**options, dataset_params={}))}  # the full sets
    small = {j.dataset: j for j in expand_grid(make_grid_config(**options, dataset_params={
        "digits": {"anomalies_per_digit": 6}, "textures": {"n_test_normal": 30, "n_test_anomalous": 30}}))}
    assert "dataset_params" not in plain["digits"].config
    assert small["digits"].config["dataset_params"] == {"anomalies_per_digit": 6}
    assert small["textures"].key != plain["textures"].key
    assert len(make_split(small["digits"].model.split).test) == 59 + 9 * 6  # digit 0: 178 images, a third tested
    # 30 normals + 30 anomalies, 10 of which the default grid holds out for the few-anomaly protocol
    assert len(make_split(small["textures"].model.split).test) == 50
    with pytest.raises(BenchError, match="anomalies_per_digit"):
        expand_grid(make_grid_config(**options, dataset_params={"digits": {"anomalies_per_digit": 0}}))
