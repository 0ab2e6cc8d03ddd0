"""The README's plugin example, exactly as printed: it imports only the public API, loads with
``--plugin`` and runs through a grid with the built-in methods."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import robust_ad_bench
from robust_ad_bench.benchmark.cli import main
from robust_ad_bench.benchmark.results.store import Store

README = Path(__file__).resolve().parent.parent / "README.md"


def plugin_example() -> str:
    section = README.read_text().split("## Adding a method", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_example_imports_only_the_public_api():
    code = plugin_example()
    imported = [(n.module, [a.name for a in n.names]) for n in ast.walk(ast.parse(code))
                if isinstance(n, ast.ImportFrom) and n.module and n.module.startswith("robust_ad_bench")]
    assert imported and all(module == "robust_ad_bench" for module, _ in imported)
    assert all(name in robust_ad_bench.__all__ for _, names in imported for name in names)


def test_the_example_runs_as_a_plugin(tmp_path, capsys):
    plugin = tmp_path / "mean_distance.py"
    plugin.write_text(plugin_example())
    code = main(["run", "--plugin", str(plugin), "--methods", "mean-distance,knn", "--datasets", "digits",
                 "--classes", "0", "--attacks", "clean,pgd", "--eps", "32/255", "--no-checks",
                 "--out", str(tmp_path / "out")])
    assert code == 0, capsys.readouterr()
    with Store(tmp_path / "out") as store:
        results = store.results()
    ours = results[results["method"] == "mean-distance"]
    assert len(ours) == 2 and (ours["status"] == "ok").all()
    clean, attacked = ours.set_index("attack")["auroc"].reindex(["clean", "pgd"])
    assert clean > 0.8 and attacked < clean  # a working detector, and an attack that hurts it
