"""Everything a grid asks for, checked before anything trains (``run``, ``run --dry-run``, ``reproduce``
and the Python API run the same checks).

``config.make_grid_config`` / ``expand_grid`` already refuse unknown names, bad values and parameters,
classes of the wrong dataset, a class scoped to a dataset outside the grid. Here, per job of the expanded
grid, what needs the datasets and methods themselves:

- the grid is not empty;
- the data of every (dataset, class) is where it should be (``Dataset.check_data``: layout, every
  anomaly's mask, a crop that fits the images; cheap, nothing decoded);
- ``n_anomalies`` and ``known_defects`` fit the anomalies each class has (``Dataset.anomaly_counts``);
- every method takes the dataset's images: their size (``Detector.min_image_size``), and a detector is
  built once per (method, input shape), which loads pretrained backbone weights and checks the method's
  own constraints (weights missing, an image too small for its levels) without training anything.

Every problem is one line; all of them are reported together (a ``BenchError`` of one line each). Classes
that cannot run for a reason of their own (a ``folder`` class whose name is not UTF-8) are notes.
"""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass, field
from typing import Any

from robust_ad_bench.benchmark.grid.config import GridConfig
from robust_ad_bench.benchmark.grid.jobs import Job
from robust_ad_bench.core.errors import BenchError, unknown_choice
from robust_ad_bench.core.registry import DATASETS, METHODS
from robust_ad_bench.datasets.files import ImageOptions


@dataclass
class Checked:
    """What validation found: notes to show (nothing to fix for the grid to run)."""

    notes: list[str] = field(default_factory=list)


def input_shape(dataset: Any) -> tuple[int, int, int]:
    """The C×H×W a method is built for: the dataset's shape after its ``color``/``resize``/``crop``."""
    channels, height, width = dataset.image_shape
    options = dataset.options
    if isinstance(options, ImageOptions):
        side = options.crop or options.resize
        if side:
            height = width = side
        channels = {"rgb": 3, "gray": 1}.get(options.color, channels)
    return channels, height, width


def _data_problems(datasets: dict[str, Any], pairs: list[tuple[str, str]]) -> tuple[list[str], set[tuple[str, str]]]:
    """Missing data, one line per cause (the classes missing for the same reason named together)."""
    causes: dict[tuple[str, str], list[tuple[str, str]]] = {}
    bad = set()
    for name, cls in pairs:
        try:
            datasets[name].check_data(cls)
        except BenchError as exc:
            bad.add((name, cls))
            cause = re.sub(rf"(?<=[/\\]){re.escape(cls)}(?=[/\\ ;:]|$)", "<category>", str(exc))
            causes.setdefault((name, cause), []).append((cls, str(exc)))
    lines = []
    for (name, cause), found in causes.items():
        classes = [cls for cls, _ in found]
        lines.append(found[0][1] if len(found) == 1 else f"{cause} (classes {', '.join(classes)} of '{name}')")
    return lines, bad


def _anomaly_problems(job: Job, dataset: Any) -> list[str]:
    split = job.model.split
    counts = dataset.anomaly_counts(split.normal_class)
    if not split.n_anomalies or counts is None:
        return []
    where = f"{split.dataset}/{split.normal_class}"
    known = list(split.known_defects or counts)
    for kind in known:
        if kind not in counts:
            return [str(unknown_choice(f"known defect type of {where}", kind, counts))]
    available, total = sum(counts[k] for k in known), sum(counts.values())
    listed = ", ".join(f"{k} {counts[k]}" for k in known)
    if split.n_anomalies > available:
        return [f"n_anomalies {split.n_anomalies} is more than the {available} test anomalies of {where} "
                f"({listed}); hold out at most {min(available, total - 1)}"]
    if split.n_anomalies >= total:
        return [f"n_anomalies {split.n_anomalies} would take all {total} test anomalies of {where} out of its "
                f"test set; hold out at most {total - 1}"]
    return []


def _method_problems(job: Job, shape: tuple[int, int, int], built: dict[tuple, str | None]) -> list[str]:
    method = METHODS.get(job.method)
    side = min(shape[1:])
    where = f"method '{job.method}' on dataset '{job.dataset}'"
    if side < method.min_image_size:
        return [f"{where}: images of {shape[1]}x{shape[2]} px are smaller than the {method.min_image_size} px "
                f"the method needs; pick another method or resize the images"]
    probe = (job.method, repr(job.model.params), shape)
    if probe not in built:  # one detector per method, parameters and shape: weights load, sizes are checked
        try:
            import torch

            with torch.random.fork_rng(devices=[]):  # the run seeds every model itself; leave no trace
                method(shape, job.model.params)
            built[probe] = None
        except BenchError as exc:
            built[probe] = f"{where}: {exc}"
        except (ValueError, RuntimeError, TypeError) as exc:
            built[probe] = f"{where} ({shape[0]}x{shape[1]}x{shape[2]} images) cannot be built: {exc}"
    return [built[probe]] if built[probe] else []


def validate_grid(cfg: GridConfig, jobs: list[Job]) -> Checked:
    """Raise a ``BenchError`` (one line per problem) when anything of the grid cannot run; else the notes."""
    checked = Checked()
    if not jobs:
        raise BenchError("the grid has no jobs: no class, seed or attack of the chosen datasets is left; check "
                         "--classes and --datasets (robust-ad-bench list datasets)")
    datasets = {name: DATASETS.get(name).create(cfg.dataset_params.get(name), cfg.data_root)
                for name in dict.fromkeys(job.dataset for job in jobs)}
    pairs = list(dict.fromkeys((job.dataset, job.normal_class) for job in jobs))
    for name, dataset in datasets.items():
        if hasattr(dataset, "skipped_classes"):  # classes found in the files: list them to know what was left out
            with contextlib.suppress(BenchError):  # a folder without classes: reported by the data checks
                dataset.classes()
        for skipped in getattr(dataset, "skipped_classes", []):
            checked.notes.append(f"skipped class {ascii(skipped)} of dataset '{name}': its folder name is not valid "
                                 "UTF-8; rename it to run it")
    errors, missing = _data_problems(datasets, pairs)
    splits: dict[Any, Job] = {}
    for job in jobs:
        if (job.dataset, job.normal_class) not in missing:
            splits.setdefault(job.model.split, job)
    for job in splits.values():
        errors += _anomaly_problems(job, datasets[job.dataset])
    built: dict[tuple, str | None] = {}
    models = {(job.method, job.dataset): job for job in jobs if (job.dataset, job.normal_class) not in missing}
    for job in models.values():
        errors += _method_problems(job, input_shape(datasets[job.dataset]), built)
    if errors:
        raise BenchError("\n".join(dict.fromkeys(errors)))
    return checked
