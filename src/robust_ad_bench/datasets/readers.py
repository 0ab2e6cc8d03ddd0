"""Readers of torchvision's on-disk formats, without unpickling anything untrusted.

They give ``torchvision.datasets``' arrays exactly (``tests/test_readers_torchvision.py``) and are kept beside
it because its CIFAR reader runs ``pickle.load`` on the file, insists on the official MD5 sums, reads no
gzipped idx files and has no CIFAR-100 superclass labels (CONTRIBUTING.md, hand-written pieces).

- CIFAR python batches are pickles whose ``data`` is a numpy uint8 array. They are read by a restricted
  ``pickle.Unpickler`` whose ``find_class`` refuses every global except numpy's array reconstruction
  (``numpy.core.multiarray._reconstruct``, ``numpy.ndarray``, ``numpy.dtype``) and ``_codecs.encode``
  (how Python 3 writes byte strings at protocol 2); for those it returns inert stand-ins of our own that
  only record their arguments. The array is then built by us with ``np.frombuffer`` from the recorded
  bytes, shape and dtype (plain numeric dtypes only). No function of numpy or of the file ever runs.
- MNIST / Fashion-MNIST idx files (plain or gzip): header checked, data viewed with ``np.frombuffer``.
- SVHN ``.mat`` files through ``scipy.io.loadmat``.
"""

from __future__ import annotations

import gzip
import pickle
import re
import struct
from pathlib import Path
from typing import Any

import numpy as np

from robust_ad_bench.core.errors import BenchError

_ARRAY_GLOBALS = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct")}
_NUMERIC_DTYPE = re.compile(r"[<>|=]?[uif][1248]")


class _ArrayStub:
    """Stands in for a numpy array while unpickling: records the state that ``BUILD`` hands it."""

    state: tuple[Any, ...] | None = None

    def __setstate__(self, state: tuple[Any, ...]) -> None:
        self.state = state


class _DTypeStub:
    def __init__(self, descr: Any, *_: Any) -> None:
        self.descr = descr.decode("latin1") if isinstance(descr, bytes) else str(descr)
        self.order = ""

    def __setstate__(self, state: tuple[Any, ...]) -> None:
        order = state[1] if len(state) > 1 else ""
        self.order = order.decode("latin1") if isinstance(order, bytes) else str(order or "")


class _NDArrayMarker:
    pass


def _reconstruct(*_: Any) -> _ArrayStub:
    return _ArrayStub()


def _encode(text: str, encoding: str = "latin1") -> bytes:
    if encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError(f"refusing _codecs.encode with encoding {encoding!r}")
    return text.encode("latin1")


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ARRAY_GLOBALS:
            return _reconstruct
        if (module, name) == ("numpy", "ndarray"):
            return _NDArrayMarker
        if (module, name) == ("numpy", "dtype"):
            return _DTypeStub
        if (module, name) == ("_codecs", "encode"):
            return _encode
        raise pickle.UnpicklingError(f"refusing to load global {module}.{name}")


def _to_array(stub: _ArrayStub, path: Path) -> np.ndarray:
    state = stub.state
    if not state or len(state) != 5:
        raise BenchError(f"cannot read {path}: unexpected array state in the pickle")
    _, shape, dtype, fortran, raw = state
    if not isinstance(dtype, _DTypeStub) or not _NUMERIC_DTYPE.fullmatch(dtype.order + dtype.descr.lstrip("<>|=")):
        raise BenchError(f"cannot read {path}: array of unsupported dtype in the pickle")
    if isinstance(raw, str):
        raw = raw.encode("latin1")
    if fortran or not isinstance(raw, bytes):
        raise BenchError(f"cannot read {path}: unsupported array layout in the pickle")
    dt = np.dtype((dtype.order if dtype.order in "<>" else "") + dtype.descr.lstrip("<>|="))
    shape = tuple(int(s) for s in shape)
    if len(raw) != int(np.prod(shape)) * dt.itemsize:
        raise BenchError(f"cannot read {path}: array data of {len(raw)} bytes does not fill shape {shape}")
    return np.frombuffer(raw, dtype=dt).reshape(shape)


def _clean(value: Any, path: Path) -> Any:
    """Stubs → arrays, byte-string keys and values → str, recursively."""
    if isinstance(value, _ArrayStub):
        return _to_array(value, path)
    if isinstance(value, bytes):
        return value.decode("latin1")
    if isinstance(value, dict):
        return {_clean(k, path): _clean(v, path) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v, path) for v in value]
    return value


def load_cifar_pickle(path: Path) -> dict[str, Any]:
    """One CIFAR python batch as a dict with str keys (``data`` a uint8 array)."""
    try:
        with open(path, "rb") as f:
            data = _RestrictedUnpickler(f, encoding="bytes").load()
    except OSError as exc:
        raise BenchError(f"cannot read {path}: {exc.strerror or exc}") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, IndexError, AttributeError) as exc:
        raise BenchError(f"cannot read {path}: not a CIFAR python batch ({exc})") from None
    if not isinstance(data, dict):
        raise BenchError(f"cannot read {path}: not a CIFAR python batch (a {type(data).__name__})")
    return _clean(data, path)


def cifar_images(batch: dict[str, Any], path: Path, label_key: str) -> tuple[np.ndarray, np.ndarray]:
    """``data`` (N×3072, channel-major rows) → N×3×32×32 uint8, and the labels under ``label_key``."""
    data, labels = batch.get("data"), batch.get(label_key)
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise BenchError(f"cannot read {path}: 'data' is not an N×3072 uint8 array")
    if not isinstance(labels, list) or len(labels) != len(data):
        raise BenchError(f"cannot read {path}: '{label_key}' is not a list of {len(data)} labels")
    return data.reshape(-1, 3, 32, 32), np.asarray(labels, dtype=np.int64)


def read_idx(path: Path) -> np.ndarray:
    """An idx file of unsigned bytes (MNIST format), ``.gz`` or plain."""
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise BenchError(f"cannot read {path}: {exc}") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise BenchError(f"cannot read {path}: not an idx file of unsigned bytes")
    ndim = raw[3]
    if len(raw) < 4 + 4 * ndim:
        raise BenchError(f"cannot read {path}: truncated idx header")
    shape = struct.unpack(f">{ndim}I", raw[4:4 + 4 * ndim])
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(shape)):
        raise BenchError(f"cannot read {path}: {data.size} bytes of data for shape {shape} (truncated?)")
    return data.reshape(shape)


def read_svhn_mat(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """N×3×32×32 uint8 images and digit labels 0-9 (SVHN stores digit 0 as 10)."""
    from scipy.io import loadmat

    try:
        mat = loadmat(path)
    except (OSError, ValueError, TypeError, NotImplementedError) as exc:
        raise BenchError(f"cannot read {path}: {exc}") from None
    images, labels = mat.get("X"), mat.get("y")
    if not isinstance(images, np.ndarray) or images.ndim != 4 or images.shape[:3] != (32, 32, 3):
        raise BenchError(f"cannot read {path}: 'X' is not a 32×32×3×N array")
    if not isinstance(labels, np.ndarray) or labels.size != images.shape[3]:
        raise BenchError(f"cannot read {path}: 'y' does not hold one label per image")
    labels = labels.reshape(-1).astype(np.int64)
    return np.ascontiguousarray(images.transpose(3, 2, 0, 1).astype(np.uint8)), np.where(labels == 10, 0, labels)
