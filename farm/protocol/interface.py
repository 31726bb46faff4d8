"""The STM32H573I-DK "enhanced interface" board's serial protocol, host side, sans-IO.

:func:`encode_command`, :func:`encode_passthrough`, :func:`classify_line` and
:class:`InterfaceHost`: what the agent writes and how it reads the board's replies. What the
board's own firmware shares with the host lives here too (the command table and its matching
rule :func:`match_command`, the baud fallback :func:`effective_baud`, the fixed strings), so
that the host can refuse what the board would ignore; the board's behaviour itself, for the
simulator, is :mod:`farm.protocol.interface_firmware`. The wire format is described in
docs/protocols.md.

Nothing in this module does I/O or looks at a clock: callers feed bytes in and get typed,
immutable events back.

Remote-problem policy: a reply that cannot belong to the command we sent (a passthrough ack
naming another command, passthrough output during a board command, a line with bytes outside
printable ASCII, a malformed two-line ack) raises :class:`InterfaceDesyncError`, a
:class:`~farm.protocol.errors.RemoteProtocolError`. The host then refuses to send until
:meth:`InterfaceHost.reset` is called after a resync, because every later reply would be
attributed to the wrong command. The *bare-LF wedge* is not an error: when a DUT line ends in a
bare LF the board merges it with the next one, so it may never see the DUT's exact ``m-ready``;
the reply then completes with ``wedged=True`` and the host refuses new commands until the
board's task finishes (an unsolicited ``[dut]: m-ready``) or the caller resets.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum

from farm.protocol.dut import MAX_COMMAND_CHARS
from farm.protocol.errors import LocalProtocolError, RemoteProtocolError
from farm.protocol.events import Event
from farm.protocol.lines import LineFramer, is_clean, text

#: Every host command ends with this byte; nothing else terminates a command.
TERMINATOR = b"%"
BOARD_NAME = "tinyML Enhanced Interface Board"
READY = "m-ready"
READY_LINE = b"m-ready\r\n"
DUT_PREFIX = b"[dut]: "
PASSTHROUGH_PREFIX = "m-dut-passthrough("
#: The DUT stores at most this many command characters and silently truncates the rest.
DUT_CMD_MAX = MAX_COMMAND_CHARS
#: The sww DUT variant's larger command buffer.
SWW_DUT_CMD_MAX = 1028
DEFAULT_DUT_BAUD = 9600
MAX_DUT_BAUD = 2_000_000
HOST_BAUD = 115200
#: How long the board stays deaf after ``setbaud`` (its MCU reset). The official runner sleeps
#: 2 s before talking to it again, the only figure known to work on hardware.
RESET_S = 2.0
#: Upper bound of a board command's reply when nothing better is known (``name``: 42 bytes).
BOARD_REPLY_BYTES = 80
#: Tries of a command after a reset (``name`` after ``setbaud``, the DUT's ``name`` after a
#: resync): one sent while the board is still resetting is lost, so one more follows a first
#: timeout.
VERIFY_ATTEMPTS = 2
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
    """Apply the firmware's matching rule to a command buffer without its ``%``."""
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
class InterfaceEvent(Event):
    """One line from the board (``line``: as framed, no LF, CR dropped)."""


@dataclass(frozen=True, slots=True)
class BoardName(InterfaceEvent):
    """The board's ``name`` line."""

    text: str


@dataclass(frozen=True, slots=True)
class PassthroughAck(InterfaceEvent):
    """``m-dut-passthrough(<command>)``: the board accepted a DUT command."""

    command: str


@dataclass(frozen=True, slots=True)
class Ready(InterfaceEvent):
    """A line ending in ``m-ready``; ``prefix`` holds text before it (print_dutycycle quirk)."""

    prefix: str


@dataclass(frozen=True, slots=True)
class DutLine(InterfaceEvent):
    """One DUT line relayed by the board.

    ``payload`` is the DUT's line with the ``[dut]: `` prefix removed; ``line`` is the raw
    line as received. ``merged`` marks the tail of a DUT line that ended in a bare LF: the
    board forwarded it inside the previous line, so it arrives without a prefix.
    """

    payload: bytes
    merged: bool = False


@dataclass(frozen=True, slots=True)
class BaudSet(InterfaceEvent):
    """``set baud to: N``: the board stored a new DUT baud and is about to reset."""

    baud: int


@dataclass(frozen=True, slots=True)
class BaudIs(InterfaceEvent):
    """``baud is: N``: the current DUT-side baud."""

    baud: int


@dataclass(frozen=True, slots=True)
class Unknown(InterfaceEvent):
    """Any other line (``ls`` file names, detection lists, garbage)."""


def classify_line(line: bytes) -> InterfaceEvent:
    """Classify one framed line (no LF, CR dropped) from the board; never fails."""
    if line.startswith(DUT_PREFIX):
        return DutLine(line, payload=line[len(DUT_PREFIX) :])
    s = text(line)
    if s.startswith(PASSTHROUGH_PREFIX) and s.endswith(")"):
        return PassthroughAck(line, s[len(PASSTHROUGH_PREFIX) : -1])
    if s.endswith(READY):
        return Ready(line, s[: -len(READY)])
    if s == BOARD_NAME:
        return BoardName(line, s)
    if m := _BAUD_SET_RE.fullmatch(s):
        return BaudSet(line, int(m.group(1)))
    if m := _BAUD_IS_RE.fullmatch(s):
        return BaudIs(line, int(m.group(1)))
    return Unknown(line)


# --------------------------------------------------------------------------------------------
# Host side: connection state machine
# --------------------------------------------------------------------------------------------


class InterfaceState(Enum):
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
    ``m-ready`` (the bare-LF wedge): the board itself is still waiting for the DUT.
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
        self._state = InterfaceState.IDLE
        self._command: str | None = None
        self._dut_command: str | None = None
        self._events: list[InterfaceEvent] = []
        self._dut_lines: list[bytes] = []
        self._replies: list[InterfaceReply] = []

    @property
    def state(self) -> InterfaceState:
        """Current protocol state."""
        return self._state

    @property
    def outstanding(self) -> str | None:
        """The board command awaiting its reply, if any."""
        return self._command

    @property
    def wedged(self) -> bool:
        """True while the board is stuck in a passthrough after a merged ``m-ready``."""
        return self._state is InterfaceState.WEDGED

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
        self._begin(command, None, InterfaceState.AWAIT_READY)
        return data

    def send_passthrough(self, dut_command: str) -> bytes:
        """Start a DUT command relayed by the board; return the bytes to write."""
        self._check_can_send()
        data = encode_passthrough(dut_command, self._dut_cmd_max)
        self._begin(f"dut {dut_command}", dut_command, InterfaceState.AWAIT_ACK)
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
        self._state = InterfaceState.IDLE

    # -- internals ---------------------------------------------------------------------------

    def _check_can_send(self) -> None:
        if self._state is InterfaceState.IDLE:
            return
        if self._state is InterfaceState.WEDGED:
            raise LocalProtocolError(
                "the board is wedged waiting for an exact DUT m-ready "
                "(bare-LF merge); reset the DUT, then call reset()"
            )
        if self._state is InterfaceState.ERROR:
            raise LocalProtocolError("the link is desynchronised; resync and call reset()")
        raise LocalProtocolError(f"a reply to {self._command!r} is still outstanding")

    def _begin(self, command: str, dut_command: str | None, state: InterfaceState) -> None:
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
        self._state = InterfaceState.ERROR

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
        self._state = InterfaceState.WEDGED if wedged else InterfaceState.IDLE

    def _advance(self, event: InterfaceEvent, line: bytes) -> InterfaceEvent:
        """Feed one classified line to the state machine; return the event as reported
        (a bare line inside a DUT reply is re-classified as a merged DutLine)."""
        state = self._state
        if state in (InterfaceState.IDLE, InterfaceState.ERROR):
            # Unsolicited output: reported, not assembled. A late reply to an abandoned
            # command lands here; the caller decides whether to resync.
            return event
        if state is InterfaceState.WEDGED:
            if isinstance(event, DutLine) and event.payload == READY.encode():
                self._state = InterfaceState.IDLE  # the board's stuck task finally finished
            return event
        if not is_clean(line):
            raise _Desync(f"garbage from the board while awaiting {self._command!r}: {line!r}")
        if state is InterfaceState.AWAIT_READY:
            if isinstance(event, PassthroughAck | DutLine):
                raise _Desync(
                    f"passthrough output {line!r} during board command "
                    f"{self._command!r}: stale reply"
                )
            self._events.append(event)
            if isinstance(event, Ready):
                self._complete()
            return event
        if state is InterfaceState.AWAIT_ACK:
            if not isinstance(event, PassthroughAck):
                raise _Desync(f"expected m-dut-passthrough({self._dut_command}), got {line!r}")
            if event.command != self._dut_command:
                raise _Desync(
                    f"ack names {event.command!r} but {self._dut_command!r} was "
                    "sent: stale or desynchronised reply"
                )
            self._events.append(event)
            self._state = InterfaceState.AWAIT_ACK_READY
            return event
        if state is InterfaceState.AWAIT_ACK_READY:
            if not (isinstance(event, Ready) and event.prefix == ""):
                raise _Desync(f"expected the ack's m-ready, got {line!r}")
            self._events.append(event)
            self._state = InterfaceState.DUT
            return event
        # InterfaceState.DUT
        if not isinstance(event, DutLine):
            if not self._dut_lines:
                raise _Desync(f"expected a [dut]: line, got {line!r}")
            # Without the board's prefix this can only be the tail of a DUT line that ended
            # in a bare LF: the board forwarded both as one line.
            event = DutLine(line, payload=line, merged=True)
        self._events.append(event)
        self._dut_lines.append(event.payload)
        if event.payload == READY.encode():
            # A merged m-ready satisfies the host but not the board, which still waits.
            self._complete(wedged=event.merged)
        return event


class _Desync(Exception):
    """Internal signal from _advance; feed turns it into InterfaceDesyncError."""
