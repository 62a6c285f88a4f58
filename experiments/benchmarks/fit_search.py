"""The largest input side whose step fits a chip's memory, in few compiles.

A compile for a TPU target takes minutes here, so the search spends compiles carefully. For a
fixed model and batch, the peak memory of a train step grows about linearly with the pixel count,
i.e. with side²: each probe after the first two is the side where the line through the two
closest measurements (peak against side²) meets the budget, rounded down to the grid and kept
strictly inside the bracket (largest side known to fit, smallest known not to); a probe that
fails (no measurement: a compile that ran out of memory) counts as not fitting. It ends when the
bracket is one grid step wide. Used by tpu_aot.py's spatial cases; pure Python, so it is tested
without a compile (tests/experiments/test_fit_search.py).
"""

from __future__ import annotations

import math
from collections.abc import Callable


def _on_grid(side: float, step: int) -> int:
    return int(side // step) * step


def _predicted(measured: dict[int, float], budget: float, low: int, high: int | None, step: int):
    """The side where the line through the two measured sides nearest the bracket meets the
    budget, on the grid and strictly inside (low, high); None with fewer than two measurements."""
    if len(measured) < 2:
        return None
    anchor = high if high is not None else low
    (s0, p0), (s1, p1) = sorted(measured.items(), key=lambda item: abs(item[0] - anchor))[:2]
    slope = (p1 - p0) / (s1 * s1 - s0 * s0)
    if slope <= 0:
        return None
    side = _on_grid(math.sqrt(max(s0 * s0 + (budget - p0) / slope, 0.0)), step)
    side = max(side, low + step)
    return side if high is None else min(side, high - step)


def largest_fitting(
    peak: Callable[[int], float | None],
    budget: float,
    *,
    step: int = 64,
    first: tuple[int, int] = (512, 1024),
    limit: int = 8192,
) -> tuple[int, dict[int, float | None]]:
    """(the largest side on the `step` grid with `peak(side) <= budget` — 0 if none — and every
    probe's peak). `peak(side)` compiles and returns the peak bytes, or None if the compile
    failed. Assumes the peak grows with the side; probes at most `limit`."""
    probes: dict[int, float | None] = {}
    low, high = 0, None  # low fits (0: nothing yet); high does not (None: nothing yet)

    def probe(side: int) -> None:
        nonlocal low, high
        probes[side] = peak(side)
        fits = probes[side] is not None and probes[side] <= budget
        if fits:
            low = max(low, side)
        else:
            high = side if high is None else min(high, side)

    for side in first:
        if high is None or side < high:
            probe(side)
    while high is None or high - low > step:
        measured = {s: p for s, p in probes.items() if p is not None}
        side = _predicted(measured, budget, low, high, step)
        if side is None:  # not enough measurements: double up, or halve the bracket
            side = 2 * low if high is None else _on_grid((low + high) // 2, step)
        if high is None and side > limit:
            break
        if side in probes:  # the line predicts a side already tried: take the bracket's middle
            side = _on_grid((low + (high or 2 * low)) // 2, step)
            if side in probes or side <= low:
                break
        probe(side)
    return low, probes
