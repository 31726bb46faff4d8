"""The worker's allow-list names the job functions the controller enqueues, as RQ names them."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import redis
from rq.job import Callback, Job

from controller.health_schedule import scheduled_health_check
from controller.jobs import execute_run, judge_sweep, score_run, submit_nightly
from controller.queueing import SERIALIZER
from controller.worker_pool import JOB_FUNCTIONS, refusal

CONTROLLER = Path(__file__).resolve().parents[2] / "controller"


def test_every_enqueued_function_is_allowed_and_nothing_else() -> None:
    # `queue.enqueue(f, ...)` and `Queue.prepare_data(f if ... else g, ...)` (enqueue_many)
    calls = r"(?:\.enqueue|prepare_data)\(\s*(\w+)(?:\s+if\s[^\n]*?\selse\s+(\w+))?"
    enqueued = {
        name
        for path in CONTROLLER.rglob("*.py")
        for found in re.findall(calls, path.read_text())
        for name in found
        if name
    }
    assert enqueued == {"execute_run", "score_run", "judge_sweep", "scheduled_health_check"}
    # and the nightly sweep deploy/rq-cron schedules (tests/unit/test_deploy_files.py)
    functions = (execute_run, score_run, judge_sweep, submit_nightly, scheduled_health_check)
    assert {f"{f.__module__}.{f.__qualname__}" for f in functions} == JOB_FUNCTIONS


def test_refusal_names_what_is_wrong() -> None:
    connection = redis.Redis()  # jobs made, not saved: nothing is sent

    def job(func: object, **options: Any) -> Job:
        return Job.create(func, args=("r-1",), connection=connection, **options)

    assert refusal(job(execute_run)) is None
    assert refusal(job("os.system")) == "os.system is not a tinyfarm job function"
    hooked = job(execute_run, on_failure=Callback("os.system"))
    assert refusal(hooked) == "controller.jobs.execute_run job with callbacks or webhooks"
    unreadable = job(execute_run, serializer=SERIALIZER)
    for data in (b"\x80\x05garbage", b"[1, 2]", b'[["os.system"], null, [], {}]'):
        unreadable.data = data  # as read from Redis: pickled, or JSON of another shape
        assert refusal(unreadable) is not None


def test_a_failed_nightly_submit_fails_its_job_with_what_farm_submit_said(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FARM_REDIS_URL", "redis://farm-controller:secret@127.0.0.1:1/0")
    with pytest.raises(RuntimeError, match=r"farm submit exited 2: .*Redis at") as raised:
        submit_nightly()
    assert "secret" not in str(raised.value)
