"""Sweeps written into Redis the way the controller stores them (``controller.keys``: the
sweep hash, ``farm:sweeps``, the run hashes with their ``summary`` and ``artifacts``, a
run folder holding ``samples.jsonl``, and each run's entry in the run history), for ``farm
compare``'s tests (and the sweep hash for ``farm report``'s)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from controller import history, keys
from controller.results import RunSummary


@dataclass
class FakeRun:
    """One completed run: its summary numbers, its sample records, the firmware identity its
    run hash holds (``firmware``, as ingest stores it from the ``started`` event)."""

    board: str
    benchmark: str
    mode: str
    numbers: dict[str, Any]
    samples: list[dict[str, Any]] = field(default_factory=list)
    firmware: dict[str, Any] | None = None


def store_sweep_hash(
    client: redis.Redis,
    sweep_id: str,
    label: str,
    created: float,
    total: int,
    *,
    state: str = "finished",
) -> None:
    """The sweep's hash and its place in ``farm:sweeps`` (its runs are the caller's)."""
    client.hset(
        keys.sweep(sweep_id),
        mapping={
            "id": sweep_id,
            "label": label,
            "created": created,
            "state": state,
            "total": total,
            "spec": "{}",
        },
    )
    client.zadd(keys.SWEEPS, {sweep_id: created})


def store_sweep(
    client: redis.Redis,
    results: Path,
    sweep_id: str,
    label: str,
    created: float,
    runs: Sequence[FakeRun],
    *,
    state: str = "finished",
) -> None:
    """Write a sweep and its completed runs (with their folders under ``results``)."""
    store_sweep_hash(client, sweep_id, label, created, len(runs), state=state)
    for i, run in enumerate(runs):
        run_id = f"{sweep_id}-r{i:03d}"
        folder = results / sweep_id / run.board / run.benchmark / run.mode
        folder.mkdir(parents=True)
        (folder / "samples.jsonl").write_text("".join(json.dumps(s) + "\n" for s in run.samples))
        summary = RunSummary(
            **run.numbers, samples=len(run.samples), valid=True, artifacts=str(folder)
        )
        fields: dict[str, Any] = {
            "id": run_id,
            "sweep": sweep_id,
            "board": run.board,
            "agent": "pi-a",
            "benchmark": run.benchmark,
            "mode": run.mode,
            "options": "{}",
            "label": label,
            "state": "completed",
            "finished_at": created + 0.5,
            "summary": json.dumps(summary.to_json()),
            "artifacts": str(folder),
        }
        if run.firmware is not None:
            fields["firmware"] = json.dumps(run.firmware)
        client.rpush(keys.sweep_runs(sweep_id), run_id)
        client.hset(keys.run(run_id), mapping=fields)
        history.record(client, fields)


def accuracy_records(predicted: Sequence[int], labels: Sequence[int]) -> list[dict[str, Any]]:
    """samples.jsonl records of a 10-class accuracy run answering ``predicted``."""
    return [
        {
            "seq": i,
            "index": i,
            "segment": None,
            "window": None,
            "label": y,
            "latency_us": None,
            "results": [0.91 if c == p else 0.01 for c in range(10)],
        }
        for i, (p, y) in enumerate(zip(predicted, labels, strict=True))
    ]


def latency_records(latencies_us: Sequence[int]) -> list[dict[str, Any]]:
    """samples.jsonl records of a latency run."""
    return [
        {
            "seq": i,
            "index": i % 2,
            "segment": None,
            "window": None,
            "label": 0,
            "latency_us": float(v),
            "results": [1.0],
        }
        for i, v in enumerate(latencies_us)
    ]


def by_metric(document: Mapping[str, Any]) -> dict[tuple[str, str, str], dict[str, Any]]:
    """``farm compare --json``'s metrics by (board, mode, metric)."""
    return {
        (run["board"], run["mode"], m["metric"]): {**m, "what_changed": run["what_changed"]}
        for run in document["runs"]
        for m in run["metrics"]
    }
