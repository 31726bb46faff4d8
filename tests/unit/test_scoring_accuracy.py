"""Accuracy scoring (docs/measurement.md#accuracy-mode): each number equals what the
official runner computes, checked against an independent numpy/scikit-learn transcription
of its summary step and against hand-computed examples."""

from __future__ import annotations

import functools
import math
import operator
import random
from collections.abc import Sequence

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from farm.models import format_results
from farm.protocol.dut import Results, classify_line
from farm.scoring import (
    ad_thresholds,
    ad_top1_quirk,
    normalise,
    roc_auc,
    score_accuracy,
    top1_percent,
)

Sample = tuple[str, int, Sequence[float]]


def runner_reference(samples: list[Sample]) -> tuple[float, float]:
    """The runner's accuracy summary, re-expressed with numpy and scikit-learn: normalise
    with the (3.11, left-to-right) built-in sum, average per file with np.mean(axis=0),
    argmax top-1 or the AD threshold sweep, and its roc_auc_score call."""
    per_file: dict[str, tuple[int, list[list[float]]]] = {}
    for file, label, raw in samples:
        total = functools.reduce(operator.add, raw, 0)
        vec = list(raw) if len(raw) == 1 else [v / total for v in raw]
        per_file.setdefault(file, (label, []))[1].append(vec)
    y_true = np.array([label for label, _ in per_file.values()])
    y_pred = np.array([np.mean(rows, axis=0) for _, rows in per_file.values()])
    if y_pred.shape[1] == 1:
        lo, hi = np.amin(y_pred), np.amax(y_pred)
        best = 0.0
        for threshold in lo + np.arange(0.0, 1.0, 0.01) * (hi - lo):
            pred = (y_pred > threshold).astype(int)
            tp = np.sum(pred[y_true == 1] == 1)
            fp = np.sum(pred[y_true == 0] == 1)
            fn = np.sum(pred[y_true == 1] == 0)
            precision = tp / (tp + fp + 1e-8)
            recall = tp / (tp + fn + 1e-8)
            best = max(best, 100 * (precision + recall) / 2)
        top1 = float(best)
    else:
        top1 = float(100 * np.sum(y_true == np.argmax(y_pred, axis=1)) / len(y_pred))
    if y_pred.shape[1] == 2:
        auc = roc_auc_score(y_true, y_pred[:, 1])
    else:
        auc = roc_auc_score(y_true, y_pred, multi_class="ovr")
    return top1, float(auc)


def dut_vector(fmt: str, values: list[float]) -> tuple[float, ...]:
    # Through the reference firmware's printing and our protocol parser, as a run sees it.
    event = classify_line(f"m-results-[{format_results(fmt, values)}]".encode())  # type: ignore[arg-type]
    assert isinstance(event, Results)
    return event.values


def classification_samples(fmt: str, classes: int, files: int, seed: int) -> list[Sample]:
    rng = random.Random(seed)
    out: list[Sample] = []
    for i in range(files):
        label = i % classes
        raw = [rng.random() ** 3 for _ in range(classes)]
        if rng.random() < 0.7:
            raw[label] += 1.0
        total = sum(raw)
        out.append((f"f{i:04d}.bin", label, dut_vector(fmt, [v / total for v in raw])))
    return out


def ad_samples(files: int, windows: int, seed: int) -> list[Sample]:
    rng = random.Random(seed)
    out: list[Sample] = []
    for i in range(files):
        label = i % 2
        for _ in range(windows):
            score = rng.gauss(12.0 + 3.0 * label, 2.5)
            out.append((f"normal_id_{i:03d}.bin", label, dut_vector("ad", [score])))
    return out


@pytest.mark.parametrize(
    ("fmt", "classes", "files"), [("kws", 12, 120), ("ic", 10, 200), ("vww", 2, 150)]
)
def test_classification_equals_runner_transcription(fmt: str, classes: int, files: int) -> None:
    samples = classification_samples(fmt, classes, files, seed=classes)
    result = score_accuracy(samples)
    top1, auc = runner_reference(samples)
    assert result.kind == "classification"
    assert result.top1 == top1
    assert result.auc == auc
    assert result.top1_text == f"{top1:.1f}" and result.auc_text == f"{auc:.3f}"
    assert result.lines() == [f"Top 1% = {top1:2.1f}", f"AUC = {auc:.3f}"]
    assert result.problems == ()


def test_anomaly_equals_runner_transcription() -> None:
    samples = ad_samples(files=40, windows=196, seed=7)
    result = score_accuracy(samples)
    top1, auc = runner_reference(samples)
    assert result.kind == "anomaly"
    assert result.top1 == top1 and result.auc == auc
    assert len(result.files) == 40 and all(f.vectors == 196 for f in result.files)


def test_ad_auc_is_over_per_file_means_not_windows() -> None:
    samples = ad_samples(files=20, windows=9, seed=3)
    result = score_accuracy(samples)
    per_file = {}
    for file, label, (score,) in samples:
        per_file.setdefault(file, (label, []))[1].append(score)
    labels = [label for label, _ in per_file.values()]
    means = [float(np.mean(scores)) for _, scores in per_file.values()]
    assert result.auc == roc_auc_score(labels, means)
    window_auc = roc_auc_score([s[1] for s in samples], [s[2][0] for s in samples])
    assert result.auc != window_auc


def test_normalisation_divides_by_the_sum_unless_single() -> None:
    assert normalise([1.0, 3.0]) == (0.25, 0.75)
    assert normalise([7.5]) == (7.5,)  # AD scores stay raw
    # Left-to-right 3.11 sum: ten 0.1s add to 0.9999999999999999, not 1.0.
    assert normalise([0.1] * 10)[0] == 0.1 / 0.9999999999999999 == 0.10000000000000002


def test_negative_sum_flips_argmax() -> None:
    raw = [-1.0, -3.0]
    assert int(np.argmax(raw)) == 0
    assert normalise(raw) == (0.25, 0.75)
    result = score_accuracy([("a.bin", 1, raw)], with_auc=False)
    assert result.files[0].predicted == 1 and result.top1 == 100.0


def test_all_zero_vector_is_nan_argmax_zero_and_flagged() -> None:
    vec = normalise([0.0] * 12)
    assert all(math.isnan(v) for v in vec)
    with np.errstate(invalid="ignore"):
        assert int(np.argmax(np.zeros(12) / np.sum(np.zeros(12)))) == 0
    samples: list[Sample] = [("z.bin", 0, [0.0] * 12), ("y.bin", 3, [0.0] * 12)]
    result = score_accuracy(samples, with_auc=False)
    assert [f.predicted for f in result.files] == [0, 0]
    assert result.correct == 1 and result.top1 == 50.0
    assert result.zero_sum_vectors == 2
    assert any("ZeroDivisionError" in p for p in result.problems)
    # The official runner divides Python floats: it stops right there.
    with pytest.raises(ZeroDivisionError):
        _ = [v / sum([0.0, 0.0]) for v in [0.0, 0.0]]


def test_zero_sum_with_nonzero_entries_gives_infinities_like_numpy() -> None:
    with np.errstate(divide="ignore", invalid="ignore"):
        expected = np.array([1.0, -1.0, 0.0]) / np.float64(0.0)
    got = normalise([1.0, -1.0, 0.0])
    assert got[:2] == (math.inf, -math.inf) == tuple(expected[:2]) and math.isnan(got[2])


def test_argmax_ties_go_to_the_lowest_index() -> None:
    # KWS prints truncated 3-decimal values, so ties are common.
    raw = dut_vector("kws", [0.0, 0.4, 0.4, 0.2] + [0.0] * 8)
    assert raw[1] == raw[2]
    assert top1_percent([1, 2], [normalise(raw), normalise(raw)]) == (1, 50.0)


def test_vww_trailing_comma_and_auc_on_column_1() -> None:
    line = b"m-results-[0.250,0.750,]"  # the reference VWW port's trailing comma
    event = classify_line(line)
    assert isinstance(event, Results) and event.values == (0.25, 0.75)
    samples: list[Sample] = [
        ("a.bin", 1, event.values),
        ("b.bin", 0, (0.6, 0.4)),
        ("c.bin", 1, (0.45, 0.55)),
        ("d.bin", 0, (0.35, 0.65)),
    ]
    result = score_accuracy(samples)
    assert result.correct == 3 and result.top1 == 75.0
    col1 = [s[1] for s in result.scores]
    assert result.auc == roc_auc_score([1, 0, 1, 0], col1) == 0.75


def test_multiclass_auc_is_ovr_macro() -> None:
    samples = classification_samples("ic", 10, 60, seed=5)
    result = score_accuracy(samples)
    labels, scores = list(result.labels), np.array(result.scores)
    assert result.auc == roc_auc_score(labels, scores, multi_class="ovr", average="macro")
    assert result.auc == roc_auc(labels, result.scores)


def test_subset_missing_a_class_reports_instead_of_crashing() -> None:
    samples = classification_samples("kws", 12, 11, seed=1)  # classes 0..10 only
    result = score_accuracy(samples)
    assert result.auc is None and result.auc_text is None
    assert result.auc_error is not None and "classes" in result.auc_error
    assert result.lines() == [f"Top 1% = {result.top1_text}"]
    assert any("AUC not computable" in p for p in result.problems)
    with pytest.raises(ValueError):
        roc_auc(list(result.labels), result.scores)


def test_binary_with_one_class_is_nan_with_a_warning() -> None:
    samples: list[Sample] = [("a.bin", 1, (0.2, 0.8)), ("b.bin", 1, (0.6, 0.4))]
    result = score_accuracy(samples)
    assert result.auc is not None and math.isnan(result.auc)
    assert result.auc_text == "nan"
    assert result.auc_warnings
    assert any("NaN" in p for p in result.problems)


def test_grouping_by_file_averages_normalised_vectors() -> None:
    samples: list[Sample] = [
        ("a.bin", 0, (1.0, 3.0)),  # -> 0.25, 0.75
        ("b.bin", 1, (1.0, 1.0)),
        ("a.bin", 0, (3.0, 1.0)),  # -> 0.75, 0.25
        ("a.bin", 0, (2.0, 0.0)),  # -> 1.0, 0.0
    ]
    result = score_accuracy(samples, with_auc=False)
    a, b = result.files
    assert (a.file, a.vectors, b.file, b.vectors) == ("a.bin", 3, "b.bin", 1)
    assert a.score == ((0.25 + 0.75 + 1.0) / 3, (0.75 + 0.25 + 0.0) / 3)
    assert a.predicted == 0 and b.predicted == 0
    assert result.samples == 4 and result.correct == 1 and result.top1 == 50.0
    assert not result.equal_window_counts


def test_ad_thresholds_are_numpys_and_there_are_100() -> None:
    scores = [3.25, 0.125, 9.5, 4.0, 7.75]
    expected = np.amin(scores) + np.arange(0.0, 1.0, 0.01) * (np.amax(scores) - np.amin(scores))
    got = ad_thresholds(scores)
    assert len(got) == 100 and got == [float(v) for v in expected]
    assert got[0] == 0.125 and got[-1] < 9.5


def test_ad_top1_quirk_hand_example() -> None:
    # Per-file scores (normal: 0.5, 0.6; anomaly: 0.1, 0.9). min 0.1, max 0.9, so
    # T_k = 0.1 + 0.008k. Prediction is "score > T" (strict), so the anomaly sitting at
    # the minimum is never flagged (T_0 = 0.1 itself).
    #   k = 0      (T = 0.1):          flagged 0.5, 0.6, 0.9 -> TP 1, FP 2, FN 1
    #                                  P = 1/3.00000001, R = 1/2.00000001 -> 41.67
    #   k = 63..99 (0.604 <= T < 0.9): flagged 0.9 only     -> TP 1, FP 0, FN 1
    #                                  P = 1/1.00000001, R = 1/2.00000001 -> 74.9999993
    # The maximum is the second; it prints 75.0 (and is neither accuracy 75 % nor F1 0.667).
    scores, labels = [0.5, 0.6, 0.1, 0.9], [0, 0, 1, 1]
    best = 100 * (1 / (1 + 0 + 1e-8) + 1 / (1 + 1 + 1e-8)) / 2
    assert ad_top1_quirk(scores, labels) == best
    assert f"{best:2.1f}" == "75.0"
    samples: list[Sample] = [
        (f"{i}.bin", y, (s,)) for i, (s, y) in enumerate(zip(scores, labels, strict=True))
    ]
    result = score_accuracy(samples)
    assert result.top1 == best and result.correct is None
    assert result.auc == 0.5  # anomaly 0.9 beats both normals, 0.1 beats neither: 2 of 4 pairs


def test_ad_top1_quirk_perfect_separation_is_just_below_100() -> None:
    # normal 0, 1; anomaly 2, 4 -> T = 0.04k; k = 25..49 flags only the anomalies:
    # P = R = 2/2.00000001, value 99.9999995, printed 100.0.
    best = ad_top1_quirk([0.0, 1.0, 2.0, 4.0], [0, 0, 1, 1])
    assert best == 100 * (2 / (2 + 1e-8) + 2 / (2 + 1e-8)) / 2
    assert best < 100 and f"{best:2.1f}" == "100.0"


def test_ad_nan_scores_give_zero_and_no_auc() -> None:
    samples: list[Sample] = [("a", 0, (1.0,)), ("b", 1, (math.nan,)), ("c", 1, (2.0,))]
    result = score_accuracy(samples)
    assert result.top1 == 0.0
    assert result.auc is None and result.auc_error is not None


def test_mismatched_or_empty_vectors_are_rejected() -> None:
    with pytest.raises(ValueError, match="expected 2"):
        score_accuracy([("a", 0, (0.1, 0.9)), ("b", 0, (1.0,))])
    with pytest.raises(ValueError, match="empty"):
        score_accuracy([("a", 0, ())])
    with pytest.raises(ValueError, match="no accuracy samples"):
        score_accuracy([])
