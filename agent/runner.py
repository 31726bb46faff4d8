"""The one-board runner: a benchmark mode executed on one DUT, one sample per parsed result.

This is the official MLCommons runner's job for one board (docs/measurement.md), with two
additions: performance windows are sized per board (10-30 s each, from a calibration), and a
supplemental latency mode times single inferences LoadGen-style. Samples are yielded the
moment each reply is parsed, so a caller can stream them (``farm run`` writes them, the agent
publishes them over MQTT). sww01's energy run is one stream instead
(docs/protocols.md#sww-stream): one sample holding the board's logs and the power window.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Literal, Protocol, TypeVar

from agent.dut_client import DutClient, InferResult
from agent.energy_monitor import EnergyMonitor, window_energy
from agent.errors import DeviceCommandError, DeviceTimeout
from agent.interface_client import InterfaceClient
from agent.serial_link import SerialLinkError
from farm.logs import get_logger
from farm.protocol import dut as dut_proto
from farm.protocol import sww
from farm.protocol.errors import RemoteProtocolError
from farm.sample import Sample, StreamCapture
from farm.sww_truth import TruthEntry
from farm.wire import wire_time

log = get_logger("agent.runner")

Mode = Literal["performance", "accuracy", "energy", "latency"]
MODES: tuple[Mode, ...] = ("performance", "accuracy", "energy", "latency")

#: Failures of a step that a recovery (resync, power cycle, reopening the port) can cure.
RECOVERABLE: tuple[type[Exception], ...] = (
    DeviceTimeout,
    DeviceCommandError,
    RemoteProtocolError,
    SerialLinkError,
)

Recover = Callable[[Exception, int], Awaitable[DutClient]]
"""Called after a step failed with a recoverable error (and its attempt number, from 1):
brings the DUT back to a known state and returns the client to continue with (a new one if
the port had to be reopened), or raises to fail the run."""

T = TypeVar("T")


class Input(Protocol):
    """One inference input from a dataset (a file, or one AD window of it)."""

    @property
    def index(self) -> int:
        """Row of ``y_labels.csv`` (0-based)."""
        ...

    @property
    def segment(self) -> int | None:
        """AD window number within the file; ``None`` for the other benchmarks."""
        ...

    @property
    def label(self) -> int:
        """The row's true label."""
        ...

    def read(self) -> bytes:
        """The bytes to download."""
        ...


@dataclass
class RunSettings:
    """How a run is sized. Defaults are the official rules; tests shorten them."""

    windows: int = 5
    min_window_s: float = 10.0
    """Every timed window must last at least this long (the official ">10 s")."""
    max_window_s: float = 30.0
    """Silent-phase limit of a direct link (the official runner's 30 s per line)."""
    calibration_s: float = 0.5
    """Calibrate until one window lasts this long, then size N from its throughput."""
    min_queries: int = 1024
    min_duration_s: float = 60.0
    latency_inputs: int = 5
    """Latency mode: inputs rotated through (one download each, then many queries)."""
    limit: int | None = None
    start_seq: int = 0
    skip_seqs: frozenset[int] = frozenset()
    """Accuracy: seqs already stored elsewhere (a controller resuming a run): not run."""
    retries: int = 0
    """Attempts at a failed step after recovery (needs a ``recover`` callback); not in
    energy mode, whose windows span the monitor's state too."""


@dataclass
class RunInfo:
    """What the run decided and observed, for the output files."""

    count: int | None = None
    """N used for every timed window (performance, energy)."""
    warmup: int = 0
    calibration: list[tuple[int, int]] = field(default_factory=list)
    """(N, elapsed µs) of each calibration window."""
    loop_wall_s: float = 0.0
    """Host wall-clock of the whole timed loop (downloads and infers): ERROR 2 below 10 s."""
    last_issue_s: float = 0.0
    """Latency mode: when the last query was issued, from the start of the first (LoadGen's
    minimum-duration test is taken there)."""
    started: float = 0.0
    finished: bool = False


Progress = Callable[[int, int | None, float | None], None]
"""``(done, total, eta_s)``: called after each sample."""


class StreamFailed(RuntimeError):
    """The stream could not run (the board cannot play the wav, the DUT would not start)."""


@dataclass(frozen=True, slots=True)
class StreamTarget:
    """sww01: what an energy run streams, and the interface board that plays it."""

    board: InterfaceClient
    truth_file: str
    entry: TruthEntry
    """The truth entry the stream plays (the official runner's ``stream`` step plays the
    file's first)."""

    @property
    def frames(self) -> int:
        """Frames the DUT processes at most: the wav's, plus those of the pause before
        ``stop``."""
        return math.ceil((self.entry.length_s + sww.STOP_DELAY_S) / sww.FRAME_S) + 1

    def stop_reply_bytes(self) -> int:
        """Upper bound of ``stop``'s reply: its lines, then the activation dump (at most
        ``-128, `` a frame, 16 a row)."""
        frames = self.frames
        return 160 + frames * len("-128, ") + (frames // 16 + 2) * 2


class SilentPhaseTooLong(ValueError):
    """A user's test script asks for an ``infer`` whose warmups or timed inferences outlast
    a direct link's silent-phase limit on this board: the official runner would abort it."""


def size_count(throughput: float, settings: RunSettings) -> int:
    """N for a timed window: 25 % above the minimum (calibration error and jitter are far
    smaller), and never past 90 % of the silent-phase limit."""
    target = min(settings.min_window_s * 1.25, settings.max_window_s * 0.9)
    return max(1, math.ceil(target * throughput))


class Runner:
    """Runs one mode of one benchmark on one DUT.

    ``script`` is ``(N, W)`` of the mode's script; with ``sized`` (the farm's own scripts)
    N is re-sized per board for performance and energy, without it (a user's test script) N
    runs as written, after the same calibration (which times the replies). Energy mode
    needs the energy monitor (an LPM01A or a JS220); the DUT client then goes through the
    interface board.
    """

    def __init__(
        self,
        dut: DutClient,
        inputs: Sequence[Input],
        mode: Mode,
        script: tuple[int, int],
        settings: RunSettings | None = None,
        *,
        monitor: EnergyMonitor | None = None,
        progress: Progress | None = None,
        recover: Recover | None = None,
        stream: StreamTarget | None = None,
        sized: bool = True,
    ) -> None:
        if mode == "energy" and monitor is None:
            raise ValueError("energy mode needs an energy monitor")
        if stream is not None and mode != "energy":
            raise ValueError("a stream (sww01) runs in energy mode only")
        self.dut = dut
        self.inputs = inputs
        self.mode = mode
        self.script = script
        self.settings = settings or RunSettings()
        self.monitor = monitor
        self.progress = progress
        self.recover = recover
        self.stream = stream
        self.sized = sized
        self.info = RunInfo(warmup=script[1])
        self.recoveries = 0
        self._loaded: Input | None = None
        """The input the DUT holds (forgotten after a recovery: a reset clears it)."""

    async def run(self) -> AsyncIterator[Sample]:
        """Yield every sample of the run, in order."""
        self.info.started = time.monotonic()
        steps = {
            "performance": self._performance,
            "accuracy": self._accuracy,
            "energy": self._energy,
            "latency": self._latency,
        }
        async for sample in steps[self.mode]():
            yield sample
        self.info.finished = True

    # -- modes -----------------------------------------------------------------------------

    async def _accuracy(self) -> AsyncIterator[Sample]:
        inputs = self._limited(self.inputs)
        total = len(inputs)
        skip = self.settings.skip_seqs
        for seq in range(self.settings.start_seq, total):
            if seq in skip:
                continue
            item = inputs[seq]
            n, w = self.script
            result = await self._attempt(partial(self._load_infer, item, n, w, True))
            yield self._sample(seq, item, None, result)
            self._report(seq + 1, total, n, w)

    async def _performance(self) -> AsyncIterator[Sample]:
        windows = self._limited(self.inputs[: self.settings.windows])
        count = await self._attempt(lambda: self._calibrate(windows[0]))
        if not self.sized:
            self._check_silent_phases(count, self.info.warmup)
        loop_start = time.monotonic()
        for seq, item in enumerate(windows):
            started = time.monotonic()
            result = await self._attempt(
                partial(self._load_infer, item, count, self.info.warmup, True)
            )
            wall = time.monotonic() - started
            yield self._sample(seq, item, seq, result, wall_s=wall)
            self._report(seq + 1, len(windows), count, self.info.warmup)
        self.info.loop_wall_s = time.monotonic() - loop_start

    async def _calibrate(self, item: Input) -> int:
        """Grow a test window until it lasts ``calibration_s``; size N from its throughput."""
        await self._load(item, True)
        self.info.calibration.clear()  # a retried calibration starts over
        n = 1
        while True:
            result = await self.dut.infer(n, 0)
            if result.elapsed_us is None:
                raise RuntimeError("the DUT printed no laps: is it the performance build?")
            elapsed = result.elapsed_us
            self.info.calibration.append((n, elapsed))
            if elapsed / 1e6 >= self.settings.calibration_s or n >= 1 << 24:
                break
            # Jump close to the calibration length, but at most 10x per step.
            per = max(elapsed, 1) / n / 1e6
            n = min(n * 10, max(n + 1, math.ceil(self.settings.calibration_s / per)))
        self.info.count = self._count(size_count(n / (elapsed / 1e6), self.settings))
        log.info("calibrated", n=n, elapsed_us=elapsed, count=self.info.count)
        return self.info.count

    def _check_silent_phases(self, count: int, warmup: int) -> None:
        """Refuse a script's ``infer N W`` whose W warmups or N inferences would run longer
        than a direct link lets a DUT stay silent, at the calibrated speed."""
        n, elapsed_us = self.info.calibration[-1]
        per = elapsed_us / 1e6 / n
        for phase, k in (("warmups", warmup), ("timed inferences", count)):
            if k * per > self.settings.max_window_s:
                raise SilentPhaseTooLong(
                    f"infer {count} {warmup}: the {k} {phase} take {k * per:.1f} s on this "
                    f"board, longer than the {self.settings.max_window_s:g} s a direct link "
                    "allows without a line (the official runner would abort the run)"
                )

    def _count(self, sized: int) -> int:
        """N of every timed window: sized from the calibration, or the script's as written."""
        return sized if self.sized else self.script[0]

    async def _energy(self) -> AsyncIterator[Sample]:
        assert self.monitor is not None
        if self.stream is not None:
            yield await self._stream(self.stream)
            self._report(1, 1, 1, 0)
            return
        windows = self._limited(self.inputs[: self.settings.windows])
        await self.dut.load(windows[0].read())
        count = await self._calibrate_energy()
        loop_start = time.monotonic()
        for seq, item in enumerate(windows):
            started = time.monotonic()
            # As the official runner: the window's batch runs from the previous drain, so it
            # includes the download; only its last two events delimit the energy.
            await self.dut.load(item.read())
            result = await self.dut.infer(count, self.info.warmup)
            window = await self.monitor.window(events=2)
            energy = window_energy(window, self.monitor.freq_hz)
            wall = time.monotonic() - started
            yield Sample(
                seq=seq,
                index=item.index,
                segment=item.segment,
                window=seq,
                label=item.label,
                results=result.results,
                count=count,
                warmup=self.info.warmup,
                wall_s=wall,
                energy_j=energy.energy_j,
                energy_window_s=energy.seconds,
                power_samples=tuple(window.samples),
                power_events=tuple(window.events),
            )
            self._report(seq + 1, len(windows), count, self.info.warmup)
        self.info.loop_wall_s = time.monotonic() - loop_start

    async def _stream(self, target: StreamTarget) -> Sample:
        """sww01's ``stream`` step, in the official runner's order: stop a stream left over,
        ``start`` (the power window opens), ``record_detections``, ``play`` the wav (blocks
        for its length), 0.25 s, ``stop`` (the window closes; the activation dump), then the
        board's detection and duty-cycle logs and the monitor's window."""
        assert self.monitor is not None
        entry = target.entry
        started = time.monotonic()
        leftover = sww.stream_stop(await self._dut_exchange("stop", target.stop_reply_bytes()))
        if leftover.stopped:
            log.warning("stream_left_running", frames=len(leftover.activations))
        if not sww.stream_started(await self.dut.command("start")):
            raise StreamFailed("the DUT reports a stream still running after 'stop'")
        await target.board.record_detections()
        log.info("stream_play", wav=entry.wav_file, seconds=entry.length_s)
        if not await target.board.play(entry.wav_file, entry.length_s):
            raise StreamFailed(
                f"the interface board cannot play {entry.wav_file} (not on its SD card, or "
                "not a 2-channel wav)"
            )
        # As the official runner: the DUT may still be busy with the last frame.
        await asyncio.sleep(sww.STOP_DELAY_S)
        stop = sww.stream_stop(await self._dut_exchange("stop", target.stop_reply_bytes()))
        if not stop.stopped:
            raise StreamFailed("the DUT's stream had stopped before 'stop' (did it reset?)")
        if stop.damaged_rows:
            log.warning("activations_damaged", rows=stop.damaged_rows)
        detections = await target.board.print_detections()
        starts, stops = await target.board.print_dutycycle()
        window = await self.monitor.window(events=2)
        energy = window_energy(window, self.monitor.freq_hz)
        self.info.loop_wall_s = time.monotonic() - started
        log.info(
            "stream_done",
            frames=len(stop.activations),
            detections=len(detections),
            duty_edges=len(starts),
            window_s=energy.seconds,
        )
        return Sample(
            seq=0,
            index=entry.index,
            segment=None,
            window=0,
            label=0,
            results=tuple(float(v) for v in stop.activations),
            count=1,
            warmup=0,
            wall_s=self.info.loop_wall_s,
            energy_j=energy.energy_j,
            energy_window_s=energy.seconds,
            power_samples=tuple(window.samples),
            power_events=tuple(window.events),
            stream=StreamCapture(
                truth_file=target.truth_file,
                wav_file=entry.wav_file,
                windows=entry.windows,
                length_s=entry.length_s,
                sample_rate=entry.sample_rate,
                detections_ms=detections,
                duty_starts=starts,
                duty_stops=stops,
            ),
        )

    async def _dut_exchange(self, command: str, reply_bytes: int) -> dut_proto.DutReply:
        """A DUT command whose reply is read leniently (``stop``: a long activation dump may
        arrive with garbled rows, which :func:`farm.protocol.sww.stream_stop` counts)."""
        if self.dut.channel.needs_resync:
            await self.dut.channel.resync()
        reply = await self.dut.channel.exchange(command, reply_bytes=reply_bytes)
        if reply.reset_seen:
            raise StreamFailed(f"the DUT rebooted during {command!r}")
        return reply

    async def _calibrate_energy(self) -> int:
        """The energy build has no laps: time calibration windows with the monitor's events."""
        assert self.monitor is not None
        n = 1
        while True:
            self.monitor.drain()
            await self.dut.infer(n, 0)
            energy = window_energy(await self.monitor.window(events=2), self.monitor.freq_hz)
            elapsed_us = round(energy.seconds * 1e6)
            self.info.calibration.append((n, elapsed_us))
            if energy.seconds >= self.settings.calibration_s or n >= 1 << 24:
                break
            per = max(energy.seconds, 1e-3) / n
            n = min(n * 10, max(n + 1, math.ceil(self.settings.calibration_s / per)))
        per = max(energy.seconds, 1e-3) / n
        # The energy build prints no laps: tell the client what the monitor measured, so its
        # infer budgets follow the board instead of the 30 s unknown-latency limit.
        self.dut.latency_s = per
        self.dut.slowest_s = max(self.dut.slowest_s, per)
        self.info.count = self._count(size_count(1 / per, self.settings))
        return self.info.count

    async def _latency(self) -> AsyncIterator[Sample]:
        s = self.settings
        rotation = self._limited(self.inputs[: max(1, s.latency_inputs)])
        target = s.limit if s.limit is not None else None
        per_input = math.ceil(s.min_queries / len(rotation))
        # Whichever of the two minimums ends the run sets the expected query count.
        model_bytes = self.dut.model.input_bytes if self.dut.model else 0
        per_query = self.expected_sample_s(model_bytes, 1, 0, download=False)
        expected_total = max(s.min_queries, math.ceil(s.min_duration_s / max(per_query, 1e-6)))
        started = time.monotonic()
        seq = 0
        while True:
            for item in rotation:
                for _ in range(per_input):
                    self.info.last_issue_s = time.monotonic() - started
                    result = await self._attempt(partial(self._load_infer, item, 1, 0, False))
                    yield self._sample(seq, item, None, result, correct_lap=True)
                    seq += 1
                    self._report(seq, target or expected_total, 1, 0, download=False)
                    if target is not None and seq >= target:
                        return
                    if seq >= s.min_queries and self.info.last_issue_s >= s.min_duration_s:
                        return

    # -- helpers ---------------------------------------------------------------------------

    async def _load(self, item: Input, always: bool) -> None:
        """Download ``item`` (unless ``always`` is false and the DUT already holds it)."""
        if always or self._loaded is not item:
            self._loaded = None
            await self.dut.load(item.read())
            self._loaded = item

    async def _load_infer(self, item: Input, count: int, warmup: int, always: bool) -> InferResult:
        await self._load(item, always)
        return await self.dut.infer(count, warmup)

    async def _attempt(self, step: Callable[[], Awaitable[T]]) -> T:
        """Run a step; after a recoverable failure let ``recover`` bring the DUT back and try
        again, at most ``settings.retries`` times."""
        failures = 0
        while True:
            try:
                return await step()
            except RECOVERABLE as exc:
                failures += 1
                if self.recover is None or failures > self.settings.retries:
                    raise
                log.warning(
                    "step_failed", attempt=failures, error=type(exc).__name__, detail=str(exc)
                )
                self._loaded = None
                self.recoveries += 1
                self.dut = await self.recover(exc, failures)

    def _limited(self, inputs: Sequence[Input]) -> Sequence[Input]:
        limit = self.settings.limit
        if limit is None or self.mode == "latency":
            return inputs
        return inputs[:limit]

    def _sample(
        self,
        seq: int,
        item: Input,
        window: int | None,
        result: InferResult,
        *,
        wall_s: float | None = None,
        correct_lap: bool = False,
    ) -> Sample:
        latency = None
        if result.elapsed_us is not None:
            spent = float(result.elapsed_us)
            if correct_lap and result.start_us is not None:
                # Only where the window can hold the print (a port whose UART output does not
                # block — DMA, USB CDC — has no such time inside the window).
                printing = self._lap_print_us(result.start_us)
                if spent > printing:
                    spent -= printing
            latency = spent / result.count
        wrapped = (
            result.start_us is not None
            and result.end_us is not None
            and result.end_us < result.start_us
        )
        return Sample(
            seq=seq,
            index=item.index,
            segment=item.segment,
            window=window,
            label=item.label,
            results=result.results,
            count=result.count,
            warmup=result.warmup,
            start_us=result.start_us,
            end_us=result.end_us,
            elapsed_us=result.elapsed_us,
            latency_us=latency,
            wrapped=wrapped,
            wall_s=wall_s,
        )

    def _lap_print_us(self, start_us: int) -> int:
        """Microseconds the DUT spent printing its first lap line inside the window."""
        line = len(f"m-lap-us-{start_us}\r\n")
        return round(wire_time(line, self.dut.channel.dut_baud) * 1e6)

    def expected_sample_s(
        self, input_bytes: int, count: int, warmup: int, *, download: bool = True
    ) -> float:
        """Wire-time model of one sample: the download's commands and replies (unless the
        input is already loaded, as for most latency queries), the ``infer`` exchange, and
        the DUT's compute time. The ETA shown to users is built from it."""
        baud = self.dut.channel.dut_baud
        sent = received = 0
        if download:
            chunks = math.ceil(input_bytes / self.dut.channel.chunk_bytes)
            sent = len(f"db load {input_bytes}%") + input_bytes * 2 + chunks * len("db %")
            received = 40 + chunks * len("m-ready\r\n")
        sent += len(f"infer {count} {warmup}%")
        received += dut_proto.reply_size_bound("infer", self.dut.outputs)
        per = self.dut.latency_s
        if per is None:  # not measured yet: the model's reference board
            per = self.dut.model.reference_latency_s if self.dut.model else 0.0
        return wire_time(sent + received, baud) + (count + warmup) * per

    def _report(
        self, done: int, total: int | None, count: int, warmup: int, *, download: bool = True
    ) -> None:
        if self.progress is None:
            return
        eta = None
        if total is not None and self.dut.model is not None:
            each = self.expected_sample_s(
                self.dut.model.input_bytes, count, warmup, download=download
            )
            eta = max(total - done, 0) * each
        self.progress(done, total, eta)
