"""Every completed run's summary, kept per board × benchmark × mode for as long as the lab
runs: what ``farm compare`` and the reports read to judge a night against the nights before.

API (synchronous redis-py, a client that decodes responses)::

    record(client, run) -> Entry | None
        Called once a run completed (``controller.jobs``): ``run`` is its hash (``id``,
        ``sweep``, ``label``, ``board``, ``agent``, ``benchmark``, ``mode``, ``state``,
        ``finished_at``, ``summary``, ``firmware``). Writes only (it works on a pipeline too)
        and is idempotent: the same run hash gives the same entry. None (nothing written)
        unless the run completed with a summary.
    entries(client, board, benchmark, mode, *, before=None, limit=None, label=None,
            sweep=None) -> list[Entry]
        One series, oldest first: finished strictly before ``before`` (unix time), of sweeps
        labelled ``label`` / of sweep ``sweep`` only, the newest ``limit`` of those.
    sweep_entries(client, sweep) -> list[Entry]
        Every entry of one sweep (all its boards, benchmarks and modes), in series order.
    sweeps(client, label=None, limit=None) -> list[SweepInfo]
        Sweeps with entries, newest first (by their first entry's time).
    series(client) -> list[tuple[str, str, str]]
        Every (board, benchmark, mode) with history, sorted.

:class:`Entry` carries the summary's numbers (``throughput_ips``, ``latency_ms`` derived
from it, ``top1`` in percent, ``auc``, ``energy_uj``, ``p50_us``, ``p90_us``, ``p99_us``,
``p90_early_stop_us``; None where the mode gives none), ``valid``, ``target_met``,
``samples``, the run, sweep, label, agent, ``finished`` (unix time) and ``firmware``
(:class:`Firmware`: image file name, its SHA-256, the DUT's profile and name, the agent's
version, the model and build; None for a run of an agent that sent none). The per-sample
data is not here: it is in the run's folder, ``<results>/<sweep>/<board>/<benchmark>/<mode>/
samples.jsonl`` (``FARM_RESULTS_DIR``), kept when Redis's copy expires.

Layout (:mod:`controller.keys`): one sorted set per series, ``farm:history:{board}:
{benchmark}:{mode}``, of compact JSON entries scored by the run's finish time; the index of
series ``farm:history:series`` (``board|benchmark|mode`` -> latest finish); the sweeps
``farm:history:sweeps`` (first entry's time) and ``farm:history:sweeps:last`` (last entry's
time) with ``farm:history:sweep-labels`` (sweep -> label); and the firmware identities
``farm:history:firmware`` (12-hex id -> JSON), stored once and referenced by id from each
entry, since a board's firmware changes far less often than it runs. A year of nightly
full-suite sweeps on 48 boards (about 230,000 entries) costs the memory docs/operations.md
states (measured; :data:`ENTRY_BUDGET_BYTES` is the bound a test holds it to).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import redis

from controller import keys
from controller.store import run_firmware

#: Redis memory an entry may cost, all keys counted (the test of a generated year of
#: history holds the measured figure to it).
ENTRY_BUDGET_BYTES = 400
#: The summary numbers an entry keeps (``latency_ms`` is derived from ``throughput_ips``).
NUMBERS = (
    "throughput_ips",
    "top1",
    "auc",
    "energy_uj",
    "p50_us",
    "p90_us",
    "p99_us",
    "p90_early_stop_us",
)
#: The firmware fields of a run hash's ``firmware`` (controller.ingest.run_events).
FIRMWARE_KEYS = ("model", "build", "image", "sha256", "profile", "name", "software")
_SEP = "|"


@dataclass(frozen=True, slots=True)
class Firmware:
    """What produced a result (``RunSummary.firmware``); any field may be None."""

    model: str | None = None
    build: str | None = None
    image: str | None = None
    """The image file's name."""
    sha256: str | None = None
    """The image file's SHA-256 (hex)."""
    profile: str | None = None
    """The DUT's ``profile`` answer."""
    name: str | None = None
    """The DUT's ``name`` answer."""
    software: str | None = None
    """The agent's tinyfarm version."""

    @property
    def id(self) -> str:
        """12 hex characters naming this identity (stable: a hash of its fields)."""
        return hashlib.sha256(_compact(self.to_json()).encode()).hexdigest()[:12]

    def to_json(self) -> dict[str, str | None]:
        """The fields as a dict (every key present)."""
        return {k: getattr(self, k) for k in FIRMWARE_KEYS}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Firmware:
        """From a dict such as :meth:`to_json`'s (unknown keys ignored, non-text as None)."""
        return cls(**{k: data[k] if isinstance(data.get(k), str) else None for k in FIRMWARE_KEYS})


@dataclass(frozen=True, slots=True)
class Entry:
    """One completed run of a series (see the module docstring)."""

    board: str
    benchmark: str
    mode: str
    run: str
    sweep: str
    label: str
    agent: str
    finished: float
    valid: bool
    samples: int
    target_met: bool | None = None
    throughput_ips: float | None = None
    top1: float | None = None
    auc: float | None = None
    energy_uj: float | None = None
    p50_us: int | None = None
    p90_us: int | None = None
    p99_us: int | None = None
    p90_early_stop_us: int | None = None
    firmware: Firmware | None = None

    @property
    def latency_ms(self) -> float | None:
        """The published latency, ``1000 / throughput_ips`` (performance mode)."""
        if self.throughput_ips is None or self.throughput_ips <= 0:
            return None
        return 1000 / self.throughput_ips


@dataclass(frozen=True, slots=True)
class SweepInfo:
    """A sweep with history: its label and the finish times of its first and last entry."""

    id: str
    label: str
    first: float
    last: float


# -- writing -----------------------------------------------------------------------------------


def record(client: redis.Redis | redis.client.Pipeline, run: Mapping[str, Any]) -> Entry | None:
    """Keep a completed run's summary in its series' history (see the module docstring)."""
    if run.get("state") != "completed" or not run.get("summary"):
        return None
    summary = json.loads(run["summary"])
    firmware = summary.get("firmware") or run_firmware(run)
    entry = Entry(
        board=run["board"],
        benchmark=run["benchmark"],
        mode=run["mode"],
        run=run["id"],
        sweep=run.get("sweep") or "",
        label=run.get("label") or "",
        agent=run.get("agent") or "",
        finished=float(run["finished_at"]),
        valid=bool(summary.get("valid")),
        samples=int(summary.get("samples") or 0),
        target_met=summary.get("target_met"),
        firmware=Firmware.from_json(firmware) if firmware else None,
        **{k: _finite(summary.get(k)) for k in NUMBERS},
    )
    name = _series_name(entry.board, entry.benchmark, entry.mode)
    client.zadd(
        keys.history(entry.board, entry.benchmark, entry.mode), {_encode(entry): entry.finished}
    )
    client.zadd(keys.HISTORY_SERIES, {name: entry.finished}, gt=True)
    if entry.sweep:
        client.zadd(keys.HISTORY_SWEEPS, {entry.sweep: entry.finished}, lt=True)
        client.zadd(keys.HISTORY_SWEEPS_LAST, {entry.sweep: entry.finished}, gt=True)
        client.hset(keys.HISTORY_SWEEP_LABELS, entry.sweep, entry.label)
    if entry.firmware is not None:
        client.hsetnx(keys.HISTORY_FIRMWARE, entry.firmware.id, _compact(entry.firmware.to_json()))
    return entry


def _encode(entry: Entry) -> str:
    """The stored member: the fields neither the series key nor the score (the finish time)
    already say, nulls left out."""
    data: dict[str, Any] = {
        "run": entry.run,
        "sweep": entry.sweep,
        "label": entry.label,
        "agent": entry.agent,
        "valid": entry.valid,
        "n": entry.samples,
        "met": entry.target_met,
        **{k: getattr(entry, k) for k in NUMBERS},
        "fw": None if entry.firmware is None else entry.firmware.id,
    }
    return _compact({k: v for k, v in data.items() if v is not None})


def _decode(
    board: str,
    benchmark: str,
    mode: str,
    data: Mapping[str, Any],
    finished: float,
    firmware: Mapping[str, Firmware],
) -> Entry:
    return Entry(
        board=board,
        benchmark=benchmark,
        mode=mode,
        run=data["run"],
        sweep=data.get("sweep", ""),
        label=data.get("label", ""),
        agent=data.get("agent", ""),
        finished=finished,
        valid=bool(data.get("valid")),
        samples=int(data.get("n", 0)),
        target_met=data.get("met"),
        firmware=firmware.get(data["fw"]) if "fw" in data else None,
        **{k: data.get(k) for k in NUMBERS},
    )


# -- reading -----------------------------------------------------------------------------------


def series(client: redis.Redis) -> list[tuple[str, str, str]]:
    """Every (board, benchmark, mode) with history, sorted."""
    names = client.zrange(keys.HISTORY_SERIES, 0, -1)
    found = [tuple(name.split(_SEP)) for name in names]
    return sorted((b, bench, m) for b, bench, m in found)


def entries(
    client: redis.Redis,
    board: str,
    benchmark: str,
    mode: str,
    *,
    before: float | None = None,
    limit: int | None = None,
    label: str | None = None,
    sweep: str | None = None,
) -> list[Entry]:
    """One series' entries, oldest first (see the module docstring)."""
    key = keys.history(board, benchmark, mode)
    high = "+inf" if before is None else f"({before!r}"
    if label is None and sweep is None and limit is not None:
        # Newest first from Redis, so a long history is not read for the last few.
        texts = client.zrevrangebyscore(key, high, "-inf", start=0, num=limit, withscores=True)
    else:
        texts = client.zrangebyscore(key, "-inf", high, withscores=True)
    found = _decoded(client, board, benchmark, mode, texts)
    if label is not None:
        found = [e for e in found if e.label == label]
    if sweep is not None:
        found = [e for e in found if e.sweep == sweep]
    if limit is not None:
        found = found[-limit:] if limit > 0 else []
    return found


def sweep_entries(client: redis.Redis, sweep: str) -> list[Entry]:
    """Every entry of ``sweep``, ordered by board, benchmark and mode."""
    first = client.zscore(keys.HISTORY_SWEEPS, sweep)
    last = client.zscore(keys.HISTORY_SWEEPS_LAST, sweep)
    if first is None or last is None:
        return []
    names = series(client)
    pipe = client.pipeline(transaction=False)
    for name in names:
        pipe.zrangebyscore(keys.history(*name), first, last, withscores=True)
    found: list[Entry] = []
    for (board, benchmark, mode), texts in zip(names, pipe.execute(), strict=True):
        decoded = _decoded(client, board, benchmark, mode, texts)
        found += [e for e in decoded if e.sweep == sweep]
    return found


def sweeps(
    client: redis.Redis, label: str | None = None, limit: int | None = None
) -> list[SweepInfo]:
    """Sweeps with entries, newest first (by their first entry), of ``label`` only if given,
    at most ``limit``."""
    pipe = client.pipeline(transaction=False)
    pipe.zrevrange(keys.HISTORY_SWEEPS, 0, -1, withscores=True)
    pipe.zrange(keys.HISTORY_SWEEPS_LAST, 0, -1, withscores=True)
    pipe.hgetall(keys.HISTORY_SWEEP_LABELS)
    firsts, lasts, labels = pipe.execute()
    last_of = dict(lasts)
    found = []
    for sweep_id, first in firsts:
        if label is not None and labels.get(sweep_id, "") != label:
            continue
        found.append(
            SweepInfo(sweep_id, labels.get(sweep_id, ""), first, last_of.get(sweep_id, first))
        )
        if limit is not None and len(found) >= limit:
            break
    return found


def _decoded(
    client: redis.Redis,
    board: str,
    benchmark: str,
    mode: str,
    members: list[tuple[str, float]],
) -> list[Entry]:
    """Members with their scores, as entries sorted by finish time."""
    parsed = [json.loads(text) for text, _ in members]
    ids = sorted({d["fw"] for d in parsed if "fw" in d})
    firmware: dict[str, Firmware] = {}
    if ids:
        for fw_id, raw in zip(ids, client.hmget(keys.HISTORY_FIRMWARE, ids), strict=True):
            if raw:
                firmware[fw_id] = Firmware.from_json(json.loads(raw))
    found = [
        _decode(board, benchmark, mode, d, score, firmware)
        for d, (_, score) in zip(parsed, members, strict=True)
    ]
    found.sort(key=lambda e: (e.finished, e.run))
    return found


# -- helpers -----------------------------------------------------------------------------------


def _series_name(board: str, benchmark: str, mode: str) -> str:
    return _SEP.join((board, benchmark, mode))


def _compact(data: Mapping[str, Any]) -> str:
    return json.dumps(data, separators=(",", ":"), sort_keys=True)


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
