"""The emulated fleet (``bench/fleet.py``) speaks the agents' protocol: a short accuracy sweep
over 8 emulated boards on 2 emulated agents goes through the real controller (ingest and RQ
workers on a private Mosquitto) with every run completed, scored and no sample lost, though
the controller has 2 workers for the 8 running boards (a running board holds none).

The emulator is a load-test tool; the default test proves only that what it sends is what the
controller accepts from a real agent (``bench/fleet_sweep.py`` drives it at scale). The
``slow`` one carries 1,000 emulated boards through one controller:
``python -m pytest -m slow tests/integration/test_fleet_emulator.py`` (66 s measured)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import redis

from bench.fleet_sweep import sweep
from tests.integration.controller_lab import REDIS_URL


async def test_emulated_boards_complete_an_accuracy_sweep(tmp_path: Path) -> None:
    figures = await sweep(
        tmp_path,
        REDIS_URL,
        agents=2,
        boards_per_agent=4,
        processes=2,
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


#: What the issue asks of one controller at 1,000 running boards.
GIB_KIB = 1024 * 1024


@pytest.mark.slow
async def test_a_thousand_emulated_boards_through_one_controller(tmp_path: Path) -> None:
    """1,000 boards on 125 emulated agents, one accuracy run each, through one ingest and one
    supervisor with 4 workers: every run completed in one attempt, every sample stored once,
    and the controller's processes under 1 GiB PSS at their peak. The emulated rate (2 samples
    a second a board, in 2 s batches) is what one emulator process can send on 2 cores."""
    figures = await sweep(
        tmp_path,
        REDIS_URL,
        agents=125,
        boards_per_agent=8,
        processes=4,
        mode="accuracy",
        limit=40,
        inference_s=0.5,
        batch_delay_s=2.0,
        within_s=900,
    )
    try:
        assert figures.states == {"completed": 1000}, figures.reasons[:5]
        assert (figures.lost_runs, figures.lost_seqs, figures.extra_seqs) == (0, 0, 0)
        assert figures.retried == 0
        assert figures.samples == 1000 * 40
        assert 0 < figures.peak_total_kib <= GIB_KIB, figures.peak_pss_kib
    finally:
        client = redis.Redis.from_url(REDIS_URL)
        client.flushdb()
        client.close()
