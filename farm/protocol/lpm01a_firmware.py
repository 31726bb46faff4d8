"""The ST LPM01A PowerShield's own behaviour, sans-IO, for the simulator.

:class:`Lpm01aFirmware` is the command shell (fed host bytes, it returns the PowerShield's
replies and the physical actions they cause); :func:`format_sample`, :func:`format_timestamp`
and :func:`format_event` format the acquisition stream. The host side, and what both sides
share (the prompt, shell numbers), is :mod:`farm.protocol.lpm01a`; the agent never imports
this module. Nothing here does I/O or reads a clock.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal

from farm.protocol.lines import LineFramer, text
from farm.protocol.lpm01a import PROMPT, parse_number

# --------------------------------------------------------------------------------------------
# Stream formatting
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
# Command shell
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
    """Stop streaming; the simulator then writes
    :data:`~farm.protocol.lpm01a.ACQUISITION_COMPLETED_LINE`."""


@dataclass(frozen=True, slots=True)
class Reset:
    """``psrst``: hardware reset, the USB device re-enumerates."""


Lpm01aAction = Write | PowerSwitch | TargetReset | StartAcquisition | StopAcquisition | Reset
# What a command handler returns: the ack's value (or None) and the actions after the ack.
_Result = tuple[str | None, list[Lpm01aAction]]

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
