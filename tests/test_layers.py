"""The package's layers (CONTRIBUTING.md): each imports only what stands below it.

    benchmark                      the CLI, the Python API and the dry run, on its stages (below)
    methods | attacks | datasets   plugins, side by side: none imports another's internals, except that
                                   methods may use the generic PGD (attacks.gradient) for adversarial training
    core                           errors, params, registry, the Detector / Attack / Dataset contracts

Inside ``benchmark`` the stages of a run are sub-packages, each importing only earlier stages (and the
layers below); the modules at the top of ``benchmark`` (CLI, API, dry run) may use every stage:

    papers       a paper's configs and reported figures, reproduce
    execution    tasks, steps, scheduler, executors, claims, model cache, runner
    evaluation   one trained model's jobs, checks, worst cases and certificates
    results      the store and what reads it: cells, leaderboard, audit, defects, plots, report
    grid         config, validation, jobs and keys, execution options, seeds and devices
    protocol     metrics, the checks and their statistics, settling, worst-case choice, certification

A method never imports another method (methods/common holds what they share). The checker reads import
statements with ``ast`` (function-level imports included), so it needs no import side effects.
"""

from __future__ import annotations

import ast
from pathlib import Path

import robust_ad_bench

PACKAGE = Path(robust_ad_bench.__file__).parent
LEVEL = {"core": 0, "methods": 1, "attacks": 1, "datasets": 1, "benchmark": 2}
ALLOWED_SIDEWAYS = {("methods", "attacks.gradient")}  # (importer layer, imported module prefix)
STAGES = ("protocol", "grid", "results", "evaluation", "execution", "papers")  # benchmark's, in order


def imported_modules(path: Path) -> list[str]:
    """Every ``robust_ad_bench...`` module that ``path`` imports."""
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
    return [n for n in names if n == "robust_ad_bench" or n.startswith("robust_ad_bench.")]


def violations(root: Path) -> list[str]:
    """Imports in the package at ``root`` that break the layering, as ``file: imported module`` lines."""
    found = []
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root).parts
        layer = parts[0] if len(parts) > 1 else "api"  # the top-level __init__: the public API
        for module in imported_modules(path):
            target = module.split(".")[1:]
            if not target:
                found.append(f"{path.relative_to(root)}: {module} (import the layer, not the package)")
                continue
            other, dotted = target[0], ".".join(target)
            if layer == "api":  # the public API: the contracts, and the Python entry point (imported lazily)
                ok = other == "core" or dotted == "benchmark.api"
            elif other not in LEVEL or layer not in LEVEL:
                ok = True  # configs and other data folders
            elif other == layer:
                # within methods: a method's folder may use its own modules and methods/common only
                ok = (layer != "methods" or len(parts) < 3 or len(target) < 2
                      or target[1] in (parts[1], "common"))
            else:
                ok = LEVEL[other] < LEVEL[layer] or any(
                    layer == a and dotted.startswith(b) for a, b in ALLOWED_SIDEWAYS)
            if not ok:
                found.append(f"{path.relative_to(root)}: {module}")
    return found


def stage_violations(root: Path) -> list[str]:
    """Imports between ``benchmark``'s stages that reach a later stage or the modules on top of them."""
    found = []
    bench = root / "benchmark"
    for path in sorted(bench.rglob("*.py")):
        parts = path.relative_to(bench).parts
        if len(parts) < 2:
            continue  # the modules on top (CLI, API, dry run) may use every stage
        stage = STAGES.index(parts[0]) if parts[0] in STAGES else None
        for module in imported_modules(path):
            target = module.split(".")
            if target[:2] != ["robust_ad_bench", "benchmark"]:
                continue
            other = target[2] if len(target) > 2 else ""
            ok = stage is not None and other in STAGES and STAGES.index(other) <= stage
            if not ok:
                found.append(f"benchmark/{'/'.join(parts)}: {module}")
    return found


def test_no_layer_imports_one_above_it():
    assert violations(PACKAGE) == []


def test_no_stage_imports_a_later_one():
    assert stage_violations(PACKAGE) == []
    assert {p.name for p in (PACKAGE / "benchmark").iterdir() if p.is_dir() and p.name != "__pycache__"} == set(STAGES)


def test_the_stage_checker_flags_each_rule(tmp_path):
    """One import per rule reaching up (each flagged), and the allowed directions (none flagged)."""
    bench = "robust_ad_bench.benchmark"
    files = {
        "benchmark/protocol/metrics.py": f"from {bench}.grid.jobs import Job\n",  # protocol -> grid
        "benchmark/grid/jobs.py": f"from {bench}.results.store import Store\n",  # grid -> results
        "benchmark/results/leaderboard.py": f"from {bench}.evaluation import scoring\n",  # results -> evaluation
        "benchmark/evaluation/scoring.py": f"def f():\n    from {bench}.execution.steps import run_step\n",
        "benchmark/execution/runner.py": f"from {bench}.papers.catalog import load_paper\n",  # execution -> papers
        "benchmark/papers/reproduce.py": f"from {bench}.cli import main\n",  # a stage -> the top
        "benchmark/grid/config.py": f"from {bench} import cli\n",  # the package itself, for its top modules
        "benchmark/results/cells.py": f"from {bench}.protocol.worst_case import choose\n"
                                      f"from {bench}.grid.jobs import Job\nfrom {bench}.results.store import Store\n",
        "benchmark/cli.py": f"from {bench}.papers.reproduce import plan\n",  # the top: allowed
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert stage_violations(tmp_path) == [
        f"benchmark/evaluation/scoring.py: {bench}.execution.steps",
        f"benchmark/execution/runner.py: {bench}.papers.catalog",
        f"benchmark/grid/config.py: {bench}",
        f"benchmark/grid/jobs.py: {bench}.results.store",
        f"benchmark/papers/reproduce.py: {bench}.cli",
        f"benchmark/protocol/metrics.py: {bench}.grid.jobs",
        f"benchmark/results/leaderboard.py: {bench}.evaluation",
    ]


def test_the_checker_flags_each_kind_of_violation(tmp_path):
    files = {
        "core/registry.py": "from robust_ad_bench.benchmark.results.store import Store\n",  # ground imports the top
        "methods/knn.py": "import robust_ad_bench.datasets.digits\n",  # a plugin imports a sibling plugin
        "methods/cobra/detector.py": "from robust_ad_bench.methods.bgad import flow\n",  # method imports method
        "attacks/pgd.py": "def f():\n    from robust_ad_bench.methods import advrad\n",  # hidden in a function
        "__init__.py": "from robust_ad_bench.benchmark import cli\n",  # the public API reaches up
        "methods/ae.py": "from robust_ad_bench.attacks.gradient import pgd\n",  # allowed
        "benchmark/execution/runner.py": "from robust_ad_bench.methods.common import training\n",  # allowed
        "methods/bgad/detector.py": "from robust_ad_bench.methods.bgad.flow import Flow\n"
                                    "from robust_ad_bench.methods.common.training import fit\n",  # allowed
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    found = violations(tmp_path)
    assert found == [
        "__init__.py: robust_ad_bench.benchmark",
        "attacks/pgd.py: robust_ad_bench.methods",
        "core/registry.py: robust_ad_bench.benchmark.results.store",
        "methods/cobra/detector.py: robust_ad_bench.methods.bgad",
        "methods/knn.py: robust_ad_bench.datasets.digits",
    ]
