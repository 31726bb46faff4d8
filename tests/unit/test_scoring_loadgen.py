"""LoadGen SingleStream statistics (docs/measurement.md#latency-mode-supplemental): floor-index
percentiles, integer mean, and early stopping reproduced to LoadGen's tables."""

from __future__ import annotations

import json
import math
import random

import pytest
from scipy.special import betainc

from farm.scoring import (
    PERCENTILES,
    SUPPLEMENTAL_NOTE,
    LoadGenMinPassingFinder,
    early_stopping,
    early_stopping_odds,
    latency_json,
    latency_lines,
    latency_summary,
    loadgen_percentile,
    loadgen_summary_text,
    min_passing_queries,
    percentile_index,
    percentile_label,
    regularized_incomplete_beta,
    us_to_ns,
)

H_P90 = [63, 79, 94, 109, 122, 136, 149, 162, 174, 187]
H_P99 = [661, 836, 998, 1153, 1302, 1447, 1589, 1728, 1865, 2000]
# N: (p90 t, estimate index, plain p90 index, p99 t)
N_TABLE = {
    64: (1, 63, 57, None),
    100: (3, 97, 90, None),
    1000: (78, 922, 900, 2),
    1024: (80, 944, 921, 3),
    10000: (930, 9070, 9000, 77),
}


def loadgen_series_odds(h: int, t: int, p: float) -> float:
    """LoadGen's own odds: BetaRegularized via its a = 1 hypergeometric series (b = -t, so
    the series ends after t + 1 terms), transcribed to check our continued fraction."""
    a, b, x = h, 1 + t, p

    def lbeta(u: int, v: int) -> float:
        return math.lgamma(u) + math.lgamma(v) - math.lgamma(u + v)

    term = result = 1.0
    i = 0
    hb, hc, hx = 1 - b, 1 + a, x / (x - 1)
    while abs(term) > 1.0 / (1 << 33):
        term *= (hb + i) * hx / (hc + i)
        result += term
        i += 1
    return math.exp(a * math.log(x) + (b - 1) * math.log(1 - x) - lbeta(a, b)) / a * result


def smallest_h(t: int, p: float, odds) -> int:  # type: ignore[no-untyped-def]
    h = 1
    while not odds(h, t, p) < 1 - 0.99:
        h += 1
    return h


def test_h_tables() -> None:
    assert [min_passing_queries(t, 0.9) for t in range(1, 11)] == H_P90
    assert [min_passing_queries(t, 0.99) for t in range(1, 11)] == H_P99
    finder = LoadGenMinPassingFinder()
    assert [finder(t, 0.9) for t in range(1, 11)] == H_P90
    assert [finder(t, 0.99) for t in range(1, 11)] == H_P99


def test_h_table_independently_from_scipy_and_loadgens_series() -> None:
    def scipy_odds(h: int, t: int, p: float) -> float:
        return float(betainc(h, t + 1, p))

    assert [smallest_h(t, 0.9, scipy_odds) for t in (1, 2, 3)] == H_P90[:3]
    assert [smallest_h(t, 0.9, loadgen_series_odds) for t in (1, 2, 3)] == H_P90[:3]
    finder_series = LoadGenMinPassingFinder()
    # Same bounded search with LoadGen's series in place of ours, for t = 1..40.
    import farm.scoring.early_stop as lg

    original = lg.early_stopping_odds
    try:
        lg.early_stopping_odds = lambda h, t, p, d=0.0: loadgen_series_odds(h, t, p - d)
        series = {p: [finder_series(t, p) for t in range(1, 41)] for p in (0.9, 0.99)}
    finally:
        lg.early_stopping_odds = original
    for p in (0.9, 0.99):
        assert series[p] == [min_passing_queries(t, p) for t in range(1, 41)]


def test_minimum_queries_are_64_and_662() -> None:
    assert early_stopping(0, 0.9).min_queries == 64
    assert early_stopping(0, 0.99).min_queries == 662
    assert not early_stopping(63, 0.9).met and early_stopping(64, 0.9).met
    assert not early_stopping(661, 0.99).met and early_stopping(662, 0.99).met


@pytest.mark.parametrize("n", sorted(N_TABLE))
def test_n_table(n: int) -> None:
    t90, index, plain, t99 = N_TABLE[n]
    es = early_stopping(n, 0.9, list(range(n)))
    assert (es.overlatency, es.would_discard, es.estimate_index) == (t90, t90 - 1, index)
    assert es.estimate_ns == index  # sorted[N - t]
    assert percentile_index(n, 0.9) == plain
    assert early_stopping(n, 0.99).overlatency == t99
    loadgen = early_stopping(n, 0.9, method="loadgen")
    assert loadgen.overlatency == t90


def test_worked_example_n_1024() -> None:
    # h(80) = 942: 942 + 80 = 1022 <= 1024; h(81) = 953: 953 + 81 = 1034 > 1024 -> t = 80.
    assert min_passing_queries(80, 0.9) == 942 and min_passing_queries(81, 0.9) == 953
    latencies = list(range(1, 1025))
    es = early_stopping(1024, 0.9, latencies)
    assert es.overlatency == 80 and es.estimate_ns == latencies[944] == 945
    assert es.would_discard == 79


def test_loadgens_bounded_finder_gives_the_exact_h() -> None:
    finder = LoadGenMinPassingFinder()
    # Asked in increasing order, as LoadGen's loop asks, its slope bounds never cut off h(t).
    assert [finder(t, 0.9) for t in range(1, 601)] == [
        min_passing_queries(t, 0.9) for t in range(1, 601)
    ]
    assert [finder(t, 0.99) for t in range(1, 61)] == [
        min_passing_queries(t, 0.99) for t in range(1, 61)
    ]


def test_bisection_finds_loadgens_t_for_every_n() -> None:
    for n in range(0, 2500, 3):
        assert (
            early_stopping(n, 0.9).overlatency
            == early_stopping(n, 0.9, method="loadgen").overlatency
        )
    for n in range(600, 20000, 97):
        assert (
            early_stopping(n, 0.99).overlatency
            == early_stopping(n, 0.99, method="loadgen").overlatency
        )


def test_odds_match_scipy() -> None:
    cases = [
        (h + dh, t, p)
        for p, hs in ((0.9, H_P90), (0.99, H_P99))
        for t, h in enumerate(hs, start=1)
        for dh in (-1, 0, 1)
    ]
    cases += [(942, 80, 0.9), (953, 81, 0.9), (9070, 930, 0.9), (899_000, 99_302, 0.9)]
    for h, t, p in cases:
        ours, ref = early_stopping_odds(h, t, p), float(betainc(h, t + 1, p))
        assert ours == pytest.approx(ref, rel=1e-11), (h, t, p)
    rng = random.Random(4)
    for _ in range(300):
        a, b, x = rng.uniform(0.5, 3000), rng.uniform(0.5, 3000), rng.random()
        ref = float(betainc(a, b, x))
        got = regularized_incomplete_beta(a, b, x)
        assert got == pytest.approx(ref, rel=1e-9, abs=1e-300)
        assert 1 - got == pytest.approx(1 - ref, rel=1e-9, abs=1e-15)
    assert regularized_incomplete_beta(2, 3, 0.0) == 0.0
    assert regularized_incomplete_beta(2, 3, 1.0) == 1.0
    with pytest.raises(ValueError):
        regularized_incomplete_beta(0, 3, 0.5)


def test_early_stopping_is_fast_for_a_million_queries(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fast in work done, not wall time (load cannot break it): the bisection evaluates the
    incomplete beta polylogarithmically often, where LoadGen's walk needs one per i."""
    import farm.scoring.early_stop as es

    calls = 0
    odds = es.early_stopping_odds

    def counted(h: int, t: int, p: float, d: float = 0.0) -> float:
        nonlocal calls
        calls += 1
        return odds(h, t, p, d)

    monkeypatch.setattr(es, "early_stopping_odds", counted)
    monkeypatch.setattr(es, "_EXACT", {})  # no cached h from earlier tests
    es90 = early_stopping(1_000_000, 0.9)
    es99 = early_stopping(1_000_000, 0.99)
    assert es90.overlatency is not None and es90.overlatency > 90_000
    assert calls < 2_000  # LoadGen's walk: one finder call per i, ~100,000 here
    t = es90.overlatency
    assert t is not None and es99.overlatency is not None
    # The defining property around t, checked directly.
    assert min_passing_queries(t, 0.9) + t <= 1_000_000
    assert min_passing_queries(t + 1, 0.9) + t + 1 > 1_000_000


def test_percentile_index_is_the_floor_without_interpolation() -> None:
    exact = {
        0.5: (1, 2),
        0.9: (9, 10),
        0.95: (19, 20),
        0.97: (97, 100),
        0.99: (99, 100),
        0.999: (999, 1000),
    }
    for p, (num, den) in exact.items():
        assert all(percentile_index(n, p) == n * num // den for n in range(1, 200_001, 7))
    values = [10, 20, 30, 40, 50, 60, 70, 80, 90, 100]
    assert loadgen_percentile(values, 0.9) == 100  # index 9; numpy's linear p90 would be 91
    assert loadgen_percentile(values, 0.5) == 60
    assert [percentile_label(p) for p in PERCENTILES] == [
        "50.00",
        "90.00",
        "95.00",
        "97.00",
        "99.00",
        "99.90",
    ]


def test_latency_summary_n_1024() -> None:
    latencies_us = list(range(1, 1025))
    random.Random(0).shuffle(latencies_us)
    summary = latency_summary(latencies_us, final_query_issued_s=61.5)
    assert (summary.count, summary.min_ns, summary.max_ns) == (1024, 1000, 1_024_000)
    assert summary.mean_ns == sum(range(1, 1025)) * 1000 // 1024 == 512_500
    assert summary.p90_ns == 922_000  # sorted[921]
    assert summary.percentile_ns(0.999) == 1_023_000  # sorted[1022]
    assert dict(summary.percentiles) == {
        0.5: 513_000,
        0.9: 922_000,
        0.95: 973_000,
        0.97: 994_000,
        0.99: 1_014_000,
        0.999: 1_023_000,
    }
    assert summary.early_stopping_p90.estimate_ns == 945_000  # sorted[944]
    assert summary.early_stopping_p99.overlatency == 3
    assert summary.early_stopping_p99.estimate_ns == 1_022_000  # sorted[1021]
    assert summary.valid
    assert summary.qps_with_loadgen_overhead == 1023 / 61.5
    assert summary.qps_without_loadgen_overhead == 1 / (512_500 / 1e9)
    assert summary.early_stopping_text == (
        " * Processed at least 64 queries (1024).\n"
        " * Would discard 79 highest latency queries.\n"
        " * Early stopping 90.0th percentile estimate: 945000\n"
        " * Early stopping 99.0th percentile estimate: 1022000"
    )


def test_latency_summary_validity_flags() -> None:
    summary = latency_summary([100] * 661, final_query_issued_s=59.999)
    assert not summary.min_queries_met and not summary.min_duration_met
    assert summary.early_stopping_met and not summary.valid
    assert summary.early_stopping_text.endswith(
        " * Not enough queries processed for 99.0th percentile\n"
        " early stopping estimate (would need to process at\n"
        " least 662 total queries)."
    )
    few = latency_summary([100] * 63, final_query_issued_s=100.0, min_queries=10, min_duration_s=1)
    assert few.min_queries_met and few.min_duration_met and not few.valid
    assert few.early_stopping_text == (
        " * Only processed 63 queries.\n * Need to process at least 64 queries for early stopping."
    )


def test_mean_is_truncated_integer_ns() -> None:
    assert latency_summary([1, 2, 2], final_query_issued_s=1.0).mean_ns == 5000 // 3 == 1666


def test_us_to_ns_is_exact_integer_times_1000() -> None:
    assert us_to_ns([0, 1, 4_294_967_295]) == [0, 1000, 4_294_967_295_000]
    with pytest.raises(TypeError):
        us_to_ns([1.5])  # type: ignore[list-item]
    with pytest.raises(ValueError):
        us_to_ns([-1])
    with pytest.raises(ValueError):
        latency_summary([], final_query_issued_s=1.0)


def test_renderings_are_supplemental_and_json_safe() -> None:
    summary = latency_summary(list(range(1, 1025)), final_query_issued_s=61.5)
    data = latency_json(summary)
    assert data["supplemental"] is True and data["unit"] == "ns"
    assert data["percentiles_ns"] == {
        "50.00": 513_000,
        "90.00": 922_000,
        "95.00": 973_000,
        "97.00": 994_000,
        "99.00": 1_014_000,
        "99.90": 1_023_000,
    }
    assert data["early_stopping_p90"]["estimate_ns"] == 945_000  # type: ignore[index]
    json.dumps(data, allow_nan=False)
    zero = latency_json(latency_summary([0] * 64, final_query_issued_s=0.0))
    assert zero["qps_without_loadgen_overhead"] is None
    assert zero["qps_with_loadgen_overhead"] is None
    json.dumps(zero, allow_nan=False)

    text = loadgen_summary_text(summary, sut_name="sim-board")
    assert text.startswith(f"# {SUPPLEMENTAL_NOTE}\n")
    for line in (
        "SUT name : sim-board",
        "Scenario : SingleStream",
        "90.0th percentile latency (ns) : 922000",
        "Result is : VALID",
        "  Early stopping satisfied: Yes",
        " * Would discard 79 highest latency queries.",
        "Mean latency (ns)               : 512500",
        "99.90 percentile latency (ns)   : 1023000",
        "QPS w/ loadgen overhead         : 16.63",
    ):
        assert line in text.splitlines(), line
    invalid = loadgen_summary_text(
        latency_summary([5] * 10, final_query_issued_s=1.0), sut_name="x"
    )
    assert "Result is : INVALID" in invalid and "Recommendations:" in invalid
    assert " * Only processed 10 queries." in invalid
    assert latency_lines(summary)[1] == "Early stopping 90.0th percentile estimate (ns): 945000"
