"""One registry per plugin kind (methods, attacks, datasets).

Built-ins register with a decorator when their package is imported; third-party packages register
through the entry-point groups ``robust_ad_bench.<kind>`` (the entry point names a class, or a module
whose import registers its classes); ``load_plugin_file`` imports a single ``.py`` file.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Callable, Iterator
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Generic, TypeVar

from robust_ad_bench.core.errors import BenchError, unknown_choice

T = TypeVar("T", bound=type)


def first_doc_line(cls: type) -> str:
    doc = (cls.__doc__ or "").strip()
    return doc.splitlines()[0].strip() if doc else ""


class Registry(Generic[T]):
    """Maps names to plugin classes of one kind."""

    def __init__(self, kind: str, builtin_package: str) -> None:
        self.kind = kind
        self.group = f"robust_ad_bench.{kind}s"
        self._builtin_package = builtin_package
        self._classes: dict[str, T] = {}
        self._loaded = False

    def register(self, name: str, *, description: str | None = None) -> Callable[[T], T]:
        """Class decorator: ``@METHODS.register("ae")``. Sets ``cls.name`` and ``cls.description``."""

        def decorate(cls: T) -> T:
            if not name or any(c.isspace() or c in ",:" for c in name):
                raise BenchError(f"invalid {self.kind} name '{name}': no spaces, commas or colons")
            known = self._classes.get(name)
            if known is not None and known.__qualname__ != cls.__qualname__:
                raise BenchError(
                    f"{self.kind} '{name}' is registered twice ({known.__module__}.{known.__qualname__} "
                    f"and {cls.__module__}.{cls.__qualname__})"
                )
            cls.name = name
            cls.description = description or first_doc_line(cls)
            self._classes[name] = cls
            return cls

        return decorate

    def _load(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        importlib.import_module(self._builtin_package)
        for ep in entry_points(group=self.group):
            try:
                obj = ep.load()
            except Exception as exc:  # a broken third-party plugin must not break the tool
                print(f"warning: could not load {self.kind} plugin '{ep.name}' ({ep.value}): {exc}",
                      file=sys.stderr)
                continue
            if isinstance(obj, type) and ep.name not in self._classes:
                self.register(ep.name)(obj)

    def names(self) -> list[str]:
        self._load()
        return sorted(self._classes)

    def get(self, name: str) -> T:
        self._load()
        try:
            return self._classes[name]
        except KeyError:
            raise unknown_choice(self.kind, name, self._classes) from None

    def resolve(self, spec: str | list[str] | tuple[str, ...]) -> list[str]:
        """``'all'``, ``'a,b'`` or a list of names → validated names, in the order given."""
        items = [s.strip() for s in spec.split(",")] if isinstance(spec, str) else list(spec)
        items = [s for s in items if s]
        if not items:
            raise BenchError(f"no {self.kind}s given; valid: all, {', '.join(self.names())}")
        if items == ["all"]:
            return [n for n in self.names() if not getattr(self._classes[n], "hidden", False)]
        for item in items:
            self.get(item)
        return list(dict.fromkeys(items))

    def __iter__(self) -> Iterator[tuple[str, T]]:
        self._load()
        return iter(sorted(self._classes.items()))

    def __contains__(self, name: object) -> bool:
        self._load()
        return name in self._classes


METHODS: Registry[Any] = Registry("method", "robust_ad_bench.methods")
ATTACKS: Registry[Any] = Registry("attack", "robust_ad_bench.attacks")
DATASETS: Registry[Any] = Registry("dataset", "robust_ad_bench.datasets")
REGISTRIES = {"methods": METHODS, "attacks": ATTACKS, "datasets": DATASETS}

register_method = METHODS.register
register_attack = ATTACKS.register
register_dataset = DATASETS.register


_PLUGIN_FILES: list[str] = []  # files loaded by load_plugin_file, so worker processes can load them too


def loaded_plugin_files() -> list[str]:
    """The plugin files this process has loaded (absolute paths, in order)."""
    return list(_PLUGIN_FILES)


def load_plugin_file(path: str | Path) -> None:
    """Import one Python file whose decorators register methods, attacks or datasets."""
    path = Path(path).expanduser()
    if path.suffix != ".py" or not path.is_file():
        raise BenchError(f"plugin '{path}' is not a Python file (expected an existing path/to/file.py)")
    module_name = f"robust_ad_bench_plugin_{path.stem}_{abs(hash(str(path.resolve())))}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    for registry in REGISTRIES.values():  # built-ins first, so a plugin may subclass or shadow-check them
        registry._load()
    try:
        spec.loader.exec_module(module)
    except BenchError:
        raise
    except Exception as exc:
        raise BenchError(f"plugin '{path}' failed to import: {type(exc).__name__}: {exc}") from exc
    if str(path.resolve()) not in _PLUGIN_FILES:
        _PLUGIN_FILES.append(str(path.resolve()))
