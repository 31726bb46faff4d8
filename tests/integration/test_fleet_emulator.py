"""The emulated fleet (``bench/fleet.py``) speaks the agents' protocol: a short accuracy sweep
over 8 emulated boards on 2 emulated agents goes through the real controller (ingest and RQ
workers on a private Mosquitto) with every run completed, scored and no sample lost.

The emulator is a load-test tool; this test proves only that what it sends is what the
controller accepts from a real agent (``bench/fleet_sweep.py`` drives it at scale)."""

from __future__ import annotations

import json
from pathlib import Path

import redis

from bench.fleet_sweep import sweep
from tests.integration.controller_lab import REDIS_URL


async def test_emulated_boards_complete_an_accuracy_sweep(tmp_path: Path) -> None:
    figures = await sweep(
        tmp_path,
        REDIS_URL,
        agents=2,
        boards_per_agent=4,
        processes=8,
        mode="accuracy",
        limit=40,
        inference_s=0.01,
        within_s=40,
    )
    assert figures.states == {"completed": 8}, figures.reasons
    assert (figures.lost_runs, figures.lost_seqs, figures.extra_seqs) == (0, 0, 0)
    assert figures.retried == 0
    assert figures.samples == 8 * 40
    assert figures.peak_total_kib > 0 and figures.idle_pool_pss_per_worker_kib > 0
    # Scored from the emulated samples: each run's summary holds an accuracy.
    client = redis.Redis.from_url(REDIS_URL, decode_responses=True)
    try:
        runs = [k for k in client.scan_iter("farm:run:*") if k.count(":") == 2]
        summaries = [json.loads(client.hget(run, "summary") or "{}") for run in runs]
        assert len(summaries) == 8
        assert all(s.get("top1") is not None for s in summaries), summaries[0]
    finally:
        client.flushdb()
        client.close()
