"""The reaper's recovery of jobs RQ left in its ready registry, against a real Redis and RQ."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis
from rq import Queue
from rq.job import JobStatus

from controller.reaper import Reaper
from controller.sweeps import QUEUE_ORDER

#: A database of its own: the test flushes it.
REDIS_URL = "redis://127.0.0.1:6379/9"


@pytest.fixture
def rq_client() -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(REDIS_URL)
    client.flushdb()
    yield client
    client.flushdb()
    client.close()


def test_a_job_rq_left_ready_is_enqueued_at_the_next_tick(rq_client: redis.Redis) -> None:
    queue = Queue(QUEUE_ORDER[1], connection=rq_client)
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
