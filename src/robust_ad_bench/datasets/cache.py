"""Decoded images, cached so that the jobs of a grid do not decode the same files again.

A loader hands ``cached`` a description of what it decodes (dataset, version, category, transforms, and
a fingerprint of the files: names, sizes and modification times) and a function that decodes it into a
dict of numpy arrays (images stay uint8 until a split is made). The result is kept:

- in this process: the last ``MEMORY_ENTRIES`` results (a grid runs category after category), and the
  ``BenchError`` of a decoding that failed, so the other models of a category with a corrupt file fail at
  once instead of decoding it again;
- on disk, when a cache folder is given (the ``cache_dir`` option or ``$ROBUST_AD_BENCH_CACHE``): one
  ``.npz`` per entry, written atomically and read with ``allow_pickle=False``, which worker processes of a
  parallel executor share. Changed files change the fingerprint, hence the entry.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import OrderedDict
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

from robust_ad_bench.core.errors import BenchError

CACHE_ENV = "ROBUST_AD_BENCH_CACHE"
MEMORY_ENTRIES = 2
Arrays = dict[str, np.ndarray]
_memory: OrderedDict[str, Arrays | BenchError] = OrderedDict()


def fingerprint(paths: Iterable[Path], base: Path) -> list[tuple[str, int, int]]:
    """Relative name, size and modification time of each file (cheap: no file is read)."""
    out = []
    for path in paths:
        stat = path.stat()
        out.append((path.relative_to(base).as_posix(), stat.st_size, stat.st_mtime_ns))
    return out


def cache_folder(option: str = "") -> Path | None:
    folder = option or os.environ.get(CACHE_ENV, "")
    return Path(folder).expanduser() if folder else None


def entry_key(description: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(description, sort_keys=True, default=str).encode()).hexdigest()[:24]


def cached(description: dict[str, Any], decode: Callable[[], Arrays], folder: Path | None = None) -> Arrays:
    """The arrays of ``description``: from memory, from the disk cache, or decoded now (and kept)."""
    key = entry_key(description)
    if key in _memory:
        _memory.move_to_end(key)
        value = _memory[key]
        if isinstance(value, BenchError):
            raise BenchError(str(value))
        return value
    path = folder / f"{description.get('dataset', 'data')}-{key}.npz" if folder else None
    arrays = _read(path) if path is not None else None
    if arrays is None:
        try:
            arrays = decode()
        except BenchError as exc:
            _remember(key, exc)
            raise
        if path is not None:
            _write(path, arrays)
    _remember(key, arrays)
    return arrays


def _remember(key: str, value: Arrays | BenchError) -> None:
    _memory[key] = value
    _memory.move_to_end(key)
    while len(_memory) > MEMORY_ENTRIES:
        _memory.popitem(last=False)


def clear() -> None:
    """Forget what this process has cached (tests)."""
    _memory.clear()


def _read(path: Path) -> Arrays | None:
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            return {name: data[name] for name in data.files}
    except (OSError, ValueError, EOFError):  # a broken cache file: decode again (and overwrite it)
        return None


def _write(path: Path, arrays: Arrays) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.stem}.tmp{os.getpid()}.npz")
        np.savez(tmp, **arrays)
        os.replace(tmp, path)  # atomic: a reader never sees half a file
    except OSError:  # an unwritable cache folder costs speed, not results
        pass
