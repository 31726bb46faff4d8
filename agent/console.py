"""A console session on a board's DUT: ``farm board console`` through the agent.

The session is one of the board's jobs (:mod:`agent.board_worker`): it starts when the jobs
ahead of it have ended and holds the board, so no run, flash or check talks to the DUT
meanwhile. It opens the DUT's serial port, writes each line the holder sends (once, in
order: :class:`farm.protocol.console.ConsoleWire`) and publishes what the DUT prints on the
session's topic. It ends when the holder closes it (after the DUT has been quiet for a moment,
so the answer to the last line gets out), when no command of it came for its ``idle_s`` (the
holder's console is gone), or when the port is lost; the ``closed`` event says which.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from agent.outbox import Outbox
from agent.serial_link import SerialLink
from farm.logs import get_logger
from farm.messages import CONSOLE_CLOSED_BY_HOLDER, ConsoleCommand, ConsoleEvent, console_topic
from farm.protocol.console import ConsoleWire

log = get_logger("agent.console")

#: A partial line (a prompt) is published once the DUT has been quiet this long.
QUIET_S = 0.3
#: On close, the session waits for the DUT to be quiet this long since the last byte either
#: way (the answer to the last line)...
DRAIN_QUIET_S = 1.0
#: ...but no longer than this in all.
DRAIN_MAX_S = 10.0
#: Commands of the session waiting to be handled (a holder cannot queue more than it types).
INBOX_SIZE = 1000


class ConsoleSession:
    """One session (see the module docstring); ``command`` is its ``open``."""

    def __init__(self, command: ConsoleCommand, *, agent: str, outbox: Outbox) -> None:
        self.command = command
        self.session = command.session
        self.board = command.board
        self.agent = agent
        self.outbox = outbox
        self.wire = ConsoleWire(command.eol)
        self._inbox: asyncio.Queue[ConsoleCommand] = asyncio.Queue(INBOX_SIZE)
        self._seq = 0
        self._last_activity = 0.0
        self.closed = False

    def deliver(self, command: ConsoleCommand) -> bool:
        """Hand over a ``line``, ``keepalive`` or ``close`` of this session; False if the
        session is over or its inbox is full."""
        if self.closed:
            return False
        try:
            self._inbox.put_nowait(command)
        except asyncio.QueueFull:
            return False
        return True

    async def publish(self, event: str, **fields: Any) -> None:
        """Journal one event of the session for publishing."""
        message = ConsoleEvent(
            agent=self.agent,
            board=self.board,
            session=self.session,
            event=event,  # type: ignore[arg-type]
            seq=self._seq,
            **fields,
        )
        self._seq += 1
        await self.outbox.put(console_topic(self.agent, self.board, self.session), message.dumps())

    async def close(self, reason: str) -> None:
        """Say the session is over (once)."""
        if self.closed:
            return
        self.closed = True
        await self.publish("closed", reason=reason)
        log.info("console_closed", board=self.board, session=self.session, reason=reason)

    async def serve(self, link: SerialLink) -> str:
        """Relay between the holder and ``link`` until the session ends; the reason."""
        loop = asyncio.get_running_loop()
        self._last_activity = loop.time()
        await self.publish("opened", port=link.port, baud=link.baud)
        log.info(
            "console_opened",
            board=self.board,
            session=self.session,
            holder=self.command.holder,
            port=link.port,
        )
        reader = asyncio.create_task(self._read(link), name=f"console-{self.session}")
        try:
            while True:
                getter = asyncio.ensure_future(self._inbox.get())
                done, _ = await asyncio.wait(
                    {getter, reader},
                    timeout=self.command.idle_s,
                    return_when=asyncio.FIRST_COMPLETED,
                )
                if getter not in done:
                    getter.cancel()
                    if reader in done:
                        return f"the DUT's port was lost: {reader.exception() or 'closed'}"
                    return f"no command from the holder for {self.command.idle_s:g} s"
                command = getter.result()
                if command.action == "close":
                    await self._drain(reader)
                    return CONSOLE_CLOSED_BY_HOLDER
                if command.action == "line" and command.line is not None:
                    data = self.wire.send(command.seq, command.line)
                    if data:
                        link.write(data)
                        self._last_activity = loop.time()
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reader

    async def _drain(self, reader: asyncio.Task[None]) -> None:
        """Let the answer to the last line arrive: until the DUT has been quiet a moment."""
        loop = asyncio.get_running_loop()
        give_up = loop.time() + DRAIN_MAX_S
        while not reader.done() and loop.time() < give_up:
            quiet = loop.time() - self._last_activity
            if quiet >= DRAIN_QUIET_S:
                break
            await asyncio.sleep(DRAIN_QUIET_S - quiet)
        # Let the reader publish what it holds before it is cancelled.
        await asyncio.sleep(QUIET_S)

    async def _read(self, link: SerialLink) -> None:
        """Publish the DUT's lines as they come; a partial line once it has gone quiet."""
        loop = asyncio.get_running_loop()
        while True:
            try:
                data = await asyncio.wait_for(link.read(), QUIET_S)
            except TimeoutError:
                if lines := self.wire.flush():
                    await self.publish("output", lines=lines)
                continue
            self._last_activity = loop.time()
            if lines := self.wire.feed(data):
                await self.publish("output", lines=lines)
