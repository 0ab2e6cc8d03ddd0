"""Command line: robust-ad-bench run | reproduce | list | leaderboard | audit | defects | export | plot | report.
The commands that read a results folder are in ``cli_reports``; the dry run in ``dry_run``; what is checked
before a run in ``validation``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import pandas as pd
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from robust_ad_bench.benchmark.cli_reports import (
    EXPORT_COLUMNS,
    cmd_audit,
    cmd_defects,
    cmd_export,
    cmd_leaderboard,
    cmd_plot,
    cmd_report,
    table_console,
)
from robust_ad_bench.benchmark.dry_run import dry_run
from robust_ad_bench.benchmark.execution.runner import Hooks, Runner, RunSummary
from robust_ad_bench.benchmark.execution.step_costs import PlannedStep
from robust_ad_bench.benchmark.execution.step_progress import StepProgress, run_progress
from robust_ad_bench.benchmark.execution.transfer import transfer_lines
from robust_ad_bench.benchmark.grid.config import make_grid_config
from robust_ad_bench.benchmark.grid.execution import EXECUTORS, default_executor
from robust_ad_bench.benchmark.grid.jobs import Job
from robust_ad_bench.benchmark.grid.runtime import GracefulStop, ensure_writable
from robust_ad_bench.benchmark.grid.validation import validate_grid
from robust_ad_bench.benchmark.papers import reproduce
from robust_ad_bench.benchmark.papers.catalog import load_paper, paper_names
from robust_ad_bench.benchmark.papers.reproduce import plan
from robust_ad_bench.benchmark.results import leaderboard
from robust_ad_bench.benchmark.results.store import Store
from robust_ad_bench.core.errors import BenchError, unknown_choice
from robust_ad_bench.core.registry import REGISTRIES, load_plugin_file
from robust_ad_bench.core.version import __version__
from robust_ad_bench.datasets.files import DATA_ENV

__all__ = ["EXPORT_COLUMNS", "build_parser", "main"]
DESCRIPTION = ("Adversarially robust anomaly detectors under one attack suite: run a grid of methods x datasets x "
               "attacks, then read its results folder (leaderboard, audit, defects, export, plot, report).")


class RichHooks(Hooks):
    """Three rich progress bars: the grid (jobs), its steps (with the estimated time left: ``step_progress``)
    and the training of the current model (epochs)."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self.grid = progress.add_task("grid", total=0)
        self.steps = progress.add_task("steps", total=0)
        self.train = progress.add_task("training", total=1, visible=False)
        self.tracker: StepProgress | None = None

    def plan(self, steps: list[PlannedStep], stored: pd.DataFrame, workers: int, threads: int) -> None:
        self.tracker = run_progress(steps, stored, workers, threads)
        self._show_steps()

    def step_done(self, kind: str, key: str, seconds: float | None) -> None:
        if self.tracker is not None:
            self.tracker.step_done(kind, key, seconds)
            self._show_steps()

    def model_done(self, train_key: str) -> None:
        if self.tracker is not None:
            self.tracker.model_done(train_key)
            self._show_steps()

    def _show_steps(self) -> None:
        tracker = self.tracker
        assert tracker is not None
        self.progress.update(self.steps, total=tracker.total, completed=tracker.finished, description=tracker.text())

    def start(self, total: int) -> None:
        self.progress.update(self.grid, total=total)

    def job_done(self, job: Job, ok: bool) -> None:
        self.progress.update(self.grid, advance=1,
                             description=f"grid: {job.method} {job.dataset}/{job.normal_class}")

    def training(self, job: Job) -> Callable[[int, int, str], None]:
        label = f"training {job.method} on {job.dataset}/{job.normal_class} (seed {job.seed})"
        self.progress.reset(self.train, total=1, completed=0, visible=True, description=label)

        def update(done: int, total: int, message: str) -> None:
            self.progress.update(self.train, total=total, completed=done, description=f"{label} {message}")

        return update

    def waiting(self, holder: str) -> None:
        self.progress.update(self.grid, description=f"grid: waiting for another run ({holder})")

    def store_busy(self, error: str) -> None:
        self.progress.console.print(f"[yellow]the results store is busy ({error}); trying again[/yellow]")


def grid_flags(args: argparse.Namespace) -> dict:
    """The grid options given on the command line (None: not given), and the executor when neither a flag
    nor the config names one (worker processes on a machine with more than one core)."""
    return dict(default_executor=default_executor(),
                methods=args.methods, datasets=args.datasets, attacks=args.attacks, eps=args.eps,
                seeds=args.seeds, classes=args.classes, out=args.out, device=args.device,
                checks=False if args.no_checks else None, data_root=args.data_root,
                execution={"executor": args.executor, "workers": args.workers, "threads": args.threads,
                           "ray_address": args.ray_address, "job_timeout": args.job_timeout,
                           "retries": args.retries})


def prepared(runner: Runner, console: Console) -> Runner:
    """``runner`` after every check of its grid (``validation``): a ``BenchError`` of one line per problem."""
    for note in validate_grid(runner.cfg, runner.jobs).notes:
        console.print(f"[yellow]note:[/yellow] {note}", highlight=False, soft_wrap=True)
    return runner


def run_with_progress(runner: Runner, console: Console) -> RunSummary:
    """Run the grid with a progress display; Ctrl-C once stops after the steps in flight."""
    ensure_writable(runner.cfg.out)  # before the progress display starts
    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()]
    with Progress(*columns, console=console, transient=False) as progress:
        runner.hooks = RichHooks(progress)
        with GracefulStop(lambda: console.print("[yellow]stopping after the jobs in flight "
                                                "(Ctrl-C again to stop at once)[/yellow]")) as stop:
            summary = runner.run(stop)
    other = f", {summary.by_other} finished by another run" if summary.by_other else ""
    console.print(f"{summary.total} jobs: {summary.computed} computed, {summary.skipped} already in the "
                  f"store{other}, {len(summary.failed)} failed; {summary.trained} models trained, "
                  f"{summary.worst} per-image worst cases, {summary.checked} checked, {summary.certified} certified")
    for line in transfer_lines(summary.transfer):
        console.print(line, highlight=False, soft_wrap=True)
    if summary.interrupted:
        console.print(f"stopped: {summary.left} job(s) left; run the same command again to resume "
                      "(finished jobs are in the store)")
    return summary


def print_failures(summary: RunSummary, out: str, console: Console) -> None:
    console.print(f"[red]{len(summary.failed)} job(s) failed[/red] (tracebacks in {out}/failures.log):")
    for job, message in summary.failed[:20]:
        console.print(f"  {job.method} {job.dataset}/{job.normal_class} seed {job.seed} {job.attack} "
                      f"eps {job.eps:g}: {message}")


def cmd_run(args: argparse.Namespace, console: Console) -> int:
    cfg = make_grid_config(args.config, args.set, **grid_flags(args), n_anomalies=args.n_anomalies,
                           known_defects=args.known_defects)
    runner = prepared(Runner(cfg), console)  # every name, parameter, file and method checked: nothing ran yet
    if args.dry_run:
        dry_run(runner, table_console())
        return 0
    summary = run_with_progress(runner, console)
    if summary.interrupted:
        return 130
    with Store(cfg.out) as store:
        results, checks = store.results(), store.checks()
    methods = {j.method for j in runner.jobs}
    datasets = {j.dataset for j in runner.jobs}
    results = results[results["method"].isin(methods) & results["dataset"].isin(datasets)]
    leaderboard.render(leaderboard.wide(results, checks=checks), table_console())
    if summary.failed:
        print_failures(summary, cfg.out, console)
        return 1
    return 0


def cmd_reproduce(args: argparse.Namespace, console: Console) -> int:
    paper = load_paper(args.paper)
    runs = plan(paper, args.set, **grid_flags(args))
    missing = [m for run in runs for m in run.missing]
    out = table_console()
    if not any(run.runnable for run in runs):
        for item in missing:
            console.print(item.line(), highlight=False)
        raise BenchError(f"nothing of paper '{paper.name}' can run: no data found (see above); put it where the "
                         "lines above say, or pass --data-root DIR")
    runners = [(run, prepared(Runner(run.cfg), console)) for run in runs if run.runnable]  # all checked first
    failed = 0
    if args.dry_run:
        for run, runner in runners:
            out.print(f"config {run.config} (results in {run.cfg.out}):")
            dry_run(runner, out)
    else:
        frames = []
        for run, runner in runners:
            console.print(f"config {run.config}: results in {run.cfg.out}")
            summary = run_with_progress(runner, console)
            if summary.interrupted:
                return 130
            if summary.failed:
                failed += 1
                print_failures(summary, run.cfg.out, console)
            keys = {job.key for job in runner.jobs}
            with Store(run.cfg.out) as store:
                results = store.results()
            frames.append(results[results["key"].isin(keys)])
        table = reproduce.report(pd.concat(frames, ignore_index=True), paper, out)
        if not table.empty:
            target = Path(runners[0][0].cfg.out) / f"reproduce_{paper.name}.csv"
            table.to_csv(target, index=False)
            console.print(f"wrote {target}", highlight=False)
    for item in missing:
        console.print(item.line(), highlight=False)
    return 1 if failed else 0


def cmd_list(args: argparse.Namespace, console: Console) -> int:
    console = table_console()
    kinds = [args.kind] if args.kind else [*REGISTRIES, "papers"]
    for kind in kinds:
        table = Table(title=kind)
        table.add_column("name", style="bold")
        table.add_column("description")
        if kind == "papers":
            for name in paper_names():
                paper = load_paper(name)
                found = sum(f.value is not None for f in paper.figures)
                table.add_row(name, f"{paper.title} ({paper.reference}); configs {', '.join(paper.configs)}; "
                                    f"{found} figures, {len(paper.figures) - found} not found")
        for name, cls in REGISTRIES.get(kind, []):
            if kind == "datasets" and getattr(cls, "hidden", False):  # named, never in "all"
                table.add_row(name, f"{cls.description} (not in 'all')")
            elif not getattr(cls, "hidden", False):
                table.add_row(name, cls.description)
        console.print(table)
    return 0


def _number(kind: type, minimum: float = 0, strict: bool = True) -> Callable[[str], float]:
    """An argparse type: a number of ``kind`` above ``minimum`` (or at it, when not ``strict``)."""

    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {kind.__name__}, got {text!r}") from None
        if value < minimum or strict and value == minimum:
            raise argparse.ArgumentTypeError(f"must be {'>' if strict else '>='} {minimum}, got {text!r}")
        return value

    return parse


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--plugin", action="append", default=[], metavar="FILE.py",
                        help="load methods/attacks/datasets from a Python file (repeatable)")
    parser = argparse.ArgumentParser(prog="robust-ad-bench", description=DESCRIPTION)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", parents=[common], help="run a grid of methods × datasets × attacks")
    run.add_argument("--methods", help="'all' or comma-separated names (default: all)")
    run.add_argument("--datasets", help="'all' or comma-separated names (default: all)")
    run.add_argument("--attacks", help="comma-separated names (default: clean,fgsm,pgd)")
    run.add_argument("--eps", help="comma-separated budgets in pixel units, e.g. 2/255,8/255 "
                                   "(default: each dataset's own)")
    run.add_argument("--seeds", help="comma-separated integers (default: 0)")
    run.add_argument("--classes", help="comma-separated normal classes, dataset:class, or all "
                                       "(default: the default grid's subset)")
    run.add_argument("--out", help="results folder (default: results)")
    run.add_argument("--config", help="YAML file or packaged config name: its options replace those of the "
                                      "default grid (the packaged 'default'), the others keep their default; "
                                      "flags override both")
    run.add_argument("--device", help="auto, cpu, cuda or cuda:N (default: auto)")
    run.add_argument("--n-anomalies", help="hold out this many labelled test anomalies per class; methods "
                                           "that need anomalies train on them (default: 0)")
    run.add_argument("--known-defects", help="comma-separated defect types the held-out anomalies are drawn "
                                             "from (default: all types)")
    run.add_argument("--dry-run", action="store_true", help="print the grid and what is left to compute")
    run.add_argument("--no-checks", action="store_true",
                     help="skip the sanity checks of the attacks (they are on by default)")
    for parser_ in (run, rep := sub.add_parser(
            "reproduce", parents=[common], help="run a paper's packaged configs on the data present and print "
                                                 "reported vs reproduced figures")):
        parser_.add_argument("--data-root", help=f"folder holding the datasets (default: ${DATA_ENV})")
        parser_.add_argument("--executor", help=f"{', '.join(EXECUTORS)}: this process, worker processes on this "
                                                 "machine (default when it has more than one core), or Ray "
                                                 "(the [ray] extra)")
        parser_.add_argument("--workers", type=_number(int),
                             help="local: worker processes (default: one per core); ray: CPUs of the local cluster")
        parser_.add_argument("--threads", type=_number(int),
                             help="torch threads per worker (default: the cores split between the workers)")
        parser_.add_argument("--ray-address", help="an existing Ray cluster (default: start a local one)")
        parser_.add_argument("--job-timeout", type=_number(float), metavar="SECONDS",
                             help="stop a training, job, checks or certification running longer, record it "
                                  "failed and go on (serial: runs the steps in one child process)")
        parser_.add_argument("--retries", type=_number(int, 0, strict=False),
                             help="run a step again this many times when its worker process died (default: 1)")
        parser_.add_argument("--set", action="append", metavar="KEY.PATH=VALUE",
                             help="set one option of the config, e.g. method_params.ae.epochs=5 or "
                                  "dataset_params.mvtec.resize=224 (repeatable; VALUE is YAML)")
    rep.add_argument("paper", help="a packaged paper (robust-ad-bench list papers)")
    for flag, text in (("--methods", "narrow to these methods"), ("--datasets", "narrow to these datasets"),
                       ("--classes", "narrow to these classes"), ("--attacks", "narrow to these attacks"),
                       ("--eps", "budgets instead of the paper's"), ("--seeds", "seeds instead of the paper's"),
                       ("--out", "results folder (default: the config's, else results/PAPER)"),
                       ("--device", "auto, cpu, cuda or cuda:N")):
        rep.add_argument(flag, help=text)
    rep.add_argument("--dry-run", action="store_true", help="print the grids and what is skipped; run nothing")
    rep.add_argument("--no-checks", action="store_true", help="skip the sanity checks of the attacks")

    lst = sub.add_parser("list", parents=[common], help="list registered methods, attacks, datasets or papers")
    lst.add_argument("kind", nargs="?", help="methods, attacks, datasets or papers (default: all four)")

    board = sub.add_parser("leaderboard", parents=[common],
                           help="print the leaderboard and write CSV, Markdown and LaTeX")
    board.add_argument("--out", default="results", help="results folder (default: results)")
    board.add_argument("--metric", default="auroc", help=f"{', '.join(leaderboard.METRICS)} (default: auroc)")
    board.add_argument("--reported", action="store_true",
                       help="add each paper's reported figure beside the cells it matches (see: list papers)")
    board.add_argument("--sort", default="method",
                       help="row order: method (name), robustness (the worst-case AUROC area against eps, best "
                            "first), clean, or a column's name (default: method)")
    board.add_argument("--configurations", action="store_true",
                       help="list the older configurations of each cell side by side (never averaged with the "
                            "latest one shown)")
    audit = sub.add_parser("audit", parents=[common],
                           help="per method: attacks run, worst-case AUROC, failed sanity checks")
    audit.add_argument("--out", default="results", help="results folder (default: results)")
    plot = sub.add_parser("plot", parents=[common], help="write PNG plots: AUROC against eps, score histograms")
    plot.add_argument("--out", default="results", help="results folder (default: results)")
    rep = sub.add_parser("report", parents=[common], help="write OUT/report.html: sortable leaderboards, check "
                                                          "flags and plots in one file that needs no server")
    rep.add_argument("--out", default="results", help="results folder (default: results)")
    dfx = sub.add_parser("defects", parents=[common],
                         help="AUROC per defect type and on seen vs unseen types (few-anomaly grids)")
    dfx.add_argument("--out", default="results", help="results folder (default: results)")
    dfx.add_argument("--data-root", help=f"where the datasets' files are, to rebuild the splits (default: ${DATA_ENV})")
    exp = sub.add_parser("export", parents=[common], help="write one row per job")
    exp.add_argument("--out", default="results", help="results folder (default: results)")
    exp.add_argument("--format", help="csv or json (default: the --file name's suffix, else csv)")
    exp.add_argument("--file", help="output file, its format from its suffix (.csv, .json); - for stdout "
                                    "(default: OUT/export.FORMAT)")
    return parser


COMMANDS = {"run": cmd_run, "reproduce": cmd_reproduce, "list": cmd_list, "leaderboard": cmd_leaderboard,
            "export": cmd_export, "plot": cmd_plot, "audit": cmd_audit, "defects": cmd_defects, "report": cmd_report}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    console = Console(stderr=True, soft_wrap=True)  # messages never wrapped: paths stay whole in a pipe
    try:
        if args.command == "list" and args.kind and args.kind not in (*REGISTRIES, "papers"):
            raise unknown_choice("kind", args.kind, (*REGISTRIES, "papers"))
        if args.command == "leaderboard" and args.metric not in leaderboard.METRICS:
            raise unknown_choice("metric", args.metric, leaderboard.METRICS)
        if getattr(args, "out", None):
            args.out = str(Path(args.out).expanduser())
        if getattr(args, "data_root", None):
            args.data_root = str(Path(args.data_root).expanduser())
        for path in args.plugin:
            load_plugin_file(path)
        return COMMANDS[args.command](args, console)
    except BenchError as exc:
        for line in str(exc).splitlines() or [""]:  # one line per problem, never wrapped
            console.print(f"[red]error:[/red] {line}", highlight=False, soft_wrap=True)
        return 2
    except KeyboardInterrupt:
        console.print("interrupted: finished jobs are in the store; run again to resume")
        return 130


if __name__ == "__main__":
    sys.exit(main())
