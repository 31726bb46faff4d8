"""A simulated STM32H573I-DK "enhanced interface" board (docs/protocols.md#interface-board).

The board's CLI (:class:`farm.protocol.interface_firmware.InterfaceFirmware`) runs behind the host's
pty at 115200 baud; its DUT-side UART is one end of a :func:`farm.sim.wire_pair.wire_pair`
whose other end is the DUT's energy-build UART. What the simulator adds to the sans-IO model:

* the DUT RX queue: 100 bytes, filled by the UART ISR whether or not a passthrough is reading,
  **drop on full**. Whatever the DUT prints while nobody reads (its boot banner after a power
  cycle) is what the next ``dut`` command forwards: the off-by-one desync of
  docs/protocols.md#interface-quirks;
* the passthrough task: ``<cmd>%`` to the DUT, then every CRLF line back to the host with the
  ``[dut]: `` prefix until a line exactly ``m-ready``, with no timeout anywhere (a DUT that
  never answers leaves the board stuck, as on hardware);
* the host RX queue: while the CLI thread is busy (printing, waiting for a passthrough), host
  bytes beyond 100 are dropped;
* ``setbaud``: the reply, then an MCU reset during which the board is deaf for ``reset_s``;
  it comes back with both queues empty and the new DUT baud. The stored baud lives in the
  object, so it survives resets as flash does;
* the response queue: the passthrough task hands each DUT line to the CLI thread through a
  queue of 20 lines and blocks when it is full, so a long DUT burst (the sww activation dump)
  is read as fast as the DUT prints until 20 lines wait for the slower host link (each line
  gains the 7-byte prefix); only then does the DUT queue fill and drop bytes;
* the SD card: without it a passthrough hangs after its ack. ``play`` blocks the CLI thread
  for the file's length; a streaming-wakeword wav (:class:`~farm.sim.audio.SyntheticWav`)
  is clocked out frame by frame on the :class:`~farm.sim.audio.I2sBus`, each frame handed
  over when its last sample has left (32 ms apart at 16 kHz);
* TIM2, the 10 µs clock ``record_detections`` zeroes: a falling edge on WW_DETECTED logs a
  detection (ms), edges of the DUT's processing pin log duty-cycle start and stop ticks, as
  the board's interrupts do, at the edges' own times;
* faults (device ``interface``): ``hang`` (the CLI thread stops for good, until
  :meth:`SimInterface.reset`) and ``reset`` (the board reboots instead of answering).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Mapping

from farm.logs import get_logger
from farm.protocol.interface import DEFAULT_DUT_BAUD, effective_baud
from farm.protocol.interface_firmware import (
    Hang,
    InterfaceAction,
    InterfaceFirmware,
    Passthrough,
    PassthroughDone,
    PassthroughForwarder,
    Play,
    SetBaud,
    Write,
    ZeroTimer,
)
from farm.protocol.sww import TICK_S
from farm.sim.audio import I2sBus, SyntheticWav, frame_times
from farm.sim.faults import FaultPlan
from farm.sim.pacing import PortClosedError, framing_noise
from farm.sim.power import GpioLine
from farm.sim.uart import Uart
from farm.sim.wire_pair import WireEnd

log = get_logger("farm.sim.interface")

#: Capacity of each RX queue (host and DUT side) of the reference firmware.
QUEUE_BYTES = 100
#: How long the MCU reset after ``setbaud`` keeps the board deaf (about 0.5-2 s on hardware;
#: docs/protocols.md#interface-setbaud).
DEFAULT_RESET_S = 0.5
#: ``play`` without a file: 180 KB of 16-bit stereo at 16 kHz from internal flash.
FLASH_WAV_S = 180_000 / (2 * 2 * 16_000)
#: Lines the passthrough task may queue for the CLI thread (the firmware's response queue).
RESPONSE_LINES = 20
#: TIM2 is a 32-bit counter.
TIMER_MODULUS = 1 << 32


class SimInterface:
    """One simulated interface board.

    ``host`` is the board's USB serial port (a :class:`farm.sim.pty_port.PtyPort` at 115200),
    ``dut`` its DUT-side UART (a :class:`WireEnd`; its baud follows ``setbaud``).
    ``stored_baud`` is the flash word read at boot (see
    :func:`farm.protocol.interface.effective_baud`); ``files`` maps SD-card file names to their
    play time in seconds, and ``wavs`` adds the streaming-wakeword files the board plays on
    ``i2s``. ``wakeword`` and ``processing`` are the DUT's WW_DETECTED and processing pins.
    """

    def __init__(
        self,
        *,
        board: str,
        host: Uart,
        dut: WireEnd,
        faults: FaultPlan | None = None,
        stored_baud: int = DEFAULT_DUT_BAUD,
        sd_card: bool = True,
        reset_s: float = DEFAULT_RESET_S,
        files: Mapping[str, float] | None = None,
        queue_bytes: int = QUEUE_BYTES,
        wavs: Mapping[str, SyntheticWav] | None = None,
        i2s: I2sBus | None = None,
        wakeword: GpioLine | None = None,
        processing: GpioLine | None = None,
    ) -> None:
        if reset_s < 0:
            raise ValueError(f"reset time must be >= 0, got {reset_s}")
        self.board = board
        self.faults = faults if faults is not None else FaultPlan(board=f"{board}/interface")
        # Its own stream, so a baud mismatch does not change which faults fire.
        self._noise_rng = random.Random(self.faults.seed)
        self.stored_baud = stored_baud & 0xFFFFFFFF
        """The flash word holding the DUT baud; ``setbaud`` rewrites it, resets keep it."""
        self.sd_card = sd_card
        self.reset_s = reset_s
        self.files: dict[str, float] = dict(files or {})
        self.wavs: dict[str, SyntheticWav] = dict(wavs or {})
        self.files.update({name: wav.seconds for name, wav in self.wavs.items()})
        self.i2s = i2s
        self.queue_bytes = queue_bytes
        self.resets = 0
        """MCU resets so far (``setbaud``, the reset fault, :meth:`reset`)."""
        self.dropped_dut_bytes = 0
        """DUT bytes lost to a full DUT RX queue since the simulator started."""
        self.ready = asyncio.Event()
        """Set while the board's firmware runs and reads commands; clear during a reset."""
        self._host = host
        self._dut = dut
        self._firmware = self._new_firmware()
        self._forwarder = PassthroughForwarder()
        self._dut_queue = bytearray()
        self._dut_arrived = asyncio.Event()
        self._hung = False
        self._task: asyncio.Task[None] | None = None
        self._rx_task: asyncio.Task[None] | None = None
        self._timer_zero = 0.0
        if wakeword is not None:
            wakeword.subscribe(self._wakeword_edge)
        if processing is not None:
            processing.subscribe(self._processing_edge)

    # -- state ------------------------------------------------------------------------------

    @property
    def dut_baud(self) -> int:
        """The DUT-side baud the board runs at (the stored word after the fallback rule)."""
        return effective_baud(self.stored_baud)

    @property
    def firmware(self) -> InterfaceFirmware:
        """The running firmware state (detection logs, files); replaced at every reset."""
        return self._firmware

    @property
    def dut_queue(self) -> bytes:
        """DUT bytes received and not yet forwarded (at most ``queue_bytes``)."""
        return bytes(self._dut_queue)

    @property
    def hung(self) -> bool:
        """True while the CLI thread is stuck (fault or firmware hang) until a reset."""
        return self._hung or self._firmware.halted

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        """Power on: boot (no banner on this board) and serve commands until stopped."""
        if self._task is None:
            self._spawn(0.0)

    async def stop(self) -> None:
        """Stop the firmware and the DUT-side receiver; idempotent."""
        tasks = [t for t in (self._task, self._rx_task) if t is not None]
        self._task = self._rx_task = None
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self.ready.clear()

    def reset(self, down_s: float | None = None) -> None:
        """Reset the MCU (reset button, power cycle): deaf for ``down_s`` (default
        ``reset_s``), then both queues are empty and the stored baud applies.

        Safe to call from the firmware's own task, which must then return at once."""
        self._spawn(self.reset_s if down_s is None else down_s)

    def _spawn(self, down_s: float) -> None:
        current = asyncio.current_task()
        for task in (self._task, self._rx_task):
            if task is not None and task is not current:
                task.cancel()
        self._rx_task = None
        self.ready.clear()
        self._task = asyncio.get_running_loop().create_task(
            self._run(down_s), name=f"interface-{self.board}"
        )

    # -- main loop --------------------------------------------------------------------------

    async def _run(self, down_s: float) -> None:
        if down_s > 0:
            self.resets += 1
            log.info("interface_reset", board=self.board, down_s=down_s)
            await asyncio.sleep(down_s)
        # The UARTs were off during the reset: whatever reached them is gone.
        self._host.clear_input()
        self._dut.clear_input()
        self._dut_queue.clear()
        self._dut.baud = self.dut_baud
        self._timer_zero = asyncio.get_running_loop().time()  # TIM2 starts at boot
        self._firmware = self._new_firmware()
        self._forwarder = PassthroughForwarder()
        self._hung = False
        self._rx_task = asyncio.get_running_loop().create_task(
            self._dut_rx(), name=f"interface-rx-{self.board}"
        )
        self.ready.set()
        log.info("interface_boot", board=self.board, dut_baud=self.dut_baud)
        try:
            await self._cli()
        except PortClosedError:
            log.info("interface_port_closed", board=self.board)

    def _new_firmware(self) -> InterfaceFirmware:
        return InterfaceFirmware(
            stored_baud=self.stored_baud, sd_card=self.sd_card, files=self.files
        )

    async def _cli(self) -> None:
        """The CLI thread: collect host bytes up to ``%``, run each command."""
        loop = asyncio.get_running_loop()
        pending = bytearray()
        while True:
            end = pending.find(b"%")
            if end < 0:
                pending += await self._host.read()
                continue
            raw = bytes(pending[: end + 1])
            del pending[: end + 1]
            if self.hung:
                continue
            command = raw[:-1].decode("latin-1")
            fired = self.faults.draw(command)
            if "hang" in fired:
                self._hung = True
                log.warning("interface_hang", board=self.board, command=command)
                continue
            if "reset" in fired:
                self.reset()
                return
            busy_from = loop.time()
            if await self._perform(self._firmware.feed(raw)):
                return  # the MCU reset; a fresh task runs the board now
            # Host bytes that arrived while the CLI thread was busy waited in the 100-byte
            # queue; the rest were dropped.
            dropped = self._host.drop_received_between(
                busy_from, loop.time(), self.queue_bytes - len(pending)
            )
            if dropped:
                log.warning("interface_host_overrun", board=self.board, dropped=dropped)

    async def _perform(self, actions: list[InterfaceAction]) -> bool:
        """Carry out firmware actions; True if the board reset (the caller must return)."""
        for action in actions:
            match action:
                case Write(data):
                    await self._host.write(data)
                case Passthrough(command):
                    await self._passthrough(command)
                    if await self._perform(self._firmware.passthrough_done()):
                        return True
                case SetBaud(baud, stored):
                    self.stored_baud = stored
                    log.info("interface_setbaud", board=self.board, baud=baud)
                    self.reset()
                    return True
                case Hang(reason):
                    log.warning("interface_hang", board=self.board, reason=reason)
                case Play(file):
                    await self._play(file)
                case ZeroTimer():
                    self._timer_zero = asyncio.get_running_loop().time()
        return False

    async def _play(self, file: str | None) -> None:
        """The CLI thread blocks for the whole file; a wakeword wav goes out on the I2S
        link frame by frame, each at the time its last sample leaves."""
        loop = asyncio.get_running_loop()
        start = loop.time()
        wav = self.wavs.get(file) if file is not None else None
        if wav is not None and self.i2s is not None:
            log.info("interface_play", board=self.board, file=file, frames=wav.frames)
            for k, due in frame_times(start, wav.frame_s, wav.frames):
                await asyncio.sleep(max(0.0, due - loop.time()))
                self.i2s.send(due, wav.frame(k))
            seconds = wav.seconds
        else:
            seconds = FLASH_WAV_S if file is None else self.files.get(file, 0.0)
        await asyncio.sleep(max(0.0, start + seconds - loop.time()))

    # -- TIM2 and the DUT's pins ------------------------------------------------------------

    def ticks(self, t: float) -> int:
        """TIM2's count at event-loop time ``t`` (10 µs ticks since it was last zeroed)."""
        return int((t - self._timer_zero) / TICK_S) % TIMER_MODULUS

    def _wakeword_edge(self, t: float, level: bool) -> None:
        """WW_DETECTED's falling-edge interrupt: log a detection (debounced, capped)."""
        if not level and self.ready.is_set():
            self._firmware.add_detection(self.ticks(t))

    def _processing_edge(self, t: float, level: bool) -> None:
        """The processing pin's interrupts: a rising edge starts a duty cycle, a falling
        edge ends it."""
        if self.ready.is_set():
            self._firmware.add_duty_edge(level, self.ticks(t))

    async def _passthrough(self, command: str) -> None:
        """Send ``<command>%`` to the DUT; the SD task reads its lines into the response
        queue while the CLI thread prints them, until an exact ``m-ready``. No timeout: a
        silent DUT keeps the board here for good."""
        data = self._garble((command + "%").encode("latin-1"))
        await self._dut.write(data)
        lines: asyncio.Queue[bytes | None] = asyncio.Queue(RESPONSE_LINES)
        reader = asyncio.get_running_loop().create_task(
            self._read_dut_lines(lines), name=f"interface-sd-{self.board}"
        )
        try:
            while (line := await lines.get()) is not None:
                await self._host.write(line)
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader

    async def _read_dut_lines(self, lines: asyncio.Queue[bytes | None]) -> None:
        """The SD task: every DUT line (stale ones first) into the response queue, blocking
        while it is full; ``None`` after the exact ``m-ready``."""
        actions = self._forwarder.start()
        while True:
            for action in actions:
                if isinstance(action, PassthroughDone):
                    await lines.put(None)
                    return
                # While this waits for room, DUT bytes keep landing in the 100-byte queue.
                await lines.put(action.data)
            chunk = self._take_dut_line()
            if not chunk:
                self._dut_arrived.clear()
                await self._dut_arrived.wait()
                actions = []
                continue
            actions = self._forwarder.feed(chunk)

    def _take_dut_line(self) -> bytes:
        """Take queued DUT bytes up to and including the first LF (all if there is none).

        The task reads byte by byte until CRLF, so bytes after a line stay in the queue (and
        count against its capacity) until the task gets to them."""
        end = self._dut_queue.find(b"\n")
        cut = len(self._dut_queue) if end < 0 else end + 1
        chunk = bytes(self._dut_queue[:cut])
        del self._dut_queue[:cut]
        return chunk

    async def _dut_rx(self) -> None:
        """The DUT UART's RX ISR: push every byte into the queue, drop what does not fit."""
        try:
            while True:
                data = self._garble(await self._dut.read())
                room = max(self.queue_bytes - len(self._dut_queue), 0)
                if len(data) > room:
                    self.dropped_dut_bytes += len(data) - room
                    log.info("interface_dut_overrun", board=self.board, dropped=len(data) - room)
                self._dut_queue += data[:room]
                self._dut_arrived.set()
        except PortClosedError:
            pass

    def _garble(self, data: bytes) -> bytes:
        """At a DUT baud other than the DUT's own, both directions turn into noise (the DUT
        model does not check a wire's far end, so the board garbles for both)."""
        peer_baud = getattr(self._dut, "peer_baud", None)
        if peer_baud is None or peer_baud() == self._dut.baud:
            return data
        return framing_noise(data, self._noise_rng)
