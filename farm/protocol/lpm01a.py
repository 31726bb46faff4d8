"""The ST LPM01A PowerShield energy monitor's serial protocol, host side, sans-IO.

:func:`encode_command`, :func:`classify_line`, :class:`Lpm01aHost` (one outstanding command,
data lines passed through while commands are exchanged), :class:`EnergyCapture` (the
sample/event bookkeeping of the energy computation) and the official runner's command
sequences. What the PowerShield's firmware shares with the host lives here too (the prompt,
:func:`parse_number`); the shell itself and the stream formatters, for the simulator, are
:mod:`farm.protocol.lpm01a_firmware`. The wire format is described in docs/protocols.md.

Remote-problem policy (host side): the command path never raises. Acks carry the command text,
so a reply cannot be misattributed; lines that belong to no command (stale acks, the
runner's "did not acknowledge" junk) are kept on the reply as ``stray``. The one
RemoteProtocolError is :class:`EnergyCapture` seeing non-consecutive event numbers, which
invalidates an energy window. Nothing here does I/O or reads a clock.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from enum import Enum

from farm.protocol.errors import LocalProtocolError, RemoteProtocolError
from farm.protocol.events import Event
from farm.protocol.lines import LineFramer, is_clean, text

PROMPT = "PowerShield > "
HOST_BAUD = 3686400
ACQUISITION_COMPLETED = "Acquisition completed"
#: What the simulator writes after acking ``stop`` (and StopAcquisition has taken effect).
ACQUISITION_COMPLETED_LINE = f"{PROMPT}{ACQUISITION_COMPLETED}\r\n".encode()
MIN_VOLTAGE_MV = 1800
MAX_VOLTAGE_MV = 3300

# The runner's tests: a sample line *starts* with a 4-digit mantissa; values are then found
# with a global search, and junk before/after them becomes a NaN sample.
_SAMPLE_START_RE = re.compile(r"\d{4}[+-]\d{2}")
_SAMPLE_RE = re.compile(r"(\d{4})([+-]\d{2})")
# Tolerance beyond the runner: a whole line with a 5-digit mantissa (README stale-queue dump).
_WIDE_SAMPLE_RE = re.compile(r"(\d{5})([+-]\d{2})")
# The runner's strict TimeStamp pattern; anything else starting "TimeStamp" crashes it.
_TIMESTAMP_RE = re.compile(r"TimeStamp:([ ><])(\d{3})s (\d{3})ms, buff (\d{2})%")
_EVENT_RE = re.compile(r"event (\d+) (ris|fal)")


# --------------------------------------------------------------------------------------------
# Host side: encoding and the runner's sequences
# --------------------------------------------------------------------------------------------


def encode_command(command: str) -> bytes:
    """Bytes for one shell command: ``<command>\\r\\n`` (what the runner writes).

    Raises LocalProtocolError for an empty command (every ack would contain it), a CR or LF
    inside, or characters outside printable ASCII (the ack echo must match it verbatim).
    """
    if not command:
        raise LocalProtocolError("empty LPM01A command")
    for i, ch in enumerate(command):
        if ch in "\r\n":
            raise LocalProtocolError(
                f"LPM01A command {command!r} contains a line break at index {i}"
            )
        if not (0x20 <= ord(ch) < 0x7F):
            raise LocalProtocolError(
                f"LPM01A command {command!r} contains non-printable character {ch!r} at index {i}"
            )
    return command.encode("ascii") + b"\r\n"


def _check_voltage(voltage_mv: int) -> None:
    if not MIN_VOLTAGE_MV <= voltage_mv <= MAX_VOLTAGE_MV:
        raise LocalProtocolError(
            f"voltage {voltage_mv} mV outside the LPM01A's {MIN_VOLTAGE_MV}..{MAX_VOLTAGE_MV} mV"
        )


def setup_commands(voltage_mv: int) -> list[str]:
    """The runner's LPM session setup, in order."""
    _check_voltage(voltage_mv)
    return [
        "htc",
        'lcd 1 "MLPerf Tiny"',
        'lcd 2 "     monitor    "',
        "pwr off",
        "acqtime inf",
        "trigdelay 0",
        "trigsrc sw",
        "eventsrc d7 fal",
        "output energy",
        "format ascii_dec",
        "freq 1k",
        f"volt {voltage_mv}m",
    ]


def power_on_commands(voltage_mv: int) -> list[str]:
    """The runner's power-on: LCD line 2 shows the volts right-aligned, then ``pwr on``.

    The runner then sleeps 1 s and sends :data:`START`.
    """
    _check_voltage(voltage_mv)
    volts = voltage_mv / 1000
    return [f'lcd 2 "{volts: >14}V "', "pwr on nostatus"]


START = "start"


def teardown_commands() -> list[str]:
    """The runner's end of session: power off while streaming, stop (wait for
    ``Acquisition completed``), power off again, release host control."""
    return ["pwr off", "stop", "pwr off", "hrc"]


# --------------------------------------------------------------------------------------------
# Shell numbers (the host reads back the ``freq`` it set; the firmware parses arguments)
# --------------------------------------------------------------------------------------------

_NUMBER_RE = re.compile(r"(\d+)(?:([numk])|([+-])(\d{1,2}))?")
_SUFFIX = {"n": Decimal("1e-9"), "u": Decimal("1e-6"), "m": Decimal("1e-3"), "k": Decimal(1000)}


def parse_number(s: str) -> Decimal | None:
    """A shell number: digits with an optional ``n u m k`` suffix or a ``-xx``/``+xx``
    power of ten (``2m`` = ``2-3``). None if malformed."""
    m = _NUMBER_RE.fullmatch(s)
    if m is None:
        return None
    try:
        value = Decimal(m.group(1))
        if m.group(2):
            return value * _SUFFIX[m.group(2)]
        if m.group(3):
            return value.scaleb(int(m.group(3) + m.group(4)))
    except InvalidOperation:
        return None
    return value


# --------------------------------------------------------------------------------------------
# Host side: events
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Lpm01aEvent(Event):
    """One line from the PowerShield (``line``: as framed, no LF, CR and NUL dropped)."""


@dataclass(frozen=True, slots=True)
class Ack(Lpm01aEvent):
    """``ack <command> [<value>]``. ``value`` is split off only when the outstanding command
    is known; otherwise ``command`` holds everything after ``ack``."""

    command: str
    value: str | None


@dataclass(frozen=True, slots=True)
class Error(Lpm01aEvent):
    """``error <command>``: the shell rejected a command."""

    command: str


@dataclass(frozen=True, slots=True)
class ErrorDetail(Lpm01aEvent):
    """``Error detail: <text>`` following an error."""

    text: str


@dataclass(frozen=True, slots=True)
class Samples(Lpm01aEvent):
    """One stream line of samples (joules per period with ``output energy``).

    ``junk``: text before or after the values added NaN samples, as the runner does.
    ``wide``: a 5-digit mantissa, accepted as a tolerance (the runner would treat the line as
    a message).
    """

    values: tuple[float, ...]
    junk: bool = False
    wide: bool = False


@dataclass(frozen=True, slots=True)
class TimeStamp(Lpm01aEvent):
    """``TimeStamp: SSSs MMMms, buff BB%``; ``mark`` is the character after the colon and
    ``trailing`` any text after ``%`` (ignored by the runner)."""

    seconds: int
    millis: int
    buff: int
    mark: str = " "
    trailing: str = ""

    @property
    def ms(self) -> int:
        """Milliseconds since acquisition start, modulo the 1000 s wrap."""
        return self.seconds * 1000 + self.millis


@dataclass(frozen=True, slots=True)
class EdgeEvent(Lpm01aEvent):
    """``event <n> ris``: an edge on D7 at this point of the sample stream."""

    number: int
    edge: str


@dataclass(frozen=True, slots=True)
class AcquisitionCompleted(Lpm01aEvent):
    """A line containing ``Acquisition completed``."""


@dataclass(frozen=True, slots=True)
class Malformed(Lpm01aEvent):
    """A line that is broken: a TimeStamp the runner's regex rejects, or bytes outside
    printable ASCII."""

    reason: str


@dataclass(frozen=True, slots=True)
class Unknown(Lpm01aEvent):
    """Any other message line."""


#: Events of the acquisition stream (never part of a command reply).
DATA_EVENTS = (Samples, TimeStamp, EdgeEvent)


def _strip_prompt(s: str) -> str:
    while s.startswith(PROMPT):
        s = s[len(PROMPT) :]
    return s


def _sample_value(mantissa: str, exponent: str) -> float:
    # Through the decimal text, as the runner's float("6409e-07"), so values round the same.
    return float(f"{mantissa}e{exponent}")


def parse_samples(s: str) -> tuple[tuple[float, ...], bool] | None:
    """The runner's sample split of a line starting with ``DDDD±EE``: every ``\\d{4}[+-]\\d{2}``
    found is a value; junk before the first or after the last adds one NaN each. Returns
    (values, junk) or None when the line does not start like a sample."""
    if not _SAMPLE_START_RE.match(s):
        return None
    matches = list(_SAMPLE_RE.finditer(s))
    values = [_sample_value(m.group(1), m.group(2)) for m in matches]
    junk = False
    # Leading junk cannot occur (the line starts with a match) but the runner checks it too.
    if matches[0].start() > 0:
        values.insert(0, math.nan)
        junk = True
    if matches[-1].end() < len(s):
        values.append(math.nan)
        junk = True
    return tuple(values), junk


def _split_echo(rest: str, command: str | None) -> tuple[str, str | None] | None:
    """Split ``<command>[ <value>]`` when ``rest`` echoes ``command``; None otherwise."""
    if command is None:
        return None
    if rest == command:
        return command, None
    if rest.startswith(command + " "):
        return command, rest[len(command) + 1 :] or None
    return None


def classify_line(line: bytes, command: str | None = None) -> Lpm01aEvent:
    """Classify one framed line (LF removed, CR/NUL dropped); never fails.

    ``command`` is the outstanding command, used to split an ack's echo from its value.
    """
    # Stream lines are parsed unstripped, as the runner does: trailing blanks are junk (NaN).
    s = _strip_prompt(text(line))
    if s.startswith("TimeStamp"):
        if m := _TIMESTAMP_RE.match(s):
            return TimeStamp(
                line, int(m.group(2)), int(m.group(3)), int(m.group(4)), m.group(1), s[m.end() :]
            )
        return Malformed(line, "TimeStamp line does not match the runner's pattern")
    if (parsed := parse_samples(s)) is not None:
        return Samples(line, parsed[0], junk=parsed[1])
    if m := _WIDE_SAMPLE_RE.fullmatch(s):
        return Samples(line, (_sample_value(m.group(1), m.group(2)),), wide=True)
    if m := _EVENT_RE.match(s):
        return EdgeEvent(line, int(m.group(1)), m.group(2))
    if not is_clean(line):
        return Malformed(line, "bytes outside printable ASCII")
    s = s.strip()
    if s == "ack" or s.startswith("ack "):
        rest = s[4:]
        split = _split_echo(rest, command)
        return Ack(line, *split) if split else Ack(line, rest, None)
    if s == "error" or s.startswith("error "):
        rest = s[6:]
        split = _split_echo(rest, command)
        return Error(line, split[0] if split else rest)
    if s.startswith("Error detail"):
        return ErrorDetail(line, s[len("Error detail") :].lstrip(":").strip())
    if ACQUISITION_COMPLETED in s:
        return AcquisitionCompleted(line)
    return Unknown(line)


# --------------------------------------------------------------------------------------------
# Host side: command state machine
# --------------------------------------------------------------------------------------------


class Lpm01aState(Enum):
    """Where :class:`Lpm01aHost` is in a command exchange."""

    IDLE = "idle"
    AWAIT_ACK = "await_ack"
    AWAIT_COMPLETED = "await_completed"  # `stop` acked, waiting for Acquisition completed
    AWAIT_DETAIL = "await_detail"  # `error` seen, an Error detail line may follow


@dataclass(frozen=True, slots=True)
class Lpm01aReply:
    """One completed command.

    ``ok``: acked (for ``stop``: acked and ``Acquisition completed`` seen). ``value``: text
    after the echoed command in the ack. ``error_detail``: text of the ``Error detail`` line,
    None when none came. ``events``: the reply's own lines. ``stray``: message lines seen
    while waiting that belong to no command (stale acks, unknown text).
    """

    command: str
    ok: bool
    value: str | None = None
    error_detail: str | None = None
    events: tuple[Lpm01aEvent, ...] = ()
    stray: tuple[Lpm01aEvent, ...] = ()


class Lpm01aHost:
    """Host end of the LPM01A shell: one outstanding command, stream data passed through.

    :meth:`feed` returns every event, data lines included, whatever the command state
    (streaming goes on while commands are exchanged). A command completes on the ack or
    error line that echoes it; ``stop`` completes on ``Acquisition completed`` after its ack.
    After an error the host waits for an optional ``Error detail`` line: it completes the
    reply on that line, on any other message line, on :meth:`flush` or on the next
    :meth:`send`. With ``error_detail=False`` an error completes at once.
    """

    def __init__(self, *, error_detail: bool = True) -> None:
        self._framer = LineFramer()
        self._expect_detail = error_detail
        self._state = Lpm01aState.IDLE
        self._command: str | None = None
        self._events: list[Lpm01aEvent] = []
        self._stray: list[Lpm01aEvent] = []
        self._value: str | None = None
        self._completed_seen = False
        self._replies: list[Lpm01aReply] = []

    @property
    def state(self) -> Lpm01aState:
        """Current protocol state."""
        return self._state

    @property
    def outstanding(self) -> str | None:
        """The command awaiting its reply, if any."""
        return self._command

    def send(self, command: str) -> bytes:
        """Start ``command``; return the bytes to write.

        Raises LocalProtocolError while a reply is outstanding. A pending wait for an
        ``Error detail`` line is given up (the reply completes without it).
        """
        if self._state is Lpm01aState.AWAIT_DETAIL:
            self.flush()
        if self._state is not Lpm01aState.IDLE:
            raise LocalProtocolError(f"a reply to {self._command!r} is still outstanding")
        data = encode_command(command)
        self._begin(command)
        return data

    def feed(self, data: bytes) -> list[Lpm01aEvent]:
        """Add received bytes; return the events of every line they complete."""
        events: list[Lpm01aEvent] = []
        for line in self._framer.feed(data):
            event = classify_line(line, self._command)
            events.append(event)
            if not isinstance(event, DATA_EVENTS):
                self._advance(event)
        return events

    def flush(self) -> None:
        """Give up waiting for an ``Error detail`` line (the caller's idle timeout)."""
        if self._state is Lpm01aState.AWAIT_DETAIL:
            self._complete(ok=False)

    def take_replies(self) -> list[Lpm01aReply]:
        """Return the replies completed since the last call, oldest first."""
        replies, self._replies = self._replies, []
        return replies

    def reset(self) -> None:
        """Forget the partial line and the outstanding command (after a timeout or resync)."""
        self._framer.reset()
        self._begin(None)

    def abandon(self) -> None:
        """Forget the outstanding command but keep the partial line (a command timed out
        while the stream goes on: cutting the framer would turn the sample in flight into
        junk). A late ack then arrives while idle and is ignored."""
        self._begin(None)

    # -- internals ---------------------------------------------------------------------------

    def _begin(self, command: str | None) -> None:
        self._command = command
        self._state = Lpm01aState.IDLE if command is None else Lpm01aState.AWAIT_ACK
        self._events = []
        self._stray = []
        self._value = None
        self._completed_seen = False

    def _complete(self, ok: bool, detail: str | None = None) -> None:
        assert self._command is not None
        self._replies.append(
            Lpm01aReply(
                self._command, ok, self._value, detail, tuple(self._events), tuple(self._stray)
            )
        )
        self._begin(None)

    def _advance(self, event: Lpm01aEvent) -> None:
        state = self._state
        if state is Lpm01aState.IDLE:
            return
        if state is Lpm01aState.AWAIT_DETAIL:
            if isinstance(event, ErrorDetail):
                self._events.append(event)
                self._complete(ok=False, detail=event.text)
            else:
                self._complete(ok=False)  # no detail line: this one is unsolicited
            return
        mine = getattr(event, "command", None) == self._command
        if state is Lpm01aState.AWAIT_ACK:
            if isinstance(event, Ack) and mine:
                self._events.append(event)
                self._value = event.value
                if self._command == "stop" and not self._completed_seen:
                    self._state = Lpm01aState.AWAIT_COMPLETED
                else:
                    self._complete(ok=True)
                return
            if isinstance(event, Error) and mine:
                self._events.append(event)
                if self._expect_detail:
                    self._state = Lpm01aState.AWAIT_DETAIL
                else:
                    self._complete(ok=False)
                return
            if isinstance(event, AcquisitionCompleted) and self._command == "stop":
                # Tolerate the completion overtaking the ack.
                self._events.append(event)
                self._completed_seen = True
                return
            self._stray.append(event)
            return
        # Lpm01aState.AWAIT_COMPLETED
        if isinstance(event, AcquisitionCompleted):
            self._events.append(event)
            self._complete(ok=True)
        else:
            self._stray.append(event)


# --------------------------------------------------------------------------------------------
# Host side: energy bookkeeping
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EnergyWindow:
    """Data drained from an :class:`EnergyCapture`.

    ``events``: (event number, number of samples in this window before the event).
    ``timestamps``: (ms of the TimeStamp line, number of samples before it).
    ``first_sample``: index in the acquisition of this window's first sample (samples drained
    in earlier windows since the acquisition started), so ``first_sample + i`` is sample
    ``i``'s position in the whole stream.
    """

    samples: tuple[float, ...]
    events: tuple[tuple[int, int], ...]
    timestamps: tuple[tuple[int, int], ...]
    first_sample: int = 0


class EnergyCapture:
    """Accumulates stream data between drains, as the runner does per ``infer`` window.

    Event numbers must be consecutive across the whole acquisition (the counter never
    restarts until ``Acquisition completed``); a gap means a lost event line and raises
    RemoteProtocolError, after the event has been recorded so no data is lost.
    """

    def __init__(self) -> None:
        self._samples: list[float] = []
        self._events: list[tuple[int, int]] = []
        self._timestamps: list[tuple[int, int]] = []
        self._last_event: int | None = None
        self._first_sample = 0

    @property
    def sample_count(self) -> int:
        """Samples recorded since the last drain."""
        return len(self._samples)

    def add(self, event: Lpm01aEvent) -> None:
        """Record one event; anything but stream data is ignored."""
        if isinstance(event, Samples):
            self._samples.extend(event.values)
        elif isinstance(event, TimeStamp):
            self._timestamps.append((event.ms, len(self._samples)))
        elif isinstance(event, AcquisitionCompleted):
            # The next acquisition numbers its events and its samples from 0 again.
            self._last_event = None
            self._first_sample = -len(self._samples)
        elif isinstance(event, EdgeEvent):
            self._events.append((event.number, len(self._samples)))
            expected = None if self._last_event is None else self._last_event + 1
            self._last_event = event.number
            if expected is not None and event.number != expected:
                raise RemoteProtocolError(
                    f"event numbers not consecutive: got {event.number}, expected {expected}"
                )

    def extend(self, events: Iterable[Lpm01aEvent]) -> None:
        """Record every event in order; a numbering gap is raised after all are recorded."""
        first_error: RemoteProtocolError | None = None
        for event in events:
            try:
                self.add(event)
            except RemoteProtocolError as exc:
                first_error = first_error or exc
        if first_error is not None:
            raise first_error

    def drain(self) -> EnergyWindow:
        """Return everything recorded since the last drain and start a new window."""
        window = EnergyWindow(
            tuple(self._samples), tuple(self._events), tuple(self._timestamps), self._first_sample
        )
        self._first_sample += len(self._samples)
        self._samples = []
        self._events = []
        self._timestamps = []
        return window
