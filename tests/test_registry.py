import sys
import types
from importlib.metadata import EntryPoint
from pathlib import Path

import pytest

from robust_ad_bench.core import registry
from robust_ad_bench.core.errors import BenchError
from robust_ad_bench.core.registry import ATTACKS, DATASETS, METHODS, Registry, load_plugin_file
from robust_ad_bench.methods.baselines.knn import KNN

PLUGIN = Path(__file__).parent / "plugins" / "failing_methods.py"


def test_builtins_are_registered_with_descriptions():
    assert {"ae", "ae-at", "deep-svdd", "knn"} <= set(METHODS.names())
    assert {"clean", "fgsm", "fgsm-l2", "pgd", "pgd-l2"} <= set(ATTACKS.names())
    assert {"digits", "textures"} <= set(DATASETS.names())
    for reg in (METHODS, ATTACKS, DATASETS):
        for name, cls in reg:
            assert cls.name == name and cls.description, name


def test_unknown_name_lists_choices_and_closest_match():
    with pytest.raises(BenchError) as err:
        ATTACKS.get("pdg")
    message = str(err.value)
    assert "unknown attack 'pdg'" in message and "fgsm" in message and "did you mean 'pgd'" in message
    assert "\n" not in message


def test_resolve_all_and_lists():
    assert METHODS.resolve("knn, ae") == ["knn", "ae"]
    assert "knn" in METHODS.resolve("all")
    with pytest.raises(BenchError, match="unknown method 'nope'"):
        METHODS.resolve("knn,nope")


def test_plugin_file_registers_and_hidden_methods_stay_out_of_all():
    load_plugin_file(PLUGIN)
    assert "broken-fit" in METHODS and "nan-score" in METHODS
    assert "broken-fit" not in METHODS.resolve("all")


def test_bad_plugin_paths(tmp_path):
    with pytest.raises(BenchError, match="not a Python file"):
        load_plugin_file(tmp_path / "missing.py")
    bad = tmp_path / "bad_plugin.py"
    bad.write_text("raise ImportError('no such thing')\n")
    with pytest.raises(BenchError, match="failed to import: ImportError"):
        load_plugin_file(bad)


def test_entry_points_register_third_party_classes(monkeypatch):
    module = types.ModuleType("third_party_ad")

    class ThirdParty(KNN):
        """A method shipped by another package."""

    module.ThirdParty = ThirdParty
    monkeypatch.setitem(sys.modules, "third_party_ad", module)
    ep = EntryPoint(name="third-party", value="third_party_ad:ThirdParty", group="robust_ad_bench.methods")
    monkeypatch.setattr(registry, "entry_points", lambda group: [ep] if group == ep.group else [])
    fresh = Registry("method", "robust_ad_bench.methods")
    assert fresh.get("third-party") is ThirdParty
    assert ThirdParty.description == "A method shipped by another package."


def test_duplicate_name_is_an_error():
    reg = Registry("method", "robust_ad_bench.methods")

    class A:
        """a"""

    class B:
        """b"""

    reg.register("x")(A)
    with pytest.raises(BenchError, match="registered twice"):
        reg.register("x")(B)
