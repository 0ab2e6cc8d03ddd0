"""Where and how jobs run: the torch device, seeds derived from keys, the output folder."""

from __future__ import annotations

import random
import signal
import tempfile
import threading
from collections.abc import Callable
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


class GracefulStop:
    """Ctrl-C handling for a run: the first SIGINT asks the run to stop after the jobs in flight (calling
    ``on_first``, and making this object true); the second stops at once (``KeyboardInterrupt``).
    Only the main thread can install it; elsewhere it does nothing."""

    def __init__(self, on_first: Callable[[], None] = lambda: None) -> None:
        self.on_first = on_first
        self.requested = False
        self.previous: object = None

    def __call__(self) -> bool:
        return self.requested

    def _handle(self, signum: int, frame: object) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        self.on_first()

    def __enter__(self) -> GracefulStop:
        if threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)
