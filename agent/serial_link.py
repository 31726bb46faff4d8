"""A thin asyncio transport over a serial device path: bytes in, bytes out, nothing more.

Built on pyserial-asyncio-fast rather than pyserial-asyncio: the fast variant writes at once
(pyserial-asyncio 0.6 only buffers until a later loop turn, which adds a loop turn to every
command's round trip), and its pty round trip measured ~70-100 µs against ~90-120 µs. Both
open the port in an executor, so opening never blocks the event loop.

Framing and meaning belong to the sans-IO protocol objects; this module only moves bytes and
turns OS failures into errors that name the port.
"""

from __future__ import annotations

import asyncio
import errno
import time
from collections.abc import Callable

import serial
import serial_asyncio_fast

from farm.logs import get_logger
from farm.wire import WireModel

log = get_logger("agent.serial_link")


class SerialLinkError(Exception):
    """A failure of the serial port itself (not of the protocol spoken over it)."""

    def __init__(self, port: str, message: str) -> None:
        super().__init__(f"{port}: {message}")
        self.port = port


class PortNotFound(SerialLinkError):
    """The port path does not exist (board unplugged, wrong path or match)."""


class PortBusy(SerialLinkError):
    """Another process holds the port (exclusive lock or ``EBUSY``)."""


class LinkLost(SerialLinkError):
    """The port went away while open (USB unplug, pty closed)."""


Receiver = Callable[[bytes], None]


class _Inbox(asyncio.Protocol):
    """Collects received bytes for :meth:`SerialLink.read`, or hands them straight to a
    receiver (a protocol object completing a reply without a loop turn in between)."""

    def __init__(self) -> None:
        self.buffer = bytearray()
        self.ready = asyncio.Event()
        self.lost: BaseException | None = None
        self.closed = False
        self.closed_event = asyncio.Event()
        self.receiver: Receiver | None = None
        self.on_lost: Callable[[], None] | None = None
        self.received = 0

    def data_received(self, data: bytes) -> None:
        self.received += len(data)
        if self.receiver is not None:
            self.receiver(data)
            return
        self.buffer += data
        self.ready.set()

    def connection_lost(self, exc: BaseException | None) -> None:
        self.closed = True
        self.lost = exc
        self.ready.set()
        self.closed_event.set()
        if self.on_lost is not None:
            self.on_lost()


class SerialLink:
    """One open serial port. Not safe for concurrent commands: the clients above it hold a
    lock so that exactly one command is outstanding per link."""

    def __init__(self, port: str, baud: int) -> None:
        self.port = port
        self.baud = baud
        self._transport: serial_asyncio_fast.SerialTransport | None = None
        self._inbox = _Inbox()
        self.bytes_out = 0

    @classmethod
    async def open(cls, port: str, baud: int, *, exclusive: bool = True) -> SerialLink:
        """Open ``port`` (a device path or a pyserial URL such as ``socket://host:port``)."""
        link = cls(port, baud)
        await link._open(exclusive)
        return link

    async def _open(self, exclusive: bool) -> None:
        loop = asyncio.get_running_loop()
        await _closed_by_us(self.port)
        self._inbox = _Inbox()
        kwargs: dict[str, object] = {"baudrate": self.baud}
        if not self.port.startswith(("socket://", "rfc2217://")):
            kwargs["exclusive"] = exclusive
        try:
            transport, _ = await serial_asyncio_fast.create_serial_connection(
                loop, lambda: self._inbox, self.port, **kwargs
            )
        except serial.SerialException as exc:
            raise _classify_open_error(self.port, exc) from exc
        except (FileNotFoundError, OSError) as exc:
            raise _classify_open_error(self.port, exc) from exc
        self._transport = transport
        log.info("serial_open", port=self.port, baud=self.baud)

    @property
    def is_open(self) -> bool:
        """True while the port is open and has not been lost."""
        return self._transport is not None and not self._inbox.closed

    def write(self, data: bytes) -> None:
        """Queue ``data`` for the port (the fast transport writes it at once if it can)."""
        if self._transport is None or self._inbox.closed:
            raise LinkLost(self.port, "port is closed")
        self._transport.write(data)
        self.bytes_out += len(data)

    async def read(self) -> bytes:
        """Wait for and return everything received since the last read.

        Raises :class:`LinkLost` if the port went away. Callers bound the wait with a timeout
        from the wire-time model.
        """
        inbox = self._inbox
        while not inbox.buffer:
            if inbox.closed:
                raise self.lost_error()
            inbox.ready.clear()
            await inbox.ready.wait()
        data = bytes(inbox.buffer)
        inbox.buffer.clear()
        return data

    def read_nowait(self) -> bytes:
        """Everything received and not read yet, without waiting (may be empty)."""
        data = bytes(self._inbox.buffer)
        self._inbox.buffer.clear()
        return data

    @property
    def bytes_in(self) -> int:
        """Bytes received since the port was opened."""
        return self._inbox.received

    def attach(self, receiver: Receiver | None, on_lost: Callable[[], None] | None = None) -> None:
        """Deliver received bytes to ``receiver`` as they arrive (``None``: buffer them for
        :meth:`read` again); ``on_lost`` is called if the port goes away."""
        self._inbox.receiver = receiver
        self._inbox.on_lost = on_lost

    def lost_error(self) -> LinkLost:
        """The error describing why the port is gone."""
        lost = self._inbox.lost
        return LinkLost(self.port, f"port lost: {lost}" if lost else "port closed")

    def discard_input(self) -> int:
        """Drop everything received and not read yet (a resync); return how many bytes."""
        n = len(self._inbox.buffer)
        self._inbox.buffer.clear()
        if self._transport is not None and self._transport.serial is not None:
            try:
                n += self._transport.serial.in_waiting
                self._transport.serial.reset_input_buffer()
            except (OSError, serial.SerialException):
                pass
        return n

    async def reopen(self) -> None:
        """Close and open again (after the device came back from an unplug)."""
        await self.close()
        await self._open(exclusive=True)

    async def close(self) -> None:
        """Close the port; idempotent."""
        transport, self._transport = self._transport, None
        if transport is None:
            return
        transport.close()
        # The transport releases the fd (and its exclusive lock) in an executor thread; wait
        # for connection_lost so an immediate reopen does not find the port busy.
        try:
            async with asyncio.timeout(WireModel(self.baud).margin_s):
                await self._inbox.closed_event.wait()
        except TimeoutError:
            # Still closing (a busy CPU): the next open of this port waits for it.
            _CLOSING[self.port] = self._inbox
            log.warning("serial_close_slow", port=self.port)
        log.info("serial_close", port=self.port)


#: Ports this process closed whose fd (and exclusive lock) was not released yet.
_CLOSING: dict[str, _Inbox] = {}
#: The longest an open waits for this process's own close of the port to finish.
CLOSE_WAIT_S = 5.0
_CLOSE_POLL_S = 0.01


async def _closed_by_us(port: str) -> None:
    """Wait (bounded) until a close of ``port`` by this process has released it: a run's
    ports reopened right after its health check, or a retry right after its earlier attempt,
    must not find its own lock held (``PortBusy``)."""
    inbox = _CLOSING.get(port)
    if inbox is None:
        return
    # Polled, not awaited: the close's event is bound to the loop that closed the port,
    # which need not be this one (one rare, bounded wait, after a slow close only).
    give_up = time.monotonic() + CLOSE_WAIT_S
    while not inbox.closed and time.monotonic() < give_up:  # noqa: ASYNC110
        await asyncio.sleep(_CLOSE_POLL_S)
    _CLOSING.pop(port, None)


def _classify_open_error(port: str, exc: BaseException) -> SerialLinkError:
    code = getattr(exc, "errno", None)
    text = str(exc)
    if code == errno.ENOENT or "No such file" in text:
        return PortNotFound(
            port, "no such serial port (is the board plugged in and the path right?)"
        )
    if code == errno.EBUSY or "exclusively lock" in text or "busy" in text.lower():
        return PortBusy(port, "port is busy: another process has it open")
    if code == errno.EACCES or "Permission denied" in text:
        return SerialLinkError(port, "permission denied (is the user in the dialout group?)")
    return SerialLinkError(port, f"cannot open: {text}")
