"""Verdicts between two runs of one board × benchmark × mode: better, same or worse, with
the size of the change and its uncertainty (docs/measurement.md#comparing-runs).

Supplemental: nothing here is an MLPerf Tiny number. The numbers compared are the run
summaries' own (``controller.results.RunSummary``: median throughput, the supplemental p90
and early-stopping p90, the median energy per inference, the printed top-1 or AUC); this
module only decides whether a change is larger than the noise.

The noise model, per metric:

- **run-to-run spread**, from the metric's own history (earlier runs of the same board ×
  benchmark × mode): ``sigma = 1.4826 x MAD`` (the median absolute deviation scaled to a
  normal's standard deviation, robust to an earlier regression in the history), never below
  a floor of :data:`RELATIVE_FLOOR` of the baseline value (and one unit of the metric's
  resolution), which is all there is for a history of fewer than :data:`MIN_HISTORY` runs.
  The change's uncertainty ``u`` adds the baseline's: a baseline of ``k`` runs is their
  median, whose spread is ``sigma x sqrt(pi / 2k)`` (``sigma`` for one run). A change is
  real when ``|change| > Z x u`` (:data:`Z`).
- **latency** (p90, early-stopping p90) also needs evidence from the per-inference latencies
  of both runs: a bootstrap interval (:data:`BOOTSTRAP_CONFIDENCE`, seeded, so a rerun gives
  the same verdict) of the difference of the statistic must exclude zero, in the same
  direction.
- **accuracy** is exact: both runs score the same inputs, so any changed prediction is real.
  The verdict follows the summary's metric (worse when it dropped) and lists the changed
  samples by dataset row.

Pure code, standard library only.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from farm.scoring._numeric import np_median
from farm.scoring.accuracy import score_accuracy
from farm.scoring.early_stop import early_stopping
from farm.scoring.loadgen import percentile_index

Verdict = Literal["better", "same", "worse", "new", "missing"]

#: ``1 / Phi^-1(3/4)``: the median absolute deviation of a normal is 0.6745 sigma.
MAD_TO_SIGMA = 1.4826
#: The smallest spread assumed, relative to the baseline value: below it a change is not
#: reported even between identical, noiseless runs (a simulated board, a history of one).
RELATIVE_FLOOR = 0.0025
#: Fewer earlier runs than this and the MAD says little: the floor stands alone.
MIN_HISTORY = 3
#: A change is real beyond Z uncertainties: a normal noise exceeds it 6 times in 100,000,
#: so a nightly sweep of ~1,000 compared metrics raises a false alarm about once in 16 nights
#: even before the floor, which makes it rarer.
Z = 4.0
#: The latency bootstrap: two-sided confidence, resamples, and the seed (fixed: a verdict
#: must not change when the comparison is run again).
BOOTSTRAP_CONFIDENCE = 0.99
BOOTSTRAP_RESAMPLES = 1000
BOOTSTRAP_SEED = 17


@dataclass(frozen=True, slots=True)
class Metric:
    """A compared number: the summary key, the mode that gives it, which way is better,
    its unit and resolution (the smallest step the summary can show)."""

    key: str
    mode: str
    higher_is_better: bool
    unit: str
    resolution: float
    kind: Literal["noisy", "latency", "exact"]


METRICS: tuple[Metric, ...] = (
    Metric("throughput_ips", "performance", True, "inf./s", 0.0, "noisy"),
    Metric("p90_us", "latency", False, "µs", 1.0, "latency"),
    Metric("p90_early_stop_us", "latency", False, "µs", 1.0, "latency"),
    Metric("energy_uj", "energy", False, "µJ/inf.", 0.0, "noisy"),
    Metric("top1", "accuracy", True, "%", 0.1, "exact"),
    Metric("auc", "accuracy", True, "", 0.001, "exact"),
)


def metrics_for(mode: str) -> tuple[Metric, ...]:
    """The metrics a mode's summary holds."""
    return tuple(m for m in METRICS if m.mode == mode)


@dataclass(frozen=True, slots=True)
class SampleChange:
    """One dataset row (file) whose prediction changed between the runs: the predicted class
    of a classifier, or the mean anomaly score of an ad01 file."""

    index: int
    label: int
    before: float
    after: float
    correct_before: bool | None = None
    correct_after: bool | None = None


@dataclass(frozen=True, slots=True)
class MetricVerdict:
    """The verdict on one metric of one board × benchmark × mode.

    ``change`` is ``current - baseline`` in the metric's unit, ``change_pct`` relative to
    the baseline; ``noise`` the change's uncertainty ``u`` (one standard deviation) and
    ``threshold`` the size a change must exceed (``Z x u``; 0 for exact metrics);
    ``interval`` the latency bootstrap interval of the change, where the per-inference
    latencies were available; ``history`` how many earlier runs the spread came from;
    ``samples`` the changed predictions (accuracy); ``note`` anything the reader needs."""

    metric: str
    unit: str
    verdict: Verdict
    baseline: float | None
    current: float | None
    change: float | None = None
    change_pct: float | None = None
    noise: float | None = None
    threshold: float | None = None
    interval: tuple[float, float] | None = None
    history: int = 0
    samples: tuple[SampleChange, ...] = ()
    note: str = ""


def robust_sigma(values: Sequence[float]) -> float:
    """``1.4826 x MAD``: a normal noise's standard deviation, estimated robustly (0 for
    fewer than two values)."""
    if len(values) < 2:
        return 0.0
    centre = np_median(list(values))
    return MAD_TO_SIGMA * np_median([abs(v - centre) for v in values])


def run_to_run_sigma(metric: Metric, history: Sequence[float], reference: float) -> float:
    """The spread of one run's value: the history's robust sigma (with at least
    :data:`MIN_HISTORY` values), never below the floor (:data:`RELATIVE_FLOOR` of
    ``reference``, and the metric's resolution)."""
    floor = max(RELATIVE_FLOOR * abs(reference), metric.resolution)
    if len(history) < MIN_HISTORY:
        return floor
    return max(robust_sigma(history), floor)


def change_uncertainty(sigma: float, baseline_runs: int) -> float:
    """One standard deviation of ``current - baseline`` where each run has spread ``sigma``
    and the baseline is the median of ``baseline_runs`` runs (its spread ``sigma x
    sqrt(pi / 2k)`` for k > 1)."""
    base = 1.0 if baseline_runs <= 1 else math.pi / (2 * baseline_runs)
    return sigma * math.sqrt(1.0 + base)


def _direction(change: float, metric: Metric) -> Verdict:
    if change == 0:
        return "same"
    return "better" if (change > 0) == metric.higher_is_better else "worse"


def _pct(change: float, baseline: float) -> float | None:
    return None if baseline == 0 else 100.0 * change / baseline


def statistic_index(metric: Metric, n: int) -> int | None:
    """Where the summary's latency statistic sits in ``n`` ascending latencies: the LoadGen
    p90's index or the early-stopping p90 estimate's (None where early stopping does not
    apply, or for no latencies)."""
    if n == 0:
        return None
    if metric.key == "p90_us":
        return percentile_index(n, 0.9)
    return early_stopping(n, 0.9).estimate_index


def bootstrap_interval(
    metric: Metric,
    before_us: Sequence[int],
    after_us: Sequence[int],
    *,
    resamples: int = BOOTSTRAP_RESAMPLES,
    confidence: float = BOOTSTRAP_CONFIDENCE,
    seed: int = BOOTSTRAP_SEED,
) -> tuple[float, float] | None:
    """A percentile bootstrap interval of ``statistic(after) - statistic(before)``: both
    runs resampled with replacement (their own sizes), ``resamples`` times, from a seeded
    generator. None when the statistic is undefined for either run."""
    i = statistic_index(metric, len(before_us))
    j = statistic_index(metric, len(after_us))
    if i is None or j is None:
        return None
    rng = random.Random(seed)
    diffs: list[float] = []
    for _ in range(resamples):
        a = sorted(rng.choices(before_us, k=len(before_us)))[i]
        b = sorted(rng.choices(after_us, k=len(after_us)))[j]
        diffs.append(float(b - a))
    diffs.sort()
    tail = (1.0 - confidence) / 2
    lo = diffs[math.floor(tail * (resamples - 1))]
    hi = diffs[math.ceil((1.0 - tail) * (resamples - 1))]
    return lo, hi


def compare_noisy(
    metric: Metric,
    baseline_values: Sequence[float],
    current: float,
    history: Sequence[float],
    *,
    latencies: tuple[Sequence[int], Sequence[int]] | None = None,
) -> MetricVerdict:
    """Verdict on a measured metric: the baseline is the median of ``baseline_values`` (one
    per baseline run), the spread comes from ``history`` (earlier runs' values, the
    baseline's among them), and for latency metrics ``latencies`` (before, after: the
    per-inference µs of the last baseline run and of the current run) must agree."""
    baseline = np_median(list(baseline_values))
    sigma = run_to_run_sigma(metric, history, baseline)
    noise = change_uncertainty(sigma, len(baseline_values))
    threshold = Z * noise
    change = current - baseline
    verdict: Verdict = _direction(change, metric) if abs(change) > threshold else "same"
    notes = []
    if len(history) < MIN_HISTORY:
        notes.append(f"history of {len(history)} run(s): the noise floor alone")
    interval = None
    if metric.kind == "latency":
        if latencies is None:
            notes.append("no per-inference latencies: run-to-run spread only")
        else:
            interval = bootstrap_interval(metric, *latencies)
            if interval is None:
                notes.append("too few queries for the statistic's bootstrap")
            elif verdict != "same" and not (interval[0] > 0 or interval[1] < 0):
                verdict = "same"
                notes.append("the per-inference distributions do not differ significantly")
    return MetricVerdict(
        metric=metric.key,
        unit=metric.unit,
        verdict=verdict,
        baseline=baseline,
        current=current,
        change=change,
        change_pct=_pct(change, baseline),
        noise=noise,
        threshold=threshold,
        interval=interval,
        history=len(history),
        note="; ".join(notes),
    )


@dataclass(frozen=True, slots=True)
class AccuracySample:
    """One stored accuracy inference: dataset row, label, the raw result vector (and the
    ad01 window, which only groups with its row)."""

    index: int
    label: int
    results: Sequence[float]


def prediction_changes(
    before: Sequence[AccuracySample], after: Sequence[AccuracySample]
) -> tuple[SampleChange, ...]:
    """The rows whose prediction differs, scored as the official runner scores them
    (``score_accuracy``: normalised, averaged per file): a classifier's argmax class, an
    anomaly file's mean score. Rows present in only one run are not compared."""

    def scored(samples: Sequence[AccuracySample]) -> dict[int, tuple[int, float, float]]:
        result = score_accuracy(
            ((str(s.index), s.label, s.results) for s in samples), with_auc=False
        )
        out = {}
        for f in result.files:
            value = f.score[0] if result.kind == "anomaly" else f.predicted
            out[int(f.file)] = (f.label, float(value), float(result.kind == "anomaly"))
        return out

    old, new = scored(before), scored(after)
    changes = []
    for index in sorted(old.keys() & new.keys()):
        label, was, anomaly = old[index]
        _, now, _ = new[index]
        if was == now or (math.isnan(was) and math.isnan(now)):
            continue
        if anomaly:
            changes.append(SampleChange(index, label, was, now))
        else:
            changes.append(SampleChange(index, label, was, now, was == label, now == label))
    return tuple(changes)


def compare_exact(
    metric: Metric,
    baseline: float,
    current: float,
    changes: tuple[SampleChange, ...] | None,
) -> MetricVerdict:
    """Verdict on an accuracy metric: any change of the printed value is real (the same
    inputs were scored); ``changes`` the changed predictions (None when the per-sample data
    of either run is not available)."""
    change = current - baseline
    verdict = _direction(change, metric)
    notes = []
    if changes is None:
        notes.append("per-sample data not available")
    elif changes and verdict == "same":
        notes.append(f"{len(changes)} prediction(s) changed, the {metric.key} did not")
    return MetricVerdict(
        metric=metric.key,
        unit=metric.unit,
        verdict=verdict,
        baseline=baseline,
        current=current,
        change=change,
        change_pct=_pct(change, baseline),
        noise=0.0,
        threshold=0.0,
        samples=changes or (),
        note="; ".join(notes),
    )


#: Identity fields compared between two runs, in the order a cause is named.
IDENTITY_FIELDS: tuple[tuple[str, str], ...] = (
    ("firmware_sha256", "firmware image"),
    ("firmware_file", "firmware file"),
    ("dut_profile", "DUT profile"),
    ("dut_name", "DUT name"),
    ("board", "board"),
    ("agent_version", "agent version"),
    ("agent", "agent"),
    ("baud", "baud"),
    ("options", "run options"),
    ("dataset", "dataset"),
)


@dataclass(frozen=True, slots=True)
class IdentityChange:
    """One identity field that differs between the baseline and the current run."""

    field: str
    what: str
    before: str | None
    after: str | None


def identity_changes(
    before: Mapping[str, object], after: Mapping[str, object]
) -> tuple[IdentityChange, ...]:
    """What changed between two runs' identities (firmware image digest, board, agent
    version, baud, options...): fields known to only one run count too, since a run that
    recorded no firmware digest cannot vouch for its image. Empty: nothing recorded
    changed."""
    found = []
    for key, what in IDENTITY_FIELDS:
        if key not in before and key not in after:
            continue
        a, b = before.get(key), after.get(key)
        if a != b:
            found.append(
                IdentityChange(
                    key, what, None if a is None else str(a), None if b is None else str(b)
                )
            )
    return tuple(found)


@dataclass(frozen=True, slots=True)
class RunVerdicts:
    """Every metric's verdict for one board × benchmark × mode, and what changed."""

    board: str
    benchmark: str
    mode: str
    metrics: tuple[MetricVerdict, ...]
    changed: tuple[IdentityChange, ...] = ()
    baseline_runs: tuple[str, ...] = ()
    current_run: str | None = None

    @property
    def regressed(self) -> bool:
        """Any metric worse."""
        return any(m.verdict == "worse" for m in self.metrics)


@dataclass(frozen=True, slots=True)
class RunPoint:
    """What a verdict needs of one run: its id, summary numbers and identity; and where
    loaded, its per-inference latencies (latency mode) and accuracy samples."""

    run: str
    summary: Mapping[str, object]
    identity: Mapping[str, object] = field(default_factory=dict)
    latencies_us: Sequence[int] | None = None
    accuracy: Sequence[AccuracySample] | None = None


def _value(point: RunPoint, key: str) -> float | None:
    value = point.summary.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return None if math.isnan(value) or math.isinf(value) else float(value)


def judge(
    mode: str,
    current: RunPoint | None,
    baseline: Sequence[RunPoint],
    history: Sequence[RunPoint],
) -> tuple[MetricVerdict, ...]:
    """Every metric of ``mode``: ``current`` against ``baseline`` (newest last; its median,
    and its newest run for accuracy and the per-sample data), with the spread from
    ``history`` (earlier runs, newest last, the baseline's among them). A metric absent
    from the current run is ``missing``, one the baseline never had ``new``."""
    verdicts = []
    for metric in metrics_for(mode):
        now = None if current is None else _value(current, metric.key)
        before = [v for p in baseline if (v := _value(p, metric.key)) is not None]
        if current is None or now is None:
            if before:
                verdicts.append(
                    MetricVerdict(metric.key, metric.unit, "missing", np_median(before), None)
                )
            continue
        if not before:
            verdicts.append(MetricVerdict(metric.key, metric.unit, "new", None, now))
            continue
        last = baseline[-1]
        if metric.kind == "exact":
            # Exact: against the newest baseline run, whose predictions are compared too.
            newest = _value(last, metric.key)
            changes = None
            if current.accuracy is not None and last.accuracy is not None:
                changes = prediction_changes(last.accuracy, current.accuracy)
            reference = before[-1] if newest is None else newest
            verdicts.append(compare_exact(metric, reference, now, changes))
            continue
        past = [v for p in history if (v := _value(p, metric.key)) is not None]
        latencies = None
        if current.latencies_us is not None and last.latencies_us is not None:
            latencies = (last.latencies_us, current.latencies_us)
        verdicts.append(compare_noisy(metric, before, now, past, latencies=latencies))
    return tuple(verdicts)
