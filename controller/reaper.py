"""Finds runs whose worker died and hands them back to RQ at once.

RQ notices a SIGKILLed worker's job only when registry maintenance runs after the job's
entry expires (~90 s at best, minutes by default: docs/architecture.md#platform-notes). A
run job renews its board lease every few seconds, so a run that is active while its lease has
expired lost its worker: the reaper expires exactly that job's entry in RQ's started registry
and lets RQ's own clean-up handle it, which retries the job (``Retry``) — the run resumes from
the samples already stored where the mode allows — or fails it and releases the board's next
job. A run it fails may be its sweep's last: the reaper then closes the sweep
(:func:`controller.judge.close_sweep`), as a run job would have.

The same tick looks after the boards (:meth:`Reaper.tick`): it ends reservations that expired
or whose holder's console vanished (:func:`controller.reservations.end_lapsed`) and queues the
scheduled health checks (:mod:`controller.health_schedule`).
"""

from __future__ import annotations

import time

import redis
from rq.registry import StartedJobRegistry
from rq.utils import now as rq_now

from controller import keys
from controller.board_queue import pass_turn, queue_job
from controller.health_schedule import HealthPolicy, schedule
from controller.ingest.throttle import Throttle
from controller.jobs import RunJob
from controller.judge import close_sweep
from controller.queueing import fetch_job, queue
from controller.reservations import end_lapsed
from controller.retention import (
    retire_run_detail,
    run_retention_s,
    samples_retention_s,
    trim_sweeps,
)
from controller.settings import Settings
from controller.store import LEASE_TTL_S, explain, fail_reason, get_run, set_run
from controller.sweeps import QUEUE_ORDER
from farm.logs import get_logger

log = get_logger("controller.reaper")

#: How often the reaper looks.
INTERVAL_S = 2.0
#: How often it trims sweeps past ``FARM_RUN_RETENTION_S`` (controller.retention).
TRIM_INTERVAL_S = 600.0


def reap(client: redis.Redis, rq_client: redis.Redis) -> list[str]:
    """One pass: hand every run that lost its worker back to RQ; return their ids."""
    reaped = []
    # One round trip for every active run: at a thousand running boards nearly all of them
    # are the follower's and are only looked at to be left alone.
    run_ids = list(client.smembers(keys.RUNS_ACTIVE))
    with client.pipeline(transaction=False) as pipe:
        for run_id in run_ids:
            pipe.hgetall(keys.run(run_id))
        hashes = pipe.execute()
    for run_id, run in zip(run_ids, hashes, strict=True):
        if not run:
            client.srem(keys.RUNS_ACTIVE, run_id)
            continue
        if run.get("state") in keys.TERMINAL:
            # Ended by a job or the follower that died before passing the board on.
            pass_turn(client, rq_client, run_id, run)
            continue
        if run.get("phase") == "following":
            continue  # no worker has it: the follower does
        if client.exists(keys.lease(run["board"])):
            continue
        # Dispatching takes the lease first: a run this fresh may still be taking it.
        dispatched = float(run.get("dispatched_at") or 0)
        if time.time() - dispatched < LEASE_TTL_S:
            continue
        if _executing_soon(rq_client, run.get("job", "")):
            continue
        if not client.srem(keys.RUNS_ACTIVE, run_id):
            continue  # another reaper got there first
        reaped.append(run_id)
        fail_reason(client, run_id, "the worker running it was lost (its lease expired)")
        # Whether RQ will run the job again is known before it is expired: once expired, an
        # idle worker may start it within a millisecond, and its status then reads
        # "started" (a run failed here while its retry was already under way).
        will_retry = _retries_left(rq_client, run.get("job", "")) > 0
        _expire_job(rq_client, run.get("job", ""))
        state = _job_state(rq_client, run.get("job", ""))
        if client.hget(keys.run(run_id), "state") not in keys.TERMINAL:
            retry = will_retry or state == "retry"
            if retry:
                if run.get("phase") != "scoring":
                    _set_state_if(client, run_id, run["state"], "queued")
                else:
                    client.sadd(keys.RUNS_ACTIVE, run_id)  # its score job runs again
            else:
                set_run(client, run_id, state="failed")
                pass_turn(client, rq_client, run_id, get_run(client, run_id))
                retire_run_detail(client, run_id, samples_retention_s())
                # No job will end this run: if it was its sweep's last, the sweep ends here.
                if run.get("sweep"):
                    close_sweep(client, run["sweep"])
                _ended_shard(client, run_id, run.get("shard_of"))
        log.warning("run_reaped", run=run_id, board=run["board"], rq=state)
    return reaped


def _executing_soon(rq_client: redis.Redis, job_id: str) -> bool:
    """Whether RQ itself has the run's job in hand: waiting to run again (RQ's own retry, e.g.
    after a cold shutdown interrupted it), or started so recently that it may still be taking
    the lease. Expiring such a job would start a second execution of the run beside it."""
    try:
        job = fetch_job(job_id, rq_client)
    except Exception:
        return False
    status = job.get_status()
    if status in ("queued", "scheduled", "deferred"):
        return True
    started = job.started_at
    return (
        status == "started"
        and started is not None
        and (rq_now() - started).total_seconds() < LEASE_TTL_S
    )


def _expire_job(rq_client: redis.Redis, job_id: str) -> None:
    try:
        job = fetch_job(job_id, rq_client)
    except Exception:
        return
    if job.get_status() != "started":
        return  # RQ already handled it
    registry = StartedJobRegistry(queue=queue(job.origin, rq_client))
    for member in rq_client.zrange(registry.key, 0, -1):
        text = member.decode() if isinstance(member, bytes) else member
        if registry.parse_job_id(text) == job_id:
            rq_client.zadd(registry.key, {member: 1}, xx=True)
    # Only entries scored at or below 1 are expired now: exactly this job's.
    registry.cleanup(timestamp=1)


def _retries_left(rq_client: redis.Redis, job_id: str) -> int:
    try:
        return int(fetch_job(job_id, rq_client).retries_left or 0)
    except Exception:
        return 0


def _set_state_if(client: redis.Redis, run_id: str, expected: str, state: str) -> None:
    """Set the run's state unless it changed since it read ``expected`` (the job's next
    execution may already have dispatched it: its state is newer than the reaper's)."""
    key = keys.run(run_id)
    with client.pipeline() as pipe:
        try:
            pipe.watch(key)
            if pipe.hget(key, "state") == expected:
                pipe.multi()
                pipe.hset(key, "state", state)
                pipe.execute()
        except redis.WatchError:
            pass


def _job_state(rq_client: redis.Redis, job_id: str) -> str:
    try:
        status = fetch_job(job_id, rq_client).get_status()
    except Exception:
        return "gone"
    return (
        "retry"
        if status in ("queued", "scheduled", "deferred")
        else str(getattr(status, "value", status))
    )


def release_ready(rq_client: redis.Redis) -> None:
    """Enqueue jobs whose dependencies are met but that RQ left in its ready registry (it
    skips a job that changed while it enqueued it, and its own recovery runs every 10 min):
    a board's next run must not wait minutes behind a finished one."""
    for name in QUEUE_ORDER:
        queue(name, rq_client).ready_job_registry.cleanup()


def stalled_turns(
    client: redis.Redis, rq_client: redis.Redis, boards: list[str]
) -> list[tuple[str, str]]:
    """Pass on the turns a process that died between two steps left hanging: a board whose
    turn is with an ended run that never passed it (passed now), or with a queued run whose
    dispatch job is gone (queued again) or failed for good (the run fails). The (board, run)
    pairs found."""
    with client.pipeline(transaction=False) as pipe:
        for board in boards:
            pipe.get(keys.board_current(board))
        currents = [(b, r) for b, r in zip(boards, pipe.execute(), strict=True) if r]
    with client.pipeline(transaction=False) as pipe:
        for _, run_id in currents:
            pipe.hmget(keys.run(run_id), ["state", "job", "shard_of"])
            pipe.sismember(keys.RUNS_ACTIVE, run_id)
        found = iter(pipe.execute())
    stalled = []
    for board, run_id in currents:
        (state, job, shard_of), active = next(found), next(found)
        if state is not None and state not in keys.TERMINAL and (state != "queued" or active):
            continue  # under way (an active run's dispatch job ends; the follower has it)
        if state == "queued":
            rq_state = _job_state(rq_client, job or f"run-{run_id}")
            if rq_state == "failed":
                fail_reason(client, run_id, "its dispatch job failed (rq info: failed jobs)")
                set_run(client, run_id, state="failed", finished_at=time.time())
                if sweep_id := client.hget(keys.run(run_id), "sweep"):
                    close_sweep(client, sweep_id)
                _ended_shard(client, run_id, shard_of)
            elif rq_state == "gone":
                queue_job(rq_client, client, run_id, "dispatch")
                stalled.append((board, run_id))
                continue
            else:
                continue  # waiting for a worker, or running
        stalled.append((board, run_id))
        pass_turn(client, rq_client, run_id, get_run(client, run_id) or {"board": board})
    return stalled


def _ended_shard(client: redis.Redis, run_id: str, shard_of: str | None) -> None:
    """A shard (of ``shard_of``) the reaper failed ends its sharded run and the other shards,
    as the end of any shard does (``RunJob.finish`` of an ended run does what its end owes)."""
    if shard_of:
        RunJob(client, Settings.resolve(), run_id).finish("failed", None)


def look_after_boards(
    client: redis.Redis, rq_client: redis.Redis, policy: HealthPolicy, now: float
) -> None:
    """End the reservations that lapsed, pass on board turns nothing else will and queue the
    health checks due."""
    boards = sorted(client.smembers(keys.BOARDS))
    for board, run_id in stalled_turns(client, rq_client, boards):
        log.warning("board_turn_stalled", board=board, run=run_id)
    for board, why in end_lapsed(client, boards, now):
        log.info("reservation_ended", board=board, why=why)
    schedule(client, rq_client, policy, now)


class Reaper:
    """The reaper of one host: the worker pool's supervisor (:mod:`controller.worker_pool`)
    calls :meth:`tick` every half second. ``policy``: when boards get scheduled health checks
    (default: from the environment)."""

    def __init__(self, url: str, policy: HealthPolicy | None = None) -> None:
        self.url = url
        self.policy = policy or HealthPolicy.from_env()
        self.client = redis.Redis.from_url(url, decode_responses=True)
        self.rq_client = redis.Redis.from_url(url)
        self._next_reap = time.monotonic() + INTERVAL_S
        self._next_trim = time.monotonic()
        # A Redis that refuses us (a rotated password) would otherwise log at every tick.
        self._throttle = Throttle(60.0)

    def tick(self) -> list[str]:
        """:func:`release_ready` at every tick (a board's next run must not wait for the
        reaper's interval either), :func:`reap` and :func:`look_after_boards` every
        ``INTERVAL_S``, and
        :func:`~controller.retention.trim_sweeps` every ``TRIM_INTERVAL_S`` (the first time at
        once); a Redis hiccup is logged
        (the next tick tries again). The runs reaped."""
        try:
            release_ready(self.rq_client)
            if time.monotonic() < self._next_reap:
                return []
            self._next_reap = time.monotonic() + INTERVAL_S
            reaped = reap(self.client, self.rq_client)
            look_after_boards(self.client, self.rq_client, self.policy, time.time())
            if time.monotonic() >= self._next_trim:
                self._next_trim = time.monotonic() + TRIM_INTERVAL_S
                trimmed = trim_sweeps(self.client, run_retention_s(), time.time())
                if trimmed:
                    log.info("sweeps_trimmed", sweeps=len(trimmed), first=trimmed[0])
            return reaped
        except redis.RedisError as exc:
            if (skipped := self._throttle.allow("redis_error")) is not None:
                log.warning("reaper_redis_error", error=explain(self.url, exc), skipped=skipped)
            return []
        except Exception:  # a bug here must not take the workers' supervisor down
            log.exception("reaper_failed")
            return []
