"""The follower against a real Redis and RQ: one leads, the others wait; what it makes of a
followed run's final events and of its agent going away (no broker needed for these: it
publishes nothing here)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from controller import board_queue, keys
from controller.deadline import SLACK
from controller.estimate import estimate_run_s
from controller.follower import LEADER_TTL_S, Follower
from controller.jobs import AGENT_GRACE_S, RunJob
from controller.queueing import queue as farm_queue
from controller.settings import Settings
from controller.store import Lease
from controller.sweeps import QUEUES
from farm.catalog import get_benchmark
from farm.messages import RunOptions
from tests.integration.farm_procs import flushed_redis

#: A database of its own: the test flushes it.
REDIS_URL = "redis://127.0.0.1:6379/2"


@pytest.fixture
def rq_client() -> Iterator[redis.Redis]:
    with flushed_redis(REDIS_URL) as client:
        yield client


@pytest.fixture
def db(rq_client: redis.Redis) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(REDIS_URL, decode_responses=True)
    yield client
    client.close()


def follower(tmp_path: Path) -> Follower:
    return Follower(REDIS_URL, Settings(REDIS_URL, "mqtt://127.0.0.1:1", tmp_path / "results"))


def followed_run(db: redis.Redis, run_id: str, board: str, *, final: dict | None = None) -> None:
    """A run dispatched as attempt 1 and handed to the follower, its board leased by it."""
    lease = Lease.acquire(db, board)
    assert lease is not None
    now = time.time()
    follow = {
        "attempt": 1,
        "command": f"{run_id}-a1",
        "estimate": 60.0,
        "dispatched": now,
        "kept": [],
        "deadline": {"at": now + 120, "sample_s": 1.0, "expected": 10, "stored": 0},
    }
    db.hset(
        keys.run(run_id),
        mapping={
            "id": run_id,
            "board": board,
            "agent": "pi-a",
            "benchmark": "kws01",
            "mode": "accuracy",
            "queue": QUEUES["normal"],
            "state": "running",
            "attempts": 1,
            "reasons": "[]",
            "phase": "following",
            "lease": lease.token,
            "follow": json.dumps(follow),
            **({"final": json.dumps(final)} if final else {}),
        },
    )
    db.sadd(keys.RUNS_ACTIVE, run_id)
    db.hset(keys.agent("pi-a"), "state", "online")


def test_one_follower_leads_and_another_takes_over_when_it_stops(
    db: redis.Redis, tmp_path: Path
) -> None:
    first, second = follower(tmp_path), follower(tmp_path)
    first.tick()
    second.tick()
    assert db.get(keys.FOLLOWER) == first.token
    second.tick()
    assert db.get(keys.FOLLOWER) == first.token  # renewed by its leader only
    time.sleep(LEADER_TTL_S + 0.2)  # the first one stopped ticking
    second.tick()
    first.tick()
    assert db.get(keys.FOLLOWER) == second.token


def test_the_attempts_done_queues_the_score_job_and_an_earlier_ones_is_ignored(
    db: redis.Redis, rq_client: redis.Redis, tmp_path: Path
) -> None:
    done = {"event": "done", "attempt": 1, "count": 10, "digest": "x", "info": {}}
    followed_run(db, "r-done", "b-1", final=done)
    earlier = {**done, "attempt": 0}
    followed_run(db, "r-late", "b-2", final=earlier)

    follower(tmp_path).follow_all(time.time())

    assert db.hget(keys.run("r-done"), "phase") == "scoring"
    assert db.hget(keys.run("r-done"), "job") == "score-r-done"
    assert "score-r-done" in farm_queue(QUEUES["normal"], rq_client).job_ids
    # Not this attempt's, and the agent did not say the board still ran the earlier one.
    late = db.hgetall(keys.run("r-late"))
    assert (late["phase"], late["state"], late["attempts"]) == ("following", "running", "1")


def test_a_run_whose_agent_stays_away_fails_and_the_board_goes_to_the_next_run(
    db: redis.Redis, rq_client: redis.Redis, tmp_path: Path
) -> None:
    with db.pipeline() as pipe:
        board_queue.wait(pipe, "b-1", ["r-lost", "r-next"])
        pipe.execute()
    assert board_queue.advance(db, "b-1") == "r-lost"
    followed_run(db, "r-lost", "b-1")
    db.hset(keys.run("r-next"), mapping={"board": "b-1", "state": "queued", "queue": "farm"})
    db.hset(keys.agent("pi-a"), "state", "offline")
    watching = follower(tmp_path)
    now = time.time()

    watching.follow_all(now)
    assert db.hget(keys.run("r-lost"), "state") == "running"  # within its grace
    watching.follow_all(now + AGENT_GRACE_S + 1)

    lost = db.hgetall(keys.run("r-lost"))
    assert lost["state"] == "failed" and "went offline" in lost["reason"], lost
    assert "phase" not in lost and not db.sismember(keys.RUNS_ACTIVE, "r-lost")
    assert db.get(keys.lease("b-1")) is None  # given back
    assert db.get(keys.board_current("b-1")) == "r-next"
    assert "run-r-next" in farm_queue(QUEUES["normal"], rq_client).job_ids


def test_a_dispatch_the_broker_refuses_counts_once_and_fails_after_the_runs_deadline(
    db: redis.Redis, tmp_path: Path
) -> None:
    """The broker (here a port nothing listens on) refuses the run's command: the follower
    sends the same command again, the attempt counting once however often, and once the
    broker has refused it for longer than the run's own deadline would last, the run fails
    saying so."""
    followed_run(db, "r-refused", "b-1")
    db.hset(keys.run("r-refused"), mapping={"attempts": 0, "state": "queued", "options": "{}"})
    watching = follower(tmp_path)

    # Dispatched as far as the controller goes: what the agent sends for it is taken.
    assert RunJob(db, watching.settings, "r-refused").dispatch() == "dispatched"
    run = db.hgetall(keys.run("r-refused"))
    follow = json.loads(run["follow"])
    assert (run["attempts"], run["state"], follow["attempt"]) == ("1", "dispatched", 1)
    assert run["command"] == follow["command"] == "r-refused-a1"
    assert "broker mqtt://127.0.0.1:1" in run["reason"], run
    first_refusal = follow["refused_since"]

    watching.follow_all(time.time())  # not yet due
    assert json.loads(db.hget(keys.run("r-refused"), "follow")) == follow
    watching.follow_all(follow["retry_at"] + 0.01)  # due: sent again, refused again
    again = json.loads(db.hget(keys.run("r-refused"), "follow"))
    assert again["refused_since"] == first_refusal and again["retry_at"] > follow["retry_at"]
    assert again["command"] == "r-refused-a1"
    assert db.hget(keys.run("r-refused"), "attempts") == "1"

    # The broker has refused it for longer than the run's deadline (twice its estimate).
    patience = SLACK * estimate_run_s(get_benchmark("kws01"), "accuracy", RunOptions())
    again["refused_since"] = time.time() - patience - 1
    db.hset(keys.run("r-refused"), "follow", json.dumps(again))
    watching.follow_all(again["retry_at"] + 0.01)
    run = db.hgetall(keys.run("r-refused"))
    assert run["state"] == "failed" and run["attempts"] == "1", run
    assert run["reason"].startswith("the broker refused the run's command for "), run
    assert db.get(keys.lease("b-1")) is None and not db.sismember(keys.RUNS_ACTIVE, "r-refused")


def test_a_refused_command_that_reached_the_agent_is_judged_by_its_final_event(
    db: redis.Redis, rq_client: redis.Redis, tmp_path: Path
) -> None:
    """A publish can fail after the broker took it (its acknowledgement lost): the agent's
    `done` for that attempt then arrives while the follower waits to send it again, and the
    run is scored, not sent again."""
    followed_run(db, "r-refused", "b-1")
    db.hset(keys.run("r-refused"), mapping={"attempts": 0, "state": "queued", "options": "{}"})
    watching = follower(tmp_path)
    RunJob(db, watching.settings, "r-refused").dispatch()
    follow = json.loads(db.hget(keys.run("r-refused"), "follow"))
    done = {"event": "done", "attempt": 1, "count": 10, "digest": "x", "info": {}}
    db.hset(keys.run("r-refused"), "final", json.dumps(done))

    watching.follow_all(follow["retry_at"] + 0.01)

    assert db.hget(keys.run("r-refused"), "phase") == "scoring"
    assert "score-r-refused" in farm_queue(QUEUES["normal"], rq_client).job_ids
    assert json.loads(db.hget(keys.run("r-refused"), "final")) == done  # not dropped


def test_a_run_cancelled_while_the_broker_refuses_it_ends_cancelled(
    db: redis.Redis, tmp_path: Path
) -> None:
    followed_run(db, "r-refused", "b-1")
    db.hset(keys.run("r-refused"), mapping={"attempts": 0, "state": "queued", "options": "{}"})
    watching = follower(tmp_path)
    RunJob(db, watching.settings, "r-refused").dispatch()
    db.hset(keys.run("r-refused"), "cancel", "1")

    watching.follow_all(time.time())

    run = db.hgetall(keys.run("r-refused"))
    assert run["state"] == "cancelled" and "while the broker refused" in run["reason"], run
    assert db.get(keys.lease("b-1")) is None


def test_a_refused_run_waits_for_its_agent_and_fails_if_it_stays_away(
    db: redis.Redis, tmp_path: Path
) -> None:
    """After a broker outage the agent is offline until it reconnects: the run is not sent
    to it before, and fails if it is not back within the run's deadline."""
    followed_run(db, "r-refused", "b-1")
    db.hset(keys.run("r-refused"), mapping={"attempts": 0, "state": "queued", "options": "{}"})
    watching = follower(tmp_path)
    RunJob(db, watching.settings, "r-refused").dispatch()
    follow = json.loads(db.hget(keys.run("r-refused"), "follow"))
    db.hset(keys.agent("pi-a"), "state", "offline")

    watching.follow_all(follow["retry_at"] + 1)  # due, but its agent is away: not sent
    assert json.loads(db.hget(keys.run("r-refused"), "follow")) == follow
    watching.follow_all(follow["refused_since"] + follow["patience"] + 1)

    run = db.hgetall(keys.run("r-refused"))
    assert run["state"] == "failed" and run["attempts"] == "1", run
    assert "agent pi-a was not back online within" in run["reason"], run
