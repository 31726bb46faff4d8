"""How long a run's per-sample detail, and a whole finished sweep, stay in Redis.

A run's samples (``farm:run:{run}:samples``) and its events list are what a running run needs:
ingest stores into them, the job checks completeness and digests, scores the run and resumes
an accuracy run from them. Once the run ended, its folder holds the samples
(``samples.jsonl``) and the official files, the run hash keeps its summary and final event,
and :mod:`controller.history` its summary for good; so both keys expire
``FARM_SAMPLES_RETENTION_S`` seconds after the run ended (default three days: time to look
into a surprising night with redis-cli; 0 deletes them at once). A closed run refuses samples
(the ingest store script), so nothing writes them again.

A finished sweep older than ``FARM_RUN_RETENTION_S`` (default 30 days; by its creation time)
is trimmed whole by the reaper (:func:`trim_sweeps`): its hash, run list, skipped list and
verdicts, and every run's hash, samples and events. Its completed runs' summaries stay in
:mod:`controller.history` and their folders on disk; ``farm show`` no longer finds the sweep.
A sweep is trimmed whole, never run by run, so no reader (``farm show``, the exporter) meets
a sweep whose runs are half gone.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping

import redis

from controller import keys

#: ``FARM_SAMPLES_RETENTION_S`` unless set: three days.
DEFAULT_SAMPLES_RETENTION_S = 3 * 86_400
#: ``FARM_RUN_RETENTION_S`` unless set: thirty days.
DEFAULT_RUN_RETENTION_S = 30 * 86_400
#: Sweeps one :func:`trim_sweeps` call removes at most (a reaper tick stays short).
TRIM_BATCH = 20


def env_seconds(name: str, default: int, environ: Mapping[str, str]) -> int:
    """Whole seconds from the environment variable ``name`` (rounded up), ``default`` when
    it is unset; ``ValueError`` naming anything but a number >= 0."""
    text = environ.get(name, "").strip()
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{name}={text!r}: expected seconds (a number >= 0)") from None
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name}={text!r}: expected seconds (a number >= 0)")
    return math.ceil(value)


def samples_retention_s(environ: Mapping[str, str] = os.environ) -> int:
    """``FARM_SAMPLES_RETENTION_S`` in whole seconds (the default when unset or empty);
    ``ValueError`` saying what is wrong for anything but a number >= 0."""
    return env_seconds("FARM_SAMPLES_RETENTION_S", DEFAULT_SAMPLES_RETENTION_S, environ)


def run_retention_s(environ: Mapping[str, str] = os.environ) -> int:
    """``FARM_RUN_RETENTION_S`` in whole seconds, as :func:`samples_retention_s`."""
    return env_seconds("FARM_RUN_RETENTION_S", DEFAULT_RUN_RETENTION_S, environ)


def retire_run_detail(client: redis.Redis, run_id: str, retention_s: int) -> None:
    """Let an ended run's samples and events leave Redis after ``retention_s`` (0: now)."""
    detail = (keys.run_samples(run_id), keys.run_trace(run_id), keys.run_events(run_id))
    with client.pipeline(transaction=False) as pipe:
        for key in detail:
            if retention_s <= 0:
                pipe.delete(key)
            else:
                pipe.expire(key, retention_s)
        pipe.execute()


def trim_sweeps(client: redis.Redis, retention_s: int, now: float) -> list[str]:
    """Remove finished sweeps created more than ``retention_s`` before ``now``, with their
    runs (at most :data:`TRIM_BATCH`, oldest first); the ids removed. A sweep not finished
    yet (a run still going) is left for a later pass."""
    old = client.zrangebyscore(keys.SWEEPS, "-inf", now - retention_s, start=0, num=TRIM_BATCH)
    trimmed = []
    for sweep_id in old:
        if client.hget(keys.sweep(sweep_id), "state") != "finished":
            continue
        runs = client.lrange(keys.sweep_runs(sweep_id), 0, -1)
        with client.pipeline(transaction=False) as pipe:
            for run_id in runs:
                pipe.hmget(keys.run(run_id), ["state", "shards"])
            rows = pipe.execute()
        if any(state is not None and state not in keys.TERMINAL for state, _ in rows):
            continue
        # A sharded run's shards are not among the sweep's runs (controller.shards), and one
        # cancelled with its run may still wait for its board's turn.
        shard_ids = [s for _, shards in rows if shards for s in json.loads(shards)]
        with client.pipeline(transaction=False) as pipe:
            for shard_id in shard_ids:
                pipe.hget(keys.run(shard_id), "state")
            if any(s is not None and s not in keys.TERMINAL for s in pipe.execute()):
                continue
        runs = runs + shard_ids
        doomed = [
            keys.sweep(sweep_id),
            keys.sweep_runs(sweep_id),
            keys.sweep_skipped(sweep_id),
            keys.sweep_verdict(sweep_id),
        ]
        for run_id in runs:
            doomed += [
                keys.run(run_id),
                keys.run_samples(run_id),
                keys.run_trace(run_id),
                keys.run_events(run_id),
                keys.run_verified(run_id),
                keys.run_merger(run_id),
            ]
        with client.pipeline(transaction=True) as pipe:
            # The index first: a reader never finds the sweep with its runs gone.
            pipe.zrem(keys.SWEEPS, sweep_id)
            for start in range(0, len(doomed), 500):
                pipe.unlink(*doomed[start : start + 500])
            pipe.execute()
        trimmed.append(sweep_id)
    return trimmed
