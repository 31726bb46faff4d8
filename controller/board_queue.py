"""Each board's runs, one at a time, in the order they were submitted.

A run no longer holds an RQ worker while the board runs it (:mod:`controller.follower`
follows it), so the RQ job that dispatched it ends long before the run does, and RQ's
``depends_on`` would start the board's next run at once. The board's turn is kept here
instead, as in LAVA's scheduler: a list of the runs waiting for the board and the one run
whose turn it is. A run's turn passes on exactly when the run reaches a terminal state
(:func:`advance` with that run), whatever ended it: its job, the follower or the reaper.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import redis
from rq import Queue

from controller import keys
from controller.store import Lease

#: Ends ``ARGV[1]``'s turn on the board (if it has it) and, if no run has the board,
#: gives it to the next waiting run: its id, or nil. KEYS: the board's current, its waiting.
_ADVANCE = """
if ARGV[1] ~= '' and redis.call('get', KEYS[1]) == ARGV[1] then
  redis.call('del', KEYS[1])
end
if redis.call('exists', KEYS[1]) == 1 then return false end
local next_run = redis.call('lpop', KEYS[2])
if not next_run then return false end
redis.call('set', KEYS[1], next_run)
return next_run
"""


def wait(pipe: redis.client.Pipeline, board: str, run_ids: Iterable[str]) -> None:
    """Queue ``run_ids`` (in order) behind the board's other runs (in ``pipe``)."""
    ids = list(run_ids)
    if ids:
        pipe.rpush(keys.board_waiting(board), *ids)


def advance(client: redis.Redis, board: str, ended: str = "") -> str | None:
    """End ``ended``'s turn on ``board`` (if it had it); the run whose turn it now is, if
    the board was free and a run waited (the caller queues its job), else None."""
    found = client.eval(_ADVANCE, 2, keys.board_current(board), keys.board_waiting(board), ended)
    if found is None:
        return None
    return found.decode() if isinstance(found, bytes) else str(found)


#: RQ's own limit on a dispatch job: waiting for a board operation to give the board back
#: (``controller.jobs.OPERATION_WAIT_S``) plus dispatching.
DISPATCH_TIMEOUT_S = 1800
#: RQ's own limit on a score job: verifying, joining power traces, scoring, writing files.
SCORE_TIMEOUT_S = 3600
#: How long RQ keeps a finished or failed job of a run.
JOB_TTL_S = 7 * 86400


def queue_job(rq_client: redis.Redis, client: redis.Redis, run_id: str, kind: str) -> str:
    """Queue the run's ``dispatch`` job (``run-<id>``, :func:`controller.jobs.execute_run`)
    or its ``score`` job (``score-<id>``, :func:`controller.jobs.score_run`) on its sweep's
    queue; the job id, which the run hash's ``job`` now names."""
    return queue_jobs(rq_client, client, [run_id], kind)[0]


def queue_jobs(
    rq_client: redis.Redis, client: redis.Redis, run_ids: list[str], kind: str
) -> list[str]:
    """:func:`queue_job` for many runs, in a few round trips (``farm submit`` starts every
    free board's first run at once); their job ids."""
    from rq import Retry

    from controller.jobs import execute_run, score_run
    from controller.queueing import queue
    from controller.sweeps import JOB_RETRIES, QUEUES

    with client.pipeline(transaction=False) as pipe:
        for run_id in run_ids:
            pipe.hmget(keys.run(run_id), ["queue", "benchmark", "mode", "board"])
        rows = pipe.execute()
    prefix = "run" if kind == "dispatch" else "score"
    job_ids = [f"{prefix}-{run_id}" for run_id in run_ids]
    with client.pipeline(transaction=False) as pipe:
        for run_id, job_id in zip(run_ids, job_ids, strict=True):
            pipe.hset(keys.run(run_id), "job", job_id)
        pipe.execute()
    by_queue: dict[str, list[Any]] = {}
    for run_id, job_id, (name, benchmark, mode, board) in zip(run_ids, job_ids, rows, strict=True):
        by_queue.setdefault(name or QUEUES["normal"], []).append(
            Queue.prepare_data(
                execute_run if kind == "dispatch" else score_run,
                [run_id],
                job_id=job_id,
                timeout=DISPATCH_TIMEOUT_S if kind == "dispatch" else SCORE_TIMEOUT_S,
                # A job lost with its worker runs again (the reaper hands it back): the
                # dispatch resumes from the samples stored, the score starts over.
                retry=Retry(max=JOB_RETRIES),
                result_ttl=JOB_TTL_S,
                failure_ttl=JOB_TTL_S,
                description=f"{kind} {benchmark} {mode} on {board}",
            )
        )
    for name, datas in by_queue.items():
        queue(name, rq_client).enqueue_many(datas)
    return job_ids


def start_boards(client: redis.Redis, rq_client: redis.Redis, boards: list[str]) -> None:
    """Give every free board of ``boards`` to its first waiting run and queue their dispatch
    jobs (what :func:`start_next` does for one, in a few round trips for all)."""
    with client.pipeline(transaction=False) as pipe:
        for board in boards:
            pipe.eval(_ADVANCE, 2, keys.board_current(board), keys.board_waiting(board), "")
        found = pipe.execute()
    starting = [r.decode() if isinstance(r, bytes) else str(r) for r in found if r is not None]
    if starting:
        queue_jobs(rq_client, client, starting, "dispatch")


def start_next(client: redis.Redis, rq_client: redis.Redis, board: str, ended: str = "") -> None:
    """End ``ended``'s turn on ``board`` and queue the dispatch of the run whose turn it is."""
    run_id = advance(client, board, ended)
    if run_id is not None:
        queue_job(rq_client, client, run_id, "dispatch")


def pass_turn(
    client: redis.Redis, rq_client: redis.Redis, run_id: str, run: dict[str, str]
) -> None:
    """Give the board of an ended run (its hash ``run``) back, drop it from the active runs
    and start the board's next run; safe to repeat."""
    if run.get("lease"):
        Lease(client, run["board"], run["lease"]).release()
    client.hdel(keys.run(run_id), "lease", "phase", "follow")
    client.srem(keys.RUNS_ACTIVE, run_id)
    if run.get("board"):
        start_next(client, rq_client, run["board"], run_id)
