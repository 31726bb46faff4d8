"""A simulated DUT: the firmware state machine of ``farm.protocol.dut_firmware`` running in
real time behind a paced UART, with a latency model, a µs counter, power draw, a timestamp
pin, and fault injection."""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from farm.logs import get_logger
from farm.models import ModelSpec
from farm.protocol import dut_firmware as fw
from farm.sim.faults import FaultPlan
from farm.sim.latency import ComputeRecord, LatencyModel
from farm.sim.pacing import framing_noise
from farm.sim.power import GpioLine, PowerModel, PowerRail
from farm.sim.uart import Uart
from farm.synthetic import simulated_output
from farm.wire import wire_time

log = get_logger("farm.sim.dut")

#: Ground-truth records a simulated DUT keeps (a full ad01 accuracy run is 48,608).
RECORDS_KEPT = 100_000


@dataclass
class DutCounter:
    """The DUT's free-running 32-bit µs counter.

    It follows the event-loop clock while the firmware idles; while a command executes it
    advances by exactly the modelled durations (wire time of each printed line, each
    inference), so lap differences equal the simulator's ground truth to the microsecond
    whatever the host's scheduling jitter.
    """

    start_us: int = 0
    _base_us: int = 0
    _base_t: float = 0.0

    def restart(self, t: float) -> None:
        """Power-on: the counter restarts from ``start_us`` at time ``t``."""
        self._base_us, self._base_t = self.start_us, t

    def read(self, t: float) -> int:
        """Counter value at time ``t`` (unwrapped; printing masks it to 32 bits)."""
        return self._base_us + int((t - self._base_t) * 1e6)

    def settle(self, value_us: int, t: float) -> None:
        """After a command: the counter reads ``value_us`` at ``t``, or the real-time value if
        that is later, so it never runs backwards and never drifts from wall time for long."""
        self._base_us, self._base_t = max(value_us, self.read(t)), t


class Firmware(Protocol):
    """What the simulator needs of a firmware model (:class:`fw.DutFirmware`, the sww
    firmware): boot, take UART bytes, the last command (for fault injection)."""

    parser_enabled: bool
    last_command: str

    def boot(self) -> Sequence[object]:
        """Power-on or reset: the boot actions."""
        ...

    def receive(self, data: bytes) -> Sequence[object]:
        """UART bytes in; the actions of every command they complete."""
        ...


@dataclass
class SimDut:
    """One simulated DUT behind ``uart``.

    ``uart`` is the port of the firmware build in use: the DUT's own USB serial port for the
    performance build, the wire to the interface board for the energy build.
    """

    board: str
    model: ModelSpec
    build: fw.Build
    uart: Uart
    latency: LatencyModel
    quality: float = 0.9
    """Top-1 accuracy (classifiers) or AUC (ad01) this board reaches on synthetic inputs."""
    counter: DutCounter = field(default_factory=DutCounter)
    boot_s: float = 0.05
    rx_fifo: int = 1
    """Bytes the UART holds while the firmware is busy and not reading; the rest overrun."""
    pulse_hold_s: float = 0.001
    vendor: str = "unspecified"
    faults: FaultPlan = field(default_factory=FaultPlan)
    power: PowerModel | None = None
    gpio: GpioLine | None = None
    rail: PowerRail | None = None
    records: deque[ComputeRecord] = field(default_factory=lambda: deque(maxlen=RECORDS_KEPT))
    """Ground truth of the simulated warmup and infer phases, in order (the last
    ``RECORDS_KEPT``, so a board simulated for days does not grow without bound)."""
    boots: int = 0

    def __post_init__(self) -> None:
        self.firmware = self._make_firmware()
        self._task: asyncio.Task[None] | None = None
        self._hung = False
        # Its own stream, so a host at the wrong baud does not change which faults fire.
        self._noise_rng = random.Random(self.faults.seed)
        self.ready = asyncio.Event()
        """Set once the boot banner is out and the firmware reads commands; cleared while
        it reboots."""
        if self.rail is not None:
            self.rail.subscribe(self._rail_switched)

    def _make_firmware(self) -> Firmware:
        return fw.DutFirmware(
            self.model,
            self.build,
            lambda tensor: simulated_output(self.model, tensor, self.quality),
            vendor=self.vendor,
        )

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Power on: boot and serve commands until stopped."""
        if self.rail is None or self.rail.on:
            self._spawn()

    async def stop(self) -> None:
        """Stop the firmware (the board is unplugged or the simulator exits)."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def reset(self) -> None:
        """Reset the MCU (reset line, ``targrst``, a fault): state lost, banner again.

        Safe to call from inside the firmware's own task: that task is cancelled at its next
        wait and a fresh one boots."""
        if self._task is not None:
            self._task.cancel()
        self._spawn()

    def _spawn(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name=f"dut-{self.board}")

    def _rail_switched(self, t: float, on: bool) -> None:
        if self.power is not None:
            self.power.set_powered(t, on)
        if on:
            self.reset()
            return
        self.ready.clear()
        if self._task is not None:
            self._task.cancel()
            self._task = None

    # -- main loop -------------------------------------------------------------------------

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        self._hung = False
        self.ready.clear()
        self.boots += 1
        self.counter.restart(loop.time())
        self.uart.clear_input()
        log.info("dut_boot", board=self.board, build=self.build, boots=self.boots)
        await self._execute(self.firmware.boot(), frozenset())
        self.uart.clear_input()  # the firmware did not read its UART while it booted
        self.ready.set()
        pending = bytearray()
        while True:
            if not pending:
                pending += self._line_noise(await self.uart.read())
            if self._hung:
                pending.clear()
                continue
            end = pending.find(b"%")
            if end < 0:
                self.firmware.receive(bytes(pending))
                pending.clear()
                continue
            head, rest = bytes(pending[: end + 1]), bytes(pending[end + 1 :])
            actions = self.firmware.receive(head)
            if not actions:
                pending = bytearray(rest)
                continue
            busy_from = loop.time()
            fired = self.faults.draw(self.firmware.last_command)
            if "hang" in fired:
                self._hung = True
                pending.clear()
                continue
            if "disconnect" in fired:
                await self._unplug()
                return
            if "reset" in fired:
                # Reboot part-way through the reply: the banner follows whatever was printed.
                cut = self.faults.rng.randrange(1, max(len(actions), 2))
                await self._execute(actions[:cut], fired)
                self.reset()
                return
            await self._execute(actions, fired)
            # Bytes that reached the UART while the firmware was busy: the first few stay
            # in the UART, the rest were overrun.
            pending = bytearray(rest[: self.rx_fifo])
            self.uart.drop_received_between(busy_from, loop.time(), self.rx_fifo - len(pending))

    async def _execute(self, actions: Sequence[object], fired: frozenset[str] | set[str]) -> None:
        loop = asyncio.get_running_loop()
        if "no_ready" in fired and actions and actions[-1] == fw.Write(b"m-ready\r\n"):
            actions = actions[:-1]
        cursor = self.counter.read(loop.time())
        lap_at: int | None = None
        for action in actions:
            match action:
                case fw.Write(data):
                    for kind in fired & {"garbage", "drop"}:
                        data = self.faults.garble(data, kind)
                    data = self._line_noise(data)
                    await self.uart.write(data)
                    cursor += round(wire_time(len(data), self.uart.baud) * 1e6)
                case fw.Compute(phase, count):
                    cursor += await self._compute(phase, count, lap_at, cursor)
                    lap_at = None
                case fw.Lap():
                    if lap_at is None:
                        lap_at = cursor
                    line = fw.format_lap(cursor)
                    await self.uart.write(line)
                    cursor += round(wire_time(len(line), self.uart.baud) * 1e6)
                case fw.Pulse():
                    await self._pulse()
                    cursor += round(self.pulse_hold_s * 1e6)
                case fw.EnableParser():
                    self.firmware.parser_enabled = True
                case fw.Overflow(position):
                    log.warning("dut_overflow", board=self.board, position=position)
                case _:
                    await self._device_action(action)
        self.counter.settle(cursor, loop.time())

    async def _device_action(self, action: object) -> None:
        """An action of a firmware variant (the sww firmware's pins and audio input)."""
        raise TypeError(f"{self.board}: the {self.model.id} DUT cannot perform {action!r}")

    def _line_noise(self, data: bytes) -> bytes:
        """At a baud other than the host's, a UART sees framing errors: every byte turns into
        noise both ways (a command's ``%`` is then almost never seen)."""
        host_baud = getattr(self.uart, "host_baud", None)
        seen = host_baud() if host_baud is not None else None
        if seen is None or seen == self.uart.baud:
            return data
        return framing_noise(data, self._noise_rng)

    async def _compute(self, phase: str, count: int, lap_at: int | None, cursor: int) -> int:
        """Spend the modelled time of ``count`` inferences; return it in µs."""
        loop = asyncio.get_running_loop()
        if phase == "boot":
            times = self.latency.sample_window(0)
            total = round(self.boot_s * 1e6)
        else:
            times = self.latency.sample_window(count)
            total = sum(times)
        start = loop.time()
        end = start + total / 1e6
        if self.power is not None and phase != "boot":
            self.power.set_active(start, True)
        try:
            await asyncio.sleep(max(0.0, end - loop.time()))
        finally:
            if self.power is not None and phase != "boot":
                # The modelled end, not the (later) wake-up: the draw follows the latency
                # model exactly, whatever the event loop's timer slack.
                self.power.set_active(min(end, loop.time()), False)
        if phase != "boot":
            window = None if lap_at is None else cursor - lap_at + total
            self.records.append(ComputeRecord(phase, count, times, lap_at, window))
        return total

    async def _pulse(self) -> None:
        loop = asyncio.get_running_loop()
        if self.gpio is not None:
            self.gpio.set(loop.time(), False)
        await asyncio.sleep(self.pulse_hold_s)
        if self.gpio is not None:
            self.gpio.set(loop.time(), True)

    async def _unplug(self) -> None:
        """USB unplug: the port vanishes; the board, powered from USB, reboots when it's back."""
        disconnect = getattr(self.uart, "disconnect", None)
        if disconnect is None:
            return
        await disconnect(self.faults.spec("disconnect").down_s)
        self.reset()
