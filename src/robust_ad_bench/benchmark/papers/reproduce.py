"""``robust-ad-bench reproduce PAPER``: run a paper's packaged configs on whatever of its data is present and
set the reproduced figures beside the reported ones.

Each config of the paper (``papers/<paper>.yaml``: ``configs``) is narrowed to the datasets and classes
whose files are there (``Dataset.check_data``: cheap, nothing decoded); the rest is listed as skipped with
where it was looked for and the expected layout. Results go to ``--out`` (default: the config's ``out``,
else ``results/<paper>``), so a second call computes only what is missing. The comparison follows
``reported.compare``: per class, mean over seeds; per dataset, mean over classes (with how many ran).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from rich.console import Console
from rich.table import Table

from robust_ad_bench.benchmark.grid.config import GridConfig, classes_for, load_yaml, make_grid_config
from robust_ad_bench.benchmark.papers.catalog import MEAN, Paper
from robust_ad_bench.benchmark.papers.reported import compare
from robust_ad_bench.benchmark.results.leaderboard import eps_label
from robust_ad_bench.core.errors import BenchError
from robust_ad_bench.core.registry import DATASETS


@dataclass
class Missing:
    """Data a grid asks for that is not there."""

    dataset: str
    classes: list[str]
    message: str

    def line(self) -> str:
        return f"skipped {self.dataset} ({', '.join(self.classes) or 'all classes'}): {self.message}"


@dataclass
class PlannedRun:
    config: str
    cfg: GridConfig  # narrowed to the data that is present
    missing: list[Missing] = field(default_factory=list)

    @property
    def runnable(self) -> bool:
        return bool(self.cfg.datasets)


def grid_data(cfg: GridConfig) -> tuple[dict[str, list[str]], list[Missing]]:
    """Per dataset of the grid, the classes whose data is present; and what is missing (grouped by cause)."""
    present: dict[str, list[str]] = {}
    missing: list[Missing] = []
    for name in DATASETS.resolve(cfg.datasets):
        dataset = DATASETS.get(name).create(cfg.dataset_params.get(name), cfg.data_root)
        try:
            classes = classes_for(cfg, dataset)
        except BenchError as exc:  # datasets whose classes come from the files (``folder``)
            missing.append(Missing(name, [], str(exc)))
            continue
        causes: dict[str, list[str]] = {}
        for cls in classes:
            try:
                dataset.check_data(cls)
                present.setdefault(name, []).append(cls)
            except BenchError as exc:  # one line for the classes missing for the same reason
                cause = re.sub(rf"(?<=[/\\]){re.escape(cls)}(?=[/\\ ;:]|$)", "<category>", str(exc))
                causes.setdefault(cause, []).append(cls)
        everything = len(causes) == 1 and not present.get(name)
        missing += [Missing(name, [] if everything else cls, message) for message, cls in causes.items()]
    return present, missing


def plan(paper: Paper, sets: list[str] | None = None, **overrides: Any) -> list[PlannedRun]:
    """Each config of the paper with the flags applied, narrowed to the data that is present."""
    runs = []
    for config in paper.configs:
        cfg = make_grid_config(config, sets, **overrides)
        if overrides.get("out") is None and "out" not in load_yaml(config):
            cfg.out = str(Path("results") / paper.name)
        present, missing = grid_data(cfg)
        cfg.datasets = [d for d in DATASETS.resolve(cfg.datasets) if d in present]
        cfg.classes = {d: present[d] for d in cfg.datasets}
        runs.append(PlannedRun(config, cfg, missing))
    return runs


def _percent(value: float) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.1f}"


def _setting(setting: tuple[str, float | None, int]) -> str:
    protocol, contamination, n_anomalies = setting
    parts = [protocol if contamination is None else f"{protocol} {contamination:g}"]
    if n_anomalies:
        parts.append(f"{n_anomalies} anomalies")
    return ", ".join(parts)


def comparison_table(table: pd.DataFrame, paper: Paper) -> Table:
    """The rich table of ``reported.compare`` (values in percent)."""
    show_setting = any(s != ("one-class", None, 0) for s in table["setting"])
    out = Table(title=f"{paper.title} ({paper.reference}): reported vs reproduced, in percent")
    columns = ["dataset", "class", "method", "metric", "attack", "eps", *(["protocol"] if show_setting else []),
               "reported", "reproduced", "difference", "runs", "source"]
    for column in columns:
        out.add_column(column, justify="right" if column in ("reported", "reproduced", "difference") else "left")
    for r in table.rename(columns={"class": "normal_class"}).itertuples(index=False):
        reported = "not found" if r.found is False else _percent(r.reported)
        runs = f"{r.n}/{r.of} classes" if r.normal_class == MEAN else f"{r.n} seed{'s' if r.n != 1 else ''}"
        if r.n == 0:
            runs = "no result"  # not in this grid (e.g. --attacks narrowed), or its jobs failed
        difference = "" if math.isnan(r.difference) else f"{r.difference:+.1f}"
        eps = eps_label(r.eps, r.norm) if r.norm != "none" else ""
        setting = [_setting(r.setting)] if show_setting else []
        cells = [r.dataset, r.normal_class, r.method, r.metric, r.attack, eps, *setting, reported,
                 _percent(r.reproduced), difference, runs, r.source]
        out.add_row(*map(str, cells))
    return out


def order(table: pd.DataFrame) -> pd.DataFrame:
    """Dataset, method, metric, clean first then attacks by name and eps, classes with their mean last."""
    if table.empty:
        return table
    keyed = table.assign(_clean=table["norm"] != "none", _mean=table["class"] == MEAN)
    keyed = keyed.sort_values(["dataset", "method", "metric", "_clean", "attack", "eps", "_mean", "class"],
                              kind="stable")
    return keyed.drop(columns=["_clean", "_mean"]).reset_index(drop=True)


def report(results: pd.DataFrame, paper: Paper, console: Console) -> pd.DataFrame:
    """Print the comparison of ``results`` (the paper's jobs) with the paper's figures; return it."""
    table = order(compare(results, paper.figures))
    if table.empty:
        console.print("[yellow]no finished jobs to compare[/yellow]")
        return table
    console.print(comparison_table(table, paper))
    return table
