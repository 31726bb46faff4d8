"""LoadGen's early-stopping estimate, standard library only. Supplemental: MLPerf Tiny does
not use LoadGen.

Early stopping (LoadGen ``early_stopping.cc``, ``results.cc``): with confidence c = 0.99 and
tolerance d = 0, ``odds(h, t, p) = I_p(h, t + 1)`` (the regularized incomplete beta) is the
chance that at most t of h + t queries exceed the true p-quantile; ``h(t)`` is the smallest
h with ``odds < 1 - c``; a run of N queries needs ``N >= h(1) + 1``; ``t`` is the largest
``i >= 1`` with ``N >= h(i) + i`` and the estimate is ``sorted[N - t]``, the t-th largest
latency, so up to t - 1 queries may exceed it ("would discard t - 1").
"""

from __future__ import annotations

import math
from bisect import bisect_left, insort
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

TARGET_PERCENTILE = 0.9
CONFIDENCE = 0.99
TOLERANCE = 0.0


# ---------------------------------------------------------------------------------------
# Regularized incomplete beta I_x(a, b), standard library only.

_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)
_EPS = 2.220446049250313e-16
_TINY = 1e-300
# Stirling series coefficients B_2k / (2k (2k - 1)) for the log-gamma remainder.
_STIRLING = (
    1 / 12,
    -1 / 360,
    1 / 1260,
    -1 / 1680,
    1 / 1188,
    -691 / 360360,
    1 / 156,
)


def _lgamma_remainder(z: float) -> float:
    """``lgamma(z) - ((z - 1/2) ln z - z + ln(2 pi)/2)``, accurate for large z where
    ``lgamma`` alone would lose the small differences the beta function needs."""
    if z < 15.0:
        return math.lgamma(z) - ((z - 0.5) * math.log(z) - z + _HALF_LOG_2PI)
    inv = 1.0 / z
    inv2 = inv * inv
    acc = 0.0
    for c in reversed(_STIRLING):
        acc = acc * inv2 + c
    return acc * inv


def _log_power_term(a: float, b: float, x: float) -> float:
    """``ln(x^a (1 - x)^b / B(a, b))`` without the cancellation of three large
    ``lgamma`` values (Stirling form, with ``log1p`` around the mean)."""
    total = a + b
    # x (a+b)/a - 1 and (1-x)(a+b)/b - 1, formed so that their tiny size near the mean
    # survives.
    y = 1.0 - x
    u = (x * b - y * a) / a
    v = (y * a - x * b) / b
    return (
        a * math.log1p(u)
        + b * math.log1p(v)
        + 0.5 * math.log(a * b / total)
        - _HALF_LOG_2PI
        - _lgamma_remainder(a)
        - _lgamma_remainder(b)
        + _lgamma_remainder(total)
    )


def _beta_cf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta (modified Lentz), converging quickly for
    ``x < (a + 1) / (a + b + 2)``."""
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c = 1.0
    d = 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) >= _TINY else _TINY)
    h = d
    limit = 1000 + 20 * int(math.sqrt(max(a, b)))
    for m in range(1, limit):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) >= _TINY else _TINY)
        c = 1.0 + aa / c
        c = c if abs(c) >= _TINY else _TINY
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) >= _TINY else _TINY)
        c = 1.0 + aa / c
        c = c if abs(c) >= _TINY else _TINY
        step = d * c
        h *= step
        if abs(step - 1.0) <= _EPS:
            return h
    raise ArithmeticError(f"incomplete beta did not converge for a={a}, b={b}, x={x}")


def regularized_incomplete_beta(a: float, b: float, x: float) -> float:
    """``I_x(a, b)`` for a, b > 0 and 0 <= x <= 1 (scipy's ``betainc(a, b, x)``), in pure
    Python: a continued fraction on whichever side converges, with an accurate prefactor."""
    if a <= 0 or b <= 0:
        raise ValueError(f"a and b must be positive, got a={a}, b={b}")
    if not 0.0 <= x <= 1.0:
        raise ValueError(f"x must be in [0, 1], got {x}")
    if x == 0.0 or x == 1.0:
        return x
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(_log_power_term(a, b, x)) * _beta_cf(a, b, x) / a
    return 1.0 - math.exp(_log_power_term(b, a, 1.0 - x)) * _beta_cf(b, a, 1.0 - x) / b


def early_stopping_odds(h: int, t: int, p: float, d: float = TOLERANCE) -> float:
    """LoadGen's ``odds(h, t, p, d) = I_{p-d}(h, t + 1)``: the chance of at most t
    over-latency queries among h + t."""
    return regularized_incomplete_beta(h, 1 + t, p - d)


# ---------------------------------------------------------------------------------------
# h(t): the minimum number of under-latency queries that tolerates t over-latency ones.


def _passes(h: int, t: int, p: float, d: float, c: float) -> bool:
    # LoadGen compares with the double 1 - c (0.010000000000000009 for c = 0.99).
    return early_stopping_odds(h, t, p, d) < 1 - c


class _MinPassingCache:
    """Known h(t) for one (p, d, c), kept sorted by t so neighbours bracket a new t."""

    __slots__ = ("keys", "values")

    def __init__(self) -> None:
        self.keys: list[int] = []
        self.values: dict[int, int] = {}

    def add(self, t: int, h: int) -> None:
        if t not in self.values:
            insort(self.keys, t)
        self.values[t] = h


_EXACT: dict[tuple[float, float, float], _MinPassingCache] = {}


def min_passing_queries(t: int, p: float, d: float = TOLERANCE, c: float = CONFIDENCE) -> int:
    """``h(t)``: the smallest h with ``odds(h, t, p, d) < 1 - c`` (63 for t = 1, p = 0.9).

    Searched without LoadGen's slope bounds, so any t can be asked in any order: h(t) never
    decreases with t, so cached neighbours t' < t < t'' bracket it by
    ``h(t') - 1`` (fails) and ``h(t'')`` (passes); without an upper neighbour the search
    gallops up. Results are cached per (p, d, c) for the life of the process.
    """
    if t < 1:
        raise ValueError(f"t must be >= 1, got {t}")
    cache = _EXACT.setdefault((p, d, c), _MinPassingCache())
    if t in cache.values:
        return cache.values[t]
    i = bisect_left(cache.keys, t)
    below = cache.keys[i - 1] if i > 0 else 0
    lo = cache.values[below] - 1 if below else 0  # known to fail (0: h is at least 1)
    if i < len(cache.keys):
        hi = cache.values[cache.keys[i]]  # known to pass
    else:
        # Each extra tolerated query costs about p / (1 - p) more passing ones.
        step = max(8, (t - below) * (int(p / (1 - p)) + 1))
        hi = lo + step
        while not _passes(hi, t, p, d, c):
            lo, step = hi, step * 2
            hi = lo + step
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if _passes(mid, t, p, d, c):
            hi = mid
        else:
            lo = mid
    cache.add(t, hi)
    return hi


class LoadGenMinPassingFinder:
    """A line-by-line port of LoadGen's ``MinPassingQueriesFinder``: a cache per (p, d, c)
    and a binary search inside bounds derived from the two nearest cached h below t
    (including its ``max_slope = (y1 - y0) * (x1 - x0)``, a product where a quotient was
    meant). The bounds are only safe when t is asked in increasing order, as LoadGen's
    early-stopping loop does; :func:`early_stopping` uses :func:`min_passing_queries`, and
    the tests show both give the same h(t)."""

    def __init__(self) -> None:
        self._caches: dict[tuple[float, float, float], _MinPassingCache] = {}

    def __call__(self, t: int, p: float, d: float = TOLERANCE, c: float = CONFIDENCE) -> int:
        """h(t) as LoadGen computes it."""
        cache = self._caches.setdefault((p, d, c), _MinPassingCache())
        if t in cache.values:
            return cache.values[t]
        i = bisect_left(cache.keys, t)
        x0, y0 = -1, 0
        x1, y1 = 0, math.ceil(math.log(1 - c) / math.log(p - d))
        if i > 0:
            x1 = cache.keys[i - 1]
            y1 = cache.values[x1]
        if i > 1:
            x0 = cache.keys[i - 2]
            y0 = cache.values[x0]
        min_slope = (p - d) / (1 - p + d)
        max_slope = (y1 - y0) * (x1 - x0)
        # C++ converts these doubles to int64 by truncation.
        min_h = int((t - x1) * min_slope + y1)
        max_h = int((t - x1) * float(max_slope) + y1 + 1)
        h = self._find_min_passing(min_h, max_h, t, p, d, c)
        cache.add(t, h)
        return h

    @staticmethod
    def _find_min_passing(min_h: int, max_h: int, t: int, p: float, d: float, c: float) -> int:
        count = max_h - min_h
        while count > 0:
            step = count // 2
            h = min_h + step
            if early_stopping_odds(h, t, p, d) < 1 - c:
                count = step
            else:
                min_h = h + 1
                count -= step + 1
        return min_h


_LOADGEN_FINDER = LoadGenMinPassingFinder()


def _overlatency_loadgen(n: int, p: float) -> int:
    # LoadGen's loop: i = 2, 3, ... until the first i with N < h(i) + i; t = i - 1.
    t = 1
    for i in range(2, n + 1):
        if n < _LOADGEN_FINDER(i, p) + i:
            t = i - 1
            break
    return t


def _overlatency_bisect(n: int, p: float) -> int:
    # h(i) + i strictly increases with i, so the first failing i of LoadGen's loop is the
    # boundary a galloping binary search finds, in O(log t) evaluations of h instead of t.
    def ok(i: int) -> bool:
        return i <= n and n >= min_passing_queries(i, p) + i

    lo, hi = 1, 2
    while ok(hi):
        lo, hi = hi, hi * 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if ok(mid):
            lo = mid
        else:
            hi = mid
    return lo


@dataclass(frozen=True, slots=True)
class EarlyStopping:
    """LoadGen's early-stopping verdict for one percentile over N queries."""

    percentile: float
    queries: int
    min_queries: int
    """``h(1) + 1``: 64 for p90, 662 for p99 ("Processed at least ...")."""
    overlatency: int | None
    """t, the largest i >= 1 with N >= h(i) + i; None when N < ``min_queries``."""
    estimate_ns: int | None
    """``sorted[N - t]`` when latencies were given and early stopping applies."""

    @property
    def met(self) -> bool:
        """Enough queries for an estimate."""
        return self.overlatency is not None

    @property
    def would_discard(self) -> int | None:
        """``t - 1``: the highest latencies that may exceed the estimate."""
        return None if self.overlatency is None else self.overlatency - 1

    @property
    def estimate_index(self) -> int | None:
        """0-based index of the estimate in the ascending latencies, ``N - t``."""
        return None if self.overlatency is None else self.queries - self.overlatency


def early_stopping(
    n: int,
    p: float = TARGET_PERCENTILE,
    sorted_latencies_ns: Sequence[int] | None = None,
    *,
    method: Literal["bisect", "loadgen"] = "bisect",
) -> EarlyStopping:
    """Early stopping for ``n`` queries at percentile ``p`` (c = 0.99, d = 0).

    ``method="loadgen"`` walks i = 2, 3, ... with the LoadGen finder exactly as LoadGen
    does (one h per i, so O(t) incomplete-beta evaluations); the default finds the same t by
    bisection and stays fast for N in the millions.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if sorted_latencies_ns is not None and len(sorted_latencies_ns) != n:
        raise ValueError(f"{len(sorted_latencies_ns)} latencies for n={n}")
    if method == "loadgen":
        h1 = _LOADGEN_FINDER(1, p)
    elif method == "bisect":
        h1 = min_passing_queries(1, p)
    else:
        raise ValueError(f"unknown method {method!r}")
    if n < h1 + 1:
        return EarlyStopping(p, n, h1 + 1, None, None)
    t = _overlatency_loadgen(n, p) if method == "loadgen" else _overlatency_bisect(n, p)
    estimate = None if sorted_latencies_ns is None else sorted_latencies_ns[n - t]
    return EarlyStopping(p, n, h1 + 1, t, estimate)
