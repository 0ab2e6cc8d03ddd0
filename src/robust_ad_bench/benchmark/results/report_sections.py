"""The report's sections on what the attacks did: the robustness summary (one number per method), the
anomaly-map galleries, the transfer matrix and localisation (pixel AUROC and AUPRO). Each is an HTML
``<section>`` with an id, so ``report.html#only=<id>`` shows that section alone (for screenshots)."""

from __future__ import annotations

import base64
import html
from pathlib import Path

import pandas as pd

from robust_ad_bench.benchmark.results import leaderboard
from robust_ad_bench.benchmark.results.robustness_area import robustness_areas
from robust_ad_bench.benchmark.results.transfer_report import transfer_html

SECTION_IDS = ("summary", "gallery", "transfer", "localisation")


def _figures(paths: list[Path], prefix: str) -> str:
    return "".join(f'<figure><img alt="{html.escape(p.stem)}" src="data:image/png;base64,'
                   f'{base64.b64encode(p.read_bytes()).decode()}"><figcaption>{html.escape(p.name)}</figcaption>'
                   f"</figure>" for p in sorted(paths) if p.name.startswith(prefix))


def section(ident: str, title: str, body: str) -> str:
    return f'<section id="{ident}"><h2>{html.escape(title)}</h2>{body}</section>'


def summary_section(results: pd.DataFrame) -> str:
    """Per dataset and norm: clean AUROC and the normalized worst-case area per method, most robust first."""
    areas = robustness_areas(results)
    if areas.empty:
        return ""
    parts = ["<p class='note'>Robustness: the area under the per-image worst-case AUROC against eps from 0 "
             "(the clean AUROC) to the largest eps that ran, divided by that eps (the mean worst-case AUROC over "
             "the range, in [0, 1]); mean ± std over classes and seeds. Only comparable within one dataset and "
             "norm (the eps range is the dataset's).</p>"]
    for (dataset, norm), rows in areas.groupby(["dataset", "norm"], sort=True):
        rows = rows.sort_values("area", ascending=False)
        eps = leaderboard.eps_label(float(rows["eps_max"].max()), str(norm))
        body = "".join(
            f'<tr data-method="{html.escape(str(r.method))}"><td>{html.escape(str(r.method))}</td>'
            f'<td data-sort="{r.clean:.4f}">{r.clean:.3f}</td>'
            f'<td class="worst" data-sort="{r.area:.4f}">{r.area:.3f}{f" ± {r.area_std:.3f}" if r.n > 1 else ""}</td>'
            f'<td data-sort="{r.n}">{r.n}</td></tr>' for r in rows.itertuples())
        ident = html.escape(f"summary-{dataset}-{norm}")
        parts.append(f"<h3>{html.escape(str(dataset))}, {html.escape(str(norm))} eps 0..{eps}</h3>"
                     f'<table class="board" id="{ident}"><thead><tr><th>method</th><th>clean AUROC</th>'
                     f'<th class="worst">robustness (area)</th><th>models</th></tr></thead><tbody>{body}</tbody>'
                     "</table>")
    return section("summary", "Summary: one robustness number per method", "".join(parts))


def gallery_section(paths: list[Path]) -> str:
    figures = _figures(paths, "gallery_")
    if not figures:
        return ""
    note = ("<p class='note'>Per method and dataset (first class and seed), at its largest eps: the normal image "
            "whose score the worst case raised most, the anomaly whose score it lowered most, and a typical one "
            "(median move). Columns: clean, adversarial (the stored image, own or transferred, with the highest "
            "attack objective), the perturbation (grey: unchanged, black -eps, white +eps), and the anomaly map "
            "before and after (one colour scale per row). Threshold: best F1 on the clean scores.</p>")
    return section("gallery", "Gallery: what the attacks did to images and anomaly maps",
                   note + f'<div class="plots">{figures}</div>')


def transfer_section(transfers: pd.DataFrame, paths: list[Path]) -> str:
    if transfers.empty:
        return ""
    note = ("<p class='note'>AUROC of the target (column) on the adversarial test images of the source (row), "
            "chosen per image by the source's own scores; the shaded diagonal is each method's white-box figure "
            "over its attacks. Every transferred image also joins the target's per-image worst case; when that "
            "lowers it beyond noise the target's attacks get the flag !T.</p>")
    return section("transfer", "Transfer matrix", note + f'<div class="plots">{_figures(paths, "transfer_")}</div>'
                   + transfer_html(transfers))


def localisation_section(results: pd.DataFrame) -> str:
    """Pixel AUROC and AUPRO per method, wherever the test set has masks."""
    parts = []
    for metric in ("pixel_auroc", "aupro"):
        if metric not in results or results[metric].notna().sum() == 0:
            continue
        table = leaderboard.wide(results[results[metric].notna()], metric)
        if table.empty:
            continue
        cols = [c for c in table.columns if c not in ("AT", "SA", "failed")]
        head = "".join(f"<th>{html.escape(str(c))}</th>" for c in cols)
        body = "".join(f'<tr data-method="{html.escape(str(m))}"><td>{html.escape(str(m))}</td>'
                       + "".join(f'<td data-sort="{html.escape(str(row[c]).split(" ")[0])}">{html.escape(str(row[c]))}'
                                 "</td>" for c in cols) + "</tr>" for m, row in table.iterrows())
        parts.append(f"<h3>{leaderboard.METRICS[metric]}</h3><table class='board' id='loc-{metric}'><thead><tr>"
                     f"<th>method</th>{head}</tr></thead><tbody>{body}</tbody></table>")
    if not parts:
        return ""
    note = ("<p class='note'>AUPRO: the per-region overlap averaged over the defect regions, integrated against the "
            "false-positive rate up to 30 % and divided by 0.3 (as MVTec AD reports it); on the attacked images of "
            "each job.</p>")
    return section("localisation", "Localisation: pixel AUROC and AUPRO", note + "".join(parts))


ONLY_SCRIPT = """
(function(){var m=/only=([\\w-]+)/.exec(location.hash);if(!m)return;
  document.querySelectorAll('body > *').forEach(function(e){
    if(e.tagName!=='SCRIPT'&&e.id!==m[1]){e.style.display='none'}})})();
"""
