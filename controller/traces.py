"""The power traces a run's samples sent in chunks (``farm.trace``), as ingest stored them
(``farm:run:{run}:trace``): which chunks are missing, the records with their traces joined
back for scoring, and the chunks a new dispatch must not find. Synchronous redis-py, for the
run jobs."""

from __future__ import annotations

from collections.abc import Container, Iterable, Iterator, Mapping
from typing import Any

import pydantic_core
import redis

from controller import keys
from farm.trace import TraceError, Values, attach_trace, chunked

#: Chunks read per round trip while joining a trace (each up to ~1.6 MB of JSON).
CHUNKS_PER_READ = 8


def missing_chunks(
    client: redis.Redis, run_id: str, records: Iterable[Mapping[str, Any]]
) -> list[str]:
    """The trace chunks (``seq:chunk``) that ``records`` name and the run has not stored."""
    wanted = [keys.trace_field(r["seq"], c) for r in records for c in range(chunked(r))]
    if not wanted:
        return []
    held = set(client.hkeys(keys.run_trace(run_id)))
    return [field for field in wanted if field not in held]


def with_traces(
    client: redis.Redis, run_id: str, records: Iterable[Mapping[str, Any]]
) -> list[Mapping[str, Any]]:
    """``records`` with every trace sent in chunks joined back into ``power_samples``,
    checked against its record's length and digest (:class:`farm.trace.TraceError` if a
    chunk is missing or holds other values)."""
    return [
        attach_trace(r, _chunks(client, run_id, r["seq"], n)) if (n := chunked(r)) else r
        for r in records
    ]


def _chunks(client: redis.Redis, run_id: str, seq: int, count: int) -> Iterator[Values]:
    """The values of sample ``seq``'s ``count`` chunks in order, read a few at a time (a
    whole trace's JSON is never held at once)."""
    for start in range(0, count, CHUNKS_PER_READ):
        fields = [
            keys.trace_field(seq, c) for c in range(start, min(count, start + CHUNKS_PER_READ))
        ]
        for field, text in zip(fields, client.hmget(keys.run_trace(run_id), fields), strict=True):
            if text is None:
                raise TraceError(f"power trace chunk {field} is missing")
            values: Values = pydantic_core.from_json(text)
            yield values


def drop_traces(client: redis.Redis, run_id: str, kept: Container[int]) -> None:
    """Forget the stored trace chunks of every sample not in ``kept``: a dispatch starts
    over from what it keeps, and an earlier attempt's chunk must not stand in for one of
    this attempt's (the first value of a chunk stays)."""
    key = keys.run_trace(run_id)
    doomed = [f for f in client.hkeys(key) if int(f.split(":", 1)[0]) not in kept]
    for start in range(0, len(doomed), 1000):
        client.hdel(key, *doomed[start : start + 1000])
