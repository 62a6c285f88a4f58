"""experiments/benchmarks/fit_search.py: the search for the largest side that fits finds the
true answer on memory curves of the train step's shape (affine in side², with a little
curvature and with compile failures past a size), and spends few probes doing so."""

import os
import sys

import pytest

sys.path.insert(
    0,
    os.path.join(
        os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
        "experiments",
        "benchmarks",
    ),
)
import fit_search  # noqa: E402

GIB = 2**30


def _truth(peak, budget, step=64, limit=8192):
    return max((s for s in range(step, limit + 1, step) if peak(s) <= budget), default=0)


@pytest.mark.parametrize(
    "fixed_gib, per_megapixel_gib, curvature",
    [(0.5, 6.0, 0.0), (1.0, 2.5, 0.0), (0.3, 1.1, 0.02), (2.0, 0.4, 0.05), (14.0, 4.0, 0.0)],
)
def test_finds_the_largest_fitting_side_in_few_probes(fixed_gib, per_megapixel_gib, curvature):
    def peak(side):
        megapixels = side * 2 * side / 1e6
        return (fixed_gib + per_megapixel_gib * megapixels * (1 + curvature * megapixels)) * GIB

    budget = 16e9
    side, probes = fit_search.largest_fitting(peak, budget)
    assert side == _truth(peak, budget)
    assert len(probes) <= 7, sorted(probes)
    if side:  # the answer was compiled, and so was the next side up
        assert side in probes and probes[side] <= budget
        assert side + 64 in probes or side + 64 > 8192


def test_a_failed_compile_counts_as_not_fitting():
    """Past 1500 the compiler refuses (no measurement); below it, the peak is affine."""

    def peak(side):
        return None if side > 1500 else 2e9 + 3e9 * (side / 1000) ** 2

    side, probes = fit_search.largest_fitting(peak, 16e9)
    assert side == 1472  # the largest multiple of 64 not above 1500
    assert any(p is None for p in probes.values())


def test_nothing_fits():
    side, probes = fit_search.largest_fitting(lambda s: 20e9 + s, 16e9)
    assert side == 0
    assert min(probes) == 64 and probes[64] > 16e9
