"""Sans-IO protocol of the STM32H573I-DK "enhanced interface" board (PROTOCOLS.md §3.1–3.3).

Two halves live here:

* the **host side** (:func:`encode_command`, :func:`encode_passthrough`, :func:`classify_line`,
  :class:`InterfaceHost`): what the agent writes and how it reads the board's replies;
* the **device side** (:class:`InterfaceFirmware`, :class:`PassthroughForwarder`,
  :func:`effective_baud`): the board's own behaviour, byte for byte, for the simulator.

Nothing in this module does I/O or looks at a clock: callers feed bytes in and get typed,
immutable events or actions back.

Remote-problem policy (host side): a reply that cannot belong to the command we sent (a
passthrough ack naming another command, passthrough output during a board command, a line
with bytes outside printable ASCII, a malformed two-line ack) raises
:class:`InterfaceDesyncError`, a :class:`~farm.protocol.errors.RemoteProtocolError`. The host
then refuses to send until :meth:`InterfaceHost.reset` is called after a resync, because every
later reply would be attributed to the wrong command. The *bare-LF wedge* (§3.2 point 3) is not
an error: the reply completes with ``wedged=True`` and the host refuses new commands until the
board's task finishes (an unsolicited ``[dut]: m-ready``) or the caller resets.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum

from farm.protocol.dut import MAX_COMMAND_CHARS
from farm.protocol.errors import LocalProtocolError, RemoteProtocolError
from farm.protocol.lines import LineFramer, is_clean, text

#: Every host command ends with this byte; nothing else terminates a command.
TERMINATOR = b"%"
BOARD_NAME = "tinyML Enhanced Interface Board"
READY = "m-ready"
READY_LINE = b"m-ready\r\n"
DUT_PREFIX = b"[dut]: "
PASSTHROUGH_PREFIX = "m-dut-passthrough("
#: The DUT stores at most this many command characters and silently truncates the rest (§2.2).
DUT_CMD_MAX = MAX_COMMAND_CHARS
#: The sww DUT variant's larger command buffer (§2.8).
SWW_DUT_CMD_MAX = 1028
DEFAULT_DUT_BAUD = 9600
MAX_DUT_BAUD = 2_000_000
HOST_BAUD = 115200
#: Firmware command table, in the order the firmware tries the entries (first prefix wins).
COMMANDS = (
    "dut",
    "name",
    "ls",
    "play",
    "setbaud",
    "checkbaud",
    "record_detections",
    "print_detections",
    "print_dutycycle",
)
PLAY_ERROR = "Error playing file. Check that the file exists and is a 2-channel wav file."
#: Detection-log and duty-cycle-log capacities, and the detection debounce (§3.1).
MAX_DETECTIONS = 10_000
MAX_DUTY_EDGES = 100
DETECTION_DEBOUNCE_MS = 10
#: TIM2 ticks (10 µs) per millisecond.
TICKS_PER_MS = 100

_BAUD_SET_RE = re.compile(r"set baud to: (\d+)")
_BAUD_IS_RE = re.compile(r"baud is: (\d+)")


# --------------------------------------------------------------------------------------------
# Command matching (shared by both sides, so the host can refuse what the board ignores)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CommandMatch:
    """How the firmware's table lookup treats one command buffer.

    ``name`` is the matched table entry, or None when no entry is a prefix (the board then
    replies ``m-ready`` only). ``args`` is None for an exact match. ``silent`` means the buffer
    matched an entry's prefix without a valid separator: the board sends nothing at all.
    """

    name: str | None
    args: str | None = None
    silent: bool = False


def match_command(command: str) -> CommandMatch:
    """Apply the firmware's matching rule (§3.1) to a command buffer without its ``%``."""
    for entry in COMMANDS:
        if not command.startswith(entry):
            continue
        rest = command[len(entry) :]
        if not rest:
            return CommandMatch(entry)
        if rest[0] == " " and len(rest) > 1:
            return CommandMatch(entry, rest[1:])
        # The firmware stops at the first prefix hit even when the separator is wrong.
        return CommandMatch(entry, silent=True)
    return CommandMatch(None)


def effective_baud(stored: int) -> int:
    """DUT baud the board uses after boot for a value read from flash.

    Erased flash (0xFFFFFFFF), zero and anything above 2 000 000 fall back to 9600.
    """
    stored &= 0xFFFFFFFF
    if stored in (0, 0xFFFFFFFF) or stored > MAX_DUT_BAUD:
        return DEFAULT_DUT_BAUD
    return stored


# --------------------------------------------------------------------------------------------
# Host side: encoding
# --------------------------------------------------------------------------------------------


def _check_printable(command: str, what: str) -> None:
    for i, ch in enumerate(command):
        if ch == "%":
            raise LocalProtocolError(
                f"{what} {command!r} contains '%' at index {i}: it would end the command early"
            )
        if not (0x20 <= ord(ch) < 0x7F):
            raise LocalProtocolError(
                f"{what} {command!r} contains non-printable character {ch!r} at index {i}"
            )


def encode_command(command: str) -> bytes:
    """Bytes for a board command: ``<command>%``.

    Raises LocalProtocolError for a ``%`` or a character outside printable ASCII, and for a
    command the firmware silently ignores (``names``, ``name ``, ``dut ``): the board would
    never answer it and the host would wait forever.
    """
    _check_printable(command, "command")
    if match_command(command).silent:
        raise LocalProtocolError(
            f"the board sends no reply at all to {command!r} (a table "
            "entry's prefix without a space and an argument)"
        )
    return command.encode("ascii") + TERMINATOR


def encode_passthrough(dut_command: str, max_len: int = DUT_CMD_MAX) -> bytes:
    """Bytes for a DUT command relayed by the board: ``dut <dut_command>%``.

    The DUT silently truncates commands longer than ``max_len`` (80 on the reference
    firmware), so a longer one is refused here rather than corrupted there.
    """
    if not dut_command:
        raise LocalProtocolError("empty DUT command: 'dut %' gets no reply from the board")
    if len(dut_command) > max_len:
        raise LocalProtocolError(
            f"DUT command is {len(dut_command)} characters; the DUT "
            f"accepts at most {max_len} and would truncate it"
        )
    return encode_command(f"dut {dut_command}")


# --------------------------------------------------------------------------------------------
# Host side: events
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BoardName:
    """The board's ``name`` line."""

    text: str
    line: bytes


@dataclass(frozen=True, slots=True)
class PassthroughAck:
    """``m-dut-passthrough(<command>)``: the board accepted a DUT command."""

    command: str
    line: bytes


@dataclass(frozen=True, slots=True)
class Ready:
    """A line ending in ``m-ready``; ``prefix`` holds text before it (print_dutycycle quirk)."""

    prefix: str
    line: bytes


@dataclass(frozen=True, slots=True)
class DutLine:
    """One DUT line relayed by the board.

    ``payload`` is the DUT's line with the ``[dut]: `` prefix removed; ``line`` is the raw
    line as received. ``merged`` marks the tail of a DUT line that ended in a bare LF: the
    board forwarded it inside the previous line, so it arrives without a prefix.
    """

    payload: bytes
    line: bytes
    merged: bool = False


@dataclass(frozen=True, slots=True)
class BaudSet:
    """``set baud to: N``: the board stored a new DUT baud and is about to reset."""

    baud: int
    line: bytes


@dataclass(frozen=True, slots=True)
class BaudIs:
    """``baud is: N``: the current DUT-side baud."""

    baud: int
    line: bytes


@dataclass(frozen=True, slots=True)
class Unknown:
    """Any other line (``ls`` file names, detection lists, garbage)."""

    line: bytes


InterfaceEvent = BoardName | PassthroughAck | Ready | DutLine | BaudSet | BaudIs | Unknown


def classify_line(line: bytes) -> InterfaceEvent:
    """Classify one framed line (no LF, CR dropped) from the board; never fails."""
    if line.startswith(DUT_PREFIX):
        return DutLine(line[len(DUT_PREFIX) :], line)
    s = text(line)
    if s.startswith(PASSTHROUGH_PREFIX) and s.endswith(")"):
        return PassthroughAck(s[len(PASSTHROUGH_PREFIX) : -1], line)
    if s.endswith(READY):
        return Ready(s[: -len(READY)], line)
    if s == BOARD_NAME:
        return BoardName(s, line)
    if m := _BAUD_SET_RE.fullmatch(s):
        return BaudSet(int(m.group(1)), line)
    if m := _BAUD_IS_RE.fullmatch(s):
        return BaudIs(int(m.group(1)), line)
    return Unknown(line)


# --------------------------------------------------------------------------------------------
# Host side: connection state machine
# --------------------------------------------------------------------------------------------


class HostState(Enum):
    """Where :class:`InterfaceHost` is in an exchange."""

    IDLE = "idle"
    AWAIT_READY = "await_ready"  # board command sent, collecting until a Ready line
    AWAIT_ACK = "await_ack"  # passthrough sent, expecting m-dut-passthrough(<cmd>)
    AWAIT_ACK_READY = "await_ack_ready"  # ack seen, expecting the ack's m-ready
    DUT = "dut"  # forwarding DUT lines until [dut]: m-ready
    WEDGED = "wedged"  # bare-LF merge: board waits for an exact DUT m-ready
    ERROR = "error"  # desynchronised; reset() required


@dataclass(frozen=True, slots=True)
class InterfaceReply:
    """One completed exchange.

    ``command`` is the board command as sent (without ``%``); ``dut_command`` is set for a
    passthrough and ``dut_lines`` then holds the DUT's lines (prefix removed) in order,
    including the final ``m-ready``. ``wedged`` reports that the reply ended on a merged
    ``m-ready`` (§3.2 point 3): the board itself is still waiting for the DUT.
    """

    command: str
    events: tuple[InterfaceEvent, ...]
    dut_command: str | None = None
    dut_lines: tuple[bytes, ...] = ()
    wedged: bool = False

    @property
    def passthrough(self) -> bool:
        """True for a ``dut <cmd>`` exchange."""
        return self.dut_command is not None


class InterfaceDesyncError(RemoteProtocolError):
    """The board's output cannot belong to the outstanding command.

    ``line`` is the offending line and ``events`` every event decoded from the same
    :meth:`InterfaceHost.feed` call, so that nothing received is lost for logging.
    """

    def __init__(self, message: str, line: bytes, events: Iterable[InterfaceEvent]) -> None:
        super().__init__(message)
        self.line = line
        self.events: tuple[InterfaceEvent, ...] = tuple(events)


class InterfaceHost:
    """Host end of the board's serial link: one outstanding command at a time.

    Call :meth:`send` (or :meth:`send_passthrough`), write the returned bytes, then
    :meth:`feed` every received chunk; completed exchanges are collected with
    :meth:`take_replies`. Timeouts belong to the caller: on one, resync the link and call
    :meth:`reset`.
    """

    def __init__(self, dut_cmd_max: int = DUT_CMD_MAX) -> None:
        self._framer = LineFramer()
        self._dut_cmd_max = dut_cmd_max
        self._state = HostState.IDLE
        self._command: str | None = None
        self._dut_command: str | None = None
        self._events: list[InterfaceEvent] = []
        self._dut_lines: list[bytes] = []
        self._replies: list[InterfaceReply] = []

    @property
    def state(self) -> HostState:
        """Current protocol state."""
        return self._state

    @property
    def outstanding(self) -> str | None:
        """The board command awaiting its reply, if any."""
        return self._command

    @property
    def wedged(self) -> bool:
        """True while the board is stuck in a passthrough after a merged ``m-ready``."""
        return self._state is HostState.WEDGED

    def send(self, command: str) -> bytes:
        """Start a board command; return the bytes to write.

        A ``dut <cmd>`` command is a passthrough (the reply shape is the firmware's choice,
        not the method's). Raises LocalProtocolError while a reply is outstanding, while the
        board is wedged or after a desync.
        """
        match = match_command(command)
        if match.name == "dut":
            if match.args is None:
                raise LocalProtocolError("'dut' needs a DUT command: use send_passthrough()")
            return self.send_passthrough(match.args)
        self._check_can_send()
        data = encode_command(command)
        self._begin(command, None, HostState.AWAIT_READY)
        return data

    def send_passthrough(self, dut_command: str) -> bytes:
        """Start a DUT command relayed by the board; return the bytes to write."""
        self._check_can_send()
        data = encode_passthrough(dut_command, self._dut_cmd_max)
        self._begin(f"dut {dut_command}", dut_command, HostState.AWAIT_ACK)
        return data

    def feed(self, data: bytes) -> list[InterfaceEvent]:
        """Add received bytes; return the events of every line they complete.

        Raises InterfaceDesyncError (a RemoteProtocolError) when a line cannot belong to the
        outstanding command; the host is then in ERROR state until :meth:`reset`.
        """
        events: list[InterfaceEvent] = []
        error: tuple[str, bytes] | None = None
        for line in self._framer.feed(data):
            event = classify_line(line)
            if error is None:
                try:
                    event = self._advance(event, line)
                except _Desync as exc:
                    error = (str(exc), line)
                    self._enter_error()
            events.append(event)
        if error is not None:
            raise InterfaceDesyncError(error[0], error[1], events)
        return events

    def take_replies(self) -> list[InterfaceReply]:
        """Return the replies completed since the last call, oldest first."""
        replies, self._replies = self._replies, []
        return replies

    def reset(self) -> None:
        """Forget the partial line and any outstanding exchange (after a resync or timeout).

        Completed replies not yet taken are kept.
        """
        self._framer.reset()
        self._clear()
        self._state = HostState.IDLE

    # -- internals ---------------------------------------------------------------------------

    def _check_can_send(self) -> None:
        if self._state is HostState.IDLE:
            return
        if self._state is HostState.WEDGED:
            raise LocalProtocolError(
                "the board is wedged waiting for an exact DUT m-ready "
                "(bare-LF merge); reset the DUT, then call reset()"
            )
        if self._state is HostState.ERROR:
            raise LocalProtocolError("the link is desynchronised; resync and call reset()")
        raise LocalProtocolError(f"a reply to {self._command!r} is still outstanding")

    def _begin(self, command: str, dut_command: str | None, state: HostState) -> None:
        self._clear()
        self._command = command
        self._dut_command = dut_command
        self._state = state

    def _clear(self) -> None:
        self._command = None
        self._dut_command = None
        self._events = []
        self._dut_lines = []

    def _enter_error(self) -> None:
        self._clear()
        self._state = HostState.ERROR

    def _complete(self, wedged: bool = False) -> None:
        assert self._command is not None
        self._replies.append(
            InterfaceReply(
                command=self._command,
                events=tuple(self._events),
                dut_command=self._dut_command,
                dut_lines=tuple(self._dut_lines),
                wedged=wedged,
            )
        )
        self._clear()
        self._state = HostState.WEDGED if wedged else HostState.IDLE

    def _advance(self, event: InterfaceEvent, line: bytes) -> InterfaceEvent:
        """Feed one classified line to the state machine; return the event as reported
        (a bare line inside a DUT reply is re-classified as a merged DutLine)."""
        state = self._state
        if state in (HostState.IDLE, HostState.ERROR):
            # Unsolicited output: reported, not assembled. A late reply to an abandoned
            # command lands here; the caller decides whether to resync.
            return event
        if state is HostState.WEDGED:
            if isinstance(event, DutLine) and event.payload == READY.encode():
                self._state = HostState.IDLE  # the board's stuck task finally finished
            return event
        if not is_clean(line):
            raise _Desync(f"garbage from the board while awaiting {self._command!r}: {line!r}")
        if state is HostState.AWAIT_READY:
            if isinstance(event, PassthroughAck | DutLine):
                raise _Desync(
                    f"passthrough output {line!r} during board command "
                    f"{self._command!r}: stale reply"
                )
            self._events.append(event)
            if isinstance(event, Ready):
                self._complete()
            return event
        if state is HostState.AWAIT_ACK:
            if not isinstance(event, PassthroughAck):
                raise _Desync(f"expected m-dut-passthrough({self._dut_command}), got {line!r}")
            if event.command != self._dut_command:
                raise _Desync(
                    f"ack names {event.command!r} but {self._dut_command!r} was "
                    "sent: stale or desynchronised reply"
                )
            self._events.append(event)
            self._state = HostState.AWAIT_ACK_READY
            return event
        if state is HostState.AWAIT_ACK_READY:
            if not (isinstance(event, Ready) and event.prefix == ""):
                raise _Desync(f"expected the ack's m-ready, got {line!r}")
            self._events.append(event)
            self._state = HostState.DUT
            return event
        # HostState.DUT
        if not isinstance(event, DutLine):
            if not self._dut_lines:
                raise _Desync(f"expected a [dut]: line, got {line!r}")
            # Without the board's prefix this can only be the tail of a DUT line that ended
            # in a bare LF: the board forwarded both as one line.
            event = DutLine(line, line, merged=True)
        self._events.append(event)
        self._dut_lines.append(event.payload)
        if event.payload == READY.encode():
            # A merged m-ready satisfies the host but not the board, which still waits.
            self._complete(wedged=event.merged)
        return event


class _Desync(Exception):
    """Internal signal from _advance; feed turns it into InterfaceDesyncError."""


# --------------------------------------------------------------------------------------------
# Device side: firmware actions
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Write:
    """Bytes the board sends to the host."""

    data: bytes


@dataclass(frozen=True, slots=True)
class Passthrough:
    """Relay ``command``: write ``<command>%`` to the DUT, then forward its lines with a
    :class:`PassthroughForwarder` and call :meth:`InterfaceFirmware.passthrough_done`."""

    command: str


@dataclass(frozen=True, slots=True)
class PassthroughDone:
    """The forwarder relayed a line exactly equal to ``m-ready``: the task is finished."""


@dataclass(frozen=True, slots=True)
class SetBaud:
    """Persist ``stored`` (the raw 32-bit flash word) and reset the MCU; after the reset the
    DUT side runs at ``baud`` (the fallback rule already applied)."""

    baud: int
    stored: int


@dataclass(frozen=True, slots=True)
class Hang:
    """The CLI thread is stuck for good (no reply, later commands ignored) until a reset."""

    reason: str


@dataclass(frozen=True, slots=True)
class Play:
    """Play a wav file from the SD card (``None``: 180 KB from internal flash); the CLI thread
    blocks for its whole duration, so the simulator waits before the next action."""

    file: str | None


@dataclass(frozen=True, slots=True)
class ZeroTimer:
    """Zero TIM2, the board's 10 µs detection/duty-cycle clock."""


FirmwareAction = Write | Passthrough | PassthroughDone | SetBaud | Hang | Play | ZeroTimer


def _stoi(arg: str) -> int | None:
    """std::stoi: skip leading whitespace, optional sign, decimal digits, ignore the rest.
    None where stoi throws (no digits, or outside a 32-bit int)."""
    m = re.match(r"[ \t\n\v\f\r]*([+-]?\d+)", arg)
    if m is None:
        return None
    value = int(m.group(1))
    if not -(2**31) <= value < 2**31:
        return None
    return value


def _coalesce(actions: list[FirmwareAction]) -> list[FirmwareAction]:
    """Merge adjacent writes: the firmware prints them back to back."""
    out: list[FirmwareAction] = []
    for action in actions:
        if isinstance(action, Write) and out and isinstance(out[-1], Write):
            out[-1] = Write(out[-1].data + action.data)
        else:
            out.append(action)
    return out


class InterfaceFirmware:
    """The board's CLI, sans-IO: fed host bytes, returns what the board does.

    Host bytes are collected until ``%`` with no length limit (CR/LF stay in the command).
    While a passthrough runs the CLI thread waits, so further commands stay queued until
    :meth:`passthrough_done`. After :class:`SetBaud` (MCU reset) or :class:`Hang` the object
    ignores everything; the simulator builds a new one to model the reboot.

    Choices on unverified points: ``setbaud`` with no number (``std::stoi`` throwing) returns
    :class:`Hang` with no output; ``set baud to:`` prints the parsed signed integer; ``ls``
    lines end CRLF; ``play`` without a file prints nothing before ``m-ready``; without an SD
    card ``ls`` hangs and a passthrough hangs after its ack (the SD task never runs).
    """

    def __init__(
        self,
        *,
        stored_baud: int = DEFAULT_DUT_BAUD,
        sd_card: bool = True,
        files: Iterable[str] = (),
    ) -> None:
        self.stored_baud = stored_baud & 0xFFFFFFFF
        self.sd_card = sd_card
        #: Names ``ls`` lists, in order (directories written with a trailing ``/``).
        self.files: list[str] = list(files)
        #: Detection log in ms since the last ``record_detections``.
        self.detections: list[int] = []
        self.duty_starts: list[int] = []
        self.duty_stops: list[int] = []
        self._buf = bytearray()
        self._busy = False
        self._halted = False

    @property
    def dut_baud(self) -> int:
        """Baud of the DUT-side UART."""
        return effective_baud(self.stored_baud)

    @property
    def busy(self) -> bool:
        """True while a passthrough task is running (the CLI thread waits for it)."""
        return self._busy

    @property
    def halted(self) -> bool:
        """True after a reset or a hang: nothing more is processed."""
        return self._halted

    def feed(self, data: bytes) -> list[FirmwareAction]:
        """Add bytes from the host; return the actions of every command they complete."""
        self._buf += data
        return self._run()

    def passthrough_done(self) -> list[FirmwareAction]:
        """The passthrough task finished; process commands queued meanwhile."""
        self._busy = False
        return self._run()

    def add_detection(self, ticks: int) -> bool:
        """WW_DETECTED falling edge at TIM2 ``ticks`` (10 µs); False if debounced or full."""
        ms = ticks // TICKS_PER_MS
        if len(self.detections) >= MAX_DETECTIONS:
            return False
        if self.detections and ms - self.detections[-1] < DETECTION_DEBOUNCE_MS:
            return False
        self.detections.append(ms)
        return True

    def add_duty_edge(self, rising: bool, ticks: int) -> bool:
        """DUT_DUTY_CYCLE edge at TIM2 ``ticks``; False once that log holds 100 entries."""
        log = self.duty_starts if rising else self.duty_stops
        if len(log) >= MAX_DUTY_EDGES:
            return False
        log.append(ticks)
        return True

    # -- internals ---------------------------------------------------------------------------

    def _run(self) -> list[FirmwareAction]:
        actions: list[FirmwareAction] = []
        while not (self._busy or self._halted):
            end = self._buf.find(TERMINATOR)
            if end < 0:
                break
            command = bytes(self._buf[:end]).decode("latin-1")
            del self._buf[: end + 1]
            actions += self._execute(command)
        return _coalesce(actions)

    def _execute(self, command: str) -> list[FirmwareAction]:
        match = match_command(command)
        if match.silent:
            return []
        if match.name is None:
            return [Write(READY_LINE)]
        handler = getattr(self, f"_cmd_{match.name}")
        result: list[FirmwareAction] = handler(match.args)
        return result

    def _cmd_dut(self, args: str | None) -> list[FirmwareAction]:
        if args is None:
            # Exact "dut": an empty passthrough. The board would still ack and queue it.
            args = ""
        ack = Write(f"{PASSTHROUGH_PREFIX}{args})\r\n".encode("latin-1") + READY_LINE)
        if not self.sd_card:
            self._halted = True
            return [ack, Hang("no SD card: the passthrough task never runs")]
        self._busy = True
        return [ack, Passthrough(args)]

    def _cmd_name(self, args: str | None) -> list[FirmwareAction]:
        return [Write(f"{BOARD_NAME}\r\n".encode() + READY_LINE)]

    def _cmd_ls(self, args: str | None) -> list[FirmwareAction]:
        if not self.sd_card:
            self._halted = True
            return [Hang("no SD card: ls runs on the SD task, which never runs")]
        listing = "".join(f"{name}\r\n" for name in self.files)
        return [Write(listing.encode("latin-1") + READY_LINE)]

    def _cmd_play(self, args: str | None) -> list[FirmwareAction]:
        if args is None:
            return [Play(None), Write(READY_LINE)]
        actions: list[FirmwareAction] = [Write(f"Attempting to play {args}\n".encode("latin-1"))]
        if self.sd_card and args in self.files:
            actions += [Play(args), Write(b"succeeded.\n")]
        else:
            actions.append(Write(f"{PLAY_ERROR}\n".encode()))
        actions.append(Write(READY_LINE))
        return actions

    def _cmd_setbaud(self, args: str | None) -> list[FirmwareAction]:
        value = _stoi(args or "")
        self._halted = True
        if value is None:
            return [Hang(f"setbaud {args!r}: std::stoi throws")]
        stored = value & 0xFFFFFFFF
        return [
            Write(f"set baud to: {value}\n".encode() + READY_LINE),
            SetBaud(effective_baud(stored), stored),
        ]

    def _cmd_checkbaud(self, args: str | None) -> list[FirmwareAction]:
        return [Write(f"baud is: {self.dut_baud}\n".encode() + READY_LINE)]

    def _cmd_record_detections(self, args: str | None) -> list[FirmwareAction]:
        self.detections.clear()
        self.duty_starts.clear()
        self.duty_stops.clear()
        return [ZeroTimer(), Write(b"Now recording detections\r\n" + READY_LINE)]

    def _cmd_print_detections(self, args: str | None) -> list[FirmwareAction]:
        body = "".join(f"{ms},\r\n" for ms in self.detections)
        return [Write(f"Detection Timestamps (ms)\r\n{body}".encode() + READY_LINE)]

    def _cmd_print_dutycycle(self, args: str | None) -> list[FirmwareAction]:
        def values(log: list[int]) -> str:
            return "".join(f"{v}, " + ("\r\n" if i % 8 == 7 else "") for i, v in enumerate(log))

        # No CRLF before m-ready: the stop list's last partial row runs into it.
        out = (
            f"Duty cycle start times (s)\r\n{values(self.duty_starts)}\r\n"
            f"Duty cycle stop times (s)\r\n{values(self.duty_stops)}{READY}\r\n"
        )
        return [Write(out.encode())]


# --------------------------------------------------------------------------------------------
# Device side: passthrough line forwarding
# --------------------------------------------------------------------------------------------


class PassthroughForwarder:
    """The board's SD-task loop relaying DUT output to the host (§3.2 point 2–4).

    DUT bytes accumulate whether or not a passthrough is active (the board's RX queue keeps
    them: the simulator models its 100-byte drop-on-full limit). While active, every
    CRLF-terminated line is forwarded as ``[dut]: <line>\\r\\n``; a bare LF does not end a
    line. The task stops after a line exactly equal to ``m-ready``; bytes after it stay
    queued and become the start of the next passthrough's reply (stale-line desync).
    """

    def __init__(self) -> None:
        self._buf = bytearray()
        self._active = False

    @property
    def active(self) -> bool:
        """True while a passthrough task is forwarding."""
        return self._active

    @property
    def pending(self) -> bytes:
        """DUT bytes received and not yet forwarded."""
        return bytes(self._buf)

    def start(self) -> list[Write | PassthroughDone]:
        """Begin forwarding for a new passthrough; stale queued lines go out first."""
        self._active = True
        return self._forward()

    def feed(self, data: bytes) -> list[Write | PassthroughDone]:
        """Add bytes from the DUT; return the host writes (and completion) they cause."""
        self._buf += data
        return self._forward() if self._active else []

    def clear(self) -> int:
        """Empty the queue and stop (an MCU reset); return how many bytes were dropped."""
        dropped = len(self._buf)
        self._buf.clear()
        self._active = False
        return dropped

    def _forward(self) -> list[Write | PassthroughDone]:
        out: list[Write | PassthroughDone] = []
        while self._active:
            end = self._buf.find(b"\r\n")
            if end < 0:
                break
            line = bytes(self._buf[:end])
            del self._buf[: end + 2]
            out.append(Write(DUT_PREFIX + line + b"\r\n"))
            if line == READY.encode():
                self._active = False
                out.append(PassthroughDone())
        return out
