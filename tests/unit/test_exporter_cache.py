"""The exporter's own ``/metrics`` answer (controller.exposition: families kept while nothing
changes them, rendered without prometheus-client's encoders) against a real Redis (the
database of tests/unit/test_exporter.py, flushed per test): the same bytes as
prometheus-client's, and never a kept family once what it shows has changed."""

from __future__ import annotations

import gzip
import time
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
from prometheus_client import generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics
from prometheus_client.parser import text_string_to_metric_families

from controller import keys, quarantine
from controller.exporter import make_registry
from controller.exposition import make_app
from controller.metrics_http import MetricsAccess, serve
from tests.unit.test_exporter import NIGHT, bench, judge_night, small_farm
from tests.unit.test_exporter import client as client  # the fixture: that test's database

#: What Prometheus asks for (its default scrape protocols).
PROMETHEUS_ACCEPT = (
    "application/openmetrics-text;version=1.0.0;escaping=underscores;q=0.5,"
    "application/openmetrics-text;version=0.0.1;q=0.4,text/plain;version=0.0.4;q=0.3,*/*;q=0.2"
)

Series = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@pytest.fixture
def exporter(client: redis.Redis) -> Iterator[Callable[..., Any]]:
    """Serves the exporter as ``farm controller exporter`` does; yields a function making one
    (clock, then (registry, GET))."""
    servers = []

    def start(clock: Callable[[], float]) -> tuple[Any, Callable[..., bytes]]:
        registry, collector = make_registry(client, clock=clock)
        app = make_app(registry, collector.families)
        server, _ = serve(registry, 0, "127.0.0.1", MetricsAccess(), app=app)
        servers.append(server)

        def get(headers: dict[str, str] | None = None) -> bytes:
            url = f"http://127.0.0.1:{server.server_port}/metrics"
            request = urllib.request.Request(url, headers=headers or {})
            with urllib.request.urlopen(request, timeout=10) as response:
                body: bytes = response.read()
            return body

        return registry, get

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def without_duration(text: bytes) -> bytes:
    """The exposition bar the scrape's own duration (one scrape's differs from the next's)."""
    return b"".join(
        line
        for line in text.splitlines(keepends=True)
        if not line.startswith(b"farm_exporter_scrape_duration_seconds ")
    )


def at(name: str, **labels: str) -> tuple[str, tuple[tuple[str, str], ...]]:
    """A series' key in :func:`parsed`."""
    return name, tuple(sorted(labels.items()))


def parsed(text: bytes) -> Series:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text.decode())
        for s in family.samples
    }


def test_the_answer_is_prometheus_clients_byte_for_byte(
    client: redis.Redis, exporter: Callable[..., Any]
) -> None:
    now = time.time()
    small_farm(client, now)  # quarantine and reservation reasons with newlines, results...
    assert judge_night(client, "sw-old", "nightly", NIGHT, now - 3600)
    registry, get = exporter(lambda: now)
    for _ in range(2):  # the first scrape builds every family, the second serves kept ones
        plain = get()
        assert without_duration(plain) == without_duration(generate_latest(registry))
        openmetrics = get({"Accept": PROMETHEUS_ACCEPT, "Accept-Encoding": "gzip"})
        assert without_duration(gzip.decompress(openmetrics)) == without_duration(
            generate_openmetrics(registry)
        )
    assert b'reason="failed a scheduled health check' in plain
    assert b"farm_result_throughput_inferences_per_second{" in plain


def test_what_changed_in_redis_shows_at_the_next_scrape(
    client: redis.Redis, exporter: Callable[..., Any]
) -> None:
    now = [time.time()]
    small_farm(client, now[0])
    assert judge_night(client, "sw-old", "nightly", NIGHT, now[0] - 3600)
    _, get = exporter(lambda: now[0])
    get()
    before = parsed(get())  # every family kept now
    kws = {"board": "kws-1", "benchmark": "kws01", "mode": "energy"}
    energy = at("farm_result_energy_per_inference_joules", **kws)
    finished = at("farm_runs_finished_total", **kws, state="completed")
    assert before[at("farm_runs", state="running")] == 1
    assert before[at("farm_runs", state="queued")] == 2
    assert energy not in before and finished not in before
    assert before[at("farm_board_reserved", board="kws-1", agent="pi-a")] == 1
    assert before[at("farm_board_state", board="ic-1", agent="pi-b", state="offline")] == 1
    assert [name for name, _ in before if name == "farm_verdict"]

    # The running run ends with a summary; a queued one is deleted; a board goes idle and
    # another is quarantined; kws-1's reservation runs out; the sweep is judged again.
    run_ids = client.lrange(keys.sweep_runs("sw-new"), 0, -1)
    client.hset(
        keys.run(run_ids[1]),
        mapping={
            "state": "completed",
            "finished_at": now[0],
            "summary": bench.summary_for("kws01", "energy", latency_s=0.02),
        },
    )
    client.delete(keys.run(run_ids[2]))
    bench.put_board(client, "ic-1", "pi-b", "ic01", state="idle", health="good")
    quarantine.quarantine(client, "kws-1", 'a "stuck" relay', "alice")
    now[0] += 7200
    assert judge_night(client, "sw-new", "nightly", (), now[0])
    after = parsed(get())

    assert after[finished] == 1
    assert after[energy] == pytest.approx(0.02 * 0.03)
    assert after[at("farm_runs", state="running")] == 0
    assert after[at("farm_runs", state="queued")] == 1
    assert after[at("farm_board_state", board="ic-1", agent="pi-b", state="idle")] == 1
    assert after[at("farm_board_state", board="ic-1", agent="pi-b", state="offline")] == 0
    assert after[at("farm_board_quarantined", board="kws-1", agent="pi-a")] == 1
    reason = 'a "stuck" relay'
    assert (
        at("farm_board_quarantine_reason_info", board="kws-1", agent="pi-a", reason=reason) in after
    )
    assert after[at("farm_board_reserved", board="kws-1", agent="pi-a")] == 0
    assert not [name for name, _ in after if name == "farm_board_reservation_info"]
    assert not [name for name, _ in after if name == "farm_verdict"]  # judged: no baseline
