"""How long a run's per-sample detail stays in Redis after the run ended.

A run's samples (``farm:run:{run}:samples``) and its events list are what a running run needs:
ingest stores into them, the job checks completeness and digests, scores the run and resumes
an accuracy run from them. Once the run ended, its folder holds the samples
(``samples.jsonl``) and the official files, the run hash keeps its summary and final event,
and :mod:`controller.history` its summary for good; so both keys expire
``FARM_SAMPLES_RETENTION_S`` seconds after the run ended (default three days: time to look
into a surprising night with redis-cli; 0 deletes them at once). A closed run refuses samples
(the ingest store script), so nothing writes them again.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping

import redis

from controller import keys

#: ``FARM_SAMPLES_RETENTION_S`` unless set: three days.
DEFAULT_SAMPLES_RETENTION_S = 3 * 86_400
ENV = "FARM_SAMPLES_RETENTION_S"


def samples_retention_s(environ: Mapping[str, str] = os.environ) -> int:
    """``FARM_SAMPLES_RETENTION_S`` in whole seconds (the default when unset or empty);
    ``ValueError`` saying what is wrong for anything but a number >= 0."""
    text = environ.get(ENV, "").strip()
    if not text:
        return DEFAULT_SAMPLES_RETENTION_S
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{ENV}={text!r}: expected seconds (a number >= 0)") from None
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{ENV}={text!r}: expected seconds (a number >= 0)")
    return math.ceil(value)


def retire_run_detail(client: redis.Redis, run_id: str, retention_s: int) -> None:
    """Let an ended run's samples and events leave Redis after ``retention_s`` (0: now)."""
    detail = (keys.run_samples(run_id), keys.run_events(run_id))
    with client.pipeline(transaction=False) as pipe:
        for key in detail:
            if retention_s <= 0:
                pipe.delete(key)
            else:
                pipe.expire(key, retention_s)
        pipe.execute()
