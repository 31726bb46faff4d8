"""The STM32H573I-DK "enhanced interface" board's own behaviour, sans-IO, for the simulator.

:class:`InterfaceFirmware` is the board's CLI (fed host bytes, it returns what the board does)
and :class:`PassthroughForwarder` its SD-task loop relaying DUT lines to the host, byte for
byte. The host side, and what both sides share (the command table and its matching rule, the
baud fallback), is :mod:`farm.protocol.interface`; the agent never imports this module.
Nothing here does I/O or looks at a clock.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from farm.protocol.interface import (
    BOARD_NAME,
    DEFAULT_DUT_BAUD,
    DUT_PREFIX,
    PASSTHROUGH_PREFIX,
    READY,
    READY_LINE,
    TERMINATOR,
    effective_baud,
    match_command,
)
from farm.protocol.sww import MAX_DETECTIONS, MAX_DUTY_EDGES

PLAY_ERROR = "Error playing file. Check that the file exists and is a 2-channel wav file."
#: The detection debounce.
DETECTION_DEBOUNCE_MS = 10
#: TIM2 ticks (10 µs) per millisecond.
TICKS_PER_MS = 100


# --------------------------------------------------------------------------------------------
# Actions
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


InterfaceAction = Write | Passthrough | PassthroughDone | SetBaud | Hang | Play | ZeroTimer


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


def _coalesce(actions: list[InterfaceAction]) -> list[InterfaceAction]:
    """Merge adjacent writes: the firmware prints them back to back."""
    out: list[InterfaceAction] = []
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

    def feed(self, data: bytes) -> list[InterfaceAction]:
        """Add bytes from the host; return the actions of every command they complete."""
        self._buf += data
        return self._run()

    def passthrough_done(self) -> list[InterfaceAction]:
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

    def _run(self) -> list[InterfaceAction]:
        actions: list[InterfaceAction] = []
        while not (self._busy or self._halted):
            end = self._buf.find(TERMINATOR)
            if end < 0:
                break
            command = bytes(self._buf[:end]).decode("latin-1")
            del self._buf[: end + 1]
            actions += self._execute(command)
        return _coalesce(actions)

    def _execute(self, command: str) -> list[InterfaceAction]:
        match = match_command(command)
        if match.silent:
            return []
        if match.name is None:
            return [Write(READY_LINE)]
        handler = getattr(self, f"_cmd_{match.name}")
        result: list[InterfaceAction] = handler(match.args)
        return result

    def _cmd_dut(self, args: str | None) -> list[InterfaceAction]:
        if args is None:
            # Exact "dut": an empty passthrough. The board would still ack and queue it.
            args = ""
        ack = Write(f"{PASSTHROUGH_PREFIX}{args})\r\n".encode("latin-1") + READY_LINE)
        if not self.sd_card:
            self._halted = True
            return [ack, Hang("no SD card: the passthrough task never runs")]
        self._busy = True
        return [ack, Passthrough(args)]

    def _cmd_name(self, args: str | None) -> list[InterfaceAction]:
        return [Write(f"{BOARD_NAME}\r\n".encode() + READY_LINE)]

    def _cmd_ls(self, args: str | None) -> list[InterfaceAction]:
        if not self.sd_card:
            self._halted = True
            return [Hang("no SD card: ls runs on the SD task, which never runs")]
        listing = "".join(f"{name}\r\n" for name in self.files)
        return [Write(listing.encode("latin-1") + READY_LINE)]

    def _cmd_play(self, args: str | None) -> list[InterfaceAction]:
        if args is None:
            return [Play(None), Write(READY_LINE)]
        actions: list[InterfaceAction] = [Write(f"Attempting to play {args}\n".encode("latin-1"))]
        if self.sd_card and args in self.files:
            actions += [Play(args), Write(b"succeeded.\n")]
        else:
            actions.append(Write(f"{PLAY_ERROR}\n".encode()))
        actions.append(Write(READY_LINE))
        return actions

    def _cmd_setbaud(self, args: str | None) -> list[InterfaceAction]:
        value = _stoi(args or "")
        self._halted = True
        if value is None:
            return [Hang(f"setbaud {args!r}: std::stoi throws")]
        stored = value & 0xFFFFFFFF
        return [
            Write(f"set baud to: {value}\n".encode() + READY_LINE),
            SetBaud(effective_baud(stored), stored),
        ]

    def _cmd_checkbaud(self, args: str | None) -> list[InterfaceAction]:
        return [Write(f"baud is: {self.dut_baud}\n".encode() + READY_LINE)]

    def _cmd_record_detections(self, args: str | None) -> list[InterfaceAction]:
        self.detections.clear()
        self.duty_starts.clear()
        self.duty_stops.clear()
        return [ZeroTimer(), Write(b"Now recording detections\r\n" + READY_LINE)]

    def _cmd_print_detections(self, args: str | None) -> list[InterfaceAction]:
        body = "".join(f"{ms},\r\n" for ms in self.detections)
        return [Write(f"Detection Timestamps (ms)\r\n{body}".encode() + READY_LINE)]

    def _cmd_print_dutycycle(self, args: str | None) -> list[InterfaceAction]:
        def values(log: list[int]) -> str:
            return "".join(f"{v}, " + ("\r\n" if i % 8 == 7 else "") for i, v in enumerate(log))

        # No CRLF before m-ready: the stop list's last partial row runs into it.
        out = (
            f"Duty cycle start times (s)\r\n{values(self.duty_starts)}\r\n"
            f"Duty cycle stop times (s)\r\n{values(self.duty_stops)}{READY}\r\n"
        )
        return [Write(out.encode())]


# --------------------------------------------------------------------------------------------
# Passthrough line forwarding
# --------------------------------------------------------------------------------------------


class PassthroughForwarder:
    """The board's SD-task loop relaying DUT output to the host.

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
