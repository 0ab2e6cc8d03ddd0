"""User-facing errors: the CLI prints them as one line, never as a traceback."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class BenchError(Exception):
    """An error in the user's input or environment, with a message that says how to fix it."""


def unknown_choice(kind: str, value: object, choices: Iterable[str]) -> BenchError:
    """An error naming the bad value, the valid choices and the closest match."""
    choices = sorted(choices)
    close = difflib.get_close_matches(str(value), choices, n=1, cutoff=0.5)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    return BenchError(f"unknown {kind} '{value}'; valid: {', '.join(choices) or '(none)'}{hint}")
