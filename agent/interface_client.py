"""The interface-board client: the board's own commands, and DUT commands relayed through its
passthrough, with every wait bounded by the wire-time model of both hops.

A passthrough moves the command over the host link (115200) and then over the DUT link (the
board's DUT baud), and the reply back over both, each DUT line again on the host link with
the board's 7-byte ``[dut]: `` prefix, after the board's two-line ack. The DUT-side queue of
the board keeps whatever the DUT printed while nobody asked (a boot banner after a power
cycle) and hands it out as the reply to the next ``dut`` command: the host cannot tell that
from a real reply except by its content, so the repair is :meth:`InterfaceClient.resync`:
``setbaud`` resets the board, which empties both of its queues.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable, Sequence

from agent.dut_client import DutClient, drain_until_idle
from agent.errors import DeviceTimeout, GarbledReply, ResyncFailed
from agent.serial_link import SerialLink
from farm.logs import get_logger
from farm.models import ModelSpec
from farm.protocol import dut, sww
from farm.protocol.interface import (
    BOARD_REPLY_BYTES,
    DEFAULT_DUT_BAUD,
    DUT_CMD_MAX,
    DUT_PREFIX,
    PASSTHROUGH_PREFIX,
    READY_LINE,
    RESET_S,
    VERIFY_ATTEMPTS,
    BaudIs,
    BaudSet,
    BoardName,
    InterfaceDesyncError,
    InterfaceHost,
    InterfaceReply,
    effective_baud,
)
from farm.wire import WireModel

log = get_logger("agent.interface_client")

#: Bytes per ``db`` chunk through the board: 52 hex digits, as the official runner sends.
PASSTHROUGH_CHUNK = 26
#: The shortest DUT line the board forwards (``m-ready\r\n``): bounds the line count of a
#: reply, hence the prefix bytes it adds on the host link.
_MIN_DUT_LINE = 9
#: What a wedged board may still forward before it is free: a DUT boot banner.
_WEDGE_LINE_BYTES = 64
#: Upper bounds of the stream's board replies: a full detection log (10,000 lines of at most
#: ``4294967,``) and a full duty-cycle log (2 x 100 values of at most ``4294967295, ``).
_DETECTIONS_BYTES = 40 + sww.MAX_DETECTIONS * len("4294967,\r\n")
_DUTYCYCLE_BYTES = 80 + 2 * sww.MAX_DUTY_EDGES * len("4294967295, \r\n")


class InterfaceDesync(GarbledReply):
    """The board's output cannot belong to the command sent (a stale passthrough reply, a
    garbled line): the link must be resynced before the next command."""

    def __init__(self, message: str, line: bytes) -> None:
        super().__init__(message)
        self.line = line


class InterfaceWedged(InterfaceDesync):
    """The board is stuck in a passthrough whose DUT ``m-ready`` came merged with a bare-LF
    line: it reads no command until the DUT prints an exact ``m-ready`` line again."""


class InterfaceClient:
    """Commands to an interface board over ``link`` (115200 baud), one at a time.

    ``dut_baud`` is the DUT-side baud the board is (or will be set) at; it sizes the DUT hop
    of every passthrough timeout and is what :meth:`resync` sets. ``reset_s`` is how long the
    board's reset after ``setbaud`` takes (see :data:`farm.protocol.interface.RESET_S`; the
    simulator resets in 0.5 s, so tests pass a shorter one).
    """

    def __init__(
        self,
        link: SerialLink,
        *,
        dut_baud: int = DEFAULT_DUT_BAUD,
        wire: WireModel | None = None,
        reset_s: float = RESET_S,
        dut_cmd_max: int = DUT_CMD_MAX,
    ) -> None:
        self.link = link
        self.port = link.port
        self.wire = wire or WireModel(link.baud)
        self.dut_baud = dut_baud
        self.reset_s = reset_s
        self.host = InterfaceHost(dut_cmd_max)
        self._lock = asyncio.Lock()

    @property
    def dut_wire(self) -> WireModel:
        """The wire model of the DUT hop (same slack and margin as the host hop)."""
        return WireModel(self.dut_baud, self.wire.slack, self.wire.margin_s)

    # -- timeouts -----------------------------------------------------------------------------

    def board_timeout(self, command: str, reply_bytes: int = BOARD_REPLY_BYTES) -> float:
        """Deadline for a board command: ``<command>%`` out, ``reply_bytes`` back."""
        return self.wire.timeout(len(command) + 1, reply_bytes)

    def passthrough_timeout(
        self, dut_command: str, reply_bytes: int, compute_s: float = 0.0
    ) -> float:
        """Deadline for ``dut <dut_command>``: both hops each way, the board's ack and the
        ``[dut]: `` prefix of every DUT line, the DUT's compute time, then slack and margin.

        The hops overlap in reality (the board forwards line by line), so adding them is an
        upper bound."""
        to_dut = len(dut_command) + 1
        ack = len(PASSTHROUGH_PREFIX) + len(dut_command) + 3 + len(READY_LINE)
        lines = max(1, math.ceil(reply_bytes / _MIN_DUT_LINE))
        host_hop = self.wire.transfer_time(
            len("dut ") + to_dut, ack + reply_bytes + len(DUT_PREFIX) * lines
        )
        dut_hop = self.dut_wire.transfer_time(to_dut, reply_bytes)
        return (host_hop + dut_hop + compute_s) * self.wire.slack + self.wire.margin_s

    # -- exchanges ----------------------------------------------------------------------------

    async def command(
        self, command: str, *, reply_bytes: int = BOARD_REPLY_BYTES, busy_s: float = 0.0
    ) -> InterfaceReply:
        """A board command (not ``dut``); returns the reply up to its ``m-ready`` line.
        ``busy_s`` is how long the board itself may take before replying (``play``).

        Raises LocalProtocolError for a command the board would ignore silently (``names``),
        DeviceTimeout, :class:`InterfaceDesync` when the output belongs to something else, and
        :class:`InterfaceWedged` while the board is stuck in a passthrough (see
        :meth:`passthrough`).
        """
        if self.host.wedged:
            await self._await_unwedged()
        deadline = self.board_timeout(command, reply_bytes) + busy_s
        return await self._exchange(command, None, deadline)

    async def passthrough(
        self, dut_command: str, *, reply_bytes: int, compute_s: float = 0.0
    ) -> InterfaceReply:
        """``dut <dut_command>``: the board's ack, then the DUT's lines up to ``m-ready``
        (``reply.dut_lines``, prefix removed).

        If the previous passthrough left the board wedged (a DUT line ending in a bare LF
        merged with its ``m-ready``, docs/protocols.md#interface-quirks), the board reads no
        command until the DUT prints another CRLF line ending in an exact ``m-ready``: this
        waits (bounded) for that, then raises :class:`InterfaceWedged`. Not even ``setbaud``
        gets through; a DUT power cycle does (its banner ends the board's wait).
        """
        if self.host.wedged:
            await self._await_unwedged()
        timeout = self.passthrough_timeout(dut_command, reply_bytes, compute_s)
        return await self._exchange(f"dut {dut_command}", dut_command, timeout)

    async def _await_unwedged(self) -> None:
        """Read until the wedged board's passthrough ends (an unsolicited ``[dut]: m-ready``),
        for as long as one more DUT line would take over both hops."""
        async with self._lock:
            deadline = self.passthrough_timeout("", _WEDGE_LINE_BYTES)
            try:
                async with asyncio.timeout(deadline):
                    while self.host.wedged:
                        self.host.feed(await self.link.read())
            except TimeoutError:
                raise InterfaceWedged(
                    f"{self.port}: the board is still waiting for an exact DUT m-ready (a DUT "
                    "line ended in a bare LF); power-cycle the DUT, then retry",
                    b"",
                ) from None
            except InterfaceDesyncError as exc:
                self.host.reset()
                raise InterfaceDesync(f"{self.port}: {exc}; resync the link", exc.line) from exc
            log.info("interface_unwedged", port=self.port)

    async def _exchange(
        self, command: str, dut_command: str | None, deadline_s: float
    ) -> InterfaceReply:
        async with self._lock:
            stale = self.link.read_nowait()
            if stale:
                # Output nobody asked for (the late end of an abandoned reply): not part of
                # this one. Fed so that a wedged board's final m-ready is noticed.
                log.info("unsolicited", port=self.port, bytes=len(stale))
                try:
                    self.host.feed(stale)
                except InterfaceDesyncError:
                    self.host.reset()
            if dut_command is None:
                data = self.host.send(command)
            else:
                data = self.host.send_passthrough(dut_command)
            log.debug("interface_send", port=self.port, command=command, timeout_s=deadline_s)
            self.link.write(data)
            received = 0
            garbled = False
            try:
                async with asyncio.timeout(deadline_s):
                    while not (replies := self.host.take_replies()):
                        chunk = await self.link.read()
                        received += len(chunk)
                        garbled = garbled or any(b >= 0x80 for b in chunk)
                        self.host.feed(chunk)
            except TimeoutError:
                self.host.reset()
                raise DeviceTimeout(
                    self.port, command, deadline_s, received, garbled, self.link.baud
                ) from None
            except InterfaceDesyncError as exc:
                self.host.reset()
                raise InterfaceDesync(
                    f"{self.port}: reply to {command!r} is out of step: {exc}; resync the link",
                    exc.line,
                ) from exc
            except BaseException:
                # The link failed or we were cancelled: the reply will never be read.
                self.host.reset()
                raise
            return replies[-1]

    # -- board commands -----------------------------------------------------------------------

    async def name(self) -> str:
        """The board's name line (``tinyML Enhanced Interface Board``)."""
        reply = await self.command("name")
        for event in reply.events:
            if isinstance(event, BoardName):
                return event.text
        raise GarbledReply(f"{self.port}: reply to 'name' has no board name: {reply.events!r}")

    async def checkbaud(self) -> int:
        """The board's current DUT baud."""
        reply = await self.command("checkbaud")
        for event in reply.events:
            if isinstance(event, BaudIs):
                return event.baud
        raise GarbledReply(f"{self.port}: reply to 'checkbaud' has no baud line")

    async def setbaud(self, baud: int) -> None:
        """Set the DUT baud: the board answers, stores it and resets (deaf for ``reset_s``,
        both queues emptied). Returns once the board answers ``name`` again."""
        reply = await self.command(f"setbaud {baud}")
        echoed = next((e.baud for e in reply.events if isinstance(e, BaudSet)), None)
        if echoed != baud:
            raise GarbledReply(f"{self.port}: setbaud {baud} answered {reply.events!r}")
        self.dut_baud = effective_baud(baud)
        log.info("interface_setbaud", port=self.port, baud=self.dut_baud, reset_s=self.reset_s)
        await asyncio.sleep(self.reset_s)
        self.link.discard_input()
        self.host.reset()
        for attempt in range(1, VERIFY_ATTEMPTS + 1):
            try:
                await self.name()
                return
            except DeviceTimeout:
                if attempt == VERIFY_ATTEMPTS:
                    raise
                log.info("interface_reset_slow", port=self.port, attempt=attempt)

    async def resync(self) -> None:
        """Bring board and DUT link back to a known state: drain, ``setbaud`` to the current
        DUT baud (the board resets and empties both queues, dropping stale DUT lines), then
        check the DUT answers ``dut name``.

        The first ``%`` the DUT receives also ends any half-received command of its own, so
        a first ``dut name`` rejected as an unknown command is tried once more. Raises
        :class:`ResyncFailed`; a board stuck in a passthrough on a hung DUT cannot be
        resynced from the host (power-cycle the DUT).
        """
        self.host.reset()
        self.link.discard_input()
        await drain_until_idle(self.link, self.wire)
        try:
            await self.setbaud(self.dut_baud)
        except (TimeoutError, GarbledReply) as exc:
            raise ResyncFailed(
                f"{self.port}: the interface board did not reset ({exc}); if a passthrough is "
                "stuck on a silent or wedged DUT, power-cycle the DUT"
            ) from exc
        bound = dut.reply_size_bound("name")
        last: Exception | None = None
        for _ in range(VERIFY_ATTEMPTS):
            try:
                reply = await self.passthrough("name", reply_bytes=bound)
            except (TimeoutError, GarbledReply) as exc:
                raise ResyncFailed(
                    f"{self.port}: DUT did not answer 'dut name' after a resync: {exc}"
                ) from exc
            events = [dut.classify_line(line) for line in reply.dut_lines]
            if any(isinstance(e, dut.Name) for e in events):
                log.info("interface_resynced", port=self.port)
                return
            last = GarbledReply(f"{self.port}: 'dut name' answered {reply.dut_lines!r}")
        raise ResyncFailed(f"{self.port}: DUT reply to 'name' after resync: {last}")

    # -- streaming wakeword (docs/protocols.md#streaming-wakeword) -----------------------------

    async def record_detections(self) -> None:
        """Zero the board's 10 µs timer and clear its detection and duty-cycle logs."""
        await self.command("record_detections")

    async def play(self, file: str, seconds: float) -> bool:
        """``play <file>``: the board blocks while it plays the ``seconds``-long wav; True if
        it played it, False if it could not (no such file, not a 2-channel wav). Waited for
        as the official runner does, the length plus 10 s."""
        busy = seconds + sww.PLAY_MARGIN_S
        reply = await self.command(f"play {file}", reply_bytes=BOARD_REPLY_BYTES * 2, busy_s=busy)
        return sww.play_succeeded(reply, file)

    async def print_detections(self) -> tuple[int, ...]:
        """The detection log: ms since ``record_detections``, one per WW_DETECTED pulse."""
        return sww.detections(await self.command("print_detections", reply_bytes=_DETECTIONS_BYTES))

    async def print_dutycycle(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """The duty-cycle log: the DUT's processing-pin rising and falling edges (the first
        100 of each), in 10 µs ticks since ``record_detections``."""
        return sww.dutycycle(await self.command("print_dutycycle", reply_bytes=_DUTYCYCLE_BYTES))

    def dut(self, model: ModelSpec | None = None, latency_s: float | None = None) -> DutClient:
        """A :class:`DutClient` whose commands go through this board's passthrough."""
        return DutClient(PassthroughChannel(self), model, latency_s)


class PassthroughChannel:
    """DUT commands through an interface board (implements ``agent.dut_client.DutChannel``).

    A lock spans whole command sequences, so no other DUT command can slip in between the
    ``db`` chunks of a download."""

    chunk_bytes = PASSTHROUGH_CHUNK

    def __init__(self, client: InterfaceClient) -> None:
        self.client = client
        self.port = client.port
        self.needs_resync = False
        self._lock = asyncio.Lock()

    @property
    def dut_baud(self) -> int:
        """The board's DUT-side baud."""
        return self.client.dut_baud

    async def exchange(
        self, command: str, *, reply_bytes: int, compute_s: float = 0.0
    ) -> dut.DutReply:
        """Send one DUT command through the board; return the DUT's reply, each line
        classified as on a direct link."""
        async with self._lock:
            return await self._exchange(command, reply_bytes, compute_s)

    async def _exchange(self, command: str, reply_bytes: int, compute_s: float) -> dut.DutReply:
        try:
            reply = await self.client.passthrough(
                command, reply_bytes=reply_bytes, compute_s=compute_s
            )
        except TimeoutError:
            self.needs_resync = True
            raise
        if reply.wedged:
            log.warning("interface_wedged", port=self.port, command=command)
        return dut.DutReply(command, tuple(dut.classify_line(line) for line in reply.dut_lines))

    async def exchange_each(
        self,
        commands: Sequence[str],
        *,
        reply_bytes: int,
        compute_s: float = 0.0,
        check: Callable[[dut.DutReply], object] | None = None,
    ) -> dut.DutReply:
        """Send ``commands`` in turn, each after the previous reply passed ``check``.

        One task-level exchange per command is cheap next to the board's own latency (it
        relays at 9600 baud and answers each command with a two-line ack first)."""
        reply: dut.DutReply | None = None
        async with self._lock:
            for command in commands:
                reply = await self._exchange(command, reply_bytes, compute_s)
                if check is not None:
                    check(reply)
        if reply is None:
            raise ValueError("exchange_each needs at least one command")
        return reply

    async def resync(self) -> None:
        """Reset the board (flushing stale DUT lines) and check the DUT answers."""
        await self.client.resync()
        self.needs_resync = False
