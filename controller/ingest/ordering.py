"""The in-order executor: one connection's messages handled several at once, with each run's
(or agent's) messages still handled in the order received and every QoS 1 message acknowledged
in the order received, once handled."""

from __future__ import annotations

import asyncio
import zlib
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

import aiomqtt

from farm.logs import get_logger
from farm.messages import parse_topic

log = get_logger("controller.ingest.ordering")


class InOrder:
    """Handles one connection's messages concurrently (at most ``limit`` at once), with two
    orders kept:

    * the messages of one key (:func:`order_key`: a run, or an agent) are handled one after
      the other, in the order received, as a sequential loop would;
    * QoS 1 messages are acknowledged in the order received (MQTT 3.1.1 §4.6: PUBACKs go in
      the order of the PUBLISHes), each only once it has been handled: a message handled
      early waits for the ones received before it.

    Once :meth:`close` starts, nothing more is acknowledged: the connection is gone (or
    going), and the broker sends every unacknowledged message again on the next one; a
    message id of the old connection must never acknowledge one of the new."""

    def __init__(
        self,
        limit: int,
        handle: Callable[[aiomqtt.Message], Awaitable[None]],
        ack: Callable[[int, int], None],
    ) -> None:
        self._slots = asyncio.Semaphore(limit)
        self._handle = handle
        self._ack = ack
        self._tails: dict[str, asyncio.Task[None]] = {}
        """Key -> the task of its latest message (the next one of the key waits for it)."""
        self._unacked: deque[list[Any]] = deque()
        """``[mid, qos, handled]`` of every QoS 1 message not acknowledged yet, as received
        (not the message: a handled payload of megabytes must not wait for the acks)."""
        self._tasks: set[asyncio.Task[None]] = set()
        self._open = True

    async def submit(self, key: str, message: aiomqtt.Message) -> None:
        """Start handling ``message`` (after the earlier ones of ``key``); waits while
        ``limit`` messages are in hand."""
        await self._slots.acquire()
        entry = None
        if message.qos > 0:
            entry = [message.mid, message.qos, False]
            self._unacked.append(entry)
        previous = self._tails.get(key)
        task = asyncio.get_running_loop().create_task(self._run(key, previous, message, entry))
        self._tails[key] = task
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(
        self,
        key: str,
        previous: asyncio.Task[None] | None,
        message: aiomqtt.Message,
        entry: list[Any] | None,
    ) -> None:
        try:
            if previous is not None and not previous.done():
                await asyncio.wait((previous,))
            try:
                await self._handle(message)
            except Exception:
                # The handler counts and logs what goes wrong in handling; this is a bug
                # around it. Acknowledged all the same, as the handler does after a
                # rejected_internal: one message must not hold back every acknowledgement.
                log.exception("message_failed", topic=str(message.topic)[:200])
            if entry is not None:
                entry[2] = True
                self._acknowledge()
        finally:
            self._slots.release()
            if self._tails.get(key) is asyncio.current_task():
                del self._tails[key]

    def skip(self, message: aiomqtt.Message) -> None:
        """Acknowledge ``message`` without handling it, in its turn (once the QoS 1 messages
        received before it are acknowledged)."""
        if message.qos > 0:
            self._unacked.append([message.mid, message.qos, True])
            self._acknowledge()

    def _acknowledge(self) -> None:
        """Acknowledge the handled messages at the head of the received order."""
        while self._unacked and self._unacked[0][2]:
            mid, qos, _ = self._unacked.popleft()
            if self._open:
                self._ack(mid, qos)

    async def close(self) -> None:
        """Stop acknowledging, then let the messages in hand finish (as the sequential loop
        finished the one in hand when the broker went away), or cancel them if the caller
        is being cancelled (the broker still has them: they were not acknowledged)."""
        self._open = False
        current = asyncio.current_task()
        cancelled = current is not None and current.cancelling() > 0
        while self._tasks:
            if cancelled:
                for task in self._tasks:
                    task.cancel()
            try:
                await asyncio.wait(set(self._tasks))
            except asyncio.CancelledError:
                cancelled = True
        if cancelled:
            raise asyncio.CancelledError


class Partition:
    """Which messages an ingest process handles when ``count`` processes split them by
    :func:`order_key`: those whose key's CRC-32 modulo ``count`` is ``index``. A key (a run,
    an agent, the statuses) belongs to one process whatever the process's history, so each
    is handled by one process, in order."""

    def __init__(self, index: int = 0, count: int = 1) -> None:
        if not 0 <= index < count:
            raise ValueError(f"partition {index}/{count}: want 0 <= index < count")
        self.index = index
        self.count = count

    @classmethod
    def parse(cls, text: str) -> Partition:
        """``"INDEX/COUNT"`` (``"0/2"``); raises ``ValueError`` otherwise."""
        index, slash, count = text.partition("/")
        if not slash or not index.isdigit() or not count.isdigit():
            raise ValueError(f"partition {text!r}: want INDEX/COUNT, e.g. 0/2")
        return cls(int(index), int(count))

    def owns(self, key: str) -> bool:
        """Whether this process handles the messages of ``key``."""
        return self.count == 1 or zlib.crc32(key.encode()) % self.count == self.index

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def order_key(topic_name: str) -> str:
    """What a message must keep its order within: its run (samples and events of one run);
    every agent's and board's status together (a board's status is judged against other
    agents' states and statuses: a board moving to another agent must see the old one's
    offline first); else its agent (heartbeats, command acks), else its topic (rejected
    anyway)."""
    topic = parse_topic(topic_name)
    if topic is None:
        return f"topic:{topic_name}"
    if topic.run is not None:
        return f"run:{topic.run}"
    if topic.kind in ("status", "board_status"):
        return "statuses"
    return f"agent:{topic.agent}"
