"""A console session on a board's DUT: ``farm board console`` through the agent.

The session is one of the board's jobs (:mod:`agent.board_worker`): it starts when the jobs
ahead of it have ended and holds the board, so no run, flash or check talks to the DUT
meanwhile. It opens the DUT's serial port, writes each line the holder sends (once, in
order, each after the DUT's ready line: :class:`farm.protocol.console.ConsoleWire`) and
publishes what the DUT prints on the session's topic. It ends when the holder closes it (once
the last line's answer is out), when no command of it came for its ``idle_s`` (the
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
#: On close, the session writes the lines still waiting and waits for the DUT's ready line
#: after the last (a session without one: for the DUT to be quiet this long since the last
#: byte either way)...
DRAIN_QUIET_S = 1.0
#: ...but no longer than this in all.
DRAIN_MAX_S = 20.0
#: How long a line waits for the DUT's ready line after the previous one before it is written
#: all the same (a DUT that never prints it; a longer command than this is rare at a console).
READY_WAIT_S = 30.0
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
        self.wire = ConsoleWire(command.eol, command.ready or None)
        self._inbox: asyncio.Queue[ConsoleCommand] = asyncio.Queue(INBOX_SIZE)
        self._seq = 0
        self._last_activity = 0.0
        self._written_at = 0.0
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
            event=event,
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
                    self.wire.receive(command.seq, command.line)
                    self._write(link)
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reader

    def _write(self, link: SerialLink) -> None:
        """Write what the wire lets go now (the next lines, paced by the DUT's ready)."""
        if data := self.wire.to_write():
            link.write(data)
            self._last_activity = self._written_at = asyncio.get_running_loop().time()

    async def _drain(self, reader: asyncio.Task[None]) -> None:
        """Let every line out and the answer to the last arrive: until the DUT has printed
        its ready line (without one: been quiet a moment), within :data:`DRAIN_MAX_S`."""
        loop = asyncio.get_running_loop()
        give_up = loop.time() + DRAIN_MAX_S
        while not reader.done() and loop.time() < give_up:
            if not self.wire.pending:
                if self.wire.ready is not None and not self.wire.waiting:
                    break
                if self.wire.ready is None and loop.time() - self._last_activity >= DRAIN_QUIET_S:
                    break
            await asyncio.sleep(0.05)
        # Let the reader publish what it holds before it is cancelled.
        await asyncio.sleep(QUIET_S)

    async def _read(self, link: SerialLink) -> None:
        """Publish the DUT's lines as they come, a partial line once it has gone quiet; let
        the next line go when the DUT is ready (or has kept it waiting too long)."""
        loop = asyncio.get_running_loop()
        while True:
            try:
                data = await asyncio.wait_for(link.read(), QUIET_S)
            except TimeoutError:
                if lines := self.wire.flush():
                    await self.publish("output", lines=lines)
            else:
                self._last_activity = loop.time()
                if lines := self.wire.feed(data):
                    await self.publish("output", lines=lines)
            if self.wire.waiting and loop.time() - self._written_at > READY_WAIT_S:
                self.wire.stop_waiting()
            self._write(link)
