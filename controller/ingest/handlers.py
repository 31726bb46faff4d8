"""One message, from topic and payload to Redis: the topic parsed, the payload capped, parsed
and validated, its ids checked against the topic's, and the topic kind's handler called; a
rejection counted and logged."""

from __future__ import annotations

from controller.ingest.agents import Agents, Publish
from controller.ingest.ledger import Ledger
from controller.ingest.parse import (
    LABELS,
    Rejected,
    check_ids,
    parse_json,
    parse_sample_batch,
    parse_trace_chunk,
    validate,
)
from controller.ingest.run_events import RunEvents
from controller.ingest.store import SampleStore
from controller.ingest.throttle import Throttle
from controller.ingest.traces import TraceStore
from controller.metrics import IngestMetrics
from farm.logs import get_logger
from farm.messages import parse_topic

log = get_logger("controller.ingest.handlers")

#: Larger payloads are rejected unread (an energy window's record with its power trace is the
#: largest legitimate message: a few MiB; a longer trace comes in chunks, ``farm.trace``).
MAX_PAYLOAD_BYTES = 8 * 1024 * 1024


class Handlers:
    """Every agent topic's handler, writing through ``ledger``; ``max_payload``: larger
    messages are rejected unread; ``publish``: see :class:`controller.ingest.agents.Agents`."""

    def __init__(
        self,
        ledger: Ledger,
        metrics: IngestMetrics,
        throttle: Throttle,
        publish: Publish,
        *,
        max_payload: int = MAX_PAYLOAD_BYTES,
    ) -> None:
        self.ledger = ledger
        self.throttle = throttle
        self.max_payload = max_payload
        self.samples = SampleStore(ledger, metrics, throttle)
        self.traces = TraceStore(ledger, throttle)
        self.run_events = RunEvents(ledger)
        self.agents = Agents(ledger, publish)

    async def handle(self, topic_name: str, payload: bytes, retained: bool) -> None:
        """Validate and store one message; a rejection is counted and logged. Raises only
        Redis errors (the caller retries) and bugs."""
        try:
            await self._dispatch(topic_name, payload, retained)
        except Rejected as rejected:
            await self.ledger.commit(None, {f"rejected_{rejected.reason}": 1})
            if (skipped := self.throttle.allow(rejected.reason)) is not None:
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
        if topic.kind == "console":
            # A console session's output is for the console that opened it (farm board
            # console subscribes to it); nothing of it is stored.
            return
        if not payload and topic.kind in ("status", "board_status"):
            # A retained status being cleared (an operator retiring an agent or a board):
            # nothing to store, nothing wrong.
            await self.ledger.commit(None, {f"cleared_{LABELS[topic.kind]}": 1})
            return
        if len(payload) > self.max_payload:
            raise Rejected("too_large", f"{len(payload)} bytes > {self.max_payload}")
        if topic.kind == "samples":
            # Most of the traffic: parsed and validated in one pass, to what is stored.
            batch = parse_sample_batch(payload)
            check_ids(topic, batch.agent, batch.board, batch.run)
            await self.samples.store(topic, batch)
            return
        if topic.kind == "trace":
            chunk = parse_trace_chunk(payload)
            check_ids(topic, chunk["agent"], chunk["board"], chunk["run"])
            await self.traces.store(topic, chunk)
            return
        raw = parse_json(payload)
        try:
            message = validate(topic.kind, payload)
        except Rejected:
            if topic.kind == "status":
                await self.agents.refuse_unreadable(topic, raw)
            raise
        check_ids(
            topic,
            message.agent,
            getattr(message, "board", None) if topic.board is not None else None,
            getattr(message, "run", None) if topic.run is not None else None,
        )
        text = payload.decode()
        if topic.kind == "run_events":
            await self.run_events.store(topic, message, text)
        elif topic.kind == "status":
            await self.agents.status(topic, message, text, retained)
        elif topic.kind == "heartbeat":
            await self.agents.heartbeat(topic, text)
        elif topic.kind == "board_status":
            await self.agents.board_status(topic, message, text, retained)
        else:
            await self.agents.command_ack(topic, text)
