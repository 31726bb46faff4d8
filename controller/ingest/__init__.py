"""``farm controller ingest``: the agents' MQTT messages into Redis.

One :class:`Ingest` subscribes to every agent topic (``farm/v1/agent/#``, a plain subscription
by default; with ``share``, the non-retained topics as a member of a shared subscription
``$share/<group>/...``, so several ingest processes split them, and the statuses still
plainly) with a persistent session (with a ``partition``, several processes each subscribe
plainly and handle only their share of the runs, agents and statuses:
:class:`~controller.ingest.ordering.Partition`), and for every message:

1. parses the topic (:func:`farm.messages.parse_topic`), caps the payload size, parses the
   JSON and validates it, strictly, with the topic's pydantic model (sample batches, most of
   the traffic, in one pass that also yields what is stored: :func:`parse_sample_batch`);
   the ids in the message must be the topic's;
2. accepts samples and run events only for a run dispatched to that agent and board and not
   closed (and samples only with seqs below the run's ``seq_limit``, which the agent's
   ``started`` gives when it is known), and stores samples with ``HSETNX`` keyed by
   (run, seq): a replay or a duplicate changes nothing, a conflicting value keeps the first
   one and is counted (a batch is checked, stored and counted by one Lua script:
   :data:`STORE_SAMPLES`); the chunks of a power trace sent apart from its record
   (``farm.trace``) alike, keyed by (run, seq, chunk);
3. tracks agents and boards (retained statuses, wills, heartbeats) and keeps the agents'
   command acks;
4. counts every outcome in ``farm:ingest:counters`` (and in :attr:`Ingest.counters`).

**Several messages at once.** Up to ``MAX_IN_FLIGHT`` messages are handled concurrently
(:class:`~controller.ingest.ordering.InOrder`), so that one message's Redis round trips
overlap the next one's parsing; the messages of one run, and those of one agent outside runs,
are still handled one after the other in the order received.

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
QoS 0 messages (heartbeats) beyond ``QOS0_QUEUE_LIMIT`` waiting are dropped. Messages
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

The modules, one job each:

* :mod:`~controller.ingest.service`: the MQTT connection, retries, :func:`main`;
* :mod:`~controller.ingest.ordering`: the in-order executor;
* :mod:`~controller.ingest.acks`: acknowledgement after storing (and the receive queue);
* :mod:`~controller.ingest.handlers`: one message dispatched by topic kind, to
  :mod:`~controller.ingest.store` (sample batches), :mod:`~controller.ingest.traces` (trace
  chunks), :mod:`~controller.ingest.run_events` and
  :mod:`~controller.ingest.agents` (statuses, heartbeats, command acks);
* :mod:`~controller.ingest.parse`: parsing, validation and the checks that reject a message;
* :mod:`~controller.ingest.ledger`: the Redis client and the outcome counters;
* :mod:`~controller.ingest.throttle`: log throttling.
"""

# What other code imported from the single module this package replaces.
from controller.ingest.parse import Rejected, parse_sample_batch
from controller.ingest.service import Ingest, main
from controller.ingest.store import split_records

__all__ = [
    "Ingest",
    "Rejected",
    "main",
    "parse_sample_batch",
    "split_records",
]
