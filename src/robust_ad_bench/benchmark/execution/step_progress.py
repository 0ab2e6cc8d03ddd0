"""Steps done, steps left and the time left of a running grid (what the progress display shows).

The time left is the estimated seconds of the steps left (``step_costs.estimate``), corrected by how the
measured durations of the steps done so far compare with their estimates, divided by the run's workers.
Steps without an estimate (a plugin method) are counted at the mean measured duration of the steps done;
with no estimate at all the time left comes from the rate alone (elapsed time per step done). A model that
ends early (its training or a job failed, or another run finished it) drops its steps not done.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pandas as pd

from robust_ad_bench.benchmark.execution.step_costs import PlannedStep, duration, estimate, load_reference

PRIOR_WEIGHT = 0.1  # the estimate counts as this share of the whole run's estimated time of measured evidence


class StepProgress:
    """Counts of a run's steps and its estimated time left; ``estimates``: seconds per step id (None: none)."""

    def __init__(self, steps: list[PlannedStep], estimates: dict[tuple[str, str], float | None] | None = None,
                 workers: int = 1, clock: Callable[[], float] = time.monotonic) -> None:
        self.steps = {s.id: s for s in steps}
        self.estimates = {i: (estimates or {}).get(i) for i in self.steps}
        self.workers = max(1, workers)
        self.clock = clock
        self.started = clock()
        self.done: dict[tuple[str, str], float | None] = {}  # step id -> measured seconds (None: not measured)
        self.dropped: set[tuple[str, str]] = set()

    @property
    def total(self) -> int:
        return len(self.steps) - len(self.dropped)

    @property
    def finished(self) -> int:
        return len(self.done)

    @property
    def left(self) -> int:
        return self.total - self.finished

    def step_done(self, kind: str, key: str, seconds: float | None) -> None:
        if (kind, key) in self.steps and (kind, key) not in self.dropped:
            self.done[(kind, key)] = seconds

    def model_done(self, train_key: str) -> None:
        """The model's steps not done now will not run in this run."""
        self.dropped |= {i for i, s in self.steps.items() if s.train_key == train_key and i not in self.done}

    def _left_ids(self) -> list[tuple[str, str]]:
        return [i for i in self.steps if i not in self.done and i not in self.dropped]

    def correction(self) -> float:
        """Measured over estimated seconds of the steps done that have both, shrunk towards 1 while few are
        done (the estimate weighs as ``PRIOR_WEIGHT`` of the run's estimated seconds)."""
        pairs = [(m, self.estimates[i]) for i, m in self.done.items()
                 if m is not None and self.estimates.get(i) is not None]
        prior = PRIOR_WEIGHT * sum(v for v in self.estimates.values() if v is not None)
        measured, estimated = sum(m for m, _ in pairs), sum(e for _, e in pairs)  # type: ignore[misc]
        return (measured + prior) / (estimated + prior) if estimated + prior > 0 else 1.0

    def seconds_left(self) -> float | None:
        """Estimated wall seconds to finish; None while nothing tells (no estimate and no step done)."""
        left = self._left_ids()
        if not left:
            return 0.0
        known = [self.estimates[i] for i in left if self.estimates[i] is not None]
        unknown = len(left) - len(known)
        measured = [m for m in self.done.values() if m is not None]
        if not known:  # the rate alone: elapsed wall time per step done
            if not self.done:
                return None
            return (self.clock() - self.started) / len(self.done) * len(left)
        seconds = sum(known) * self.correction()  # type: ignore[arg-type]
        if unknown:
            if not measured:
                return None
            seconds += unknown * sum(measured) / len(measured)
        return seconds / self.workers

    def text(self) -> str:
        """``steps 12/40, 28 left, about 3 min 10 s to go``."""
        left = self.seconds_left()
        eta = "time left unknown yet" if left is None else f"about {duration(left)} to go"
        return f"steps {self.finished}/{self.total}, {self.left} left, {eta}"


def run_progress(steps: list[PlannedStep], stored: pd.DataFrame, workers: int, threads: int) -> StepProgress:
    """The progress of a run of ``steps`` on ``workers`` with ``threads`` each, estimated from the folder's
    ``stored`` step durations or the packaged reference (then a short calibration runs, only when the stored
    durations do not cover them)."""
    found = estimate(steps, stored, load_reference(), workers, threads)
    return StepProgress(steps, found.seconds, workers)
