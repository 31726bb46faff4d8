"""``farm controller ingest``: the agents' MQTT messages into Redis.

One :class:`Ingest` subscribes to every agent topic (``farm/v1/agent/#``, by default as a
member of the shared subscription ``$share/farm-ingest/...``, so several ingest processes split
the stream) with a persistent session, and for every message:

1. parses the topic (:func:`farm.messages.parse_topic`), caps the payload size, parses the
   JSON and validates it, strictly, with the topic's pydantic model (sample batches, most of
   the traffic, in one pass that also yields what is stored: :func:`parse_sample_batch`);
   the ids in the message must be the topic's;
2. accepts samples and run events only for a run dispatched to that agent and board and not
   closed, and stores samples with ``HSETNX`` keyed by (run, seq): a replay or a duplicate
   changes nothing, a conflicting value keeps the first one and is counted (a batch is
   checked, stored and counted by one Lua script: ``_STORE_SAMPLES``);
3. tracks agents and boards (retained statuses, wills, heartbeats) and keeps the agents'
   command acks;
4. counts every outcome in ``farm:ingest:counters`` (and in :attr:`Ingest.counters`).

**Several messages at once.** Up to :data:`MAX_IN_FLIGHT` messages are handled concurrently
(:class:`InOrder`), so that one message's Redis round trips overlap the next one's parsing;
the messages of one run, and those of one agent outside runs, are still handled one after the
other in the order received.

A message that is rejected is counted by reason and logged (at most one warning per reason
per second); an exception while handling one is counted ``rejected_internal`` and the loop
goes on: ingest never stops on input.

**Acknowledgement after storing.** The client acknowledges a QoS 1 message (PUBACK) only
after it has been handled, not on receipt (paho's manual acks), and in the order the messages
were received (MQTT 3.1.1 §4.6), whatever order they were handled in: if Redis is unreachable the
message is retried with backoff until Redis is back, and if ingest dies meanwhile, the broker
still holds the message and delivers it again on the next connection of the same client id
(persistent session). Memory stays bounded during an outage: the broker sends no more than
its ``max_inflight_messages`` unacknowledged QoS 1 messages and queues the rest on its side;
QoS 0 messages (heartbeats) beyond :data:`QOS0_QUEUE_LIMIT` waiting are dropped. Messages
still queued locally when the connection drops are discarded before reconnecting: they were
not acknowledged, so the broker sends them again.

Measured with mosquitto 2.0.11 (what the tests run): a shared-subscription member whose
process stopped keeps getting its round-robin share queued in its session, delivered when a
process with its client id returns (so restart ingest processes, and clear the session of one
retired for good); but after a *broker* restart a shared subscription is not restored from
persistence until its member subscribes again, and messages published in that gap reach no
ingest (a plain subscription, ``share=False``, is restored and queues them).

Redis writes are idempotent, so a message handled twice (redelivered after a crash between
storing and acknowledging, or a store retried after its reply was lost) changes no data;
only counters may count it twice: ``accepted_sample_batch`` again and its samples as
duplicates (and the latency histogram, which sees only newly stored samples, then misses
them).

Completion is not decided here: the worker compares the stored samples with the agent's
``done`` (count and digest).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import operator
import random
import re
import signal
import socket
import ssl
import time
import uuid
from collections import Counter
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

import aiomqtt
import pydantic_core
import redis.asyncio as aioredis
import redis.exceptions as redis_errors
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff

from controller import keys
from controller.ingest.acks import QOS0_QUEUE_LIMIT, IncomingQueue, ManualAcks
from controller.ingest.ordering import InOrder, order_key
from controller.ingest.parse import (
    LABELS,
    Rejected,
    acceptance,
    check_ids,
    parse_json,
    parse_sample_batch,
    validate,
)
from controller.ingest.throttle import Throttle
from controller.metrics import DEFAULT_ADDR, IngestMetrics
from controller.settings import Settings
from farm.backoff import Backoff
from farm.logs import get_logger
from farm.messages import (
    ID_PATTERN,
    MAX_RUN_SAMPLES,
    PROTOCOL_VERSION,
    AgentStatus,
    BoardStatus,
    RefuseCommand,
    Topic,
    command_topic,
    parse_topic,
)

log = get_logger("controller.ingest.service")

#: Larger payloads are rejected unread (an energy window's power trace is the largest
#: legitimate message: a few MiB).
MAX_PAYLOAD_BYTES = 8 * 1024 * 1024
#: Run events after which the agent sends nothing more for that execution of the run.
FINAL_EVENTS = frozenset({"done", "error", "cancelled", "interrupted"})
#: Attempts at an optimistic (WATCH) update of a run hash that other writers keep changing.
WATCH_ATTEMPTS = 50
#: Messages handled at once (by default): messages of different runs (or agents) overlap, so
#: one's Redis round trip is not idle time for the next one's parsing. Bounded: each holds its
#: payload and a Redis connection, and the broker's in-flight window (``max_inflight_messages``,
#: 20 by default in Mosquitto) caps the unacknowledged QoS 1 messages anyway.
MAX_IN_FLIGHT = 16
#: How long publishing a refuse command may wait for the broker.
PUBLISH_TIMEOUT_S = 10.0
#: Redis errors that mean "not now" rather than "never": the message is retried.
TRANSIENT_REDIS_ERRORS: tuple[type[Exception], ...] = (
    redis_errors.ConnectionError,  # includes BusyLoadingError (Redis loading its AOF)
    redis_errors.TimeoutError,
    redis_errors.ReadOnlyError,  # a replica during a failover
    redis_errors.OutOfMemoryError,  # the operator must act; the broker holds the backlog
    redis_errors.TryAgainError,
    redis_errors.ClusterDownError,
)

_ID = re.compile(ID_PATTERN)

#: Store a batch, after checking that the run accepts it, in one call (a script runs
#: atomically: a retry after a lost connection finds all of it done or none of it, and a run
#: closed by a worker between the check and the writes cannot happen).
#:
#: KEYS: the run's hash, its samples hash, ``farm:ingest:counters``. ARGV: the topic's agent
#: and board, the closed run states (space-separated), the seqs (space-separated), and the
#: records as one compact JSON array (see :func:`encode_records`).
#:
#: Unless the run exists, is dispatched to that agent and board and is not closed, nothing is
#: written and the reply is ``{0, agent, board, state}`` (the run's fields, for
#: :func:`acceptance` to name the reason). Otherwise each record is written with ``HSETNX``
#: (the first value of a seq stays), the run's ``done`` set to the samples stored, the
#: counters incremented, and the reply is ``{1, stored, benchmark, {positions of byte-equal
#: duplicates}, {position, stored value, ...}}``: the second list holds the seqs already
#: stored with other bytes, which ingest tells apart (an equal JSON value is a duplicate, any
#: other a conflict) and counts itself. Positions are 1-based.
#:
#: The records are split on ``},{``: a record holds numbers, booleans, nulls and arrays only
#: (:func:`_record_schema` refuses a schema with text or nested objects), so those three
#: characters occur only between two records.
#:
#: One script rather than HMGET + script + pipeline: each round trip costs ingest ~0.3 ms of
#: redis-py and event-loop time per batch. Rather than a pipeline of HSETNX: redis-py spends
#: tens of µs per command (or argument) on packing and parsing, ~10 ms for 200 samples. Three
#: keys in three hash slots: on Redis Cluster this needs a hash tag per run and the counters
#: written apart (the controller's clients are not cluster clients today).
_STORE_SAMPLES = """
local run = redis.call('HMGET', KEYS[1], 'agent', 'board', 'state', 'benchmark')
local closed = run[3] and string.find(' ' .. ARGV[3] .. ' ', ' ' .. run[3] .. ' ', 1, true)
if run[1] ~= ARGV[1] or run[2] ~= ARGV[2] or closed then
  return {0, run[1], run[2], run[3]}
end
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
local same, other = {}, {}
for i = 1, #seqs do
  if redis.call('HSETNX', KEYS[2], seqs[i], records[i]) == 0 then
    local kept = redis.call('HGET', KEYS[2], seqs[i])
    if kept == records[i] then
      same[#same + 1] = i
    else
      other[#other + 1] = i
      other[#other + 1] = kept
    end
  end
end
local stored = redis.call('HLEN', KEYS[2])
redis.call('HSET', KEYS[1], 'done', stored)
redis.call('HINCRBY', KEYS[3], 'accepted_sample_batch', 1)
local new = #seqs - #same - #other / 2
if new > 0 then redis.call('HINCRBY', KEYS[3], 'accepted_samples', new) end
if #same > 0 then redis.call('HINCRBY', KEYS[3], 'duplicate_samples', #same) end
return {1, stored, run[4], same, other}
"""
_CLOSED_STATES = " ".join(sorted(keys.TERMINAL))
_SEQ = operator.itemgetter("seq")


def encode_records(records: list[dict[str, Any]]) -> bytes:
    """Records from :func:`parse_sample_batch` as one compact JSON array, each record as it is
    stored: its JSON values unchanged, every null-default field stated, keys sorted, no
    whitespace, so two receipts of one sample are the same bytes (and receipts with different
    values are not). One call in Rust for the whole batch."""
    return pydantic_core.to_json(records)


def split_records(body: bytes) -> list[str]:
    """The records of :func:`encode_records`'s array, one string each (as ``_STORE_SAMPLES``
    splits them)."""
    text = body.decode()
    return ["{" + part + "}" for part in text[2:-2].split("},{")]


def default_client_id(instance: int = 0) -> str:
    """``farm-ingest-<hostname>-<instance>``: stable across restarts, so the broker keeps the
    session (and the messages queued for it) while the process is away."""
    host = re.sub(r"[^A-Za-z0-9_.-]", "-", socket.gethostname()) or "host"
    return f"farm-ingest-{host}-{instance}"


def subscription(group: str, share: bool) -> str:
    """The topic filter: a shared subscription in ``group``, or the plain filter for brokers
    without shared subscriptions (then run a single ingest process)."""
    if not share:
        return "farm/v1/agent/#"
    if not group or any(c in group for c in "/+#"):
        raise ValueError(f"invalid shared subscription group {group!r}")
    return f"$share/{group}/farm/v1/agent/#"


def _event_time(text: str | None) -> float:
    """The ``time`` of a stored event (JSON), or -inf when there is none to compare with."""
    if not text:
        return float("-inf")
    with contextlib.suppress(ValueError, TypeError, AttributeError):
        value = json.loads(text).get("time")
        if isinstance(value, int | float):
            return float(value)
    return float("-inf")


class Ingest:
    """The ingest service (see the module docstring). :meth:`run` serves until cancelled.

    ``group``/``share``: the shared subscription group, or a plain subscription;
    ``client_id`` (default :func:`default_client_id` of ``instance``): the persistent session;
    ``redis``: a client to use instead of one made from ``settings`` (it must decode
    responses); ``max_payload``: larger messages are rejected unread; ``concurrency``: how
    many messages are handled at once (see :class:`InOrder`; 1 handles them one by one)."""

    def __init__(
        self,
        settings: Settings,
        *,
        group: str = "farm-ingest",
        share: bool = True,
        client_id: str | None = None,
        instance: int = 0,
        redis: aioredis.Redis | None = None,
        max_payload: int = MAX_PAYLOAD_BYTES,
        qos0_queue_limit: int = QOS0_QUEUE_LIMIT,
        concurrency: int = MAX_IN_FLIGHT,
    ) -> None:
        if concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, not {concurrency}")
        if redis is not None and not redis.connection_pool.connection_kwargs.get(
            "decode_responses"
        ):
            raise ValueError("the Redis client must be made with decode_responses=True")
        self.settings = settings
        self.topic_filter = subscription(group, share)
        self.client_id = client_id or default_client_id(instance)
        self.max_payload = max_payload
        self.concurrency = concurrency
        self.counters: Counter[str] = Counter()
        """Everything counted since start (Redis has the totals over all processes)."""
        self.subscribed = asyncio.Event()
        """Set while connected and subscribed."""
        self._redis = redis
        self._owns_redis = redis is None
        self._queue = IncomingQueue(qos0_queue_limit, self.counters)
        self._client: aiomqtt.Client | None = None
        self._refused: dict[str, str] = {}
        """Agent -> the connection (its ``started``) already refused: one refuse each."""
        self._throttle = Throttle()
        self._store: Any = None
        """The registered ``_STORE_SAMPLES`` script (needs the Redis client)."""
        self.metrics = IngestMetrics(self.counters, self._queue.qsize)
        """This process's Prometheus metrics (served by :func:`main` with a metrics port)."""

    # -- lifecycle ------------------------------------------------------------------------------

    @property
    def redis(self) -> aioredis.Redis:
        """The Redis client (made by :meth:`run` unless one was given)."""
        if self._redis is None:
            raise RuntimeError("Ingest.run() has not started")
        return self._redis

    async def run(self) -> None:
        """Connect, subscribe and handle messages until cancelled; reconnect with backoff when
        the broker goes away. Redis outages are ridden out message by message."""
        if self._redis is None:
            self._redis = aioredis.Redis.from_url(
                self.settings.redis_url,
                decode_responses=True,
                socket_timeout=10,
                socket_connect_timeout=5,
                health_check_interval=30,
                # Short in-client retries: the outer loop (``_process``) owns the long wait.
                retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), 2),
            )
        client = self._client = self._make_client()
        acks = ManualAcks(client)
        backoff = Backoff(base_s=0.5, cap_s=30.0)
        try:
            while True:
                self._queue.discard()
                try:
                    async with client:
                        await client.subscribe(self.topic_filter, qos=1)
                        backoff.reset()
                        self.subscribed.set()
                        host, port = self.settings.broker_host_port
                        log.info(
                            "ingest_subscribed",
                            broker=f"{host}:{port}",
                            client_id=self.client_id,
                            filter=self.topic_filter,
                            manual_ack=acks.enabled,
                            concurrency=self.concurrency,
                        )
                        await self._serve(client, acks)
                except aiomqtt.MqttError as exc:
                    self.subscribed.clear()
                    delay = backoff.next_delay()
                    log.warning("broker_unavailable", error=str(exc), retry_in_s=round(delay, 1))
                    await asyncio.sleep(delay)
        finally:
            self.subscribed.clear()
            log.info("ingest_stopped", counters=dict(self.counters))
            if self._owns_redis and self._redis is not None:
                await self._redis.aclose()
                self._redis = self._store = None

    async def _serve(self, client: aiomqtt.Client, acks: ManualAcks) -> None:
        """Hand every message of this connection to an :class:`InOrder` until the connection
        is lost (``MqttError``) or the task cancelled."""
        in_order = InOrder(self.concurrency, self._process, acks.ack)
        try:
            async for message in client.messages:
                await in_order.submit(order_key(str(message.topic)), message)
        finally:
            await in_order.close()

    def _make_client(self) -> aiomqtt.Client:
        host, port = self.settings.broker_host_port
        username, password = self.settings.broker_credentials
        tls = None
        if urlsplit(self.settings.broker_url).scheme == "mqtts":
            tls = ssl.create_default_context()
        return aiomqtt.Client(
            host,
            port,
            username=username,
            password=password,
            identifier=self.client_id,
            clean_session=False,
            keepalive=30,
            timeout=10.0,
            tls_context=tls,
            # aiomqtt calls this with maxsize=...: one queue, kept across reconnects.
            queue_type=lambda maxsize=0: self._queue,  # type: ignore[arg-type]
        )

    # -- one message ----------------------------------------------------------------------------

    async def _process(self, message: aiomqtt.Message) -> None:
        """Handle one message (its acknowledgement is :class:`InOrder`'s); never raises
        (except on cancellation)."""
        topic = str(message.topic)
        payload = message.payload
        if isinstance(payload, str):
            payload = payload.encode()
        elif not isinstance(payload, bytes | bytearray):
            payload = b"" if payload is None else str(payload).encode()
        backoff = Backoff(base_s=0.1, cap_s=5.0)
        while True:
            try:
                await self.handle(topic, bytes(payload), retained=message.retain)
                break
            except TRANSIENT_REDIS_ERRORS as exc:
                # Not acknowledged yet: retried here, or redelivered to whoever holds this
                # client id next if this process stops meanwhile.
                delay = backoff.next_delay()
                self.counters["redis_retries"] += 1
                if (skipped := self._throttle.allow("redis_unavailable")) is not None:
                    log.warning(
                        "redis_unavailable",
                        error=str(exc),
                        topic=topic[:200],
                        retry_in_s=round(delay, 2),
                        suppressed=skipped,
                    )
                await asyncio.sleep(delay)
            except Exception:
                self.counters["rejected_internal"] += 1
                if (skipped := self._throttle.allow("internal")) is not None:
                    log.exception(
                        "message_rejected", reason="internal", topic=topic[:200], suppressed=skipped
                    )
                with contextlib.suppress(Exception):
                    await self.redis.hincrby(keys.INGEST_COUNTERS, "rejected_internal", 1)
                break
        self.counters["handled"] += 1

    async def handle(self, topic_name: str, payload: bytes, *, retained: bool = False) -> None:
        """Validate and store one message; a rejection is counted and logged. Raises only
        Redis errors (the caller retries) and bugs."""
        try:
            await self._dispatch(topic_name, payload, retained)
        except Rejected as rejected:
            await self._commit(None, {f"rejected_{rejected.reason}": 1})
            if (skipped := self._throttle.allow(rejected.reason)) is not None:
                log.warning(
                    "message_rejected",
                    reason=rejected.reason,
                    topic=topic_name[:200],
                    detail=rejected.detail[:500],
                    suppressed=skipped,
                )

    async def _dispatch(self, topic_name: str, payload: bytes, retained: bool) -> None:
        topic = parse_topic(topic_name)
        if topic is None:
            raise Rejected("bad_topic", "not an agent topic")
        label = LABELS[topic.kind]
        if not payload and topic.kind in ("status", "board_status"):
            # A retained status being cleared (an operator retiring an agent or a board):
            # nothing to store, nothing wrong.
            await self._commit(None, {f"cleared_{label}": 1})
            return
        if len(payload) > self.max_payload:
            raise Rejected("too_large", f"{len(payload)} bytes > {self.max_payload}")
        if topic.kind == "samples":
            # Most of the traffic: parsed and validated in one pass, to what is stored.
            batch = parse_sample_batch(payload)
            check_ids(topic, batch["agent"], batch["board"], batch["run"])
            await self._samples(topic, batch["samples"])
            return
        raw = parse_json(payload)
        try:
            message = validate(topic.kind, payload)
        except Rejected:
            if topic.kind == "status":
                await self._refuse_unreadable(topic, raw)
            raise
        check_ids(
            topic,
            message.agent,
            getattr(message, "board", None) if topic.board is not None else None,
            getattr(message, "run", None) if topic.run is not None else None,
        )
        text = payload.decode()
        if topic.kind == "run_events":
            await self._run_event(topic, message, text)
        elif topic.kind == "status":
            await self._agent_status(topic, message, text, retained)
        elif topic.kind == "heartbeat":
            await self._heartbeat(topic, text)
        elif topic.kind == "board_status":
            await self._board_status(topic, message, text, retained)
        else:
            await self._command_ack(topic, text)

    async def _commit(self, pipe: Any | None, counts: Mapping[str, int]) -> list[Any]:
        """Execute ``pipe`` (if any) with the counter increments appended; count locally
        only once Redis has them, so a retried message is not counted twice here."""
        own = pipe is None
        if own:
            pipe = self.redis.pipeline(transaction=False)
        try:
            for name, value in counts.items():
                if value:
                    pipe.hincrby(keys.INGEST_COUNTERS, name, value)
            results = await pipe.execute()
        finally:
            if own:
                await pipe.reset()
        self.counters.update({k: v for k, v in counts.items() if v})
        return results

    # -- samples --------------------------------------------------------------------------------

    async def _samples(self, topic: Topic, records: list[dict[str, Any]]) -> None:
        """Store a batch (records from :func:`parse_sample_batch`) and count it: one Redis
        call in the common case (``_STORE_SAMPLES``), a second one only when a seq was
        already stored with other bytes."""
        assert topic.run is not None
        seqs = list(map(_SEQ, records))
        if max(seqs) >= MAX_RUN_SAMPLES:
            raise Rejected("seq_out_of_range", f"seq {max(seqs)} >= {MAX_RUN_SAMPLES}")
        body = encode_records(records)
        if self._store is None:
            # redis-py runs it with EVALSHA and loads it again after a Redis restart.
            self._store = self.redis.register_script(_STORE_SAMPLES)
        reply = await self._store(
            keys=[keys.run(topic.run), keys.run_samples(topic.run), keys.INGEST_COUNTERS],
            args=[
                topic.agent,
                topic.board,
                _CLOSED_STATES,
                " ".join(map(str, seqs)),
                body,
            ],
        )
        if reply[0] == 0:
            acceptance(topic, *reply[1:4])
            raise RuntimeError(f"run {topic.run}: refused by the store script, not by ingest")
        _, _, benchmark, same, other = reply
        # Redis has counted these (the script did, atomically with the writes).
        new = len(records) - len(same) - len(other) // 2
        self.counters.update(
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
        fresh = records
        if same or other:
            kept = {*same, *other[::2]}
            fresh = [r for i, r in enumerate(records, 1) if i not in kept]
        self.metrics.observe_samples(topic.board, benchmark, fresh)
        if other:
            await self._differing(topic, split_records(body), other)

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
            if (skipped := self._throttle.allow("conflicting_sample")) is not None:
                log.warning(
                    "conflicting_sample",
                    run=topic.run,
                    seq=json.loads(value)["seq"],
                    agent=topic.agent,
                    board=topic.board,
                    kept="first",
                    suppressed=skipped,
                )
        await self._commit(
            None, {"duplicate_samples": duplicates, "conflicting_samples": conflicts}
        )

    # -- run events -----------------------------------------------------------------------------

    async def _run_event(self, topic: Topic, event: Any, text: str) -> None:
        assert topic.run is not None
        run_key = keys.run(topic.run)
        events_key = keys.run_events(topic.run)
        # Optimistic transaction: the state change (dispatched -> running) and the `final`
        # field must not overwrite what a worker writes meanwhile.
        async with self.redis.pipeline(transaction=True) as pipe:
            for _ in range(WATCH_ATTEMPTS):
                try:
                    await pipe.watch(run_key)
                    agent, board, state, final = await pipe.hmget(
                        run_key, ["agent", "board", "state", "final"]
                    )
                    acceptance(topic, agent, board, state)
                    updates = self._event_updates(event, state, final, text)
                    pipe.multi()
                    pipe.rpush(events_key, text)
                    # Newest kept; the final event also lives in the run's `final` field.
                    pipe.ltrim(events_key, -keys.EVENTS_KEPT, -1)
                    if updates:
                        pipe.hset(run_key, mapping=updates)
                    await self._commit(pipe, {"accepted_run_event": 1})
                except redis_errors.WatchError:
                    # A busy run (samples update `done`): try again a moment later.
                    await asyncio.sleep(random.uniform(0, 0.005))
                    continue
                if updates.get("state") == "running":
                    log.info("run_started", run=topic.run, agent=topic.agent)
                return
        raise RuntimeError(f"run {topic.run} changed {WATCH_ATTEMPTS} times during an update")

    @staticmethod
    def _event_updates(
        event: Any, state: str | None, final: str | None, text: str
    ) -> dict[str, str | int | float]:
        """The run-hash fields an event sets (given the run's state and stored final event)."""
        updates: dict[str, str | int | float] = {}
        live = state in ("dispatched", "running")
        if event.event == "started" and live:
            if state == "dispatched":
                updates["state"] = "running"
            updates["started_at"] = event.time
            if event.total is not None:
                updates["total"] = event.total
            if event.eta_s is not None:
                updates["eta_s"] = event.eta_s
        elif event.event == "progress" and live:
            updates["progress"] = event.done
            if event.total is not None:
                updates["total"] = event.total
            if event.eta_s is not None:
                updates["eta_s"] = event.eta_s
        elif event.event in FINAL_EVENTS and event.time >= _event_time(final):
            # The latest one wins: a resent older `done` must not hide a newer `interrupted`.
            updates["final"] = text
        return updates

    # -- agents and boards ----------------------------------------------------------------------

    @staticmethod
    def _seen(message_time: float, retained: bool) -> float:
        """When the agent was last seen: now, except for a retained message replayed at
        subscription (its own time, so a restarted ingest does not make every agent look
        freshly seen)."""
        now = time.time()
        return min(now, message_time) if retained else now

    async def _agent_status(
        self, topic: Topic, status: AgentStatus, text: str, retained: bool
    ) -> None:
        stored = await self.redis.hget(keys.agent(topic.agent), "status")
        if stored and status.started is not None:
            # A status of an earlier run of the agent (a retained one, or one a persistent
            # session kept) must not overwrite the running agent's: e.g. its old "offline".
            previous = json.loads(stored).get("started")
            if previous is not None and status.started < previous:
                raise Rejected(
                    "stale_agent_status", f"agent {topic.agent}: status of an earlier start"
                )
        pipe = self.redis.pipeline(transaction=False)
        pipe.hset(
            keys.agent(topic.agent),
            mapping={
                "state": status.state,
                "protocol": status.protocol,
                "software": status.software or "",
                "status": text,
                "last_seen": self._seen(status.time, retained),
            },
        )
        pipe.sadd(keys.AGENTS, topic.agent)
        await self._commit(pipe, {"accepted_agent_status": 1})
        if status.state != "online":
            log.info("agent_state", agent=topic.agent, state=status.state)
            return
        if status.protocol != PROTOCOL_VERSION:
            await self._refuse(topic.agent, status.protocol, repr(status.started or status.time))
        else:
            self._refused.pop(topic.agent, None)

    async def _refuse_unreadable(self, topic: Topic, raw: Any) -> None:
        """An agent of another protocol version may well send a status this version cannot
        validate: refuse it all the same if it says it is online under another protocol."""
        if not isinstance(raw, dict) or raw.get("state") != "online":
            return
        protocol = raw.get("protocol")
        if not isinstance(protocol, int) or isinstance(protocol, bool):
            return
        if protocol != PROTOCOL_VERSION and _ID.match(topic.agent):
            await self._refuse(topic.agent, protocol, repr(raw.get("started") or raw.get("time")))

    async def _refuse(self, agent: str, protocol: int, connection: str) -> None:
        """Tell an incompatible agent so (once per agent process start)."""
        if self._refused.get(agent) == connection or self._client is None:
            return
        reason = f"agent protocol {protocol}, controller speaks {PROTOCOL_VERSION}"
        command = RefuseCommand(id=f"refuse-{uuid.uuid4().hex}", type="refuse", reason=reason)
        try:
            await self._client.publish(
                command_topic(agent), command.dumps(), qos=1, timeout=PUBLISH_TIMEOUT_S
            )
        except aiomqtt.MqttError as exc:
            # Not marked: the agent's next online status tries again.
            log.warning("refuse_failed", agent=agent, error=str(exc))
            return
        self._refused[agent] = connection
        await self._commit(None, {"refused_agents": 1})
        log.warning("agent_refused", agent=agent, reason=reason, command=command.id)

    async def _heartbeat(self, topic: Topic, text: str) -> None:
        pipe = self.redis.pipeline(transaction=False)
        pipe.hset(keys.agent(topic.agent), mapping={"last_seen": time.time(), "heartbeat": text})
        pipe.sadd(keys.AGENTS, topic.agent)
        await self._commit(pipe, {"accepted_heartbeat": 1})

    async def _board_status(
        self, topic: Topic, status: BoardStatus, text: str, retained: bool
    ) -> None:
        assert topic.board is not None
        board_key = keys.board(topic.board)
        owner, stored = await self.redis.hmget(board_key, ["agent", "status"])
        if stored and owner == topic.agent and json.loads(stored).get("time", 0) > status.time:
            # Statuses replayed from a persistent session may arrive after newer ones.
            raise Rejected("stale_board_status", f"board {topic.board}: an older status")
        if owner and owner != topic.agent:
            owner_state = await self.redis.hget(keys.agent(owner), "state")
            if owner_state == "online":
                raise Rejected(
                    "board_conflict", f"board {topic.board} belongs to online agent {owner}"
                )
            # A retained status a dead agent left long ago must not take a board back from
            # the agent that reported it since (their statuses can arrive in any order).
            if stored and json.loads(stored).get("time", 0) > status.time:
                raise Rejected(
                    "stale_board_status",
                    f"board {topic.board}: agent {topic.agent}'s status is older than {owner}'s",
                )
            log.info("board_moved", board=topic.board, from_agent=owner, to_agent=topic.agent)
        pipe = self.redis.pipeline(transaction=False)
        pipe.hset(
            board_key,
            mapping={
                "agent": topic.agent,
                "status": text,
                "last_seen": self._seen(status.time, retained),
            },
        )
        pipe.sadd(keys.BOARDS, topic.board)
        await self._commit(pipe, {"accepted_board_status": 1})

    async def _command_ack(self, topic: Topic, text: str) -> None:
        acks_key = keys.agent_acks(topic.agent)
        pipe = self.redis.pipeline(transaction=False)
        pipe.rpush(acks_key, text)
        pipe.ltrim(acks_key, -keys.ACKS_KEPT, -1)
        await self._commit(pipe, {"accepted_command_ack": 1})


async def main(
    settings: Settings,
    *,
    group: str = "farm-ingest",
    share: bool = True,
    client_id: str | None = None,
    instance: int = 0,
    metrics_port: int | None = None,
    metrics_addr: str = DEFAULT_ADDR,
    concurrency: int = MAX_IN_FLIGHT,
) -> int:
    """``farm controller ingest``: serve until SIGINT or SIGTERM; the exit status.

    ``instance`` tells apart several ingest processes on one host (each needs its own stable
    client id); ``client_id`` overrides the id altogether. With ``metrics_port``, the
    process's counters and latency histogram are served on ``metrics_addr:metrics_port``.
    ``concurrency``: messages handled at once (:data:`MAX_IN_FLIGHT`)."""
    try:
        ingest = Ingest(
            settings,
            group=group,
            share=share,
            client_id=client_id,
            instance=instance,
            concurrency=concurrency,
        )
    except ValueError as exc:
        log.error("ingest_config_error", error=str(exc))
        return 2
    if metrics_port is not None:
        try:
            port = ingest.metrics.serve(metrics_port, metrics_addr)
        except OSError as exc:
            log.error("ingest_metrics_bind_failed", port=metrics_port, error=str(exc))
            return 2
        log.info("ingest_metrics_serving", addr=metrics_addr, port=port)
    loop = asyncio.get_running_loop()
    task = loop.create_task(ingest.run(), name="ingest")
    handled: list[signal.Signals] = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, task.cancel)
            handled.append(sig)
    try:
        await task
    except asyncio.CancelledError:
        current = asyncio.current_task()
        if current is not None and current.cancelling():
            raise  # main itself was cancelled, not stopped by a signal
    finally:
        for sig in handled:
            loop.remove_signal_handler(sig)
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        ingest.metrics.close()
    return 0
