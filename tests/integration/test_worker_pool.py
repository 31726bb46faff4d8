"""`farm controller worker` stops promptly and completely: idle workers on the first SIGTERM,
``--burst`` when the queues are empty, and nothing of the pool outlives it. (A stop during a
run is in test_controller.py: it needs boards.)"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from rq import Retry, Worker
from rq.job import JobStatus

from controller import keys
from controller.queueing import queue
from tests.integration.farm_procs import (
    Proc,
    alive,
    descendants,
    farm_command,
    flushed_redis,
    wait_until,
)

#: A database of its own: other tests' workers and queues are not in it.
REDIS_URL = "redis://127.0.0.1:6379/12"


@pytest.fixture
def db() -> Iterator[redis.Redis]:
    with flushed_redis(REDIS_URL) as client:
        yield client


async def test_an_idle_pool_stops_on_the_first_sigterm_and_leaves_nothing(
    tmp_path: Path, db: redis.Redis
) -> None:
    pool = Proc(
        ["--log-level", "info", "controller", "worker", "--processes", "3", "--name", "idle"],
        tmp_path / "pool.log",
        env={"FARM_REDIS_URL": REDIS_URL},
    )
    await pool.start()
    try:
        await wait_until(lambda: len(Worker.all(connection=db)) == 3, 60, "3 RQ workers")
        assert pool.process is not None
        below = descendants(pool.process.pid)
        assert len(below) >= 3  # the workers (and the scheduler process one of them forks)
        assert await pool.signal(signal.SIGTERM) == 0
    finally:
        await pool.stop()
    log = pool.output()
    # Warm shutdown sufficed: no worker needed the cold shutdown or the kill.
    assert "event=worker_cold_shutdown" not in log and "event=worker_killed" not in log
    assert log.count("event=worker_exited") == 3
    assert not alive(below)
    assert Worker.all(connection=db) == []  # each unregistered itself


async def test_a_killed_workers_scheduler_process_ends_with_it(
    tmp_path: Path, db: redis.Redis
) -> None:
    """RQ stops a worker's scheduler process only when the worker exits cleanly: a worker
    killed outright (the OOM killer, kill -9) left it running for good, with no parent,
    holding the scheduler's lock. The supervisor ends what is left of a dead worker."""
    pool = Proc(
        ["--log-level", "info", "controller", "worker", "--processes", "2", "--name", "sched"],
        tmp_path / "pool.log",
        env={"FARM_REDIS_URL": REDIS_URL},
    )
    await pool.start()
    try:
        assert pool.process is not None
        supervisor = pool.process.pid
        await wait_until(lambda: len(Worker.all(connection=db)) == 2, 60, "2 RQ workers")
        # The scheduler is the one grandchild: forked by the worker holding its lock.
        (scheduler,) = await wait_until(
            lambda: [p for p in descendants(supervisor) if _parent(_parent(p)) == supervisor],
            30,
            "the scheduler process",
        )
        holder = _parent(scheduler)
        os.kill(holder, signal.SIGKILL)
        # SIGTERMed, the scheduler stops at its next tick (RQ's scheduler interval, 1 s).
        await wait_until(lambda: not alive([scheduler]), 15, "the orphaned scheduler to end")
        await wait_until(lambda: "event=worker_died" in pool.output(), 15, "the death noticed")
        assert await pool.signal(signal.SIGTERM) == 0
        below = descendants(supervisor)
    finally:
        await pool.stop()
    assert not alive([holder, scheduler, *below])


def _parent(pid: int) -> int:
    """The parent of ``pid`` from /proc (0 once it is gone)."""
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return 0


async def test_burst_exits_when_the_queues_are_empty(db: redis.Redis) -> None:
    code, _out, errs = await farm_command(
        ["--log-level", "info", "controller", "worker", "--burst", "--processes", "2"],
        {"FARM_REDIS_URL": REDIS_URL},
        120,
    )
    assert code == 0, errs
    assert errs.count("event=worker_exited") == 2 and "event=worker_pool_stopped" in errs


async def test_a_worker_runs_only_tinyfarm_jobs(tmp_path: Path, db: redis.Redis) -> None:
    """Anyone who reaches Redis can enqueue a job: a worker runs only the project's own job
    functions, and fails any other job with the reason, running nothing of it."""
    marker = tmp_path / "owned"
    job = queue("farm", db).enqueue("os.system", f"id > {marker}", retry=Retry(max=2))
    code, _out, errs = await farm_command(
        ["--log-level", "info", "controller", "worker", "--burst", "--processes", "1"],
        {"FARM_REDIS_URL": REDIS_URL},
        120,
    )
    assert code == 0, errs
    assert not marker.exists()
    assert job.get_status(refresh=True) == JobStatus.FAILED
    result = job.latest_result()
    assert result is not None and result.exc_string is not None
    assert "os.system is not a tinyfarm job function" in result.exc_string
    assert errs.count("event=job_refused") == 1  # failed for good, not retried
    assert db.hget(keys.WORKER_COUNTERS, "refused_jobs") == b"1"
