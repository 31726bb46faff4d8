"""``farm board console``: a line session with a board's DUT through its agent.

Only the holder of the board's reservation may open one. The console holds the board's lease
(``op:console:<who>:``, so no operation or run reaches the board meanwhile), keeps the
reservation's console liveness key alive (:func:`controller.reservations.console_alive`: if
this process vanishes, the controller ends the reservation), and speaks MQTT within the
agents' ACL: its commands go to the agent's command topic (``ConsoleCommand``: open, line,
keepalive, close), the agent's answers come on the session's topic under the agent's own
(``farm/v1/agent/{agent}/board/{board}/console/{session}``). Every wait is bounded: the agent
must open the session within :data:`OPEN_TIMEOUT_S` (after the board's current job), and
close it within :data:`CLOSE_TIMEOUT_S` of end of input.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import TextIO

import aiomqtt
import redis
from pydantic import ValidationError

from controller import board_history
from controller.board_history import Operation, user
from controller.board_ops import OperationRefused, agent_of, take_lease
from controller.reservations import (
    console_alive,
    console_closed,
    console_grace_s,
)
from controller.reservations import get as get_reservation
from controller.settings import Settings, redacted
from controller.store import Lease
from farm.logs import get_logger
from farm.messages import (
    CONSOLE_CLOSED_BY_HOLDER,
    MAX_CONSOLE_LINE,
    ConsoleAction,
    ConsoleCommand,
    ConsoleEvent,
    command_topic,
    console_topic,
)
from farm.mqtt_tls import TlsError

log = get_logger("controller.console_client")

#: How long the agent has to open the session (it first finishes the board's current job).
OPEN_TIMEOUT_S = 60.0
#: How long the agent has to close the session after end of input (it first lets the last
#: lines out and their answers in, up to ``agent.console.DRAIN_MAX_S``).
CLOSE_TIMEOUT_S = 40.0


class ConsoleError(Exception):
    """The console could not be opened (not reserved by the caller, board busy, agent
    offline, broker unreachable)."""


@dataclass
class _Counts:
    sent: int = 0
    received: int = 0
    started: float = field(default_factory=time.monotonic)


def run_console(
    client: redis.Redis,
    settings: Settings,
    board: str,
    *,
    eol: str = "%",
    ready: str | None = "m-ready",
    lease_wait_s: float = 0.0,
    stdin: TextIO | None = None,
    stdout: TextIO | None = None,
) -> tuple[str, bool]:
    """Relay ``stdin`` lines to ``board``'s DUT and its lines to ``stdout`` until end of input
    (or the session ends otherwise); the reason it closed and whether the holder closed it.
    ``ConsoleError`` if it could not be opened."""
    who = user()
    reservation = get_reservation(client, board)
    if reservation is None or reservation.holder != who:
        held = f" (it is {reservation.describe()})" if reservation is not None else ""
        raise ConsoleError(
            f"board {board} is not reserved by you{held}: farm board reserve {board} --for 1h"
        )
    try:
        agent = agent_of(client, board)
        lease = take_lease(client, board, f"op:console:{who}:", lease_wait_s)
    except OperationRefused as exc:
        raise ConsoleError(str(exc)) from None
    session = f"con-{secrets.token_hex(6)}"
    grace = console_grace_s()
    counts = _Counts()
    try:
        if not console_alive(client, board, who, session, grace):
            raise ConsoleError(f"your reservation of {board} ended")
        relay = _Relay(
            client,
            settings,
            board=board,
            agent=agent,
            session=session,
            who=who,
            eol=eol,
            ready=ready,
            grace_s=grace,
            lease=lease,
            counts=counts,
        )
        reason, clean = asyncio.run(relay.run(stdin or sys.stdin, stdout or sys.stdout))
    finally:
        lease.release()
        console_closed(client, board, session)
    board_history.record(
        client,
        board,
        Operation(
            "console",
            who,
            "ok" if clean else "failed",
            reason=reason,
            detail={
                "session": session,
                "lines_sent": counts.sent,
                "lines_received": counts.received,
                "seconds": round(time.monotonic() - counts.started, 3),
            },
        ),
    )
    return reason, clean


class _Relay:
    """One session's MQTT side (see the module docstring)."""

    def __init__(
        self,
        client: redis.Redis,
        settings: Settings,
        *,
        board: str,
        agent: str,
        session: str,
        who: str,
        eol: str,
        ready: str | None,
        grace_s: float,
        lease: Lease,
        counts: _Counts,
    ) -> None:
        self.client = client
        self.settings = settings
        self.board = board
        self.agent = agent
        self.session = session
        self.who = who
        self.eol = eol
        self.ready = ready
        self.grace_s = grace_s
        self.lease = lease
        self.counts = counts
        self._events: asyncio.Queue[ConsoleEvent] = asyncio.Queue()
        self._next_event = 0
        self._mqtt: aiomqtt.Client | None = None

    async def run(self, stdin: TextIO, stdout: TextIO) -> tuple[str, bool]:
        """Open the session, relay until it ends, close it; (reason, closed by the holder)."""
        host, port = self.settings.broker_host_port
        user_name, password = self.settings.broker_credentials
        try:
            tls = self.settings.mqtt_tls_context()
            async with aiomqtt.Client(
                host,
                port,
                username=user_name,
                password=password,
                identifier=f"farm-console-{self.session}",
                timeout=10,
                tls_context=tls,
            ) as mqtt:
                self._mqtt = mqtt
                await mqtt.subscribe(console_topic(self.agent, self.board, self.session), qos=1)
                listener = asyncio.create_task(self._listen(mqtt))
                try:
                    return await self._converse(stdin, stdout)
                finally:
                    listener.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await listener
        except (aiomqtt.MqttError, OSError, TlsError) as exc:
            raise ConsoleError(f"broker {redacted(self.settings.broker_url)}: {exc}") from None

    async def _converse(self, stdin: TextIO, stdout: TextIO) -> tuple[str, bool]:
        await self._send(
            "open", idle_s=self.grace_s, holder=self.who, eol=self.eol, ready=self.ready
        )
        try:
            first = await asyncio.wait_for(self._event(stdout), OPEN_TIMEOUT_S)
        except TimeoutError:
            await self._send("close")
            return (
                f"agent {self.agent} did not open the session within {OPEN_TIMEOUT_S:.0f} s",
                False,
            )
        if first.event == "closed":
            return first.reason or "closed", False
        print(
            f"console on {self.board} ({first.port} at {first.baud} baud); end of input closes it",
            file=sys.stderr,
            flush=True,
        )
        lines: asyncio.Queue[str | None] = asyncio.Queue()
        _read_lines(stdin, lines, asyncio.get_running_loop())
        keepalive = asyncio.create_task(self._keepalive())
        try:
            while True:
                getter = asyncio.ensure_future(lines.get())
                waiter = asyncio.ensure_future(self._event(stdout))
                done, _ = await asyncio.wait(
                    {getter, waiter, keepalive}, return_when=asyncio.FIRST_COMPLETED
                )
                if keepalive in done:
                    getter.cancel()
                    waiter.cancel()
                    await self._send("close")
                    return keepalive.result(), False
                if waiter in done:
                    getter.cancel()
                    ended = waiter.result()  # only a ``closed`` event returns
                    return ended.reason or "closed", False
                waiter.cancel()
                line = getter.result()
                if line is None:
                    await self._send("close")
                    return await self._closing(stdout)
                if len(line) > MAX_CONSOLE_LINE:
                    print(
                        f"not sent: a line of {len(line)} characters (at most {MAX_CONSOLE_LINE})",
                        file=sys.stderr,
                        flush=True,
                    )
                    continue
                self.counts.sent += 1
                await self._send("line", seq=self.counts.sent, line=line)
        finally:
            keepalive.cancel()

    async def _closing(self, stdout: TextIO) -> tuple[str, bool]:
        """End of input: print the DUT's last lines until the agent says the session closed."""
        try:
            ended = await asyncio.wait_for(self._event(stdout), CLOSE_TIMEOUT_S)
        except TimeoutError:
            return (
                f"agent {self.agent} did not confirm the close within {CLOSE_TIMEOUT_S:.0f} s",
                False,
            )
        return ended.reason or "closed", ended.reason == CONSOLE_CLOSED_BY_HOLDER

    async def _event(self, stdout: TextIO) -> ConsoleEvent:
        """Print output events as they come; return the next ``opened`` or ``closed``."""
        while True:
            event = await self._events.get()
            if event.seq < self._next_event:
                continue  # a redelivered event, already printed
            self._next_event = event.seq + 1
            if event.event != "output":
                return event
            for line in event.lines:
                stdout.write(line + "\n")
            stdout.flush()
            self.counts.received += len(event.lines)

    async def _listen(self, mqtt: aiomqtt.Client) -> None:
        async for message in mqtt.messages:
            payload = message.payload
            if not isinstance(payload, bytes | bytearray):
                continue
            try:
                event = ConsoleEvent.model_validate_json(payload)
            except ValidationError as exc:
                log.warning("console_event_invalid", error=str(exc)[:200])
                continue
            await self._events.put(event)

    async def _keepalive(self) -> str:
        """Keep the agent's session, the reservation's console key and the lease alive; the
        reason if one of them ends."""
        every = min(self.grace_s, self.lease.ttl_s) / 3
        while True:
            await asyncio.sleep(every)
            # redis-py is blocking: off the loop (the DUT's output keeps coming), and bounded
            # (a Redis that stops answering ends the session instead of freezing it).
            try:
                alive = await asyncio.wait_for(
                    asyncio.to_thread(
                        console_alive, self.client, self.board, self.who, self.session, self.grace_s
                    ),
                    every,
                )
                renewed = alive and await asyncio.wait_for(
                    asyncio.to_thread(self.lease.renew), every
                )
            except (TimeoutError, redis.RedisError) as exc:
                return f"Redis did not answer the keepalive: {type(exc).__name__}"
            if not alive:
                return f"your reservation of {self.board} ended"
            if not renewed:
                return f"the console lost {self.board}'s lease"
            await self._send("keepalive")

    async def _send(self, action: ConsoleAction, **fields: object) -> None:
        assert self._mqtt is not None
        seq = fields.get("seq", 0)
        command = ConsoleCommand(
            id=f"{self.session}-{action}-{seq}-{secrets.token_hex(2)}",
            type="console",
            board=self.board,
            session=self.session,
            action=action,
            **fields,  # type: ignore[arg-type]
        )
        await self._mqtt.publish(command_topic(self.agent), command.dumps(), qos=1)


def _read_lines(
    stdin: TextIO, into: asyncio.Queue[str | None], loop: asyncio.AbstractEventLoop
) -> None:
    """Read ``stdin`` in a daemon thread (a terminal's read cannot be cancelled; the thread
    must not keep the process alive), each line (end removed) into ``into``, then None."""

    def pump() -> None:
        try:
            for raw in stdin:
                line = raw.rstrip("\r\n").replace("\r", "").replace("\0", "")
                loop.call_soon_threadsafe(into.put_nowait, line)
        except (OSError, ValueError) as exc:  # undecodable input (UnicodeDecodeError), a closed fd
            log.warning("console_stdin_failed", error=str(exc)[:200])
        finally:
            # Whatever stopped the reading, the session then ends as at end of input.
            loop.call_soon_threadsafe(into.put_nowait, None)

    threading.Thread(target=pump, name="console-stdin", daemon=True).start()
