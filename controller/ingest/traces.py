"""Storing a power trace chunk (``farm.trace``): one Lua script checks that the run accepts
the chunk's sample as it would the sample itself, and writes the chunk once, by (seq, chunk);
a chunk received again is told apart as a duplicate (the same values: a resend) or a conflict
(other values: the first stay), and counted."""

from __future__ import annotations

import json
from typing import Any

import pydantic_core

from controller import keys
from controller.ingest.ledger import Ledger
from controller.ingest.store import RUN_ACCEPTS, RunScript, refused
from controller.ingest.throttle import Throttle
from farm.logs import get_logger
from farm.messages import Topic

log = get_logger("controller.ingest.traces")

#: Store a chunk after :data:`controller.ingest.store.RUN_ACCEPTS` (the same check, atomic
#: with the write, as for samples). KEYS: the run's hash, its trace hash, ``farm:ingest:
#: counters``, the board's hash. ARGV: the topic's agent and board, the closed run states,
#: the chunk's field (``seq:chunk``), its values (compact JSON), its seq, the time now (the
#: board's ``last_seen``), its attempt ('' when it has none).
#:
#: Reply: ``{0, ...}`` refused (see ``RUN_ACCEPTS``); ``{1}`` stored; ``{2}`` stored before
#: with the same bytes (counted a duplicate here); ``{3, stored value}`` stored before with
#: other bytes, which ingest tells apart and counts.
STORE_CHUNK = (
    RUN_ACCEPTS
    + """
redis.call('HSET', KEYS[4], 'last_seen', ARGV[7])
redis.call('HINCRBY', KEYS[3], 'accepted_trace_chunk', 1)
if redis.call('HSETNX', KEYS[2], ARGV[4], ARGV[5]) == 1 then
  return {1}
end
local kept = redis.call('HGET', KEYS[2], ARGV[4])
if kept == ARGV[5] then
  redis.call('HINCRBY', KEYS[3], 'duplicate_trace_chunks', 1)
  return {2}
end
return {3, kept}
"""
)


class TraceStore:
    """The trace chunks' handler: :meth:`store` writes one chunk to Redis and counts it in
    ``ledger``; conflicts are logged at most once a second (``throttle``)."""

    def __init__(self, ledger: Ledger, throttle: Throttle) -> None:
        self.ledger = ledger
        self.throttle = throttle
        self._script = RunScript(ledger, STORE_CHUNK)

    async def store(self, topic: Topic, chunk: dict[str, Any]) -> None:
        """Store one chunk (from :func:`controller.ingest.parse.parse_trace_chunk`) and count
        it: ``accepted_trace_chunk``, and ``duplicate_trace_chunks`` or
        ``conflicting_trace_chunks`` for one stored before."""
        assert topic.run is not None
        seq, attempt = chunk["seq"], chunk["attempt"]
        reply = await self._script(
            topic,
            keys.run_trace(topic.run),
            keys.trace_field(seq, chunk["chunk"]),
            pydantic_core.to_json(chunk["values"]),
            seq,
            attempt,
        )
        if reply[0] == 0:
            raise refused(topic, reply, attempt, seq)
        # Redis has counted these (the script did, atomically with the write).
        self.ledger.counters.update(
            {"accepted_trace_chunk": 1, **({"duplicate_trace_chunks": 1} if reply[0] == 2 else {})}
        )
        if reply[0] != 3:
            return
        if json.loads(reply[1]) == chunk["values"]:
            # The same values spelled otherwise (1 and 1.0): a resend all the same.
            await self.ledger.commit(None, {"duplicate_trace_chunks": 1})
            return
        await self.ledger.commit(None, {"conflicting_trace_chunks": 1})
        if (skipped := self.throttle.allow("conflicting_trace_chunk")) is not None:
            log.warning(
                "conflicting_trace_chunk",
                run=topic.run,
                seq=seq,
                chunk=chunk["chunk"],
                agent=topic.agent,
                board=topic.board,
                kept="first",
                suppressed=skipped,
            )
