"""Where and how jobs run: the torch device, seeds derived from keys, the output folder."""

from __future__ import annotations

import random
import tempfile
from pathlib import Path

import numpy as np
import torch

from robust_ad_bench.core.errors import BenchError


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name not in ("cpu", "cuda") and not name.startswith("cuda:"):
        raise BenchError(f"unknown device '{name}'; valid: auto, cpu, cuda, cuda:N")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise BenchError(f"device '{name}' asked for, but torch sees no CUDA device; use --device cpu")
    return torch.device(name)


def key_seed(key: str) -> int:
    """A seed derived from a key (a hex digest)."""
    return int(key[:8], 16)


def seed_everything(key: str) -> None:
    """Seed torch, numpy and random from a key, so each job is repeatable on its own."""
    seed = key_seed(key)
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)


def ensure_writable(folder: str | Path) -> Path:
    """Create the output folder and check that a file can be written in it."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-test-"):
            pass
    except OSError as exc:
        raise BenchError(f"cannot write to output folder '{folder}': {exc.strerror or exc}") from exc
    return folder
