"""A simulated device's USB serial port: a pseudo-terminal behind a stable symlink.

The host opens ``path`` exactly like a real ``/dev/ttyACM0`` (pyserial, pyserial-asyncio-fast).
A pty moves bytes instantly and ignores the baud rate, so this port does the line timing
itself: output is released at 10/baud s per byte (8N1), input is handed to the device only
at its wire arrival time (see :mod:`farm.sim.pacing`). The speed the host configured is
readable with :meth:`PtyPort.host_baud`, so a device model can garble a mismatched link.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import os
import struct
import sys
import termios
from pathlib import Path

from farm.logs import get_logger
from farm.sim.pacing import PortClosedError, RxBuffer, TxPacer
from farm.sim.transcript import Transcript

log = get_logger(__name__)

_READ_SIZE = 65536

# struct termios2 (asm-generic): c_iflag c_oflag c_cflag c_lflag, c_line, c_cc[19],
# c_ispeed c_ospeed -> 44 bytes. TCGETS2 = _IOR('T', 0x2A, struct termios2); the same
# number on x86, arm and arm64 (powerpc/mips/sparc differ, and there the fallback is used).
_TERMIOS2 = struct.Struct("=4IB19s2I")
_TCGETS2 = 0x802C542A
_CBAUD = getattr(termios, "CBAUD", 0o010017)
_BOTHER = 0o010000

# termios speed constants (B9600 ...) -> bits per second, for the tcgetattr fallback.
_SPEEDS: dict[int, int] = {
    getattr(termios, name): int(name[1:])
    for name in dir(termios)
    if name.startswith("B") and name[1:].isdigit()
}
_SPEED_CONSTS: dict[int, int] = {bps: const for const, bps in _SPEEDS.items()}


def _make_raw(fd: int, baud: int) -> None:
    """cfmakeraw() on ``fd`` (Python 3.11 has no termios.cfmakeraw) plus the device's baud
    as the initial speed, so :meth:`PtyPort.host_baud` reports no mismatch before the host
    has configured the port."""
    attrs = termios.tcgetattr(fd)
    iflag, oflag, cflag, lflag, ispeed, ospeed, cc = attrs
    # Every input translation must go: a binary model download contains CR, 0x03, 0x11 ...
    iflag &= ~(
        termios.IGNBRK
        | termios.BRKINT
        | termios.PARMRK
        | termios.ISTRIP
        | termios.INLCR
        | termios.IGNCR
        | termios.ICRNL
        | termios.IXON
        | termios.IXOFF
        | termios.IXANY
    )
    oflag &= ~termios.OPOST
    lflag &= ~(termios.ECHO | termios.ECHONL | termios.ICANON | termios.ISIG | termios.IEXTEN)
    cflag &= ~(termios.CSIZE | termios.PARENB)
    cflag |= termios.CS8 | termios.CREAD | termios.CLOCAL
    cc[termios.VMIN] = 1
    cc[termios.VTIME] = 0
    speed = _SPEED_CONSTS.get(baud)
    if speed is not None:
        ispeed = ospeed = speed
    termios.tcsetattr(fd, termios.TCSANOW, [iflag, oflag, cflag, lflag, ispeed, ospeed, cc])


class PtyPort:
    """The :class:`farm.sim.uart.Uart` of a simulated device, exposed to the host as a pty.

    ``path`` is a symlink to the pty's slave device; it survives :meth:`disconnect` (the host
    reopens the same path). A slave fd stays open in the simulator for the whole life of
    each pty, so the host may close and reopen the port without the master seeing EIO.
    Bytes the device writes while the host has the port closed wait in the pty (pyserial
    flushes them when it opens the port); while the port is disconnected they are paced
    and discarded, as a device printing into an unplugged cable.
    """

    def __init__(
        self, link_path: str | Path, baud: int, *, transcript: Transcript | None = None
    ) -> None:
        if baud <= 0:
            raise ValueError(f"baud must be positive, got {baud}")
        self._link = Path(link_path)
        self._baud = baud
        self._transcript = transcript
        self._pacer = TxPacer()
        self._rx = RxBuffer()
        self._master = -1
        self._slave = -1
        self._slave_name = ""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._writable: asyncio.Future[None] | None = None
        self._connected = asyncio.Event()
        self._started = False
        self._closed = False

    # -- Uart -------------------------------------------------------------------------------

    @property
    def baud(self) -> int:
        """The device's line rate; changing it applies to writes started afterwards and to
        bytes received afterwards."""
        return self._baud

    @baud.setter
    def baud(self, value: int) -> None:
        if value <= 0:
            raise ValueError(f"baud must be positive, got {value}")
        self._baud = value

    async def write(self, data: bytes) -> None:
        """Send ``data`` paced at the line rate; return when the last byte is due.

        Raises :class:`PortClosedError` if the port is closed (or not started).
        """
        if not self._started or self._closed:
            raise PortClosedError(f"port {self._link} is not open")
        await self._pacer.send(data, self._baud, self._emit)

    async def read(self) -> bytes:
        """Return the received bytes whose wire arrival time has passed, waiting for at least
        one. Raises :class:`PortClosedError` once the port is closed."""
        return await self._rx.read()

    def drop_received_between(self, start: float, end: float, keep: int) -> int:
        """Of the pending bytes that arrived in ``[start, end)``, keep the first ``keep`` and
        drop the rest (an RX overrun); return how many were dropped."""
        return self._rx.drop_received_between(start, end, keep)

    def clear_input(self) -> int:
        """Drop every received byte not yet read (a reset); return how many."""
        return self._rx.clear()

    # -- lifecycle --------------------------------------------------------------------------

    @property
    def path(self) -> Path:
        """The stable symlink the host opens."""
        return self._link

    @property
    def device_name(self) -> str:
        """The current pty slave device (``/dev/pts/N``); changes on every reconnect."""
        return self._slave_name

    @property
    def connected(self) -> bool:
        """True while the port is plugged in (started, not closed, not disconnected)."""
        return self._connected.is_set()

    @property
    def tx_free_at(self) -> float:
        """Event-loop time at which the device's output line becomes idle."""
        return self._pacer.tx_free_at

    @property
    def rx_free_at(self) -> float:
        """Event-loop time at which the last byte received from the host has arrived."""
        return self._rx.rx_free_at

    async def wait_connected(self) -> None:
        """Return once the port is plugged in (immediately if it already is)."""
        await self._connected.wait()

    async def start(self) -> None:
        """Create the pty and the symlink; the host can open :attr:`path` afterwards."""
        if self._started:
            raise RuntimeError(f"port {self._link} already started")
        self._loop = asyncio.get_running_loop()
        await self._open_pty()
        self._started = True

    async def close(self) -> None:
        """Unplug for good: remove the symlink and the reader, close the fds, wake any
        pending read or write (they raise :class:`PortClosedError`). Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._rx.close()
        await self._close_pty()
        log.info("pty_closed", path=self._link)

    async def __aenter__(self) -> PtyPort:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def disconnect(self, down_s: float) -> None:
        """Simulate a USB unplug for ``down_s`` seconds, then plug back in.

        Both pty fds are closed and the symlink removed, so the host's open port breaks.
        pyserial: ``Serial.read()`` raises ``serial.SerialException`` ("device reports
        readiness to read but returned no data ...": the hung-up slave reads EOF) and
        ``Serial.write()`` raises ``serial.SerialException`` ("write failed: [Errno 5]
        Input/output error"). pyserial-asyncio-fast: the transport closes itself and
        ``StreamReader.read()`` raises that same ``serial.SerialException`` (a subclass of
        ``OSError``); ``StreamWriter.write()`` raises nothing, ``StreamWriter.drain()``
        re-raises the ``SerialException``. Opening the path while unplugged raises
        ``serial.SerialException`` (errno ENOENT).

        Pending input is lost; output written meanwhile is paced and discarded. After the
        delay a new pty (a new ``/dev/pts/N``) is created behind the same path and the host
        reopens it. If this coroutine is cancelled during the delay the port is plugged back
        in at once (unless it was closed), so a cancelled fault cannot strand the device.
        """
        if not self._started or self._closed:
            raise PortClosedError(f"port {self._link} is not open")
        if not self.connected:
            raise RuntimeError(f"port {self._link} is already disconnected")
        self._rx.clear()
        await self._close_pty()
        log.info("pty_unplugged", path=self._link, down_s=down_s)
        try:
            await asyncio.sleep(down_s)
        finally:
            if not self._closed:
                await self._open_pty()

    # -- host side --------------------------------------------------------------------------

    def host_baud(self) -> int | None:
        """The speed the host configured on the port, or None if it cannot be read
        (unplugged). Custom rates (BOTHER, e.g. 3686400) are read with TCGETS2; standard
        ones also with tcgetattr where TCGETS2 is unavailable."""
        fd = self._slave
        if fd < 0:
            return None
        if sys.platform.startswith("linux"):
            try:
                raw = fcntl.ioctl(fd, _TCGETS2, bytes(_TERMIOS2.size))
                _i, _o, cflag, _l, _line, _cc, ispeed, ospeed = _TERMIOS2.unpack(raw)
                if (cflag & _CBAUD) == _BOTHER or ospeed:
                    baud: int = ospeed or ispeed
                    return baud
            except OSError as e:
                log.debug("tcgets2_failed", path=self._link, errno=e.errno)
        try:
            attrs = termios.tcgetattr(fd)
        except termios.error:
            return None
        return _SPEEDS.get(attrs[5])

    # -- internals --------------------------------------------------------------------------

    async def _open_pty(self) -> None:
        assert self._loop is not None
        master, slave = os.openpty()
        try:
            _make_raw(slave, self._baud)
            os.set_blocking(master, False)
            name = os.ttyname(slave)
            # Filesystem calls go to a thread: the path may be on a slow or network mount.
            await asyncio.to_thread(self._replace_link, name)
        except BaseException:
            os.close(master)
            os.close(slave)
            raise
        self._master, self._slave, self._slave_name = master, slave, name
        if self._closed:
            # close() ran while the link was being created: undo, leave nothing behind.
            await self._close_pty()
            return
        self._loop.add_reader(master, self._on_readable)
        self._connected.set()
        log.info("pty_open", path=self._link, tty=name, baud=self._baud)

    async def _close_pty(self) -> None:
        self._connected.clear()
        if self._master >= 0:
            assert self._loop is not None
            self._loop.remove_reader(self._master)
            self._loop.remove_writer(self._master)
            os.close(self._master)
            self._master = -1
        if self._slave >= 0:
            os.close(self._slave)
            self._slave = -1
        if self._writable is not None and not self._writable.done():
            self._writable.set_result(None)
        if self._slave_name:
            await asyncio.to_thread(self._remove_link, self._slave_name)

    def _replace_link(self, target: str) -> None:
        link = self._link
        if link.exists() and not link.is_symlink():
            # Never clobber a real file or device node someone pointed us at by mistake.
            raise FileExistsError(f"{link} exists and is not a symlink")
        link.parent.mkdir(parents=True, exist_ok=True)
        tmp = link.with_name(f".{link.name}.{os.getpid()}.{id(self):x}.tmp")
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        os.symlink(target, tmp)
        # rename(2) is atomic: a host opening the path sees the old or the new pty, never none.
        os.replace(tmp, link)

    def _remove_link(self, target: str) -> None:
        # Only our own link: another simulator may have taken the path over meanwhile.
        try:
            if os.readlink(self._link) == target:
                self._link.unlink()
        except OSError:
            pass

    def _on_readable(self) -> None:
        assert self._loop is not None
        now = self._loop.time()
        chunks: list[bytes] = []
        while True:
            try:
                chunk = os.read(self._master, _READ_SIZE)
            except BlockingIOError:
                break
            except OSError as e:
                if e.errno != errno.EIO:
                    raise
                # Only happens with no slave fd open, which the kept fd prevents; stop
                # listening rather than spin on a permanently readable fd.
                log.error("pty_master_eio", path=self._link)
                self._loop.remove_reader(self._master)
                break
            if not chunk:
                break
            chunks.append(chunk)
        if not chunks:
            return
        data = b"".join(chunks)
        if self._transcript is not None:
            self._transcript.record("rx", data, now)
        self._rx.feed(data, now, self._baud)

    async def _emit(self, chunk: bytes, first_due: float, char_s: float) -> None:
        if self._master >= 0 and self._transcript is not None:
            # Only what reached the pty: output into an unplugged cable is not part of the
            # session the host saw.
            self._transcript.record("tx", chunk, first_due)
        view = memoryview(chunk)
        while view:
            if self._master < 0:
                if self._closed:
                    raise PortClosedError(f"port {self._link} closed")
                return  # unplugged: the bytes go nowhere
            try:
                n = os.write(self._master, view)
            except BlockingIOError:
                await self._wait_writable()
                continue
            except OSError as e:
                if e.errno != errno.EIO:
                    raise
                log.warning("pty_write_eio", path=self._link, dropped=len(view))
                return
            view = view[n:]

    async def _wait_writable(self) -> None:
        # The host is not reading and the pty buffer is full: sleep until it drains instead
        # of spinning. _close_pty resolves the future so an unplug cannot strand a writer.
        assert self._loop is not None
        fut: asyncio.Future[None] = self._loop.create_future()
        self._writable = fut
        fd = self._master

        def ready() -> None:
            if not fut.done():
                fut.set_result(None)

        self._loop.add_writer(fd, ready)
        try:
            await fut
        finally:
            if self._master == fd:
                self._loop.remove_writer(fd)
            self._writable = None
