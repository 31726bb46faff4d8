"""sww01 scoring (docs/measurement.md#streaming-wakeword): the worked examples of that page,
the window rule [start, end + 2.0 s], the false-positive debounce, the duty cycle and the
throughput, the results lines in the runner's 5-significant-digit general format, and what
the checker reads from them (TP + FN = 50, the closed division's FP/FN limits)."""

from __future__ import annotations

import random

import pytest

from farm.scoring import (
    SWW_REQUIRED_WINDOWS,
    SwwResult,
    SwwScoreError,
    checker_reading,
    detection_stats,
    duty_cycle,
    energy_window,
    general5,
    score_energy,
)

np = pytest.importorskip("numpy")


def test_worked_example_detections() -> None:
    # The sync pulse at 700 ms, then detections 1.2 and 1.232 s after it (window 1, two
    # frames), 3.7 and 4.2 s (false, the second within 1 s of the first), 5.05 and 5.4 s
    # (window 2), 12.0 s (2.4 s after window 3 ends: too late, false).
    windows = [(1.0, 1.5), (5.0, 5.4), (9.0, 9.6)]
    detections = [700, 1900, 1932, 4400, 4900, 5750, 6100, 12700]
    stats = detection_stats(detections, windows)
    assert stats.true_positives == (1.0, 5.0)
    assert stats.false_negatives == (9.0,)
    assert stats.false_positives == (3.7, 12.0)


def test_the_window_ends_two_seconds_after_the_wakeword() -> None:
    # [2.0, 3.0] accepts detections from 2.000 s to (3.0 + 1.0) + 1.0 = 5.000 s inclusive.
    assert detection_stats([0, 5000], [(2.0, 3.0)]).true_positives == (2.0,)
    late = detection_stats([0, 5001], [(2.0, 3.0)])
    assert late.true_positives == () and late.false_positives == (5.001,)
    early = detection_stats([0, 1999], [(2.0, 3.0)])
    assert early.false_negatives == (2.0,) and early.false_positives == (1.999,)


def test_a_detection_counts_for_the_first_window_that_claims_it() -> None:
    # 3.5 s lies in [1, 2 + 2] and in [3, 4 + 2]: the first window takes it, the second is
    # missed.
    stats = detection_stats([0, 3500], [(1.0, 2.0), (3.0, 4.0)])
    assert stats.true_positives == (1.0,) and stats.false_negatives == (3.0,)
    assert stats.false_positives == ()


def test_debounce_drops_later_ones_within_a_second_of_a_kept_one() -> None:
    # 11.000 is within (10.000, 11.000] and goes; 11.001 is not, and stays: it then
    # debounces only (11.001, 12.001], so 12.500 stays too. A repeated timestamp is not
    # strictly later and survives.
    stats = detection_stats([0, 10000, 11000, 11001, 12500, 20000, 20000], [])
    assert stats.false_positives == (10.0, 11.001, 12.5, 20.0, 20.0)


def test_no_detection_at_all_is_an_error() -> None:
    with pytest.raises(SwwScoreError, match="sync pulse"):
        detection_stats([], [(1.0, 2.0)])


def test_worked_example_duty_cycle() -> None:
    # Ten frames 32 ms apart (3200 ticks), the processing pin high 1795 ticks each, the 10th
    # stop missing: the longer list is cut to nine pairs.
    starts = [100 + 3200 * k for k in range(10)]
    stops = [s + 1795 for s in starts[:9]]
    duty = duty_cycle(starts, stops)
    assert duty.warnings == (
        "Number of start times (10) and number of stop times (9) should be equal",
    )
    assert duty.period_s == pytest.approx(0.032, abs=1e-15)
    assert duty.processing_s == pytest.approx(0.01795, abs=1e-15)
    assert general5(duty.duty_cycle) == "0.56094"
    assert general5(duty.period_s) == "0.032"
    assert general5(duty.throughput) == "55.71"
    assert duty.start_times_s[1] == 3300 * 10e-6


def test_duty_cycle_arithmetic_is_numpys() -> None:
    rng = random.Random(4)
    for _ in range(200):
        n = rng.randint(2, 100)
        starts = sorted(rng.randint(0, 10**7) for _ in range(n))
        stops = [s + rng.randint(1, 3000) for s in starts]
        duty = duty_cycle(starts, stops)
        s = np.array(starts) * 10e-6
        e = np.array(stops) * 10e-6
        assert duty.period_s == np.mean(np.diff(s))
        assert duty.processing_s == np.mean(e - s)
        assert duty.duty_cycle == np.mean(e - s) / np.mean(np.diff(s))


def test_period_spread_warning_and_too_few_frames() -> None:
    duty = duty_cycle([0, 3200, 6500], [100, 3300, 6600])
    assert duty.warnings == ("Frame period variation exceeds 2%: min 32.000 ms, max 33.000 ms",)
    with pytest.raises(SwwScoreError, match="a period needs two"):
        duty_cycle([0, 3200], [100])


@pytest.mark.parametrize(
    ("value", "printed"),
    [
        (0.5608491, "0.56085"),
        (55.742389, "55.742"),
        (0.031987, "0.031987"),
        (1.0, "1.0"),
        (1234.5678, "1234.6"),
        # Fixed point needs a digit after the point, so 5 digits switch to exponent form
        # from 10^4 on (not 10^5): every throughput from 9999.95 inf./s.
        (9999.94, "9999.9"),
        (9999.95, "1e+04"),
        (55742.3, "5.5742e+04"),
        (3.125e-05, "3.125e-05"),
        (0.0001, "0.0001"),
    ],
)
def test_general_format_five_significant_digits(value: float, printed: str) -> None:
    assert general5(value) == printed


def stream_result(
    detections: list[int], windows: list[tuple[float, float]], on_ticks: int = 1795
) -> SwwResult:
    starts = [100 + 3200 * k for k in range(100)]
    stops = [s + on_ticks for s in starts]
    # 12 s of 2e-5 J per 1 ms sample between the start and stop events.
    samples = [2e-5] * 13000
    window = energy_window(samples, [(0, 500), (1, 12500)], 1)
    energy = score_energy([window], required_windows=SWW_REQUIRED_WINDOWS)
    return SwwResult(
        "a.wav", 12.0, detection_stats(detections, windows), duty_cycle(starts, stops), energy
    )


def test_results_lines_energy_block_then_the_sww_lines() -> None:
    result = stream_result([100, 1400, 5300], [(1.0, 1.5), (5.0, 5.5), (9.0, 9.4)])
    assert result.lines() == [
        "Power Edition Output",
        "Energy data for trial 0",
        "  Elapsed time  : 12.0",
        "  Inferences    : 1",
        "  Power         : 20.0000 mW.",
        "  Total Energy  : 240000.000 uJ",
        "  Energy/Inf    : 240000.000 uJ/inf",
        "-" * 57,
        "Median energy cost is 240000.0000 uJ/inf.",
        "-" * 57,
        "Accuracy: 2 True positives, 1 False negatives, 0 False positives",
        "Average duty cycle: 0.56094",
        "Average period: 0.032 s",
        "Estimated throughput: 55.71 inf./sec.",
    ]
    reading = result.reading
    assert (reading.true_positives, reading.false_negatives, reading.false_positives) == (2, 1, 0)
    assert (reading.throughput, reading.duty_cycle, reading.power_mw) == (55.71, 0.56094, 20.0)
    assert reading.f1 == 2 * 2 / (2 * 2 + 0 + 1)
    # Three windows, not the long file's 50: the checker refuses the accuracy.
    assert not reading.has_accuracy and not reading.valid and not result.valid
    assert result.problems == (
        "the checker needs TP + FN = 50 (the long file's wakewords); this stream has 3: not "
        "valid for submission",
    )
    assert result.target_met  # 1 FN and 0 FP are within the closed division's 8 and 8


def long_file(misses: int, false: int) -> tuple[list[int], list[tuple[float, float]]]:
    """50 windows 10 s apart; all detected but ``misses``; ``false`` false positives 5 s
    after the first windows."""
    windows = [(10.0 * k + 1, 10.0 * k + 1.5) for k in range(50)]
    detections = [0]
    for k, (a, _) in enumerate(windows):
        if k >= misses:
            detections.append(round((a + 0.2) * 1000))
        if k < false:
            detections.append(round((a + 5.0) * 1000))
    return sorted(detections), windows


@pytest.mark.parametrize(
    ("misses", "false", "met"),
    [(0, 0, True), (8, 8, True), (9, 0, False), (0, 9, False)],
)
def test_closed_division_limits(misses: int, false: int, met: bool) -> None:
    detections, windows = long_file(misses, false)
    result = stream_result(detections, windows)
    r = result.reading
    assert (r.true_positives, r.false_negatives, r.false_positives) == (50 - misses, misses, false)
    assert r.has_accuracy and r.valid and result.valid
    assert result.target_met is met
    assert r.f1 == 2 * (50 - misses) / (2 * (50 - misses) + false + misses)


def test_exponent_forms_the_checker_misreads() -> None:
    detections, windows = long_file(0, 0)
    # A 10-tick processing time: throughput 1/1e-4 = 10000 prints 1e+04, which the
    # checker's pattern cannot read at all.
    fast = stream_result(detections, windows, on_ticks=10)
    assert "Estimated throughput: 1e+04 inf./sec." in fast.lines()
    assert fast.reading.throughput is None and not fast.valid
    assert "cannot read the throughput 1e+04" in fast.problems[0]
    # A duty cycle below 1e-4 prints in exponent form; the checker reads the mantissa.
    starts = [32000 * k for k in range(3)]
    lines = [
        f"Average duty cycle: {general5(duty_cycle(starts, [s + 1 for s in starts]).duty_cycle)}"
    ]
    assert lines == ["Average duty cycle: 3.125e-05"]
    assert checker_reading(lines).duty_cycle == 3.125


def test_the_last_matching_line_wins() -> None:
    lines = [
        "Accuracy: 1 True positives, 49 False negatives, 0 False positives",
        "Accuracy: 45 True positives, 5 False negatives, 3 False positives",
        "Estimated throughput: 10.0 inf./sec.",
        "x Estimated throughput:   55.5 inf./sec. (anywhere in the line)",
    ]
    r = checker_reading(lines)
    assert (r.true_positives, r.false_negatives, r.false_positives) == (45, 5, 3)
    assert r.throughput == 55.5 and r.duty_cycle is None and not r.valid
