"""The Python API beside the command line: ``evaluate`` a detector under attack, ``load_detector`` a trained
one from a results folder. Both are exported by ``robust_ad_bench`` itself.

``evaluate`` builds the same grid as ``robust-ad-bench run`` with the same options (the packaged default
grid underneath, so the job keys are the CLI's), runs the same validation, stores every job in the same
SQLite store of ``out`` and returns its rows: a second call, or a CLI run on the same folder, computes only
what is missing. ``load_detector`` reads the store read-only and restores the model file the run cached.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import torch

from robust_ad_bench.benchmark.execution.model_cache import ModelCache
from robust_ad_bench.benchmark.execution.runner import Runner
from robust_ad_bench.benchmark.grid.config import make_grid_config
from robust_ad_bench.benchmark.grid.jobs import StoredConfig, worst_case_groups
from robust_ad_bench.benchmark.grid.validation import input_shape, validate_grid
from robust_ad_bench.benchmark.results.store import Store, open_existing
from robust_ad_bench.core.detector import Detector
from robust_ad_bench.core.errors import BenchError
from robust_ad_bench.core.params import config_dict
from robust_ad_bench.core.registry import DATASETS, METHODS
from robust_ad_bench.datasets.protocols import stored_params


def _method_name(detector: str | type[Detector] | Detector) -> tuple[str, dict[str, Any] | None]:
    """A registered name, and the parameters of a detector instance (its config)."""
    if isinstance(detector, str):
        METHODS.get(detector)
        return detector, None
    cls = type(detector) if isinstance(detector, Detector) else detector
    if not (isinstance(cls, type) and issubclass(cls, Detector)):
        raise BenchError(f"evaluate takes a method name, a Detector subclass or instance; got {detector!r}")
    name = cls.name or cls.__name__.lower()
    if name not in METHODS or METHODS.get(name) is not cls:
        METHODS.register(name)(cls)  # same rules as @register_method: a clash with another class is an error
    return name, config_dict(detector.config) if isinstance(detector, Detector) else None


def evaluate(detector: str | type[Detector] | Detector, dataset: str, attacks: str | list[str] | None = None,
             eps: Any = None, out: str | Path = "results", *, classes: Any = None, seeds: Any = None,
             params: dict[str, Any] | None = None, **options: Any) -> pd.DataFrame:
    """Train ``detector`` on ``dataset``, attack it and return the stored rows (one per job, plus the
    per-image worst cases), as ``robust-ad-bench run --methods NAME --datasets DATASET ...`` would.

    ``detector``: a registered method name, or a ``Detector`` subclass (registered under its ``name``, else
    its class name in lower case), or an instance (its ``config`` becomes the method's parameters; the
    grid trains a fresh model). ``attacks``/``eps``/``classes``/``seeds`` take what the flags take
    (``"clean,pgd"``, ``"8/255"``, ``["0"]``, ``[0, 1]``); ``params``: the method's hyper-parameters;
    ``options``: any other grid option (``checks=False``, ``n_anomalies=10``, ``data_root=...``,
    ``dataset_params={...}``, ``attack_params={...}``, ``device="cpu"``). Raises ``BenchError`` (every
    problem, one line each) before anything trains when the grid cannot run.
    """
    name, instance_params = _method_name(detector)
    method_params = dict(options.pop("method_params", None) or {})
    if instance_params is not None or params is not None:
        method_params[name] = {**(instance_params or {}), **(params or {})}
    cfg = make_grid_config(None, methods=[name], datasets=[dataset], attacks=attacks, eps=eps, out=str(out),
                           classes=classes, seeds=seeds, **options,
                           **({"method_params": method_params} if method_params else {}))
    runner = Runner(cfg)
    validate_grid(cfg, runner.jobs)
    summary = runner.run()
    if summary.interrupted:
        raise KeyboardInterrupt
    keys = [job.key for job in runner.jobs]
    for _, group in pd.Series(runner.jobs).groupby([job.train_key for job in runner.jobs], sort=False):
        keys += [worst.key for worst in worst_case_groups(list(group))]
    with Store(cfg.out) as store:
        return store.results(keys=keys).reset_index(drop=True)


def load_detector(out: str | Path, method: str, dataset: str, normal_class: str | int, seed: int = 0,
                  train_key: str | None = None, device: str = "cpu") -> Detector:
    """The trained ``method`` of (``dataset``, ``normal_class``, ``seed``) from the results folder ``out``,
    in eval mode, ready to ``score`` new images (N×C×H×W in [0, 1], of the size it was trained on).

    The store is read only. When the folder holds several such models (other parameters, another
    ``n_anomalies``), pass the one's ``train_key`` (the store's ``train_key`` column)."""
    with open_existing(out) as store:
        rows = store.results(status="ok")
    rows = rows[(rows["method"] == method) & (rows["dataset"] == dataset)
                & (rows["normal_class"] == str(normal_class)) & (rows["seed"] == int(seed))]
    if train_key is not None:
        rows = rows[rows["train_key"] == train_key]
    found = list(dict.fromkeys(rows.sort_values("finished_at", ascending=False)["train_key"]))
    what = f"{method} on {dataset}/{normal_class} seed {seed}"
    if not found:
        raise BenchError(f"no trained {what} in {out} (finished jobs of the store); run it first")
    if len(found) > 1:
        raise BenchError(f"{out} holds {len(found)} trained models of {what}; pass train_key= one of "
                         f"{', '.join(found)}")
    stored = StoredConfig.parse(rows[rows["train_key"] == found[0]].iloc[0]["config"])
    path = Path(out).expanduser() / "models" / f"{stored.weights_key(found[0])}.pt"
    if not path.is_file():
        raise BenchError(f"the model file {path} of {what} is missing (deleted, or the folder was copied without "
                         "models/); run the grid again to train it")
    stored = stored.payload
    cls = METHODS.get(method)
    if str(stored.get("method_version")) != str(cls.version):
        raise BenchError(f"{path} was trained by {method} version {stored.get('method_version')}; this is version "
                         f"{cls.version}: run the grid again to train it")
    data = DATASETS.get(dataset).create(dict(stored_params(dataset, stored.get("dataset_params"))))
    state = ModelCache.load(path, device)
    detector = cls(input_shape(data), stored.get("params"))
    channels = state.get("input_mean", torch.zeros(1, input_shape(data)[0])).shape[1]
    if channels != detector.image_shape[0]:  # the files' own colour mode: rebuilt for the stored channels
        detector = cls((channels, *detector.image_shape[1:]), stored.get("params"))
    detector.restore(state)
    return detector.to(device).eval()
