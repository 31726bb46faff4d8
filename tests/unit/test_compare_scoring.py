"""The verdict between two runs (farm/scoring/compare.py), on worked examples whose numbers
are computed here by hand."""

from __future__ import annotations

import math

import pytest

from farm.scoring.compare import (
    METRICS,
    RELATIVE_FLOOR,
    AccuracySample,
    RunPoint,
    Z,
    bootstrap_interval,
    change_uncertainty,
    compare_noisy,
    identity_changes,
    judge,
    prediction_changes,
    robust_sigma,
    run_to_run_sigma,
)

METRIC = {m.key: m for m in METRICS}


def test_robust_sigma_is_the_scaled_median_absolute_deviation() -> None:
    # median 10; |deviations| 0, 1, 1, 2, 50 -> MAD 1 -> sigma 1.4826: the outlier 60 (an
    # earlier regression in the history) does not inflate it.
    assert robust_sigma([10, 9, 11, 12, 60]) == pytest.approx(1.4826)
    assert robust_sigma([5.0]) == 0.0


def test_the_floor_stands_alone_for_a_tiny_history() -> None:
    throughput = METRIC["throughput_ips"]
    # Two earlier runs 100 and 110: a MAD of them would say sigma 7.4, but two runs are too
    # few; the floor is 0.25 % of 1000.
    assert run_to_run_sigma(throughput, [100, 110], 1000.0) == pytest.approx(2.5)
    # Enough history: its spread, where larger than the floor.
    assert run_to_run_sigma(throughput, [990, 1000, 1010, 1000], 1000.0) == pytest.approx(
        1.4826 * 5
    )
    # p90 is in whole µs: never below one µs.
    assert run_to_run_sigma(METRIC["p90_us"], [], 100.0) == 1.0


def test_the_uncertainty_adds_the_baselines_own_spread() -> None:
    assert change_uncertainty(1.0, 1) == pytest.approx(math.sqrt(2))
    # A median of 5 runs spreads sqrt(pi / 10) sigma.
    assert change_uncertainty(1.0, 5) == pytest.approx(math.sqrt(1 + math.pi / 10))


def test_a_three_percent_slower_board_is_worse_and_noise_is_same() -> None:
    throughput = METRIC["throughput_ips"]
    history = [1000.0, 1001.0, 999.0, 1000.5, 999.5]
    # MAD 0.5 -> sigma 0.741 < floor 2.5; one baseline run: u = 2.5 x sqrt(2) = 3.536,
    # threshold 4u = 14.14 inf/s (1.4 %).
    slower = compare_noisy(throughput, [1000.0], 1000.0 / 1.03, history)
    assert slower.verdict == "worse"
    assert slower.change == pytest.approx(-29.126, abs=1e-3)
    assert slower.change_pct == pytest.approx(-2.9126, abs=1e-4)
    assert slower.threshold == pytest.approx(Z * RELATIVE_FLOOR * 1000 * math.sqrt(2))
    assert compare_noisy(throughput, [1000.0], 990.0, history).verdict == "same"
    assert compare_noisy(throughput, [1000.0], 1020.0, history).verdict == "better"
    # A noisy metric's own history widens the band: sigma 1.4826 x 20 -> the same 3 % drop
    # is within the noise.
    noisy = [960.0, 1000.0, 1040.0, 980.0, 1020.0]
    assert compare_noisy(throughput, [1000.0], 971.0, noisy).verdict == "same"


def test_energy_five_percent_higher_is_worse() -> None:
    verdict = compare_noisy(METRIC["energy_uj"], [10.0, 10.0, 10.0], 10.5, [10.0] * 3)
    assert verdict.verdict == "worse" and verdict.change_pct == pytest.approx(5.0)
    assert verdict.note == ""


def test_the_latency_bootstrap_interval_is_seeded_and_finds_a_shift() -> None:
    p90 = METRIC["p90_us"]
    before = [1000 + (i % 20) for i in range(200)]
    after = [round(v * 1.03) for v in before]
    interval = bootstrap_interval(p90, before, after)
    assert interval is not None and interval[0] > 0
    assert bootstrap_interval(p90, before, after) == interval  # same seed, same interval
    # Identical runs: the interval holds 0.
    same = bootstrap_interval(p90, before, list(before))
    assert same is not None and same[0] <= 0 <= same[1]
    # Early stopping needs 64 queries.
    assert bootstrap_interval(METRIC["p90_early_stop_us"], before[:63], after[:63]) is None


def test_a_latency_change_needs_both_the_history_and_the_distributions() -> None:
    p90 = METRIC["p90_us"]
    # 100 queries spread evenly over 1000..1990 µs: p90 = sorted[90] = 1900 µs.
    base = [1000 + 10 * i for i in range(100)]
    # 2 % slower: p90 1938 µs, 38 µs more against a threshold of 4 x sqrt(2) x 0.25 % x 1900
    # = 26.9 µs, so the run-to-run test alone would call it worse; but with 100 queries this
    # wide the p90 itself is uncertain by tens of µs, and the bootstrap interval holds 0.
    shifted = [round(v * 1.02) for v in base]
    assert (sorted(base)[90], sorted(shifted)[90]) == (1900, 1938)
    verdict = compare_noisy(p90, [1900], 1938, [1900] * 3, latencies=(base, shifted))
    assert verdict.threshold == pytest.approx(4 * math.sqrt(2) * 0.0025 * 1900)
    assert verdict.interval is not None and verdict.interval[0] <= 0 < verdict.interval[1]
    assert verdict.verdict == "same" and "do not differ" in verdict.note
    # 1,000 queries, narrowly spread, 3 % slower: both agree.
    narrow = [1000 + (i % 20) for i in range(1000)]
    slower = [round(v * 1.03) for v in narrow]
    before, after = sorted(narrow)[900], sorted(slower)[900]
    worse = compare_noisy(p90, [before], after, [before] * 3, latencies=(narrow, slower))
    assert worse.verdict == "worse" and worse.interval is not None and worse.interval[0] > 0


def _acc(predicted: list[int], labels: list[int]) -> list[AccuracySample]:
    # One-hot-ish vectors over 3 classes: the predicted class gets 0.8.
    return [
        AccuracySample(i, y, [0.8 if c == p else 0.1 for c in range(3)])
        for i, (p, y) in enumerate(zip(predicted, labels, strict=True))
    ]


def test_accuracy_changes_are_exact_and_list_the_samples() -> None:
    labels = [0, 1, 2, 0, 1]
    before = _acc([0, 1, 2, 0, 2], labels)
    after = _acc([0, 1, 1, 0, 2], labels)  # row 2 now wrong: one sample
    changes = prediction_changes(before, after)
    assert [(c.index, c.before, c.after, c.correct_before, c.correct_after) for c in changes] == [
        (2, 2.0, 1.0, True, False)
    ]
    base = RunPoint("r1", {"top1": 80.0, "auc": 0.9}, accuracy=before)
    now = RunPoint("r2", {"top1": 60.0, "auc": 0.8}, accuracy=after)
    verdicts = {v.metric: v for v in judge("accuracy", now, [base], [base])}
    top1 = verdicts["top1"]
    assert top1.verdict == "worse" and top1.change == pytest.approx(-20.0)
    assert [c.index for c in top1.samples] == [2] and top1.threshold == 0.0
    # No change of the printed value but two predictions swapped: same, and said so.
    swapped = _acc([0, 1, 2, 1, 1], labels)
    equal = RunPoint("r3", {"top1": 80.0, "auc": 0.9}, accuracy=swapped)
    top1 = judge("accuracy", equal, [base], [base])[0]
    assert top1.verdict == "same" and "2 prediction(s) changed" in top1.note


def test_anomaly_scores_that_moved_are_listed_per_file() -> None:
    # Two windows per file (row): the file's score is their mean.
    before = [AccuracySample(r, r % 2, [s]) for r, s in [(0, 0.1), (0, 0.3), (1, 0.9), (1, 0.7)]]
    after = [AccuracySample(r, r % 2, [s]) for r, s in [(0, 0.1), (0, 0.3), (1, 0.9), (1, 0.5)]]
    changes = prediction_changes(before, after)
    assert [(c.index, c.before, c.after) for c in changes] == [(1, 0.8, 0.7)]
    assert changes[0].correct_after is None


def test_what_changed_between_two_runs() -> None:
    a = {"board": "b1", "firmware_sha256": "aa", "options": "{}"}
    assert identity_changes(a, dict(a)) == ()
    b = {**a, "firmware_sha256": "bb"}
    (change,) = identity_changes(a, b)
    assert (change.what, change.before, change.after) == ("firmware image", "aa", "bb")
    # A digest known for one run only is a change too.
    assert [c.field for c in identity_changes({"board": "b1"}, {"board": "b1", "baud": 9600})] == [
        "baud"
    ]


def test_judge_marks_new_and_missing_metrics() -> None:
    base = RunPoint("r1", {"throughput_ips": 100.0})
    assert [v.verdict for v in judge("performance", None, [base], [base])] == ["missing"]
    fresh = RunPoint("r2", {"throughput_ips": 100.0})
    assert [v.verdict for v in judge("performance", fresh, [], [])] == ["new"]
    # A zero throughput has no finite latency: null in the summary, so missing.
    assert judge("performance", RunPoint("r3", {"throughput_ips": None}), [base], [base])[
        0
    ].verdict == ("missing")
