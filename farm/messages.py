"""The MQTT contract between agents and the controller: topics and message schemas.

Every message is JSON with ``"schema": "farm/v1"`` and is validated on receipt with these
pydantic models; a message that does not validate is dropped and counted by the receiver,
never acted on. Everything an agent publishes lives under ``farm/v1/agent/{agent}/``, so a
broker ACL "user X may write ``farm/v1/agent/X/#`` and read ``farm/v1/cmd/X``" confines it.

Topics (QoS 1 unless said otherwise):

=============================================================  ==========================
``farm/v1/agent/{agent}/status``                               retained; last will: offline
``farm/v1/agent/{agent}/heartbeat``                            QoS 0, every ``heartbeat_s``
``farm/v1/agent/{agent}/events``                               command acks and rejections
``farm/v1/agent/{agent}/board/{board}/status``                 retained
``farm/v1/agent/{agent}/board/{board}/run/{run}/samples``      batches of samples
``farm/v1/agent/{agent}/board/{board}/run/{run}/events``       accepted ... done
``farm/v1/agent/{agent}/board/{board}/run/{run}/trace``        a long power trace, in chunks
``farm/v1/agent/{agent}/board/{board}/console/{session}``      a console session's output
``farm/v1/cmd/{agent}``                                        controller -> agent
=============================================================  ==========================

The agent-level ``events`` topic exists because a command that cannot be tied to a board or a
run (malformed JSON, an unknown board) still needs an answer that a controller and an operator
can see (docs/architecture.md#mqtt-topics-and-messages).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Final, Literal

import msgspec
import pydantic_core
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    TypeAdapter,
    field_validator,
    model_serializer,
)
from pydantic_core import SchemaValidator

from farm.sample import Sample
from farm.storable import storable_schema, storable_struct

SCHEMA: Final = "farm/v1"
PREFIX = "farm/v1"
PROTOCOL_VERSION = 2
"""Bumped when a message changes incompatibly; the controller refuses other versions."""
MAX_COMMAND_BYTES = 64 * 1024
"""A command payload larger than this is rejected unread (no command needs more)."""

ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$"
"""Agent, board, run and command ids: safe as MQTT topic levels and as file names."""
Id = Annotated[str, Field(pattern=ID_PATTERN)]

Mode = Literal["performance", "accuracy", "energy", "latency"]
Build = Literal["performance", "energy"]
BoardState = Literal["idle", "busy", "flashing", "offline"]
Health = Literal["good", "unknown", "bad"]
AckOutcome = Literal["accepted", "rejected", "duplicate", "done", "failed"]


# -- topics -----------------------------------------------------------------------------------


def agent_status_topic(agent: str) -> str:
    """Retained agent status (its last will says ``offline``)."""
    return f"{PREFIX}/agent/{agent}/status"


def heartbeat_topic(agent: str) -> str:
    """Periodic liveness beats (QoS 0)."""
    return f"{PREFIX}/agent/{agent}/heartbeat"


def agent_events_topic(agent: str) -> str:
    """Command acknowledgements and rejections."""
    return f"{PREFIX}/agent/{agent}/events"


def board_status_topic(agent: str, board: str) -> str:
    """Retained per-board status."""
    return f"{PREFIX}/agent/{agent}/board/{board}/status"


def samples_topic(agent: str, board: str, run: str) -> str:
    """Batches of one run's samples."""
    return f"{PREFIX}/agent/{agent}/board/{board}/run/{run}/samples"


def run_events_topic(agent: str, board: str, run: str) -> str:
    """One run's events."""
    return f"{PREFIX}/agent/{agent}/board/{board}/run/{run}/events"


def trace_topic(agent: str, board: str, run: str) -> str:
    """The chunks of one run's power traces too long to travel inside their sample record."""
    return f"{PREFIX}/agent/{agent}/board/{board}/run/{run}/trace"


def console_topic(agent: str, board: str, session: str) -> str:
    """One console session's events (``opened``, the DUT's output, ``closed``)."""
    return f"{PREFIX}/agent/{agent}/board/{board}/console/{session}"


def command_topic(agent: str) -> str:
    """Where the controller sends an agent its commands."""
    return f"{PREFIX}/cmd/{agent}"


@dataclass(frozen=True, slots=True)
class Topic:
    """What an agent topic names."""

    kind: Literal[
        "status",
        "heartbeat",
        "events",
        "board_status",
        "samples",
        "run_events",
        "trace",
        "console",
    ]
    agent: str
    board: str | None = None
    run: str | None = None
    session: str | None = None


def parse_topic(topic: str) -> Topic | None:
    """The meaning of an agent topic, or ``None`` for anything else (counted as rejected)."""
    parts = topic.split("/")
    if len(parts) < 4 or parts[:3] != ["farm", "v1", "agent"]:
        return None
    agent, rest = parts[3], parts[4:]
    if rest in (["status"], ["heartbeat"], ["events"]):
        kind = rest[0]
        return Topic(kind, agent)  # type: ignore[arg-type]
    if len(rest) == 3 and rest[0] == "board" and rest[2] == "status":
        return Topic("board_status", agent, rest[1])
    if len(rest) == 5 and rest[0] == "board" and rest[2] == "run":
        if rest[4] == "samples":
            return Topic("samples", agent, rest[1], rest[3])
        if rest[4] == "events":
            return Topic("run_events", agent, rest[1], rest[3])
        if rest[4] == "trace":
            return Topic("trace", agent, rest[1], rest[3])
    if len(rest) == 4 and rest[0] == "board" and rest[2] == "console":
        return Topic("console", agent, rest[1], session=rest[3])
    return None


# -- base -------------------------------------------------------------------------------------


class Message(BaseModel):
    """Every message: versioned, strict (an unknown field is an error, not silently lost)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    schema_: Literal["farm/v1"] = Field(SCHEMA, alias="schema")

    def dumps(self) -> bytes:
        """The JSON payload (nulls kept: a field that is ``None`` is stated, not left out)."""
        return self.model_dump_json(by_alias=True).encode()


def now() -> float:
    """Unix time, the timestamp of every message."""
    return time.time()


# -- commands (controller -> agent) -----------------------------------------------------------


#: The most samples a run may have (ad01's 48,608 accuracy inferences, with room to spare);
#: also bounds what ``stored`` may list.
MAX_RUN_SAMPLES = 1_000_000


#: A run's attempt number, in a run command and every event of that execution. Optional (a
#: message without one is as valid as before) and left out of the payload when unset, so an
#: agent driven by an older controller sends what an older ingest reads.
Attempt = Annotated[int | None, Field(ge=1, le=1000, exclude_if=lambda value: value is None)]


class RunScript(BaseModel):
    """A user's test script as one run takes it (``farm.scripts``): its steps, run as
    written, and the file they came from, recorded with the run."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    source: str = Field(min_length=1, max_length=255, pattern=r"^[^/\\%]+$")
    """The script file's name."""
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    """Digest of the whole file."""
    loop: int | None = Field(None, ge=1, le=MAX_RUN_SAMPLES)
    iterations: int = Field(ge=1, le=1 << 24)
    warmups: int = Field(0, ge=0, le=1 << 24)
    reset_s: int | None = Field(None, ge=1, le=3600)


class RunOptions(BaseModel):
    """How a run is sized: the official rules by default; tests and ``--quick`` shorten them.
    Every value is bounded: a command must not be able to keep a board busy for ever."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    limit: int | None = Field(None, ge=1, le=MAX_RUN_SAMPLES)
    alt: bool = False
    windows: int = Field(5, ge=1, le=100)
    min_window_s: float = Field(10.0, ge=0, le=600)
    max_window_s: float = Field(30.0, gt=0, le=600)
    calibration_s: float = Field(0.5, gt=0, le=60)
    min_queries: int = Field(1024, ge=1, le=MAX_RUN_SAMPLES)
    min_duration_s: float = Field(60.0, ge=0, le=86_400)
    latency_inputs: int = Field(5, ge=1, le=1000)
    retries: int = Field(2, ge=0, le=10)
    """Attempts at a failed step (after recovery) before the run fails."""
    truth: str | None = Field(None, min_length=1, max_length=255, pattern=r"^[^/\\%]+$")
    """sww01: the truth file in the dataset's ``sww01`` folder (default: the official
    script's ``sww_long_test.json``)."""
    script: RunScript | None = Field(None, exclude_if=lambda value: value is None)
    """A user's test script for the run's benchmark and mode (default: the farm's); left
    out of the payload when unset, so an older agent reads the options as before."""


class _Command(Message):
    id: Id


class RunCommand(_Command):
    """Run one benchmark mode on one board."""

    type: Literal["run"]
    board: Id
    run: Id
    benchmark: str
    mode: Mode
    dataset: Id | None = None
    """A dataset set: a folder under the agent's dataset root holding ``<id>/y_labels.csv``
    (default: the root itself)."""
    options: RunOptions = RunOptions()
    stored: list[tuple[int, int]] = Field([], max_length=10_000)
    """Half-open seq ranges the controller already holds: an accuracy run resumes by
    running only the others."""
    attempt: Attempt = None
    """Which dispatch of the run this is (1, 2, ...): the agent echoes it in every event of
    the run, so the controller judges a final event only against the attempt that sent it."""

    @field_validator("stored")
    @classmethod
    def _ranges(cls, value: list[tuple[int, int]]) -> list[tuple[int, int]]:
        total = 0
        for start, end in value:
            if not 0 <= start < end <= MAX_RUN_SAMPLES:
                raise ValueError(
                    f"range [{start}, {end}) is not 0 <= start < end <= {MAX_RUN_SAMPLES}"
                )
            total += end - start
        if total > MAX_RUN_SAMPLES:
            raise ValueError(f"the ranges hold {total} seqs, more than a run has")
        return value


class CancelCommand(_Command):
    """Stop a queued or running run."""

    type: Literal["cancel"]
    run: Id


class FlashCommand(_Command):
    """Flash the firmware image configured for ``model`` and ``build``."""

    type: Literal["flash"]
    board: Id
    model: str
    build: Build = "performance"


class PowerCycleCommand(_Command):
    """Power-cycle the board with its configured method."""

    type: Literal["power-cycle"]
    board: Id


class HealthCheckCommand(_Command):
    """Check the board (``name``, ``profile``) and set its health."""

    type: Literal["health-check"]
    board: Id


#: What a console command does: open a session (queued as a board job), write one line to
#: the DUT, keep an idle session open, or close it.
ConsoleAction = Literal["open", "line", "keepalive", "close"]
#: The longest line a console writes at once (a DUT command is at most 80 characters).
MAX_CONSOLE_LINE = 1024
#: The ``closed`` reason of a session its holder closed (any other reason is an abnormal end).
CONSOLE_CLOSED_BY_HOLDER = "closed by the holder"


def console_eol(value: str) -> str:
    """``value`` if it can end a console line on the wire, else ``ValueError`` saying why: at
    most 4 characters, each one latin-1 byte (how it is written), no NUL (which would end the
    DUT's line buffer early)."""
    try:
        value.encode("latin-1")
    except UnicodeEncodeError:
        raise ValueError(f"eol {value!r}: only latin-1 characters (one byte each)") from None
    if "\0" in value or len(value) > 4:
        raise ValueError(f"eol {value!r}: at most 4 characters, no NUL")
    return value


class ConsoleCommand(_Command):
    """An interactive line session with a board's DUT (``farm board console``).

    Unlike the other commands it is neither journalled nor acknowledged on the agent's
    ``events`` topic: its answers are the session's own events on :func:`console_topic`, and
    a line sent twice (a QoS 1 redelivery) is written once, by its ``seq``."""

    type: Literal["console"]
    board: Id
    session: Id
    action: ConsoleAction
    seq: int = Field(0, ge=0, le=10_000_000)
    """``line``: the line's number in the session (1, 2, ...); the agent writes each once."""
    line: str | None = Field(None, max_length=MAX_CONSOLE_LINE)
    """``line``: the text written to the DUT, followed by the session's ``eol``."""
    eol: str = Field("%", max_length=4)
    """``open``: what ends each line on the wire (the reference firmware's commands end
    with ``%``)."""
    ready: str | None = Field("m-ready", max_length=64)
    """``open``: the line the DUT prints when it can take the next one (the reference
    firmware's ends every reply): each line waits for it. ``None``: lines go out as they
    come."""
    idle_s: float = Field(60.0, gt=0, le=3600)
    """``open``: the agent closes the session after this long without a command of it (the
    holder's console sends a keepalive well within it)."""
    holder: str | None = Field(None, max_length=64)
    """``open``: who holds the board (for the agent's log)."""

    @field_validator("eol")
    @classmethod
    def _one_byte_each(cls, value: str) -> str:
        return console_eol(value)

    @field_validator("line")
    @classmethod
    def _printable(cls, value: str | None) -> str | None:
        if value is not None and any(c in value for c in "\r\n\0"):
            raise ValueError("a console line holds no CR, LF or NUL")
        return value


class RefuseCommand(_Command):
    """The controller does not accept this agent (e.g. an incompatible protocol version)."""

    type: Literal["refuse"]
    reason: str


Command = Annotated[
    RunCommand
    | CancelCommand
    | FlashCommand
    | PowerCycleCommand
    | HealthCheckCommand
    | ConsoleCommand
    | RefuseCommand,
    Field(discriminator="type"),
]
COMMANDS: TypeAdapter[Command] = TypeAdapter(Command)
COMMAND_TYPES = ("run", "cancel", "flash", "power-cycle", "health-check", "console", "refuse")


# -- agent -> all -----------------------------------------------------------------------------


class AgentStatus(Message):
    """Retained; also the last will (state ``offline``)."""

    agent: Id
    state: Literal["online", "offline", "refused"]
    protocol: int = PROTOCOL_VERSION
    software: str | None = None
    boards: list[str] = []
    started: float | None = None
    """When the agent process started (its clock, read once): grows with every start, so it
    orders the statuses of successive starts. Ingest refuses a status without it."""
    uptime_s: float | None = None
    reason: str | None = None
    time: float = Field(default_factory=now)


class Heartbeat(Message):
    """Liveness, with the numbers an operator watches."""

    agent: Id
    uptime_s: float
    backlog: int
    """Messages journalled and not yet acknowledged by the broker."""
    counters: dict[str, int] = {}
    time: float = Field(default_factory=now)


class BoardStatus(Message):
    """Retained per-board status: state (what it is doing) kept apart from health."""

    agent: Id
    board: Id
    state: BoardState
    health: Health
    health_reason: str | None = None
    model: str | None = None
    build: str | None = None
    """The firmware profile: ``performance`` or ``energy``."""
    run: str | None = None
    last_error: str | None = None
    energy: bool = False
    """Wired for energy mode (interface board and monitor)."""
    images: dict[str, list[str]] = {}
    """Firmware images the agent can flash: model -> builds."""
    tags: dict[str, str] = {}
    system: dict[str, Any] = {}
    started: float | None = None
    """The agent process's start, as in its :class:`AgentStatus`: what orders its statuses."""
    checked: float | None = None
    """When the board's last health check ended, passed or failed (the agent's clock; every
    run starts with one): what the controller's scheduled checks go by."""
    failures: int = Field(0, ge=0)
    """Failures in a row (runs, checks) since the last pass."""
    bauds: list[Annotated[int, Field(gt=0)]] = Field([], max_length=16)
    """The DUT bauds a health check tries on the DUT's own port, in order (what bounds the
    time of a check: ``farm.board_timing.check_s``)."""
    energy_baud: int | None = Field(None, gt=0)
    """Wired for energy: the interface board's DUT-side baud its check and energy runs use."""
    time: float = Field(default_factory=now)


class CommandAck(Message):
    """The answer to every command received, on the agent-level events topic."""

    agent: Id
    command: str | None
    """The command id (``None`` when the payload had none that could be read)."""
    type: str | None = None
    outcome: AckOutcome
    reason: str | None = None
    board: str | None = None
    run: str | None = None
    detail: dict[str, Any] = {}
    time: float = Field(default_factory=now)


class ConsoleEvent(Message):
    """What a console session says, on :func:`console_topic`: ``opened`` (the DUT's port is
    open), ``output`` (lines the DUT sent, in order) and once ``closed`` with the reason (by
    the holder, idle, the port lost, or refused before it opened)."""

    agent: Id
    board: Id
    session: Id
    event: Literal["opened", "output", "closed"]
    seq: int = Field(ge=0)
    """The session's events numbered from 0: the console prints each once, in order."""
    lines: list[str] = []
    """``output``: the DUT's lines (latin-1 text, line ends removed)."""
    port: str | None = None
    baud: int | None = None
    reason: str | None = None
    time: float = Field(default_factory=now)


# -- runs -------------------------------------------------------------------------------------


#: A sample record's sww01 stream fields, left out of every other sample.
STREAM_FIELDS = (
    "stream_windows",
    "stream_length_s",
    "stream_sample_rate",
    "detections_ms",
    "duty_starts",
    "duty_stops",
)

#: Power samples a trace chunk holds at most. A trace longer than this travels apart from its
#: record, in chunks (:class:`TraceChunk`): an sww01 stream's 1,200 s at 1 kHz is 1.2 M samples,
#: some 27 MB of JSON, over what ingest takes in one message (8 MiB), whereas a chunk is at
#: most ~1.6 MB (25 bytes the longest JSON double and its comma).
TRACE_CHUNK_VALUES = 65_536
#: The most chunks one trace may have (with the agent's smallest chunks, 1,000 values, 10 M
#: samples: 2.8 hours at 1 kHz).
MAX_TRACE_CHUNKS = 10_000
#: A sample record's fields naming its power trace sent in chunks, left out of every other
#: record.
TRACE_FIELDS = ("power_length", "power_chunks", "power_digest")
#: What a trace digest looks like: SHA-256, lower-case hex (text a record may hold: it cannot
#: contain the ``},{`` ingest splits a batch's records on).
TRACE_DIGEST_PATTERN = r"^[0-9a-f]{64}$"


class SampleRecord(BaseModel):
    """One sample as published (built by :meth:`SampleBatchSchema.record`: the sample's
    ``farm.sample.Sample.to_record`` plus, in energy mode, the window's power trace)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    seq: int = Field(ge=0)
    index: int = Field(ge=0)
    segment: int | None = None
    window: int | None = None
    label: int
    results: list[float]
    count: int = 1
    warmup: int = 0
    start_us: int | None = None
    end_us: int | None = None
    elapsed_us: int | None = None
    latency_us: float | None = None
    wrapped: bool = False
    wall_s: float | None = None
    energy_j: float | None = None
    energy_window_s: float | None = None
    subset: bool | None = None
    power_samples: list[float | None] | None = None
    """Joules per monitor sample; null where the monitor sent an unreadable value (JSON has
    no NaN)."""
    power_events: list[tuple[int, int]] | None = None
    # sww01: the stream's truth entry and the interface board's logs
    # (``farm.sample.StreamCapture``), numbers only (a stored record holds no text: the names
    # come from the run's truth file). Empty and 0 for every other sample; non-null defaults,
    # so that they are not stored with the other samples.
    stream_windows: list[tuple[float, float]] = Field([], max_length=100_000)
    stream_length_s: float = Field(0.0, ge=0)
    stream_sample_rate: int = Field(0, ge=0)
    detections_ms: list[int] = Field([], max_length=10_000)
    duty_starts: list[int] = Field([], max_length=100)
    duty_stops: list[int] = Field([], max_length=100)
    # A power trace too long for one message (:data:`TRACE_CHUNK_VALUES`) is sent apart, as
    # ``power_chunks`` :class:`TraceChunk` messages on :func:`trace_topic`: the record then
    # has no ``power_samples`` but their number and digest (``farm.trace``). Unlike the
    # trace, these are part of the sample digest, so the agent's ``done`` vouches for the
    # trace too. 0 and empty for every other sample, and then not stored.
    power_length: int = Field(0, ge=0, le=MAX_TRACE_CHUNKS * TRACE_CHUNK_VALUES)
    power_chunks: int = Field(0, ge=0, le=MAX_TRACE_CHUNKS)
    power_digest: str = Field("", pattern=TRACE_DIGEST_PATTERN)

    @model_serializer(mode="wrap")
    def _without_empty_stream(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # The agent leaves the stream and chunked-trace fields out of every other sample,
        # and ingest stores a record as sent: a record re-encoded from this model must not
        # add them (the same sample would then differ from the stored one and count as a
        # conflict).
        data: dict[str, Any] = handler(self)
        for names in (STREAM_FIELDS, TRACE_FIELDS):
            if not any(data.get(name) for name in names):
                for name in names:
                    data.pop(name, None)
        return data


class SampleBatch(Message):
    """A few samples of one run, published together (at most ``BATCH_DELAY_S`` late)."""

    agent: Id
    board: Id
    run: Id
    samples: list[SampleRecord] = Field(min_length=1)
    attempt: Attempt = None
    """The run command's ``attempt`` that produced these samples (unset when the command had
    none): ingest refuses a timed run's samples of any attempt but the current one."""


def json_trace(values: Iterable[float | None]) -> list[float | None]:
    """A power trace as JSON holds it: null for a NaN sample (one the monitor lost or
    garbled: JSON has no NaN, and a payload with one would be refused as not JSON)."""
    return [None if v is None or v != v else v for v in values]


@dataclass(frozen=True, slots=True)
class StorableBatch:
    """A sample batch validated and ready to store (:meth:`SampleBatchSchema.decode`)."""

    agent: str
    board: str
    run: str
    attempt: int | None
    seqs: list[int]
    """Each record's seq, in the payload's order."""
    body: bytes
    """The records as stored, one compact JSON array: each record's keys sorted, every
    null-default field stated, the payload's own numbers (an integer stays one), no
    whitespace, so two receipts of one sample are the same bytes."""
    latencies_us: list[float | None]
    """Per record, its ``latency_us`` when it times one inference (``count`` 1 or left out:
    accuracy and latency samples), else ``None`` (a performance or energy window holds a
    mean over many inferences)."""

    def records(self) -> list[dict[str, Any]]:
        """The stored records as JSON values (what a reader of the samples hash gets)."""
        records: list[dict[str, Any]] = json.loads(self.body)
        return records


def _single_latency(latency_us: float | None, count: Any) -> float | None:
    # ``count`` 0 or left out (msgspec.UNSET is false) counts as one inference.
    return latency_us if (count or 1) == 1 else None


class SampleBatchSchema:
    """A sample batch on the wire, one description for both ends: :attr:`model`
    (``SampleBatch``, whose samples are ``SampleRecord`` objects) says what is valid; the agent
    builds each record with :meth:`record` and a batch's payload with :meth:`encode`; the
    controller validates and decodes a payload with :meth:`decode`, in one pass, to the
    records' stored form (see :func:`farm.storable.storable_schema`)."""

    def __init__(self, model: type[BaseModel]) -> None:
        self.model = model
        """The pydantic model of a batch (its ``samples`` field holds the records)."""
        schema = storable_schema(model.__pydantic_core_schema__)
        self.record_schema: dict[str, Any] = schema["fields"]["samples"]["schema"]["items_schema"]
        """The core schema :meth:`decode` validates each record with (a typed dict)."""
        self._validator = SchemaValidator(schema)
        self._decoder = msgspec.json.Decoder(storable_struct(schema, model.__name__))
        self._encoder = msgspec.json.Encoder()

    @staticmethod
    def record(sample: Sample) -> dict[str, Any]:
        """The record the agent publishes for ``sample``: its samples.jsonl object
        (``Sample.to_record``) plus, in energy mode, the window's power trace
        (:func:`json_trace`); an sww01 stream's object flattened to its numbers (the
        ``stream_*``, ``detections_ms`` and ``duty_*`` fields)."""
        record = sample.to_record()
        if sample.power_samples:
            record["power_samples"] = json_trace(sample.power_samples)
            record["power_events"] = [list(e) for e in sample.power_events]
        stream = record.pop("stream", None)
        if stream is not None:
            record.update(
                stream_windows=[list(w) for w in stream["windows"]],
                stream_length_s=stream["length_s"],
                stream_sample_rate=stream["sample_rate"],
                detections_ms=list(stream["detections_ms"]),
                duty_starts=list(stream["duty_starts"]),
                duty_stops=list(stream["duty_stops"]),
            )
        return record

    @staticmethod
    def encode(
        agent: str, board: str, run: str, records: list[dict[str, Any]], attempt: int | None = None
    ) -> bytes:
        """The payload of a batch of records (from :meth:`record`) of ``attempt``: compact
        JSON, not validated here (the receiver validates it; validating every record on the
        agent too would double its CPU per sample)."""
        body: dict[str, Any] = {
            "schema": SCHEMA,
            "agent": agent,
            "board": board,
            "run": run,
            "samples": records,
        }
        if attempt is not None:
            body["attempt"] = attempt
        return _COMPACT.encode(body).encode()

    def decode(self, payload: bytes) -> StorableBatch:
        """``payload`` validated strictly, as :attr:`model` would, to its stored form.
        Raises ``pydantic.ValidationError`` for what the model refuses and also for a number
        beyond a double's range in a float field (``1e400``, which the model reads as
        infinity and JSON cannot hold).

        msgspec decodes and validates it in one native pass to structs, which it encodes
        again in one (~0.4 ms for 200 samples, a third of pydantic-core's dicts and
        ``to_json``); a payload msgspec refuses goes through :meth:`decode_plain`, which
        accepts exactly what the model does."""
        try:
            batch = self._decoder.decode(payload)
        except msgspec.MsgspecError:
            return self._storable(self.decode_plain(payload))
        samples = batch.samples
        return StorableBatch(
            agent=batch.agent,
            board=batch.board,
            run=batch.run,
            attempt=batch.attempt,
            seqs=[r.seq for r in samples],
            body=self._encoder.encode(samples),
            latencies_us=[_single_latency(r.latency_us, r.count) for r in samples],
        )

    def decode_plain(self, payload: bytes) -> dict[str, Any]:
        """``payload`` validated strictly by pydantic-core, as :attr:`model` would, to plain
        dicts: ``schema_``, ``agent``, ``board``, ``run`` and ``samples``, each record with
        sorted keys, every null-default field stated, and the payload's own numbers. Raises
        ``pydantic.ValidationError`` as :meth:`decode` does."""
        # The validator's schema is a typed dict (:func:`storable_schema`): it returns a dict.
        batch: dict[str, Any] = self._validator.validate_json(payload, strict=True)
        return batch

    @staticmethod
    def _storable(batch: dict[str, Any]) -> StorableBatch:
        records = batch["samples"]
        return StorableBatch(
            agent=batch["agent"],
            board=batch["board"],
            run=batch["run"],
            attempt=batch["attempt"],
            seqs=[r["seq"] for r in records],
            body=pydantic_core.to_json(records),
            latencies_us=[_single_latency(r.get("latency_us"), r.get("count")) for r in records],
        )


#: The sample batch of this protocol version.
SAMPLE_BATCH = SampleBatchSchema(SampleBatch)


class TraceChunk(Message):
    """One piece of a sample's power trace, sent apart from its record (on
    :func:`trace_topic`, before the record): chunk ``chunk`` of the record's
    ``power_chunks``, its values in order. Ingest stores each chunk once, by (seq, chunk),
    for a run that accepts the sample's seq and attempt (as it stores samples); the
    controller joins them back into the record before scoring (``farm.trace``)."""

    agent: Id
    board: Id
    run: Id
    seq: int = Field(ge=0, lt=MAX_RUN_SAMPLES)
    """The sample whose trace this is."""
    chunk: int = Field(ge=0, lt=MAX_TRACE_CHUNKS)
    values: list[float | None] = Field(min_length=1, max_length=TRACE_CHUNK_VALUES)
    """Joules per monitor sample (null: unreadable), as in ``power_samples``."""
    attempt: Attempt = None
    """The run command's ``attempt`` (unset when the command had none)."""


class TraceChunkSchema:
    """A trace chunk on the wire, both ends: the agent encodes one with :meth:`encode`, the
    controller validates and decodes one with :meth:`decode`, strictly, to plain values of
    the payload (as :meth:`SampleBatchSchema.decode` does for samples)."""

    def __init__(self) -> None:
        self._validator = SchemaValidator(storable_schema(TraceChunk.__pydantic_core_schema__))

    @staticmethod
    def encode(
        agent: str,
        board: str,
        run: str,
        seq: int,
        chunk: int,
        values: Iterable[float | None],
        attempt: int | None = None,
    ) -> bytes:
        """The payload of chunk ``chunk`` of sample ``seq``'s trace (``values``, NaN sent as
        null): compact JSON, validated by the receiver."""
        body: dict[str, Any] = {
            "schema": SCHEMA,
            "agent": agent,
            "board": board,
            "run": run,
            "seq": seq,
            "chunk": chunk,
            "values": json_trace(values),
        }
        if attempt is not None:
            body["attempt"] = attempt
        return json.dumps(body, separators=(",", ":"), allow_nan=False).encode()

    def decode(self, payload: bytes) -> dict[str, Any]:
        """``payload`` validated strictly, as :class:`TraceChunk` would, to a dict of the
        payload's own values (``schema_``, ``agent``, ``board``, ``run``, ``seq``, ``chunk``,
        ``values``, ``attempt``). Raises ``pydantic.ValidationError`` for what the model
        refuses and for a number beyond a double's range."""
        chunk: dict[str, Any] = self._validator.validate_json(payload, strict=True)
        return chunk


#: The trace chunk of this protocol version.
TRACE_CHUNK = TraceChunkSchema()


class RunInfoRecord(BaseModel):
    """What the runner decided and observed (``agent.runner.RunInfo``), for scoring."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    count: int | None = None
    warmup: int = 0
    calibration: list[tuple[int, int]] = []
    loop_wall_s: float = 0.0
    last_issue_s: float = 0.0


class _RunEvent(Message):
    agent: Id
    board: Id
    run: Id
    attempt: Attempt = None
    """The run command's ``attempt``, echoed (unset when the command had none)."""
    time: float = Field(default_factory=now)


class Accepted(_RunEvent):
    """The run is queued on the board (``position`` runs ahead of it)."""

    event: Literal["accepted"]
    command: str
    position: int = 0


class FirmwareIdentity(BaseModel):
    """What produced a run's results, as the agent knows it when the run starts: the image
    file the agent's config names for the firmware the DUT reports (its SHA-256 and file
    name; ``None`` when the config has no image for it, so the board runs firmware the farm
    did not flash), the DUT's own ``profile`` and ``name`` answers, and the agent's
    software version. Every text is bounded: it ends up in Prometheus labels."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    image: str | None = Field(None, min_length=1, max_length=255)
    """The image's file name (no directories: they say where a Pi keeps it, not what it is)."""
    sha256: str | None = Field(None, pattern=r"^[0-9a-f]{64}$")
    """The image file's SHA-256, lower-case hex."""
    profile: str | None = Field(None, max_length=120)
    """The DUT's ``m-profile-[...]`` answer (e.g. ``ulp-mlperf``)."""
    name: str | None = Field(None, max_length=120)
    """The DUT's ``m-name-dut-[...]`` answer (the vendor string)."""
    software: str | None = Field(None, max_length=64)
    """The agent's tinyfarm version."""


#: Left out of the payload when unset, so an agent that has none sends what it sent before.
_OptionalFirmware = Annotated[
    FirmwareIdentity | None, Field(exclude_if=lambda value: value is None)
]


class Started(_RunEvent):
    """The health check passed and the first input is on its way."""

    event: Literal["started"]
    model: str
    build: str
    total: int | None
    """Samples the run has, those the controller already holds (``stored``) included."""
    eta_s: float | None = None
    dataset: str
    seq_limit: int | None = None
    """Every seq of the run is below this (``None``: not known in advance, as for a latency
    run without a limit): ingest refuses samples at or above it."""
    firmware: _OptionalFirmware = None
    """What the run's results come from (left out when unset, as from an older agent)."""


class ProgressEvent(_RunEvent):
    """Samples produced so far and the wire-model ETA."""

    event: Literal["progress"]
    done: int
    total: int | None
    eta_s: float | None = None


class LogEvent(_RunEvent):
    """Something an operator should see in the run's log (a flash, a recovery)."""

    event: Literal["log"]
    level: Literal["info", "warning", "error"] = "info"
    message: str


class Failed(_RunEvent):
    """The run ended without its result. ``kind``: ``input`` (bad request, missing dataset,
    wrong firmware that cannot be flashed), ``device`` (the board failed) or
    ``infrastructure`` (port gone, monitor failed)."""

    event: Literal["error"]
    kind: Literal["input", "device", "infrastructure"]
    reason: str
    count: int = 0
    last_seq: int | None = None


class Done(_RunEvent):
    """The run finished: ``count`` samples sent in this execution with seqs ``first_seq`` to
    ``last_seq``, and the digest of exactly those samples (see :func:`sample_digest`)."""

    event: Literal["done"]
    count: int
    digest: str
    first_seq: int | None = None
    last_seq: int | None = None
    skipped: int = 0
    """Samples not run because the controller already held them (``stored``)."""
    info: RunInfoRecord = RunInfoRecord()


class Cancelled(_RunEvent):
    """The run was cancelled; the board is idle again."""

    event: Literal["cancelled"]
    count: int = 0
    last_seq: int | None = None


class Interrupted(_RunEvent):
    """The agent restarted during the run: everything up to ``last_seq`` was journalled and
    will be (or was) published; the controller can resume from there."""

    event: Literal["interrupted"]
    last_seq: int | None
    reason: str


RunEvent = Annotated[
    Accepted | Started | ProgressEvent | LogEvent | Failed | Done | Cancelled | Interrupted,
    Field(discriminator="event"),
]
RUN_EVENTS: TypeAdapter[RunEvent] = TypeAdapter(RunEvent)


# -- sample digest ----------------------------------------------------------------------------

#: Fields the digest leaves out: the energy traces are bulky and not part of the identity (a
#: trace sent in chunks is in it all the same, through its record's ``power_digest``).
DIGEST_EXCLUDES = frozenset({"power_samples", "power_events", "subset"})


#: json.dumps with these options builds an encoder per call; the agent encodes per sample.
_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"))
_COMPACT = json.JSONEncoder(separators=(",", ":"))


def canonical(record: Mapping[str, Any]) -> bytes:
    """One record's canonical bytes: sorted keys, no whitespace, nulls dropped."""
    kept = {k: v for k, v in record.items() if k not in DIGEST_EXCLUDES and v is not None}
    return _CANONICAL.encode(kept).encode()


class SampleDigest:
    """SHA-256 over the canonical records in seq order; the agent updates it as samples are
    produced, the controller recomputes it from what it stored."""

    def __init__(self) -> None:
        self._hash = hashlib.sha256()

    def update(self, record: Mapping[str, Any]) -> None:
        """Add the next record (callers feed them in seq order)."""
        self._hash.update(canonical(record))
        self._hash.update(b"\n")

    def hexdigest(self) -> str:
        """The digest so far."""
        return self._hash.hexdigest()


def sample_digest(records: Iterable[Mapping[str, Any]]) -> str:
    """The digest of a set of records, whatever order they are given in."""
    digest = SampleDigest()
    for record in sorted(records, key=lambda r: r["seq"]):
        digest.update(record)
    return digest.hexdigest()
