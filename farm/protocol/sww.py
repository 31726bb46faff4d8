"""The streaming-wakeword (sww01) exchanges, host side, sans-IO
(docs/protocols.md#streaming-wakeword).

One sww run is one stream: the DUT's ``start``, the interface board's ``record_detections``
and ``play <wav>``, the DUT's ``stop`` (its per-frame activation dump), then the board's
``print_detections`` and ``print_dutycycle``. Each function here reads one of those replies,
already assembled by :class:`~farm.protocol.dut.DutHost` (or the board's passthrough) and
:class:`~farm.protocol.interface.InterfaceHost`, into plain values, and raises
:class:`~farm.protocol.errors.RemoteProtocolError` naming the line when the reply does not
have the board's shape.

The timing constants of the audio path live here too: both the simulators and the host's
wire-time model need them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from farm.protocol import dut
from farm.protocol.errors import RemoteProtocolError
from farm.protocol.interface import InterfaceReply, Ready
from farm.protocol.lines import text

#: The interface board plays 16 kHz, 16-bit stereo wav files over I2S.
SAMPLE_RATE = 16_000
CHANNELS = 2
SAMPLE_BYTES = 2
#: The DUT processes the audio in frames of 512 samples (its window stride): 32 ms each.
FRAME_SAMPLES = 512
FRAME_S = FRAME_SAMPLES / SAMPLE_RATE
#: One frame on the I2S link: 512 stereo 16-bit samples (the firmware's DMA chunk).
FRAME_BYTES = FRAME_SAMPLES * CHANNELS * SAMPLE_BYTES
#: The firmware pulses WW_DETECTED when a frame's activation exceeds this (and always on the
#: first frame of a stream, the time origin of the detection log).
DETECT_THRESHOLD = 115
#: The board's detection and duty-cycle clock (TIM2) ticks every 10 µs.
TICK_S = 1e-5
#: The board's log capacities: detections, and start (and stop) edges of the duty cycle
#: (100 frames: the first 3.2 s of a stream).
MAX_DETECTIONS = 10_000
MAX_DUTY_EDGES = 100
#: The runner waits this long after ``play`` returns before ``stop`` (the DUT may still be
#: busy with the last frame).
STOP_DELAY_S = 0.25
#: ``play`` may take the wav's length plus this before the runner gives up on it.
PLAY_MARGIN_S = 10.0

DETECTIONS_HEADER = "Detection Timestamps (ms)"
DUTY_START_HEADER = "Duty cycle start times (s)"
DUTY_STOP_HEADER = "Duty cycle stop times (s)"
PLAY_ATTEMPT = "Attempting to play "
PLAY_SUCCEEDED = "succeeded."

_DETECTION = re.compile(r"(\d+),")
_TICKS = re.compile(r"(\d+), ")


@dataclass(frozen=True, slots=True)
class StreamStop:
    """What the DUT's ``stop`` printed."""

    stopped: bool
    """True if a stream was running (``Streaming stopped.``); False for ``I2S is already
    idle``."""
    activations: tuple[int, ...]
    """The per-frame wakeword activations of the stream, as far as they arrived intact."""
    damaged_rows: int
    """Rows of the dump that arrived garbled (the board's DUT queue drops bytes when a long
    dump outruns its forwarding): their values are left out."""


def stream_started(reply: dut.DutReply) -> bool:
    """True if ``start`` began a stream (``DMA receive initiated.``); False if one was already
    running (``I2S Rx currently in progress``). Raises on any other reply."""
    if reply.of(dut.StreamStarted):
        return True
    if reply.of(dut.StreamBusy):
        return False
    lines = dut.lines_text(reply.events)
    raise RemoteProtocolError(f"reply to 'start' has no stream line: {lines}")


def stream_stop(reply: dut.DutReply) -> StreamStop:
    """Read ``stop``'s reply. The activation dump is informational (the official runner
    replaces unreadable values and scores nothing from it), so garbled rows are counted, not
    fatal; a reply without ``Streaming stopped.`` or ``I2S is already idle`` raises."""
    if reply.of(dut.StreamIdle):
        return StreamStop(False, (), 0)
    if not reply.of(dut.StreamStopped):
        lines = dut.lines_text(reply.events)
        raise RemoteProtocolError(f"reply to 'stop' has no stop line: {lines}")
    values: list[int] = []
    damaged = 0
    in_dump = False
    for event in reply.events:
        if isinstance(event, dut.ActivationsHeader):
            in_dump = True
        elif isinstance(event, dut.ActivationsEnd | dut.Ready):
            in_dump = False
        elif in_dump:
            if isinstance(event, dut.ActivationRow):
                values.extend(event.values)
            else:
                damaged += 1
    return StreamStop(True, tuple(values), damaged)


def detections(reply: InterfaceReply) -> tuple[int, ...]:
    """The detection log from ``print_detections``: milliseconds since ``record_detections``
    (the first one is the DUT's sync pulse on its first frame)."""
    lines = _board_lines(reply, "print_detections")
    if not lines or lines[0] != DETECTIONS_HEADER:
        raise RemoteProtocolError(
            f"print_detections: expected {DETECTIONS_HEADER!r} first, got {lines[:1]!r}"
        )
    out: list[int] = []
    for line in lines[1:]:
        m = _DETECTION.fullmatch(line)
        if m is None:
            raise RemoteProtocolError(f"print_detections: {line!r} is not a timestamp line")
        out.append(int(m.group(1)))
    return tuple(out)


def dutycycle(reply: InterfaceReply) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The duty-cycle log from ``print_dutycycle``: the DUT's processing-pin rising and
    falling edges, in TIM2 ticks (10 µs) since ``record_detections``.

    The board prints ``v, `` per value, a CRLF after every 8th, and its ``m-ready`` with no
    CRLF before it, so the last values may share the ``m-ready`` line."""
    lines = _board_lines(reply, "print_dutycycle")
    if not lines or lines[0] != DUTY_START_HEADER:
        raise RemoteProtocolError(
            f"print_dutycycle: expected {DUTY_START_HEADER!r} first, got {lines[:1]!r}"
        )
    starts: list[int] = []
    stops: list[int] = []
    target = starts
    for line in lines[1:]:
        if line == DUTY_STOP_HEADER:
            if target is stops:
                raise RemoteProtocolError(f"print_dutycycle: {DUTY_STOP_HEADER!r} twice")
            target = stops
            continue
        target.extend(_ticks(line))
    if target is not stops:
        raise RemoteProtocolError(f"print_dutycycle: no {DUTY_STOP_HEADER!r} line")
    return tuple(starts), tuple(stops)


def play_succeeded(reply: InterfaceReply, file: str) -> bool:
    """True if ``play <file>`` played it (``succeeded.``), False if the board could not
    (no such file, not a 2-channel wav). Raises on a reply of another shape."""
    lines = _board_lines(reply, "play")
    if not lines or lines[0] != PLAY_ATTEMPT + file:
        raise RemoteProtocolError(f"play {file}: expected {PLAY_ATTEMPT + file!r}, got {lines!r}")
    return lines[1:] == [PLAY_SUCCEEDED]


def _ticks(line: str) -> list[int]:
    if not line:
        return []
    if _TICKS.sub("", line):
        raise RemoteProtocolError(f"print_dutycycle: {line!r} is not a list of ticks")
    return [int(v) for v in _TICKS.findall(line)]


def _board_lines(reply: InterfaceReply, command: str) -> list[str]:
    """The reply's lines as text, the ``m-ready`` line reduced to what precedes it (dropped
    when nothing does)."""
    lines: list[str] = []
    for event in reply.events:
        if isinstance(event, Ready):
            if event.prefix:
                lines.append(event.prefix)
            continue
        lines.append(text(event.line))
    if reply.passthrough:
        raise RemoteProtocolError(f"{command}: got a passthrough reply")
    return lines
