"""The DUT's serial protocol, host side (docs/protocols.md#dut), sans-IO.

:class:`DutHost` is fed the bytes the DUT sends and returns one typed event per line; it
assembles replies up to the ``m-ready`` line. :func:`encode_command` checks a command before
anything is sent. Nothing here touches a port: the agent's serial link, the simulator's tests
and the interface board's passthrough all use the same classifier.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from typing import TypeVar

from farm.protocol.errors import LocalProtocolError
from farm.protocol.events import Event
from farm.protocol.lines import LineFramer, is_clean, text

#: The firmware's command buffer (``EE_CMD_SIZE``); longer commands are silently truncated.
MAX_COMMAND_CHARS = 80
TERMINATOR = b"%"
#: The free-running µs counter behind ``m-lap-us-N`` is 32 bits wide.
LAP_MODULUS = 1 << 32
#: The longest a DUT may stay silent inside one reply on a direct link (the W warmups, or the
#: N timed inferences): the official runner reads each line with a 30 s timeout.
SILENT_PHASE_LIMIT_S = 30.0


def encode_command(command: str) -> bytes:
    """The bytes to send for ``command``: the command and its ``%`` terminator.

    Refuses (``LocalProtocolError``) what the firmware would mangle without telling us:
    a command longer than 80 characters (silently truncated on the device), a ``%`` inside
    it (would end it early), or any byte outside printable ASCII (CR/LF are not stripped by
    the firmware, so ``name\\r\\n`` would be an unknown command).
    """
    if len(command) > MAX_COMMAND_CHARS:
        raise LocalProtocolError(
            f"DUT command is {len(command)} characters, the firmware keeps only "
            f"{MAX_COMMAND_CHARS}: {command[:24]!r}..."
        )
    if "%" in command:
        raise LocalProtocolError(f"DUT command contains the terminator '%': {command!r}")
    if not command.isascii() or not command.isprintable():
        raise LocalProtocolError(f"DUT command has non-printable or non-ASCII text: {command!r}")
    return command.encode("ascii") + TERMINATOR


# --- events ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DutEvent(Event):
    """One line from the DUT. ``line`` is the raw line (CR and NUL removed, no LF)."""


@dataclass(frozen=True, slots=True)
class TimestampMode(DutEvent):
    """Boot banner: ``m-timestamp-mode-performance`` or ``m-timestamp-mode-energy``."""

    mode: str


@dataclass(frozen=True, slots=True)
class InitDone(DutEvent):
    """Boot banner: ``m-init-done``."""


@dataclass(frozen=True, slots=True)
class Ready(DutEvent):
    """``m-ready``: the end of every reply. ``prefix`` is any text the line held before
    ``m-ready`` (empty on a clean line; noise glued to it otherwise)."""

    prefix: bytes = b""


@dataclass(frozen=True, slots=True)
class Name(DutEvent):
    """``m-name-dut-[<vendor>]``."""

    vendor: str


@dataclass(frozen=True, slots=True)
class Profile(DutEvent):
    """``m-profile-[<text>]``."""

    profile: str


@dataclass(frozen=True, slots=True)
class Model(DutEvent):
    """``m-model-[<id>]``: the model the firmware was built for."""

    model: str


@dataclass(frozen=True, slots=True)
class Expecting(DutEvent):
    """``m-[Expecting N bytes]``: the reply to ``db load N``."""

    nbytes: int


@dataclass(frozen=True, slots=True)
class LoadDone(DutEvent):
    """``m-load-done``: the declared number of bytes has been received."""


@dataclass(frozen=True, slots=True)
class WarmupStart(DutEvent):
    """``m-warmup-start-W``."""

    count: int


@dataclass(frozen=True, slots=True)
class WarmupDone(DutEvent):
    """``m-warmup-done``."""


@dataclass(frozen=True, slots=True)
class InferStart(DutEvent):
    """``m-infer-start-N``."""

    count: int


@dataclass(frozen=True, slots=True)
class InferDone(DutEvent):
    """``m-infer-done``."""


@dataclass(frozen=True, slots=True)
class Lap(DutEvent):
    """``m-lap-us-N``: the DUT's free-running 32-bit microsecond counter."""

    us: int


@dataclass(frozen=True, slots=True)
class Results(DutEvent):
    """``m-results-[...]``: the last inference's output vector (empty fields ignored)."""

    values: tuple[float, ...]


@dataclass(frozen=True, slots=True)
class BufferDump(DutEvent):
    """``m-buffer-xx-xx-...``: one line of ``db print``."""

    data: bytes


@dataclass(frozen=True, slots=True)
class DeviceError(DutEvent):
    """``e-[<message>]``: an error the firmware reports (the host sent something it rejects)."""

    message: str


@dataclass(frozen=True, slots=True)
class BufferTooLarge(DutEvent):
    """``Supplied buffer size N exceeds maximum of M`` (LF only, no ``e-``): the firmware
    nevertheless set its size to N, so later ``db`` chunks corrupt its memory."""

    size: int
    maximum: int


@dataclass(frozen=True, slots=True)
class InputSizeMismatch(DutEvent):
    """``Input db has K elemented, expected L`` (LF only, no ``e-``): the firmware then runs
    the inference on the stale tensor."""

    got: int
    expected: int


@dataclass(frozen=True, slots=True)
class Blank(DutEvent):
    """An empty line (``help`` and ``db print`` print them)."""


@dataclass(frozen=True, slots=True)
class Unknown(DutEvent):
    """A printable line of no known kind (e.g. the ``help`` text), kept raw."""


@dataclass(frozen=True, slots=True)
class Garbage(DutEvent):
    """A line with bytes no firmware prints (control bytes, >= 0x80): noise on the wire,
    a baud mismatch or a reset. A reply holding one cannot be trusted."""


# --- the streaming-wakeword (sww01) firmware's lines (docs/protocols.md#sww-dut) -------------


@dataclass(frozen=True, slots=True)
class Echo(DutEvent):
    """``Received command: <cmd>``: the sww firmware echoes every command before running it."""

    command: str


@dataclass(frozen=True, slots=True)
class StreamListening(DutEvent):
    """``Listening for I2S data ... ``: ``start`` armed the audio input."""


@dataclass(frozen=True, slots=True)
class StreamStarted(DutEvent):
    """``DMA receive initiated.``: the last line ``start`` prints."""


@dataclass(frozen=True, slots=True)
class StreamBusy(DutEvent):
    """``I2S Rx currently in progress. Ignoring request``: ``start`` while streaming."""


@dataclass(frozen=True, slots=True)
class StreamStopped(DutEvent):
    """``Streaming stopped.``: ``stop`` ended a stream (and pulsed the timestamp pin)."""


@dataclass(frozen=True, slots=True)
class StreamIdle(DutEvent):
    """``I2S is already idle.  Ignoring stop request``: ``stop`` with no stream."""


@dataclass(frozen=True, slots=True)
class ActivationsHeader(DutEvent):
    """``target activations: ``: the per-frame activation dump follows."""


@dataclass(frozen=True, slots=True)
class ActivationRow(DutEvent):
    """One row of the activation dump: up to 16 ``%d, `` values (the first row starts with
    ``[``, the last value of the dump is followed by two spaces)."""

    values: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class ActivationsEnd(DutEvent):
    """``]`` (``[]`` for an empty dump): the end of the activation dump."""


@dataclass(frozen=True, slots=True)
class BytesReceived(DutEvent):
    """``N bytes received``: the sww firmware's reply to a ``db <hex>`` chunk."""

    count: int


@dataclass(frozen=True, slots=True)
class BufferPointer(DutEvent):
    """``m-buff-ptr-N``: the sww firmware's ``db getptr``."""

    position: int


@dataclass(frozen=True, slots=True)
class Unrecognized(DutEvent):
    """``Unrecognized command <cmd>`` (the sww firmware's unknown command), or its
    ``Empty command ...`` message: an error, as ``e-[Unknown command: ...]`` is."""

    command: str


_PATTERNS: list[tuple[re.Pattern[str], type[DutEvent]]] = [
    (re.compile(r"m-timestamp-mode-(\w+)"), TimestampMode),
    (re.compile(r"m-init-done"), InitDone),
    (re.compile(r"m-name-dut-\[([^\]]*)\]"), Name),
    (re.compile(r"m-profile-\[([^\]]*)\]"), Profile),
    (re.compile(r"m-model-\[([^\]]*)\]"), Model),
    (re.compile(r"m-\[Expecting (\d+) bytes\]"), Expecting),
    (re.compile(r"m-load-done"), LoadDone),
    (re.compile(r"m-warmup-start-(\d+)"), WarmupStart),
    (re.compile(r"m-warmup-done"), WarmupDone),
    (re.compile(r"m-infer-start-(\d+)"), InferStart),
    (re.compile(r"m-infer-done"), InferDone),
    (re.compile(r"m-lap-us-(\d+)"), Lap),
    (re.compile(r"m-results-\[(.*)\]"), Results),
    (re.compile(r"m-buffer((?:-[0-9a-fA-F]{2})+)"), BufferDump),
    (re.compile(r"e-\[(.*)\]"), DeviceError),
    (re.compile(r"Supplied buffer size (\d+) exceeds maximum of (\d+)"), BufferTooLarge),
    (re.compile(r"Input db has (\d+) elemented, expected (\d+)"), InputSizeMismatch),
    (re.compile(r"Received command: (.*)"), Echo),
    (re.compile(r"Listening for I2S data \.\.\. ?"), StreamListening),
    (re.compile(r"DMA receive initiated\."), StreamStarted),
    (re.compile(r"I2S Rx currently in progress\. Ignoring request"), StreamBusy),
    (re.compile(r"Streaming stopped\."), StreamStopped),
    (re.compile(r"I2S is already idle\.  Ignoring stop request"), StreamIdle),
    (re.compile(r"target activations: ?"), ActivationsHeader),
    (re.compile(r"\[?((?:-?\d+, )*-?\d+[, ] )"), ActivationRow),
    (re.compile(r"\[?\]"), ActivationsEnd),
    (re.compile(r"Expecting (\d+) bytes"), Expecting),
    (re.compile(r"(\d+) bytes received"), BytesReceived),
    (re.compile(r"m-buff-ptr-(\d+)"), BufferPointer),
    (re.compile(r"Error: (.*)"), DeviceError),
    (re.compile(r"Unrecognized command (.*)"), Unrecognized),
    (re.compile(r"(Empty command) \(only a % read\)\.  Type 'help%' for help"), Unrecognized),
]
_READY = b"m-ready"

#: Characters of a line that choose the patterns worth trying (see :func:`_candidates`).
_KEY_CHARS = 3
_REGEX_SYNTAX = frozenset(".^$*+?{}[]()|\\")


def _literal_prefix(pattern: str) -> str:
    """The text every match of ``pattern`` starts with: its leading literal characters (an
    escaped punctuation character is one; a character made optional by ``?``, ``*`` or
    ``{`` is not, and ends the prefix)."""
    prefix: list[str] = []
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if c == "\\" and i + 1 < len(pattern) and not pattern[i + 1].isalnum():
            literal, step = pattern[i + 1], 2
        elif c in _REGEX_SYNTAX:
            break
        else:
            literal, step = c, 1
        if pattern[i + step : i + step + 1] in ("?", "*", "{"):
            break
        prefix.append(literal)
        i += step
    return "".join(prefix)


def _candidates() -> tuple[dict[str, tuple[int, ...]], tuple[int, ...]]:
    """For a line's first :data:`_KEY_CHARS` characters, the indexes into :data:`_PATTERNS`
    (in order) of the patterns that can match it, and those of a line whose start no
    pattern's prefix begins with. A pattern whose literal prefix the line does not start with
    cannot match, so trying only these, in the same order, classifies every line as trying
    them all does, with a few regex calls instead of up to 32 per line."""
    prefixes = [_literal_prefix(pattern.pattern) for pattern, _ in _PATTERNS]
    short = tuple(i for i, p in enumerate(prefixes) if len(p) < _KEY_CHARS)
    table: dict[str, tuple[int, ...]] = {}
    for key in {p[:_KEY_CHARS] for p in prefixes if len(p) >= _KEY_CHARS}:
        table[key] = tuple(
            i
            for i, p in enumerate(prefixes)
            if (p[:_KEY_CHARS] == key if len(p) >= _KEY_CHARS else key.startswith(p))
        )
    return table, short


_BY_KEY, _SHORT_PREFIX = _candidates()


def _results(body: str) -> tuple[float, ...] | None:
    values = []
    for item in body.split(","):
        item = item.strip()
        if not item:
            continue  # the reference VWW port prints a trailing comma
        try:
            values.append(float(item))
        except ValueError:
            return None
    return tuple(values)


#: The kinds of line a DUT prints again and again with the same text (every latency query's
#: reply repeats all of its lines but the laps): their events are kept by line in
#: :data:`_SEEN`, at most :data:`_SEEN_MAX` of them (emptied when full). Events are frozen.
_REPEATING = frozenset({Ready, InferStart, InferDone, WarmupStart, WarmupDone, Results, LoadDone})
_SEEN: dict[bytes, DutEvent] = {}
_SEEN_MAX = 256


def classify_line(line: bytes) -> DutEvent:
    """Turn one framed line into its event. Never raises, whatever the bytes."""
    event = _SEEN.get(line)
    if event is None:
        event = _classify(line)
        if type(event) in _REPEATING:
            if len(_SEEN) >= _SEEN_MAX:
                _SEEN.clear()
            _SEEN[line] = event
    return event


def _classify(line: bytes) -> DutEvent:
    if line.endswith(_READY):
        prefix = line[: -len(_READY)]
        if not prefix or is_clean(prefix):
            return Ready(line, prefix)
        return Garbage(line)
    if not line:
        return Blank(line)
    if not is_clean(line):
        return Garbage(line)
    s = text(line)
    for index in _BY_KEY.get(s[:_KEY_CHARS], _SHORT_PREFIX):
        pattern, kind = _PATTERNS[index]
        m = pattern.fullmatch(s)
        if m is None:
            continue
        if kind is Results:
            values = _results(m.group(1))
            return Results(line, values) if values is not None else Unknown(line)
        if kind is BufferDump:
            return BufferDump(line, bytes.fromhex(m.group(1).replace("-", "")))
        if kind in (BufferTooLarge, InputSizeMismatch):
            return kind(line, int(m.group(1)), int(m.group(2)))
        if kind is ActivationRow:
            values = tuple(int(v) for v in m.group(1).replace(",", " ").split())
            return ActivationRow(line, values)
        if kind in (Expecting, WarmupStart, InferStart, Lap, BytesReceived, BufferPointer):
            return kind(line, int(m.group(1)))
        if kind in (TimestampMode, Name, Profile, Model, DeviceError, Echo, Unrecognized):
            return kind(line, m.group(1))
        return kind(line)
    return Unknown(line)


# --- replies --------------------------------------------------------------------------------

_E = TypeVar("_E", bound=DutEvent)


@dataclass(frozen=True, slots=True)
class DutReply:
    """Everything the DUT printed for one command, up to and including ``m-ready``."""

    command: str
    events: tuple[DutEvent, ...]

    @property
    def lines(self) -> tuple[bytes, ...]:
        """The raw lines, in order."""
        return tuple(e.line for e in self.events)

    def of(self, kind: type[_E]) -> list[_E]:
        """Every event of one kind, in order."""
        return [e for e in self.events if isinstance(e, kind)]

    @property
    def errors(self) -> list[DeviceError | BufferTooLarge | InputSizeMismatch | Unrecognized]:
        """The firmware's error lines (``e-[...]``, the two LF-only messages, and the sww
        firmware's ``Error: ...`` and ``Unrecognized command ...``)."""
        kinds = DeviceError | BufferTooLarge | InputSizeMismatch | Unrecognized
        return [e for e in self.events if isinstance(e, kinds)]

    @property
    def garbage(self) -> list[Garbage]:
        """Lines of noise: the reply is not trustworthy if there is any."""
        return self.of(Garbage)

    @property
    def reset_seen(self) -> bool:
        """True if a boot banner appeared inside the reply: the DUT rebooted mid-command."""
        return any(isinstance(e, TimestampMode | InitDone) for e in self.events)

    @property
    def laps(self) -> list[int]:
        """Every ``m-lap-us`` value, in order."""
        return [e.us for e in self.of(Lap)]

    @property
    def results(self) -> tuple[float, ...] | None:
        """The last result vector, if any."""
        found = self.of(Results)
        return found[-1].values if found else None


def lines_text(events: Sequence[DutEvent]) -> str:
    """The events' lines as one readable string (for error messages)."""
    return "; ".join(text(e.line) for e in events)


def elapsed_us(start: int, end: int) -> int:
    """Microseconds from ``start`` to ``end`` on the DUT's 32-bit counter, across one wrap.

    The official runner subtracts directly and reports throughput 0 when the counter wrapped
    inside the window; a window is far shorter than the 71.6-minute wrap period, so modular
    subtraction is exact.
    """
    return (end - start) % LAP_MODULUS


class DutState(Enum):
    """Whether a command is outstanding on the link."""

    IDLE = "idle"
    AWAITING_REPLY = "awaiting-reply"


class DutHost:
    """Host side of one DUT link: one outstanding command at a time.

    ``send`` returns the bytes to write; ``feed`` takes received bytes and returns one event
    per completed line; a reply is complete when its ``m-ready`` line arrives and is then
    available from :meth:`next_reply`. Lines that arrive with no command outstanding (a boot
    banner after a reset, noise) are returned as events too, and belong to no reply.
    """

    def __init__(self) -> None:
        self._framer = LineFramer()
        self._state = DutState.IDLE
        self._command = ""
        self._events: list[DutEvent] = []
        self._replies: deque[DutReply] = deque()

    @property
    def state(self) -> DutState:
        """``IDLE`` or ``AWAITING_REPLY``."""
        return self._state

    @property
    def command(self) -> str:
        """The outstanding command (empty when idle)."""
        return self._command

    def send(self, command: str) -> bytes:
        """Start a command; return the bytes to write.

        Raises ``LocalProtocolError`` if a reply is still outstanding (the firmware does not
        read its UART while it executes, so a second command would be lost) or if the command
        itself is invalid (see :func:`encode_command`).
        """
        if self._state is not DutState.IDLE:
            raise LocalProtocolError(
                f"cannot send {command!r}: the reply to {self._command!r} is still outstanding"
            )
        data = encode_command(command)
        self._state = DutState.AWAITING_REPLY
        self._command = command
        self._events = []
        return data

    def feed(self, data: bytes) -> list[DutEvent]:
        """Process received bytes; return the events of every line they complete."""
        events = [classify_line(line) for line in self._framer.feed(data)]
        for event in events:
            if self._state is DutState.IDLE:
                # Unsolicited: only the returned events report it (the caller logs it); kept
                # here it would grow without bound on a DUT that prints while nobody asks.
                continue
            self._events.append(event)
            if isinstance(event, Ready):
                self._replies.append(DutReply(self._command, tuple(self._events)))
                self._state = DutState.IDLE
                self._command = ""
                self._events = []
        return events

    def next_reply(self) -> DutReply | None:
        """The oldest completed reply not yet taken, or ``None``."""
        return self._replies.popleft() if self._replies else None

    def abandon(self) -> tuple[DutEvent, ...]:
        """Give up on the outstanding command (after a timeout, before a resync): forget the
        partial line and reply, return to ``IDLE``, and return what had arrived."""
        partial = tuple(self._events)
        self._framer.reset()
        self._state = DutState.IDLE
        self._command = ""
        self._events = []
        self._replies.clear()
        return partial


def reply_size_bound(command: str, outputs: int = 12) -> int:
    """An upper bound on the bytes the reference firmware prints in reply to ``command``,
    for the wire-time model (``outputs`` is the model's result vector length)."""
    results_line = 16 + 8 * outputs
    verb = command.split(" ", 1)[0]
    sizes = {
        "name": 64,
        "profile": 80,
        "help": 640,
        "timestamp": 32,
        "results": results_line + 9,
        "infer": 150 + results_line,
    }
    if verb == "db":
        # ``db print`` dumps the whole buffer, 32 characters per 8 bytes.
        parts = command.split()
        if len(parts) > 1 and parts[1] == "print":
            return 32 + 27648 // 8 * 34
        return 80
    return sizes.get(verb, 80)
