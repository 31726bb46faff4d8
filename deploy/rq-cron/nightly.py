"""The nightly full-suite sweep, scheduled by RQ itself (``rq cron``) instead of a systemd timer:
for labs that prefer the queue to own the schedule. Use one or the other, not both.

    rq cron --url redis://127.0.0.1:6379/0 /etc/tinyfarm/rq-cron/nightly.py
    docker compose --profile rq-cron up -d            (the compose stack's `cron` service)

``rq cron`` enqueues, at 01:00 local time (the scheduler's TZ), a job on the controller's
high-priority queue; a `farm controller worker` runs it: ``farm submit`` with the same
arguments as tinyfarm-nightly.service, so the sweep's own runs queue at normal priority. The
job is ``subprocess.run`` of the standard library, which every worker can import, and the
command reads Redis from the worker's own FARM_REDIS_URL. A failed submit (exit status not 0)
lands in RQ's failed-job registry (``rq info``, ``rq requeue``).

Only one ``rq cron`` process should run for a Redis: two would enqueue the sweep twice.
"""

import subprocess

from rq import cron

NIGHTLY = ["farm", "submit", "--suite", "full", "--boards", "all", "--label", "nightly"]
"""The same command as deploy/systemd/tinyfarm-nightly.service."""

cron.register(
    subprocess.run,
    queue_name="farm-high",  # controller.sweeps.QUEUES["high"]
    args=(NIGHTLY,),
    kwargs={"check": True, "timeout": 600},
    cron="0 1 * * *",  # minute hour day month weekday
    job_timeout=900,
    name="tinyfarm-nightly",
)
