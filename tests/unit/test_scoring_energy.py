"""Energy scoring (docs/measurement.md#energy-mode): the window between the last two events, the
runner's time subtraction, numpy's sum and median, and the validity lines."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest

from farm.scoring import EnergyEventError, energy_window, score_energy
from farm.scoring.energy import BELOW_MIN_DURATION, ERROR_COUNT, ERROR_DURATION, RULE


def samples_with(n: int, value: float = 3.2e-6, seed: int = 0) -> list[float]:
    rng = random.Random(seed)
    return [value * (1 + 0.05 * rng.uniform(-1, 1)) for _ in range(n)]


def test_elapsed_is_the_runners_difference_of_times() -> None:
    # The runner divides each index by 1000, then subtracts: 10886 samples print as
    # 10.886000000000001 (docs/measurement.md#energy-per-inference); (stop - start)/1000 would
    # be 10.886.
    samples = samples_with(13000)
    window = energy_window(samples, [(0, 1459), (1, 12345)], 250)
    assert window.elapsed_s == 12345 / 1000 - 1459 / 1000 == 10.886000000000001
    assert (12345 - 1459) / 1000 == 10.886
    assert window.lines()[1] == "  Elapsed time  : 10.886000000000001"


def test_energy_is_numpy_sum_of_the_half_open_slice() -> None:
    samples = samples_with(15000, seed=1)
    samples[2000] = 1.0  # first sample inside
    samples[13000] = 1000.0  # idx_stop itself is outside
    window = energy_window(samples, [(4, 2000), (5, 13000)], 250)
    assert window.energy_j == float(np.sum(np.array(samples[2000:13000])))
    assert 1.0 < window.energy_j < 1000.0
    assert window.energy_per_inference_j == window.energy_j / 250
    assert window.power_mw == 1e3 * window.energy_j / window.elapsed_s
    assert window.sample_count == 15000


def test_only_the_last_two_events_count() -> None:
    samples = samples_with(14000, seed=2)
    window = energy_window(samples, [(0, 100), (1, 1500), (2, 12600)], 70)
    assert (window.idx_start, window.idx_stop) == (1500, 12600)


def test_event_counters_must_be_consecutive_and_two_must_exist() -> None:
    samples = samples_with(100)
    with pytest.raises(EnergyEventError, match="not consecutive"):
        energy_window(samples, [(0, 10), (2, 90)], 1)
    with pytest.raises(EnergyEventError, match="two are needed"):
        energy_window(samples, [(0, 10)], 1, trial=3)
    # Counters arrive as strings from the LPM01A lines.
    assert energy_window(samples, [("7", 10), ("8", 90)], 1).idx_stop == 90


def runner_median_uj(windows: list[tuple[list[float], list[tuple[int, int]], int]]) -> str:
    # The runner's median step re-expressed with numpy.
    per_inf = np.nan * np.zeros(len(windows))
    for i, (samples, events, n) in enumerate(windows):
        start, stop = events[-2][1], events[-1][1]
        per_inf[i] = np.sum(np.array(samples[start:stop])) / n
    return f"{1e6 * np.median(per_inf):5.4f}"


def test_median_of_five_windows_equals_the_runner() -> None:
    raw = []
    for i in range(5):
        samples = samples_with(12000 + 37 * i, value=3.2e-6 * (1 + i / 10), seed=10 + i)
        raw.append((samples, [(2 * i, 500 + i), (2 * i + 1, 11000 + 7 * i)], 250))
    windows = [energy_window(s, e, n, trial=i) for i, (s, e, n) in enumerate(raw)]
    result = score_energy(windows)
    per_inf = sorted(w.energy_per_inference_j for w in windows)
    assert result.median_energy_per_inference_j == per_inf[2]
    assert result.median_text == runner_median_uj(raw)
    assert result.median_line == f"Median energy cost is {result.median_text} uJ/inf."
    assert result.valid and result.error_lines == [] and result.problems == ()
    lines = result.lines()
    assert lines[0] == "Power Edition Output"
    assert lines[1:7] == windows[0].lines()
    assert lines[-3:] == [RULE, result.median_line, RULE]


def test_window_block_formats() -> None:
    samples = [1e-5] * 12000
    window = energy_window(samples, [(0, 1000), (1, 11500)], 250, trial=2)
    energy = float(np.sum(np.array(samples[1000:11500])))
    assert window.lines() == [
        "Energy data for trial 2",
        "  Elapsed time  : 10.5",
        "  Inferences    : 250",
        f"  Power         : {1e3 * energy / 10.5:5.4f} mW.",
        f"  Total Energy  : {energy * 1e6:.3f} uJ",
        f"  Energy/Inf    : {energy / 250 * 1e6:.3f} uJ/inf",
    ]
    assert window.lines()[3] == "  Power         : 10.0000 mW."


def test_nan_sample_makes_the_median_nan_and_uncapturable() -> None:
    good = [energy_window(samples_with(12000, seed=i), [(0, 0), (1, 11000)], 70) for i in range(4)]
    samples = samples_with(12000, seed=9)
    samples[5000] = math.nan  # an unparsable LPM01A value
    bad = energy_window(samples, [(0, 0), (1, 11000)], 70, trial=4)
    assert bad.nan_samples == 1 and math.isnan(bad.energy_j)
    result = score_energy([*good, bad])
    assert math.isnan(result.median_energy_per_inference_j)
    assert result.median_text == "  nan"
    assert not result.valid
    assert any("unreadable or lost sample(s)" in p for p in result.problems)


def test_short_window_is_tagged_and_errors_only_in_the_log() -> None:
    windows = [
        energy_window(samples_with(12000, seed=i), [(0, 0), (1, 11000 if i else 9999)], 70, trial=i)
        for i in range(5)
    ]
    assert windows[0].elapsed_s == 9.999 and windows[0].below_min_duration
    assert windows[0].lines()[1] == f"  Elapsed time  : 9.999{BELOW_MIN_DURATION}"
    result = score_energy(windows)
    assert result.error_lines == [ERROR_DURATION]
    assert not any(line.startswith("ERROR") for line in result.lines())  # not in results.txt
    assert not result.valid


def test_window_count_must_be_five_or_one_for_sww() -> None:
    windows = [energy_window(samples_with(12000), [(0, 0), (1, 11000)], 70) for _ in range(4)]
    result = score_energy(windows)
    assert result.error_lines == [ERROR_COUNT.format(n=5)]
    assert ERROR_COUNT.format(n=5) == (
        "ERROR: Not valid for submission.  Energy mode must include exactly 5 measurements."
    )
    assert score_energy(windows[:1], required_windows=1).valid


def test_zero_length_window_does_not_crash() -> None:
    window = energy_window([1e-5] * 10, [(0, 5), (1, 5)], 70)
    assert window.elapsed_s == 0.0 and window.energy_j == 0.0
    assert math.isnan(window.power_mw)  # numpy: 0/0 -> nan with a warning
    assert window.below_min_duration


def test_exactly_ten_seconds_is_enough() -> None:
    window = energy_window([1e-5] * 12000, [(0, 1000), (1, 11000)], 70)
    assert window.elapsed_s == 10.0 and not window.below_min_duration
    assert window.lines()[1] == "  Elapsed time  : 10.0"
    assert score_energy([window] * 5).error_lines == []
