"""The Joulescope JS220 as an energy monitor (:class:`agent.energy_monitor.EnergyMonitor`),
through the ``joulescope`` package (the ``js220`` extra).

Set up as the official runner does: raw source, sensor on, 1 MS/s, I/O at 3.3 V, GPI0 as the
trigger and carried in the current's LSB. A reader thread polls the device's stream buffer
and turns what it holds into 1 ms energy bins and GPI0 rising-edge events
(:mod:`agent.js220_bins`). The package's calls block, so none runs on the event loop: the
reader is a thread this client starts in :meth:`Js220Client.start` and ends in
:meth:`Js220Client.stop`, and every other device call runs in a worker thread with a
deadline.

Unlike the official runner, which prints a failed fetch and skips its range (and silently
jumps over samples its ring buffer overwrote before they were read), lost samples keep their
place in the window as NaN bins, counted and logged: a window whose last two events bracket
lost data scores NaN (docs/measurement.md#energy-validity). The JS220 does not supply the
DUT: the board's own supply does.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from agent.energy_monitor import EnergyWindow
from agent.js220_bins import Binner, Segment
from farm.logs import get_logger
from farm.usb_ids import JS220_USB

log = get_logger("agent.js220_client")

RAW_RATE_HZ = 1_000_000
BIN_RATE_HZ = 1000
#: The official runner's settings, in its order.
PARAMETERS: tuple[tuple[str, str | int], ...] = (
    ("source", "raw"),
    ("sensor_power", "on"),
    ("sampling_frequency", RAW_RATE_HZ),
    ("io_voltage", "3.3V"),
    ("trigger_source", "gpi0"),
    ("current_lsb", "gpi0"),
)
#: What the reader fetches: GPI0 is the current's LSB (``current_lsb=gpi0``).
FIELDS = ["current", "voltage", "current_lsb"]
#: The package's scan configuration: auto current ranging (a DUT goes from µA idle to mA
#: busy) and the 15 V voltage range; the package's default.
SCAN_CONFIG = "auto"
#: How long the reader sleeps when the stream buffer holds nothing new; the device hands
#: samples over in USB transfers of a few ms.
POLL_S = 0.005
#: Raw samples per fetch at most (0.2 s: a few MB of arrays).
MAX_FETCH = 200_000
#: Deadline of one blocking call into the package (scan, open, parameters, start, stop, close).
CALL_TIMEOUT_S = 10.0
#: How long stopping waits for the reader thread (one fetch and its bins at most).
JOIN_TIMEOUT_S = 5.0
#: How long a window waits for its events after the ``infer`` reply: the edges reach the
#: stream buffer in USB transfers and then the reader's next poll, well within this.
EVENT_WAIT_S = 2.0


class MonitorUnavailable(OSError):
    """The JS220 cannot be found, opened or driven (the joulescope package is missing, no
    or several JS220s are connected, a call into the package failed or hung)."""


class EdgeTimeout(TimeoutError):
    """A window's timestamp-pin edges did not arrive."""


class Js220Client:
    """One JS220 opened through the joulescope package (see the module docstring).

    ``device`` is the package's device object (from ``joulescope.scan``); use
    :meth:`open` to find and open one."""

    def __init__(self, device: Any, *, poll_s: float = POLL_S) -> None:
        self.device = device
        self.name = f"JS220 {getattr(device, 'serial_number', '?')}"
        self.freq_hz = BIN_RATE_HZ
        self.poll_s = poll_s
        self.acquiring = False
        self.fetch_errors = 0
        """Failed ``samples_get`` calls over the client's life."""
        self.lost_samples = 0
        """Raw samples lost (failed fetches, overrun ring buffer) over the client's life."""
        self._lock = threading.Lock()
        self._halt = threading.Event()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._arrived = asyncio.Event()
        self._binner = Binner(RAW_RATE_HZ, BIN_RATE_HZ)
        self._next_id: int | None = None
        # Guarded by _lock: the current window, filled by the reader, drained by the loop.
        self._samples: list[float] = []
        self._events: list[tuple[int, int]] = []
        self._first_sample = 0
        self._window_lost = 0
        self._failure: MonitorUnavailable | None = None
        self._closed = False

    # -- opening --------------------------------------------------------------------------------

    @classmethod
    async def open(cls, serial: str | None = None) -> Js220Client:
        """Find the JS220 with USB serial number ``serial`` (``None``: the only one connected)
        and open it."""
        client = cls(await _blocking("JS220 scan", find_js220, serial))
        await client._call("open", client.device.open)
        log.info("js220_opened", device=str(client.device))
        return client

    async def __aenter__(self) -> Js220Client:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # -- the monitor interface ------------------------------------------------------------------

    async def configure(self, voltage_mv: int) -> None:
        """The runner's parameters. ``voltage_mv`` is the DUT supply the benchmark names: the
        JS220 only measures, so it is logged, not set."""

        def apply() -> None:
            for name, value in PARAMETERS:
                self.device.parameter_set(name, value)

        await self._call("parameter_set", apply)
        log.info("js220_configured", device=self.name, dut_supply_mv=voltage_mv, supply="external")

    async def start(self) -> None:
        """Start streaming and the reader thread; events count from 0, the first window
        starts empty."""
        if self.acquiring:
            raise RuntimeError(f"{self.name}: already acquiring")
        with self._lock:
            self._samples, self._events = [], []
            self._first_sample = self._window_lost = 0
            self._failure = None
        self._binner = Binner(RAW_RATE_HZ, BIN_RATE_HZ)
        self._next_id = None
        self._loop = asyncio.get_running_loop()
        self._halt.clear()
        await self._call("start", self.device.start, self._device_stopped)
        self.acquiring = True
        self._thread = threading.Thread(
            target=self._read_loop, name=f"js220-reader-{self.name}", daemon=True
        )
        self._thread.start()

    async def stop(self) -> None:
        """End the reader thread, then the device's streaming. Idempotent."""
        if not self.acquiring:
            return
        self.acquiring = False
        try:
            await self._end_reader()
        finally:
            await self._call("stop", self.device.stop)

    async def teardown(self) -> None:
        """The runner's end of session: stop streaming (the DUT's supply is not the JS220's)."""
        await self.stop()

    async def close(self) -> None:
        """Stop (if acquiring) and close the device. Idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            await self.stop()
        finally:
            await self._call("close", self.device.close)

    def drain(self) -> EnergyWindow:
        """Everything captured since the previous drain (or ``start``): bins (NaN where data
        was lost) and events."""
        with self._lock:
            window = EnergyWindow(tuple(self._samples), tuple(self._events), (), self._first_sample)
            lost, self._window_lost = self._window_lost, 0
            self._first_sample += len(self._samples)
            self._samples, self._events = [], []
        if lost:
            log.warning(
                "js220_window_lost_data",
                device=self.name,
                lost_samples=lost,
                nan_bins=sum(1 for v in window.samples if v != v),
            )
        return window

    async def window(self, events: int = 2, timeout_s: float | None = None) -> EnergyWindow:
        """Wait until the window holds ``events`` events (at most ``EVENT_WAIT_S``), then
        drain it. Raises :class:`EdgeTimeout` if they do not come, or the reader's failure."""
        deadline = timeout_s if timeout_s is not None else EVENT_WAIT_S
        got = lost = 0
        try:
            async with asyncio.timeout(deadline):
                while True:
                    self._arrived.clear()
                    with self._lock:
                        failure, got, lost = self._failure, len(self._events), self._window_lost
                    if failure is not None:
                        raise failure
                    if got >= events:
                        break
                    await self._arrived.wait()
        except TimeoutError:
            hint = (
                f"; {lost} raw samples were lost in this window: an edge may be among them"
                if lost
                else ": is GPI0 wired to the DUT's timestamp pin (3.3 V logic)?"
            )
            raise EdgeTimeout(
                f"{self.name}: {got} of {events} timestamp-pin edges within {deadline:g} s{hint}"
            ) from None
        return self.drain()

    # -- the reader thread ----------------------------------------------------------------------

    def _read_loop(self) -> None:
        try:
            while not self._halt.is_set():
                if not self._read_once():
                    self._halt.wait(self.poll_s)
        except Exception as exc:
            # The loop must not wait for events from a reader that is gone: fail it loudly.
            log.exception("js220_reader_failed", device=self.name)
            self._fail(f"reader failed: {type(exc).__name__}: {exc}")

    def _read_once(self) -> bool:
        """Fetch and bin (part of) what the stream buffer holds beyond the last fetch; True
        if more is waiting already (read it at once), False to wait a poll period."""
        buffer = self.device.stream_buffer
        if buffer is None:
            return False
        first, end = buffer.sample_id_range
        if first is None or end is None:
            return False
        first, end = int(first), int(end)
        if end <= first:
            return False  # nothing buffered yet: the package reports (0, 0) until data comes
        if self._next_id is None:
            self._next_id = first
        if self._next_id < first:
            # The ring buffer overwrote samples before they were read (the reader fell
            # behind by the buffer's whole duration).
            self._lose(first - self._next_id, "overrun")
            self._next_id = first
        start = self._next_id
        if start >= end:
            return False
        stop = min(end, start + MAX_FETCH)
        self._next_id = stop
        try:
            data = buffer.samples_get(start, stop, fields=FIELDS)
            signals = data["signals"]
            current, voltage, gpi0 = (np.asarray(signals[f]["value"]) for f in FIELDS)
        except (ValueError, KeyError) as exc:
            # The runner's "Sample fetch failed": the range is skipped.
            self._fetch_failed(start, stop, f"{type(exc).__name__}: {exc}")
            return stop < end
        if not len(current) == len(voltage) == len(gpi0) == stop - start:
            # Which samples a short reply holds is unknown: none of them is trusted.
            lengths = [len(current), len(voltage), len(gpi0)]
            self._fetch_failed(start, stop, f"got {lengths} samples for {stop - start}")
            return stop < end
        self._deliver(self._binner.feed(current, voltage, gpi0))
        return stop < end

    def _fetch_failed(self, start: int, stop: int, error: str) -> None:
        self.fetch_errors += 1
        log.warning("js220_fetch_failed", device=self.name, start=start, stop=stop, error=error)
        self._lose(stop - start, "fetch failed")

    def _lose(self, count: int, why: str) -> None:
        self.lost_samples += count
        log.warning("js220_samples_lost", device=self.name, samples=count, why=why)
        segment = self._binner.lose(count)
        with self._lock:
            self._window_lost += count
        self._deliver([segment])

    def _deliver(self, segments: Sequence[Segment]) -> None:
        events = False
        with self._lock:
            for segment in segments:
                self._samples.extend(segment.bins)
                if segment.event is not None:
                    self._events.append((segment.event, len(self._samples)))
                    events = True
        if events:
            self._wake()

    def _device_stopped(self, status: int = 0, message: str = "") -> None:
        """The package's stop callback (from its USB thread): also called by our own stop."""
        if self.acquiring and not self._halt.is_set():
            log.error("js220_stopped_streaming", device=self.name, status=status, message=message)
            self._fail(f"the device stopped streaming (status {status}: {message or 'no reason'})")

    def _fail(self, reason: str) -> None:
        with self._lock:
            self._failure = self._failure or MonitorUnavailable(f"{self.name}: {reason}")
        self._wake()

    def _wake(self) -> None:
        loop = self._loop
        if loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop is closing: nobody waits
                loop.call_soon_threadsafe(self._arrived.set)

    async def _end_reader(self) -> None:
        self._halt.set()
        thread, self._thread = self._thread, None
        if thread is None:
            return
        await asyncio.to_thread(thread.join, JOIN_TIMEOUT_S)
        if thread.is_alive():
            log.error("js220_reader_stuck", device=self.name, waited_s=JOIN_TIMEOUT_S)
            raise MonitorUnavailable(
                f"{self.name}: the reader did not end within {JOIN_TIMEOUT_S:g} s "
                "(a call into the joulescope package hangs)"
            )

    async def _call(self, what: str, fn: Callable[..., object], *args: object) -> object:
        return await _blocking(f"{self.name}: {what}", fn, *args)


async def _blocking(what: str, fn: Callable[..., Any], *args: object, **kwargs: object) -> Any:
    """``fn(*args, **kwargs)`` in a worker thread, bounded by ``CALL_TIMEOUT_S``; the
    package's errors become :class:`MonitorUnavailable`. (A call that hangs keeps its worker
    thread: Python cannot kill it.)"""
    try:
        async with asyncio.timeout(CALL_TIMEOUT_S):
            return await asyncio.to_thread(fn, *args, **kwargs)
    except TimeoutError:
        raise MonitorUnavailable(f"{what} did not return within {CALL_TIMEOUT_S:g} s") from None
    except MonitorUnavailable:
        raise
    except Exception as exc:
        raise MonitorUnavailable(f"{what} failed: {type(exc).__name__}: {exc}") from exc


def find_js220(serial: str | None) -> Any:
    """The connected JS220 with USB serial number ``serial`` (``None``: the only one), not
    opened; blocks while the package scans. Raises :class:`MonitorUnavailable`."""
    try:
        import joulescope
    except ImportError as exc:
        raise MonitorUnavailable(
            f"a JS220 needs the joulescope package (pip install 'tinyfarm[js220]'): {exc}"
        ) from None
    return pick_js220(joulescope.scan(config=SCAN_CONFIG), serial)


def pick_js220(devices: Sequence[Any], serial: str | None) -> Any:
    """The JS220 among ``devices`` (the package's scan) with USB serial number ``serial``,
    or the only one if ``serial`` is ``None``. Raises :class:`MonitorUnavailable` naming
    what is connected."""
    js220s = [d for d in devices if str(getattr(d, "model", "")).lower() == "js220"]
    found = ", ".join(str(d) for d in devices) or "none"
    usb = ":".join(JS220_USB)
    if serial is not None:
        chosen = [d for d in js220s if str(d.serial_number).casefold() == serial.casefold()]
        if not chosen:
            raise MonitorUnavailable(f"no JS220 ({usb}) with serial {serial}; Joulescopes: {found}")
        return chosen[0]
    if len(js220s) != 1:
        what = "no JS220" if not js220s else f"{len(js220s)} JS220s"
        raise MonitorUnavailable(
            f"{what} ({usb}) connected; Joulescopes: {found}"
            + ("; give the board's monitor its serial" if js220s else "")
        )
    return js220s[0]
