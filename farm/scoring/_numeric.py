"""Arithmetic that reproduces what the official tools compute with numpy and CPython, bit for
bit, in the standard library only (an agent on a Pi has no numpy).

Every function here names the numpy or CPython operation it stands in for; the unit tests
compare each one against numpy on random data.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

# numpy's pairwise summation unrolls by 8 and recurses above blocks of 128 elements
# (numpy/_core/src/umath/loops_utils.h.src, ``pairwise_sum_DOUBLE``).
_PW_UNROLL = 8
_PW_BLOCK = 128


def _pairwise(values: Sequence[float], lo: int, n: int) -> float:
    if n < _PW_UNROLL:
        res = 0.0
        for i in range(lo, lo + n):
            res += values[i]
        return res
    if n <= _PW_BLOCK:
        r = [values[lo + j] for j in range(_PW_UNROLL)]
        i = _PW_UNROLL
        end = n - (n % _PW_UNROLL)
        while i < end:
            base = lo + i
            for j in range(_PW_UNROLL):
                r[j] += values[base + j]
            i += _PW_UNROLL
        res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]))
        while i < n:
            res += values[lo + i]
            i += 1
        return res
    n2 = n // 2
    n2 -= n2 % _PW_UNROLL
    return _pairwise(values, lo, n2) + _pairwise(values, lo + n2, n - n2)


def np_sum(values: Sequence[float]) -> float:
    """``numpy.sum`` of a 1-D float64 array: pairwise summation, identical to the last bit.

    The official runner sums energy samples this way (``np.sum``), and ``np.mean`` of an
    ``(n, 1)`` array (the AD per-file score) reduces the same way.
    """
    floats = [float(v) for v in values]
    return _pairwise(floats, 0, len(floats))


def py311_sum(values: Sequence[float]) -> float:
    """CPython 3.11's built-in ``sum`` of floats: left to right from the integer 0.

    The runner normalises result vectors with the built-in ``sum`` (and its committed
    ``__pycache__`` is cpython-311); 3.12+ switched to compensated summation, so we spell the
    3.11 loop out instead of depending on the interpreter running us.
    """
    total: float = 0
    for v in values:
        total += v
    return float(total)


def ieee_div(a: float, b: float) -> float:
    """``a / b`` with numpy float64 semantics: division by zero gives ±inf or NaN, no error."""
    if b == 0.0:
        if a == 0.0 or math.isnan(a):
            return math.nan
        return math.copysign(math.inf, a) * math.copysign(1.0, b)
    return a / b


def np_median(values: Sequence[float]) -> float:
    """``numpy.median`` of a 1-D float64 array.

    NaN anywhere gives NaN (numpy checks explicitly), an empty input gives NaN; otherwise
    the middle value of the sorted data, or the numpy mean of the middle two for an even
    count.
    """
    floats = [float(v) for v in values]
    if not floats or any(math.isnan(v) for v in floats):
        return math.nan
    ordered = sorted(floats)
    n = len(ordered)
    middle = ordered[(n - 1) // 2 : n // 2 + 1]
    return np_sum(middle) / len(middle)


def np_argmax(values: Sequence[float]) -> int:
    """``numpy.argmax``: the first NaN if there is one, else the first maximum (ties ->
    lowest index)."""
    if not values:
        raise ValueError("argmax of an empty sequence")
    best = 0
    for i, v in enumerate(values):
        if math.isnan(v):
            return i
        if v > values[best]:
            best = i
    return best
