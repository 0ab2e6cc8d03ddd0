"""A worker process of ``--executor local``:
``python -m robust_ad_bench.benchmark.execution.worker FD THREADS [PLUGIN...]``.

It runs the steps the driver sends through the socket ``FD`` (a pickled ``Step`` per message; ``None``
ends it) one at a time and answers each with its event, after a first "ready" once everything is
imported. It is its own program (never a fork or a re-import of the driver's main module) in its own
session, so the terminal's Ctrl-C reaches only the driver, and on Linux it dies with the driver.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
from multiprocessing.connection import Connection

READY = "ready"
PR_SET_PDEATHSIG = 1


def die_with_parent(parent: int) -> None:
    """Linux: SIGKILL this process when the driver dies, so a killed run leaves no worker behind."""
    with contextlib.suppress(AttributeError, OSError):  # elsewhere: it ends when the driver's socket closes
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the driver died before prctl
        os._exit(1)


def main(argv: list[str]) -> None:
    fd, threads, plugins = int(argv[0]), int(argv[1]), argv[2:]
    die_with_parent(int(os.environ.get("ROBUST_AD_BENCH_DRIVER_PID", os.getppid())))
    from robust_ad_bench.benchmark.execution.steps import prepare_worker, release_free_memory, run_step  # torch: late
    from robust_ad_bench.core.registry import REGISTRIES

    conn = Connection(fd)
    prepare_worker(threads, plugins)
    for registry in REGISTRIES.values():
        registry.names()  # import every method, attack and dataset now, not inside the first step
    conn.send(READY)
    while True:
        try:
            step = conn.recv()
        except EOFError:  # the driver is gone
            return
        if step is None:
            return
        event = run_step(step)[0]
        release_free_memory()
        conn.send(event)


if __name__ == "__main__":
    main(sys.argv[1:])
