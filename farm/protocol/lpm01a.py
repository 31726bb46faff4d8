"""Sans-IO protocol of the ST LPM01A PowerShield energy monitor (PROTOCOLS.md §4.1).

Host side: :func:`encode_command`, :func:`classify_line`, :class:`Lpm01aHost` (one outstanding
command, data lines passed through while commands are exchanged), :class:`EnergyCapture` (the
sample/event bookkeeping of the energy computation) and the official runner's command
sequences. Device side, for the simulator: :class:`Lpm01aFirmware` (command shell with the
§4.1 grammar and state) and the stream formatters :func:`format_sample`,
:func:`format_timestamp`, :func:`format_event`.

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
    """The runner's LPM session setup, in order (§4.1 'Runner LPM session')."""
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
# Host side: events
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Ack:
    """``ack <command> [<value>]``. ``value`` is split off only when the outstanding command
    is known; otherwise ``command`` holds everything after ``ack``."""

    command: str
    value: str | None
    line: bytes


@dataclass(frozen=True, slots=True)
class Error:
    """``error <command>``: the shell rejected a command."""

    command: str
    line: bytes


@dataclass(frozen=True, slots=True)
class ErrorDetail:
    """``Error detail: <text>`` following an error."""

    text: str
    line: bytes


@dataclass(frozen=True, slots=True)
class Samples:
    """One stream line of samples (joules per period with ``output energy``).

    ``junk``: text before or after the values added NaN samples, as the runner does.
    ``wide``: a 5-digit mantissa, accepted as a tolerance (the runner would treat the line as
    a message).
    """

    values: tuple[float, ...]
    line: bytes
    junk: bool = False
    wide: bool = False


@dataclass(frozen=True, slots=True)
class TimeStamp:
    """``TimeStamp: SSSs MMMms, buff BB%``; ``mark`` is the character after the colon and
    ``trailing`` any text after ``%`` (ignored by the runner)."""

    seconds: int
    millis: int
    buff: int
    line: bytes
    mark: str = " "
    trailing: str = ""

    @property
    def ms(self) -> int:
        """Milliseconds since acquisition start, modulo the 1000 s wrap."""
        return self.seconds * 1000 + self.millis


@dataclass(frozen=True, slots=True)
class Event:
    """``event <n> ris``: an edge on D7 at this point of the sample stream."""

    number: int
    edge: str
    line: bytes


@dataclass(frozen=True, slots=True)
class AcquisitionCompleted:
    """A line containing ``Acquisition completed``."""

    line: bytes


@dataclass(frozen=True, slots=True)
class Malformed:
    """A line that is broken: a TimeStamp the runner's regex rejects, or bytes outside
    printable ASCII."""

    line: bytes
    reason: str


@dataclass(frozen=True, slots=True)
class Unknown:
    """Any other message line."""

    line: bytes


LpmEvent = (
    Ack
    | Error
    | ErrorDetail
    | Samples
    | TimeStamp
    | Event
    | AcquisitionCompleted
    | Malformed
    | Unknown
)
#: Events of the acquisition stream (never part of a command reply).
DATA_EVENTS = (Samples, TimeStamp, Event)


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


def classify_line(line: bytes, command: str | None = None) -> LpmEvent:
    """Classify one framed line (LF removed, CR/NUL dropped); never fails.

    ``command`` is the outstanding command, used to split an ack's echo from its value.
    """
    # Stream lines are parsed unstripped, as the runner does: trailing blanks are junk (NaN).
    s = _strip_prompt(text(line))
    if s.startswith("TimeStamp"):
        if m := _TIMESTAMP_RE.match(s):
            return TimeStamp(
                int(m.group(2)), int(m.group(3)), int(m.group(4)), line, m.group(1), s[m.end() :]
            )
        return Malformed(line, "TimeStamp line does not match the runner's pattern")
    if (parsed := parse_samples(s)) is not None:
        return Samples(parsed[0], line, junk=parsed[1])
    if m := _WIDE_SAMPLE_RE.fullmatch(s):
        return Samples((_sample_value(m.group(1), m.group(2)),), line, wide=True)
    if m := _EVENT_RE.match(s):
        return Event(int(m.group(1)), m.group(2), line)
    if not is_clean(line):
        return Malformed(line, "bytes outside printable ASCII")
    s = s.strip()
    if s == "ack" or s.startswith("ack "):
        rest = s[4:]
        split = _split_echo(rest, command)
        return Ack(*split, line) if split else Ack(rest, None, line)
    if s == "error" or s.startswith("error "):
        rest = s[6:]
        split = _split_echo(rest, command)
        return Error(split[0] if split else rest, line)
    if s.startswith("Error detail"):
        return ErrorDetail(s[len("Error detail") :].lstrip(":").strip(), line)
    if ACQUISITION_COMPLETED in s:
        return AcquisitionCompleted(line)
    return Unknown(line)


# --------------------------------------------------------------------------------------------
# Host side: command state machine
# --------------------------------------------------------------------------------------------


class LpmState(Enum):
    """Where :class:`Lpm01aHost` is in a command exchange."""

    IDLE = "idle"
    AWAIT_ACK = "await_ack"
    AWAIT_COMPLETED = "await_completed"  # `stop` acked, waiting for Acquisition completed
    AWAIT_DETAIL = "await_detail"  # `error` seen, an Error detail line may follow


@dataclass(frozen=True, slots=True)
class LpmReply:
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
    events: tuple[LpmEvent, ...] = ()
    stray: tuple[LpmEvent, ...] = ()


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
        self._state = LpmState.IDLE
        self._command: str | None = None
        self._events: list[LpmEvent] = []
        self._stray: list[LpmEvent] = []
        self._value: str | None = None
        self._completed_seen = False
        self._replies: list[LpmReply] = []

    @property
    def state(self) -> LpmState:
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
        if self._state is LpmState.AWAIT_DETAIL:
            self.flush()
        if self._state is not LpmState.IDLE:
            raise LocalProtocolError(f"a reply to {self._command!r} is still outstanding")
        data = encode_command(command)
        self._begin(command)
        return data

    def feed(self, data: bytes) -> list[LpmEvent]:
        """Add received bytes; return the events of every line they complete."""
        events: list[LpmEvent] = []
        for line in self._framer.feed(data):
            event = classify_line(line, self._command)
            events.append(event)
            if not isinstance(event, DATA_EVENTS):
                self._advance(event)
        return events

    def flush(self) -> None:
        """Give up waiting for an ``Error detail`` line (the caller's idle timeout)."""
        if self._state is LpmState.AWAIT_DETAIL:
            self._complete(ok=False)

    def take_replies(self) -> list[LpmReply]:
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
        self._state = LpmState.IDLE if command is None else LpmState.AWAIT_ACK
        self._events = []
        self._stray = []
        self._value = None
        self._completed_seen = False

    def _complete(self, ok: bool, detail: str | None = None) -> None:
        assert self._command is not None
        self._replies.append(
            LpmReply(
                self._command, ok, self._value, detail, tuple(self._events), tuple(self._stray)
            )
        )
        self._begin(None)

    def _advance(self, event: LpmEvent) -> None:
        state = self._state
        if state is LpmState.IDLE:
            return
        if state is LpmState.AWAIT_DETAIL:
            if isinstance(event, ErrorDetail):
                self._events.append(event)
                self._complete(ok=False, detail=event.text)
            else:
                self._complete(ok=False)  # no detail line: this one is unsolicited
            return
        mine = getattr(event, "command", None) == self._command
        if state is LpmState.AWAIT_ACK:
            if isinstance(event, Ack) and mine:
                self._events.append(event)
                self._value = event.value
                if self._command == "stop" and not self._completed_seen:
                    self._state = LpmState.AWAIT_COMPLETED
                else:
                    self._complete(ok=True)
                return
            if isinstance(event, Error) and mine:
                self._events.append(event)
                if self._expect_detail:
                    self._state = LpmState.AWAIT_DETAIL
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
        # LpmState.AWAIT_COMPLETED
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

    def add(self, event: LpmEvent) -> None:
        """Record one event; anything but stream data is ignored."""
        if isinstance(event, Samples):
            self._samples.extend(event.values)
        elif isinstance(event, TimeStamp):
            self._timestamps.append((event.ms, len(self._samples)))
        elif isinstance(event, AcquisitionCompleted):
            # The next acquisition numbers its events and its samples from 0 again.
            self._last_event = None
            self._first_sample = -len(self._samples)
        elif isinstance(event, Event):
            self._events.append((event.number, len(self._samples)))
            expected = None if self._last_event is None else self._last_event + 1
            self._last_event = event.number
            if expected is not None and event.number != expected:
                raise RemoteProtocolError(
                    f"event numbers not consecutive: got {event.number}, expected {expected}"
                )

    def extend(self, events: Iterable[LpmEvent]) -> None:
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


# --------------------------------------------------------------------------------------------
# Device side: stream formatting
# --------------------------------------------------------------------------------------------


def format_sample(joules: float, digits: int = 4) -> bytes:
    """One ascii_dec sample line: ``DDDD±EE\\r\\n`` with value = mantissa × 10^±EE.

    The mantissa is the value's first ``digits`` significant digits, correctly rounded from
    the binary float (ties to even, Python's ``e`` formatting). Zero and values too small for
    a two-digit exponent give ``0000+00``. ``digits=5`` produces the wide variant some dumps
    show. Raises ValueError for negative, NaN, infinite or too-large values.
    """
    if not math.isfinite(joules) or joules < 0:
        raise ValueError(f"cannot format sample {joules!r}")
    if digits not in (4, 5):
        raise ValueError(f"mantissa digits must be 4 or 5, got {digits}")
    zero = f"{'0' * digits}+00\r\n".encode()
    if joules == 0:
        return zero
    mant, exp = f"{joules:.{digits - 1}e}".split("e")
    exponent = int(exp) - (digits - 1)
    if exponent < -99:
        return zero
    if exponent > 99:
        raise ValueError(f"sample {joules!r} needs an exponent beyond ±99")
    return f"{mant.replace('.', '')}{exponent:+03d}\r\n".encode()


def format_timestamp(ms_since_start: int, buff_percent: int) -> bytes:
    """``TimeStamp: SSSs MMMms, buff BB%\\r\\n``; seconds wrap at 1000 (3-digit field)."""
    if ms_since_start < 0:
        raise ValueError(f"negative time {ms_since_start}")
    if not 0 <= buff_percent <= 99:
        raise ValueError(f"buff must be 0..99, got {buff_percent}")
    seconds = (ms_since_start // 1000) % 1000
    millis = ms_since_start % 1000
    return f"TimeStamp: {seconds:03d}s {millis:03d}ms, buff {buff_percent:02d}%\r\n".encode()


def format_event(n: int, edge: str = "ris") -> bytes:
    """``event <n> ris\\r\\n`` (the runner only recognises ``ris``)."""
    return f"event {n} {edge}\r\n".encode()


# --------------------------------------------------------------------------------------------
# Device side: firmware
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Write:
    """Bytes the PowerShield sends to the host."""

    data: bytes


@dataclass(frozen=True, slots=True)
class PowerSwitch:
    """Connect (True) or disconnect (False) the target's supply."""

    on: bool


@dataclass(frozen=True, slots=True)
class TargetReset:
    """Cut the target's supply for ``seconds``, then restore it."""

    seconds: float


@dataclass(frozen=True, slots=True)
class StartAcquisition:
    """Begin streaming at ``freq_hz`` samples per second."""

    freq_hz: int


@dataclass(frozen=True, slots=True)
class StopAcquisition:
    """Stop streaming; the simulator then writes :data:`ACQUISITION_COMPLETED_LINE`."""


@dataclass(frozen=True, slots=True)
class Reset:
    """``psrst``: hardware reset, the USB device re-enumerates."""


Lpm01aAction = Write | PowerSwitch | TargetReset | StartAcquisition | StopAcquisition | Reset
# What a command handler returns: the ack's value (or None) and the actions after the ack.
_Result = tuple[str | None, list[Lpm01aAction]]

_NUMBER_RE = re.compile(r"(\d+)(?:([numk])|([+-])(\d{1,2}))?")
_SUFFIX = {"n": Decimal("1e-9"), "u": Decimal("1e-6"), "m": Decimal("1e-3"), "k": Decimal(1000)}
FREQUENCIES_HZ = (
    100_000,
    50_000,
    20_000,
    10_000,
    5_000,
    2_000,
    1_000,
    500,
    200,
    100,
    50,
    20,
    10,
    5,
    2,
    1,
)
#: Commands that work without ``htc`` (our choice: identification and diagnostics).
STANDALONE_COMMANDS = frozenset(
    {"htc", "hrc", "help", "echo", "powershield", "version", "status", "range", "psrst"}
)
#: Commands refused while an acquisition runs (they change the measurement set-up).
_CONFIG_COMMANDS = frozenset(
    {
        "volt",
        "freq",
        "acqtime",
        "acqmode",
        "funcmode",
        "output",
        "format",
        "trigsrc",
        "trigdelay",
        "currthres",
        "eventsrc",
        "calib",
        "autotest",
        "start",
    }
)


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


class _Reject(Exception):
    """Internal: the command is answered with ``error`` and this detail."""


def _number_in(arg: str, low: str, high: str, *, zero_ok: bool = False) -> Decimal:
    value = parse_number(arg)
    if value is None:
        raise _Reject(f"invalid number '{arg}'")
    if zero_ok and value == 0:
        return value
    if not Decimal(low) <= value <= Decimal(high):
        raise _Reject(f"value '{arg}' out of range [{low}; {high}]")
    return value


def _choice(arg: str, options: Iterable[str]) -> str:
    options = tuple(options)
    if arg not in options:
        raise _Reject(f"argument '{arg}' not among {{{', '.join(options)}}}")
    return arg


def _nargs(args: list[str], low: int, high: int | None = None) -> None:
    high = low if high is None else high
    if not low <= len(args) <= high:
        raise _Reject("wrong number of arguments")


class Lpm01aFirmware:
    """The PowerShield command shell, sans-IO, for the simulator.

    Commands are framed on LF (CR and NUL dropped) and answered ``PowerShield > ack
    <command as sent>[ <value>]\\r\\n`` or ``PowerShield > error <command as sent>\\r\\n`` plus,
    when ``error_detail`` is on, ``PowerShield > Error detail: <reason>\\r\\n``.

    Choices on unverified points: without ``htc`` only :data:`STANDALONE_COMMANDS` work;
    set-up commands are refused while an acquisition runs; ``stop`` without a running
    acquisition is an error; ``psrst`` is acked before :class:`Reset`; empty lines get no
    reply; ``old_firmware`` rejects ``pwr off`` and ``eventsrc``; value layouts of
    ``version``, ``powershield``, ``range``, ``status`` and ``temp`` are placeholders.
    """

    def __init__(
        self,
        *,
        error_detail: bool = True,
        old_firmware: bool = False,
        version: str = "1.0.6",
        uid: str = "0123456789ABCDEF01234567",
        temperature_c: float = 28.0,
    ) -> None:
        self.error_detail = error_detail
        self.old_firmware = old_firmware
        self.version = version
        self.uid = uid
        self.temperature_c = temperature_c
        self.host_control = False
        self.powered = False
        self.pwr_mode = "auto"
        self.pwrend = "on"
        self.voltage_mv = 3300
        self.freq_hz = 100
        self.acqtime_s: Decimal | None = Decimal(10)  # None: infinite
        self.output = "current"
        self.format = "ascii_dec"
        self.trigsrc = "sw"
        self.trigdelay_s = Decimal("0.001")
        self.eventsrc: tuple[str, str] | None = None
        self.running = False
        self.lcd = ["", ""]
        self._framer = LineFramer()
        self._halted = False

    def feed(self, data: bytes) -> list[Lpm01aAction]:
        """Add bytes from the host; return the actions of every command they complete."""
        actions: list[Lpm01aAction] = []
        for line in self._framer.feed(data):
            if self._halted:
                break
            if line:
                actions += self._execute(text(line))
        return actions

    def acquisition_finished(self) -> list[Lpm01aAction]:
        """A finite ``acqtime`` ran out: the simulator stops and reports completion."""
        if not self.running:
            return []
        self.running = False
        return [StopAcquisition(), *self._after_acquisition()]

    # -- internals ---------------------------------------------------------------------------

    def _execute(self, command: str) -> list[Lpm01aAction]:
        words = command.split(" ")
        name, args = words[0], words[1:]
        handler = getattr(self, f"_cmd_{name}", None)
        try:
            if handler is None:
                raise _Reject("unknown command")
            if not self.host_control and name not in STANDALONE_COMMANDS:
                raise _Reject("host control required (send htc first)")
            # Reading the voltage is harmless mid-acquisition; changing the set-up is not.
            if self.running and name in _CONFIG_COMMANDS and args != ["get"]:
                raise _Reject("acquisition in progress")
            value, actions = handler(command, args)
        except _Reject as exc:
            return [Write(self._error(command, str(exc)))]
        ack = f"{PROMPT}ack {command}" + (f" {value}" if value is not None else "") + "\r\n"
        return [Write(ack.encode("latin-1")), *actions]

    def _error(self, command: str, reason: str) -> bytes:
        out = f"{PROMPT}error {command}\r\n"
        if self.error_detail:
            out += f"{PROMPT}Error detail: {reason}\r\n"
        return out.encode("latin-1")

    def _after_acquisition(self) -> list[Lpm01aAction]:
        if self.pwr_mode == "auto" and self.pwrend == "off" and self.powered:
            self.powered = False
            return [PowerSwitch(False)]
        return []

    def _cmd_help(self, command: str, args: list[str]) -> _Result:
        return None, []

    def _cmd_echo(self, command: str, args: list[str]) -> _Result:
        _nargs(args, 1, 10_000)
        return None, []

    def _cmd_powershield(self, command: str, args: list[str]) -> _Result:
        _nargs(args, 0)
        return f"PowerShield present {self.uid}", []

    def _cmd_version(self, command: str, args: list[str]) -> _Result:
        _nargs(args, 0)
        return self.version, []

    def _cmd_range(self, command: str, args: list[str]) -> _Result:
        _nargs(args, 0)
        return "2n 200m", []

    def _cmd_status(self, command: str, args: list[str]) -> _Result:
        _nargs(args, 0)
        return "ok", []

    def _cmd_htc(self, command: str, args: list[str]) -> _Result:
        _nargs(args, 0)
        self.host_control = True
        return None, []

    def _cmd_hrc(self, command: str, args: list[str]) -> _Result:
        _nargs(args, 0)
        self.host_control = False
        return None, []

    def _cmd_psrst(self, command: str, args: list[str]) -> _Result:
        _nargs(args, 0)
        self._halted = True
        return None, [Reset()]

    def _cmd_lcd(self, command: str, args: list[str]) -> _Result:
        m = re.fullmatch(r'lcd ([12]) "([^"]*)"', command)
        if m is None:
            raise _Reject('expected lcd <1|2> "<text>"')
        if len(m.group(2)) > 16:
            raise _Reject("LCD text longer than 16 characters")
        self.lcd[int(m.group(1)) - 1] = m.group(2)
        return None, []

    def _cmd_volt(self, command: str, args: list[str]) -> _Result:
        _nargs(args, 1)
        if args[0] == "get":
            return f"{self.voltage_mv:04d}-03", []
        value = _number_in(args[0], "1.8", "3.3")
        self.voltage_mv = int(value * 1000)
        return None, []

    def _cmd_freq(self, command: str, args: list[str]) -> _Result:
        _nargs(args, 1)
        value = parse_number(args[0])
        if value is None or value not in FREQUENCIES_HZ:
            raise _Reject(f"frequency '{args[0]}' not supported")
        self.freq_hz = int(value)
        return None, []

    def _cmd_acqtime(self, command: str, args: list[str]) -> _Result:
        _nargs(args, 1)
        if args[0] == "inf":
            self.acqtime_s = None
        else:
            value = _number_in(args[0], "100e-6", "100", zero_ok=True)
            self.acqtime_s = None if value == 0 else value
        return None, []

    def _cmd_acqmode(self, command: str, args: list[str]) -> _Result:
        _nargs(args, 1)
        _choice(args[0], ("dyn", "stat"))
        return None, []

    def _cmd_funcmode(self, command: str, args: list[str]) -> _Result:
        _nargs(args, 1)
        _choice(args[0], ("optim", "high"))
        return None, []

    def _cmd_output(self, command: str, args: list[str]) -> _Result:
        _nargs(args, 1)
        self.output = _choice(args[0], ("current", "energy"))
        return None, []

    def _cmd_format(self, command: str, args: list[str]) -> _Result:
        _nargs(args, 1)
        self.format = _choice(args[0], ("ascii_dec", "bin_hexa"))
        return None, []

    def _cmd_trigsrc(self, command: str, args: list[str]) -> _Result:
        _nargs(args, 1)
        self.trigsrc = _choice(args[0], ("sw", "d7"))
        return None, []

    def _cmd_trigdelay(self, command: str, args: list[str]) -> _Result:
        _nargs(args, 1)
        self.trigdelay_s = _number_in(args[0], "0", "30")
        return None, []

    def _cmd_currthres(self, command: str, args: list[str]) -> _Result:
        _nargs(args, 1)
        _number_in(args[0], "100e-9", "50e-3", zero_ok=True)
        return None, []

    def _cmd_eventsrc(self, command: str, args: list[str]) -> _Result:
        if self.old_firmware:
            raise _Reject("unknown command")
        _nargs(args, 2)
        _choice(args[0], ("d7",))
        self.eventsrc = (args[0], _choice(args[1], ("fal", "ris")))
        return None, []

    def _cmd_pwr(self, command: str, args: list[str]) -> _Result:
        _nargs(args, 1, 2)
        mode = _choice(args[0], ("auto", "on", "off", "get"))
        if len(args) == 2:
            _choice(args[1], ("nostatus", "status"))
        if mode == "get":
            return ("on" if self.powered else "off"), []
        if mode == "off" and self.old_firmware:
            raise _Reject("pwr off not supported by this firmware")
        self.pwr_mode = mode
        if mode == "auto":
            return None, []
        self.powered = mode == "on"
        return None, [PowerSwitch(self.powered)]

    def _cmd_pwrend(self, command: str, args: list[str]) -> _Result:
        _nargs(args, 1)
        self.pwrend = _choice(args[0], ("on", "off"))
        return None, []

    def _cmd_targrst(self, command: str, args: list[str]) -> _Result:
        _nargs(args, 1)
        value = _number_in(args[0], "10e-3", "1", zero_ok=True)
        if value == 0:
            # '0' leaves the target powered down.
            self.powered = False
            return None, [PowerSwitch(False)]
        self.powered = True
        return None, [TargetReset(float(value))]

    def _cmd_temp(self, command: str, args: list[str]) -> _Result:
        _nargs(args, 0, 1)
        unit = _choice(args[0], ("degc", "degf")) if args else "degc"
        value = self.temperature_c if unit == "degc" else self.temperature_c * 9 / 5 + 32
        return f"{value:.1f}", []

    def _cmd_autotest(self, command: str, args: list[str]) -> _Result:
        _nargs(args, 0, 2)
        if args:
            _choice(args[0], ("start", "status"))
        if len(args) == 2:
            _choice(args[1], ("stat_all", "stat_min"))
        return None, []

    def _cmd_calib(self, command: str, args: list[str]) -> _Result:
        _nargs(args, 0)
        return None, []

    def _cmd_start(self, command: str, args: list[str]) -> _Result:
        _nargs(args, 0)
        actions: list[Lpm01aAction] = []
        if self.pwr_mode == "auto" and not self.powered:
            self.powered = True
            actions.append(PowerSwitch(True))
        self.running = True
        actions.append(StartAcquisition(self.freq_hz))
        return None, actions

    def _cmd_stop(self, command: str, args: list[str]) -> _Result:
        _nargs(args, 0)
        if not self.running:
            raise _Reject("no acquisition in progress")
        self.running = False
        return None, [StopAcquisition(), *self._after_acquisition()]
