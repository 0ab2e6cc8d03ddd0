"""``robust-ad-bench report``: one static HTML file (``OUT/report.html``) that opens without a server or a
network: the leaderboard of each dataset as a sortable table (click a column header) with the check flags
and their legend, the worst-case columns, reported paper figures where a grid has them, and every plot
embedded as a PNG data URI. CSS and JavaScript are inline.
"""

from __future__ import annotations

import base64
import html
import re
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from robust_ad_bench.benchmark.results import leaderboard, report_sections
from robust_ad_bench.benchmark.results.robustness_area import with_areas
from robust_ad_bench.benchmark.results.store import Store

REPORT_FILE = "report.html"
REPORTED_COLUMN = "reported"
_FLAG = re.compile(r"(!\w+)")
_NUMBER = re.compile(r"^\s*(-?\d+(?:\.\d+)?)")
PLOT_GROUPS = (("robustness_", "Worst-case AUROC against eps"), ("auroc_vs_eps_", "AUROC against eps, every attack"),
               ("certified_", "Certified accuracy against L2 radius"), ("scores_", "Score histograms"))

STYLE = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:24px;color:#1b1f23;background:#fff}
h1{font-size:1.5em}h2{font-size:1.2em;margin-top:1.6em;border-bottom:1px solid #d0d7de;padding-bottom:4px}
table.board{border-collapse:collapse;margin:8px 0;font-size:13px}
table.board th,table.board td{border:1px solid #d0d7de;padding:4px 8px;text-align:right;white-space:nowrap}
table.board th{background:#f6f8fa;cursor:pointer;user-select:none}
table.board th:first-child,table.board td:first-child{text-align:left;font-weight:600}
table.board th[aria-sort=ascending]::after{content:" \\25B2"}
table.board th[aria-sort=descending]::after{content:" \\25BC"}
table.board tr:nth-child(even) td{background:#fafbfc}
td.worst,th.worst{background:#fff8e6 !important}td.reported,th.reported{color:#57606a;font-style:italic}
.flag{color:#cf222e;font-weight:700;cursor:help}.failed{color:#cf222e;font-weight:700}
dl.legend{display:grid;grid-template-columns:max-content auto;gap:2px 12px;font-size:13px}
dl.legend dt{font-weight:700;color:#cf222e}dl.legend dd{margin:0}
.plots{display:flex;flex-wrap:wrap;gap:12px}.plots figure{margin:0}.plots img{max-width:100%;border:1px solid #d0d7de}
.plots figcaption{font-size:12px;color:#57606a}.note{font-size:13px;color:#57606a}
"""

SCRIPT = """
function cellValue(td){var v=td.getAttribute('data-sort');var n=parseFloat(v);return isNaN(n)?v.toLowerCase():n}
function sortTable(table,col,dir){
  var body=table.tBodies[0];var rows=Array.prototype.slice.call(body.rows);
  rows.sort(function(a,b){var x=cellValue(a.cells[col]),y=cellValue(b.cells[col]);
    if(typeof x!==typeof y){x=String(x);y=String(y)}return (x<y?-1:x>y?1:0)*dir});
  rows.forEach(function(r){body.appendChild(r)});
  Array.prototype.forEach.call(table.tHead.rows[0].cells,function(th,i){
    if(i===col){th.setAttribute('aria-sort',dir>0?'ascending':'descending')}else{th.removeAttribute('aria-sort')}});
}
document.querySelectorAll('table.board').forEach(function(table){
  Array.prototype.forEach.call(table.tHead.rows[0].cells,function(th,i){
    th.addEventListener('click',function(){sortTable(table,i,th.getAttribute('aria-sort')==='descending'?1:-1)})})});
(function(){var m=/sort=([^:&]+):(\\d+):(asc|desc)/.exec(location.hash);if(!m)return;
  var t=document.getElementById(m[1]);if(t)sortTable(t,parseInt(m[2],10),m[3]==='asc'?1:-1)})();
"""


def with_reported(table: pd.DataFrame, figures: Mapping[str, str] | None) -> pd.DataFrame:
    """The leaderboard with a "reported" column (the paper's figures per method, as text) placed after the
    method's flags, when a grid has reported figures; unchanged otherwise. Where ``leaderboard.wide``
    offers reported figures itself (the paper configs' ``reported:`` section), pass them here."""
    if not figures or table.empty:
        return table
    flags = [c for c in ("AT", "SA") if c in table.columns]
    out = table.copy()
    out.insert(len(flags), REPORTED_COLUMN, [figures.get(str(m), "–") for m in out.index])
    return out


def _sort_key(text: str) -> str:
    match = _NUMBER.match(text)
    return match.group(1) if match else text


def _cell(text: str) -> str:
    """A table cell's text with its check flags marked up (their meaning as a tooltip)."""
    parts = []
    for piece in _FLAG.split(text):
        if _FLAG.fullmatch(piece):
            meaning = "; ".join(leaderboard.FLAG_LEGEND.get(c, "") for c in piece[1:] if c in leaderboard.FLAG_LEGEND)
            parts.append(f'<span class="flag" title="{html.escape(meaning)}">{html.escape(piece)}</span>')
        else:
            parts.append(html.escape(piece))
    return "".join(parts)


def board_html(table: pd.DataFrame, dataset: str) -> str:
    """One dataset's sortable table: method, flags, reported figures, its metric columns, failed jobs."""
    extra = [c for c in ("AT", "SA", REPORTED_COLUMN) if c in table.columns]
    cols = [c for c in table.columns if str(c).split(" ", 1)[0] == dataset]
    head = ["method", *extra, *(str(c).split(" ", 1)[1] for c in cols), "failed"]
    kinds = ["", *(["reported" if c == REPORTED_COLUMN else "" for c in extra]),
             *("worst" if str(c).split(" ", 1)[1].startswith("worst-") else "" for c in cols), ""]
    lines = [f'<table class="board" id="board-{html.escape(dataset)}"><thead><tr>']
    lines += [f'<th class="{k}">{html.escape(h)}</th>' if k else f"<th>{html.escape(h)}</th>"
              for h, k in zip(head, kinds)]
    lines.append("</tr></thead><tbody>")
    for method, row in table.iterrows():
        # SA of this dataset only (a per-dataset few-anomaly protocol lists the datasets)
        flags = [leaderboard.sa_for(str(row[c]), dataset) if c == "SA" else str(row[c]) for c in extra]
        values = [str(method), *flags, *(str(row[c]) for c in cols), str(row["failed"])]
        cells = []
        for i, (value, kind) in enumerate(zip(values, kinds)):
            css = f' class="{kind}"' if kind else ""
            if i == len(values) - 1 and value not in ("0", ""):
                css = ' class="failed"'
            cells.append(f'<td{css} data-sort="{html.escape(_sort_key(value))}">{_cell(value)}</td>')
        lines.append(f'<tr data-method="{html.escape(str(method))}">' + "".join(cells) + "</tr>")
    lines.append("</tbody></table>")
    return "\n".join(lines)


def legend_html(table: pd.DataFrame) -> str:
    shown = {line[1] for line in leaderboard.flag_legend(table)}
    items = "".join(f"<dt>!{html.escape(flag)}</dt><dd>{html.escape(meaning)}"
                    f"{'' if flag in shown else ' (not raised in this grid)'}</dd>"
                    for flag, meaning in leaderboard.FLAG_LEGEND.items())
    notes = "".join(f"<p class='note'>{html.escape(line)}</p>" for line in leaderboard.below_chance_notes(table))
    return f'<dl class="legend">{items}</dl>{notes}'


def plots_html(paths: list[Path]) -> str:
    sections = []
    for prefix, title in PLOT_GROUPS:
        figures = [f'<figure><img alt="{html.escape(p.stem)}" src="data:image/png;base64,'
                   f'{base64.b64encode(p.read_bytes()).decode()}"><figcaption>{html.escape(p.name)}</figcaption></figure>'
                   for p in sorted(paths) if p.name.startswith(prefix)]
        if figures:
            sections.append(f'<h3>{html.escape(title)}</h3><div class="plots">{"".join(figures)}</div>')
    return "\n".join(sections)


def build_report(store: Store, out: str | Path, reported: Mapping[str, str] | None = None) -> Path:
    """Write ``OUT/report.html`` from the store (its plots go to ``OUT/plots`` as well) and return its path."""
    from robust_ad_bench.benchmark.results import plots  # matplotlib is slow to import: only when reporting

    out = Path(out)
    results, checks = store.results(), store.checks()
    table = with_reported(leaderboard.wide(results, checks=checks), reported)
    table = with_areas(table, results)
    paths = plots.make_plots(store, out / "plots") if not results.empty else []
    transfers = store.transfer()
    body = [f"<h1>robust-ad-bench report</h1><p class='note'>{len(results)} jobs "
            f"({int((results['status'] == 'failed').sum()) if not results.empty else 0} failed) in "
            f"{html.escape(str(out.resolve().name))}; written {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC. "
            "Cells: image AUROC, mean ± std over classes and seeds; click a column header to sort.</p>"]
    body.append(report_sections.summary_section(results))
    if table.empty:
        body.append("<p>No finished jobs.</p>")
    else:
        metric_cols = [c for c in table.columns if c not in ("AT", "SA", REPORTED_COLUMN, "failed")]
        for dataset in dict.fromkeys(str(c).split(" ", 1)[0] for c in metric_cols):
            body.append(f"<h2>{html.escape(dataset)}</h2>")
            body.append(board_html(table, dataset))
        body.append("<p class='note'>AT: adversarially trained. SA: saw a few labelled test anomalies in training. "
                    "Robust columns: the attack at that eps, both classes attacked; worst-&lt;norm&gt; (shaded): per "
                    "model, the AUROC of the per-image worst score over every attack of that norm at that eps "
                    "(highest score of each normal, lowest of each anomaly), and the attack that won most images."
                    "</p>")
        body.append("<h2>Sanity-check flags</h2>" + legend_html(table))
    body += [report_sections.gallery_section(paths), report_sections.transfer_section(transfers, paths),
             report_sections.localisation_section(results)]
    if paths:
        body.append("<h2>Plots</h2>" + plots_html(paths))
    page = (f"<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'><title>robust-ad-bench report</title>"
            f"<style>{STYLE}</style></head><body>\n" + "\n".join(body)
            + f"\n<script>{SCRIPT}{report_sections.ONLY_SCRIPT}</script></body></html>\n")
    path = out / REPORT_FILE
    path.write_text(page, encoding="utf-8")
    return path
