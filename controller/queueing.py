"""How the controller meets RQ: every queue, job and worker uses :data:`SERIALIZER` (JSON).

RQ's default serializer is pickle, and unpickling runs code: whoever could write a job hash
to Redis had a worker execute anything while merely reading the job, before the allow-list
(:func:`controller.worker_pool.refusal`) saw its function's name. A JSON payload is data only;
one that is not JSON (a pickle written by an older version or by an attacker, or garbage)
fails to deserialize and the worker refuses the job. The project's job functions take and
return plain strings, so JSON carries them whole.
"""

from __future__ import annotations

import redis
from rq import Queue
from rq.job import Job
from rq.serializers import JSONSerializer

#: The one serializer of every RQ queue, job and worker of the farm. RQ's own command line
#: needs it too: ``rq info|requeue|empty --serializer json``.
SERIALIZER = JSONSerializer


def queue(name: str, connection: redis.Redis) -> Queue:
    """The RQ queue ``name`` (``connection`` must not decode responses)."""
    return Queue(name, connection=connection, serializer=SERIALIZER)


def fetch_job(job_id: str, connection: redis.Redis) -> Job:
    """The RQ job ``job_id`` (``NoSuchJobError`` if it is gone)."""
    return Job.fetch(job_id, connection=connection, serializer=SERIALIZER)
