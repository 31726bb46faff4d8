"""controller.history and controller.retention against a private redis-server (no
persistence, nothing else in it, so its memory figures are the history's own)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
import redis

from controller import history, keys
from controller.retention import (
    DEFAULT_RUN_RETENTION_S,
    DEFAULT_SAMPLES_RETENTION_S,
    retire_run_detail,
    run_retention_s,
    samples_retention_s,
    trim_sweeps,
)

ROOT = Path(__file__).resolve().parents[2]


def _bench() -> ModuleType:
    """bench/history_memory.py: the generated year of history shared with the benchmark."""
    spec = importlib.util.spec_from_file_location(
        "history_memory", ROOT / "bench" / "history_memory.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("history_memory", module)
    spec.loader.exec_module(module)
    return module


bench = _bench()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[redis.Redis]:
    proc, client = bench.private_redis("redis-server", tmp_path_factory.mktemp("redis"))
    try:
        yield client
    finally:
        client.close()
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
def client(server: redis.Redis) -> Iterator[redis.Redis]:
    server.flushdb()
    yield server
    server.flushdb()


FIRMWARE_A = {
    "model": "kws01",
    "build": "performance",
    "image": "kws01-perf.bin",
    "sha256": "a" * 64,
    "profile": "ULPMark for tinyML Firmware V0.0.1",
    "name": "acme",
    "software": "0.4.0",
}
FIRMWARE_B = {**FIRMWARE_A, "image": "kws01-perf-r2.bin", "sha256": "b" * 64}


def run_hash(
    run: str,
    sweep: str,
    finished: float,
    *,
    label: str = "nightly",
    ips: float = 100.0,
    firmware: dict[str, str] | None = None,
    state: str = "completed",
) -> dict[str, str]:
    summary = {
        "throughput_ips": ips,
        "latency_ms": 1000 / ips,
        "samples": 5,
        "valid": True,
        "problems": [],
        "firmware": firmware,
    }
    return {
        "id": run,
        "sweep": sweep,
        "label": label,
        "board": "kws-1",
        "agent": "pi-a",
        "benchmark": "kws01",
        "mode": "performance",
        "state": state,
        "finished_at": repr(finished),
        "summary": json.dumps(summary),
        "firmware": json.dumps(firmware) if firmware else "",
    }


def test_a_series_reads_back_in_time_order_with_its_filters(client: redis.Redis) -> None:
    runs = [
        run_hash("r1", "s1", 1000.5, ips=100.0, firmware=FIRMWARE_A),
        run_hash("r2", "s2", 2000.25, ips=101.0, firmware=FIRMWARE_A),
        run_hash("r3", "s3", 3000.0, label="manual", ips=90.0, firmware=FIRMWARE_B),
        run_hash("r4", "s4", 4000.0, ips=102.0),  # an agent that sent no identity
    ]
    for run in reversed(runs):  # recorded out of order: read back in time order
        assert history.record(client, run) is not None
    # Idempotent: the same run hash again adds nothing.
    history.record(client, runs[0])
    assert client.zcard(keys.history("kws-1", "kws01", "performance")) == 4
    # Nothing for a run that did not complete.
    assert history.record(client, run_hash("r5", "s5", 5000.0, state="failed")) is None

    found = history.entries(client, "kws-1", "kws01", "performance")
    assert [e.run for e in found] == ["r1", "r2", "r3", "r4"]
    first = found[0]
    assert (first.sweep, first.label, first.agent) == ("s1", "nightly", "pi-a")
    assert first.finished == 1000.5
    assert first.throughput_ips == 100.0 and first.latency_ms == pytest.approx(10.0)
    assert first.valid and first.samples == 5 and first.top1 is None
    assert first.firmware == history.Firmware(**FIRMWARE_A)
    assert found[2].firmware is not None and found[2].firmware.sha256 == "b" * 64
    assert found[3].firmware is None
    # One stored identity per distinct firmware, however many entries use it.
    assert client.hlen(keys.HISTORY_FIRMWARE) == 2

    def runs_of(**kw: object) -> list[str]:
        return [e.run for e in history.entries(client, "kws-1", "kws01", "performance", **kw)]

    assert runs_of(before=3000.0) == ["r1", "r2"]  # strictly before
    assert runs_of(limit=2) == ["r3", "r4"]  # the newest two, oldest first
    assert runs_of(before=4000.0, limit=1) == ["r3"]
    assert runs_of(label="nightly") == ["r1", "r2", "r4"]
    assert runs_of(label="nightly", before=4000.0, limit=1) == ["r2"]
    assert runs_of(sweep="s2") == ["r2"]
    assert runs_of(limit=0) == []
    assert history.entries(client, "kws-1", "kws01", "accuracy") == []
    assert history.series(client) == [("kws-1", "kws01", "performance")]


def test_sweeps_are_listed_newest_first_with_their_entries(client: redis.Redis) -> None:
    history.record(client, run_hash("r1", "s1", 1000.0))
    history.record(client, {**run_hash("r2", "s1", 1100.0), "board": "kws-2"})
    history.record(client, run_hash("r3", "s2", 2000.0, label="manual"))
    history.record(client, run_hash("r4", "s3", 3000.0))

    assert [(s.id, s.label, s.first, s.last) for s in history.sweeps(client)] == [
        ("s3", "nightly", 3000.0, 3000.0),
        ("s2", "manual", 2000.0, 2000.0),
        ("s1", "nightly", 1000.0, 1100.0),
    ]
    assert [s.id for s in history.sweeps(client, label="nightly")] == ["s3", "s1"]
    assert [s.id for s in history.sweeps(client, label="nightly", limit=1)] == ["s3"]
    assert [(e.board, e.run) for e in history.sweep_entries(client, "s1")] == [
        ("kws-1", "r1"),
        ("kws-2", "r2"),
    ]
    assert history.sweep_entries(client, "nope") == []


def test_a_retired_runs_samples_and_events_leave_redis(client: redis.Redis) -> None:
    for run in ("now", "later"):
        client.hset(keys.run_samples(run), mapping={"0": "{}", "1": "{}"})
        client.hset(keys.run_trace(run), mapping={"0:0": "[1.5]", "0:1": "[2.5]"})
        client.rpush(keys.run_events(run), "{}")
        client.hset(keys.run(run), "state", "completed")
    retire_run_detail(client, "now", 0)
    retire_run_detail(client, "later", 3600)
    assert not client.exists(keys.run_samples("now"), keys.run_trace("now"), keys.run_events("now"))
    for key in (keys.run_samples("later"), keys.run_trace("later"), keys.run_events("later")):
        assert 3590 <= client.ttl(key) <= 3600
    # The run hash (summary, final event, firmware) stays.
    assert client.ttl(keys.run("now")) == -1 and client.ttl(keys.run("later")) == -1


def test_the_samples_retention_setting() -> None:
    assert samples_retention_s({}) == DEFAULT_SAMPLES_RETENTION_S
    assert samples_retention_s({"FARM_SAMPLES_RETENTION_S": " "}) == DEFAULT_SAMPLES_RETENTION_S
    assert samples_retention_s({"FARM_SAMPLES_RETENTION_S": "0"}) == 0
    assert samples_retention_s({"FARM_SAMPLES_RETENTION_S": "90.5"}) == 91
    for bad in ("-1", "soon", "inf", "nan"):
        with pytest.raises(ValueError, match="FARM_SAMPLES_RETENTION_S"):
            samples_retention_s({"FARM_SAMPLES_RETENTION_S": bad})


def test_old_finished_sweeps_are_trimmed_whole_and_their_history_stays(
    client: redis.Redis,
) -> None:
    def sweep(sweep_id: str, created: float, state: str, runs: dict[str, str]) -> None:
        client.zadd(keys.SWEEPS, {sweep_id: created})
        client.hset(keys.sweep(sweep_id), mapping={"state": state, "label": "nightly"})
        client.rpush(keys.sweep_runs(sweep_id), *runs)
        client.rpush(keys.sweep_skipped(sweep_id), "{}")
        client.hset(keys.sweep_verdict(sweep_id), "state", "judged")
        for run_id, run_state in runs.items():
            client.hset(keys.run(run_id), mapping={"state": run_state, "sweep": sweep_id})
            client.hset(keys.run_samples(run_id), "0", "{}")
            client.hset(keys.run_trace(run_id), "0:0", "[1.5]")
            client.rpush(keys.run_events(run_id), "{}")

    sweep("old", 1000.0, "finished", {"o1": "completed", "o2": "failed"})
    sweep("going", 1001.0, "running", {"g1": "completed", "g2": "running"})
    sweep("new", 9000.0, "finished", {"n1": "completed"})
    history.record(client, run_hash("o1", "old", 1500.0))

    assert trim_sweeps(client, retention_s=5000, now=10_000.0) == ["old"]
    assert client.zrange(keys.SWEEPS, 0, -1) == ["going", "new"]
    gone = [
        keys.sweep("old"),
        keys.sweep_runs("old"),
        keys.sweep_skipped("old"),
        keys.sweep_verdict("old"),
    ]
    for run_id in ("o1", "o2"):
        gone += [
            keys.run(run_id),
            keys.run_samples(run_id),
            keys.run_trace(run_id),
            keys.run_events(run_id),
        ]
    assert client.exists(*gone) == 0
    assert client.exists(keys.run("g1"), keys.run("g2"), keys.run("n1")) == 3
    # The history keeps the trimmed run's summary.
    assert [e.run for e in history.entries(client, "kws-1", "kws01", "performance")] == ["o1"]
    # Once the running sweep finished, a later pass trims it too.
    client.hset(keys.sweep("going"), "state", "finished")
    client.hset(keys.run("g2"), "state", "completed")
    assert trim_sweeps(client, retention_s=5000, now=10_000.0) == ["going"]
    assert run_retention_s({}) == DEFAULT_RUN_RETENTION_S
    with pytest.raises(ValueError, match="FARM_RUN_RETENTION_S"):
        run_retention_s({"FARM_RUN_RETENTION_S": "a month"})


def _per_entry(client: redis.Redis, nights: int, boards: int) -> tuple[int, float]:
    before = bench.used_memory(client)
    count = bench.write(client, bench.year_of_history(nights, boards))
    return count, (bench.used_memory(client) - before) / count


def test_history_memory_per_entry_stays_within_its_budget(client: redis.Redis) -> None:
    # 150 nights: past the 128 entries at which Redis stores a series as a skip list, the
    # encoding a year's series has, so the cost per entry is a year's.
    count, per_entry = _per_entry(client, nights=150, boards=4)
    assert count == 150 * 4 * len(bench.SERIES)
    assert per_entry <= history.ENTRY_BUDGET_BYTES, per_entry
    found = history.entries(client, "board-03", "ad01", "accuracy")
    assert len(found) == 150 and all(e.auc is not None and e.firmware for e in found)
    # Firmware identities: one per board, model (4), build (2) and monthly generation (5).
    assert client.hlen(keys.HISTORY_FIRMWARE) == 4 * 4 * 2 * 5


@pytest.mark.slow
def test_a_year_of_nightly_sweeps_on_48_boards_stays_within_the_budget(
    client: redis.Redis,
) -> None:
    count, per_entry = _per_entry(client, nights=365, boards=48)
    assert count == 365 * 48 * len(bench.SERIES)
    assert per_entry <= history.ENTRY_BUDGET_BYTES, per_entry
    assert len(history.sweeps(client, label="nightly")) == 365
    assert len(history.entries(client, "board-47", "kws01", "latency", limit=7)) == 7
