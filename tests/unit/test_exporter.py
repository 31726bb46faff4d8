"""The exporter's collector against a real Redis (database 12, flushed per test) holding the
farm's state in the controller.keys layout, scraped over HTTP and parsed with prometheus-client's
own parser; the ingest process's metrics; the naming conventions."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import socket
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import redis
from prometheus_client import start_http_server
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as openmetrics_families,
)
from prometheus_client.parser import text_string_to_metric_families

from controller import keys, quarantine, reservations
from controller.exporter import make_registry
from controller.metrics import (
    EXPORTER,
    INFO_LABELS,
    INGEST,
    LABELS,
    IngestMetrics,
    failure_category,
)
from controller.metrics_http import MetricsAccess, _Handler
from controller.verdicts import VerdictRecord, VerdictRow, store
from farm.messages import PROTOCOL_VERSION, SAMPLE_BATCH

#: Database 12 by default, the observability suite's (``FARM_TEST_OBSERVABILITY_REDIS`` picks
#: another, as for tests/integration/test_observability.py).
REDIS_URL = os.environ.get("FARM_TEST_OBSERVABILITY_REDIS", "redis://127.0.0.1:6379/12")
ROOT = Path(__file__).resolve().parents[2]


def _bench() -> ModuleType:
    """bench/exporter_scrape.py: the state writers shared with the benchmark."""
    spec = importlib.util.spec_from_file_location(
        "exporter_scrape", ROOT / "bench" / "exporter_scrape.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("exporter_scrape", module)
    spec.loader.exec_module(module)
    return module


bench = _bench()


@pytest.fixture
def client() -> Iterator[redis.Redis]:
    c = redis.Redis.from_url(REDIS_URL, decode_responses=True)
    c.flushdb()
    yield c
    c.flushdb()
    c.close()


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


_servers: dict[int, Any] = {}


@pytest.fixture(autouse=True)
def _stop_servers() -> Iterator[None]:
    yield
    servers = list(_servers.values())
    _servers.clear()
    # shutdown() waits up to a poll interval (0.5 s): stop them all at once.
    threads = [threading.Thread(target=server.shutdown) for server in servers]
    for thread in threads:
        thread.start()
    for thread, server in zip(threads, servers, strict=True):
        thread.join()
        server.server_close()


def scrape(registry: Any) -> tuple[str, Samples, dict[str, str]]:
    """GET /metrics of ``registry`` served over HTTP as the exporter serves it, and parse it
    with prometheus-client's parser."""
    server = _servers.get(id(registry))
    if server is None:
        server = _servers[id(registry)] = start_http_server(0, "127.0.0.1", registry=registry)[0]
    url = f"http://127.0.0.1:{server.server_port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    samples: Samples = {}
    types: dict[str, str] = {}
    for family in text_string_to_metric_families(text):
        types[family.name] = family.type
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return text, samples, types


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def series(samples: Samples, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    return {labels: v for (n, labels), v in samples.items() if n == name}


def small_farm(client: redis.Redis, now: float) -> None:
    """Two agents, three boards, a finished nightly sweep and a running one."""
    bench.put_agent(client, "pi-a", last_seen=now - 4, backlog=3, boards=["kws-1", "ad-1"])
    bench.put_agent(client, "pi-b", state="offline", last_seen=now - 500, boards=["ic-1"])
    bench.put_board(client, "kws-1", "pi-a", "kws01", state="busy", last_seen=now - 4)
    bench.put_board(
        client,
        "ad-1",
        "pi-a",
        "ad01",
        health="bad",
        health_reason="3 failures\nin a row: device: no reply",
        build="energy",
    )
    bench.put_board(client, "ic-1", "pi-b", "ic01", state="offline", health="unknown")
    finished = [
        {
            "board": "kws-1",
            "agent": "pi-a",
            "benchmark": "kws01",
            "mode": "performance",
            "state": "completed",
            "summary": bench.summary_for("kws01", "performance", latency_s=0.004),
        },
        {
            "board": "kws-1",
            "agent": "pi-a",
            "benchmark": "kws01",
            "mode": "accuracy",
            "state": "completed",
            "summary": bench.summary_for("kws01", "accuracy", quality=0.8),
        },
        {
            "board": "kws-1",
            "agent": "pi-a",
            "benchmark": "kws01",
            "mode": "latency",
            "state": "completed",
            "summary": bench.summary_for("kws01", "latency", latency_s=0.002),
        },
        {
            "board": "ad-1",
            "agent": "pi-a",
            "benchmark": "ad01",
            "mode": "accuracy",
            "state": "completed",
            "summary": bench.summary_for("ad01", "accuracy", quality=0.9),
        },
        {
            "board": "ad-1",
            "agent": "pi-a",
            "benchmark": "ad01",
            "mode": "energy",
            "state": "completed",
            "summary": bench.summary_for("ad01", "energy", latency_s=0.01),
        },
        {
            "board": "ic-1",
            "agent": "pi-b",
            "benchmark": "ic01",
            "mode": "performance",
            "state": "failed",
            "reason": "agent pi-b went offline during the run",
        },
        {
            "board": "ic-1",
            "agent": "pi-b",
            "benchmark": "ic01",
            "mode": "accuracy",
            "state": "cancelled",
            "reason": "cancelled",
        },
    ]
    bench.put_sweep(client, "sw-old", finished, label="nightly", created=now - 86400)
    running = [
        {"board": "kws-1", "agent": "pi-a", "benchmark": "kws01", "mode": "accuracy",
         "state": "completed", "summary": bench.summary_for("kws01", "accuracy", quality=0.95),
         "finished_at": now - 10},
        {"board": "kws-1", "agent": "pi-a", "benchmark": "kws01", "mode": "energy",
         "state": "running"},
        {"board": "ad-1", "agent": "pi-a", "benchmark": "ad01", "mode": "performance",
         "state": "queued"},
        {"board": "ad-1", "agent": "pi-a", "benchmark": "ad01", "mode": "latency",
         "state": "queued"},
    ]  # fmt: skip
    bench.put_sweep(client, "sw-new", running, label="nightly", created=now - 600)
    client.hset(
        keys.INGEST_COUNTERS,
        mapping={
            "accepted_samples": 1200,
            "accepted_sample_batch": 30,
            "duplicate_samples": 4,
            "rejected_unknown_run": 2,
            "rejected_invalid_heartbeat": 1,
            "cleared_board_status": 1,
        },
    )
    client.rpush("rq:queue:farm", "run-a", "run-b")
    client.zadd("rq:deferred:farm", {"run-c": 1.0})
    # Operators' holds: kws-1 reserved for an hour, ic-1's reservation expired a minute ago
    # (not yet ended by the reaper's tick), ad-1 quarantined by a failed scheduled check.
    reservations.reserve(client, "kws-1", "alice", 3600, "uart\ndebugging")
    client.hset(keys.board_reservation("kws-1"), "until", now + 3600)
    client.hset(
        keys.board_reservation("ic-1"),
        mapping={"board": "ic-1", "holder": "bob", "since": now - 120, "until": now - 60},
    )
    quarantine.quarantine(
        client, "ad-1", "failed a scheduled health check (2 failures in a row): no answer", "c"
    )
    client.hset(
        keys.SCHEDULED_CHECKS, mapping={"ad-1|failed": 1, "ad-1|passed": 4, "kws-1|skipped": 2}
    )


def test_a_scrape_shows_the_farm_as_redis_holds_it(client: redis.Redis) -> None:
    now = time.time()
    small_farm(client, now)
    registry, _ = make_registry(client, clock=lambda: now)
    _, s, types = scrape(registry)

    assert value(s, "farm_exporter_redis_up") == 1
    # Agents: up, heartbeat age, backlog, info.
    assert value(s, "farm_agent_up", agent="pi-a") == 1
    assert value(s, "farm_agent_up", agent="pi-b") == 0
    assert value(s, "farm_agent_heartbeat_age_seconds", agent="pi-a") == pytest.approx(4)
    assert value(s, "farm_agent_heartbeat_age_seconds", agent="pi-b") == pytest.approx(500)
    assert value(s, "farm_agent_journal_backlog_messages", agent="pi-a") == 3
    assert (
        value(s, "farm_agent_info", agent="pi-a", software="0.1.0", protocol=str(PROTOCOL_VERSION))
        == 1
    )
    # Boards: one state and one health set to 1, the others 0; the reason on one line.
    assert value(s, "farm_board_state", board="kws-1", agent="pi-a", state="busy") == 1
    assert value(s, "farm_board_state", board="kws-1", agent="pi-a", state="idle") == 0
    assert value(s, "farm_board_state", board="ic-1", agent="pi-b", state="offline") == 1
    assert sum(series(s, "farm_board_health").values()) == 3
    assert value(s, "farm_board_health", board="ad-1", agent="pi-a", state="bad") == 1
    health = series(s, "farm_board_health_reason_info")
    assert (
        ("agent", "pi-a"),
        ("board", "ad-1"),
        ("reason", "3 failures in a row: device: no reply"),
        ("state", "bad"),
    ) in health
    assert (
        value(
            s, "farm_board_firmware_info", board="ad-1", agent="pi-a", model="ad01", build="energy"
        )
        == 1
    )
    # Queues and runs: RQ's queue and deferred registry; the running sweep's live runs.
    assert value(s, "farm_queue_jobs", queue="farm") == 2
    assert value(s, "farm_queue_deferred_jobs", queue="farm") == 1
    assert value(s, "farm_queue_jobs", queue="farm-high") == 0
    assert value(s, "farm_runs", state="queued") == 2
    assert value(s, "farm_runs", state="running") == 1
    assert value(s, "farm_runs", state="dispatched") == 0
    finished = series(s, "farm_runs_finished_total")
    assert sum(finished.values()) == 8
    assert value(
        s, "farm_runs_finished_total", board="kws-1", benchmark="kws01", mode="accuracy",
        state="completed",
    ) == 2  # fmt: skip
    assert value(s, "farm_run_failures_total", board="ic-1", reason="agent_offline") == 1
    assert types["farm_runs_finished"] == "counter"
    # Sweeps: the running one of the label is shown.
    assert value(s, "farm_sweeps_submitted_total") == 2
    assert value(s, "farm_sweeps_running", label="nightly") == 1
    assert value(s, "farm_sweep_runs", label="nightly") == 4
    assert value(s, "farm_sweep_runs_done", label="nightly") == 1
    assert value(s, "farm_sweep_progress_ratio", label="nightly") == 0.25
    assert value(s, "farm_sweep_start_timestamp_seconds", label="nightly") == pytest.approx(
        now - 600
    )
    # Results: the latest completed run per board x benchmark x mode, in base units.
    kws = {"board": "kws-1", "benchmark": "kws01"}
    assert value(s, "farm_result_latency_seconds", **kws, mode="performance") == pytest.approx(
        0.004
    )
    assert value(
        s, "farm_result_throughput_inferences_per_second", **kws, mode="performance"
    ) == pytest.approx(250)
    # The newer sweep's accuracy run (95 %) replaced the older one (80 %).
    assert value(s, "farm_result_top1_accuracy_ratio", **kws, mode="accuracy") == pytest.approx(
        0.95
    )
    assert value(s, "farm_result_quality_target_ratio", **kws, mode="accuracy") == pytest.approx(
        0.90
    )
    assert value(s, "farm_result_quality_target_met", **kws, mode="accuracy") == 1
    for quantile, expected in (("0.5", 0.002), ("0.9", 0.0022), ("0.99", 0.0026)):
        assert value(
            s, "farm_result_inference_latency_seconds", **kws, mode="latency", quantile=quantile
        ) == pytest.approx(expected)
    assert value(
        s, "farm_result_early_stopping_latency_seconds", **kws, mode="latency", quantile="0.9"
    ) == pytest.approx(0.00224)
    ad = {"board": "ad-1", "benchmark": "ad01"}
    assert value(s, "farm_result_auc_ratio", **ad, mode="accuracy") == pytest.approx(0.9)
    assert value(s, "farm_result_quality_target_ratio", **ad, mode="accuracy") == 0.85
    assert value(
        s, "farm_result_energy_per_inference_joules", **ad, mode="energy"
    ) == pytest.approx(0.01 * 0.03)
    assert value(s, "farm_result_valid", **ad, mode="energy") == 1
    assert ("farm_result_top1_accuracy_ratio", ()) not in s  # nothing for ad01's top-1
    # Ingest totals from Redis.
    assert value(s, "farm_ingest_samples_total") == 1200
    assert value(s, "farm_ingest_duplicate_samples_total") == 4
    assert value(s, "farm_ingest_accepted_total", kind="sample_batch") == 30
    assert value(s, "farm_ingest_accepted_total", kind="heartbeat") == 0
    assert value(s, "farm_ingest_accepted_total", kind="trace_chunk") == 0  # no stream yet
    assert value(s, "farm_ingest_rejected_total", reason="unknown_run") == 2
    assert value(s, "farm_ingest_cleared_total", kind="board_status") == 1
    # Operators' holds: who holds a board until when, why one is quarantined, and how the
    # controller's scheduled checks ended.
    kws_ids = {"board": "kws-1", "agent": "pi-a"}
    assert value(s, "farm_board_reserved", **kws_ids) == 1
    assert value(s, "farm_board_reserved", board="ic-1", agent="pi-b") == 0  # expired
    assert value(s, "farm_board_reserved", board="ad-1", agent="pi-a") == 0
    assert series(s, "farm_board_reservation_expiry_timestamp_seconds") == {
        (("agent", "pi-a"), ("board", "kws-1")): pytest.approx(now + 3600)
    }
    assert list(series(s, "farm_board_reservation_info")) == [
        (("agent", "pi-a"), ("board", "kws-1"), ("holder", "alice"), ("note", "uart debugging"))
    ]
    assert value(s, "farm_board_quarantined", board="ad-1", agent="pi-a") == 1
    assert value(s, "farm_board_quarantined", **kws_ids) == 0
    assert list(series(s, "farm_board_quarantine_reason_info")) == [
        (
            ("agent", "pi-a"),
            ("board", "ad-1"),
            ("reason", "failed a scheduled health check (2 failures in a row): no answer"),
        )
    ]
    checks = series(s, "farm_scheduled_health_checks_total")
    assert checks == {
        (("board", "ad-1"), ("state", "failed")): 1,
        (("board", "ad-1"), ("state", "passed")): 4,
        (("board", "kws-1"), ("state", "skipped")): 2,
    }
    assert types["farm_scheduled_health_checks"] == "counter"


def test_ended_runs_are_counted_once_and_the_counts_survive_a_restart(
    client: redis.Redis,
) -> None:
    now = time.time()
    small_farm(client, now)
    registry, collector = make_registry(client, clock=lambda: now)
    _, first, _ = scrape(registry)
    _, again, _ = scrape(registry)
    assert series(first, "farm_runs_finished_total") == series(again, "farm_runs_finished_total")

    # The running sweep's runs end (the worker writes state and finished_at; the last one
    # closes the sweep): each is counted once, and the sweep is then never read again.
    run_ids = client.lrange(keys.sweep_runs("sw-new"), 0, -1)
    client.hset(keys.run(run_ids[1]), mapping={"state": "failed", "reason": "device: hang",
                                               "finished_at": now})  # fmt: skip
    _, mid, _ = scrape(registry)
    assert value(mid, "farm_run_failures_total", board="kws-1", reason="device_error") == 1
    assert value(mid, "farm_sweep_runs_done", label="nightly") == 2
    for run_id in run_ids[2:]:
        client.hset(keys.run(run_id), mapping={"state": "cancelled", "finished_at": now})
    client.hset(keys.sweep("sw-new"), "state", "finished")
    _, done, _ = scrape(registry)
    _, later, _ = scrape(registry)
    assert sum(series(done, "farm_runs_finished_total").values()) == 8 + 3
    assert series(done, "farm_runs_finished_total") == series(later, "farm_runs_finished_total")
    assert value(later, "farm_sweeps_running", label="nightly") == 0
    assert value(later, "farm_sweep_progress_ratio", label="nightly") == 1
    assert value(later, "farm_runs", state="queued") == 0
    assert collector._sweeps["sw-new"].closed and not collector._counted

    # A new exporter process rebuilds the same totals from Redis: the counters do not reset.
    fresh, _ = make_registry(client, clock=lambda: now)
    _, restarted, _ = scrape(fresh)
    for name in ("farm_runs_finished_total", "farm_run_failures_total"):
        assert series(restarted, name) == series(later, name)


def test_redis_unreachable_is_a_metric_not_an_error() -> None:
    dead = redis.Redis.from_url(
        "redis://127.0.0.1:1/0", decode_responses=True, socket_connect_timeout=1
    )
    registry, _ = make_registry(dead)
    text, s, _ = scrape(registry)
    assert value(s, "farm_exporter_redis_up") == 0
    assert "farm_agent_up" not in text


def test_an_empty_farm_still_answers_every_query_that_needs_a_zero(client: redis.Redis) -> None:
    registry, _ = make_registry(client)
    _, s, _ = scrape(registry)
    assert value(s, "farm_runs", state="queued") == 0
    assert value(s, "farm_queue_jobs", queue="farm") == 0
    assert value(s, "farm_sweeps_submitted_total") == 0
    assert value(s, "farm_ingest_rejected_total", reason="none") == 0


@pytest.mark.parametrize(
    ("reason", "category"),
    [
        ("agent pi-b went offline during the run", "agent_offline"),
        ("the agent rejected the run: this agent has no dataset kws01", "agent_rejected"),
        ("no result within 120 s (wire-model estimate 40 s)", "timeout"),
        ("device: the DUT stopped answering (after 3 attempts)", "device_error"),
        ("infrastructure: port lost", "infrastructure_error"),
        ("board kws-1 is leased by another run", "lease_busy"),
        ("board kws-1 takes no runs: reserved by alice until 2026-12-07 14:03:22", "board_held"),
        ("gave up after 3 attempts", "attempts_exhausted"),
        ("cannot score the run: seq 3 stored more than once", "scoring"),
        ("7 of 200 samples never arrived", "samples_missing"),
        ("the worker running it was lost (its lease expired)", "worker_lost"),
        ("broker mqtt://x:1883: refused", "broker_unavailable"),
        ("something new", "other"),
        (None, "unknown"),
    ],
)
def test_failure_reasons_become_a_few_categories(reason: str | None, category: str) -> None:
    assert failure_category(reason) == category


def test_ingest_serves_its_counters_and_a_latency_histogram() -> None:
    counters: Counter[str] = Counter(
        {"handled": 12, "accepted_sample_batch": 3, "accepted_samples": 7, "rejected_bad_json": 1,
         "redis_retries": 2, "dropped_qos0": 5, "weird_new_counter": 9}
    )  # fmt: skip
    metrics = IngestMetrics(counters, lambda: 4)
    records = [
        {"seq": 0, "count": 1, "latency_us": 1500.0},  # accuracy / latency: one inference
        {"seq": 1, "latency_us": 2500.0},  # count left out: 1
        {"seq": 2, "count": 50, "latency_us": 2000.0},  # a performance window: a mean
        {"seq": 3, "count": 1, "latency_us": None},  # energy build: no laps
    ]
    records = [{"index": 0, "label": 0, "results": [1.0], **r} for r in records]
    latencies = SAMPLE_BATCH.decode(SAMPLE_BATCH.encode("a", "kws-1", "r", records)).latencies_us
    assert latencies == [1500.0, 2500.0, None, None]
    assert metrics.observe_latencies("kws-1", "kws01", latencies) == 2
    assert metrics.observe_latencies(None, "kws01", latencies) == 0
    port = metrics.serve(0)
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
            text = r.read().decode()
    finally:
        metrics.close()
    s: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            s[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    hist = {"board": "kws-1", "benchmark": "kws01"}
    assert value(s, "farm_inference_latency_seconds_count", **hist) == 2
    assert value(s, "farm_inference_latency_seconds_sum", **hist) == pytest.approx(0.004)
    assert value(s, "farm_inference_latency_seconds_bucket", **hist, le="0.002") == 1
    assert value(s, "farm_inference_latency_seconds_bucket", **hist, le="0.005") == 2
    assert value(s, "farm_ingest_process_messages_total") == 12
    assert value(s, "farm_ingest_process_samples_total") == 7
    assert value(s, "farm_ingest_process_accepted_total", kind="sample_batch") == 3
    assert value(s, "farm_ingest_process_rejected_total", reason="bad_json") == 1
    assert value(s, "farm_ingest_process_redis_retries_total") == 2
    assert value(s, "farm_ingest_process_qos0_dropped_total") == 5
    assert value(s, "farm_ingest_process_other_total", reason="weird_new_counter") == 9
    assert value(s, "farm_ingest_process_queued_messages") == 4
    # Live: the next scrape sees the counter as it is then.
    counters["handled"] += 1
    assert "farm_ingest_process_messages_total 13.0" in scrape(metrics.registry)[0]


# -- naming conventions --------------------------------------------------------------------------

#: Base units only: no ms/µs/percent/µJ; a unit suffix where the value has one.
_BAD_UNITS = re.compile(r"_(milli|micro|kilo)?(ms|us|percent|uj|mj|millis|micros)(_|$)")
#: A run id (``<sweep>-r007``), a sweep id (``sw-YYYYmmdd-...``) or a bare number (a seq).
_IDS = re.compile(r"-r\d{3}$|^sw-\d{8}|^\d+$")


def check_conventions(text: str, catalogue: dict[str, Any]) -> set[str]:
    """Assert the conventions on an exposition; return the family names seen."""
    seen = set()
    for family in text_string_to_metric_families(text):
        seen.add(family.name)
        assert family.name.startswith("farm_"), family.name
        assert not _BAD_UNITS.search(family.name), family.name
        assert family.documentation, f"{family.name} has no help text"
        for sample in family.samples:
            labels = set(sample.labels)
            if family.type == "counter":
                assert sample.name.endswith(("_total", "_created")), sample.name
            if sample.name.endswith("_info"):
                assert sample.value == 1, sample
                assert labels <= LABELS | INFO_LABELS, (sample.name, labels - LABELS)
            else:
                assert labels <= LABELS, (sample.name, labels - LABELS)
            if family.type != "histogram":
                assert "le" not in labels
            for name in ("board", "agent", "label", "reason"):
                if name in sample.labels:
                    assert not _IDS.search(sample.labels[name]), sample
            spec = catalogue.get(sample.name) or catalogue.get(family.name)
            assert spec is not None, f"{sample.name} is not declared in controller.metrics"
            expected = set(spec.labels) | ({"le"} if sample.name.endswith("_bucket") else set())
            assert labels == expected, (sample.name, labels, expected)
    return seen


#: A judged night: two metrics worse, one same, one better, one run missing tonight.
NIGHT = (
    ("kws-1", "kws01", "performance", "throughput_ips", "worse", -2.913, "nothing recorded"),
    ("kws-1", "kws01", "latency", "p90_us", "worse", 3.0, "firmware image a.bin -> b.bin"),
    ("kws-1", "kws01", "accuracy", "top1", "same", 0.0, "nothing recorded"),
    ("ad-1", "ad01", "accuracy", "auc", "better", 1.25, "nothing recorded"),
    ("ic-1", "ic01", "performance", "throughput_ips", "missing", None, "nothing recorded"),
)
REPORT = "https://lab.example/reports/{}/index.html"


def judge_night(
    client: redis.Redis, sweep: str, label: str, rows: tuple[tuple[Any, ...], ...], at: float
) -> bool:
    """Store a judged sweep as the judge job does (controller.verdicts.store)."""
    record = VerdictRecord(
        sweep,
        label,
        "judged" if rows else "no baseline",
        at,
        ("sw-base",) if rows else (),
        tuple(VerdictRow(*r) for r in rows),
        report_url=REPORT.format(sweep),
    )
    return store(client, record)


def verdict_series(samples: Samples) -> dict[tuple[str, ...], float]:
    return {
        tuple(dict(labels)[k] for k in ("label", "board", "benchmark", "mode", "metric")): v
        for labels, v in series(samples, "farm_verdict").items()
    }


def test_the_latest_judged_sweep_of_each_label_is_exported(client: redis.Redis) -> None:
    now = time.time()
    small_farm(client, now)  # sw-old (a day ago) and sw-new (10 minutes ago), both nightly
    assert judge_night(client, "sw-old", "nightly", NIGHT, now - 3600)
    registry, _ = make_registry(client, clock=lambda: now)
    _, s, types = scrape(registry)

    assert verdict_series(s) == {
        ("nightly", "kws-1", "kws01", "performance", "throughput_ips"): -1,
        ("nightly", "kws-1", "kws01", "latency", "p90_us"): -1,
        ("nightly", "kws-1", "kws01", "accuracy", "top1"): 0,
        ("nightly", "ad-1", "ad01", "accuracy", "auc"): 1,
    }  # a run missing on one side has no verdict to show
    ratio = dict(board="kws-1", benchmark="kws01", mode="performance", metric="throughput_ips")
    assert value(s, "farm_verdict_change_ratio", label="nightly", **ratio) == -0.02913
    assert value(s, "farm_sweep_regressions", label="nightly") == 2
    assert value(s, "farm_sweep_verdict_timestamp_seconds", label="nightly") == now - 3600
    info = dict(sweep="sw-old", baseline="sw-base", report_url=REPORT.format("sw-old"))
    assert series(s, "farm_sweep_verdict_info") == {
        tuple(sorted({"label": "nightly", "state": "judged", **info}.items())): 1
    }
    assert types["farm_verdict"] == "gauge"

    # The next night is judged: only it is shown; a first night of another label has no
    # baseline, and no verdict rows.
    same = tuple((*r[:4], "same", 0.0, r[6]) for r in NIGHT[:3])
    assert judge_night(client, "sw-new", "nightly", same, now - 60)
    bench.put_sweep(client, "sw-canary", [], label="canary", created=now - 30)
    assert judge_night(client, "sw-canary", "canary", (), now - 20)
    _, s, _ = scrape(registry)
    assert set(verdict_series(s).values()) == {0} and len(verdict_series(s)) == 3
    assert value(s, "farm_sweep_regressions", label="nightly") == 0
    assert value(s, "farm_sweep_regressions", label="canary") == 0
    infos = {dict(labels)["sweep"]: dict(labels) for labels in series(s, "farm_sweep_verdict_info")}
    assert set(infos) == {"sw-new", "sw-canary"}
    assert infos["sw-canary"]["state"] == "no baseline" and infos["sw-canary"]["baseline"] == ""

    # An older sweep judged late does not replace the label's latest.
    assert not judge_night(client, "sw-old", "nightly", NIGHT, now)
    _, s, _ = scrape(registry)
    assert value(s, "farm_sweep_regressions", label="nightly") == 0
    # The latest sweep judged again (an RQ retry, by hand) with another outcome: the same
    # exporter serves the new record at its next scrape.
    assert judge_night(client, "sw-new", "nightly", NIGHT[:3], now - 10)
    _, s, _ = scrape(registry)
    assert value(s, "farm_sweep_regressions", label="nightly") == 2
    assert value(s, "farm_sweep_verdict_timestamp_seconds", label="nightly") == now - 10
    # A restarted exporter reads the same; a record gone with its sweep shows nothing.
    client.delete(keys.sweep_verdict("sw-canary"))
    _, s, _ = scrape(make_registry(client, clock=lambda: now)[0])
    assert len(verdict_series(s)) == 3
    assert set(series(s, "farm_sweep_regressions")) == {(("label", "nightly"),)}


def test_names_follow_the_conventions_and_every_declared_metric_is_served(
    client: redis.Redis,
) -> None:
    now = time.time()
    bench.seed_fleet(client, boards=12, history=2, now=now)
    small_farm(client, now)  # adds AUC, a failure with a known reason, a health reason
    judge_night(client, "sw-old", "nightly", NIGHT, now)
    registry, _ = make_registry(client, clock=lambda: now)
    text, _, _ = scrape(registry)
    catalogue = dict(EXPORTER)
    seen = check_conventions(text, catalogue)
    declared = {spec.name.removesuffix("_total") for spec in EXPORTER.values()}
    assert declared == seen, (declared - seen, seen - declared)
    # Prometheus asks for OpenMetrics first: that exposition must parse too (an info metric
    # named like a gauge plus _info shares its family name and breaks it).
    families = list(openmetrics_families(generate_openmetrics(registry).decode()))
    assert {f.name for f in families} >= {"farm_board_health", "farm_board_health_reason"}

    metrics = IngestMetrics(Counter({"accepted_samples": 1, "handled": 1}), lambda: 0)
    metrics.observe_latencies("b-001", "kws01", [900])
    ingest_catalogue: dict[str, Any] = dict(INGEST)
    spec = INGEST["farm_inference_latency_seconds"]
    for suffix in ("_bucket", "_count", "_sum", "_created"):
        ingest_catalogue[spec.name + suffix] = spec
    seen = check_conventions(scrape(metrics.registry)[0], ingest_catalogue)
    # prometheus-client's creation time of each histogram child, as a gauge of its own.
    seen.discard(f"{spec.name}_created")
    declared = {spec.name.removesuffix("_total") for spec in INGEST.values()}
    assert declared == seen, (declared - seen, seen - declared)


def test_the_exposition_holds_no_run_or_sweep_id(client: redis.Redis) -> None:
    """...but the latest judged sweep of each label, in farm_sweep_verdict_info."""
    small_farm(client, time.time())
    judge_night(client, "sw-old", "nightly", NIGHT, time.time())
    registry, _ = make_registry(client)
    text, _, _ = scrape(registry)
    for run_id in [*client.lrange(keys.sweep_runs("sw-old"), 0, -1), "sw-new"]:
        assert run_id not in text
    assert json.dumps("sw-new")[1:-1] not in text
    assert [line for line in text.splitlines() if "sw-old" in line] == [
        'farm_sweep_verdict_info{baseline="sw-base",label="nightly",'
        f'report_url="{REPORT.format("sw-old")}",state="judged",sweep="sw-old"}} 1.0'
    ]


def test_ingest_metrics_with_a_token_answer_401_without_it(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("s3cret-token\n")
    metrics = IngestMetrics(Counter({"handled": 1}), lambda: 0)
    port = metrics.serve(0, access=MetricsAccess(token_file=token))
    url = f"http://127.0.0.1:{port}/metrics"
    try:
        for header in (None, "Bearer wrong", "Basic czNjcmV0LXRva2Vu", "Bearer s3cret-token2"):
            request = urllib.request.Request(
                url, headers={"Authorization": header} if header else {}
            )
            with pytest.raises(urllib.error.HTTPError) as refused:
                urllib.request.urlopen(request, timeout=10)
            assert refused.value.code == 401
            assert refused.value.headers["WWW-Authenticate"].startswith("Bearer")
            assert b"farm_" not in refused.value.read()
        request = urllib.request.Request(url, headers={"Authorization": "Bearer s3cret-token"})
        with urllib.request.urlopen(request, timeout=10) as answer:
            assert "farm_ingest_process_messages_total 1.0" in answer.read().decode()
    finally:
        metrics.close()


def test_a_silent_client_neither_stalls_the_metrics_nor_holds_on_for_ever(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_Handler, "timeout", 1.0)
    metrics = IngestMetrics(Counter({"handled": 1}), lambda: 0)
    port = metrics.serve(0)
    try:
        with socket.create_connection(("127.0.0.1", port)) as silent:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
                assert "farm_ingest_process_messages_total 1.0" in answer.read().decode()
            # The server gives up on the silent one: its end of the connection closes.
            silent.settimeout(10)
            assert silent.recv(1024) == b""
    finally:
        metrics.close()


@pytest.mark.parametrize(
    ("access", "message"),
    [
        (MetricsAccess(token_file=Path("/nonexistent/token")), "cannot read the metrics token"),
        (MetricsAccess(tls_cert=Path("/nonexistent/cert")), "needs both a certificate and its key"),
        (
            MetricsAccess(tls_cert=Path("/nonexistent/c"), tls_key=Path("/nonexistent/k")),
            "cannot load the metrics TLS certificate /nonexistent/c",
        ),
    ],
)
def test_unusable_metrics_protection_files_are_named(access: MetricsAccess, message: str) -> None:
    metrics = IngestMetrics(Counter(), lambda: 0)
    with pytest.raises(ValueError, match=message):
        metrics.serve(0, access=access)
