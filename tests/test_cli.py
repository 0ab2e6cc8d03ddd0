"""The command line, end to end, and its errors on bad input (one line, exit status 2, no traceback)."""

import csv
from pathlib import Path

import pytest

from robust_ad_bench.benchmark.cli import EXPORT_COLUMNS, main

PLUGIN = str(Path(__file__).parent / "plugins" / "failing_methods.py")
FAST = ["--datasets", "digits", "--classes", "0,1", "--attacks", "clean,fgsm,pgd", "--eps", "8/255,32/255",
        "--device", "cpu"]


def run_cli(capsys, *args):
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_end_to_end_run_leaderboard_export_plot(tmp_path, capsys):
    out = str(tmp_path / "res")
    code, stdout, stderr = run_cli(capsys, "run", "--methods", "knn,deep-svdd", *FAST, "--out", out)
    assert code == 0, stderr
    assert "20 jobs: 20 computed" in stderr.replace("\n", " ")
    assert "Image AUROC on digits" in stdout and "pgd 32/255" in stdout and "knn" in stdout
    code, _, stderr = run_cli(capsys, "run", "--methods", "knn,deep-svdd", *FAST, "--out", out)
    assert code == 0 and "0 computed, 20 already in the store" in stderr.replace("\n", " ")

    code, stdout, _ = run_cli(capsys, "leaderboard", "--out", out)
    assert code == 0 and "deep-svdd" in stdout
    for ext in ("csv", "md", "tex"):
        assert (Path(out) / f"leaderboard.{ext}").stat().st_size > 0
    assert "$\\pm$" in (Path(out) / "leaderboard.tex").read_text()
    code, stdout, _ = run_cli(capsys, "leaderboard", "--out", out, "--metric", "fpr95")
    assert code == 0 and "FPR at 95% TPR on digits" in stdout
    assert (Path(out) / "leaderboard_fpr95.md").is_file()

    code, _, _ = run_cli(capsys, "export", "--out", out, "--format", "csv")
    assert code == 0
    rows = list(csv.DictReader((Path(out) / "export.csv").read_text().splitlines()))
    assert len(rows) == 20 + 8  # the jobs, and the per-image worst case of each model at each eps
    assert list(rows[0])[: len(EXPORT_COLUMNS)] == EXPORT_COLUMNS
    assert {r["status"] for r in rows} == {"ok"}
    assert {r["attack"] for r in rows} == {"clean", "fgsm", "pgd", "worst-linf"}

    code, _, stderr = run_cli(capsys, "plot", "--out", out)
    assert code == 0
    pngs = sorted(p.name for p in (Path(out) / "plots").glob("*.png"))
    assert "auroc_vs_eps_digits.png" in pngs and "scores_digits_knn.png" in pngs


def test_failing_plugin_gives_exit_status_1_and_summary(tmp_path, capsys):
    code, stdout, stderr = run_cli(capsys, "run", "--plugin", PLUGIN, "--methods", "broken-fit,knn",
                                   "--datasets", "digits", "--classes", "0", "--attacks", "clean",
                                   "--out", str(tmp_path))
    assert code == 1
    assert "1 job(s) failed" in stderr and "deliberate failure in fit" in stderr
    assert "knn" in stdout  # the others finished and are on the leaderboard


def test_dry_run_prints_the_grid_and_computes_nothing(tmp_path, capsys):
    code, stdout, stderr = run_cli(capsys, "run", "--methods", "all", "--dry-run", "--out", str(tmp_path))
    assert code == 0
    assert "grid:" in stdout and "textures" in stdout and "deep-svdd" in stdout
    assert not (tmp_path / "results.sqlite").exists()


def test_list(capsys):
    code, stdout, _ = run_cli(capsys, "list", "methods")
    assert code == 0 and "ae-at" in stdout and "adversarially" in stdout
    code, stdout, _ = run_cli(capsys, "list")
    assert code == 0 and "pgd-l2" in stdout and "textures" in stdout


@pytest.mark.parametrize(
    "args, message",
    [
        (["run", "--methods", "aee"], "unknown method 'aee'; valid: "),
        (["run", "--methods", "knn", "--attacks", "pdg"], "did you mean 'pgd'"),
        (["run", "--methods", "knn", "--datasets", "digit"], "did you mean 'digits'"),
        (["run", "--methods", "knn", "--eps", "-0.1"], "eps must be a number >= 0, got -0.1"),
        (["run", "--methods", "knn", "--eps", "8/0"], "eps must be a number or a fraction like 8/255"),
        (["run", "--methods", "knn", "--seeds", "x"], "seeds must be integers"),
        (["run", "--methods", "knn", "--classes", "digits:11"], "unknown class of dataset 'digits' '11'"),
        (["run", "--methods", "knn", "--device", "tpu"], "unknown device 'tpu'"),
        (["list", "method"], "unknown kind 'method'"),
        (["export", "--format", "xls"], "unknown export format 'xls'"),
        (["leaderboard", "--metric", "pixel-auroc"], "did you mean 'pixel_auroc'"),
        (["run", "--plugin", "nowhere.py"], "is not a Python file"),
    ],
)
def test_bad_input_is_one_clear_line(tmp_path, capsys, args, message):
    code, _, stderr = run_cli(capsys, *args, *(["--out", str(tmp_path)] if args[0] == "run" else []))
    assert code == 2
    assert message in " ".join(stderr.split())
    assert "Traceback" not in stderr


def test_malformed_and_unknown_yaml(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("methods: [knn\nattacks: clean\n")
    code, _, stderr = run_cli(capsys, "run", "--config", str(bad))
    assert code == 2 and "malformed YAML" in stderr and "line" in stderr
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("methods: knn\nattack: pgd\n")
    code, _, stderr = run_cli(capsys, "run", "--config", str(unknown))
    assert code == 2 and "unknown option in config" in " ".join(stderr.split()) and "attacks" in stderr
    code, _, stderr = run_cli(capsys, "run", "--config", str(tmp_path / "missing.yaml"))
    assert code == 2 and "cannot read config" in stderr


def test_packaged_config_by_name(tmp_path, capsys):
    code, stdout, _ = run_cli(capsys, "run", "--config", "default", "--dry-run", "--out", str(tmp_path))
    assert code == 0 and "textures" in stdout
    code, _, stderr = run_cli(capsys, "run", "--config", "defualt", "--out", str(tmp_path))
    assert code == 2 and "did you mean 'default'" in " ".join(stderr.split())


def test_yaml_config_runs_with_params(tmp_path, capsys):
    cfg = tmp_path / "grid.yaml"
    cfg.write_text(f"methods: [knn]\ndatasets: [digits]\nclasses: {{digits: ['4']}}\nattacks: [clean, pgd]\n"
                   f"eps: {{linf: [8/255]}}\nattack_params: {{pgd: {{steps: 3}}}}\nout: {tmp_path / 'r'}\n")
    code, stdout, stderr = run_cli(capsys, "run", "--config", str(cfg))
    assert code == 0, stderr
    assert "2 jobs: 2 computed" in " ".join(stderr.split()) and "pgd 8/255" in stdout


def test_output_folder_that_cannot_be_written(tmp_path, capsys, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    code, _, stderr = run_cli(capsys, "run", "--methods", "knn", "--out", str(blocker / "sub"))
    assert code == 2 and "cannot write to output folder" in " ".join(stderr.split())
    # a read-only folder (simulated: the tests may run as root, who may write anywhere)
    import tempfile

    def deny(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(tempfile, "NamedTemporaryFile", deny)
    code, _, stderr = run_cli(capsys, "run", "--methods", "knn", "--out", str(tmp_path / "ro"))
    assert code == 2 and "Permission denied" in " ".join(stderr.split())


def test_reading_commands_need_a_store(tmp_path, capsys):
    for command in ("leaderboard", "export", "plot"):
        code, _, stderr = run_cli(capsys, command, "--out", str(tmp_path / "empty"))
        assert code == 2 and "no results in" in stderr
