"""``robust-ad-bench report``: one static HTML file, checked in headless Chromium (rows in the rendered DOM,
sorting by the page's own script, a non-blank screenshot)."""

import re
import shutil
import subprocess
import sys

import matplotlib.image
import numpy as np
import pandas as pd
import pytest

from conftest import tiny_grid
from robust_ad_bench.benchmark.execution.runner import Runner
from robust_ad_bench.benchmark.results.report import REPORT_FILE, board_html, with_reported

BROWSER = next((shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None)
METHODS = ["knn", "ae", "deep-svdd"]


def browser(tmp_path, *args: str) -> subprocess.CompletedProcess:
    """Headless Chromium with no network, no first-run work and a throwaway profile."""
    return subprocess.run([BROWSER, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                           "--disable-background-networking", "--disable-component-update", "--disable-sync",
                           f"--user-data-dir={tmp_path / 'profile'}", *args],
                          capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    cfg = tiny_grid(out, methods=",".join(METHODS), attacks="clean,fgsm,pgd", classes="0")
    cfg.checks.square_queries = 20
    Runner(cfg).run()
    run = subprocess.run([sys.executable, "-m", "robust_ad_bench.benchmark.cli", "report", "--out", str(out)],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    return out / REPORT_FILE


def test_report_is_one_self_contained_file(report):
    page = report.read_text()
    assert page.startswith("<!DOCTYPE html>")
    assert not re.search(r"""(src|href)=["']?(https?:|//|file:)""", page)  # nothing to fetch
    assert page.count("data:image/png;base64,") >= 1 + len(METHODS)  # curves and one histogram per method
    for method in METHODS:
        assert f'<tr data-method="{method}">' in page
    assert "worst-linf" in page  # fgsm and pgd at the same eps give a worst-case column
    assert "<dt>!B</dt>" in page and "gradient masking" in page  # the flags' legend


@pytest.mark.skipif(BROWSER is None, reason="no Chromium on this machine (Debian: apt-get install chromium; "
                                             ".ci/run installs it)")
def test_report_renders_in_headless_chromium(report, tmp_path):
    # the page's own script sorts the digits table by the clean AUROC (column 2), ascending
    dom = browser(tmp_path, "--dump-dom", f"{report.as_uri()}#sort=board-digits:2:asc")
    assert dom.returncode == 0, dom.stderr
    rows = re.findall(r'<tr data-method="([^"]+)"><td[^>]*>[^<]*</td><td[^>]*>[^<]*</td><td data-sort="([^"]+)"',
                      dom.stdout)
    assert sorted(m for m, _ in rows) == sorted(METHODS)  # every method row is in the rendered table
    clean = [float(v) for _, v in rows]
    assert clean == sorted(clean) and 'aria-sort="ascending"' in dom.stdout  # sorted by the script
    shot = tmp_path / "report.png"
    done = browser(tmp_path, f"--screenshot={shot}", "--window-size=1280,1600", report.as_uri())
    assert done.returncode == 0 and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", done.stderr
    image = matplotlib.image.imread(shot)
    assert image.shape[:2] == (1600, 1280)
    assert image[..., :3].std() > 0.05 and len(np.unique(image[..., :3].reshape(-1, 3), axis=0)) > 50  # not blank


def test_reported_figures_become_a_column_when_available():
    table = pd.DataFrame({"AT": ["", "yes"], "digits clean": ["0.9", "0.8"], "failed": [0, 0]},
                         index=pd.Index(["ae", "ae-at"], name="method"))
    assert with_reported(table, None) is table
    out = with_reported(table, {"ae": "0.91 (paper)"})
    assert list(out.columns) == ["AT", "reported", "digits clean", "failed"]
    assert list(out["reported"]) == ["0.91 (paper)", "–"]


def test_sa_marks_only_the_datasets_a_method_saw_anomalies_of_and_the_legend_is_per_image(report):
    table = pd.DataFrame({"AT": ["", ""], "SA": ["textures", ""], "digits clean": ["0.9", "0.8"],
                          "textures clean": ["0.7", "0.6"], "failed": [0, 0]},
                         index=pd.Index(["bgad", "knn"], name="method"))
    digits, textures = board_html(table, "digits"), board_html(table, "textures")
    assert ">yes<" not in digits and ">textures<" not in digits
    assert textures.count(">yes<") == 1
    text = report.read_text()
    assert "per-image worst score" in text and "lowest AUROC over the attacks" not in text


def test_report_has_the_summary_gallery_transfer_and_localisation_sections(report):
    page = report.read_text()
    for ident in ("summary", "gallery", "transfer"):
        assert f'<section id="{ident}">' in page
    gallery = page.split('<section id="gallery">', 1)[1].split("</section>", 1)[0]
    assert gallery.count("data:image/png;base64,") == len(METHODS)  # one gallery per method
    transfer = page.split('<section id="transfer">', 1)[1].split("</section>", 1)[0]
    assert transfer.count("data-source=") == len(METHODS) and "data:image/png;base64," in transfer
    summary = page.split('<section id="summary">', 1)[1].split("</section>", 1)[0]
    assert sorted(re.findall(r'<tr data-method="([^"]+)"', summary)) == sorted(METHODS)
    assert "area-linf" in page  # the robustness column beside clean in the leaderboard


@pytest.mark.skipif(BROWSER is None, reason="no Chromium on this machine (Debian: apt-get install chromium; "
                                             ".ci/run installs it)")
@pytest.mark.parametrize("ident", ["summary", "gallery", "transfer"])
def test_each_new_section_renders_alone_in_headless_chromium(report, tmp_path, ident):
    """``#only=<id>`` hides every other part of the page (what the screenshot script uses)."""
    dom = browser(tmp_path, "--dump-dom", f"{report.as_uri()}#only={ident}")
    assert dom.returncode == 0, dom.stderr
    assert re.search(rf'<section id="{ident}">', dom.stdout)  # shown: no display:none on it
    others = [i for i in ("summary", "gallery", "transfer") if i != ident]
    for other in others:
        assert re.search(rf'<section id="{other}" style="display: none;">', dom.stdout), other
    shot = tmp_path / f"{ident}.png"
    done = browser(tmp_path, f"--screenshot={shot}", "--window-size=1000,700", f"{report.as_uri()}#only={ident}")
    assert done.returncode == 0, done.stderr
    image = matplotlib.image.imread(shot)
    assert len(np.unique(image[..., :3].reshape(-1, 3), axis=0)) > 50  # not a blank page
