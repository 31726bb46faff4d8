"""Accuracy mode: normalisation, per-file grouping, top-1, AUC and the AD "Top 1%" quirk
(docs/measurement.md#accuracy-mode).

Top-1 and the AD quirk need only the standard library; the AUC imports numpy and
scikit-learn when it is asked for (``pip install tinyfarm[scoring]``).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

from farm.scoring._numeric import np_argmax, np_sum, py311_sum

AccuracyKind = Literal["classification", "anomaly"]


def normalise(values: Sequence[float]) -> tuple[float, ...]:
    """A result vector as the runner feeds it to scoring: divided by its sum when it has
    more than one element, kept raw otherwise.

    The sum is CPython 3.11's left-to-right ``sum``. A negative sum flips the vector (so
    argmax picks the smallest raw score). A zero sum gives NaN (0/0) or ±inf, as numpy
    would; the official runner divides Python floats and stops with ZeroDivisionError there,
    which :attr:`AccuracyResult.zero_sum_vectors` reports.
    """
    floats = tuple(float(v) for v in values)
    if len(floats) <= 1:
        return floats
    total = py311_sum(floats)
    if total == 0.0:
        return tuple(
            math.nan if v == 0.0 or math.isnan(v) else math.copysign(math.inf, v) for v in floats
        )
    return tuple(v / total for v in floats)


def _mean_rows(rows: Sequence[Sequence[float]]) -> tuple[float, ...]:
    """``np.mean(rows, axis=0)`` to the last bit.

    numpy reduces an ``(n, 1)`` array as one contiguous run (pairwise summation) but adds
    the rows of a wider array one after another, column by column.
    """
    k = len(rows)
    if len(rows[0]) == 1:
        return (np_sum([r[0] for r in rows]) / k,)
    acc = list(rows[0])
    for r in rows[1:]:
        for j, v in enumerate(r):
            acc[j] += v
    return tuple(s / k for s in acc)


@dataclass(frozen=True, slots=True)
class FileScore:
    """One dataset file: its label and the mean of its (normalised) result vectors."""

    file: str
    label: int
    vectors: int
    """How many inferences (AD: windows) the file contributed."""
    score: tuple[float, ...]
    predicted: int
    """argmax of ``score`` (ties -> lowest index, NaN -> its index); 0 for AD."""


def top1_percent(labels: Sequence[int], scores: Sequence[Sequence[float]]) -> tuple[int, float]:
    """``(correct, 100 x correct / files)`` with argmax per row, ties to the lowest index."""
    if not labels:
        raise ValueError("top-1 of no files")
    correct = sum(1 for y, s in zip(labels, scores, strict=True) if np_argmax(s) == y)
    return correct, 100 * correct / len(labels)


def ad_thresholds(scores: Sequence[float]) -> list[float]:
    """The runner's 100 AD thresholds ``min + (k x 0.01) x (max - min)``, k = 0..99, in the
    same float operations as ``np.amin(s) + np.arange(0.0, 1.0, .01) * (np.amax(s) -
    np.amin(s))`` (NaN anywhere makes every threshold NaN, as ``np.amin`` does)."""
    if not scores:
        raise ValueError("thresholds of no scores")
    if any(math.isnan(s) for s in scores):
        return [math.nan] * 100
    lo, hi = min(scores), max(scores)
    return [lo + (k * 0.01) * (hi - lo) for k in range(100)]


def ad_top1_quirk(scores: Sequence[float], labels: Sequence[int]) -> float:
    """The "Top 1%" the runner prints for anomaly detection: for each threshold T_k,
    predicted anomaly iff score > T_k (strict), P = TP/(TP+FP+1e-8), R = TP/(TP+FN+1e-8),
    value 100 x (P + R)/2; the maximum over k (starting from 0). Not accuracy, not F1; the
    checker ignores it for ad. Labels other than 0 and 1 count in neither class."""
    if len(scores) != len(labels):
        raise ValueError(f"{len(scores)} scores but {len(labels)} labels")
    best: float = 0
    for threshold in ad_thresholds(scores):
        tp = fp = fn = 0
        for s, y in zip(scores, labels, strict=True):
            predicted = s > threshold
            if y == 1:
                if predicted:
                    tp += 1
                else:
                    fn += 1
            elif y == 0 and predicted:
                fp += 1
        precision = tp / (tp + fp + 1e-8)
        recall = tp / (tp + fn + 1e-8)
        best = max(best, 100 * (precision + recall) / 2)
    return float(best)


def roc_auc(labels: Sequence[int], scores: Sequence[Sequence[float]]) -> float:
    """The runner's AUC call: two columns (vww) -> binary ``roc_auc_score`` on column 1;
    otherwise ``roc_auc_score(..., multi_class="ovr")`` (macro average) on the matrix, which
    for one column (AD) is the binary AUC of that column.

    Raises scikit-learn's ``ValueError`` where the runner would (a class missing from the
    labels, rows not summing to 1, NaN scores). Imports numpy and scikit-learn on first use.
    """
    try:
        import numpy as np
        from sklearn.metrics import roc_auc_score
    except ImportError as exc:  # pragma: no cover - exercised only without the extra
        raise ImportError(
            "AUC needs numpy and scikit-learn: pip install 'tinyfarm[scoring]'"
        ) from exc
    y_true = np.array(labels)
    y_score = np.array(scores, dtype=np.float64)
    if y_score.ndim != 2:
        raise ValueError("scores must be one row per file")
    if y_score.shape[1] == 2:
        return float(roc_auc_score(y_true, y_score[:, 1]))
    return float(roc_auc_score(y_true, y_score, multi_class="ovr"))


@dataclass(frozen=True, slots=True)
class AccuracyResult:
    """Accuracy-mode scores over every file of a run (or of a subset)."""

    kind: AccuracyKind
    """"anomaly" when results are single scores (ad01), else "classification"."""
    files: tuple[FileScore, ...]
    samples: int
    correct: int | None
    """Files whose argmax equals the label (classification only)."""
    top1: float
    """The printed "Top 1%" value: top-1 percent, or the AD quirk for anomaly detection."""
    auc: float | None
    """None when not computed or when scikit-learn raised (see ``auc_error``)."""
    auc_error: str | None
    auc_warnings: tuple[str, ...]
    zero_sum_vectors: int
    """Result vectors whose sum is 0: normalised to NaN/inf here; the official runner
    raises ZeroDivisionError on them."""

    @property
    def labels(self) -> tuple[int, ...]:
        """Per-file labels, in first-seen file order."""
        return tuple(f.label for f in self.files)

    @property
    def scores(self) -> tuple[tuple[float, ...], ...]:
        """Per-file mean vectors (the ``y_pred`` matrix the runner scores)."""
        return tuple(f.score for f in self.files)

    @property
    def top1_text(self) -> str:
        """``Top 1%`` value as printed: ``{x:2.1f}`` (the same as ``%.1f``)."""
        return f"{self.top1:2.1f}"

    @property
    def auc_text(self) -> str | None:
        """AUC as printed, ``%.3f``."""
        return None if self.auc is None else f"{self.auc:.3f}"

    @property
    def equal_window_counts(self) -> bool:
        """Every file contributed as many vectors as the first; the runner's AD bookkeeping
        (files x windows of the first file) assumes it."""
        return len({f.vectors for f in self.files}) <= 1

    def lines(self) -> list[str]:
        """The results.txt line bodies after ``MMDD.HHMMSS ulp-mlperf: ``. Without an AUC
        (not computed, or scikit-learn raised) only the Top 1% line; the official runner
        would have printed neither."""
        out = [f"Top 1% = {self.top1_text}"]
        if self.auc_text is not None:
            out.append(f"AUC = {self.auc_text}")
        return out

    @property
    def problems(self) -> tuple[str, ...]:
        """What differs from a clean official run."""
        out: list[str] = []
        if self.zero_sum_vectors:
            out.append(
                f"{self.zero_sum_vectors} result vector(s) sum to 0: scored as NaN (argmax 0); "
                "the official runner stops with ZeroDivisionError"
            )
        if self.auc_error is not None:
            out.append(f"AUC not computable: {self.auc_error}")
        out.extend(f"AUC warning: {w}" for w in self.auc_warnings)
        if self.auc is not None and math.isnan(self.auc):
            out.append("AUC is NaN (only one class present?)")
        if not self.equal_window_counts:
            out.append("files contributed different numbers of results (ragged AD files)")
        return tuple(out)


def score_accuracy(
    samples: Iterable[tuple[str, int, Sequence[float]]], *, with_auc: bool = True
) -> AccuracyResult:
    """Score accuracy mode from ``(file, label, raw result vector)`` per inference.

    Vectors are normalised (:func:`normalise`), grouped by file in first-seen order (the
    label of a file's first sample counts), averaged per file (``np.mean(axis=0)``), then
    scored: top-1 by argmax for classification, the "Top 1%" quirk for AD, and the AUC
    when ``with_auc`` (numpy + scikit-learn; failures land in ``auc_error``, as the runner
    would have crashed there).
    """
    groups: dict[str, tuple[int, list[tuple[float, ...]]]] = {}
    width: int | None = None
    zero_sums = 0
    count = 0
    for file, label, raw in samples:
        if len(raw) == 0:
            raise ValueError(f"{file}: empty result vector")
        if width is None:
            width = len(raw)
        elif len(raw) != width:
            raise ValueError(f"{file}: result vector of length {len(raw)}, expected {width}")
        if len(raw) > 1 and py311_sum([float(v) for v in raw]) == 0.0:
            zero_sums += 1
        vector = normalise(raw)
        groups.setdefault(file, (int(label), []))[1].append(vector)
        count += 1
    if not groups:
        raise ValueError("no accuracy samples")
    kind: AccuracyKind = "anomaly" if width == 1 else "classification"
    scored: list[FileScore] = []
    for name, (label, rows) in groups.items():
        mean = _mean_rows(rows)
        scored.append(FileScore(name, label, len(rows), mean, np_argmax(mean)))
    files = tuple(scored)
    labels = [f.label for f in files]
    correct: int | None = None
    if kind == "anomaly":
        top1 = ad_top1_quirk([f.score[0] for f in files], labels)
    else:
        correct, top1 = top1_percent(labels, [f.score for f in files])
    auc: float | None = None
    auc_error: str | None = None
    caught: list[str] = []
    if with_auc:
        with warnings.catch_warnings(record=True) as record:
            warnings.simplefilter("always")
            try:
                auc = roc_auc(labels, [f.score for f in files])
            except ValueError as exc:
                auc_error = str(exc)
        caught = [str(w.message) for w in record]
    return AccuracyResult(
        kind=kind,
        files=files,
        samples=count,
        correct=correct,
        top1=top1,
        auc=auc,
        auc_error=auc_error,
        auc_warnings=tuple(caught),
        zero_sum_vectors=zero_sums,
    )
