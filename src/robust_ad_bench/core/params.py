"""Hyper-parameters as dataclasses: build them from plain dicts (YAML, CLI) with clear errors."""

from __future__ import annotations

import dataclasses
import typing
from typing import Any, TypeVar

from robust_ad_bench.core.errors import BenchError, unknown_choice

C = TypeVar("C")


def build_config(config_cls: type[C], params: dict[str, Any] | None, owner: str) -> C:
    """``config_cls(**params)`` with unknown names and wrongly typed values reported by name."""
    params = dict(params or {})
    fields = {f.name: f for f in dataclasses.fields(config_cls)}  # type: ignore[arg-type]
    hints = typing.get_type_hints(config_cls)
    for key, value in params.items():
        if key not in fields:
            raise unknown_choice(f"parameter of {owner}", key, fields)
        params[key] = _coerce(hints.get(key), value, f"{owner}.{key}")
    try:
        return config_cls(**params)
    except (TypeError, ValueError) as exc:
        raise BenchError(f"bad parameters for {owner}: {exc}") from exc


def _coerce(hint: Any, value: Any, where: str) -> Any:
    """Accept ints for floats and lists for tuples; reject other type mismatches."""
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint in (int, float, str, bool) and not (
        isinstance(value, hint) and not (hint is int and isinstance(value, bool))
    ):
        raise BenchError(f"{where} must be {hint.__name__}, got {value!r}")
    if typing.get_origin(hint) is tuple and isinstance(value, list):
        return tuple(value)
    return value


def config_dict(config: Any) -> dict[str, Any]:
    """A JSON-friendly dict of a config dataclass (tuples become lists)."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(config).items()}
