"""The benchmark grid: from CLI flags or a YAML file to validated jobs with content-hash keys."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, fields
from fractions import Fraction
from pathlib import Path
from typing import Any

import yaml

from robust_ad_bench.benchmark.grid.execution import ExecutionConfig
from robust_ad_bench.benchmark.grid.jobs import AttackSpec, Job, ModelSpec
from robust_ad_bench.benchmark.protocol.certification import CertifyConfig
from robust_ad_bench.benchmark.protocol.checks import CheckConfig
from robust_ad_bench.core.attack import NORMS, check_eps
from robust_ad_bench.core.errors import BenchError, unknown_choice
from robust_ad_bench.core.params import build_config, config_dict
from robust_ad_bench.core.registry import ATTACKS, DATASETS, METHODS
from robust_ad_bench.datasets.protocols import PROTOCOLS, SplitSpec, freeze_params

DEFAULT_ATTACKS = ("clean", "fgsm", "pgd")


@dataclass
class GridConfig:
    """What to run. ``None`` means the default: all classes, each dataset's default eps."""

    methods: list[str] = field(default_factory=lambda: ["all"])
    datasets: list[str] = field(default_factory=lambda: ["all"])
    attacks: list[str] = field(default_factory=lambda: list(DEFAULT_ATTACKS))
    eps: dict[str, list[float]] | None = None  # per norm ("linf", "l2")
    seeds: list[int] = field(default_factory=lambda: [0])
    classes: dict[str, list[str]] | list[str] | None = None  # per dataset, or one list for all
    out: str = "results"
    device: str = "auto"
    method_params: dict[str, dict[str, Any]] = field(default_factory=dict)
    attack_params: dict[str, dict[str, Any]] = field(default_factory=dict)
    checks: CheckConfig = field(default_factory=CheckConfig)  # sanity checks (YAML: mapping, or false)
    certify: CertifyConfig = field(default_factory=CertifyConfig)  # randomized-smoothing certification
    # few-anomaly protocol: hold out this many labelled test anomalies per class (for every method, so all
    # are tested on the same set); methods with ``needs_anomalies`` train on them. 0: off. A number applies
    # to every dataset, a mapping to the datasets it names (``{textures: 10}``: the others get none).
    n_anomalies: int | dict[str, int] = 0
    # draw them only from these defect types (the rest: unseen); a list, or a mapping dataset -> list
    known_defects: list[str] | dict[str, list[str]] | None = None
    # "one-class": train on clean normal images, test on held-out normals and anomalies (the leaderboard);
    # "transductive": train and score one contaminated set (``datasets.protocols.transductive_split``)
    protocol: str = "one-class"
    contamination: float = 0.1  # transductive only: anomalies per normal image
    # stochastic detectors: each evaluated score (grid figures and sanity checks alike) is the mean of this
    # many draws, so that the checks measure the attack, not the scoring noise
    eval_samples: int = 8
    # per dataset: its options (``root``, load-time transforms ``resize``/``crop``/``color``, ...)
    dataset_params: dict[str, dict[str, Any]] = field(default_factory=dict)
    data_root: str | None = None  # where datasets read files (else $ROBUST_AD_BENCH_DATA); not in any key
    execution: ExecutionConfig = field(default_factory=ExecutionConfig)  # how it runs (executor, timeouts)


def parse_eps(value: Any) -> float:
    """A number or a fraction string such as ``8/255``."""
    try:
        eps = float(Fraction(value.strip())) if isinstance(value, str) else float(value)
    except (ValueError, ZeroDivisionError, TypeError):
        raise BenchError(f"eps must be a number or a fraction like 8/255, got {value!r}") from None
    check_eps(eps)
    return eps


def parse_eps_spec(spec: Any) -> dict[str, list[float]] | None:
    """``"2/255,8/255"`` or a list (applies to every norm) or ``{"linf": [...], "l2": [...]}``."""
    if spec is None:
        return None
    if isinstance(spec, dict):
        out = {}
        for norm, values in spec.items():
            if norm not in NORMS[:2]:
                raise unknown_choice("norm in eps", norm, NORMS[:2])
            out[norm] = _unique_eps(parse_eps(v) for v in _as_list(values))
        return out
    values = _unique_eps(parse_eps(v) for v in _as_list(spec))
    if not values:
        raise BenchError(f"eps: no budgets given in {spec!r}")
    return {"linf": values, "l2": values}


def _unique_eps(values: Any) -> list[float]:
    """Budgets in the order given, each once (``8/255,8/255`` or ``8/255,0.0313725490196`` is one job)."""
    return list({round(v, 10): v for v in values}.values())


def _as_list(value: Any) -> list[Any]:
    if isinstance(value, str):
        return [v for v in (s.strip() for s in value.split(",")) if v]
    if isinstance(value, (list, tuple)):
        return list(value)
    return [value]


def _names(value: Any, option: str) -> list[str]:
    """A list of names (``a,b``, a YAML list, or one name); a mapping or a nested list is an error."""
    items = _as_list(value)
    for item in items:
        if isinstance(item, (dict, list, tuple, set)) or item is None or isinstance(item, bool):
            hint = f"; their parameters go in {option[:-1]}_params" if option in ("methods", "attacks") else ""
            raise BenchError(f"{option} must be a list of names (or 'all'), got {value!r}{hint}")
    names = [str(item).strip() for item in items]
    if not any(names):
        raise BenchError(f"{option}: no names given in {value!r}")
    return names


MAX_SEED = 2**63 - 1  # the store keeps seeds as SQLite integers (64-bit signed)


def _seeds(value: Any) -> list[int]:
    seeds = []
    for item in _as_list(value):
        try:
            if isinstance(item, (bool, float)) or item is None:
                raise ValueError
            seed = int(str(item).strip())
        except (TypeError, ValueError):
            raise BenchError(f"seeds must be integers, got {value!r}") from None
        if not 0 <= seed <= MAX_SEED:
            raise BenchError(f"seed {seed} is out of range: seeds are integers from 0 to {MAX_SEED}")
        seeds.append(seed)
    if not seeds:
        raise BenchError(f"seeds: no seeds given in {value!r}")
    return list(dict.fromkeys(seeds))  # each seed once


def packaged_configs() -> dict[str, Path]:
    """The YAML configs shipped in ``robust_ad_bench/configs`` (default grid, paper protocols)."""
    folder = Path(__file__).resolve().parents[2] / "configs"
    return {p.stem: p for p in sorted(folder.glob("*.yaml"))}


def load_yaml(path: str | Path) -> dict[str, Any]:
    """A YAML file, or the name of a packaged config (``--config default``)."""
    path = Path(path).expanduser()
    if not path.exists() and path.suffix == "" and len(path.parts) == 1:
        packaged = packaged_configs()
        if str(path) not in packaged:
            raise unknown_choice("config (neither a file nor a packaged config)", path, packaged)
        path = packaged[str(path)]
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise BenchError(f"cannot read config '{path}': {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise BenchError(f"malformed YAML in '{path}'{where}: {getattr(exc, 'problem', exc)}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise BenchError(f"config '{path}' must be a mapping of options, got {type(data).__name__}")
    valid = {f.name for f in fields(GridConfig)}
    for key in data:
        if key not in valid:
            raise unknown_choice(f"option in config '{path}'", key, valid)
    return data


def apply_sets(data: dict[str, Any], sets: list[str] | None) -> dict[str, Any]:
    """``--set a.b.c=VALUE`` (VALUE read as YAML): set one option, however deep, e.g.
    ``method_params.bgad.epochs=2`` or ``dataset_params.mvtec.resize=224``."""
    valid = {f.name for f in fields(GridConfig)}
    for item in sets or []:
        path, sep, text = item.partition("=")
        keys = [k.strip() for k in path.split(".")]
        if not sep or not all(keys):
            raise BenchError(f"--set takes KEY.PATH=VALUE (e.g. method_params.ae.epochs=5), got {item!r}")
        if keys[0] not in valid:
            raise unknown_choice("option in --set", keys[0], valid)
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError:
            raise BenchError(f"--set {path}: value {text!r} is not valid YAML") from None
        node = data
        for key in keys[:-1]:
            if not isinstance(node.get(key), dict):
                node[key] = {}
            node = node[key]
        node[keys[-1]] = value
    return data


def make_grid_config(yaml_path: str | None = None, sets: list[str] | None = None,
                     execution: dict[str, Any] | None = None, default_executor: str | None = None,
                     **overrides: Any) -> GridConfig:
    """The packaged ``default`` grid, the options of the YAML file ``yaml_path`` on top of it (each option
    the file names replaces the default's), then ``--set`` options, then CLI flags (those not None);
    ``execution`` flags are merged into the ``execution`` section; ``default_executor`` is the executor when
    none of them names one (the CLI's: ``execution.default_executor``)."""
    data = load_yaml("default")
    if yaml_path and yaml_path != "default":
        data.update(load_yaml(yaml_path))
    data = apply_sets(data, sets)
    data.update({k: v for k, v in overrides.items() if v is not None})
    if execution:
        section = data.get("execution")
        data["execution"] = {**(section if isinstance(section, dict) else {}),
                             **{k: v for k, v in execution.items() if v is not None}}
    section = data.get("execution")
    if default_executor and section is not False and not (isinstance(section, dict) and section.get("executor")):
        data["execution"] = {**(section if isinstance(section, dict) else {}), "executor": default_executor}
    for key in ("methods", "datasets", "attacks"):
        if key in data:
            data[key] = _names(data[key], key)
    if data.get("known_defects") is not None:
        data["known_defects"] = _per_dataset_option(data["known_defects"], lambda v: _names(v, "known_defects"))
    data["seeds"] = _seeds(data.get("seeds", [0]))
    data["eps"] = parse_eps_spec(data.get("eps"))
    data["n_anomalies"] = _per_dataset_option(data.get("n_anomalies", 0), _anomaly_count)
    counts = data["n_anomalies"].values() if isinstance(data["n_anomalies"], dict) else [data["n_anomalies"]]
    eval_samples = data.get("eval_samples", 8)
    if isinstance(eval_samples, bool) or not isinstance(eval_samples, int) or eval_samples < 1:
        raise BenchError(f"eval_samples must be an integer >= 1, got {eval_samples!r}")
    if data.get("known_defects") and not any(counts):
        raise BenchError("known_defects is set but n_anomalies is 0; give n_anomalies too")
    data["classes"] = _classes_option(data.get("classes"))
    for key in ("method_params", "attack_params", "dataset_params"):
        if not isinstance(data.get(key, {}), dict):
            raise BenchError(f"{key} must be a mapping of name -> parameters")
        for name, params in data.get(key, {}).items():
            if params is not None and not isinstance(params, dict):
                raise BenchError(f"{key}.{name} must be a mapping of parameters, got {params!r}")
    for key in ("data_root", "out"):  # "~/x" is the home folder's x, here as in a shell
        if data.get(key) is not None:
            data[key] = str(Path(str(data[key])).expanduser())
    data["checks"] = _section(data.get("checks"), CheckConfig, "checks", off={"enabled": False})
    data["certify"] = _section(data.get("certify"), CertifyConfig, "certify", off={"methods": "none"})
    data["execution"] = _section(data.get("execution"), ExecutionConfig, "execution", off={})
    return GridConfig(**data)


def _classes_option(value: Any) -> dict[str, list[str]] | list[str] | None:
    """``all``/None (every class), a flat list (``0,digits:3``), or a mapping dataset -> classes."""
    if value is None:
        return None
    if isinstance(value, dict):
        return {str(ds): (None if v is None or v == "all" else [str(c) for c in _as_list(v)])
                for ds, v in value.items()}
    items = [str(c).strip() for c in _as_list(value)]
    if not any(items):
        raise BenchError(f"classes: no classes given in {value!r}; name some (e.g. digits:3) or 'all'")
    return None if items == ["all"] else [c for c in items if c]


def _anomaly_count(value: Any) -> int:
    if isinstance(value, str) and value.strip().isdigit():  # from the CLI
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise BenchError(f"n_anomalies must be a non-negative integer, got {value!r}")
    return value


def _per_dataset_option(value: Any, parse: Callable[[Any], Any]) -> Any:
    """``parse(value)``, or for a mapping dataset -> value, the mapping of parsed values."""
    if isinstance(value, dict):
        return {str(ds): parse(v) for ds, v in value.items()}
    return parse(value)


def _for_dataset(value: Any, cfg: GridConfig, dataset: str, name: str) -> Any:
    """A per-dataset grid option's value for ``dataset`` (None when a mapping does not name it)."""
    if not isinstance(value, dict):
        return value
    for ds in value:
        if ds not in cfg.datasets and ds not in DATASETS:
            raise unknown_choice(f"dataset in {name}", ds, DATASETS.names())
    return value.get(dataset)


def _section(value: Any, config_cls: type, name: str, off: dict[str, Any]) -> Any:
    """A YAML section given as a mapping, ``true`` (defaults) or ``false`` (switched off)."""
    if isinstance(value, config_cls):
        return value
    if value is None or value is True:
        value = {}
    elif value is False:
        value = off
    if not isinstance(value, dict):
        raise BenchError(f"{name} must be a mapping of options, true or false; got {value!r}")
    return build_config(config_cls, value, name)


def classes_for(cfg: GridConfig, dataset: Any) -> list[str]:
    spec = cfg.classes
    if spec is None:
        return dataset.classes()
    if isinstance(spec, dict):
        for name in spec:
            if name not in cfg.datasets and name not in DATASETS:
                raise unknown_choice("dataset in classes", name, DATASETS.names())
        chosen = spec.get(dataset.name)
        return dataset.classes() if chosen is None else list(dict.fromkeys(dataset.check_class(c) for c in chosen))
    # one flat list: "digits:3" entries are scoped to a dataset, plain entries apply to every dataset
    grid = DATASETS.resolve(cfg.datasets)
    picked = []
    for item in (str(c) for c in spec):
        name, _, cls = item.rpartition(":")
        if name and name not in DATASETS:
            raise unknown_choice(f"dataset in class '{item}'", name, DATASETS.names())
        if name and name not in grid:
            raise BenchError(f"class '{item}' names dataset '{name}', which is not in the grid (datasets: "
                             f"{', '.join(grid)}); add it to --datasets or drop the class")
        if name and name != dataset.name:
            continue
        picked.append(dataset.check_class(cls))
    return list(dict.fromkeys(picked))


def _protocol(cfg: GridConfig) -> tuple[str, float | None]:
    """The protocol and, for the transductive one, its contamination (validated)."""
    if cfg.protocol not in PROTOCOLS:
        raise unknown_choice("protocol", cfg.protocol, PROTOCOLS)
    if cfg.protocol == "one-class":
        return cfg.protocol, None
    try:
        contamination = float(cfg.contamination)
    except (TypeError, ValueError):
        raise BenchError(f"contamination must be a number, got {cfg.contamination!r}") from None
    if not contamination > 0:
        raise BenchError(f"contamination must be > 0, got {cfg.contamination!r}")
    return cfg.protocol, contamination


def expand_grid(cfg: GridConfig) -> list[Job]:
    """All jobs of the grid, ordered dataset → class → seed → method → attack → eps (so one data split
    and one trained model serve consecutive jobs)."""
    methods = METHODS.resolve(cfg.methods)
    datasets = DATASETS.resolve(cfg.datasets)
    attacks = ATTACKS.resolve(cfg.attacks)
    protocol, contamination = _protocol(cfg)
    for name in cfg.method_params:
        METHODS.get(name)
    for name in cfg.attack_params:
        ATTACKS.get(name)
    method_cfgs = {m: config_dict(build_config(METHODS.get(m).Config, cfg.method_params.get(m),
                                               f"method '{m}'")) for m in methods}
    attack_cfgs = {a: config_dict(build_config(ATTACKS.get(a).Config, cfg.attack_params.get(a),
                                               f"attack '{a}'")) for a in attacks}
    for name, params in cfg.dataset_params.items():  # every named dataset's options, even if not in the grid
        DATASETS.get(name).create(params, cfg.data_root)
    jobs: list[Job] = []
    for ds_name in datasets:
        dataset = DATASETS.get(ds_name).create(cfg.dataset_params.get(ds_name), cfg.data_root)
        ds_params, ds_key = freeze_params(cfg.dataset_params.get(ds_name)), dataset.key_params()
        n_anomalies = _for_dataset(cfg.n_anomalies, cfg, ds_name, "n_anomalies") or 0
        known_list = _for_dataset(cfg.known_defects, cfg, ds_name, "known_defects")
        known = tuple(sorted({str(d) for d in known_list})) if known_list and n_anomalies else None
        if known and dataset.defect_kinds:
            for kind in known:
                if kind not in dataset.defect_kinds:
                    raise unknown_choice(f"known defect type of dataset '{ds_name}'", kind, dataset.defect_kinds)
        for cls in classes_for(cfg, dataset):
            for seed in cfg.seeds:
                split = SplitSpec(ds_name, cls, seed, n_anomalies, known, protocol, contamination, ds_params,
                                  cfg.data_root)
                for m in methods:
                    method = METHODS.get(m)
                    model = ModelSpec(m, method.version, method_cfgs[m], dataset.version, split,
                                      trains_on_anomalies=bool(n_anomalies and method.needs_anomalies),
                                      dataset_params=ds_key)
                    draws = cfg.eval_samples if method.stochastic else 1
                    for a in attacks:
                        attack = ATTACKS.get(a)
                        norm = attack.norm
                        eps_list = [0.0] if norm == "none" else (
                            (cfg.eps or {}).get(norm) or list(dataset.default_eps[norm]))
                        for eps in eps_list:
                            jobs.append(Job.build(model, AttackSpec(a, attack.version, attack_cfgs[a], norm,
                                                                    float(eps)), draws))
    return list({job.key: job for job in jobs}.values())  # a job asked for twice is computed once
