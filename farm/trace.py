"""A power trace too long for one message, sent in chunks and joined back: the agent's side
(:func:`detach_trace`) and the controller's (:func:`attach_trace`), sans-IO.

A sample record whose ``power_samples`` hold more than a chunk's values (the agent's
``trace_chunk_values``, at most ``farm.messages.TRACE_CHUNK_VALUES``) is published without
them: it names instead the trace's length, its number of chunks and its digest
(``power_length``, ``power_chunks``, ``power_digest``), and the values go first, as
``power_chunks`` ``farm.messages.TraceChunk`` messages of consecutive slices. The controller
joins the chunks in order and checks the length and the digest, so a trace is scored only
whole and exactly as the monitor measured it.

The digest is SHA-256 over the trace's values as little-endian IEEE-754 doubles (null, a
sample the monitor could not read, as NaN): bit-exact floats, whatever JSON spelled them, and
computed a chunk at a time on both sides (no 27 MB string for a 1,200 s stream).
"""

from __future__ import annotations

import hashlib
import math
import struct
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from farm.messages import MAX_TRACE_CHUNKS, TRACE_CHUNK_VALUES

Values = Sequence[float | None]


class TraceError(ValueError):
    """A trace cannot be joined back: a chunk missing or of other values than the agent sent
    (its length or digest differs from the record's)."""


class TraceDigest:
    """The digest of a trace fed a slice at a time (see the module docstring)."""

    def __init__(self) -> None:
        self._hash = hashlib.sha256()
        self.length = 0
        """Values fed so far."""

    def update(self, values: Values) -> None:
        """Add the next slice of the trace."""
        doubles = [math.nan if v is None else v for v in values]
        self._hash.update(struct.pack(f"<{len(doubles)}d", *doubles))
        self.length += len(doubles)

    def hexdigest(self) -> str:
        """The digest so far."""
        return self._hash.hexdigest()


def detach_trace(
    record: Mapping[str, Any], chunk_values: int = TRACE_CHUNK_VALUES
) -> tuple[dict[str, Any], list[Values]]:
    """``record`` (``farm.messages.SampleBatchSchema.record``) as published, and the chunks
    its power trace travels in: unchanged and none when the trace holds at most
    ``chunk_values`` samples; else without ``power_samples`` but naming their length, chunk
    count and digest, and the trace cut into slices of ``chunk_values``. Raises
    ``ValueError`` for a trace that would take more than ``MAX_TRACE_CHUNKS`` chunks."""
    if not 1 <= chunk_values <= TRACE_CHUNK_VALUES:
        raise ValueError(f"chunk_values {chunk_values} is not 1..{TRACE_CHUNK_VALUES}")
    values: Values | None = record.get("power_samples")
    if values is None or len(values) <= chunk_values:
        return dict(record), []
    chunks = [values[i : i + chunk_values] for i in range(0, len(values), chunk_values)]
    if len(chunks) > MAX_TRACE_CHUNKS:
        raise ValueError(
            f"a power trace of {len(values)} samples takes {len(chunks)} chunks of "
            f"{chunk_values}, more than the {MAX_TRACE_CHUNKS} a record may name"
        )
    digest = TraceDigest()
    for part in chunks:
        digest.update(part)
    detached = {k: v for k, v in record.items() if k != "power_samples"}
    detached.update(
        power_length=len(values), power_chunks=len(chunks), power_digest=digest.hexdigest()
    )
    return detached, chunks


def chunked(record: Mapping[str, Any]) -> int:
    """How many trace chunks ``record`` (a stored record) names; 0 when its trace, if any,
    is in it."""
    count: int = record.get("power_chunks") or 0
    return count


def attach_trace(record: Mapping[str, Any], chunks: Iterable[Values]) -> dict[str, Any]:
    """``record`` with its ``power_samples`` joined back from ``chunks`` (its chunks' values,
    in chunk order), after checking them against the record's length and digest
    (:class:`TraceError` if they differ)."""
    digest = TraceDigest()
    values: list[float | None] = []
    for part in chunks:
        digest.update(part)
        values.extend(part)
    seq = record.get("seq")
    if digest.length != record.get("power_length"):
        raise TraceError(
            f"seq {seq}: the power trace's chunks hold {digest.length} samples, the record "
            f"says {record.get('power_length')}"
        )
    if digest.hexdigest() != record.get("power_digest"):
        raise TraceError(f"seq {seq}: the power trace's chunks do not match its digest")
    return {**record, "power_samples": values}
