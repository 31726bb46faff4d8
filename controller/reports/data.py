"""What a report shows, read once from Redis and the run folders: the sweep (as ``farm
show`` reads it), the verdicts against the baseline (``controller.compare``), the boards'
system descriptions, the per-inference latencies of latency runs, the power traces of energy
runs and each metric's history (``controller.history``).

No verdicts is not an error: on a label's first night there is no earlier good sweep, and
:attr:`ReportData.no_verdicts` says why. An unknown sweep, or a baseline sweep asked for by
id that cannot be used, is (:class:`ReportError`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from controller import history as history_store
from controller.compare import (
    Baseline,
    CompareError,
    Comparison,
    RedisHistory,
    StoredRun,
    compare,
)
from controller.submission import load_systems
from controller.sweep_view import sweep_report
from farm import scoring
from farm.scoring.compare import METRICS, Metric
from farm.scoring.energy import SAMPLE_RATE_HZ as MONITOR_HZ

#: A monitor sample is the energy (J) of one sample period: times the rate it is the mean
#: power in W over that period, times 1000 more in mW.
J_PER_SAMPLE_TO_MW = MONITOR_HZ * 1000.0


class ReportError(ValueError):
    """The report cannot be made (an unknown sweep, an unusable baseline sweep): the message
    says why, in one line."""


class CachedHistory(RedisHistory):
    """:class:`RedisHistory` that reads each sweep's runs and each run's samples once: the
    comparison and the plots want the same ones."""

    def __init__(self, client: redis.Redis, results: Path | None = None) -> None:
        super().__init__(client, results)
        self._runs: dict[str, list[StoredRun]] = {}
        self._samples: dict[str, list[dict[str, Any]] | None] = {}

    def completed_runs(self, sweep_id: str) -> list[StoredRun]:
        """The sweep's completed runs (read once)."""
        if sweep_id not in self._runs:
            self._runs[sweep_id] = super().completed_runs(sweep_id)
        return self._runs[sweep_id]

    def samples(self, run: StoredRun) -> list[dict[str, Any]] | None:
        """The run's ``samples.jsonl`` records (read once)."""
        if run.id not in self._samples:
            self._samples[run.id] = super().samples(run)
        return self._samples[run.id]


@dataclass(frozen=True, slots=True)
class LatencyRuns:
    """One board × benchmark's per-inference latencies (µs) of the latency run, and of the
    newest baseline run where there is one."""

    board: str
    benchmark: str
    current: tuple[int, ...]
    baseline: tuple[int, ...] | None = None
    current_run: str = ""
    baseline_run: str | None = None


@dataclass(frozen=True, slots=True)
class EnergyWindow:
    """One timed energy window: the monitor's trace in mW (NaN where unreadable), the
    samples between the two events that delimit the measured inferences, and the energy per
    inference of those (µJ; None when the events cannot delimit it)."""

    power_mw: tuple[float, ...]
    start: int
    stop: int
    inferences: int
    uj_per_inference: float | None


@dataclass(frozen=True, slots=True)
class EnergyRun:
    """An energy run's windows, from its folder's ``results.json`` (``note``: why there
    are none)."""

    board: str
    benchmark: str
    run: str
    windows: tuple[EnergyWindow, ...]
    median_uj: float | None = None
    note: str = ""


@dataclass(frozen=True, slots=True)
class HistoryPoint:
    """One earlier (or this) sweep's value of a metric."""

    sweep: str
    finished: float
    value: float
    current: bool = False
    baseline: bool = False


@dataclass(frozen=True, slots=True)
class Strip:
    """A metric's history on one board × benchmark, oldest first, this sweep last."""

    board: str
    benchmark: str
    metric: Metric
    points: tuple[HistoryPoint, ...]


@dataclass(frozen=True, slots=True)
class Bar:
    """One benchmark's value of a metric on one board, the baseline's beside it."""

    benchmark: str
    metric: Metric
    current: float | None
    baseline: float | None = None
    verdict: str | None = None


@dataclass(slots=True)
class ReportData:
    """Everything a report shows (see the module docstring)."""

    sweep: dict[str, Any]
    """``farm show``'s document (``controller.sweep_view.sweep_report``)."""
    systems: dict[str, dict[str, Any]]
    """Each board's system description, as the agent reports it."""
    label: str
    """The label whose sweeps the baseline and the history come from."""
    comparison: Comparison | None = None
    no_verdicts: str | None = None
    """Why there are no verdicts (None when there are)."""
    latencies: list[LatencyRuns] = field(default_factory=list)
    energy: list[EnergyRun] = field(default_factory=list)
    strips: list[Strip] = field(default_factory=list)

    @property
    def boards(self) -> list[str]:
        """The sweep's boards, sorted."""
        return sorted({r["board"] for r in self.sweep["runs"]})

    def summaries(self) -> dict[tuple[str, str, str], dict[str, Any]]:
        """Completed runs' summaries by board, benchmark, mode."""
        return {
            (r["board"], r["benchmark"], r["mode"]): r["summary"]
            for r in self.sweep["runs"]
            if r["state"] == "completed" and r["summary"]
        }

    def bars(self, board: str) -> list[Bar]:
        """The board's throughput, energy and accuracy per benchmark: the verdicts' numbers
        (the baseline's median beside this sweep's) when there are verdicts, else this
        sweep's alone."""
        wanted = {m.key: m for m in METRICS if m.mode in ("performance", "energy", "accuracy")}
        found: list[Bar] = []
        if self.comparison is not None:
            for run in self.comparison.runs:
                if run.board != board:
                    continue
                for v in run.metrics:
                    if v.metric in wanted:
                        found.append(
                            Bar(run.benchmark, wanted[v.metric], v.current, v.baseline, v.verdict)
                        )
            return found
        for (b, bench, mode), summary in sorted(self.summaries().items()):
            if b != board:
                continue
            for metric in wanted.values():
                value = summary.get(metric.key)
                if metric.mode == mode and isinstance(value, int | float):
                    found.append(Bar(bench, metric, float(value)))
        return found


def gather(
    client: redis.Redis,
    sweep_id: str,
    baseline: Baseline | None,
    history: int,
    results: Path | None = None,
) -> ReportData:
    """Read everything the report of ``sweep_id`` shows (``baseline`` None: the last good
    sweep of its label; ``history``: earlier good sweeps for the noise and the strips;
    ``results``: where sweeps trimmed from Redis keep their run folders)."""
    report = sweep_report(client, sweep_id)
    if report is None:
        raise ReportError(f"no sweep {sweep_id!r} (see farm sweeps)")
    baseline = baseline or Baseline()
    label = report["sweep"]["label"] if baseline.label is None else baseline.label
    source = CachedHistory(client, results)
    data = ReportData(report, load_systems(client, {r["board"] for r in report["runs"]}), label)
    try:
        data.comparison = compare(source, sweep_id, baseline, history=history)
    except CompareError as exc:
        if baseline.sweep is not None:
            raise ReportError(str(exc)) from None
        data.no_verdicts = str(exc)
    current = {r.key: r for r in source.completed_runs(sweep_id)}
    data.latencies = _latencies(source, current, data.comparison)
    data.energy = [_energy_run(r) for _, r in sorted(current.items()) if r.mode == "energy"]
    data.strips = _strips(client, sweep_id, current, data, history)
    return data


def _latency_us(records: list[dict[str, Any]] | None) -> tuple[int, ...] | None:
    if records is None:
        return None
    return tuple(round(r["latency_us"]) for r in records if r.get("latency_us") is not None)


def _latencies(
    source: CachedHistory,
    current: Mapping[tuple[str, str, str], StoredRun],
    comparison: Comparison | None,
) -> list[LatencyRuns]:
    """Latency runs with their samples, and the newest baseline run's for the same key."""
    baseline_runs: dict[str, StoredRun] = {}
    newest: dict[tuple[str, str, str], str] = {}
    if comparison is not None:
        for sweep in comparison.baseline:
            baseline_runs.update({r.id: r for r in source.completed_runs(sweep.id)})
        newest = {
            (v.board, v.benchmark, v.mode): v.baseline_runs[-1]
            for v in comparison.runs
            if v.baseline_runs
        }
    found = []
    for key, run in sorted(current.items()):
        now = _latency_us(source.samples(run)) if run.mode == "latency" else None
        if not now:
            continue
        before_run = baseline_runs.get(newest.get(key, ""))
        before = None if before_run is None else _latency_us(source.samples(before_run))
        found.append(
            LatencyRuns(
                run.board,
                run.benchmark,
                now,
                before or None,
                run.id,
                None if before_run is None else before_run.id,
            )
        )
    return found


def _traces(path: Path) -> list[tuple[list[float], list[tuple[int, int]], int]]:
    """Each window's samples (J per ms), events and inference count from ``results.json``."""
    traces = []
    for element in json.loads(path.read_text()):
        if not isinstance(element, dict) or not isinstance(element.get("power"), dict):
            continue
        power = element["power"]
        joules = [math.nan if v is None else float(v) for v in power.get("samples") or ()]
        events = [(int(c), int(idx)) for c, idx in power.get("timestamps") or ()]
        traces.append((joules, events, int(element.get("infer", {}).get("iterations") or 1)))
    return traces


def _energy_run(run: StoredRun) -> EnergyRun:
    """The windows of an energy run's ``results.json`` (each element's ``power``: the
    monitor's samples in J per ms, the events ``[counter, samples received]``)."""
    path = Path(run.artifacts) / "results.json" if run.artifacts else None
    median = run.summary.get("energy_uj")
    median = float(median) if isinstance(median, int | float) else None
    if path is None or not path.is_file():
        return EnergyRun(run.board, run.benchmark, run.id, (), median, "no results.json")
    try:
        traces = _traces(path)
    except (OSError, ValueError, TypeError, AttributeError) as exc:
        # A truncated or hand-edited file costs its plot, not the night's report.
        why = f"results.json unreadable: {type(exc).__name__}"
        return EnergyRun(run.board, run.benchmark, run.id, (), median, why)
    windows = []
    for i, (joules, events, inferences) in enumerate(traces):
        try:
            scored = scoring.energy_window(joules, events, inferences, trial=i)
            start, stop = scored.idx_start, scored.idx_stop
            per_inference = scored.energy_j / inferences * 1e6
        except scoring.EnergyEventError:
            start = stop = 0
            per_inference = None
        windows.append(
            EnergyWindow(
                tuple(v * J_PER_SAMPLE_TO_MW for v in joules),
                start,
                stop,
                inferences,
                per_inference,
            )
        )
    note = "" if windows else "results.json holds no power trace"
    return EnergyRun(run.board, run.benchmark, run.id, tuple(windows), median, note)


def _strips(
    client: redis.Redis,
    sweep_id: str,
    current: Mapping[tuple[str, str, str], StoredRun],
    data: ReportData,
    history: int,
) -> list[Strip]:
    """Each metric's history per board × benchmark of this sweep: up to ``history`` earlier
    entries of the label's sweeps, then this sweep's."""
    baseline_ids = set() if data.comparison is None else {b.id for b in data.comparison.baseline}
    created = float(data.sweep["sweep"]["created"])
    strips = []
    for board, benchmark, mode in sorted(current):
        entries = history_store.entries(client, board, benchmark, mode)
        now = [e for e in entries if e.sweep == sweep_id][-1:]
        cutoff = now[0].finished if now else created
        past = [
            e
            for e in entries
            if e.label == data.label and e.sweep != sweep_id and e.finished < cutoff
        ][-history:]
        for metric in METRICS:
            if metric.mode != mode:
                continue
            points = [
                HistoryPoint(
                    e.sweep,
                    e.finished,
                    float(value),
                    current=e.sweep == sweep_id,
                    baseline=e.sweep in baseline_ids,
                )
                for e in (*past, *now)
                if (value := getattr(e, metric.key)) is not None
            ]
            if points:
                strips.append(Strip(board, benchmark, metric, tuple(points)))
    return strips
