"""The LPM01A (PowerShield) client: the shell's commands with wire-model deadlines, and the
acquisition stream.

The monitor streams samples while commands are exchanged, so one reader task owns the link's
reads: it feeds every byte to :class:`farm.protocol.lpm01a.Lpm01aHost`, hands completed
replies to the waiting command and data lines (samples, ``TimeStamp``, ``event``) to the
energy capture and to any open :meth:`Lpm01aClient.stream`. Unlike the official runner, a
command whose ack never comes fails with :class:`~agent.errors.DeviceTimeout` instead of
blocking forever.
"""

from __future__ import annotations

import asyncio
import contextlib
from types import TracebackType

from agent.errors import DeviceCommandError, DeviceTimeout, GarbledReply
from agent.serial_link import LinkLost, SerialLink
from farm.logs import get_logger
from farm.protocol.errors import LocalProtocolError, RemoteProtocolError
from farm.protocol.lines import text
from farm.protocol.lpm01a import (
    ACQUISITION_COMPLETED_LINE,
    HOST_BAUD,
    MAX_VOLTAGE_MV,
    MIN_VOLTAGE_MV,
    PROMPT,
    START,
    AcquisitionCompleted,
    EdgeEvent,
    EnergyCapture,
    EnergyWindow,
    Error,
    Lpm01aEvent,
    Lpm01aHost,
    Lpm01aReply,
    Lpm01aState,
    Malformed,
    Samples,
    TimeStamp,
    parse_number,
    power_on_commands,
    setup_commands,
    teardown_commands,
)
from farm.wire import WireModel

log = get_logger("agent.lpm01a_client")

#: What the stream yields: data lines, and the end of an acquisition.
StreamItem = Samples | TimeStamp | EdgeEvent | AcquisitionCompleted
#: Longest value an ack carries (``powershield``: "PowerShield present" + a 24-digit UID) plus
#: an ``Error detail`` line: bounds a reply for the wire-time model.
_REPLY_EXTRA = 128
#: Stream data interleaved with a reply: ~10 ms of 1 kHz samples per device burst, padded.
STREAM_ALLOWANCE = 1024
#: Items an open stream may fall behind by before it is cut off (about a minute at 1 kHz).
STREAM_BACKLOG = 65_536
_END = object()


class EnergyDataError(GarbledReply):
    """The stream lost data (non-consecutive event numbers): the window cannot be trusted.
    ``window`` holds what was captured anyway."""

    def __init__(self, message: str, window: EnergyWindow) -> None:
        super().__init__(message)
        self.window = window


class LpmStream:
    """An open view of the acquisition stream; iterate it with ``async for``.

    Use it as an async context manager (or call :meth:`close`) so the client stops queuing
    for it. Each wait for the next item is bounded by ``idle_s``: a stream that goes quiet
    raises :class:`DeviceTimeout`.
    """

    def __init__(self, client: Lpm01aClient, idle_s: float) -> None:
        self._client = client
        self.idle_s = idle_s
        self._queue: asyncio.Queue[object] = asyncio.Queue(STREAM_BACKLOG)
        self.overflowed = False

    def _put(self, item: object) -> bool:
        try:
            self._queue.put_nowait(item)
        except asyncio.QueueFull:
            self.overflowed = True
            return False
        return True

    def close(self) -> None:
        """Stop receiving items."""
        self._client._unsubscribe(self)

    async def __aenter__(self) -> LpmStream:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __aiter__(self) -> LpmStream:
        return self

    async def __anext__(self) -> StreamItem:
        if self.overflowed and self._queue.empty():
            raise GarbledReply(f"{self._client.port}: stream reader fell behind; data dropped")
        try:
            async with asyncio.timeout(self.idle_s):
                item = await self._queue.get()
        except TimeoutError:
            # The monitor acknowledged its set-up before streaming: it is there and at the
            # right baud, it has gone quiet.
            raise DeviceTimeout(
                self._client.port,
                "stream",
                self.idle_s,
                0,
                False,
                self._client.link.baud,
                answered_before=True,
            ) from None
        if item is _END:
            self._queue.put_nowait(_END)  # keep ending for any later call
            lost = self._client.lost
            if lost is not None:
                raise lost
            raise StopAsyncIteration
        assert isinstance(item, StreamItem)
        return item


class Lpm01aClient:
    """An LPM01A over ``link`` (3686400 baud), one command at a time.

    ``detail_wait_s`` is how long an ``error`` reply waits for an optional ``Error detail``
    line (default: the wire model's idle gap).
    """

    def __init__(
        self,
        link: SerialLink,
        wire: WireModel | None = None,
        *,
        detail_wait_s: float | None = None,
    ) -> None:
        self.link = link
        self.port = link.port
        self.wire = wire or WireModel(link.baud)
        self.detail_wait_s = detail_wait_s if detail_wait_s is not None else self.wire.idle_gap()
        self.freq_hz = 1000
        """Sample rate the client last set (``freq``), for window durations and stream idle
        deadlines."""
        self.acquiring = False
        self.lost: LinkLost | None = None
        """Set once the link went away; every later call raises it."""
        self._host = Lpm01aHost()
        self._lock = asyncio.Lock()
        self._reader: asyncio.Task[None] | None = None
        self._pending: asyncio.Future[Lpm01aReply] | None = None
        self._detail_timer: asyncio.TimerHandle | None = None
        self._capture = EnergyCapture()
        self._capture_error: RemoteProtocolError | None = None
        self._window_events = 0
        self._event_arrived = asyncio.Event()
        self._streams: list[LpmStream] = []
        self._message_bytes = 0
        self._malformed = 0
        self._owns_link = False

    @classmethod
    async def open(
        cls, port: str, *, baud: int = HOST_BAUD, wire: WireModel | None = None
    ) -> Lpm01aClient:
        """Open ``port`` and return a client that closes it in :meth:`close`."""
        client = cls(await SerialLink.open(port, baud), wire)
        client._owns_link = True
        return client

    async def __aenter__(self) -> Lpm01aClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Stop the reader task, end open streams, fail a waiting command; close the link if
        this client opened it. Idempotent."""
        reader, self._reader = self._reader, None
        if reader is not None:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
        self._shutdown(LinkLost(self.port, "client closed"))
        if self._owns_link:
            await self.link.close()

    # -- commands -----------------------------------------------------------------------------

    def timeout_for(self, command: str, reply_bytes: int | None = None) -> float:
        """Deadline for ``command``: its bytes out, the ack (or error and detail) back with
        stream data interleaved, slack and margin, plus the wait for an ``Error detail``."""
        if reply_bytes is None:
            reply_bytes = 2 * len(PROMPT) + len(command) + _REPLY_EXTRA
            if command == "stop":
                reply_bytes += len(ACQUISITION_COMPLETED_LINE)
        sent = len(command) + 2
        return self.wire.timeout(sent, reply_bytes + STREAM_ALLOWANCE) + self.detail_wait_s

    async def command(self, command: str, *, reply_bytes: int | None = None) -> Lpm01aReply:
        """Send one shell command and wait for its ack (for ``stop``: and ``Acquisition
        completed``). Raises DeviceCommandError with the device's ``Error detail`` text (or
        its ``error`` line) on a rejection, DeviceTimeout if no ack comes in time."""
        async with self._lock:
            self._ensure_reader()
            if self.lost is not None:
                raise self.lost
            loop = asyncio.get_running_loop()
            data = self._host.send(command)
            deadline = self.timeout_for(command, reply_bytes)
            future: asyncio.Future[Lpm01aReply] = loop.create_future()
            self._pending = future
            before, malformed = self._message_bytes, self._malformed
            self.link.write(data)
            try:
                async with asyncio.timeout(deadline):
                    reply = await future
            except TimeoutError:
                self._host.abandon()
                self._cancel_detail_timer()
                raise DeviceTimeout(
                    self.port,
                    command,
                    deadline,
                    self._message_bytes - before,
                    self._malformed > malformed,
                    self.link.baud,
                ) from None
            finally:
                self._pending = None
        if reply.stray:
            log.info(
                "lpm01a_stray",
                port=self.port,
                command=command,
                lines=[text(e.line) for e in reply.stray],
            )
        if not reply.ok:
            raise DeviceCommandError(self.port, command, _error_text(reply))
        self._track(command)
        return reply

    def _track(self, command: str) -> None:
        words = command.split()
        if words[0] == "freq" and len(words) == 2:
            value = parse_number(words[1])
            if value is not None and value > 0:
                self.freq_hz = int(value)

    async def setup(self, voltage_mv: int) -> None:
        """The official runner's session set-up: host control, LCD, target off, infinite
        acquisition, software trigger, D7 falling-edge events, energy output, ASCII, 1 kHz,
        the supply voltage."""
        for command in setup_commands(voltage_mv):
            await self.command(command)

    async def configure(self, voltage_mv: int) -> None:
        """The runner's set-up (:meth:`setup`), then the DUT powered at ``voltage_mv``."""
        await self.setup(voltage_mv)
        await self.power(True, voltage_mv=voltage_mv)

    async def power(self, on: bool, *, voltage_mv: int | None = None) -> None:
        """Switch the DUT's supply. With ``voltage_mv``, power-on is the runner's
        (the voltage on LCD line 2, then ``pwr on nostatus``)."""
        if not on:
            await self.command("pwr off")
            return
        commands = ["pwr on"] if voltage_mv is None else power_on_commands(voltage_mv)
        for command in commands:
            await self.command(command)

    async def voltage(self, voltage_mv: int) -> None:
        """Set the supply voltage (1800..3300 mV)."""
        if not MIN_VOLTAGE_MV <= voltage_mv <= MAX_VOLTAGE_MV:
            raise LocalProtocolError(
                f"voltage {voltage_mv} mV outside {MIN_VOLTAGE_MV}..{MAX_VOLTAGE_MV} mV"
            )
        await self.command(f"volt {voltage_mv}m")

    async def target_reset(self, seconds: float) -> None:
        """Cut the DUT's supply for ``seconds`` (10 ms..1 s), then restore it; returns once
        the supply is back (the shell is busy meanwhile)."""
        ms = round(seconds * 1000)
        if not 10 <= ms <= 1000:
            raise LocalProtocolError(f"targrst takes 10 ms..1 s, got {seconds} s")
        await self.command(f"targrst {ms}m")
        await asyncio.sleep(ms / 1000)

    async def start(self) -> None:
        """Start the acquisition; the capture starts empty."""
        self._capture = EnergyCapture()
        self._capture_error = None
        self._window_events = 0
        self.acquiring = True
        try:
            await self.command(START)
        except BaseException:
            self.acquiring = False
            raise

    async def stop(self) -> None:
        """Stop the acquisition; returns after ``Acquisition completed``."""
        await self.command("stop")
        self.acquiring = False

    async def teardown(self) -> None:
        """The runner's end of session: supply off, stop (if acquiring), off again, release
        host control."""
        for command in teardown_commands():
            if command == "stop":
                if self.acquiring:
                    await self.stop()
                continue
            await self.command(command)

    # -- stream ---------------------------------------------------------------------------------

    def stream_idle_s(self) -> float:
        """How long the stream may stay silent while acquiring: one sample period, a device
        burst, slack and margin."""
        return self.wire.timeout(0, STREAM_ALLOWANCE, 1 / self.freq_hz)

    def stream(self, idle_s: float | None = None) -> LpmStream:
        """Every data line from now on (samples, TimeStamp and event lines, and
        ``Acquisition completed``), in order: ``async with client.stream() as s: async for
        item in s``."""
        self._ensure_reader()
        view = LpmStream(self, idle_s if idle_s is not None else self.stream_idle_s())
        if self.lost is not None:
            view._put(_END)
        else:
            self._streams.append(view)
        return view

    def _unsubscribe(self, view: LpmStream) -> None:
        with contextlib.suppress(ValueError):
            self._streams.remove(view)

    def drain(self) -> EnergyWindow:
        """Everything captured since the last drain (or ``start``), as the runner drains
        after each ``infer``. Raises :class:`EnergyDataError` (with the window) if event
        numbers were not consecutive."""
        window = self._capture.drain()
        self._window_events = 0
        error, self._capture_error = self._capture_error, None
        if error is not None:
            raise EnergyDataError(f"{self.port}: {error}", window)
        return window

    async def window(self, events: int = 2, timeout_s: float | None = None) -> EnergyWindow:
        """Wait until the capture holds at least ``events`` event lines, then drain it.

        The monitor sends an edge's event line within a burst of the edge, so the default
        deadline is the stream's idle deadline."""
        self._ensure_reader()
        deadline = timeout_s if timeout_s is not None else self.stream_idle_s()
        try:
            async with asyncio.timeout(deadline):
                while self._window_events < events:
                    if self.lost is not None:
                        raise self.lost
                    self._event_arrived.clear()
                    await self._event_arrived.wait()
        except TimeoutError:
            raise DeviceTimeout(
                self.port,
                f"<{events} events>",
                deadline,
                self._window_events,
                False,
                self.link.baud,
                answered_before=True,
            ) from None
        return self.drain()

    # -- reader ---------------------------------------------------------------------------------

    def _ensure_reader(self) -> None:
        if self._reader is None and self.lost is None:
            self._reader = asyncio.get_running_loop().create_task(
                self._read_loop(), name=f"lpm01a-reader-{self.port}"
            )

    async def _read_loop(self) -> None:
        try:
            while True:
                data = await self.link.read()
                for event in self._host.feed(data):
                    self._route(event)
                self._settle()
        except LinkLost as exc:
            log.warning("lpm01a_link_lost", port=self.port, error=exc)
            self._shutdown(exc)
        except Exception as exc:
            # A bug must not leave commands waiting on a reader that is gone: fail them now,
            # loudly, with the cause.
            log.exception("lpm01a_reader_failed", port=self.port)
            self._shutdown(LinkLost(self.port, f"reader failed: {type(exc).__name__}: {exc}"))

    def _route(self, event: Lpm01aEvent) -> None:
        if isinstance(event, StreamItem):
            try:
                self._capture.add(event)
            except RemoteProtocolError as exc:
                log.warning("lpm01a_event_gap", port=self.port, error=exc)
                self._capture_error = self._capture_error or exc
            if isinstance(event, EdgeEvent):
                self._window_events += 1
                self._event_arrived.set()
            for view in list(self._streams):
                if not view._put(event):
                    log.warning("lpm01a_stream_overflow", port=self.port)
                    self._unsubscribe(view)
            if not isinstance(event, AcquisitionCompleted):
                return
        if isinstance(event, Malformed):
            self._malformed += 1
            log.warning(
                "lpm01a_malformed", port=self.port, reason=event.reason, line=event.line[:80]
            )
        self._message_bytes += len(event.line) + 1

    def _settle(self) -> None:
        """Hand completed replies to the waiting command; time the wait for an optional
        ``Error detail`` line."""
        for reply in self._host.take_replies():
            future = self._pending
            if future is not None and not future.done():
                future.set_result(reply)
            else:
                log.info("lpm01a_late_reply", port=self.port, command=reply.command)
        if self._host.state is Lpm01aState.AWAIT_DETAIL:
            if self._detail_timer is None:
                loop = asyncio.get_running_loop()
                self._detail_timer = loop.call_later(self.detail_wait_s, self._detail_timeout)
        else:
            self._cancel_detail_timer()

    def _detail_timeout(self) -> None:
        self._detail_timer = None
        self._host.flush()
        self._settle()

    def _cancel_detail_timer(self) -> None:
        if self._detail_timer is not None:
            self._detail_timer.cancel()
            self._detail_timer = None

    def _shutdown(self, exc: LinkLost) -> None:
        if self.lost is None:
            self.lost = exc
        self._cancel_detail_timer()
        future = self._pending
        if future is not None and not future.done():
            future.set_exception(self.lost)
        self._event_arrived.set()
        for view in self._streams:
            view._put(_END)
        self._streams.clear()


def _error_text(reply: Lpm01aReply) -> str:
    if reply.error_detail is not None:
        return reply.error_detail
    errors = [text(e.line) for e in reply.events if isinstance(e, Error)]
    return errors[-1] if errors else "rejected without a reason"
