"""The nightly full-suite sweep, scheduled by RQ itself (``rq cron``) instead of a systemd timer:
for labs that prefer the queue to own the schedule. Use one or the other, not both.

    RQ_REDIS_URL="$FARM_REDIS_URL" rq cron /etc/tinyfarm/rq-cron/nightly.py
    docker compose --profile rq-cron up -d            (the compose stack's `cron` service)

``rq cron`` enqueues, at 01:00 local time (the scheduler's TZ), a job on the controller's
high-priority queue; a `farm controller worker` runs it: ``controller.jobs.submit_nightly``,
``farm submit`` with the same arguments as tinyfarm-nightly.service, so the sweep's own runs
queue at normal priority, and once they have ended its verdict job (``--verdict``:
``controller.jobs.judge_sweep``, on the high-priority queue) compares it with the night
before, writes the report and stores the verdicts the exporter serves. The command reads
Redis from the worker's own FARM_REDIS_URL. A failed submit lands in RQ's failed-job
registry (``rq info --serializer json``).

Only one ``rq cron`` process should run for a Redis: two would enqueue the sweep twice.
"""

import functools

from rq import Queue, cron

from controller.jobs import submit_nightly
from controller.queueing import SERIALIZER

# RQ 3.0's cron makes its queue without a serializer, i.e. pickle, and the farm's workers
# refuse a job they cannot read as JSON (controller/queueing.py). Its module's Queue is the
# one it enqueues through (rq is pinned below 3.1 in pyproject.toml).
cron.Queue = functools.partial(Queue, serializer=SERIALIZER)  # type: ignore[misc]

cron.register(
    submit_nightly,
    queue_name="farm-high",  # controller.sweeps.QUEUES["high"]
    cron="0 1 * * *",  # minute hour day month weekday
    job_timeout=900,
    name="tinyfarm-nightly",
)
