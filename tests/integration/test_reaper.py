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

from controller import board_queue, keys
from controller.queueing import queue as farm_queue
from controller.reaper import Reaper, reap, stalled_turns
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


def test_a_board_runs_one_run_at_a_time_in_order_and_passes_its_turn_once(
    rq_client: redis.Redis,
) -> None:
    client = redis.Redis.from_url(REDIS_URL, decode_responses=True)
    with client.pipeline() as pipe:
        board_queue.wait(pipe, "b-1", ["r1", "r2"])
        board_queue.wait(pipe, "b-1", ["r3"])  # a later sweep's run waits behind
        pipe.execute()
    assert board_queue.advance(client, "b-1") == "r1"
    assert board_queue.advance(client, "b-1") is None  # r1 has the board
    assert board_queue.advance(client, "b-1", "r2") is None  # not r2's turn to end
    assert board_queue.advance(client, "b-1", "r1") == "r2"
    assert board_queue.advance(client, "b-1", "r1") is None  # ending twice passes nothing
    assert board_queue.advance(client, "b-1", "r2") == "r3"
    assert board_queue.advance(client, "b-1", "r3") is None
    assert not client.exists(keys.board_current("b-1"), keys.board_waiting("b-1"))
    client.close()


def test_a_followed_run_is_not_the_reapers(rq_client: redis.Redis) -> None:
    """A run whose board runs it holds no job: its lease is the follower's to renew, and a
    lapsed one is not a lost worker."""
    client = redis.Redis.from_url(REDIS_URL, decode_responses=True)
    queue = farm_queue(QUEUE_ORDER[1], rq_client)
    dispatched = queue.enqueue("builtins.len", "abc")
    dispatched.set_status(JobStatus.FINISHED)
    active_run(client, "r-followed", dispatched.id)
    client.hset(keys.run("r-followed"), "phase", "following")

    assert reap(client, rq_client) == []
    assert client.hget(keys.run("r-followed"), "state") == "running"
    client.close()


def test_turns_a_dead_process_left_hanging_are_passed_on(rq_client: redis.Redis) -> None:
    """An ended run that still has its board's turn passes it on; a queued run whose dispatch
    job is gone gets one; one whose dispatch job failed for good fails, and passes it on."""
    client = redis.Redis.from_url(REDIS_URL, decode_responses=True)
    queue = farm_queue(QUEUE_ORDER[1], rq_client)
    runs = {"ended": "completed", "next": "queued", "jobless": "queued", "crashed": "queued"}
    for run_id, state in runs.items():
        client.hset(keys.run(run_id), mapping={"state": state, "board": f"b-{run_id}"})
    client.hset(keys.run("next"), "board", "b-ended")
    with client.pipeline() as pipe:
        board_queue.wait(pipe, "b-ended", ["ended", "next"])
        board_queue.wait(pipe, "b-jobless", ["jobless"])
        board_queue.wait(pipe, "b-crashed", ["crashed"])
        pipe.execute()
    for board in ("b-ended", "b-jobless", "b-crashed"):
        board_queue.advance(client, board)
    crashed = queue.enqueue("builtins.len", "abc", job_id="run-crashed")
    crashed.set_status(JobStatus.FAILED)
    client.hset(keys.run("crashed"), "job", crashed.id)

    found = stalled_turns(client, rq_client, ["b-ended", "b-jobless", "b-crashed"])

    assert sorted(found) == [
        ("b-crashed", "crashed"),
        ("b-ended", "ended"),
        ("b-jobless", "jobless"),
    ]
    # The ended run's board went to the next run, whose dispatch job is queued.
    assert client.get(keys.board_current("b-ended")) == "next"
    assert "run-next" in queue.job_ids and "run-jobless" in queue.job_ids
    assert client.get(keys.board_current("b-jobless")) == "jobless"  # still its turn, now queued
    assert client.hget(keys.run("crashed"), "state") == "failed"
    assert "dispatch job failed" in client.hget(keys.run("crashed"), "reason")
    assert client.get(keys.board_current("b-crashed")) is None
    # Nothing left hanging: a second pass finds nothing.
    assert stalled_turns(client, rq_client, ["b-ended", "b-jobless", "b-crashed"]) == []
    client.close()


def test_a_shard_the_reaper_fails_ends_its_sharded_run_and_the_other_shards(
    rq_client: redis.Redis,
) -> None:
    """A shard whose dispatch job failed for good is failed by the reaper, not by a job's
    finish: its sharded run still ends failed (naming it) and the other shard is cancelled."""
    client = redis.Redis.from_url(REDIS_URL, decode_responses=True)
    queue = farm_queue(QUEUE_ORDER[1], rq_client)
    client.hset(
        keys.run("p"),
        mapping={"id": "p", "state": "running", "board": "b-0", "shards": '["p-s0", "p-s1"]'},
    )
    for k in (0, 1):
        client.hset(
            keys.run(f"p-s{k}"),
            mapping={"id": f"p-s{k}", "state": "queued", "board": f"b-{k}", "shard_of": "p"},
        )
        with client.pipeline() as pipe:
            board_queue.wait(pipe, f"b-{k}", [f"p-s{k}"])
            pipe.execute()
        board_queue.advance(client, f"b-{k}")
    crashed = queue.enqueue("builtins.len", "abc", job_id="run-p-s0")
    crashed.set_status(JobStatus.FAILED)
    client.hset(keys.run("p-s0"), "job", crashed.id)

    assert stalled_turns(client, rq_client, ["b-0"]) == [("b-0", "p-s0")]

    parent = client.hgetall(keys.run("p"))
    assert parent["state"] == "failed", parent
    assert parent["reason"].startswith("shard p-s0 on b-0 failed: its dispatch job failed")
    assert client.hget(keys.run("p-s1"), "cancel") == "1"
    client.close()
