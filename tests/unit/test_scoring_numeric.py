"""The standard-library stand-ins for numpy reductions agree with numpy to the last bit."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest

from farm.scoring._numeric import ieee_div, np_argmax, np_median, np_sum, py311_sum
from farm.scoring.accuracy import _mean_rows


@pytest.mark.parametrize("n", [0, 1, 2, 7, 8, 9, 15, 16, 17, 127, 128, 129, 255, 257, 1000, 10886])
def test_np_sum_is_numpy_pairwise_summation(n: int) -> None:
    rng = random.Random(n)
    for _ in range(5):
        values = [rng.uniform(-1, 1) * 10 ** rng.randint(-9, 3) for _ in range(n)]
        assert np_sum(values) == float(np.sum(np.array(values)))


def test_np_sum_differs_from_sequential_sum_where_numpy_does() -> None:
    # Proof that the pairwise order matters: a sequential loop gives another double here.
    values = [0.1] * 1000
    assert np_sum(values) == float(np.sum(np.array(values))) == 100.00000000000001
    assert py311_sum(values) == 99.9999999999986


def test_py311_sum_is_left_to_right_not_compensated() -> None:
    # CPython 3.12+ compensates (sum -> 1.0); the runner's 3.11 adds left to right.
    assert py311_sum([0.1] * 10) == 0.9999999999999999
    assert math.fsum([0.1] * 10) == 1.0


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 6, 11])
def test_np_median_matches_numpy(n: int) -> None:
    rng = random.Random(100 + n)
    for _ in range(20):
        values = [rng.uniform(0, 1e5) for _ in range(n)]
        assert np_median(values) == float(np.median(values))


def test_np_median_five_is_third_sorted_and_even_averages_middle_two() -> None:
    assert np_median([5.0, 1.0, 4.0, 2.0, 3.0]) == 3.0
    assert np_median([4.0, 1.0, 3.0, 2.0]) == 2.5
    assert np_median([1.0, 2.0]) == 1.5


def test_np_median_nan_and_empty_give_nan() -> None:
    assert math.isnan(np_median([1.0, math.nan, 3.0, 4.0, 5.0]))
    with pytest.warns(RuntimeWarning):
        assert math.isnan(float(np.median([1.0, math.nan, 3.0, 4.0, 5.0])) + float(np.median([])))
    assert math.isnan(np_median([]))


def test_np_argmax_ties_lowest_and_nan_first() -> None:
    assert np_argmax([0.1, 0.4, 0.4, 0.1]) == 1 == int(np.argmax([0.1, 0.4, 0.4, 0.1]))
    vec = [0.2, math.nan, 0.9, math.nan]
    assert np_argmax(vec) == 1 == int(np.argmax(vec))
    assert np_argmax([math.nan] * 3) == 0
    assert np_argmax([-math.inf, math.inf, math.inf]) == 1


def test_ieee_div_by_zero_like_numpy() -> None:
    with np.errstate(divide="ignore", invalid="ignore"):
        for a in (1.0, -2.0, 0.0, math.nan):
            for b in (0.0, -0.0):
                expected = float(np.float64(a) / np.float64(b))
                got = ieee_div(a, b)
                assert (math.isnan(got) and math.isnan(expected)) or got == expected
    assert ieee_div(3.0, 2.0) == 1.5


@pytest.mark.parametrize(
    ("k", "width"), [(1, 1), (7, 1), (196, 1), (300, 1), (1, 12), (3, 2), (20, 10)]
)
def test_mean_rows_matches_numpy_mean_axis0(k: int, width: int) -> None:
    # (n, 1) reduces pairwise; wider arrays add row after row: both exactly as numpy.
    rng = random.Random(k * 31 + width)
    for _ in range(10):
        rows = [[round(rng.uniform(0, 50), 3) for _ in range(width)] for _ in range(k)]
        expected = np.mean(rows, axis=0)
        assert _mean_rows(rows) == tuple(float(v) for v in expected)
