"""Acknowledgement after storing: ingest sends a QoS 1 message's PUBACK itself, once the
message is handled, instead of letting the MQTT client send it on receipt; and the receive
queue this needs (nothing unacknowledged may be dropped from it).

aiomqtt has no option for it, so this reaches its paho client (see :class:`ManualAcks`)."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import aiomqtt

from farm.logs import get_logger

log = get_logger("controller.ingest.acks")

#: QoS 0 messages (heartbeats) waiting beyond this are dropped; QoS 1 ones are bounded by the
#: broker's in-flight window, since ingest acknowledges only what it has stored.
QOS0_QUEUE_LIMIT = 10_000


class IncomingQueue(asyncio.Queue[aiomqtt.Message]):
    """aiomqtt's receive queue: unbounded for QoS 1 and 2 (the broker's in-flight window bounds
    those, since ingest acknowledges late; dropping one would leave it unacknowledged until the
    next reconnect), capped for QoS 0, which nobody resends anyway."""

    def __init__(self, qos0_limit: int, counters: Counter[str]) -> None:
        super().__init__()
        self.qos0_limit = qos0_limit
        self.counters = counters

    def put_nowait(self, item: aiomqtt.Message) -> None:
        if item.qos == 0 and self.qsize() >= self.qos0_limit:
            self.counters["dropped_qos0"] += 1
            return
        super().put_nowait(item)

    def discard(self) -> None:
        """Forget the messages of a lost connection: unacknowledged, they come again."""
        dropped = 0
        while True:
            try:
                self.get_nowait()
            except asyncio.QueueEmpty:
                break
            dropped += 1
        if dropped:
            log.info("queue_discarded", messages=dropped, why="broker_resends_unacked")


class ManualAcks:
    """The PUBACKs of ``client``'s QoS 1 messages, sent by :meth:`ack` rather than on receipt.

    Workaround: aiomqtt (2.5) has no option for it; its application-controlled acknowledgements
    are an open feature request (empicano/aiomqtt#345). paho-mqtt 2 has them as public API
    (``manual_ack_set``, ``ack``), reached here through aiomqtt's private ``_client``, which is
    why pyproject.toml bounds aiomqtt below its next minor version. Once aiomqtt supports
    manual acknowledgement, this class reduces to its option and its ack call. Without a paho
    client that can (another aiomqtt), paho acknowledges on receipt and :attr:`enabled` is
    false."""

    def __init__(self, client: aiomqtt.Client) -> None:
        paho: Any = getattr(client, "_client", None)
        if paho is not None and hasattr(paho, "manual_ack_set") and hasattr(paho, "ack"):
            paho.manual_ack_set(True)
            self._paho = paho
        else:
            self._paho = None
            log.warning("manual_ack_unavailable", effect="messages_acked_on_receipt")

    @property
    def enabled(self) -> bool:
        """Whether PUBACKs wait for :meth:`ack` (else they left on receipt)."""
        return self._paho is not None

    def ack(self, mid: int, qos: int) -> None:
        """Acknowledge message ``mid`` (nothing to do for QoS 0, or without manual acks)."""
        if self._paho is None or qos == 0:
            return
        rc = self._paho.ack(mid, qos)
        if rc != 0:
            # Connection gone: the broker resends the message on the next connection.
            log.debug("ack_failed", mid=mid, rc=rc)
