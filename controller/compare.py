"""``farm compare``: one sweep's runs against a baseline, with verdicts per board ×
benchmark × mode and metric (the decision is ``farm.scoring.compare``'s; this module finds
the runs and their data).

Where the runs come from is a :class:`HistorySource`: :class:`RedisHistory` reads the
controller's sweeps and runs (``controller.keys``) and the per-sample files of their
artifacts (``samples.jsonl``). A sweep older than the run retention (``FARM_RUN_RETENTION_S``)
has left those keys: its completed runs' summaries are then read from
:mod:`controller.history`, which keeps them for good, and its samples from its folder while
the folder is there (without them a latency verdict rests on the summaries' percentiles and
the history's spread, and an accuracy change cannot be listed by sample).

The baseline (:class:`Baseline`): one sweep, or the last N good sweeps with a label before
the compared one (good: finished, every run ended). The run-to-run spread of each metric
comes from the history: up to ``history`` good sweeps with the baseline's label (the
compared sweep's, for a sweep baseline) created before the compared sweep.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import redis

from controller import history as run_history
from controller import keys
from controller.render import Column, Listing, number
from controller.store import sweep_runs
from farm.logs import get_logger
from farm.scoring.compare import (
    AccuracySample,
    IdentityChange,
    MetricVerdict,
    RunPoint,
    RunVerdicts,
    identity_changes,
    judge,
)

log = get_logger(__name__)

#: Earlier sweeps the spread is taken from, at most.
DEFAULT_HISTORY = 20
#: Sweeps read per round trip while looking for a label's good sweeps.
SCAN_PAGE = 200
#: Identity fields a run hash holds itself.
RUN_IDENTITY = ("board", "agent", "options", "dataset")
#: The run hash's ``firmware`` (JSON, from the agent's ``started`` event) as identity fields.
FIRMWARE_IDENTITY = {
    "sha256": "firmware_sha256",
    "image": "firmware_file",
    "profile": "dut_profile",
    "name": "dut_name",
    "software": "agent_version",
}

#: The identity fields the run history keeps (no run options, no dataset).
HISTORY_IDENTITY = frozenset({"board", "agent", *FIRMWARE_IDENTITY.values()})


class CompareError(ValueError):
    """The comparison cannot be made (unknown sweep, no baseline): the message says why."""


@dataclass(frozen=True, slots=True)
class SweepInfo:
    """A sweep as the comparison needs it."""

    id: str
    label: str
    created: float
    state: str


@dataclass(frozen=True, slots=True)
class StoredRun:
    """A completed run: where it ran, its summary, its identity and its folder."""

    id: str
    board: str
    benchmark: str
    mode: str
    summary: Mapping[str, Any]
    identity: Mapping[str, Any] = field(default_factory=dict)
    artifacts: str = ""
    from_history: bool = False
    """Read from the run history (a trimmed sweep): its identity holds only
    :data:`HISTORY_IDENTITY`."""

    @property
    def key(self) -> tuple[str, str, str]:
        """Board, benchmark, mode."""
        return (self.board, self.benchmark, self.mode)


class HistorySource(Protocol):
    """Where sweeps, their completed runs and the runs' per-sample data come from."""

    def sweep(self, sweep_id: str) -> SweepInfo | None:
        """The sweep, or None if unknown."""

    def completed_runs(self, sweep_id: str) -> list[StoredRun]:
        """The sweep's completed runs with a summary."""

    def good_sweeps(self, label: str, before: float, limit: int) -> list[SweepInfo]:
        """Up to ``limit`` finished sweeps with ``label`` created before ``before``, newest
        last."""

    def samples(self, run: StoredRun) -> list[dict[str, Any]] | None:
        """The run's sample records, or None when they are gone."""


class RedisHistory:
    """The controller's Redis: ``farm:sweeps``, the sweep and run hashes, and for sweeps
    trimmed from those the run history (:mod:`controller.history`); samples from the run
    folder's ``samples.jsonl``. ``results``: the results directory, where a trimmed sweep's
    run folders are (``<results>/<sweep>/<board>/<benchmark>/<mode>``); None: not read."""

    def __init__(self, client: redis.Redis, results: Path | None = None) -> None:
        self.client = client
        self.results = results

    def sweep(self, sweep_id: str) -> SweepInfo | None:
        """The sweep's hash; for a trimmed sweep its history (finished, created at its first
        run's end); None when neither knows it."""
        raw = self.client.hgetall(keys.sweep(sweep_id))
        if raw:
            return SweepInfo(
                sweep_id,
                raw.get("label", ""),
                float(raw.get("created") or 0),
                raw.get("state", ""),
            )
        first = self.client.zscore(keys.HISTORY_SWEEPS, sweep_id)
        if first is None:
            return None
        label = self.client.hget(keys.HISTORY_SWEEP_LABELS, sweep_id) or ""
        return SweepInfo(sweep_id, label, first, "finished")

    def completed_runs(self, sweep_id: str) -> list[StoredRun]:
        """The sweep's runs that completed with a summary (from the history once the sweep
        was trimmed)."""
        if not self.client.exists(keys.sweep(sweep_id)):
            return [self._from_history(e) for e in run_history.sweep_entries(self.client, sweep_id)]
        found = []
        for run_id, run in sweep_runs(self.client, sweep_id):
            if run.get("state") != "completed" or not run.get("summary"):
                continue
            identity: dict[str, Any] = {k: run[k] for k in RUN_IDENTITY if run.get(k)}
            firmware = json.loads(run.get("firmware") or "{}")
            identity.update(
                {
                    key: firmware[field]
                    for field, key in FIRMWARE_IDENTITY.items()
                    if field in firmware
                }
            )
            summary = json.loads(run["summary"])
            found.append(
                StoredRun(
                    run_id,
                    run["board"],
                    run["benchmark"],
                    run["mode"],
                    summary,
                    identity,
                    run.get("artifacts") or summary.get("artifacts") or "",
                )
            )
        return found

    def good_sweeps(self, label: str, before: float, limit: int) -> list[SweepInfo]:
        """Finished sweeps with the label, newest last (scanning back from ``before``, a
        page of sweeps per round trip), then, older than those, trimmed sweeps from the
        history."""
        found: list[SweepInfo] = []
        ids = self.client.zrevrangebyscore(keys.SWEEPS, f"({before}", "-inf")
        for start in range(0, len(ids), SCAN_PAGE):
            page = ids[start : start + SCAN_PAGE]
            pipe = self.client.pipeline(transaction=False)
            for sweep_id in page:
                pipe.hmget(keys.sweep(sweep_id), ["label", "created", "state"])
            for sweep_id, (got, created, state) in zip(page, pipe.execute(), strict=True):
                if got == label and state == "finished":
                    found.append(SweepInfo(sweep_id, got, float(created or 0), state))
                    if len(found) >= limit:
                        return found[::-1]
        # Trimming goes oldest first, so every trimmed sweep is older than any kept one.
        live = set(ids)
        for old in run_history.sweeps(self.client, label):
            if len(found) >= limit:
                break
            if old.id not in live and old.first < before:
                found.append(SweepInfo(old.id, old.label, old.first, "finished"))
        return found[::-1]

    def _from_history(self, entry: run_history.Entry) -> StoredRun:
        """A trimmed sweep's run, as its history entry has it."""
        summary = {k: getattr(entry, k) for k in run_history.NUMBERS}
        summary.update(samples=entry.samples, valid=entry.valid, target_met=entry.target_met)
        identity: dict[str, Any] = {"board": entry.board}
        if entry.agent:
            identity["agent"] = entry.agent
        if entry.firmware is not None:
            stored = entry.firmware.to_json()
            identity.update(
                {key: stored[f] for f, key in FIRMWARE_IDENTITY.items() if stored[f] is not None}
            )
        folder = ""
        if self.results is not None:
            where = self.results / entry.sweep / entry.board / entry.benchmark / entry.mode
            folder = str(where)
        return StoredRun(
            entry.run,
            entry.board,
            entry.benchmark,
            entry.mode,
            summary,
            identity,
            folder,
            from_history=True,
        )

    def samples(self, run: StoredRun) -> list[dict[str, Any]] | None:
        """``samples.jsonl`` of the run's folder (None when the folder is gone)."""
        path = Path(run.artifacts) / "samples.jsonl" if run.artifacts else None
        if path is None or not path.is_file():
            return None
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@dataclass(frozen=True, slots=True)
class Baseline:
    """What the sweep is compared with: a sweep id, or the last ``last`` good sweeps with
    ``label`` (None: the compared sweep's label)."""

    sweep: str | None = None
    label: str | None = None
    last: int = 1


@dataclass(frozen=True, slots=True)
class Comparison:
    """The verdicts, and which sweeps they rest on."""

    sweep: SweepInfo
    baseline: tuple[SweepInfo, ...]
    history: tuple[SweepInfo, ...]
    runs: tuple[RunVerdicts, ...]

    @property
    def regressed(self) -> bool:
        """Any metric of any run worse."""
        return any(r.regressed for r in self.runs)


def _point(source: HistorySource, run: StoredRun, with_samples: bool) -> RunPoint:
    latencies: list[int] | None = None
    accuracy: list[AccuracySample] | None = None
    if with_samples and run.mode in ("latency", "accuracy"):
        records = source.samples(run)
        if records is not None and run.mode == "latency":
            latencies = [round(r["latency_us"]) for r in records if r.get("latency_us") is not None]
        elif records is not None:
            accuracy = [
                AccuracySample(
                    int(r["index"]),
                    int(r["label"]),
                    [math.nan if v is None else float(v) for v in r["results"]],
                )
                for r in records
            ]
    return RunPoint(run.id, run.summary, run.identity, latencies, accuracy)


def _changes(before: StoredRun, after: StoredRun) -> tuple[IdentityChange, ...]:
    """What changed between two runs, in the fields both could have recorded."""
    a, b = before.identity, after.identity
    if before.from_history or after.from_history:
        a = {k: v for k, v in a.items() if k in HISTORY_IDENTITY}
        b = {k: v for k, v in b.items() if k in HISTORY_IDENTITY}
    return identity_changes(a, b)


def _by_key(runs: Iterable[StoredRun]) -> dict[tuple[str, str, str], StoredRun]:
    # A sweep holds one run per board × benchmark × mode.
    return {r.key: r for r in runs}


def compare(
    source: HistorySource,
    sweep_id: str,
    baseline: Baseline,
    *,
    history: int = DEFAULT_HISTORY,
) -> Comparison:
    """Verdicts for every board × benchmark × mode of ``sweep_id`` and of its baseline.
    Raises :class:`CompareError` for an unknown sweep or no baseline to compare with."""
    current = source.sweep(sweep_id)
    if current is None:
        raise CompareError(f"no sweep {sweep_id!r} (see farm sweeps)")
    label = current.label if baseline.label is None else baseline.label
    if baseline.sweep is not None:
        if baseline.sweep == sweep_id:
            raise CompareError(f"sweep {sweep_id} compared with itself")
        info = source.sweep(baseline.sweep)
        if info is None:
            raise CompareError(f"no baseline sweep {baseline.sweep!r} (see farm sweeps)")
        bases = [info]
    else:
        bases = source.good_sweeps(label, current.created, baseline.last)
        if not bases:
            raise CompareError(
                f"no finished sweep labelled {label!r} before {sweep_id} to compare with "
                "(give a baseline sweep id, or --against LABEL)"
            )
    past = source.good_sweeps(label, current.created, history)
    current_runs = _by_key(source.completed_runs(sweep_id))
    base_runs = [_by_key(source.completed_runs(b.id)) for b in bases]
    past_runs = [_by_key(source.completed_runs(p.id)) for p in past if p.id != sweep_id]
    wanted = set(current_runs) | {k for runs in base_runs for k in runs}
    verdicts = []
    for key in sorted(wanted):
        now = current_runs.get(key)
        before = [runs[key] for runs in base_runs if key in runs]
        points = [_point(source, r, r is before[-1]) for r in before] if before else []
        judged = judge(
            key[2],
            None if now is None else _point(source, now, bool(before)),
            points,
            [_point(source, runs[key], False) for runs in past_runs if key in runs],
        )
        changed: tuple[IdentityChange, ...] = ()
        if now is not None and before:
            changed = _changes(before[-1], now)
        verdicts.append(
            RunVerdicts(
                *key,
                metrics=judged,
                changed=changed,
                baseline_runs=tuple(r.id for r in before),
                current_run=None if now is None else now.id,
            )
        )
    log.info(
        "compared",
        sweep=sweep_id,
        baseline=[b.id for b in bases],
        history=len(past_runs),
        regressed=sum(v.regressed for v in verdicts),
    )
    return Comparison(current, tuple(bases), tuple(past), tuple(verdicts))


# -- output ------------------------------------------------------------------------------------


#: How many changed samples a table cell lists (json has them all).
SAMPLES_SHOWN = 10


def _cause(changed: Sequence[IdentityChange]) -> str:
    if not changed:
        return "nothing recorded"
    return "; ".join(f"{c.what} {c.before or '-'} -> {c.after or '-'}" for c in changed)


def _samples(verdict: MetricVerdict) -> str:
    shown = [str(c.index) for c in verdict.samples[:SAMPLES_SHOWN]]
    more = len(verdict.samples) - len(shown)
    return ", ".join(shown) + (f" (+{more})" if more > 0 else "")


def rows(comparison: Comparison) -> list[dict[str, Any]]:
    """One row per board × benchmark × mode × metric."""
    out = []
    for run in comparison.runs:
        for m in run.metrics:
            out.append(
                {
                    "board": run.board,
                    "benchmark": run.benchmark,
                    "mode": run.mode,
                    "metric": m.metric,
                    "verdict": m.verdict,
                    "baseline": m.baseline,
                    "current": m.current,
                    "unit": m.unit,
                    "change": m.change,
                    "change_pct": m.change_pct,
                    "noise": m.noise,
                    "threshold": m.threshold,
                    "interval_low": None if m.interval is None else m.interval[0],
                    "interval_high": None if m.interval is None else m.interval[1],
                    "history": m.history,
                    "changed_samples": [c.index for c in m.samples],
                    "samples_text": _samples(m),
                    "what_changed": _cause(run.changed),
                    "note": m.note,
                }
            )
    return out


def listing(comparison: Comparison) -> Listing:
    """The verdicts as a table (``--format table|csv|markdown``)."""
    newest = comparison.baseline[-1]
    against = (
        newest.id
        if len(comparison.baseline) == 1
        else f"the median of {len(comparison.baseline)} sweeps {newest.label!r} "
        f"(newest {newest.id})"
    )
    return Listing(
        f"sweep {comparison.sweep.id} against {against}",
        [
            Column("board", "board"),
            Column("benchmark", "bench"),
            Column("mode", "mode", rank=3),
            Column("metric", "metric"),
            Column("verdict", "verdict"),
            Column("baseline", "baseline", number(".6g"), rank=2, justify="right"),
            Column("current", "current", number(".6g"), rank=2, justify="right"),
            Column("change_pct", "change %", number("+.2f"), justify="right"),
            Column("threshold", "± noise", number(".3g"), rank=3, justify="right"),
            Column("history", "history", rank=3, justify="right"),
            Column("samples_text", "changed samples", rank=1),
            Column("what_changed", "what changed", rank=1),
            Column("note", "note", rank=3),
        ],
        [{k: v for k, v in r.items() if k != "changed_samples"} for r in rows(comparison)],
        notes=[
            "supplemental: verdicts against the run-to-run spread of each metric's history "
            "(± noise: the change a verdict needs); accuracy changes are exact.",
            f"{'REGRESSED' if comparison.regressed else 'no regression'}; history: "
            f"{len(comparison.history)} earlier sweep(s)",
        ],
    )


def document(comparison: Comparison) -> dict[str, Any]:
    """The ``--format json`` document."""
    return {
        "sweep": comparison.sweep.id,
        "label": comparison.sweep.label,
        "baseline": [b.id for b in comparison.baseline],
        "history": [h.id for h in comparison.history],
        "regressed": comparison.regressed,
        "runs": [
            {
                "board": r.board,
                "benchmark": r.benchmark,
                "mode": r.mode,
                "run": r.current_run,
                "baseline_runs": list(r.baseline_runs),
                "regressed": r.regressed,
                "what_changed": [
                    {"field": c.field, "what": c.what, "before": c.before, "after": c.after}
                    for c in r.changed
                ],
                "metrics": [
                    {
                        "metric": m.metric,
                        "unit": m.unit,
                        "verdict": m.verdict,
                        "baseline": m.baseline,
                        "current": m.current,
                        "change": m.change,
                        "change_pct": m.change_pct,
                        "noise": m.noise,
                        "threshold": m.threshold,
                        "interval": None if m.interval is None else list(m.interval),
                        "history": m.history,
                        "changed_samples": [
                            {
                                "index": c.index,
                                "label": c.label,
                                "before": c.before,
                                "after": c.after,
                                "correct_before": c.correct_before,
                                "correct_after": c.correct_after,
                            }
                            for c in m.samples
                        ],
                        "note": m.note,
                    }
                    for m in r.metrics
                ],
            }
            for r in comparison.runs
        ],
    }
