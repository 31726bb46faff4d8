"""Everything the agent must not lose goes out through the journal.

``Outbox.put`` stores a message in the journal; ``Outbox.pump`` (one per connection) publishes
what is stored, in journal order, at QoS 1 with a bounded number in flight, and deletes each
entry once the broker has acknowledged it. If the connection drops, whatever was not
acknowledged stays in the journal and the next connection's pump sends it again from the
start: at-least-once, and the controller's store is idempotent by (run, seq).

``SampleBatcher`` groups one run's samples into messages: a batch leaves at most
``max_delay_s`` after its first sample or as soon as it holds ``max_samples``. A power trace
too long for its record's message goes first, in chunks of its own (``farm.trace``), each
journalled like any message: an agent restarted mid-way still sends what it journalled.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from typing import Any

import aiomqtt

from agent.journal import Journal
from agent.journal_store import OutboxEntry
from farm.logs import get_logger
from farm.messages import SAMPLE_BATCH, TRACE_CHUNK, samples_topic, trace_topic
from farm.trace import Values

log = get_logger("agent.outbox")

#: Publishes in flight per connection: enough to fill the round trip; more costs aiomqtt
#: per-publish overhead (50 concurrent beat 500: docs/architecture.md#platform-notes).
WINDOW = 32
#: How long a publish may wait for its PUBACK before the connection is deemed broken.
PUBACK_TIMEOUT_S = 15.0


class Outbox:
    """Journal-backed QoS 1 publishing (see the module docstring)."""

    def __init__(self, journal: Journal, *, window: int = WINDOW) -> None:
        self.journal = journal
        self.window = window
        self.sent = 0
        """Messages acknowledged by the broker since start."""

    async def put(
        self, topic: str, payload: bytes, *, run: str | None = None, last_seq: int | None = None
    ) -> None:
        """Journal a message for publishing (with the run's last seq, atomically)."""
        await self.journal.enqueue(topic, payload, run=run, last_seq=last_seq)

    async def pump(self, client: aiomqtt.Client) -> None:
        """Publish the journal's messages while connected; returns only by raising (the
        connection broke) or being cancelled."""
        slots = asyncio.Semaphore(self.window)
        acked: list[int] = []
        flush = asyncio.Event()
        after = 0

        async def send(entry: OutboxEntry) -> None:
            try:
                await client.publish(entry.topic, entry.payload, qos=1, timeout=PUBACK_TIMEOUT_S)
            finally:
                slots.release()
            acked.append(entry.id)
            flush.set()

        async def ack_loop() -> None:
            while True:
                await flush.wait()
                flush.clear()
                ids = acked.copy()
                acked.clear()
                await self.journal.ack(ids)
                self.sent += len(ids)

        async with asyncio.TaskGroup() as group:
            group.create_task(ack_loop())
            while True:
                entries = await self.journal.pending(after, limit=self.window * 4)
                if not entries:
                    await self.journal.wait_for_messages(after)
                    continue
                for entry in entries:
                    await slots.acquire()
                    group.create_task(send(entry))
                    after = entry.id


class SampleBatcher:
    """One run's samples, grouped into ``SampleBatch`` messages (``SAMPLE_BATCH.encode``; see
    the module docstring).

    Owns one flusher task; :meth:`close` flushes what is left and stops it."""

    def __init__(
        self,
        outbox: Outbox,
        agent: str,
        board: str,
        run: str,
        *,
        attempt: int | None = None,
        max_samples: int = 200,
        max_delay_s: float = 0.1,
    ) -> None:
        self.outbox = outbox
        self.agent, self.board, self.run, self.attempt = agent, board, run, attempt
        self.topic = samples_topic(agent, board, run)
        self.trace_topic = trace_topic(agent, board, run)
        self.max_samples = max_samples
        self.max_delay_s = max_delay_s
        self._pending: list[dict[str, Any]] = []
        self._first_at = 0.0
        self._lock = asyncio.Lock()
        self._has_data = asyncio.Event()
        self._flusher = asyncio.get_running_loop().create_task(
            self._flush_late(), name=f"batcher-{run}"
        )
        self.published = 0

    async def add(self, record: dict[str, Any], chunks: Sequence[Values] = ()) -> None:
        """Queue one sample record; waits while the journal is full (backpressure: the run
        pauses rather than drop a sample). ``chunks``: the record's power trace sent apart
        (``farm.trace.detach_trace``), journalled before it, a message each."""
        if chunks:
            await self.flush()  # the samples before it keep their place
            for number, values in enumerate(chunks):
                await self.outbox.journal.wait_for_space()
                payload = TRACE_CHUNK.encode(
                    self.agent, self.board, self.run, record["seq"], number, values, self.attempt
                )
                await self.outbox.put(self.trace_topic, payload, run=self.run)
        await self.outbox.journal.wait_for_space()
        if not self._pending:
            self._first_at = asyncio.get_running_loop().time()
            self._has_data.set()
        self._pending.append(record)
        # An energy window's record is large: it leaves alone, at once.
        if len(self._pending) >= self.max_samples or "power_samples" in record or chunks:
            await self.flush()

    async def flush(self) -> None:
        """Journal whatever is queued as one batch."""
        async with self._lock:
            if not self._pending:
                return
            records, self._pending = self._pending, []
            self._has_data.clear()
            payload = SAMPLE_BATCH.encode(self.agent, self.board, self.run, records, self.attempt)
            await self.outbox.put(self.topic, payload, run=self.run, last_seq=records[-1]["seq"])
            self.published += len(records)

    async def _flush_late(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._has_data.wait()
            delay = self._first_at + self.max_delay_s - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            await self.flush()

    async def close(self) -> None:
        """Flush and stop the flusher task."""
        # Under the lock the flusher is not half-way through a flush: its batch is either
        # journalled already or still pending here, never in between.
        async with self._lock:
            self._flusher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._flusher
        await self.flush()
