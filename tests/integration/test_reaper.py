"""The reaper against a real Redis and RQ: jobs RQ left in its ready registry, and runs that
look lost but whose job RQ has in hand."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import timedelta

import pytest
import redis
from rq.job import JobStatus
from rq.utils import now as rq_now

from controller import keys
from controller.queueing import queue as farm_queue
from controller.reaper import Reaper, reap
from controller.sweeps import QUEUE_ORDER
from tests.integration.farm_procs import flushed_redis

#: A database of its own: the test flushes it.
REDIS_URL = "redis://127.0.0.1:6379/9"


@pytest.fixture
def rq_client() -> Iterator[redis.Redis]:
    with flushed_redis(REDIS_URL) as client:
        yield client


def test_a_job_rq_left_ready_is_enqueued_at_the_next_tick(rq_client: redis.Redis) -> None:
    queue = farm_queue(QUEUE_ORDER[1], rq_client)
    parent = queue.enqueue("builtins.len", "abc")
    child = queue.enqueue("builtins.len", "de", depends_on=parent)
    assert child.get_status() == JobStatus.DEFERRED
    # What RQ leaves behind when its WATCH saw the ready registry change while it enqueued
    # the dependents of a finished job ("changed while enqueueing; skipping for now"): the
    # job moved to the ready registry, not onto the queue.
    with rq_client.pipeline() as pipe:
        queue.ready_job_registry.register_jobs([child], pipe)
        pipe.execute()
    assert child.get_status() == JobStatus.READY_TO_ENQUEUE
    assert child.id not in queue.job_ids

    assert Reaper(REDIS_URL).tick() == []  # no run lost its worker

    assert child.get_status() == JobStatus.QUEUED
    assert child.id in queue.job_ids
    assert queue.ready_job_registry.count == 0


def active_run(client: redis.Redis, run_id: str, job_id: str) -> None:
    """A run dispatched a minute ago, active, its board's lease gone."""
    client.hset(
        keys.run(run_id),
        mapping={
            "board": "b-1",
            "state": "running",
            "dispatched_at": time.time() - 60,
            "job": job_id,
        },
    )
    client.sadd(keys.RUNS_ACTIVE, run_id)


def test_a_run_whose_job_rq_is_about_to_run_again_is_left_alone(rq_client: redis.Redis) -> None:
    """After a cold shutdown RQ re-enqueues the job itself (its Retry), and the next execution
    takes the lease a moment after it starts: reaping either would run the run twice."""
    client = redis.Redis.from_url(REDIS_URL, decode_responses=True)
    queue = farm_queue(QUEUE_ORDER[1], rq_client)
    waiting = queue.enqueue("builtins.len", "abc")
    active_run(client, "r-waiting", waiting.id)
    starting = queue.enqueue("builtins.len", "de")
    starting.set_status(JobStatus.STARTED)
    starting.started_at = rq_now()
    starting.save()
    active_run(client, "r-starting", starting.id)
    lost = queue.enqueue("builtins.len", "f")
    lost.set_status(JobStatus.STARTED)
    lost.started_at = rq_now() - timedelta(seconds=60)
    lost.save()
    active_run(client, "r-lost", lost.id)

    assert reap(client, rq_client) == ["r-lost"]

    assert client.smembers(keys.RUNS_ACTIVE) == {"r-waiting", "r-starting"}
    for run_id in ("r-waiting", "r-starting"):
        run = client.hgetall(keys.run(run_id))
        assert run["state"] == "running" and "reason" not in run
    assert "its lease expired" in client.hget(keys.run("r-lost"), "reason")
    client.close()
