"""How long a scrape of ``farm controller exporter`` takes with a big farm's state in Redis.

    python bench/exporter_scrape.py [--boards 200] [--history 7] [--repeat 20]
                                    [--redis redis://127.0.0.1:6379/10]

Writes (after FLUSHDB of that database) the state of ``--boards`` boards, as ingest and the
workers would leave it (controller.keys layout, values built with the real schemas: agent and
board statuses, heartbeats, run summaries): one agent per four boards (two offline, three
boards with health bad), ``--history`` finished nightly sweeps of every board × its benchmark
× the four modes (800 runs each for 200 boards, all completed with a summary), and one
running sweep of the same shape, a third of its runs ended, the rest queued, dispatched or
running; plus the ingest counters.

Then it serves the exporter over HTTP as ``farm controller exporter`` does (its app, with
``controller.metrics_http.serve``, on a free loopback port, the objects alive at start left
out of the garbage collector's full collections) and times whole HTTP scrapes
(plain GETs: the text format, uncompressed):

* **cold**: the first scrape of a new collector (it reads every sweep's runs once);
* **warm**: the next ``--repeat`` scrapes (median; only the running sweep's unfinished runs
  and the agents, boards and queues are read again, and only their families rendered again).

References measured in the same run, so the ratios travel between machines:

* **empty**: an HTTP scrape of an empty registry (the HTTP + exposition floor);
* **ping**: one Redis ``PING`` round trip, × the number of keys the warm scrape reads.

The helpers (``put_agent``, ``put_board``, ``put_sweep``, ``seed_fleet``) are also what the
exporter's unit tests write their state with.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
import urllib.request
from collections.abc import Sequence
from typing import Any

import redis
from prometheus_client import CollectorRegistry, start_http_server

from controller import keys
from controller.exporter import freeze_startup_objects, make_registry
from controller.exposition import make_app
from controller.metrics_http import MetricsAccess, serve
from controller.results import RunSummary
from farm.messages import AgentStatus, BoardStatus, Heartbeat

MODELS = ("kws01", "vww01", "ic01", "ad01")
MODES = ("performance", "accuracy", "energy", "latency")


def put_agent(
    client: redis.Redis,
    agent: str,
    *,
    state: str = "online",
    last_seen: float | None = None,
    backlog: int = 0,
    boards: Sequence[str] = (),
) -> None:
    """An agent as ingest stores it (status, heartbeat, last seen)."""
    now = time.time() if last_seen is None else last_seen
    status = AgentStatus(agent=agent, state=state, software="0.1.0", boards=list(boards), time=now)  # type: ignore[arg-type]
    beat = Heartbeat(agent=agent, uptime_s=3600.0, backlog=backlog, time=now)
    client.hset(
        keys.agent(agent),
        mapping={
            "state": state,
            "protocol": status.protocol,
            "software": status.software or "",
            "status": status.model_dump_json(),
            "heartbeat": beat.model_dump_json(),
            "last_seen": now,
        },
    )
    client.sadd(keys.AGENTS, agent)


def put_board(
    client: redis.Redis,
    board: str,
    agent: str,
    model: str,
    *,
    state: str = "idle",
    health: str = "good",
    health_reason: str | None = None,
    build: str = "performance",
    last_seen: float | None = None,
) -> None:
    """A board's retained status as ingest stores it."""
    now = time.time() if last_seen is None else last_seen
    status = BoardStatus(
        agent=agent,
        board=board,
        state=state,  # type: ignore[arg-type]
        health=health,  # type: ignore[arg-type]
        health_reason=health_reason,
        model=model,
        build=build,
        images={m: ["performance", "energy"] for m in MODELS},
        system={
            "board_name": "NUCLEO-L4R5ZI",
            "processor_name": "STM32L4R5ZIT6U",
            "accelerator": "none",
            "inference_framework": "TFLite Micro",
        },
        time=now,
    )
    client.hset(
        keys.board(board),
        mapping={"agent": agent, "status": status.model_dump_json(), "last_seen": now},
    )
    client.sadd(keys.BOARDS, board)


def summary_for(benchmark: str, mode: str, *, quality: float = 0.9, latency_s: float = 0.01) -> str:
    """A completed run's summary (``RunSummary.to_json``) with plausible numbers."""
    values: dict[str, Any] = {"samples": 5, "valid": True, "artifacts": "/results/x"}
    if mode == "performance":
        values.update(throughput_ips=1 / latency_s, latency_ms=latency_s * 1e3)
    elif mode == "accuracy":
        values["samples"] = 200
        if benchmark == "ad01":
            values.update(auc=quality, target=0.85, target_met=quality >= 0.85)
        else:
            target = {"kws01": 90.0, "vww01": 80.0, "ic01": 85.0}[benchmark]
            values.update(top1=quality * 100, target=target, target_met=quality * 100 >= target)
    elif mode == "energy":
        values.update(energy_uj=latency_s * 0.03 * 1e6)
    else:
        values.update(
            samples=1024,
            p50_us=int(latency_s * 1e6),
            p90_us=int(latency_s * 1.1e6),
            p99_us=int(latency_s * 1.3e6),
            p90_early_stop_us=int(latency_s * 1.12e6),
        )
    return json.dumps(RunSummary(**values).to_json())


def put_sweep(
    client: redis.Redis,
    sweep_id: str,
    runs: Sequence[dict[str, Any]],
    *,
    label: str = "nightly",
    created: float | None = None,
    state: str | None = None,
) -> list[str]:
    """A sweep and its runs (each a dict of run fields: board, agent, benchmark, mode, state
    and optionally reason, summary, finished_at). ``state`` defaults to finished when every
    run ended, else running. Returns the run ids."""
    created = time.time() if created is None else created
    run_ids = [f"{sweep_id}-r{i:03d}" for i in range(len(runs))]
    ended = all(r["state"] in keys.TERMINAL for r in runs)
    pipe = client.pipeline(transaction=False)
    pipe.hset(
        keys.sweep(sweep_id),
        mapping={
            "id": sweep_id,
            "spec": "{}",
            "label": label,
            "created": created,
            "total": len(runs),
            "state": state or ("finished" if ended else "running"),
        },
    )
    pipe.zadd(keys.SWEEPS, {sweep_id: created})
    if run_ids:
        pipe.rpush(keys.sweep_runs(sweep_id), *run_ids)
    for run_id, run in zip(run_ids, runs, strict=True):
        fields = {
            "id": run_id,
            "sweep": sweep_id,
            "label": label,
            "created": created,
            "attempts": 1,
            "reasons": "[]",
            **run,
        }
        if run["state"] in keys.TERMINAL:
            fields.setdefault("finished_at", created + 60)
        pipe.hset(keys.run(run_id), mapping={k: str(v) for k, v in fields.items()})
    pipe.execute()
    return run_ids


def seed_fleet(
    client: redis.Redis, *, boards: int = 200, history: int = 7, now: float | None = None
) -> dict[str, int]:
    """The state described in the module docstring; returns what was written."""
    now = time.time() if now is None else now
    board_ids = [f"b-{i:03d}" for i in range(boards)]
    agents = [f"pi-{i:03d}" for i in range((boards + 3) // 4)]
    for i, agent in enumerate(agents):
        put_agent(
            client,
            agent,
            state="offline" if i in (3, 7) else "online",
            last_seen=now - (600 if i in (3, 7) else 5),
            boards=board_ids[4 * i : 4 * i + 4],
        )
    for i, board in enumerate(board_ids):
        bad = i in (10, 20, 30)
        put_board(
            client,
            board,
            agents[i // 4],
            MODELS[i % 4],
            state="busy" if i % 3 == 0 else "idle",
            health="bad" if bad else "good",
            health_reason="3 failures in a row: device: no reply" if bad else None,
            last_seen=now - 30,
        )

    def runs(finished: bool, day: int) -> list[dict[str, Any]]:
        found = []
        for i, board in enumerate(board_ids):
            model = MODELS[i % 4]
            for j, mode in enumerate(MODES):
                k = len(found)
                if finished or k % 3 == 0:
                    state = "completed" if (i + j + day) % 50 else "failed"
                else:
                    state = ("queued", "dispatched", "running")[k % 3]
                run: dict[str, Any] = {
                    "board": board,
                    "agent": agents[i // 4],
                    "benchmark": model,
                    "mode": mode,
                    "state": state,
                }
                if state == "completed":
                    run["summary"] = summary_for(
                        model, mode, quality=0.8 + (i % 20) / 100, latency_s=0.005 + i * 1e-5
                    )
                elif state == "failed":
                    run["reason"] = f"device: board {board} stopped answering"
                found.append(run)
        return found

    total = 0
    for day in range(history, 0, -1):
        total += len(put_sweep(client, f"sw-day{day}", runs(True, day), created=now - day * 86400))
    total += len(put_sweep(client, "sw-now", runs(False, 0), created=now - 3600))
    client.hset(
        keys.INGEST_COUNTERS,
        mapping={
            "accepted_sample_batch": 120_000,
            "accepted_samples": 2_400_000,
            "accepted_heartbeat": 50_000,
            "accepted_board_status": 9_000,
            "accepted_run_event": 40_000,
            "duplicate_samples": 300,
            "rejected_unknown_run": 12,
            "rejected_invalid_sample_batch": 2,
        },
    )
    return {"agents": len(agents), "boards": boards, "runs": total, "sweeps": history + 1}


# -- the benchmark -------------------------------------------------------------------------------


def _get(url: str) -> tuple[float, bytes]:
    started = time.perf_counter()
    with urllib.request.urlopen(url, timeout=30) as response:
        body = response.read()
    return time.perf_counter() - started, body


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--boards", type=int, default=200)
    parser.add_argument("--history", type=int, default=7, help="finished nightly sweeps")
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/10", help="FLUSHED first")
    args = parser.parse_args(argv)

    client = redis.Redis.from_url(args.redis, decode_responses=True)
    client.flushdb()
    written = seed_fleet(client, boards=args.boards, history=args.history)

    empty = CollectorRegistry(auto_describe=False)
    empty_server, _ = start_http_server(0, "127.0.0.1", registry=empty)
    registry, collector = make_registry(client)
    freeze_startup_objects()  # as farm controller exporter does before serving
    server, _ = serve(
        registry, 0, "127.0.0.1", MetricsAccess(), app=make_app(registry, collector.families)
    )
    url = f"http://127.0.0.1:{server.server_port}/metrics"
    empty_url = f"http://127.0.0.1:{empty_server.server_port}/metrics"
    try:
        for _ in range(3):
            _get(empty_url)
        cold, body = _get(url)
        cold_redis = collector.last_duration_s
        warm, warm_redis = [], []
        empties = []
        for _ in range(args.repeat):
            empties.append(_get(empty_url)[0])
            warm.append(_get(url)[0])
            warm_redis.append(collector.last_duration_s)
        pings = []
        for _ in range(200):
            started = time.perf_counter()
            client.ping()
            pings.append(time.perf_counter() - started)
    finally:
        server.shutdown()
        empty_server.shutdown()
    # Keys a warm scrape reads: the indexes (4), 3 per queue, each agent and board hash, each
    # open sweep's state and its unfinished runs.
    unfinished = sum(
        1
        for run_id in client.lrange(keys.sweep_runs("sw-now"), 0, -1)
        if client.hget(keys.run(run_id), "state") not in keys.TERMINAL
    )
    keys_read = 4 + 3 * 3 + written["agents"] + written["boards"] + 1 + unfinished
    ping = statistics.median(pings)
    empty_s = statistics.median(empties)
    warm_s = statistics.median(warm)
    series = sum(1 for line in body.decode().splitlines() if line and not line.startswith("#"))
    print(
        f"state: {written['boards']} boards, {written['agents']} agents, {written['sweeps']} "
        f"sweeps, {written['runs']} runs ({unfinished} unfinished); "
        f"exposition {len(body) / 1024:.0f} KiB, {series} series"
    )
    print(
        f"machine: {os.cpu_count()} CPU, {platform.processor() or platform.machine()}, "
        f"Python {platform.python_version()}, load {os.getloadavg()[0]:.2f}"
    )
    print(f"reference empty scrape (median of {args.repeat}): {empty_s * 1e3:.2f} ms")
    print(
        f"reference Redis PING round trip (median of 200): {ping * 1e6:.0f} µs "
        f"x {keys_read} keys read = {ping * keys_read * 1e3:.2f} ms"
    )
    print(
        f"cold scrape: {cold * 1e3:.1f} ms (Redis reads {cold_redis * 1e3:.1f} ms) = "
        f"{cold / empty_s:.0f} x empty, {cold / (ping * keys_read):.1f} x ping*keys"
    )
    print(
        f"warm scrape (median of {args.repeat}): {warm_s * 1e3:.1f} ms "
        f"(Redis reads {statistics.median(warm_redis) * 1e3:.1f} ms, max {max(warm) * 1e3:.1f}) "
        f"= {warm_s / empty_s:.0f} x empty, {warm_s / (ping * keys_read):.1f} x ping*keys"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
