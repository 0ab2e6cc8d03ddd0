"""The import rules of ``methods``: a method imports ``core``, ``methods.common`` and the generic PGD of
``attacks.gradient``, never another method, ``datasets`` or ``benchmark``; ``core`` imports nothing above it."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import robust_ad_bench

PACKAGE = Path(robust_ad_bench.__file__).parent
METHODS = PACKAGE / "methods"
ALLOWED_OUTSIDE = ("robust_ad_bench.core", "robust_ad_bench.methods.common", "robust_ad_bench.attacks.gradient")


def imported_modules(path: Path) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.append(node.module)
    return [n for n in names if n.startswith("robust_ad_bench")]


def within(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


@pytest.mark.parametrize("path", sorted(METHODS.rglob("*.py")), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_a_method_imports_only_core_common_and_pgd(path):
    parts = path.relative_to(METHODS).parts
    # a file may import its own folder; methods/__init__.py imports every folder to register the methods
    own = "robust_ad_bench.methods" + ("." + parts[0] if len(parts) > 1 else "")
    for name in imported_modules(path):
        assert within(name, own) or any(within(name, allowed) for allowed in ALLOWED_OUTSIDE), (
            f"{path.relative_to(PACKAGE)} imports {name}")


def test_core_imports_nothing_above_it():
    for path in sorted((PACKAGE / "core").rglob("*.py")):
        for name in imported_modules(path):
            assert within(name, "robust_ad_bench.core"), f"{path.relative_to(PACKAGE)} imports {name}"
