"""Reported figures as data: one packaged YAML file per paper (``robust_ad_bench/papers/<paper>.yaml``).

A file names the paper, the packaged configs that run its protocol, and its figures, one per row::

    paper: bgad
    title: ...
    reference: Yao et al., CVPR 2023 (arXiv 2207.01463)
    configs: [bgad_mvtec]
    figures:
      - {method: bgad, dataset: mvtec, class: mean, metric: auroc, attack: clean, norm: none, eps: 0,
         value: 99.4, table: "scripts.sh, line 2", source: "authors' repository xcyao00/BGAD",
         setting: {n_anomalies: 10}}

``value`` is in percent as the paper prints it, or ``not found`` where the figure could not be found
(never a guess); ``table`` names the table or figure (and page) it comes from. ``class`` is a class of
the dataset or ``mean`` (over all its classes). ``setting`` holds the protocol the figure was measured
under (``protocol``, ``contamination``, ``n_anomalies``; default the one-class protocol), so it is only
set beside runs of the same protocol. Everything is validated when a file is loaded.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from robust_ad_bench.benchmark.grid.config import packaged_configs, parse_eps
from robust_ad_bench.benchmark.results.leaderboard import METRICS
from robust_ad_bench.core.errors import BenchError, unknown_choice
from robust_ad_bench.core.registry import ATTACKS, DATASETS, METHODS

NOT_FOUND = "not found"
MEAN = "mean"
FIGURE_KEYS = {"method", "dataset", "class", "metric", "attack", "norm", "eps", "value", "table", "source", "page",
               "setting", "note"}
REQUIRED = ("method", "dataset", "class", "metric", "attack", "norm", "eps", "value", "table", "source")
SETTING_KEYS = ("protocol", "contamination", "n_anomalies")


@dataclass(frozen=True)
class Figure:
    """One reported figure (``value`` in percent; None where it could not be found)."""

    paper: str
    method: str
    dataset: str
    normal_class: str  # a class of the dataset, or "mean"
    metric: str
    attack: str
    norm: str
    eps: float
    value: float | None
    table: str
    source: str
    setting: tuple[str, float | None, int] = ("one-class", None, 0)  # protocol, contamination, n_anomalies
    page: str = ""
    note: str = ""


@dataclass
class Paper:
    name: str
    title: str
    reference: str
    configs: list[str]
    figures: list[Figure] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # reported facts that no run of ours can be set beside


def papers_folder() -> Path:
    return Path(__file__).resolve().parents[2] / "papers"


def paper_names() -> list[str]:
    return sorted(p.stem for p in papers_folder().glob("*.yaml"))


@cache
def load_paper(name: str) -> Paper:
    """The validated figures of a packaged paper (``BenchError`` naming the file and row otherwise)."""
    if name not in paper_names():
        raise unknown_choice("paper", name, paper_names())
    return parse_paper(papers_folder() / f"{name}.yaml")


def parse_paper(path: Path) -> Paper:
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise BenchError(f"cannot read paper file {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise BenchError(f"paper file {path} must be a mapping")
    for key in ("paper", "title", "reference", "configs", "figures"):
        if key not in data:
            raise BenchError(f"paper file {path} lacks '{key}'")
    configs = [str(c) for c in data["configs"]]
    for config in configs:
        if config not in packaged_configs():
            raise unknown_choice(f"config in {path.name}", config, packaged_configs())
    if not isinstance(data["figures"], list):
        raise BenchError(f"paper file {path}: 'figures' must be a list")
    figures = [_figure(str(data["paper"]), row, f"{path.name}, figure {i + 1}")
               for i, row in enumerate(data["figures"])]
    return Paper(str(data["paper"]), str(data["title"]), str(data["reference"]), configs, figures,
                 [str(n) for n in data.get("notes") or []])


def _figure(paper: str, row: Any, where: str) -> Figure:
    if not isinstance(row, dict):
        raise BenchError(f"{where}: must be a mapping")
    for key in row:
        if key not in FIGURE_KEYS:
            raise unknown_choice(f"field in {where}", key, FIGURE_KEYS)
    for key in REQUIRED:
        if key not in row:
            raise BenchError(f"{where}: missing '{key}'")
    method, dataset, attack = str(row["method"]), str(row["dataset"]), str(row["attack"])
    if method not in METHODS:
        raise unknown_choice(f"method in {where}", method, METHODS.names())
    if dataset not in DATASETS:
        raise unknown_choice(f"dataset in {where}", dataset, DATASETS.names())
    if attack not in ATTACKS:
        raise unknown_choice(f"attack in {where}", attack, ATTACKS.names())
    normal_class = str(row["class"])
    if normal_class != MEAN:
        DATASETS.get(dataset).create().check_class(normal_class)
    if row["metric"] not in METRICS:
        raise unknown_choice(f"metric in {where}", row["metric"], METRICS)
    norm = str(row["norm"])
    if norm != ATTACKS.get(attack).norm:
        raise BenchError(f"{where}: attack '{attack}' has norm '{ATTACKS.get(attack).norm}', not '{norm}'")
    eps = 0.0 if norm == "none" else parse_eps(row["eps"])
    value = row["value"]
    if value == NOT_FOUND:
        value = None
    elif isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 100:
        raise BenchError(f"{where}: value must be a percentage in [0, 100] or '{NOT_FOUND}', got {value!r}")
    for key in ("table", "source"):
        if not str(row[key]).strip():
            raise BenchError(f"{where}: '{key}' must say where the figure comes from (or '{NOT_FOUND}')")
    return Figure(paper, method, dataset, normal_class, str(row["metric"]), attack, norm, eps,
                  None if value is None else float(value), str(row["table"]), str(row["source"]),
                  _setting(row.get("setting"), where), str(row.get("page", "")), str(row.get("note", "")))


def _setting(value: Any, where: str) -> tuple[str, float | None, int]:
    value = value or {}
    if not isinstance(value, dict) or any(k not in SETTING_KEYS for k in value):
        raise BenchError(f"{where}: setting must be a mapping of {', '.join(SETTING_KEYS)}")
    contamination = value.get("contamination")
    return (str(value.get("protocol", "one-class")), None if contamination is None else float(contamination),
            int(value.get("n_anomalies", 0)))
