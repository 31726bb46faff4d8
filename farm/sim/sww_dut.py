"""A simulated streaming-wakeword (sww01) DUT: the sww firmware model
(:mod:`farm.protocol.sww_firmware`) behind its UART, as :class:`farm.sim.dut.SimDut` runs any
firmware, plus what only this DUT has:

* its audio input: frames arrive on the :class:`~farm.sim.audio.I2sBus` from the interface
  board; while a stream runs (between ``start`` and ``stop``) each is processed, in order,
  in a task of its own (the reference port processes them in its DMA interrupt, whatever
  the command loop is doing);
* per frame: the processing pin high at the frame's arrival (or when the previous frame is
  done), the latency model's processing time (drawing ``active_w`` on the power model while
  the simulator spends it), a
  WW_DETECTED pulse if the :class:`~farm.sim.audio.Detector`'s activation crosses the
  threshold (or on the stream's first frame), the pin low. Pin edges carry their modelled
  times, so the interface board's logs hold the model's durations to the 10 µs tick,
  whatever the host's scheduling jitter;
* :attr:`SimSwwDut.frames`: the ground truth of every processed frame.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from dataclasses import dataclass, field

from farm.logs import get_logger
from farm.protocol.sww import FRAME_S
from farm.protocol.sww_firmware import (
    FrameCompute,
    ProcessingPin,
    StartStream,
    StopStream,
    SwwFirmware,
    WakewordPulse,
)
from farm.sim.audio import Detector, I2sBus
from farm.sim.dut import RECORDS_KEPT, Firmware, SimDut
from farm.sim.power import GpioLine

log = get_logger("farm.sim.sww_dut")

#: How long the firmware holds WW_DETECTED low (``th_delay_us(1)``).
WAKEWORD_PULSE_S = 1e-6


@dataclass(frozen=True, slots=True)
class FrameRecord:
    """Ground truth of one processed frame (event-loop clock seconds)."""

    arrived: float
    start: float
    end: float
    activation: int
    detected: bool


@dataclass
class SimSwwDut(SimDut):
    """One simulated sww01 DUT (see the module docstring), wired with :meth:`attach`."""

    processing: GpioLine | None = None
    wakeword: GpioLine | None = None
    detector: Detector = field(default_factory=lambda: Detector(FRAME_S))
    frames: deque[FrameRecord] = field(default_factory=lambda: deque(maxlen=RECORDS_KEPT))

    def __post_init__(self) -> None:
        super().__post_init__()
        self._pending: deque[tuple[float, bytes]] = deque()
        self._frame_task: asyncio.Task[None] | None = None
        self._busy_until = 0.0

    def attach(
        self, i2s: I2sBus, processing: GpioLine, wakeword: GpioLine, detector: Detector
    ) -> None:
        """Wire the DUT: the board's audio link, its processing and WW_DETECTED pins to the
        interface board, and the model it runs."""
        self.processing, self.wakeword, self.detector = processing, wakeword, detector
        i2s.subscribe(self._frame_arrived)

    def _make_firmware(self) -> Firmware:
        return SwwFirmware(vendor=self.vendor)

    @property
    def sww(self) -> SwwFirmware:
        """The firmware model, with its stream state and activation log."""
        assert isinstance(self.firmware, SwwFirmware)
        return self.firmware

    # -- lifecycle: the frame task goes with the firmware ------------------------------------

    async def stop(self) -> None:
        """Stop the firmware and its frame processing."""
        task = self._frame_task
        self._halt_frames()
        if task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await super().stop()

    def reset(self) -> None:
        """Reset the MCU: the stream and its frames are lost with the rest of the state."""
        self._halt_frames()
        super().reset()

    def _rail_switched(self, t: float, on: bool) -> None:
        self._halt_frames()
        super()._rail_switched(t, on)

    def _halt_frames(self) -> None:
        self._pending.clear()
        if self._frame_task is not None:
            self._frame_task.cancel()
            self._frame_task = None
        loop = asyncio.get_running_loop()
        if self.processing is not None:
            self.processing.set(loop.time(), False)
        if self.wakeword is not None:
            self.wakeword.set(loop.time(), True)

    # -- the firmware's pin and stream actions ---------------------------------------------

    async def _device_action(self, action: object) -> None:
        now = asyncio.get_running_loop().time()
        match action:
            case ProcessingPin(level):
                if self.processing is not None:
                    self.processing.set(now, level)
            case StartStream():
                self.detector.reset()
                self._pending.clear()
                log.info("sww_stream_start", board=self.board)
            case StopStream():
                self._pending.clear()
                log.info(
                    "sww_stream_stop",
                    board=self.board,
                    frames=len(self.sww.activations),
                    wakewords=self.detector.occurrences,
                )
            case _:
                await super()._device_action(action)

    # -- audio ---------------------------------------------------------------------------

    def _frame_arrived(self, t: float, frame: bytes) -> None:
        """The I2S DMA completed a frame at ``t``: processed only while a stream runs on a
        running firmware (otherwise the DMA is not armed and the frame is lost)."""
        if not (self.sww.streaming and self.ready.is_set()):
            return
        self._pending.append((t, frame))
        if self._frame_task is None or self._frame_task.done():
            self._frame_task = asyncio.get_running_loop().create_task(
                self._process_frames(), name=f"sww-frames-{self.board}"
            )

    async def _process_frames(self) -> None:
        loop = asyncio.get_running_loop()
        while self._pending:
            arrived, frame = self._pending.popleft()
            activation = self.detector.activation(frame)
            actions = self.sww.frame(activation)
            if not actions:
                continue  # stopped meanwhile
            start = cursor = max(arrived, self._busy_until)
            detected = False
            for action in actions:
                match action:
                    case ProcessingPin(level):
                        if self.processing is not None:
                            self.processing.set(cursor, level)
                    case FrameCompute():
                        cursor += self.latency.sample_us() / 1e6
                        await self._spend(cursor)
                    case WakewordPulse():
                        detected = True
                        if self.wakeword is not None:
                            self.wakeword.set(cursor, False)
                            cursor += WAKEWORD_PULSE_S
                            self.wakeword.set(cursor, True)
            self._busy_until = cursor
            self.frames.append(FrameRecord(arrived, start, cursor, activation, detected))
            await asyncio.sleep(max(0.0, cursor - loop.time()))

    async def _spend(self, end: float) -> None:
        """The frame's processing until ``end``: active draw on the power model. The draw
        switches when the simulator actually starts and stops (not at the modelled edge
        times, which may already be past): the monitor integrates the draw as it goes, so
        a change written into the past would not reach its samples."""
        loop = asyncio.get_running_loop()
        if self.power is not None:
            self.power.set_active(loop.time(), True)
        try:
            await asyncio.sleep(max(0.0, end - loop.time()))
        finally:
            if self.power is not None:
                self.power.set_active(loop.time(), False)
