"""Every input a new user tried, through the command line: its exit status and its one-line message, no
traceback; a mistake is found before anything trains (no store is created), nothing is lost and nothing
is computed twice. ``python tests/test_inputs.py`` prints the table of all cases (command, exit, message).
"""

from __future__ import annotations

import contextlib
import io
import os
import sqlite3
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import miniature_data as mini
from robust_ad_bench.benchmark.cli import main
from robust_ad_bench.datasets import cache

FAST = ["--methods", "knn", "--datasets", "digits", "--no-checks"]


@dataclass
class Case:
    name: str
    argv: list[str]  # {root} is the test folder
    code: int
    message: str  # in stderr (stdout for a 0 exit that prints), whitespace-normalized
    env: dict[str, str] = field(default_factory=dict)
    no_store: bool = True  # the run's --out (if any) holds no store afterwards: nothing ran


CASES = [
    # the report's inputs
    Case("class of an unknown dataset", ["run", "--classes", "digit:3", "--methods", "knn"], 2,
         "unknown dataset in class 'digit:3' 'digit'; valid: breast-cancer"),
    Case("class of a dataset outside the grid", ["run", "--datasets", "digits", "--classes", "textures:brick",
                                                 "--methods", "knn"], 2,
         "class 'textures:brick' names dataset 'textures', which is not in the grid (datasets: digits)"),
    Case("empty --classes", ["run", "--classes", "", "--methods", "knn"], 2, "classes: no classes given in ''"),
    Case("unknown defect type", ["run", "--datasets", "mvtec", "--data-root", "{root}/data", "--classes", "bottle",
                                 "--methods", "knn", "--n-anomalies", "2", "--known-defects", "nosuch"], 2,
         "unknown known defect type of mvtec/bottle 'nosuch'; valid: crack, hole, scratch"),
    Case("more anomalies than the category has", ["run", "--datasets", "mvtec", "--data-root", "{root}/data",
                                                  "--classes", "bottle", "--methods", "bgad", "--n-anomalies", "100"],
         2, "n_anomalies 100 is more than the 15 test anomalies of mvtec/bottle (crack 5, hole 5, scratch 5)"),
    Case("crop larger than resize", ["run", "--datasets", "mvtec", "--data-root", "{root}/data", "--classes", "bottle",
                                     "--methods", "knn", "--set", "dataset_params.mvtec.crop=300"], 2,
         "dataset option crop 300 is larger than resize 256"),
    Case("conv method on 1-px images", ["run", "--datasets", "breast-cancer", "--methods", "ae"], 2,
         "method 'ae' on dataset 'breast-cancer': images of 1x30 px are smaller than the 8 px the method needs"),
    Case("dry run of a packaged MVTec config, no data", ["run", "--config", "bgad_mvtec", "--dry-run", "--data-root",
                                                         "{root}/empty"], 2, "dataset 'mvtec': data not found at"),
    Case("dry run of a packaged CIFAR config, no data", ["run", "--config", "cobra-cifar10", "--dry-run",
                                                         "--data-root", "{root}/empty"], 2,
         "dataset 'cifar10': data not found at"),
    Case("backbone weights missing", ["reproduce", "bgad", "--dry-run", "--data-root", "{root}/data", "--classes",
                                      "bottle"], 2, "no pretrained weights for backbone 'efficientnet_b6'",
         env={"ROBUST_AD_BENCH_WEIGHTS": "{root}/empty", "TORCH_HOME": "{root}/empty"}),
    Case("an anomaly without its mask", ["run", "--datasets", "mvtec", "--data-root", "{root}/nomask", "--classes",
                                         "bottle", "--methods", "knn"], 2,
         "anomaly image {root}/nomask/mvtec/bottle/test/crack/000.png has no mask"),
    Case("duplicate eps", ["run", *FAST, "--classes", "0", "--attacks", "clean,fgsm", "--eps", "8/255,8/255"], 0,
         "2 jobs: 2 computed", no_store=False),
    Case("YAML methods as a mapping", ["run", "--config", "{root}/methods_map.yaml"], 2,
         "methods must be a list of names (or 'all'), got {'knn': 1}; their parameters go in method_params"),
    Case("seed out of range", ["run", *FAST, "--seeds", "99999999999999999999"], 2,
         "seed 99999999999999999999 is out of range: seeds are integers from 0 to 9223372036854775807"),
    Case("folder class with a non-UTF-8 name", ["run", "--datasets", "folder", "--data-root", "{root}/folder",
                                                "--methods", "knn", "--attacks", "clean", "--no-checks"], 0,
         "note: skipped class 'bad\\udcff' of dataset 'folder': its folder name is not valid UTF-8", no_store=False),
    Case("empty YAML is the default grid", ["run", "--config", "{root}/empty.yaml", "--dry-run"], 0,
         "grid: 140 jobs, 140 to compute"),
    Case("~ in YAML out", ["run", "--config", "{root}/tilde.yaml"], 0, "1 jobs: 1 computed",
         env={"HOME": "{root}/home"}, no_store=False),
    Case("export to a .json file", ["export", "--out", "{root}/results", "--file", "{root}/rows.json"], 0,
         "rows to {root}/rows.json (json)"),
    Case("export to stdout", ["export", "--out", "{root}/results", "--file", "-"], 0, "method,dataset,normal_class"),
    Case("--version", ["--version"], 0, "robust-ad-bench 0.1.0"),
    Case("leaderboard on another tool's SQLite file", ["leaderboard", "--out", "{root}/foreign"], 2,
         "{root}/foreign/results.sqlite is not a results store of this tool (tables other; this tool reads schema 3); "
         "it was left as it is"),
    Case("dry run on another tool's SQLite file", ["run", *FAST, "--dry-run", "--out", "{root}/foreign"], 2,
         "is not a results store of this tool"),
    # ten more of our own
    Case("empty --attacks", ["run", "--methods", "knn", "--attacks", ""], 2, "attacks: no names given in ''"),
    Case("negative seed", ["run", *FAST, "--seeds", "-1"], 2, "seed -1 is out of range"),
    Case("fractional seed in YAML", ["run", "--config", "{root}/float_seed.yaml"], 2, "seeds must be integers"),
    Case("the same seed twice", ["run", *FAST, "--classes", "0", "--attacks", "clean", "--seeds", "0,0"], 0,
         "1 jobs: 1 computed", no_store=False),
    Case("one eps written two ways", ["run", *FAST, "--classes", "0", "--attacks", "fgsm", "--eps",
                                      "8/255,0.03137254901960784"], 0, "1 jobs: 1 computed", no_store=False),
    Case("the same class twice", ["run", *FAST, "--classes", "digits:0,0", "--attacks", "clean"], 0,
         "1 jobs: 1 computed", no_store=False),
    Case("YAML attacks with parameters", ["run", "--config", "{root}/attacks_map.yaml"], 2,
         "their parameters go in attack_params"),
    Case("every anomaly held out", ["run", "--datasets", "mvtec", "--data-root", "{root}/data", "--classes", "bottle",
                                    "--methods", "bgad", "--n-anomalies", "15"], 2,
         "n_anomalies 15 would take all 15 test anomalies of mvtec/bottle out of its test set; hold out at most 14"),
    Case("a mask of another size", ["run", "--datasets", "mvtec", "--data-root", "{root}/badmask", "--classes",
                                    "bottle", "--methods", "knn"], 2,
         "mask {root}/badmask/mvtec/bottle/ground_truth/crack/000_mask.png is 40x8 but its image"),
    Case("export format and file name disagree", ["export", "--out", "{root}/results", "--format", "json", "--file",
                                                  "{root}/rows.csv"], 2,
         "--format json but --file {root}/rows.csv names a .csv file"),
    Case("export to a name without a format", ["export", "--out", "{root}/results", "--file", "{root}/rows.txt"], 2,
         "cannot tell the export format from the file name"),
    Case("a typo of a packaged config", ["run", "--config", "bgad_mvtce", "--dry-run"], 2, "did you mean 'bgad_mvtec'"),
    Case("crop larger than the images", ["run", "--datasets", "mvtec", "--data-root", "{root}/data", "--classes",
                                         "bottle", "--methods", "knn", "--set", "dataset_params.mvtec.resize=0",
                                         "--set", "dataset_params.mvtec.crop=40"], 2, "crop 40 is larger than image"),
    Case("an unknown dataset in a classes mapping", ["run", "--config", "{root}/classes_map.yaml", "--dry-run"], 2,
         "unknown dataset in classes 'digts'"),
    Case("a class that no dataset of the grid has", ["run", "--datasets", "digits", "--classes", "brick",
                                                     "--methods", "knn"], 2,
         "unknown class of dataset 'digits' 'brick'"),
]

FILES = {
    "methods_map.yaml": "methods: {knn: 1}\n",
    "attacks_map.yaml": "methods: [knn]\nattacks: {pgd: {steps: 3}}\n",
    "empty.yaml": "",
    "float_seed.yaml": "seeds: [0.5]\n",
    "classes_map.yaml": "classes: {digts: ['0']}\n",
}


def build_world(root: Path) -> Path:
    """The data and files the cases read (a few MB, made in a few seconds)."""
    for folder in ("data", "nomask", "badmask"):
        mini.make_industrial(root / folder / "mvtec", "mvtec", ("bottle",), size=32, n_train=6, n_good=3, n_defect=5,
                             defects=("crack", "scratch", "hole"))
    (root / "nomask/mvtec/bottle/ground_truth/crack/000_mask.png").unlink()
    Image.fromarray(np.full((8, 40), 255, np.uint8)).save(root / "badmask/mvtec/bottle/ground_truth/crack/000_mask.png")
    rng = np.random.default_rng(0)
    for cls in (b"good", b"bad\xff"):  # the second is not valid UTF-8
        for sub, n in ((b"normal", 6), (b"anomalous", 3)):
            folder = Path(os.fsdecode(os.fsencode(root / "folder") + b"/" + cls + b"/" + sub))
            folder.mkdir(parents=True)
            for i in range(n):
                mini._save(mini._texture(rng, 16, 16, 1, 0.3 + 0.4 * (sub == b"anomalous")), folder / f"{i}.png")
    (root / "empty").mkdir()
    (root / "home").mkdir()
    for name, text in FILES.items():
        (root / name).write_text(text)
    (root / "tilde.yaml").write_text("methods: [knn]\ndatasets: [digits]\nattacks: [clean]\nchecks: false\n"
                                     "out: ~/tilde-results\n")
    (root / "foreign").mkdir()
    with sqlite3.connect(root / "foreign" / "results.sqlite") as conn:
        conn.execute("CREATE TABLE other (a INTEGER)")
    conn.close()
    with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
        assert main(["run", *FAST, "--classes", "0", "--attacks", "clean,fgsm", "--out", str(root / "results")]) == 0
    return root


def run_case(case: Case, root: Path) -> tuple[int, str, str]:
    """(exit status, stdout, stderr) of one case, in this process."""
    argv = [a.replace("{root}", str(root)) for a in case.argv]
    if argv[0] == "run" and "--out" not in argv and "--config" not in argv[:2] + argv[2:3]:
        argv += ["--out", str(root / "out" / case.name.replace(" ", "-"))]
    env = {k: v.replace("{root}", str(root)) for k, v in case.env.items()}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    out, err = io.StringIO(), io.StringIO()
    cache.clear()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(argv)
            except SystemExit as exc:  # argparse: --version, --help
                code = int(exc.code or 0)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    return build_world(tmp_path_factory.mktemp("inputs"))


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_input(world, case):
    code, out, err = run_case(case, world)
    text = " ".join((err + out).split())
    assert code == case.code, err
    assert case.message.replace("{root}", str(world)) in text
    assert "Traceback" not in err + out
    if code == 2:
        assert all(line.startswith("error: ") for line in err.strip().splitlines())  # one line per problem
    outs = [a for a in case.argv if a.startswith("{root}/out")] or [
        str(world / "out" / case.name.replace(" ", "-"))]
    if case.no_store and case.argv[0] == "run":
        assert not any(Path(o.replace("{root}", str(world)), "results.sqlite").exists() for o in outs)


def test_foreign_store_is_left_as_it_was(world):
    path = world / "foreign" / "results.sqlite"
    before = path.read_bytes()
    for case in CASES:
        if "foreign" in " ".join(case.argv):
            run_case(case, world)
    assert path.read_bytes() == before and sorted(p.name for p in path.parent.iterdir()) == ["results.sqlite"]


def test_the_valid_folder_class_ran(world):
    from robust_ad_bench.benchmark.results.store import Store

    case = next(c for c in CASES if c.name == "folder class with a non-UTF-8 name")
    run_case(case, world)
    with Store(world / "out" / case.name.replace(" ", "-")) as store:
        results = store.results()
    assert list(results["normal_class"]) == ["good"] and list(results["status"]) == ["ok"]


def test_exports(world):
    import json

    run_case(next(c for c in CASES if c.name == "export to a .json file"), world)
    rows = json.loads((world / "rows.json").read_text())
    assert len(rows) == 3 and {r["attack"] for r in rows} == {"clean", "fgsm"}  # fgsm at digits' two eps
    code, out, _ = run_case(next(c for c in CASES if c.name == "export to stdout"), world)
    assert code == 0 and out.splitlines()[0].startswith("method,dataset") and not (world / "-").exists()


def test_tilde_is_the_home_folder(world, monkeypatch):
    monkeypatch.chdir(world)
    run_case(next(c for c in CASES if c.name == "~ in YAML out"), world)
    assert (world / "home" / "tilde-results" / "results.sqlite").is_file() and not (world / "~").exists()


def test_messages_are_not_wrapped_in_a_pipe(world):
    """A long path stays on one line: stderr is not a terminal here, as in a pipe."""
    case = next(c for c in CASES if c.name == "an anomaly without its mask")
    _, _, err = run_case(case, world)
    assert len(err.strip().splitlines()) == 1 and str(world / "nomask") in err


def table(root: Path) -> str:
    lines = ["| input | command | exit | message |", "|---|---|---|---|"]
    for case in CASES:
        code, out, err = run_case(case, root)
        message = (err.strip() or out.strip()).splitlines()
        shown = [m for m in message if m.startswith(("error", "note"))] or message[-1:]
        command = " ".join(["robust-ad-bench", *case.argv]).replace("{root}/", "")
        lines.append(f"| {case.name} | `{command}` | {code} | {' / '.join(shown).replace(str(root) + '/', '')} |")
    return "\n".join(lines)


if __name__ == "__main__":
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        print(table(build_world(Path(folder))), file=sys.stdout)
