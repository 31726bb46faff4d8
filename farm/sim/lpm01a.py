"""A simulated ST LPM01A PowerShield energy monitor (docs/protocols.md#lpm01a).

The command shell is :class:`farm.protocol.lpm01a_firmware.Lpm01aFirmware` behind the host's pty;
the simulator gives its actions their physical effect:

* ``pwr on|off`` switches the DUT's :class:`~farm.sim.power.PowerRail` (the DUT listens: off
  = silent and state lost, on = reboot with its banner); ``targrst <s>`` cuts the rail for
  ``s`` seconds;
* ``start`` streams, at ``freq``, one sample per period: sample ``k`` covers
  ``[t0 + k/f, t0 + (k+1)/f]`` (``t0`` = when the acquisition started, event-loop clock) and
  its value is :meth:`PowerModel.energy_between` over that interval (J per period with
  ``output energy``, mean current in A with ``output current``), formatted with
  :func:`~farm.protocol.lpm01a_firmware.format_sample`. A sample is sent ``SETTLE_S`` after
  its period has ended (at a stop: at once); samples go out in bursts every ``burst_s``
  (10 ms by default, like a USB CDC device flushing its buffer);
* a ``TimeStamp`` line after every ``f`` samples (every 1000 at the runner's 1 kHz), stating
  the data time ``k/f``; ``buff`` is the backlog as a percentage of one second of data;
* ``event <n> ris`` for every edge of the configured ``eventsrc`` on the DUT's timestamp pin
  (:class:`~farm.sim.power.GpioLine`; the runner's ``eventsrc d7 fal`` = falling edges),
  ``n`` from 0 per acquisition without gaps. **Placement**: an edge at time ``t`` is sent
  after exactly ``k = floor((t - t0) * f)`` samples, i.e. just before the sample whose period
  contains it. So for two events at indices ``k_start`` and ``k_stop``,
  ``sum(samples[k_start:k_stop]) == energy_between(t0 + k_start/f, t0 + k_stop/f)`` up to
  the 4-digit mantissa rounding (the window is the edges' times floored to the sample grid);
* ``stop``: the ack, the samples whose period ended before it, then
  ``PowerShield > Acquisition completed``; a finite ``acqtime`` ends the same way;
* ``psrst``: the USB port vanishes for ``psrst_down_s`` and the shell restarts.

Faults (device ``monitor``): ``ack_lost`` (the ack line of a matching command is not sent;
an ``error`` reply still is) and ``hang`` (the shell stops answering; the stream goes on).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Callable

from farm.logs import get_logger
from farm.protocol.lines import LineFramer, text
from farm.protocol.lpm01a import ACQUISITION_COMPLETED_LINE, PROMPT
from farm.protocol.lpm01a_firmware import (
    Lpm01aAction,
    Lpm01aFirmware,
    PowerSwitch,
    Reset,
    StartAcquisition,
    StopAcquisition,
    TargetReset,
    Write,
    format_event,
    format_sample,
    format_timestamp,
)
from farm.sim.faults import FaultPlan
from farm.sim.pacing import PortClosedError
from farm.sim.power import GpioLine, PowerModel, PowerRail
from farm.sim.uart import Uart

log = get_logger("farm.sim.lpm01a")

#: Interval between stream bursts: a few samples per write at 1 kHz, so the event loop is not
#: woken per sample and a host still sees data within ~10 ms of its period.
DEFAULT_BURST_S = 0.01
#: How long the USB device is gone after ``psrst`` (the third-party GUI reopens after 5 s).
DEFAULT_PSRST_DOWN_S = 2.0
#: Power history kept behind the stream: enough for any energy window a test or a host
#: checks after the fact, bounded so a long acquisition does not grow memory without end.
DEFAULT_HISTORY_S = 600.0
#: How long after its period a sample is sent: longer than the event loop may be late to
#: wake a DUT at the end of its compute phase on a loaded host (a CI run with both cores
#: busy saw 0.5 ms, enough to draw an idle millisecond at the active level), far shorter
#: than a host's stream idle timeout (the wire model's 0.5 s margin).
SETTLE_S = 0.1

_ACK = f"{PROMPT}ack ".encode()


class SimLpm01a:
    """One simulated LPM01A measuring one DUT.

    ``power`` is the DUT's draw, ``gpio`` its timestamp pin, ``rail`` the supply this monitor
    switches. ``dut_reset`` is only used by ``targrst`` when there is no rail to cut.
    """

    def __init__(
        self,
        *,
        board: str,
        host: Uart,
        power: PowerModel,
        gpio: GpioLine,
        rail: PowerRail | None,
        dut_reset: Callable[[], None] | None = None,
        faults: FaultPlan | None = None,
        error_detail: bool = True,
        old_firmware: bool = False,
        burst_s: float = DEFAULT_BURST_S,
        psrst_down_s: float = DEFAULT_PSRST_DOWN_S,
        history_s: float = DEFAULT_HISTORY_S,
    ) -> None:
        if burst_s <= 0:
            raise ValueError(f"burst interval must be positive, got {burst_s}")
        self.board = board
        self.faults = faults if faults is not None else FaultPlan(board=f"{board}/monitor")
        self.burst_s = burst_s
        self.psrst_down_s = psrst_down_s
        self.history_s = history_s
        self._host = host
        self._power = power
        self._rail = rail
        self._dut_reset = dut_reset
        self._error_detail = error_detail
        self._old_firmware = old_firmware
        self.firmware = self._new_firmware()
        self.acquisition_t0: float | None = None
        """Event-loop time the current (or last) acquisition started: sample ``k`` covers
        ``[t0 + k/freq_hz, t0 + (k+1)/freq_hz]``."""
        self.freq_hz = self.firmware.freq_hz
        """Sample rate of the current (or last) acquisition."""
        self.samples_sent = 0
        """Samples sent in the current (or last) acquisition."""
        self.events_sent = 0
        """Event lines sent in the current (or last) acquisition."""
        self._edges: deque[float] = deque()
        self._edge_level: bool | None = None  # level that counts as an event; None: no events
        self._streaming = False
        self._stopping = asyncio.Event()
        self._hung = False
        self._task: asyncio.Task[None] | None = None
        self._stream_task: asyncio.Task[None] | None = None
        gpio.subscribe(self._edge)

    def _new_firmware(self) -> Lpm01aFirmware:
        fw = Lpm01aFirmware(error_detail=self._error_detail, old_firmware=self._old_firmware)
        # The shell starts with the target in whatever state the rail is in.
        fw.powered = self._rail.on if self._rail is not None else True
        return fw

    @property
    def streaming(self) -> bool:
        """True while an acquisition is sending samples."""
        return self._streaming

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        """Power on: serve the shell until stopped."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self._cli(), name=f"lpm01a-{self.board}"
            )

    async def stop(self) -> None:
        """Stop the shell and any acquisition; idempotent."""
        tasks = [t for t in (self._stream_task, self._task) if t is not None]
        self._task = self._stream_task = None
        self._streaming = False
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    # -- shell ------------------------------------------------------------------------------

    async def _cli(self) -> None:
        try:
            while True:
                framer = LineFramer()
                restarted = False
                while not restarted:
                    for line in framer.feed(await self._host.read()):
                        if await self._command(line):
                            restarted = True
                            break
        except PortClosedError:
            log.info("lpm01a_port_closed", board=self.board)

    async def _command(self, line: bytes) -> bool:
        """Run one command line; True if the shell restarted (``psrst``)."""
        if not line or self._hung:
            return False
        command = text(line)
        fired = self.faults.draw(command)
        if "hang" in fired:
            self._hung = True
            log.warning("lpm01a_hang", board=self.board, command=command)
            return False
        actions = self.firmware.feed(line + b"\n")
        if "ack_lost" in fired:
            kept = [a for a in actions if not (isinstance(a, Write) and a.data.startswith(_ACK))]
            if len(kept) != len(actions):
                log.info("lpm01a_ack_dropped", board=self.board, command=command)
            actions = kept
        return await self._perform(actions)

    async def _perform(self, actions: list[Lpm01aAction]) -> bool:
        loop = asyncio.get_running_loop()
        for action in actions:
            match action:
                case Write(data):
                    await self._host.write(data)
                case PowerSwitch(on):
                    self._switch(loop.time(), on)
                case TargetReset(seconds):
                    await self._target_reset(seconds)
                case StartAcquisition(freq_hz):
                    self._start_stream(freq_hz)
                case StopAcquisition():
                    await self._stop_stream()
                    await self._host.write(ACQUISITION_COMPLETED_LINE)
                case Reset():
                    await self._psrst()
                    return True
        return False

    def _switch(self, t: float, on: bool) -> None:
        log.info("lpm01a_power", board=self.board, on=on)
        if self._rail is not None:
            self._rail.switch(t, on)

    async def _target_reset(self, seconds: float) -> None:
        loop = asyncio.get_running_loop()
        if self._rail is None:
            if self._dut_reset is not None:
                self._dut_reset()
            return
        self._switch(loop.time(), False)
        await asyncio.sleep(seconds)
        self._switch(loop.time(), True)

    async def _psrst(self) -> None:
        await self._stop_stream()
        disconnect = getattr(self._host, "disconnect", None)
        log.info("lpm01a_psrst", board=self.board, down_s=self.psrst_down_s)
        if disconnect is not None:
            await disconnect(self.psrst_down_s)
        self.firmware = self._new_firmware()
        self._hung = False

    # -- acquisition ------------------------------------------------------------------------

    def _edge(self, t: float, level: bool) -> None:
        if self._streaming and level == self._edge_level and not self._stopping.is_set():
            t0 = self.acquisition_t0
            if t0 is not None and t >= t0:
                self._edges.append(t)

    def _start_stream(self, freq_hz: int) -> None:
        loop = asyncio.get_running_loop()
        fw = self.firmware
        self.acquisition_t0 = t0 = loop.time()
        self.freq_hz = freq_hz
        self.samples_sent = self.events_sent = 0
        self._edges.clear()
        self._edge_level = None if fw.eventsrc is None else fw.eventsrc[1] == "ris"
        self._stopping = asyncio.Event()
        self._streaming = True
        limit = None if fw.acqtime_s is None else max(1, int(fw.acqtime_s * freq_hz))
        if fw.format != "ascii_dec":
            log.warning("lpm01a_format_unsupported", board=self.board, format=fw.format)
        log.info(
            "lpm01a_acquisition_start",
            board=self.board,
            freq_hz=freq_hz,
            output=fw.output,
            limit=limit,
        )
        self._stream_task = loop.create_task(
            self._stream(t0, freq_hz, limit, fw.output, fw.voltage_mv / 1000),
            name=f"lpm01a-stream-{self.board}",
        )

    async def _stop_stream(self) -> None:
        task, self._stream_task = self._stream_task, None
        if task is None:
            return
        self._stopping.set()
        # Let the stream send what is complete and end on its own: cancelling it could cut a
        # sample line in half.
        await task
        log.info(
            "lpm01a_acquisition_stop",
            board=self.board,
            samples=self.samples_sent,
            events=self.events_sent,
        )

    async def _stream(
        self, t0: float, freq: int, limit: int | None, output: str, volts: float
    ) -> None:
        loop = asyncio.get_running_loop()
        period = 1 / freq
        k = 0
        try:
            while True:
                stopping = self._stopping.is_set()
                now = loop.time()
                # Samples whose period [t0 + k/f, t0 + (k+1)/f] ended SETTLE_S ago (at a
                # stop: by now). The DUT writes a compute phase's end when its task wakes,
                # which under load is after the modelled end: a sample sent at once could
                # still show the DUT active past it.
                due = int((now - (0.0 if stopping else SETTLE_S) - t0) * freq)
                if limit is not None:
                    due = min(due, limit)
                out = bytearray()
                while k < due:
                    if k and k % freq == 0:
                        lag = now - (t0 + k * period)
                        out += format_timestamp(k * 1000 // freq, min(99, max(0, int(lag * 100))))
                        self._power.forget_before(now - self.history_s)
                    self._events_upto(out, t0, freq, k)
                    joules = self._power.energy_between(t0 + k * period, t0 + (k + 1) * period)
                    value = joules if output == "energy" else joules / period / volts
                    out += format_sample(value)
                    k += 1
                # Edges inside the period still running go out now, at the same position.
                self._events_upto(out, t0, freq, due)
                if out:
                    await self._host.write(bytes(out))
                self.samples_sent = k
                if limit is not None and k >= limit:
                    await self._acquisition_time_over()
                    return
                if stopping:
                    return
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.burst_s):
                        await self._stopping.wait()
        except PortClosedError:
            pass
        finally:
            self._streaming = False

    def _events_upto(self, out: bytearray, t0: float, freq: int, index: int) -> None:
        """Append the event lines of every edge whose sample index is at most ``index``."""
        while self._edges and int((self._edges[0] - t0) * freq) <= index:
            self._edges.popleft()
            out += format_event(self.events_sent, "ris")
            self.events_sent += 1

    async def _acquisition_time_over(self) -> None:
        """A finite ``acqtime`` ran out: stop as ``stop`` would, without an ack."""
        loop = asyncio.get_running_loop()
        self._stream_task = None
        for action in self.firmware.acquisition_finished():
            if isinstance(action, PowerSwitch):
                self._switch(loop.time(), action.on)
        await self._host.write(ACQUISITION_COMPLETED_LINE)
        log.info("lpm01a_acquisition_done", board=self.board, samples=self.samples_sent)
