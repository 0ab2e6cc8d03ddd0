"""The commands that read a results folder: ``leaderboard``, ``audit``, ``defects``, ``export``, ``plot``,
``report``. Each opens the store read-only (``store.open_existing``): the file is never changed, and a
read-only folder (a copy, an archive) works. What they write goes beside the store only when the folder
can be written (``leaderboard`` then just prints), or where ``--file`` says (``export``; ``-``: stdout)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rich.console import Console

from robust_ad_bench.benchmark.execution.claims import live_claims
from robust_ad_bench.benchmark.grid.runtime import ensure_writable
from robust_ad_bench.benchmark.papers.catalog import load_paper, paper_names
from robust_ad_bench.benchmark.papers.reported import cell_reported
from robust_ad_bench.benchmark.results import leaderboard
from robust_ad_bench.benchmark.results.audit import audit_tables
from robust_ad_bench.benchmark.results.robustness_area import robustness_areas, sort_table, with_areas
from robust_ad_bench.benchmark.results.store import open_existing
from robust_ad_bench.core.errors import BenchError, unknown_choice

EXPORT_COLUMNS = ["method", "dataset", "normal_class", "seed", "attack", "norm", "eps", "auroc", "auroc_ci_low",
                  "auroc_ci_high", "aupr", "fpr95", "pixel_auroc", "aupro", "status", "error", "adversarially_trained",
                  "attack_detail", "n_test", "seconds", "key", "finished_at"]
EXPORT_FORMATS = ("csv", "json")


def table_console() -> Console:
    """Stdout console for tables: wide when writing to a file or pipe, where wrapping helps nobody."""
    return Console() if sys.stdout.isatty() else Console(width=200)


def _writable(folder: str | Path) -> bool:
    try:
        ensure_writable(folder)
    except BenchError:
        return False
    return True


def cmd_leaderboard(args: argparse.Namespace, console: Console) -> int:
    with open_existing(args.out) as store:
        results, checks, live = store.results(), store.checks(), live_claims(store)
    figures = [f for name in paper_names() for f in load_paper(name).figures] if args.reported else []
    shown = cell_reported(results, figures, args.metric) if figures else None
    older = args.configurations
    table = leaderboard.wide(results, args.metric, checks, shown, older, live)
    if args.metric == "auroc":  # the robustness number is an AUROC area: beside the clean AUROC only
        table = with_areas(table, results)
    leaderboard.render(sort_table(table, args.sort), table_console(), args.metric)
    if not _writable(args.out):
        console.print(f"[yellow]{args.out} cannot be written: the leaderboard was printed, not written to files"
                      "[/yellow]", highlight=False, soft_wrap=True)
        return 0
    paths = leaderboard.write(results, args.out, args.metric, checks, shown, older, live)
    areas = robustness_areas(results)
    if not areas.empty:  # one robustness number per method, dataset and norm (long, numeric)
        paths.append(Path(args.out) / "robustness.csv")
        areas.to_csv(paths[-1], index=False)
    for path in paths:
        console.print(f"wrote {path}", highlight=False, soft_wrap=True)
    return 0


def cmd_audit(args: argparse.Namespace, console: Console) -> int:
    with open_existing(args.out) as store:
        results, checks = store.results(), store.checks()
    out = table_console()
    for table in audit_tables(results, checks):
        out.print(table)
    if results.empty:
        console.print("[yellow]no finished jobs to audit[/yellow]")
    return 0


def cmd_defects(args: argparse.Namespace, console: Console) -> int:
    from robust_ad_bench.benchmark.results import defects

    with open_existing(args.out) as store:
        table = defects.defect_table(store, args.data_root)
    if table.empty:
        console.print("[yellow]no finished jobs run with --n-anomalies (and defect names) to break down[/yellow]")
        return 0
    table_console().print(defects.summarize(table).to_string())
    if not _writable(args.out):
        console.print(f"[yellow]{args.out} cannot be written: defects.csv was not written[/yellow]",
                      highlight=False, soft_wrap=True)
        return 0
    path = Path(args.out) / "defects.csv"
    table.to_csv(path, index=False)
    console.print(f"wrote {path}", highlight=False, soft_wrap=True)
    return 0


def export_target(out: str, file: str | None, fmt: str | None) -> tuple[Path | None, str]:
    """Where ``export`` writes (None: stdout) and in which format: the file name's suffix decides
    (``x.json``: JSON); ``--format`` must agree with it, or names the format of ``-`` and of other names."""
    if fmt is not None and fmt not in EXPORT_FORMATS:
        raise unknown_choice("export format", fmt, EXPORT_FORMATS)
    if file == "-":
        return None, fmt or "csv"
    if file is None:
        fmt = fmt or "csv"
        return Path(out).expanduser() / f"export.{fmt}", fmt
    target = Path(file).expanduser()
    suffix = target.suffix.lower().lstrip(".")
    if suffix in EXPORT_FORMATS:
        if fmt is not None and fmt != suffix:
            raise BenchError(f"--format {fmt} but --file {file} names a .{suffix} file; give one of them")
        return target, suffix
    if fmt is None:
        raise BenchError(f"cannot tell the export format from the file name '{file}'; name it .csv or .json, or "
                         "pass --format csv|json")
    return target, fmt


def cmd_export(args: argparse.Namespace, console: Console) -> int:
    target, fmt = export_target(args.out, args.file, args.format)
    if target is not None:
        ensure_writable(target.parent)
    with open_existing(args.out) as store:
        frame = store.results()[EXPORT_COLUMNS]
    text = frame.to_csv(index=False) if fmt == "csv" else frame.to_json(orient="records", indent=1) + "\n"
    if target is None:
        sys.stdout.write(text)
        sys.stdout.flush()
        return 0
    target.write_text(text)
    console.print(f"wrote {len(frame)} rows to {target} ({fmt})", highlight=False, soft_wrap=True)
    return 0


def cmd_plot(args: argparse.Namespace, console: Console) -> int:
    from robust_ad_bench.benchmark.results import plots  # matplotlib is slow to import: only when plotting

    folder = Path(args.out) / "plots"
    ensure_writable(folder)
    with open_existing(args.out) as store:
        paths = plots.make_plots(store, folder)
    for path in paths:
        console.print(f"wrote {path}", highlight=False, soft_wrap=True)
    return 0


def cmd_report(args: argparse.Namespace, console: Console) -> int:
    from robust_ad_bench.benchmark.results.report import build_report

    ensure_writable(args.out)
    with open_existing(args.out) as store:
        path = build_report(store, args.out)
    console.print(f"wrote {path}", highlight=False, soft_wrap=True)
    return 0
