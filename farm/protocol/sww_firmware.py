"""The streaming-wakeword (sww01) reference firmware's side of its protocol, sans-IO, for the
simulator (docs/protocols.md#sww-dut).

Fed the bytes the host sends, :class:`SwwFirmware` returns what the firmware does: print text,
pulse its timestamp pin, drive its processing pin, arm or stop its audio input. Fed an audio
frame's activation (:meth:`SwwFirmware.frame`), it returns the frame's processing: the
processing pin high, the model's compute time, a WW_DETECTED pulse when the activation
exceeds the threshold (and always on a stream's first frame, the detection log's time
origin), the pin low. Timing, the audio itself and the detector are the simulator's business.

Reproduced as the reference port prints them: the ``Received command:`` echo of every command,
the 1,028-character command buffer with its silent truncation, the ``start``/``stop`` lines
and the activation dump (16 values a row, ``[`` before the first, two spaces after the
last, ``]`` on its own line), the ``db`` sub-commands with their ``Error:`` messages,
``state``, ``log``, ``help`` (its missing line ends included), the unknown and the empty
command. Not modelled (answered as unknown commands): ``run_model``, ``extract``, ``i2scap``,
``infer_wav`` and ``extract_uart_stream``, whose output is the reference model's and which no
runner sends.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from farm.protocol.dut_firmware import CRLF, Compute, EnableParser, Pulse, Write, _atoi
from farm.protocol.sww import DETECT_THRESHOLD, FRAME_BYTES

#: The firmware's command buffer (``EE_CMD_SIZE``).
MAX_COMMAND_CHARS = 1028
PROFILE = "MLPerf Tiny Firmware V0.1.0"
MODEL = "sww01"
#: Activations kept per stream: the 64,000-byte general-purpose buffer, one int8 per frame.
MAX_ACTIVATIONS = 64_000
VALUES_PER_ROW = 16
#: ``state``'s I2S state numbers (the firmware's enum order) and SAI states.
STATE_IDLE, STATE_STREAMING = 0, 2
SAI_READY, SAI_BUSY_RX = 1, 34

HELP = (
    "name        -- print out an identifying message\r\n"
    "run_model   -- run the NN model. An optional  argument class0, class1, or class2 runs "
    "the model\r\n"
    "               on a selected input that is expected to return 0 (WW), 1 (silent), or "
    "2(other)\r\n"
    "extract     -- run the feature extractor on the first block of a predefined wav form "
    "(test_wav_marvin)\r\n"
    "i2scap      -- Captures about 1s of stereo audio over an I2S link\r\n"
    "start       -- Start wakeword detection.  Repeatedly runs feature extraction and model on "
    "incoming I2S wav data"
    "stop        -- Stop wakeword detection"
    "state       -- print out the current operating mode (as int) and status of the I2S link"
    "log         -- The I2S capture function can write debug messages to a log. Prints and "
    "clears that log.\r\n"
    "help        -- Print this help message\r\n"
)


# --- actions (Write, Pulse, Compute and EnableParser are the classic firmware's) --------------


@dataclass(frozen=True, slots=True)
class ProcessingPin:
    """Drive the processing (duty-cycle) pin: high while a frame is processed."""

    level: bool


@dataclass(frozen=True, slots=True)
class WakewordPulse:
    """A ~1 µs low pulse on WW_DETECTED: the interface board logs a detection."""


@dataclass(frozen=True, slots=True)
class StartStream:
    """Arm the I2S input: every frame that arrives from now on is processed."""


@dataclass(frozen=True, slots=True)
class StopStream:
    """Stop the I2S input: later frames are ignored."""


@dataclass(frozen=True, slots=True)
class FrameCompute:
    """Feature extraction and the model on one frame (the simulator spends its time)."""


SwwAction = (
    Write
    | Pulse
    | Compute
    | EnableParser
    | ProcessingPin
    | WakewordPulse
    | StartStream
    | StopStream
    | FrameCompute
)


def _line(s: str) -> Write:
    return Write((s + CRLF).encode("latin-1"))


def activation_rows(values: list[int]) -> list[Write]:
    """The activation dump as ``ee_print_vals_int8`` prints it: ``[`` before the first value,
    ``%d`` then ``,`` (a space after the last value) and a space, 16 values a row, then
    ``]`` on its own line."""
    out: list[Write] = []
    text = "["
    for i in range(0, len(values), VALUES_PER_ROW):
        row = values[i : i + VALUES_PER_ROW]
        for j, v in enumerate(row):
            last = i + j == len(values) - 1
            text += f"{v}{' ' if last else ','} "
        out.append(Write((text + CRLF).encode()))
        text = ""
    out.append(Write(f"{text}]{CRLF}".encode()))
    return out


@dataclass
class SwwFirmware:
    """One sww DUT's firmware state: command buffer, stream state, activation log, ``db``."""

    vendor: str = "unspecified"
    parser_enabled: bool = False
    last_command: str = ""
    """The last command executed (what fault injection matches on)."""
    streaming: bool = False
    activations: list[int] = field(default_factory=list)
    """The current (or last) stream's activations, one per frame processed."""
    _first_frame: bool = False
    _cmd: bytearray = field(default_factory=bytearray)
    _db: bytearray = field(default_factory=lambda: bytearray(FRAME_BYTES))
    _db_state: int = 0
    _db_size: int = 0
    _db_pos: int = 0

    # -- boot ------------------------------------------------------------------------------

    def boot(self) -> list[SwwAction]:
        """Power-on or reset: no banner, one timestamp pulse, the model's set-up, then the
        UART loop reads commands."""
        self.parser_enabled = False
        self.streaming = False
        self.activations = []
        self._cmd.clear()
        self._db_state = self._db_size = self._db_pos = 0
        return [Pulse(), Compute("boot", 1), EnableParser()]

    # -- input -----------------------------------------------------------------------------

    def receive(self, data: bytes) -> list[SwwAction]:
        """Take bytes from the UART; return the actions of every command they complete."""
        actions: list[SwwAction] = []
        for byte in data:
            if byte != 0x25:  # '%'
                # As the classic firmware, with a 1,028-character buffer: past it every byte
                # overwrites the last position, which '%' then zeroes.
                if len(self._cmd) <= MAX_COMMAND_CHARS:
                    self._cmd.append(byte)
                else:
                    self._cmd[MAX_COMMAND_CHARS] = byte
                continue
            raw = bytes(self._cmd[:MAX_COMMAND_CHARS])
            self._cmd.clear()
            if not self.parser_enabled:
                continue
            nul = raw.find(0)
            if nul >= 0:
                raw = raw[:nul]
            actions += self.execute(raw.decode("latin-1"))
        return actions

    def execute(self, command: str) -> list[SwwAction]:
        """Run one complete command (without its ``%``): the echo, its output, ``m-ready``."""
        self.last_command = command
        tokens = [t for t in command.split(" ") if t]  # strtok on single spaces
        out: list[SwwAction] = [_line(f"Received command: {command}")]
        if not tokens:
            out.append(_line("Empty command (only a % read).  Type 'help%' for help"))
        else:
            handler = {
                "name": self._name,
                "profile": self._profile,
                "start": self._start,
                "stop": self._stop,
                "state": self._state,
                "log": self._log,
                "db": self._db_command,
                "help": self._help,
                "timestamp": self._timestamp,
                "proc_hi": self._proc_hi,
                "proc_lo": self._proc_lo,
            }.get(tokens[0])
            if handler is None:
                # strtok has cut the buffer at the first space: only the first token prints.
                out.append(_line(f"Unrecognized command {tokens[0]}"))
            else:
                out += handler(tokens[1:])
        out.append(_line("m-ready"))
        return out

    # -- audio -----------------------------------------------------------------------------

    def frame(self, activation: int) -> list[SwwAction]:
        """One audio frame arrived while streaming, and the model gives ``activation`` (int8)
        for it: the processing the firmware does in its DMA interrupt. Nothing when idle."""
        if not self.streaming:
            return []
        actions: list[SwwAction] = [ProcessingPin(True), FrameCompute()]
        if activation > DETECT_THRESHOLD or self._first_frame:
            actions.append(WakewordPulse())
            self._first_frame = False
        if len(self.activations) < MAX_ACTIVATIONS:
            self.activations.append(activation)
        actions.append(ProcessingPin(False))
        return actions

    # -- commands --------------------------------------------------------------------------

    def _name(self, _args: list[str]) -> list[SwwAction]:
        return [_line(f"m-name-dut-[{self.vendor}]")]

    def _profile(self, _args: list[str]) -> list[SwwAction]:
        return [_line(f"m-profile-[{PROFILE}]"), _line(f"m-model-[{MODEL}]")]

    def _start(self, _args: list[str]) -> list[SwwAction]:
        if self.streaming:
            return [_line("I2S Rx currently in progress. Ignoring request")]
        self.streaming = True
        self._first_frame = True
        self.activations = []
        return [
            _line("Listening for I2S data ... "),
            Pulse(),  # the power window's start
            # A 1 µs pulse on the processing pin aligns duty cycle, energy and detections.
            ProcessingPin(False),
            ProcessingPin(True),
            ProcessingPin(False),
            StartStream(),
            _line("DMA receive initiated."),
        ]

    def _stop(self, _args: list[str]) -> list[SwwAction]:
        if not self.streaming:
            return [_line("I2S is already idle.  Ignoring stop request")]
        self.streaming = False
        return [
            StopStream(),
            Pulse(),  # the power window's end
            _line("Streaming stopped."),
            _line("target activations: "),
            *activation_rows(self.activations),
        ]

    def _state(self, _args: list[str]) -> list[SwwAction]:
        sai = SAI_BUSY_RX if self.streaming else SAI_READY
        state = STATE_STREAMING if self.streaming else STATE_IDLE
        return [
            _line(f"g_i2s_status=0, SAI state={sai}"),
            _line(
                "    Status: 0=OK, 1=Error, 2=Busy, 3=Timeout; State: 0=Reset, 1=Ready, "
                "2=Busy (internal process), 18=Busy (Tx), 34=Busy (Rx)"
            ),
            _line(f"g_i2s_state = {state}, g_int16s_read=0"),
        ]

    def _log(self, _args: list[str]) -> list[SwwAction]:
        # Only the (unmodelled) capture and test commands write to the log.
        return [_line("Log contents[cp=0]:"), _line("<>")]

    def _help(self, _args: list[str]) -> list[SwwAction]:
        return [Write(HELP.encode())]

    def _timestamp(self, _args: list[str]) -> list[SwwAction]:
        return [Pulse()]

    def _proc_hi(self, _args: list[str]) -> list[SwwAction]:
        return [ProcessingPin(True)]

    def _proc_lo(self, _args: list[str]) -> list[SwwAction]:
        return [ProcessingPin(False)]

    def _db_command(self, args: list[str]) -> list[SwwAction]:
        """``db load N``, ``db <hex>``, ``db getptr``, ``db setptr N``, ``db print [N]``
        on the firmware's 2,048-byte I2S buffer."""
        if not args:
            return [
                _line(
                    "Error: db requires a sub-command: 'db load <Nbytes>'; "
                    "'db print [Nbytes]', 'db <hexstring>'"
                )
            ]
        sub = args[0]
        if sub == "load":
            size = _atoi(args[1]) if len(args) > 1 else 0
            if size == 0:
                self._db_state = 0
                given = args[1] if len(args) > 1 else "(null)"
                return [
                    _line(f"Error: Transfer size ({given}) must be valid int; greater than 0."),
                    _line("Usage: 'db load N'; N>0"),
                ]
            self._db_state, self._db_size, self._db_pos = 1, size, 0
            return [_line(f"Expecting {size} bytes")]
        if sub[0] in "0123456789abcdefABCDEF":
            return self._db_hex(sub)
        if sub == "getptr":
            return [_line(f"m-buff-ptr-{self._db_pos}")]
        if sub == "setptr":
            if len(args) > 1:
                self._db_pos = _atoi(args[1])
                return []
            # No line end in the reference port: the next line runs into it.
            return [Write(b"Error: setptr requires a numeric argument: 'db setptr 123%'")]
        if sub == "print":
            count = _atoi(args[1]) if len(args) > 1 else 0
            if count <= 0 or count > len(self._db):
                count = len(self._db)
            return [_line("m-buffer-" + "-".join(f"{b:02x}" for b in self._db[:count]))]
        return [_line(f"Error: db: Unrecognized sub-command {sub}")]

    def _db_hex(self, digits: str) -> list[SwwAction]:
        if self._db_state != 1:
            return [_line("Error: Must issue db load <Nbytes> command before transmitting data.")]
        if len(digits) % 2:
            return [
                _line(
                    "Error: number of hex digits in data string must be even. "
                    f"Received {len(digits)}"
                ),
                _line("Still waiting for data"),
            ]
        for i in range(0, len(digits), 2):
            pair = digits[i : i + 2]
            if not all(c in "0123456789abcdefABCDEF" for c in pair):
                return [
                    _line(
                        f"Error: Received non-hex digit in character pair '{pair}' at "
                        f"location {i + 2}"
                    ),
                    _line("Canceling segment upload. Still waiting for data"),
                ]
            if self._db_pos < len(self._db):
                self._db[self._db_pos] = int(pair, 16)
            self._db_pos += 1
            if self._db_pos >= len(self._db) or self._db_pos >= self._db_size:
                self._db_state = 0
                return [_line("m-load-done")]
        return [_line(f"{self._db_pos} bytes received")]
