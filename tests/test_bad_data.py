"""Bad data gets a clear error and loses nothing: a missing root, an anomaly without its mask, a corrupt or
truncated image (that split's jobs fail, the grid goes on), an empty category, a wrong layout."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import miniature_data as mini
from robust_ad_bench.benchmark.cli import main
from robust_ad_bench.core.errors import BenchError
from robust_ad_bench.core.registry import DATASETS

pytestmark = pytest.mark.usefixtures("fresh_data")


def mvtec(data_dir: Path, **params):
    return DATASETS.get("mvtec").create({"resize": 16, **params}, str(data_dir))


@pytest.fixture
def tree(tmp_path) -> Path:
    mini.make_industrial(tmp_path / "mvtec", "mvtec", ("bottle", "cable"), size=20, n_train=4, n_good=2, n_defect=1)
    return tmp_path


def one_line(text: str) -> str:
    return " ".join(text.split())


def test_missing_root_names_layout_and_where_it_looked(tmp_path):
    with pytest.raises(BenchError) as info:
        mvtec(tmp_path / "nowhere").split("bottle", 0)
    message = str(info.value)
    assert "\n" not in message and str(tmp_path / "nowhere" / "mvtec") in message
    assert "mvtec_anomaly_detection" in message and "<root>/<category>/train/good/*.png" in message
    assert "ground_truth/<defect>/<name>_mask.png" in message
    with pytest.raises(BenchError, match="no data root given; pass --data-root"):
        DATASETS.get("cifar10").create().split("0", 0)
    with pytest.raises(BenchError, match=r"data not found at .*cifar-10-batches-py/data_batch_1"):
        DATASETS.get("cifar10").create(None, str(tmp_path)).check_data("0")


def test_run_without_data_stops_before_anything_runs(tmp_path, capsys):
    code = main(["run", "--datasets", "mvtec", "--classes", "bottle", "--methods", "knn", "--attacks", "clean",
                 "--data-root", str(tmp_path), "--out", str(tmp_path / "res")])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert "expected layout" in one_line(err) and str(tmp_path / "mvtec") in "".join(err.split())
    assert not (tmp_path / "res" / "results.sqlite").exists()


def test_anomaly_without_mask_names_the_file(tree):
    (tree / "mvtec/bottle/ground_truth/crack/000_mask.png").unlink()
    with pytest.raises(BenchError, match=r"anomaly image .*bottle/test/crack/000.png has no mask"):
        mvtec(tree).split("bottle", 0)


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_corrupt_image_names_the_file(tree, damage):
    path = tree / "mvtec/bottle/test/scratch/000.png"
    path.write_bytes(b"not a png at all" if damage == "garbage" else path.read_bytes()[:60])
    with pytest.raises(BenchError, match=f"cannot decode image {path}"):
        mvtec(tree).split("bottle", 0)


def test_corrupt_image_fails_only_its_split(tree, capsys):
    bad = tree / "mvtec/bottle/train/good/001.png"
    bad.write_bytes(bad.read_bytes()[:80])
    out = tree / "res"
    code = main(["run", "--datasets", "mvtec", "--classes", "bottle,cable", "--methods", "knn,ae", "--attacks",
                 "clean", "--data-root", str(tree), "--set", "dataset_params.mvtec.resize=16", "--set",
                 "method_params.ae.epochs=1", "--no-checks", "--device", "cpu", "--out", str(out)])
    captured = capsys.readouterr()
    assert code == 1
    from robust_ad_bench.benchmark.results.store import Store

    with Store(out) as store:
        results = store.results()
    status = dict(zip(results["normal_class"] + "/" + results["method"], results["status"]))
    assert status == {"bottle/knn": "failed", "bottle/ae": "failed", "cable/knn": "ok", "cable/ae": "ok"}
    errors = results.loc[results["status"] == "failed", "error"]
    assert all(f"cannot decode image {bad}" in e for e in errors)
    assert "2 job(s) failed" in captured.err and str(bad) in "".join(captured.err.split())  # rich wraps paths


def test_empty_category(tree):
    for path in (tree / "mvtec/bottle/train/good").iterdir():
        path.unlink()
    with pytest.raises(BenchError, match=r"no training images in .*bottle/train/good \(empty category\)"):
        mvtec(tree).check_data("bottle")


def test_wrong_layout(tree):
    (tree / "mvtec/cable/train").rename(tree / "mvtec/cable/training")
    with pytest.raises(BenchError, match=r"cable has no train/ and test/ folders; expected layout"):
        mvtec(tree).split("cable", 0)
    for path in (tree / "mvtec/bottle/test").iterdir():
        if path.name != "good":
            for f in path.iterdir():
                f.unlink()
    with pytest.raises(BenchError, match="no anomalous test images"):
        mvtec(tree).split("bottle", 0)


def test_images_of_different_sizes_need_resize(tmp_path):
    rng = np.random.default_rng(0)
    for i, size in enumerate((16, 16, 16, 20)):
        mini._save(rng.integers(0, 255, (size, size), dtype=np.uint8), tmp_path / "d" / "normal" / f"{i}.png")
    mini._save(rng.integers(0, 255, (16, 16), dtype=np.uint8), tmp_path / "d" / "anomalous" / "a.png")
    folder = DATASETS.get("folder")
    with pytest.raises(BenchError, match=r"image .*normal/3.png is 20x20 .* set the dataset's 'resize' option"):
        folder.create({"root": str(tmp_path / "d")}).split("default", 0)
    assert folder.create({"root": str(tmp_path / "d"), "resize": 16}).split("default", 0).test.shape[-1] == 16
