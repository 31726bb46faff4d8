"""A sweep's verdicts as the controller keeps them: what ``farm submit --verdict`` asks for,
the record the judge job (:mod:`controller.judge`) writes when the sweep has finished, and
the index of the latest judged sweep of each label that the exporter reads.

``farm:sweep:{sweep}:verdict`` (hash) holds one record: ``state`` (``judged``, or ``no
baseline`` on a label's first night), ``label``, ``judged_at``, ``baseline`` (JSON list of
sweep ids), ``regressions`` (metrics worse), ``rows`` (JSON: one ``[board, benchmark, mode,
metric, verdict, change_pct, what changed]`` per metric), ``note``, ``report`` (the report's
``index.html``), ``report_url`` and ``report_error``. The sweep hash's ``verdict`` field
holds a one-line summary (``queued`` until the job has run), so ``farm sweeps`` reads no
more than it did. ``farm:verdicts:latest`` maps each label to its newest judged sweep (by
creation time: a late judgement of an older sweep does not replace it).

A full-suite sweep of 48 boards holds 960 rows: 115 KB in Redis when a quarter of them name a
changed firmware digest (measured), less when nothing changed; the record goes with its sweep
(:func:`controller.retention.trim_sweeps`), so a year of nightly sweeps keeps at most the
retention's 30 of them.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import redis

from controller import keys

#: The exported value of a verdict (``farm_verdict``); ``new`` and ``missing`` (no run on
#: one side) have none.
VERDICT_VALUES = {"worse": -1.0, "same": 0.0, "better": 1.0}
JUDGED = "judged"
NO_BASELINE = "no baseline"
#: The sweep hash's ``verdict`` while the judge job is queued.
QUEUED = "queued"
#: The verdicts a summary counts, in its order (``REGRESSED: 2 worse, 40 same``).
SUMMARY_ORDER = ("worse", "better", "same", "new", "missing")


@dataclass(frozen=True, slots=True)
class VerdictRequest:
    """What ``farm submit --verdict`` stores in the sweep's spec: the baseline (the median of
    the last ``last`` good sweeps labelled ``against``, None: the sweep's own label) and where
    the report goes (``<report_dir>/<sweep>/``; None: the judge's default)."""

    against: str | None = None
    last: int = 1
    report_dir: str | None = None

    def to_json(self) -> dict[str, Any]:
        """As stored in the spec."""
        return {"against": self.against, "last": self.last, "report_dir": self.report_dir}

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any]) -> VerdictRequest | None:
        """The request a stored spec holds, or None (a sweep submitted without one)."""
        raw = spec.get("verdict")
        if not isinstance(raw, dict):
            return None
        return cls(raw.get("against"), int(raw.get("last") or 1), raw.get("report_dir"))


@dataclass(frozen=True, slots=True)
class VerdictRow:
    """One metric's verdict of one board × benchmark × mode."""

    board: str
    benchmark: str
    mode: str
    metric: str
    verdict: str
    change_pct: float | None
    cause: str


@dataclass(frozen=True, slots=True)
class VerdictRecord:
    """A judged sweep (see the module docstring)."""

    sweep: str
    label: str
    state: str
    judged_at: float
    baseline: tuple[str, ...] = ()
    rows: tuple[VerdictRow, ...] = ()
    note: str = ""
    report: str = ""
    report_url: str = ""
    report_error: str = ""

    @property
    def regressions(self) -> int:
        """Metrics judged worse."""
        return sum(r.verdict == "worse" for r in self.rows)

    def summary(self) -> str:
        """One line for ``farm sweeps`` and ``farm show``."""
        if self.state != JUDGED:
            return self.state
        counts = {v: sum(r.verdict == v for r in self.rows) for v in SUMMARY_ORDER}
        shown = ", ".join(f"{n} {v}" for v, n in counts.items() if n)
        head = "REGRESSED" if self.regressions else "no regression"
        return f"{head}: {shown or 'nothing compared'}"

    def to_hash(self) -> dict[str, str]:
        """The stored hash."""
        return {
            "state": self.state,
            "label": self.label,
            "judged_at": repr(self.judged_at),
            "baseline": json.dumps(list(self.baseline)),
            "regressions": str(self.regressions),
            "rows": json.dumps(
                [
                    [r.board, r.benchmark, r.mode, r.metric, r.verdict, r.change_pct, r.cause]
                    for r in self.rows
                ],
                separators=(",", ":"),
            ),
            "note": self.note,
            "report": self.report,
            "report_url": self.report_url,
            "report_error": self.report_error,
        }

    @classmethod
    def from_hash(cls, sweep_id: str, raw: Mapping[str, str]) -> VerdictRecord:
        """A record read back (``ValueError`` for one that is not JSON where it should be)."""
        rows = tuple(
            VerdictRow(str(b), str(be), str(m), str(me), str(v), c, str(w))
            for b, be, m, me, v, c, w in json.loads(raw.get("rows") or "[]")
        )
        return cls(
            sweep_id,
            raw.get("label", ""),
            raw.get("state", ""),
            float(raw.get("judged_at") or 0),
            tuple(json.loads(raw.get("baseline") or "[]")),
            rows,
            raw.get("note", ""),
            raw.get("report", ""),
            raw.get("report_url", ""),
            raw.get("report_error", ""),
        )


def store(client: redis.Redis, record: VerdictRecord) -> bool:
    """Write the record and the sweep's summary; make it its label's latest unless a sweep
    created later was judged already. True when it became the latest."""
    with client.pipeline(transaction=True) as pipe:
        pipe.delete(keys.sweep_verdict(record.sweep))
        pipe.hset(keys.sweep_verdict(record.sweep), mapping=record.to_hash())
        pipe.hset(keys.sweep(record.sweep), "verdict", record.summary())
        pipe.execute()
    created = float(client.hget(keys.sweep(record.sweep), "created") or 0)
    became: list[bool] = []

    def update(pipe: Any) -> None:
        became.clear()
        current = pipe.hget(keys.VERDICTS_LATEST, record.label)
        if current and current != record.sweep:
            theirs = float(pipe.hget(keys.sweep(current), "created") or 0)
            if theirs > created:
                return
        pipe.multi()
        pipe.hset(keys.VERDICTS_LATEST, record.label, record.sweep)
        became.append(True)

    # WATCH on the index: two judgements of one label at once cannot both win.
    client.transaction(update, keys.VERDICTS_LATEST)
    return bool(became)


def load(client: redis.Redis, sweep_id: str) -> VerdictRecord | None:
    """The sweep's record, or None (not judged, or trimmed)."""
    raw = client.hgetall(keys.sweep_verdict(sweep_id))
    return VerdictRecord.from_hash(sweep_id, raw) if raw else None


def latest(client: redis.Redis) -> dict[str, str]:
    """Label -> its latest judged sweep."""
    return dict(client.hgetall(keys.VERDICTS_LATEST))
