"""A distinct (colour, marker) per method, so that plots of 14 or more methods stay legible: 20 colours
(tab20) and 7 markers; 7 is prime to 20, so the pairs repeat only after 140 methods."""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib

COLOURS = tuple(matplotlib.colormaps["tab20"].colors)
MARKERS = ("o", "s", "^", "D", "v", "P", "X")


def method_styles(methods: Sequence[str]) -> dict[str, tuple[tuple[float, ...], str]]:
    """Method -> (colour, marker), in the given order (sort the methods for styles that are stable across
    plots)."""
    return {m: (COLOURS[i % len(COLOURS)], MARKERS[i % len(MARKERS)]) for i, m in enumerate(methods)}
