"""The exporter's sww01 metrics: a completed stream's summary in Redis becomes its detection
counts, F1, duty cycle, throughput and power, in base units; no quality ratio (its target
counts errors) but whether it met it. Uses Redis database 3."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from controller.exporter import make_registry
from controller.metrics import EXPORTER
from controller.results import RunSummary
from tests.unit.test_exporter import bench, check_conventions, scrape, value

REDIS_URL = "redis://127.0.0.1:6379/3"


@pytest.fixture
def client() -> Iterator[redis.Redis]:
    c = redis.Redis.from_url(REDIS_URL, decode_responses=True)
    c.flushdb()
    yield c
    c.flushdb()
    c.close()


def test_sww_stream_metrics(client: redis.Redis) -> None:
    summary = RunSummary(
        throughput_ips=55.71,
        latency_ms=1000 / 55.71,
        true_positives=47,
        false_negatives=3,
        false_positives=2,
        f1=94 / 99,
        duty_cycle=0.56094,
        power_mw=20.0,
        target=8,
        target_met=True,
        samples=1,
        valid=True,
    )
    run = {
        "board": "sww-1",
        "agent": "pi-a",
        "benchmark": "sww01",
        "mode": "energy",
        "state": "completed",
        "summary": json.dumps(summary.to_json()),
        "finished_at": time.time(),
    }
    bench.put_sweep(client, "sw-1", [run])
    registry, _ = make_registry(client)
    text, s, _ = scrape(registry)
    labels = {"board": "sww-1", "benchmark": "sww01", "mode": "energy"}
    for outcome, count in (("true_positives", 47), ("false_negatives", 3), ("false_positives", 2)):
        assert value(s, f"farm_result_{outcome}", **labels) == count
    assert value(s, "farm_result_f1_ratio", **labels) == pytest.approx(94 / 99)
    assert value(s, "farm_result_duty_cycle_ratio", **labels) == 0.56094
    assert value(s, "farm_result_power_watts", **labels) == pytest.approx(0.02)
    assert value(s, "farm_result_throughput_inferences_per_second", **labels) == 55.71
    assert value(s, "farm_result_latency_seconds", **labels) == pytest.approx(1 / 55.71)
    assert value(s, "farm_result_quality_target_met", **labels) == 1
    assert value(s, "farm_result_valid", **labels) == 1
    check_conventions(text, dict(EXPORTER))
    families = {f.name for f in text_string_to_metric_families(text)}
    assert "farm_result_quality_target_ratio" in families
    assert ("farm_result_quality_target_ratio", tuple(sorted(labels.items()))) not in s
