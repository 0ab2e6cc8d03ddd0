"""The package's layers (CONTRIBUTING.md): each imports only what stands below it.

    benchmark                      grid, jobs and keys, runner, executors, store, evaluation, reports, CLI
    methods | attacks | datasets   plugins, side by side: none imports another's internals, except that
                                   methods may use the generic PGD (attacks.gradient) for adversarial training
    core                           errors, params, registry, the Detector / Attack / Dataset contracts

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


def test_no_layer_imports_one_above_it():
    assert violations(PACKAGE) == []


def test_the_checker_flags_each_kind_of_violation(tmp_path):
    files = {
        "core/registry.py": "from robust_ad_bench.benchmark.store import Store\n",  # ground imports the top
        "methods/knn.py": "import robust_ad_bench.datasets.digits\n",  # a plugin imports a sibling plugin
        "methods/cobra/detector.py": "from robust_ad_bench.methods.bgad import flow\n",  # method imports method
        "attacks/pgd.py": "def f():\n    from robust_ad_bench.methods import advrad\n",  # hidden in a function
        "__init__.py": "from robust_ad_bench.benchmark import cli\n",  # the public API reaches up
        "methods/ae.py": "from robust_ad_bench.attacks.gradient import pgd\n",  # allowed
        "benchmark/runner.py": "from robust_ad_bench.methods.common import training\n",  # allowed
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
        "core/registry.py: robust_ad_bench.benchmark.store",
        "methods/cobra/detector.py: robust_ad_bench.methods.bgad",
        "methods/knn.py: robust_ad_bench.datasets.digits",
    ]
