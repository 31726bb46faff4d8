"""The agent's config file (``farm agent --config agent.yaml``), validated with pydantic.

One file describes one Raspberry Pi: its id, the MQTT broker, the dataset root, and every
board wired to it — how to find each of its serial devices (:class:`Match`), its firmware
images and how to flash them, how to power-cycle it, and the system description a
submission needs. Every model forbids unknown keys, so a typo is an error; errors read
``agent.yaml:12: boards[0].dut.match.vid_pid: ...`` (see :mod:`farm.yaml_config`).
Relative paths resolve against the config file's directory.
"""

from __future__ import annotations

import os
import re
import shlex
import string
from collections.abc import Mapping
from pathlib import Path
from typing import Literal
from urllib.parse import unquote, urlsplit

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from farm.board_timing import FLASH_TIMEOUT_S
from farm.messages import TRACE_CHUNK_VALUES
from farm.models import MODELS
from farm.yaml_config import ConfigError, ConfigPath, FieldError, load_yaml_model

#: Board and agent ids become MQTT topic levels: no ``/``, ``+``, ``#`` or spaces.
ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"

Build = Literal["performance", "energy"]
Role = Literal["dut", "interface", "monitor"]
#: ``lpm01a``: the ST LPM01A (a serial device; it also supplies the DUT); ``js220``: the
#: Joulescope JS220 (USB, through the joulescope package; it only measures).
MonitorKind = Literal["lpm01a", "js220"]

#: Placeholders a flash command may use.
FLASH_PLACEHOLDERS = frozenset({"image", "board", "serial", "port", "target"})
#: Placeholders a power-cycle command may use.
POWER_CYCLE_PLACEHOLDERS = frozenset({"board", "serial", "port"})

_VID_PID = re.compile(r"[0-9A-Fa-f]{4}:[0-9A-Fa-f]{4}")
_SCHEMES = {"mqtt": 1883, "mqtts": 8883}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TlsConfig(_Strict):
    """TLS towards the broker. Without ``ca`` the system's CA certificates are used."""

    ca: ConfigPath | None = None
    """CA certificate (PEM) that signed the broker's certificate."""
    cert: ConfigPath | None = None
    """Client certificate (PEM), for brokers that authenticate clients by certificate."""
    key: ConfigPath | None = None
    """The client certificate's private key (PEM)."""
    insecure: bool = False
    """Skip verifying the broker's certificate and host name (testing only)."""

    @model_validator(mode="after")
    def _cert_with_key(self) -> TlsConfig:
        if self.cert is not None and self.key is None:
            raise FieldError(("key",), "a client certificate needs its key: set key too")
        if self.key is not None and self.cert is None:
            raise FieldError(("cert",), "a client key needs its certificate: set cert too")
        return self


class BrokerConfig(_Strict):
    """The MQTT broker the agent reports to and takes jobs from."""

    url: str = "mqtt://127.0.0.1:1883"
    """``mqtt://host[:port]`` or ``mqtts://host[:port]`` (TLS, port 8883 by default);
    ``user:password@`` may be part of it."""
    username: str | None = None
    password: str | None = None
    password_file: ConfigPath | None = None
    """A file holding the password (its trailing newline is ignored), so the config itself
    can be world-readable."""
    tls: TlsConfig | None = None
    """TLS settings; an ``mqtts://`` url without them uses the system's CA certificates."""
    keepalive_s: int = Field(15, ge=5, le=600)

    @field_validator("url")
    @classmethod
    def _valid_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in _SCHEMES:
            raise ValueError(f"expected mqtt://host[:port] or mqtts://host[:port], not {value!r}")
        if not parts.hostname:
            raise ValueError(f"no host in {value!r}")
        try:
            parts.port  # noqa: B018 - urlsplit checks the port only when it is read
        except ValueError as exc:
            raise ValueError(f"bad port in {value!r}: {exc}") from None
        if parts.path not in ("", "/") or parts.query or parts.fragment:
            raise ValueError(f"an MQTT url has no path, query or fragment: {value!r}")
        return value

    @model_validator(mode="after")
    def _one_source_per_credential(self) -> BrokerConfig:
        parts = urlsplit(self.url)
        if self.password is not None and self.password_file is not None:
            raise FieldError(("password_file",), "give password or password_file, not both")
        if parts.username is not None and self.username is not None:
            raise FieldError(("username",), "the url already names a user: give it once")
        if parts.password is not None and (self.password or self.password_file):
            raise FieldError(("password",), "the url already holds a password: give it once")
        has_password = (
            parts.password is not None
            or self.password is not None
            or self.password_file is not None
        )
        if has_password and parts.username is None and self.username is None:
            raise FieldError(("username",), "a password needs a user name: set username")
        if self.tls is not None and parts.scheme != "mqtts":
            raise FieldError(("tls",), "TLS settings with an mqtt:// url: use mqtts://")
        return self

    @property
    def host(self) -> str:
        """The broker's host name or address."""
        return urlsplit(self.url).hostname or ""

    @property
    def port(self) -> int:
        """The broker's port (1883, or 8883 for mqtts://, unless the url names one)."""
        parts = urlsplit(self.url)
        return parts.port or _SCHEMES[parts.scheme]

    @property
    def use_tls(self) -> bool:
        """Whether to connect with TLS (``mqtts://``)."""
        return urlsplit(self.url).scheme == "mqtts"

    def credentials(self) -> tuple[str | None, str | None]:
        """User name and password, from the fields, the url or ``password_file``.

        Raises :class:`ConfigError` naming the password file if it cannot be read.
        """
        parts = urlsplit(self.url)
        user = self.username if self.username is not None else _unquote(parts.username)
        password = self.password if self.password is not None else _unquote(parts.password)
        if self.password_file is not None:
            try:
                password = self.password_file.read_text(encoding="utf-8").rstrip("\r\n")
            except (OSError, UnicodeDecodeError) as exc:
                reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
                raise ConfigError(
                    f"{self.password_file}: cannot read the broker password file: {reason}"
                ) from None
            if not password:
                raise ConfigError(f"{self.password_file}: the broker password file is empty")
        return user, password


def _unquote(value: str | None) -> str | None:
    return None if value is None else unquote(value)


class Match(_Strict):
    """How to find one serial device; every field given must match.

    Match by ``serial`` (the USB serial number): identical boards share a VID:PID and
    ``/dev/ttyACM*`` numbers change with the order they are plugged in.
    """

    serial: str | None = Field(None, min_length=1)
    """USB serial number (compared case-insensitively)."""
    vid_pid: str | None = None
    """USB ``VID:PID`` in hex, e.g. ``0483:374B``."""
    path: str | None = Field(None, min_length=1)
    """A ``/dev/serial/by-id/...`` path, any device path, or a pyserial URL (``socket://``)."""

    @field_validator("serial", "vid_pid", "path", mode="before")
    @classmethod
    def _text(cls, value: object) -> object:
        # YAML reads 0671 or 1234:5678-like values as numbers; say so instead of
        # "Input should be a valid string".
        if value is not None and not isinstance(value, str):
            raise ValueError(f"YAML read this as {value!r} ({type(value).__name__}): quote it")
        return value

    @field_validator("vid_pid")
    @classmethod
    def _hex_pair(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if not _VID_PID.fullmatch(value):
            raise ValueError(
                f"expected VID:PID as two 4-digit hex numbers (0483:374B), not {value!r}"
            )
        return value.upper()

    @model_validator(mode="after")
    def _at_least_one(self) -> Match:
        if self.serial is None and self.vid_pid is None and self.path is None:
            raise ValueError("give at least one of serial, vid_pid, path")
        return self

    def describe(self) -> str:
        """The given fields, e.g. ``serial=066DFF49 vid_pid=0483:374B``."""
        fields = (("serial", self.serial), ("vid_pid", self.vid_pid), ("path", self.path))
        return " ".join(f"{name}={value}" for name, value in fields if value is not None)

    def overlaps(self, other: Match) -> bool:
        """Whether one device could satisfy both: they share a field and no shared field
        differs."""
        pairs = [
            (_fold(self.serial), _fold(other.serial)),
            (self.vid_pid, other.vid_pid),
            (self.path, other.path),
        ]
        shared = [(a, b) for a, b in pairs if a is not None and b is not None]
        return bool(shared) and all(a == b for a, b in shared)


def _fold(serial: str | None) -> str | None:
    return None if serial is None else serial.casefold()


class BaudConfig(_Strict):
    """DUT baud per firmware build; ``None`` takes the benchmark's reference baud
    (performance) or 9600 (energy)."""

    performance: int | None = Field(None, gt=0)
    energy: int | None = Field(None, gt=0)


class DeviceConfig(_Strict):
    """One serial device of a board."""

    match: Match


class MonitorConfig(_Strict):
    """The energy monitor of a board: an LPM01A found like any serial device (``match``), or
    a Joulescope JS220 found by the joulescope driver, by its USB serial number
    (``match: {serial: ...}``) or, without ``match``, as the only JS220 connected."""

    kind: MonitorKind = "lpm01a"
    match: Match | None = None

    @model_validator(mode="after")
    def _match_fits_kind(self) -> MonitorConfig:
        if self.kind == "lpm01a" and self.match is None:
            raise FieldError(
                ("match",), "an LPM01A is a serial device: give its match (serial: ...)"
            )
        if (
            self.kind == "js220"
            and self.match is not None
            and (self.match.vid_pid is not None or self.match.path is not None)
        ):
            raise FieldError(
                ("match",),
                "a JS220 is not a serial port: match it by its USB serial number only "
                "(serial: ...), or leave match out to use the only JS220 connected",
            )
        return self

    @property
    def serial_device(self) -> DeviceConfig | None:
        """The monitor as one of the board's serial devices (the LPM01A); ``None`` for a
        JS220, which the joulescope driver finds instead."""
        if self.kind != "lpm01a" or self.match is None:
            return None
        return DeviceConfig(match=self.match)

    @property
    def js220_serial(self) -> str | None:
        """A JS220's USB serial number (``None``: the only one connected)."""
        return self.match.serial if self.match is not None else None


def check_template(template: str, allowed: frozenset[str], required: frozenset[str]) -> str:
    """Validate a command template: it splits into arguments like a shell line (``shlex``)
    and uses only ``allowed`` placeholders, all of ``required``. Returns it unchanged."""
    try:
        argv = shlex.split(template)
    except ValueError as exc:
        raise ValueError(f"cannot split the command into arguments: {exc}") from None
    if not argv:
        raise ValueError("the command is empty")
    used: set[str] = set()
    names = ", ".join(f"{{{n}}}" for n in sorted(allowed))
    for arg in argv:
        try:
            fields = [(name, spec, conv) for _, name, spec, conv in string.Formatter().parse(arg)]
        except ValueError as exc:
            raise ValueError(f"{exc} in {arg!r} (write {{{{ and }}}} for literal braces)") from None
        for name, spec, conv in fields:
            if name is None:
                continue
            if name not in allowed:
                raise ValueError(f"unknown placeholder {{{name}}}; known: {names}")
            if spec or conv:
                raise ValueError(f"placeholder {{{name}}} takes no format or conversion")
            used.add(name)
    missing = sorted(required - used)
    if missing:
        raise ValueError(f"the command must use {', '.join(f'{{{n}}}' for n in missing)}")
    return template


def render_command(template: str, values: Mapping[str, str]) -> list[str]:
    """The argument vector of a validated command template.

    The template is split first and each argument filled in afterwards, so a value with
    spaces or quotes stays one argument and no shell interprets it.
    """
    return [arg.format_map(values) for arg in shlex.split(template)]


class FirmwareConfig(_Strict):
    """Firmware images of a board and the command that flashes one."""

    images: dict[str, dict[Build, ConfigPath]] = Field(default_factory=dict)
    """Model id -> build -> image file."""
    flash: str | None = None
    """Command template, e.g. ``st-flash --serial {serial} --reset write {image} 0x8000000``;
    placeholders {image} {board} {serial} {port} {target} ({serial} and {port} are the
    DUT's: on a NUCLEO board the ST-LINK that flashes it is the DUT's USB device)."""
    target: str | None = None
    """Target name for {target}, e.g. pyocd's ``stm32l4r5zitx``."""
    timeout_s: float = Field(FLASH_TIMEOUT_S, gt=0)
    """How long the flash tool may take before it is killed (the controller waits this long by
    default: ``FARM_FLASH_TIMEOUT_S`` where a board's is longer)."""

    @field_validator("images")
    @classmethod
    def _known_models(cls, value: dict[str, dict[Build, Path]]) -> dict[str, dict[Build, Path]]:
        for model, builds in value.items():
            if model not in MODELS:
                raise FieldError(
                    (model,), f"unknown model {model!r}; known: {', '.join(sorted(MODELS))}"
                )
            if not builds:
                raise FieldError((model,), "no image given (performance and/or energy)")
        return value

    @field_validator("flash")
    @classmethod
    def _flash_template(cls, value: str | None) -> str | None:
        if value is None:
            return None
        return check_template(value, FLASH_PLACEHOLDERS, frozenset({"image"}))

    @model_validator(mode="after")
    def _target_given(self) -> FirmwareConfig:
        if self.flash is not None and self.target is None and "{target}" in self.flash:
            raise FieldError(("target",), "the flash command uses {target}: set target")
        return self


class PowerCycleConfig(_Strict):
    """How the agent power-cycles a hung board."""

    method: Literal["monitor", "command", "none"] = "none"
    """``monitor``: switch the DUT supply off and on through the energy monitor;
    ``command``: run ``command``; ``none``: the board cannot be power-cycled."""
    command: str | None = None
    """Command template that cycles the power itself (off, wait, on), e.g. with uhubctl;
    placeholders {board} {serial} {port}."""
    off_s: float = Field(1.0, ge=0)
    """How long the supply stays off with method ``monitor``."""

    @field_validator("command")
    @classmethod
    def _command_template(cls, value: str | None) -> str | None:
        if value is None:
            return None
        return check_template(value, POWER_CYCLE_PLACEHOLDERS, frozenset())

    @model_validator(mode="after")
    def _command_iff_method(self) -> PowerCycleConfig:
        if self.method == "command" and self.command is None:
            raise FieldError(("command",), "method 'command' needs a command")
        if self.method != "command" and self.command is not None:
            raise FieldError(("command",), f"a command is not used with method {self.method!r}")
        return self


class SystemDescription(_Strict):
    """The board's part of a submission's ``systems/<system_desc>.json``
    (docs/measurement.md#system-description); ``model_dump(by_alias=True,
    exclude_none=True)`` gives the official keys.

    The checker requires only ``Status``; the other fields fill the results table and the
    final report (empty when missing).
    """

    status: Literal["available", "preview", "rdi"] = Field(
        "available", serialization_alias="Status"
    )
    """Availability: ``available`` (can be bought now), ``preview`` (within 180 days) or
    ``rdi`` (research, development, internal). Default: off-the-shelf boards are available."""
    board_name: str | None = Field(None, serialization_alias="Board Name")
    processor_name: str | None = Field(None, serialization_alias="Processor(s) Name")
    processor_frequencies: str | None = Field(None, serialization_alias="Processor(s) Frequencies")
    processor_memory: str | None = Field(
        None, serialization_alias="Processor memory type and capacity"
    )
    accelerator: str | None = Field(None, serialization_alias="Accelerator")
    accelerator_frequencies: str | None = Field(
        None, serialization_alias="Accelerator(s) Frequencies"
    )
    accelerator_memory: str | None = Field(
        None, serialization_alias="Accelerator memory type and capacity"
    )
    hardware_notes: str | None = Field(None, serialization_alias="Hardware Notes")
    inference_framework: str | None = Field(None, serialization_alias="Inference Framework")
    software_libraries: str | None = Field(None, serialization_alias="Software Libraries")
    software_notes: str | None = Field(None, serialization_alias="Software Notes")
    operating_system: str | None = Field(None, serialization_alias="Operating System")
    ml_model_compilers: str | None = Field(None, serialization_alias="ML Model Compiler(s)")
    general_compilers: str | None = Field(None, serialization_alias="General Compiler(s)")
    quantization_method: str | None = Field(None, serialization_alias="Quantization Method")

    @field_validator("status", mode="before")
    @classmethod
    def _any_case(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value


class BoardConfig(_Strict):
    """One board on this Pi: its DUT and, for energy mode, an interface board and an
    energy monitor."""

    id: str = Field(pattern=ID_PATTERN)
    dut: DeviceConfig
    baud: BaudConfig = Field(default_factory=BaudConfig)
    interface: DeviceConfig | None = None
    """The STM32H573I-DK interface board (energy mode)."""
    monitor: MonitorConfig | None = None
    """The energy monitor (energy mode)."""
    supply_voltage: float | None = Field(None, ge=1.8, le=3.3)
    """DUT supply in volts set by the LPM01A (1.8 to 3.3); ``None``: the benchmark's. Not with
    a JS220, which does not supply the DUT."""
    firmware: FirmwareConfig = Field(default_factory=FirmwareConfig)
    power_cycle: PowerCycleConfig = Field(default_factory=PowerCycleConfig)
    tags: dict[str, str] = Field(default_factory=dict)
    system: SystemDescription = Field(default_factory=SystemDescription)

    @model_validator(mode="after")
    def _energy_hardware(self) -> BoardConfig:
        if self.interface is not None and self.monitor is None:
            raise FieldError(
                ("interface",),
                "an interface board without an energy monitor: energy mode needs both "
                "(add monitor, or remove interface)",
            )
        if self.monitor is not None and self.interface is None:
            raise FieldError(
                ("monitor",),
                "an energy monitor without an interface board: energy mode needs both "
                "(add interface, or remove monitor)",
            )
        if self.power_cycle.method == "monitor" and self.monitor is None:
            raise FieldError(
                ("power_cycle", "method"),
                "method 'monitor' switches the DUT supply through the energy monitor, "
                "and this board has none",
            )
        if self.monitor is not None and self.monitor.kind == "js220":
            if self.power_cycle.method == "monitor":
                raise FieldError(
                    ("power_cycle", "method"),
                    "method 'monitor' switches the DUT supply through an LPM01A; a JS220 only "
                    "measures (use method 'command', or 'none')",
                )
            if self.supply_voltage is not None:
                raise FieldError(
                    ("supply_voltage",),
                    "a JS220 does not supply the DUT: set its voltage on the DUT's own supply "
                    "and remove supply_voltage",
                )
        if not self.energy_capable:
            for model, builds in self.firmware.images.items():
                if "energy" in builds:
                    raise FieldError(
                        ("firmware", "images", model, "energy"),
                        "an energy build needs an interface board and an energy monitor",
                    )
        return self

    @property
    def energy_capable(self) -> bool:
        """Whether the board can run energy mode (interface board and monitor wired)."""
        return self.interface is not None and self.monitor is not None

    def devices(self) -> list[tuple[Role, DeviceConfig]]:
        """The board's serial devices by role: the DUT, then interface and monitor if wired
        (a JS220 monitor is not a serial device: not listed)."""
        found: list[tuple[Role, DeviceConfig]] = [("dut", self.dut)]
        if self.interface is not None:
            found.append(("interface", self.interface))
        if self.monitor is not None and self.monitor.serial_device is not None:
            found.append(("monitor", self.monitor.serial_device))
        return found


def default_journal(agent: str) -> Path:
    """Where an agent keeps its journal unless the config says: the user data directory
    (``$XDG_DATA_HOME`` or ``~/.local/share``) ``/tinyfarm/agent-<id>.sqlite``."""
    base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(base) / "tinyfarm" / f"agent-{agent}.sqlite"


class AgentConfig(_Strict):
    """Everything one agent (one Raspberry Pi) needs."""

    agent: str = Field(pattern=ID_PATTERN)
    """The agent's id: an MQTT topic level."""
    broker: BrokerConfig = Field(default_factory=BrokerConfig)
    datasets: ConfigPath
    """Dataset root: ``<root>/<dataset id>/y_labels.csv`` and the files it names."""
    journal: ConfigPath | None = None
    """The agent's local journal (SQLite); always set after validation (default:
    :func:`default_journal`)."""
    sim_boards: list[ConfigPath] = Field(default_factory=list)
    """``boards.json`` files of ``farm sim`` whose devices discovery lists like USB ones."""
    heartbeat_s: float = Field(10, gt=0)
    batch_samples: int = Field(200, ge=1, le=10_000)
    """Samples per published message at most (1 turns batching off)."""
    batch_delay_s: float = Field(0.1, ge=0, le=5)
    """How long a sample may wait for others to share its message."""
    trace_chunk_values: int = Field(TRACE_CHUNK_VALUES, ge=1000, le=TRACE_CHUNK_VALUES)
    """A power trace longer than this (an sww01 stream's) is sent in chunks of this many
    samples, each a message of its own (``farm.trace``)."""
    max_failures: int = Field(3, ge=1)
    """Consecutive infrastructure failures before the board's health turns bad."""
    max_starting: int | None = Field(None, ge=1, le=1000)
    """Boards that may be starting at once (a health check, a flash, a run's ports opening),
    the others waiting their turn, for a host too slow to start them all together within
    the checks' deadlines; unset: no limit (a limit lengthens a burst's start: measured in
    bench/README.md, burst_submit.py)."""
    boards: list[BoardConfig] = Field(min_length=1)

    @model_validator(mode="after")
    def _boards_distinct(self) -> AgentConfig:
        first_use: dict[str, int] = {}
        for i, board in enumerate(self.boards):
            if board.id in first_use:
                raise FieldError(
                    ("boards", i, "id"),
                    f"board id {board.id!r} is already used by boards[{first_use[board.id]}]",
                )
            first_use[board.id] = i
        seen: list[tuple[str, Match]] = []
        for i, board in enumerate(self.boards):
            for role, device in board.devices():
                for where, match in seen:
                    if device.match.overlaps(match):
                        raise FieldError(
                            ("boards", i, role, "match"),
                            f"matches the same device as {where} ({match.describe()}): "
                            "each device belongs to one board and one role",
                        )
                seen.append((f"boards[{i}].{role}", device.match))
        self._js220s_distinct()
        if self.journal is None:
            self.journal = default_journal(self.agent)
        return self

    def _js220s_distinct(self) -> None:
        """Each JS220 belongs to one board: with two on this Pi, each needs its serial."""
        seen: list[tuple[int, str | None]] = []
        for i, board in enumerate(self.boards):
            monitor = board.monitor
            if monitor is None or monitor.kind != "js220":
                continue
            serial = monitor.js220_serial
            for j, other in seen:
                if serial is None or other is None:
                    raise FieldError(
                        ("boards", i, "monitor", "match" if serial else "kind"),
                        f"boards[{j}] uses a JS220 too: with two, give each its USB serial "
                        "number (match: {serial: ...})",
                    )
                if serial.casefold() == other.casefold():
                    raise FieldError(
                        ("boards", i, "monitor", "match", "serial"),
                        f"JS220 {serial} is already boards[{j}]'s monitor",
                    )
            seen.append((i, serial))


def load_agent_config(path: str | Path) -> AgentConfig:
    """Read and validate an agent config file.

    Raises :class:`ConfigError` whose message has one ``FILE:LINE: field: message`` line
    per problem.
    """
    return load_yaml_model(path, AgentConfig)


def dump_agent_config(config: AgentConfig, header: str | None = None) -> str:
    """The config as YAML text that :func:`load_agent_config` reads back to an equal config.

    Only what was set explicitly (and not ``None``) is written, so defaults stay defaults;
    ``header`` becomes leading comment lines.
    """
    data = config.model_dump(mode="json", exclude_unset=True, exclude_none=True)
    # No line folding: a command template stays on one line, as one would write it.
    text = yaml.safe_dump(data, sort_keys=False, allow_unicode=True, width=1 << 20)
    if header is None:
        return text
    comments = "".join(f"# {line}".rstrip() + "\n" for line in header.splitlines())
    return comments + text
