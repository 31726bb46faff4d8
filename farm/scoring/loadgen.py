"""LoadGen SingleStream latency statistics: floor-index percentiles and the early-stopping
estimate (docs/measurement.md#latency-mode-supplemental). Supplemental: MLPerf Tiny does not
use LoadGen.

Units: the DUT times each query in microseconds; LoadGen counts nanoseconds. We convert with
``ns = us x 1000`` on integers, so every statistic is an exact integer number of ns (the mean
is truncated by integer division, as LoadGen does).

The early-stopping estimate lives in :mod:`farm.scoring.early_stop`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from farm.scoring.early_stop import TARGET_PERCENTILE, EarlyStopping, early_stopping

PERCENTILES: tuple[float, ...] = (0.5, 0.9, 0.95, 0.97, 0.99, 0.999)
MULTI_STREAM_PERCENTILE = 0.99
#: The Tiny results page's single-stream row: 1024 queries and 60 s.
DEFAULT_MIN_QUERIES = 1024
DEFAULT_MIN_DURATION_S = 60.0
SUPPLEMENTAL_NOTE = (
    "Supplemental: per-query latency statistics with LoadGen SingleStream semantics; not part "
    "of an MLPerf Tiny result (the official latency is 1000 / median window throughput)."
)

# ---------------------------------------------------------------------------------------
# Percentiles and the SingleStream summary.


def percentile_index(n: int, p: float) -> int:
    """LoadGen's index ``sorted[N x p]``: the double product truncated, no interpolation
    (equal to the exact floor for N <= 200,000 and the reported p)."""
    if not 0.0 <= p < 1.0:
        raise ValueError(f"p must be in [0, 1), got {p}")
    return int(n * p)


def loadgen_percentile(sorted_latencies: Sequence[int], p: float) -> int:
    """The p-quantile of ascending latencies as LoadGen reports it."""
    if not sorted_latencies:
        raise ValueError("percentile of no latencies")
    return sorted_latencies[percentile_index(len(sorted_latencies), p)]


def percentile_label(p: float) -> str:
    """LoadGen's ``DoubleToString(p * 100)`` label: 50.00, 90.00, ..., 99.90."""
    return f"{p * 100:.2f}"


def us_to_ns(latencies_us: Sequence[int]) -> list[int]:
    """DUT microseconds to LoadGen nanoseconds, exactly (``x 1000`` on integers)."""
    out = []
    for v in latencies_us:
        if isinstance(v, bool) or not isinstance(v, int):
            raise TypeError(f"latencies must be integer microseconds, got {v!r}")
        if v < 0:
            raise ValueError(f"negative latency {v} us")
        out.append(v * 1000)
    return out


@dataclass(frozen=True, slots=True)
class LatencySummary:
    """What LoadGen's SingleStream summary reports, from DUT-timed per-query latencies
    (supplemental: see :data:`SUPPLEMENTAL_NOTE`)."""

    count: int
    min_ns: int
    max_ns: int
    mean_ns: int
    """Integer division of the ns sum by N (truncated)."""
    percentiles: tuple[tuple[float, int], ...]
    """``(p, ns)`` for p in 0.5, 0.9, 0.95, 0.97, 0.99, 0.999."""
    early_stopping_p90: EarlyStopping
    """The official SingleStream result (``early_stopping_latency_ss``)."""
    early_stopping_p99: EarlyStopping
    """The MultiStream-inference estimate (``early_stopping_latency_ms``, despite the name
    in ns)."""
    final_query_issued_s: float
    min_queries: int
    min_duration_s: float

    def percentile_ns(self, p: float) -> int:
        """One of the six reported percentiles."""
        for q, value in self.percentiles:
            if q == p:
                return value
        raise KeyError(f"percentile {p} not reported (have {[q for q, _ in self.percentiles]})")

    @property
    def p90_ns(self) -> int:
        """The plain "90.0th percentile latency (ns)" line (not the official result)."""
        return self.percentile_ns(TARGET_PERCENTILE)

    @property
    def min_duration_met(self) -> bool:
        """The last query was issued at or after the minimum duration."""
        return self.final_query_issued_s >= self.min_duration_s

    @property
    def min_queries_met(self) -> bool:
        """At least the minimum query count was issued."""
        return self.count >= self.min_queries

    @property
    def early_stopping_met(self) -> bool:
        """Enough queries for the p90 early-stopping estimate (64)."""
        return self.early_stopping_p90.met

    @property
    def valid(self) -> bool:
        """All three, as LoadGen's detail log ``result_validity`` requires."""
        return self.min_duration_met and self.min_queries_met and self.early_stopping_met

    @property
    def qps_with_loadgen_overhead(self) -> float | None:
        """``(N - 1) / final query issue time``."""
        if self.final_query_issued_s <= 0:
            return None
        return (self.count - 1) / self.final_query_issued_s

    @property
    def qps_without_loadgen_overhead(self) -> float:
        """``1 / mean latency`` in seconds."""
        mean_s = self.mean_ns / 1e9
        return math.inf if mean_s == 0 else 1 / mean_s

    @property
    def early_stopping_text(self) -> str:
        """The "Early Stopping Result:" body exactly as LoadGen words it."""
        es = self.early_stopping_p90
        if not es.met:
            return (
                f" * Only processed {es.queries} queries.\n"
                f" * Need to process at least {es.min_queries} queries for early stopping."
            )
        text = (
            f" * Processed at least {es.min_queries} queries ({es.queries}).\n"
            f" * Would discard {es.would_discard} highest latency queries.\n"
            f" * Early stopping {es.percentile * 100:.1f}th percentile estimate: "
            f"{es.estimate_ns}"
        )
        ms = self.early_stopping_p99
        label = f"{ms.percentile * 100:.1f}"
        if not ms.met:
            return text + (
                f"\n * Not enough queries processed for {label}th percentile\n"
                " early stopping estimate (would need to process at\n"
                f" least {ms.min_queries} total queries)."
            )
        return text + f"\n * Early stopping {label}th percentile estimate: {ms.estimate_ns}"


def latency_summary(
    latencies_us: Sequence[int],
    *,
    final_query_issued_s: float,
    min_queries: int = DEFAULT_MIN_QUERIES,
    min_duration_s: float = DEFAULT_MIN_DURATION_S,
) -> LatencySummary:
    """LoadGen SingleStream statistics of per-query latencies in DUT microseconds.

    ``final_query_issued_s`` is when the last query was issued, from the start of the run
    (LoadGen's minimum-duration test uses it).
    """
    ns = sorted(us_to_ns(latencies_us))
    n = len(ns)
    if n == 0:
        raise ValueError("no latencies")
    return LatencySummary(
        count=n,
        min_ns=ns[0],
        max_ns=ns[-1],
        mean_ns=sum(ns) // n,
        percentiles=tuple((p, loadgen_percentile(ns, p)) for p in PERCENTILES),
        early_stopping_p90=early_stopping(n, TARGET_PERCENTILE, ns),
        early_stopping_p99=early_stopping(n, MULTI_STREAM_PERCENTILE, ns),
        final_query_issued_s=final_query_issued_s,
        min_queries=min_queries,
        min_duration_s=min_duration_s,
    )


# ---------------------------------------------------------------------------------------
# Renderings: latency.json, the LoadGen-style summary file, short result lines.

_BANNER = "=" * 48


def latency_json(summary: LatencySummary) -> dict[str, object]:
    """Every statistic of ``summary`` as plain JSON values (integers in ns), labelled
    supplemental."""

    def es(e: EarlyStopping) -> dict[str, object]:
        return {
            "percentile": e.percentile,
            "met": e.met,
            "min_queries": e.min_queries,
            "overlatency_t": e.overlatency,
            "would_discard": e.would_discard,
            "estimate_index": e.estimate_index,
            "estimate_ns": e.estimate_ns,
        }

    return {
        "supplemental": True,
        "note": SUPPLEMENTAL_NOTE,
        "unit": "ns",
        "count": summary.count,
        "min_ns": summary.min_ns,
        "max_ns": summary.max_ns,
        "mean_ns": summary.mean_ns,
        "percentiles_ns": {percentile_label(p): v for p, v in summary.percentiles},
        "early_stopping_p90": es(summary.early_stopping_p90),
        "early_stopping_p99": es(summary.early_stopping_p99),
        "final_query_issued_s": summary.final_query_issued_s,
        "qps_with_loadgen_overhead": summary.qps_with_loadgen_overhead,
        # JSON has no infinity: a zero mean latency gives null.
        "qps_without_loadgen_overhead": (
            qps if math.isfinite(qps := summary.qps_without_loadgen_overhead) else None
        ),
        "min_queries": summary.min_queries,
        "min_duration_s": summary.min_duration_s,
        "min_queries_met": summary.min_queries_met,
        "min_duration_met": summary.min_duration_met,
        "early_stopping_met": summary.early_stopping_met,
        "valid": summary.valid,
    }


def latency_lines(summary: LatencySummary) -> list[str]:
    """A few human lines for results.txt/log.txt (to be preceded by
    :data:`SUPPLEMENTAL_NOTE`)."""
    es = summary.early_stopping_p90
    estimate = "n/a" if es.estimate_ns is None else str(es.estimate_ns)
    out = [
        f"Latency queries: {summary.count} ({'VALID' if summary.valid else 'INVALID'})",
        f"Early stopping 90.0th percentile estimate (ns): {estimate}",
    ]
    out.extend(
        f"{percentile_label(p)} percentile latency (ns): {v}" for p, v in summary.percentiles
    )
    out.append(f"Mean latency (ns): {summary.mean_ns}")
    return out


def _yes(flag: bool) -> str:
    return "Yes" if flag else "NO"


def loadgen_summary_text(summary: LatencySummary, *, sut_name: str) -> str:
    """``mlperf_log_summary.txt`` in LoadGen's SingleStream layout (``results.cc``
    ``LogSummary``), preceded by a supplemental label; only the test parameters the farm
    knows are listed."""
    qps_lg = summary.qps_with_loadgen_overhead
    lines = [
        f"# {SUPPLEMENTAL_NOTE}",
        _BANNER,
        "MLPerf Results Summary",
        _BANNER,
        f"SUT name : {sut_name}",
        "Scenario : SingleStream",
        "Mode     : PerformanceOnly",
        # LoadGen HEAD prints DoubleToString(p * 100, 1), "90.0th"
        # (older LoadGen releases printed "90th").
        f"{TARGET_PERCENTILE * 100:.1f}th percentile latency (ns) : {summary.p90_ns}",
        f"Result is : {'VALID' if summary.valid else 'INVALID'}",
        f"  Min duration satisfied : {_yes(summary.min_duration_met)}",
        f"  Min queries satisfied : {_yes(summary.min_queries_met)}",
        f"  Early stopping satisfied: {_yes(summary.early_stopping_met)}",
    ]
    if not summary.valid:
        lines.append("Recommendations:")
        if not summary.min_duration_met:
            lines.append(
                " * Decrease the expected latency so the loadgen pre-generates more queries."
            )
        if not summary.min_queries_met:
            lines.append(
                " * The test exited early, before enough queries were issued.\n"
                "   See the detailed log for why this may have occurred."
            )
    lines += [
        "Early Stopping Result:",
        summary.early_stopping_text,
        "",
        _BANNER,
        "Additional Stats",
        _BANNER,
        f"QPS w/ loadgen overhead         : {'n/a' if qps_lg is None else f'{qps_lg:.2f}'}",
        f"QPS w/o loadgen overhead        : {summary.qps_without_loadgen_overhead:.2f}",
        "",
        f"Min latency (ns)                : {summary.min_ns}",
        f"Max latency (ns)                : {summary.max_ns}",
        f"Mean latency (ns)               : {summary.mean_ns}",
    ]
    lines += [
        f"{percentile_label(p)} percentile latency (ns)   : {v}" for p, v in summary.percentiles
    ]
    lines += [
        "",
        _BANNER,
        "Test Parameters Used",
        _BANNER,
        "samples_per_query : 1",
        f"target_latency_percentile : {TARGET_PERCENTILE * 100:.0f}",
        "max_async_queries : 1",
        f"min_duration (ms): {round(summary.min_duration_s * 1000)}",
        f"min_query_count : {summary.min_queries}",
        "",
    ]
    return "\n".join(lines)
