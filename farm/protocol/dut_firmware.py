"""The DUT firmware's side of the serial protocol (docs/protocols.md#dut), sans-IO.

This is the reference port's command handler as a state machine, for the simulator: fed the
bytes the host sends, it returns the actions the firmware performs (print text, compute
inferences, sample its µs counter, pulse the timestamp pin). Timing and the wire are the
simulator's business; every string and quirk of the reference firmware is reproduced here,
typos included: the silent 80-character truncation, the silent drop of commands completed
during boot, the ``db`` state machine with its overflow states, the LF-only messages.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from farm.models import ModelSpec, format_results
from farm.protocol.dut import MAX_COMMAND_CHARS

Build = Literal["performance", "energy"]
PROFILE = "ULPMark for tinyML Firmware V0.0.1"
CRLF = "\r\n"

#: ``help`` output: 12 lines, typos and the wrong ``W=0`` default as shipped.
HELP_LINES = (
    PROFILE,
    "",
    "help         : Print this information",
    "name         : Print the name of the device",
    "timestsamp   : Generate a timetsamp",
    "db SUBCMD    : Manipulate a generic byte buffer",
    "  load N     : Allocate N bytes and set load counter",
    "  db HEX     : Load HEX string into the buffer",
    "  print [N=16] [offset=0]",
    "             : Print N bytes at offset as hex",
    "infer N [W=0]: Load input, execute N inferences after W warmup loops",
    "results      : Return the result fp vector",
)


# --- actions --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Write:
    """Print ``data`` on the UART (blocking: the firmware is busy until it has left)."""

    data: bytes


@dataclass(frozen=True, slots=True)
class Compute:
    """Run ``count`` inferences (``phase`` warmup or infer) or load the model (boot)."""

    phase: Literal["boot", "warmup", "infer"]
    count: int


@dataclass(frozen=True, slots=True)
class Lap:
    """Performance build: print ``m-lap-us-<counter>`` (see :func:`format_lap`)."""


@dataclass(frozen=True, slots=True)
class Pulse:
    """Energy build: drive the timestamp pin low, hold, release (the monitor's event)."""


@dataclass(frozen=True, slots=True)
class EnableParser:
    """End of boot: commands completed from now on are executed."""


@dataclass(frozen=True, slots=True)
class Overflow:
    """A ``db`` chunk wrote past ``MAX_DB_INPUT_SIZE``: the real firmware corrupts its
    memory here; the simulator decides what that does (nothing, a hang, a reset)."""

    position: int


DutAction = Write | Compute | Lap | Pulse | EnableParser | Overflow


def format_lap(counter_us: int) -> bytes:
    """The ``m-lap-us`` line for a counter value (``%lu`` of the 32-bit counter)."""
    return f"m-lap-us-{counter_us & 0xFFFFFFFF}{CRLF}".encode()


def _atoi(s: str) -> int:
    """C ``atoi``: optional sign and leading digits; anything else reads as 0."""
    s = s.lstrip(" \t")
    sign, i = 1, 0
    if s[:1] in "+-" and s:
        sign = -1 if s[0] == "-" else 1
        i = 1
    j = i
    while j < len(s) and s[j].isdigit():
        j += 1
    return sign * int(s[i:j]) if j > i else 0


def _line(s: str) -> Write:
    return Write((s + CRLF).encode("latin-1"))


InferFn = Callable[[bytes], Sequence[float]]


@dataclass
class DutFirmware:
    """One DUT's firmware state: command buffer, ``db`` buffer, input tensor, last results.

    ``infer_fn`` maps an input tensor to the output vector (the simulator's deterministic
    scheme); ``vendor`` is what ``name`` reports.
    """

    model: ModelSpec
    build: Build
    infer_fn: InferFn
    vendor: str = "unspecified"
    parser_enabled: bool = False
    last_command: str = ""
    """The last command executed (what fault injection matches on)."""
    _cmd: bytearray = field(default_factory=bytearray)
    _db: bytearray = field(default_factory=bytearray)
    _db_size: int = 0
    _db_pos: int = 0
    _tensor: bytes = b""
    _results: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        self._reset_state()

    def _reset_state(self) -> None:
        self.parser_enabled = False
        self._cmd.clear()
        self._db = bytearray(self.model.max_db_input)
        self._db_size = self._db_pos = 0
        self._tensor = bytes(self.model.input_bytes)
        self._results = (0.0,) * self.model.outputs

    # -- boot ------------------------------------------------------------------------------

    def boot(self) -> list[DutAction]:
        """Power-on or reset: state is lost; the boot banner follows (docs/protocols.md#dut-boot).

        The parser stays disabled until the simulator executes :class:`EnableParser`.
        """
        self._reset_state()
        stamp: DutAction = Lap() if self.build == "performance" else Pulse()
        return [
            _line(f"m-timestamp-mode-{self.build}"),
            stamp,
            Compute("boot", 1),
            _line("m-init-done"),
            EnableParser(),
            _line("m-ready"),
        ]

    # -- input -----------------------------------------------------------------------------

    def receive(self, data: bytes) -> list[DutAction]:
        """Take bytes from the UART; return the actions of every command they complete."""
        actions: list[DutAction] = []
        for byte in data:
            if byte != 0x25:  # '%'
                # Past 80 characters every byte overwrites index 80, which '%' then zeroes:
                # the command is silently cut to its first 80 characters.
                if len(self._cmd) <= MAX_COMMAND_CHARS:
                    self._cmd.append(byte)
                else:
                    self._cmd[MAX_COMMAND_CHARS] = byte
                continue
            raw = bytes(self._cmd[:MAX_COMMAND_CHARS])
            self._cmd.clear()
            if not self.parser_enabled:
                continue  # completed during boot: dropped without a word
            nul = raw.find(0)
            if nul >= 0:
                raw = raw[:nul]  # a C string ends at its first NUL
            actions += self.execute(raw.decode("latin-1"))
        return actions

    def execute(self, command: str) -> list[DutAction]:
        """Run one complete command (without its ``%``); the reply ends with ``m-ready``."""
        self.last_command = command
        tokens = [t for t in command.split(" ") if t]  # strtok on single spaces
        out: list[DutAction] = []
        if not tokens:
            out.append(_line("e-[Unknown command: (null)]"))
        else:
            handler = {
                "name": self._name,
                "profile": self._profile,
                "help": self._help,
                "timestamp": self._timestamp,
                "db": self._db_command,
                "infer": self._infer,
                "results": self._print_results,
            }.get(tokens[0])
            if handler is None:
                out.append(_line(f"e-[Unknown command: {tokens[0]}]"))
            else:
                out += handler(tokens[1:])
        out.append(_line("m-ready"))
        return out

    # -- commands --------------------------------------------------------------------------

    def _name(self, _args: list[str]) -> list[DutAction]:
        return [_line(f"m-name-dut-[{self.vendor}]")]

    def _profile(self, _args: list[str]) -> list[DutAction]:
        return [_line(f"m-profile-[{PROFILE}]"), _line(f"m-model-[{self.model.id}]")]

    def _help(self, _args: list[str]) -> list[DutAction]:
        return [_line(s) for s in HELP_LINES]

    def _timestamp(self, _args: list[str]) -> list[DutAction]:
        return [Lap() if self.build == "performance" else Pulse()]

    def _db_command(self, args: list[str]) -> list[DutAction]:
        if not args:
            return [_line("e-[Command 'db' requires a subcommand]")]
        sub = args[0]
        if sub == "load":
            if len(args) < 2:
                return [_line("e-[Command 'db load' requires the # of bytes]")]
            size = _atoi(args[1])
            if size <= 0:
                self._db_size = 0
                return [_line("e-[Command 'db load' must be >0 bytes]")]
            self._db_size, self._db_pos = size, 0
            if size > self.model.max_db_input:
                # LF only and no ``e-``; the size is kept, so later chunks overrun the array.
                limit = self.model.max_db_input
                return [Write(f"Supplied buffer size {size} exceeds maximum of {limit}\n".encode())]
            return [_line(f"m-[Expecting {size} bytes]")]
        if sub == "print":
            return self._db_print()
        return self._db_hex(sub)

    def _db_hex(self, digits: str) -> list[DutAction]:
        if len(digits) % 2:
            return [_line("e-[Insufficent number of hex digits]")]
        out: list[DutAction] = []
        for i in range(0, len(digits), 2):
            pair = digits[i : i + 2]
            if not all(c in "0123456789abcdefABCDEF" for c in pair):
                out.append(_line(f"e-[Invalid hex digit '{pair}']"))
                return out  # the pairs before it were stored
            if self._db_pos < len(self._db):
                self._db[self._db_pos] = int(pair, 16)
            elif not any(isinstance(a, Overflow) for a in out):
                out.append(Overflow(self._db_pos))
            self._db_pos += 1
            if self._db_pos == self._db_size:
                out.append(_line("m-load-done"))
                return out  # surplus digits of this chunk are ignored
        return out

    def _db_print(self) -> list[DutAction]:
        size = min(self._db_size, len(self._db))
        out: list[DutAction] = []
        for i in range(0, size, 8):
            chunk = self._db[i : min(i + 8, size)]
            out.append(_line("m-buffer-" + "-".join(f"{b:02x}" for b in chunk)))
        if self._db_size % 8:
            out.append(_line(""))
        return out

    def _infer(self, args: list[str]) -> list[DutAction]:
        count = _atoi(args[0]) if args else 1
        warmup = _atoi(args[1]) if len(args) > 1 else 10
        if count <= 0:
            return [_line("e-[Inference iterations must be >0]")]
        if warmup < 0:
            return [_line("e-[Inference warmup must be >=0]")]
        out: list[DutAction] = []
        elements = self._db_pos // self.model.element_bytes
        if elements != self.model.input_elements:
            # LF only; the reference port then runs on the previous tensor.
            message = f"Input db has {elements} elemented, expected {self.model.input_elements}\n"
            out.append(Write(message.encode()))
        else:
            self._tensor = bytes(self._db[: self.model.input_bytes])
        stamp: DutAction = Lap() if self.build == "performance" else Pulse()
        self._results = tuple(self.infer_fn(self._tensor))
        out += [
            _line(f"m-warmup-start-{warmup}"),
            Compute("warmup", warmup),
            _line("m-warmup-done"),
            _line(f"m-infer-start-{count}"),
            stamp,
            Compute("infer", count),
            stamp,
            _line("m-infer-done"),
            *self._print_results([]),
        ]
        return out

    def _print_results(self, _args: list[str]) -> list[DutAction]:
        return [_line(f"m-results-[{format_results(self.model.result_format, self._results)}]")]
