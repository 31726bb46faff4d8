"""Storing a sample batch: one Lua script checks that the run accepts it, writes every record
(the first value of a seq stays) and counts it; then the seqs found stored with other bytes
are told apart (duplicate or conflict), and the newly stored samples observed."""

from __future__ import annotations

import json
import time
from typing import Any

from controller import keys
from controller.ingest.ledger import Ledger
from controller.ingest.parse import Rejected, acceptance
from controller.ingest.throttle import Throttle
from controller.metrics import IngestMetrics
from farm.logs import get_logger
from farm.messages import (
    MAX_RUN_SAMPLES,
    SAMPLE_BATCH,
    TRACE_DIGEST_PATTERN,
    StorableBatch,
    Topic,
)

log = get_logger("controller.ingest.store")

#: The check a script writing for a run starts with (:data:`STORE_SAMPLES`,
#: ``controller.ingest.traces.STORE_CHUNK``); the run's hash is KEYS[1], and the ARGV it reads
#: are as :data:`STORE_SAMPLES` has them. It returns the refusal :func:`refused` reads.
RUN_ACCEPTS = """
local run = redis.call(
  'HMGET', KEYS[1], 'agent', 'board', 'state', 'benchmark', 'seq_limit', 'attempts', 'mode')
local closed = run[3] and string.find(' ' .. ARGV[3] .. ' ', ' ' .. run[3] .. ' ', 1, true)
local limit = tonumber(run[5])
local beyond = limit and tonumber(ARGV[6]) >= limit
local attempt, attempts = tonumber(ARGV[8]), tonumber(run[6]) or 0
local stray = attempt and (attempt > attempts or (run[7] ~= 'accuracy' and attempt < attempts))
if run[1] ~= ARGV[1] or run[2] ~= ARGV[2] or closed or beyond or stray then
  return {0, run[1], run[2], run[3], run[5], stray and 1 or 0, run[6], run[7]}
end
"""

#: Store a batch, after checking that the run accepts it, in one call (a script runs
#: atomically: a retry after a lost connection finds all of it done or none of it, and a run
#: closed by a worker between the check and the writes cannot happen).
#:
#: KEYS: the run's hash, its samples hash, ``farm:ingest:counters``, the board's hash. ARGV:
#: the topic's agent and board, the closed run states (space-separated), the seqs
#: (space-separated), the records as one compact JSON array (``StorableBatch.body``), the
#: batch's highest seq, and the time now: the board's ``last_seen`` (a board streaming samples
#: is seen, even if its last status is minutes old; one HSET in the call ingest makes anyway).
#:
#: ARGV[8]: the batch's attempt ('' when it has none).
#:
#: Unless the run exists, is dispatched to that agent and board, is not closed, has no
#: ``seq_limit`` (set from the agent's ``started``) at or below the highest seq, and the
#: batch's attempt is one the run had (a timed run: its current one, since a timed run starts
#: over at each dispatch and an earlier attempt's timings are not this one's), nothing is
#: written and the reply is ``{0, agent, board, state, seq_limit, 1 if the attempt is refused
#: else 0, attempts, mode}`` (for :meth:`SampleStore.store` to name the reason). Otherwise
#: each record is written unless its seq is stored (the first value of a seq stays), the
#: run's ``done`` set to the samples stored, the counters incremented, and the reply is ``{1,
#: stored, benchmark, {positions of byte-equal duplicates}, {position, stored value, ...}}``:
#: the second list holds the seqs already stored (or earlier in the batch) with other bytes,
#: which ingest tells apart (an equal JSON value is a duplicate, any other a conflict) and
#: counts itself. Positions are 1-based.
#:
#: The records are split on ``},{``: a record holds numbers, booleans, nulls and arrays only
#: (:func:`check_splittable` refuses a schema with text or nested objects), so those three
#: characters occur only between two records.
#:
#: One script rather than HMGET + script + pipeline: each round trip costs ingest ~0.3 ms of
#: redis-py and event-loop time per batch. Rather than a pipeline of HSETNX: redis-py spends
#: tens of µs per command (or argument) on packing and parsing, ~10 ms for 200 samples. One
#: HMGET and one HSET per 1,000 records rather than an HSETNX per record: each
#: ``redis.call`` costs Redis ~2 µs, 0.6 ms of its CPU for 200 samples; at most 1,000 because
#: ``unpack`` puts every element on Lua's C stack (8,000 slots). Three keys in three hash
#: slots: on Redis Cluster this needs a hash tag per run and the counters written apart (the
#: controller's clients are not cluster clients today).
STORE_SAMPLES = (
    RUN_ACCEPTS
    + """
local seqs, records = {}, {}
for seq in string.gmatch(ARGV[4], '[^ ]+') do seqs[#seqs + 1] = seq end
local body, first = ARGV[5], 2
while true do
  local stop = string.find(body, '},{', first, true)
  if not stop then
    records[#records + 1] = string.sub(body, first, #body - 1)
    break
  end
  records[#records + 1] = string.sub(body, first, stop)
  first = stop + 2
end
if #seqs ~= #records then
  return redis.error_reply('store_samples: ' .. #seqs .. ' seqs, ' .. #records .. ' records')
end
local same, other, batch = {}, {}, {}
for low = 1, #seqs, 1000 do
  local high = math.min(low + 999, #seqs)
  local kept = redis.call('HMGET', KEYS[2], unpack(seqs, low, high))
  local writes = {}
  for i = low, high do
    -- A seq earlier in this batch is not written yet: its value is the one that stays.
    local value = batch[seqs[i]] or kept[i - low + 1]
    if not value then
      batch[seqs[i]] = records[i]
      writes[#writes + 1] = seqs[i]
      writes[#writes + 1] = records[i]
    elseif value == records[i] then
      same[#same + 1] = i
    else
      other[#other + 1] = i
      other[#other + 1] = value
    end
  end
  if #writes > 0 then redis.call('HSET', KEYS[2], unpack(writes)) end
end
local stored = redis.call('HLEN', KEYS[2])
redis.call('HSET', KEYS[1], 'done', stored)
redis.call('HSET', KEYS[4], 'last_seen', ARGV[7])
redis.call('HINCRBY', KEYS[3], 'accepted_sample_batch', 1)
local new = #seqs - #same - #other / 2
if new > 0 then redis.call('HINCRBY', KEYS[3], 'accepted_samples', new) end
if #same > 0 then redis.call('HINCRBY', KEYS[3], 'duplicate_samples', #same) end
return {1, stored, run[4], same, other}
"""
)
CLOSED_STATES = " ".join(sorted(keys.TERMINAL))


def split_records(body: bytes) -> list[str]:
    """The records of a ``StorableBatch.body`` array, one string each (as :data:`STORE_SAMPLES`
    splits them)."""
    text = body.decode()
    return ["{" + part + "}" for part in text[2:-2].split("},{")]


#: Core schema types a stored record may contain: no free text, no nested objects (see
#: :data:`STORE_SAMPLES` on splitting).
_RECORD_TYPES = frozenset({"int", "float", "bool", "nullable", "list", "tuple", "union"})
#: The one text a record may hold: a trace digest, hex digits only.
_SAFE_TEXT = frozenset({TRACE_DIGEST_PATTERN})


def check_splittable(record: dict[str, Any]) -> None:
    """Raise ``TypeError`` unless ``record`` (the core schema a sample record is decoded with:
    ``farm.messages.SampleBatchSchema.record_schema``) holds no text but hex digests and no
    nested objects (:data:`STORE_SAMPLES` splits the records on ``},{``) and no aliases."""

    def check(node: Any) -> None:
        if isinstance(node, list):
            for item in node:
                check(item)
        elif isinstance(node, dict):
            if node.get("type") == "str" and node.get("pattern") in _SAFE_TEXT:
                return
            if "type" in node and node["type"] not in _RECORD_TYPES | {"default"}:
                raise TypeError(f"a sample record holds {node['type']!r}: cannot be split")
            for value in node.values():
                check(value)

    for name, field in record["fields"].items():
        if "validation_alias" in field:
            raise TypeError(f"record field {name!r} has an alias: stored keys would differ")
        check(field["schema"])


check_splittable(SAMPLE_BATCH.record_schema)


def refused(topic: Topic, reply: list[Any], attempt: int | None, highest: int) -> Rejected:
    """Why :data:`RUN_ACCEPTS` refused a message of ``attempt`` with seqs up to ``highest``
    (``reply``, its answer); raises it if the run is not one that takes the topic's
    messages at all."""
    acceptance(topic, *reply[1:4])
    # Accepted but for its attempt or its seqs.
    _, _, _, _, limit, stray, attempts, mode = reply
    if stray:
        return Rejected(
            "wrong_attempt", f"attempt {attempt}'s message; the {mode} run is at {attempts}"
        )
    return Rejected("seq_out_of_range", f"seq {highest} >= the run's limit {limit}")


class RunScript:
    """A script that writes for a run after :data:`RUN_ACCEPTS` (``source``), called with the
    keys and arguments :data:`STORE_SAMPLES` documents, on the ledger's current client."""

    def __init__(self, ledger: Ledger, source: str) -> None:
        self.ledger = ledger
        self.source = source
        self._script: Any = None
        """The script registered with the client it was registered with."""

    async def __call__(
        self,
        topic: Topic,
        data: str,
        what: str,
        value: bytes,
        highest: int,
        attempt: int | None,
    ) -> list[Any]:
        """Run it for ``topic``'s run: ``data`` is the key it writes (KEYS[2]), ``what`` and
        ``value`` ARGV[4] and ARGV[5], ``highest`` the highest seq written."""
        assert topic.run is not None and topic.board is not None
        redis = self.ledger.redis
        if self._script is None or self._script.registered_client is not redis:
            # redis-py runs it with EVALSHA and loads it again after a Redis restart.
            self._script = redis.register_script(self.source)
        reply: list[Any] = await self._script(
            keys=[keys.run(topic.run), data, keys.INGEST_COUNTERS, keys.board(topic.board)],
            args=[
                topic.agent,
                topic.board,
                CLOSED_STATES,
                what,
                value,
                highest,
                repr(time.time()),
                "" if attempt is None else attempt,
            ],
        )
        return reply


class SampleStore:
    """The sample batches' handler: :meth:`store` writes one batch to Redis and counts it in
    ``ledger``, observes the new samples' latencies in ``metrics`` and logs conflicts (at
    most one line a second, through ``throttle``)."""

    def __init__(self, ledger: Ledger, metrics: IngestMetrics, throttle: Throttle) -> None:
        self.ledger = ledger
        self.metrics = metrics
        self.throttle = throttle
        self._script = RunScript(ledger, STORE_SAMPLES)

    async def store(self, topic: Topic, batch: StorableBatch) -> None:
        """Store a batch (from :func:`controller.ingest.parse.parse_sample_batch`) and count
        it: one Redis call in the common case (:data:`STORE_SAMPLES`), a second one only when
        a seq was already stored with other bytes."""
        assert topic.run is not None
        highest = max(batch.seqs)
        if highest >= MAX_RUN_SAMPLES:
            raise Rejected("seq_out_of_range", f"seq {highest} >= {MAX_RUN_SAMPLES}")
        reply = await self._script(
            topic,
            keys.run_samples(topic.run),
            " ".join(map(str, batch.seqs)),
            batch.body,
            highest,
            batch.attempt,
        )
        if reply[0] == 0:
            raise refused(topic, reply, batch.attempt, highest)
        _, _, benchmark, same, other = reply
        # Redis has counted these (the script did, atomically with the writes).
        new = len(batch.seqs) - len(same) - len(other) // 2
        self.ledger.counters.update(
            {
                k: v
                for k, v in (
                    ("accepted_sample_batch", 1),
                    ("accepted_samples", new),
                    ("duplicate_samples", len(same)),
                )
                if v
            }
        )
        # The latency histogram sees each sample once: the newly stored ones (now, before
        # another round trip: a retry of this message would find them stored).
        latencies = batch.latencies_us
        if same or other:
            kept = {*same, *other[::2]}
            latencies = [v for i, v in enumerate(latencies, 1) if i not in kept]
        self.metrics.observe_latencies(topic.board, benchmark, latencies)
        if other:
            await self._differing(topic, split_records(batch.body), other)

    async def _differing(self, topic: Topic, values: list[str], other: list[Any]) -> None:
        """Count the seqs the store script found stored with other bytes: an equal JSON value
        (1 and 1.0, or a record another version of ingest encoded) is a duplicate, any other
        a conflict (the first value stays)."""
        duplicates = conflicts = 0
        for position, kept in zip(other[::2], other[1::2], strict=True):
            value = values[int(position) - 1]
            if json.loads(kept) == json.loads(value):
                duplicates += 1
                continue
            conflicts += 1
            if (skipped := self.throttle.allow("conflicting_sample")) is not None:
                log.warning(
                    "conflicting_sample",
                    run=topic.run,
                    seq=json.loads(value)["seq"],
                    agent=topic.agent,
                    board=topic.board,
                    kept="first",
                    suppressed=skipped,
                )
        await self.ledger.commit(
            None, {"duplicate_samples": duplicates, "conflicting_samples": conflicts}
        )
