"""Nightly kws01 sweeps with known numbers, stored the way the controller stores them: each
run's folder written by ``controller.results.finish_run`` (the worker's own code: results.txt,
results.json with the energy traces, samples.jsonl, ...) from generated sample records, the
sweep and run hashes in Redis (``controller.keys``), the history entry
(``controller.history.record``, as the job does when a run completes) and each board's status
with its system description. For ``farm report``'s tests.

Every number is exact by construction (:class:`Night`): a performance window of
``PERF_COUNT`` inferences lasting ``PERF_COUNT / throughput`` s gives exactly that throughput;
an energy window holds 11,000 one-millisecond samples of ``k x 2**-15`` J between its events,
``k x 335.693359375`` µJ per inference (1000 inferences); an accuracy run answers the first
``correct`` of kws01's 1000 official rows right (top-1 ``correct / 10`` %); a latency run
has ``LATENCY_QUERIES`` queries around a median, seeded.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis

from controller import history, keys
from controller.results import finish_run
from farm.datasets import official_rows
from farm.sample import Sample
from tests.integration.compare_data import store_sweep_hash

# The records of the controller's results tests: every official row, and latency queries.
from tests.unit.test_controller_results import accuracy_records, latency_records

BENCHMARK = "kws01"
AGENT = "pi-a"
PERF_COUNT = 3000
ENERGY_COUNT = 1000
UNIT_J = 2.0**-15
IDLE_J = 2.0**-20
#: An energy window: events at samples 1000 and 12000 of 12,500.
ENERGY_START, ENERGY_STOP, ENERGY_TOTAL = 1000, 12000, 12500
UJ_PER_K = (ENERGY_STOP - ENERGY_START) * UNIT_J / ENERGY_COUNT * 1e6  # 335.693359375
LATENCY_QUERIES = 300
#: Short latency phases count as valid with these options (LoadGen's minimums lowered).
LATENCY_OPTIONS = {"min_queries": 100, "min_duration_s": 1.0}
CLASSES = 12
#: What each board says it is (agent.yaml's ``system``).
SYSTEMS = {
    "b-one": {
        "board_name": "Nucleo-L4R5ZI",
        "processor_name": "Arm Cortex-M4",
        "accelerator": "none",
        "inference_framework": "TFLite Micro",
    },
    "b-two": {
        "board_name": "Nucleo-U575ZI",
        "processor_name": "Arm Cortex-M33",
        "accelerator": "none",
        "inference_framework": "X-CUBE-AI",
    },
}


@dataclass(frozen=True)
class Night:
    """One board's numbers on one night."""

    throughput: float = 250.0
    energy_k: float = 3.0
    correct: int = 905
    latency_us: float = 4000.0
    firmware: str = "a" * 64


def window_record(i: int, count: int, **fields: Any) -> dict[str, Any]:
    """The samples.jsonl record of timed window ``i`` of ``count`` inferences on row ``i``."""
    return Sample(
        seq=i,
        index=i,
        segment=None,
        window=i,
        label=official_rows(BENCHMARK)[i].label,
        results=(0.0,) * CLASSES,
        count=count,
        warmup=10,
        **fields,
    ).to_record()


def perf_records(throughput: float) -> list[dict[str, Any]]:
    """Five windows of ``PERF_COUNT`` inferences at ``throughput`` inf./s."""
    elapsed = round(PERF_COUNT * 1e6 / throughput)
    return [
        window_record(
            i,
            PERF_COUNT,
            start_us=10**6 + i * 20 * 10**6,
            end_us=10**6 + i * 20 * 10**6 + elapsed,
            elapsed_us=elapsed,
            latency_us=elapsed / PERF_COUNT,
            wall_s=elapsed / 1e6 + 0.2,
        )
        for i in range(5)
    ]


def energy_records(k: float) -> list[dict[str, Any]]:
    """Five energy windows of ``k x 2**-15`` J per sample between the events."""
    samples = (
        [IDLE_J] * ENERGY_START
        + [k * UNIT_J] * (ENERGY_STOP - ENERGY_START)
        + [IDLE_J] * (ENERGY_TOTAL - ENERGY_STOP)
    )
    events = [[7, 500], [8, ENERGY_START], [9, ENERGY_STOP]]
    return [
        {
            **window_record(
                i,
                ENERGY_COUNT,
                wall_s=14.0,
                energy_j=(ENERGY_STOP - ENERGY_START) * k * UNIT_J,
                energy_window_s=(ENERGY_STOP - ENERGY_START) / 1000,
            ),
            "power_samples": samples,
            "power_events": events,
        }
        for i in range(5)
    ]


def latencies(median_us: float, seed: int) -> list[int]:
    """``LATENCY_QUERIES`` query latencies (µs) around ``median_us``, 2 % spread, seeded."""
    rng = random.Random(seed)
    return [round(median_us * rng.lognormvariate(0, 0.02)) for _ in range(LATENCY_QUERIES)]


def mode_run(mode: str, night: Night, seed: int) -> tuple[list[dict[str, Any]], dict, dict]:
    """The records, the runner info and the options of one run."""
    if mode == "performance":
        info = {"count": PERF_COUNT, "warmup": 10, "loop_wall_s": 70.0, "last_issue_s": 0.0}
        return perf_records(night.throughput), info, {}
    if mode == "energy":
        return energy_records(night.energy_k), {"count": ENERGY_COUNT}, {}
    if mode == "accuracy":
        return accuracy_records(BENCHMARK, night.correct, CLASSES), {}, {}
    info = {"count": None, "warmup": 0, "last_issue_s": 1.5}
    return latency_records(latencies(night.latency_us, seed)), info, LATENCY_OPTIONS


MODES = ("performance", "accuracy", "energy", "latency")


def store_night(
    client: redis.Redis,
    results: Path,
    sweep_id: str,
    created: float,
    nights: dict[str, Night],
    *,
    label: str = "nightly",
    seed: int = 0,
) -> None:
    """One finished sweep of every board of ``nights`` in every mode of kws01."""
    store_sweep_hash(client, sweep_id, label, created, len(nights) * len(MODES))
    n = 0
    for board, night in sorted(nights.items()):
        client.sadd(keys.BOARDS, board)
        client.hset(
            keys.board(board),
            mapping={
                "agent": AGENT,
                "status": json.dumps({"board": board, "system": SYSTEMS[board]}),
                "last_seen": created,
            },
        )
        for mode in MODES:
            run_id = f"{sweep_id}-r{n:02d}"
            n += 1
            records, info, options = mode_run(mode, night, seed + n)
            firmware = {
                "model": BENCHMARK,
                "image": f"{BENCHMARK}-{mode}.bin",
                "sha256": night.firmware,
                "software": "0.1.0",
            }
            run: dict[str, Any] = {
                "id": run_id,
                "sweep": sweep_id,
                "board": board,
                "agent": AGENT,
                "benchmark": BENCHMARK,
                "mode": mode,
                "dataset": "",
                "options": json.dumps(options) if options else "",
                "label": label,
                "state": "completed",
                "firmware": json.dumps(firmware),
            }
            folder = results / sweep_id / board / BENCHMARK / mode
            summary = finish_run(run, records, info, folder)
            run.update(
                summary=json.dumps(summary.to_json()),
                artifacts=str(folder),
                finished_at=created + n,
            )
            client.rpush(keys.sweep_runs(sweep_id), run_id)
            client.hset(keys.run(run_id), mapping=run)
            history.record(client, run)
