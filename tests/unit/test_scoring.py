"""farm.scoring: performance mode, targets and the package contract
(docs/measurement.md#performance-mode, docs/measurement.md#accuracy-targets)."""

from __future__ import annotations

import math
import re
import subprocess
import sys

import pytest

from farm.protocol import dut
from farm.scoring import (
    LAP_MODULUS,
    TARGETS,
    accuracy_target,
    check_accuracy_target,
    check_sww_target,
    checker_capture,
    perf_window,
    perf_window_from_elapsed,
    perf_window_from_laps,
    printed_value,
    runner_throughput,
    score_performance,
    wrap_corrected_elapsed_us,
)
from farm.scoring.performance import ERROR_1, ERROR_2, RULE

# The checker's perf pattern (docs/measurement.md#official-results-lines): from line start,
# anything, a space, the phrase, >= 1 whitespace, the number, " inf./sec.".
CHECKER_PERF = re.compile(r"^.* Median throughput is\s+([0-9.]+) inf\./sec\.")


def five(elapsed_us: list[int], n: int = 70) -> list:
    return [perf_window_from_elapsed(n, e) for e in elapsed_us]


# --- package contract ----------------------------------------------------------------------


def test_import_needs_only_the_standard_library() -> None:
    code = (
        "import sys, farm.scoring as s\n"
        "heavy = {'numpy', 'sklearn', 'scipy', 'asyncio'} & set(sys.modules)\n"
        "assert not heavy, heavy\n"
        "w = [s.perf_window_from_elapsed(70, 10_500_000 + i) for i in range(5)]\n"
        "assert s.score_performance(w, loop_seconds=60).valid\n"
        "assert s.latency_summary([100] * 64, final_query_issued_s=60).early_stopping_met\n"
        "assert {'numpy', 'sklearn'}.isdisjoint(sys.modules)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_lap_modulus_is_the_protocol_layers() -> None:
    assert LAP_MODULUS == dut.LAP_MODULUS == 2**32


# --- performance ---------------------------------------------------------------------------


def test_throughput_is_commanded_n_over_dut_seconds() -> None:
    assert runner_throughput(70, 10_388_207) == 70 / (10_388_207 / 1_000_000)
    assert runner_throughput(70, 0) == 0.0
    assert runner_throughput(70, -5) == 0.0
    assert runner_throughput(70, None) == 0.0


def test_median_of_five_is_the_third_sorted_window() -> None:
    elapsed = [10_100_000, 10_500_000, 10_300_000, 10_200_000, 10_400_000]
    result = score_performance(five(elapsed), loop_seconds=60.0)
    assert result.error is None
    assert result.median_throughput == 70 / (10_300_000 / 1e6)
    assert result.runner_median_throughput == result.median_throughput


def test_latency_is_final_report_1000_over_median() -> None:
    # docs/measurement.md#published-latency: median 15396.099 inf/s -> 0.064951 ms (a window
    # mean, not a p90), quoted truncated: 1000 / 15396.099 = 0.06495155..., which rounds to
    # 0.064952.
    windows = [perf_window_from_elapsed(15396099, 1_000_000_000)] * 5
    result = score_performance(windows, loop_seconds=5000.0)
    assert result.median_throughput == 15396.099
    assert result.latency_ms == 1000 / 15396.099
    assert repr(result.latency_ms).startswith("0.064951")
    assert f"{result.latency_ms:.6f}" == "0.064952"


def test_median_line_is_10_3f_and_matches_the_checker() -> None:
    windows = [perf_window_from_elapsed(15396099, 1_000_000_000)] * 5  # 15396.099 inf/s
    result = score_performance(windows, loop_seconds=5000.0)
    assert result.median_text == " 15396.099"
    assert result.median_line == "Median throughput is  15396.099 inf./sec."
    assert result.lines() == [RULE, result.median_line, RULE]
    assert RULE == "-" * 57
    line = f"0808.232415 ulp-mlperf: {result.median_line}"
    match = CHECKER_PERF.match(line)
    assert match and float(match.group(1)) == 15396.099


def test_error_1_wins_over_error_2_and_suppresses_the_median() -> None:
    both = score_performance(five([1_000_000] * 4), loop_seconds=4.0)
    assert both.error == 1 and both.lines() == [ERROR_1]
    assert both.median_throughput is None and both.latency_ms is None and not both.valid
    only_2 = score_performance(five([1_000_000] * 5), loop_seconds=9.999)
    assert only_2.error == 2 and only_2.lines() == [ERROR_2]
    # ic02's shipped script loops over all 200 files: ERROR 1 even though every window is fine.
    many = score_performance(five([10_500_000] * 200), loop_seconds=3000.0)
    assert many.error == 1
    assert ERROR_1 == "ERROR 1 - loop_count was not exactly 5."
    assert ERROR_2 == "ERROR 2 - loop exited before 10 seconds elapsed."


def test_error_2_threshold_is_strictly_below_ten_seconds() -> None:
    assert score_performance(five([10_500_000] * 5), loop_seconds=10.0).error is None


def test_official_runner_accepts_short_windows_we_do_not() -> None:
    result = score_performance(five([2_000_000] * 5), loop_seconds=11.0)
    assert result.error is None and result.median_line is not None
    assert not result.valid
    assert any("shorter than 10.0 s" in p for p in result.problems)


def test_runtime_met_is_strict_min_duration_is_not() -> None:
    exactly = perf_window_from_elapsed(70, 10_000_000)
    assert not exactly.runtime_met and exactly.min_duration_met
    above = perf_window_from_elapsed(70, 10_000_001)
    assert above.runtime_met and above.min_duration_met


def test_silent_phase_limit_applies_on_a_direct_link_only() -> None:
    windows = five([10_500_000] * 4 + [30_000_000])
    direct = score_performance(windows, loop_seconds=80.0)
    assert not direct.valid and any("silent-phase" in p for p in direct.problems)
    assert not direct.windows[-1].within_silent_limit
    assert direct.windows[0].within_silent_limit
    via_interface = score_performance(windows, loop_seconds=80.0, direct_link=False)
    assert via_interface.valid


def test_lap_wrap_is_corrected_and_reported_never_a_silent_zero() -> None:
    start, end = LAP_MODULUS - 1_000_000, 9_050_000
    window = perf_window(70, start, end)
    assert window.wrapped
    assert window.runner_elapsed_us == end - start < 0
    assert window.elapsed_us == 10_050_000 == dut.elapsed_us(start, end)
    assert window.runner_throughput == 0.0  # what the official runner records
    assert window.throughput == 70 / 10.05

    others = five([10_100_000, 10_200_000, 10_300_000, 10_400_000])
    result = score_performance([window, *others], loop_seconds=60.0)
    assert result.wrapped and result.valid
    # Corrected, the wrapped window is the fastest: the median is the 10.2 s window.
    assert result.median_throughput == 70 / 10.2
    # The runner counts it as 0 instead, which moves its median to the 10.3 s window.
    assert result.runner_median_throughput == 70 / 10.3
    assert any("wrapped" in p and "throughput 0" in p for p in result.problems)


def test_wrap_helper_and_non_32_bit_values() -> None:
    assert wrap_corrected_elapsed_us(5, 10) == (5, False)
    assert wrap_corrected_elapsed_us(LAP_MODULUS - 1, 0) == (1, True)
    with pytest.raises(ValueError, match="not a counter wrap"):
        wrap_corrected_elapsed_us(LAP_MODULUS + 10, 5)
    with pytest.raises(ValueError):
        wrap_corrected_elapsed_us(-1, 5)


def test_laps_first_is_start_last_is_end_and_missing_laps_count_as_zero() -> None:
    window = perf_window_from_laps(20, [1_000, 5_000_000, 11_001_000])
    assert (window.start_us, window.end_us, window.elapsed_us) == (1_000, 11_001_000, 11_000_000)
    missing = perf_window_from_laps(20, [1_000])
    assert missing.laps_missing and missing.throughput == 0.0 == missing.runner_throughput
    result = score_performance([missing, *five([10_500_000] * 4, n=20)], loop_seconds=60.0)
    # The missing window enters the median as 0, as in the runner.
    assert result.median_throughput == 20 / 10.5
    assert not result.valid
    assert any("missing" in p for p in result.problems)


def test_zero_elapsed_enters_median_as_zero() -> None:
    result = score_performance(five([0, 0, 0, 10_500_000, 10_500_000]), loop_seconds=60.0)
    assert result.median_throughput == 0.0
    assert result.latency_ms == math.inf
    assert not result.valid


# --- targets and the printed-value rule ----------------------------------------------------


def test_python_rounds_the_binary_double_when_printing() -> None:
    # 89.95 is stored as 89.9500000000000028..., 89.85 as 89.8499999999999943...; the
    # %-operator (what the official tools' documentation quotes) and the runner's f-string agree.
    assert "%.1f" % 89.95 == "90.0" == f"{89.95:2.1f}"  # noqa: UP031
    assert "%.1f" % 89.85 == "89.8" == f"{89.85:2.1f}"  # noqa: UP031
    assert "%.1f" % 90.05 == "90.0"  # noqa: UP031
    assert "%.3f" % 0.8495 == "0.850" == f"{0.8495:.3f}"  # noqa: UP031
    assert "%.3f" % 0.8485 == "0.849"  # noqa: UP031


def test_kws_89_95_prints_90_0_and_passes() -> None:
    top1 = 100 * 1799 / 2000  # a subset of 2000 files with 1799 correct
    assert top1 == 89.95
    check = check_accuracy_target("kws01", top1)
    assert check.printed == "90.0" and check.captured == 90.0 and check.passed
    assert not check_accuracy_target("kws", 89.94).passed


def test_ad_auc_0_8495_prints_0_850_and_passes() -> None:
    check = check_accuracy_target("ad01", 0.8495)
    assert check.printed == "0.850" and check.passed
    assert not check_accuracy_target("ad01", 0.84949).passed


def test_nan_auc_is_not_captured_and_fails() -> None:
    check = check_accuracy_target("ad01", math.nan)
    assert check.printed == "nan" and check.captured is None and not check.passed
    assert checker_capture("91.3") == 91.3
    assert checker_capture("-1.0") is None


def test_targets_per_version() -> None:
    assert {v: sorted(t) for v, t in TARGETS.items()} == {
        "v1.0": ["ad", "ic", "kws", "vww"],
        "v1.1": ["ad", "ic", "kws", "vww"],
        "v1.2": ["ad", "ic", "kws", "vww"],
        "v1.3": ["ad", "ic", "kws", "sww", "vww"],
        "v1.4": ["ad", "ic", "ic2", "kws", "sww", "vww"],
    }
    assert accuracy_target("kws01").threshold == 90.0
    assert accuracy_target("vww01").threshold == 80.0
    assert accuracy_target("ic01").threshold == 85.0
    assert accuracy_target("ic02").threshold == 91.0
    assert accuracy_target("ad01").threshold == 0.85 and accuracy_target("ad").metric == "auc"
    with pytest.raises(KeyError, match="ic02"):
        accuracy_target("ic02", "v1.3")
    with pytest.raises(KeyError, match="unknown MLPerf Tiny version"):
        accuracy_target("kws01", "v0.5")
    assert check_accuracy_target("ic02", 90.95).passed  # prints 91.0
    assert not check_accuracy_target("ic01", 84.94).passed


def test_sww_target_counts() -> None:
    assert check_sww_target(44, 6, 4)
    assert not check_sww_target(41, 9, 0)
    assert not check_sww_target(45, 4, 9)
    assert not check_sww_target(40, 4, 0)  # TP + FN != 50
    with pytest.raises(ValueError, match="sww"):
        check_accuracy_target("sww01", 0.9)


def test_printed_value_forms() -> None:
    assert printed_value("top1", 91.25) == "91.2"  # 91.25 is exact: half-even on the binary
    assert printed_value("top1", 5.0) == "5.0"
    assert printed_value("auc", 0.97849) == "0.978"
