"""Parsing and validating the agents' messages: strictly, with the topic's pydantic model, and
for sample batches (most of the traffic) in one pass that also yields what is stored; and the
checks that raise :class:`Rejected` (counted as ``rejected_<reason>``)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import pydantic_core
from pydantic import BaseModel, ValidationError

from controller import keys
from farm.messages import (
    RUN_EVENTS,
    SAMPLE_BATCH,
    TRACE_CHUNK,
    AgentStatus,
    BoardStatus,
    CommandAck,
    Heartbeat,
    StorableBatch,
    Topic,
    TraceChunk,
)


class Rejected(Exception):
    """A message is not accepted; ``reason`` names the counter (``rejected_<reason>``)."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(reason, detail)
        self.reason = reason
        self.detail = detail


#: Counter label per topic kind: ``accepted_<label>`` and ``rejected_invalid_<label>``.
LABELS: Mapping[str, str] = {
    "status": "agent_status",
    "heartbeat": "heartbeat",
    "events": "command_ack",
    "board_status": "board_status",
    "samples": "sample_batch",
    "run_events": "run_event",
    "trace": "trace_chunk",
}

#: Strict validation: a string is not an int here. What is stored is the payload's own text
#: (and for samples its own JSON values), so lax coercion would let ``"5"`` through as an int
#: that every later reader of the stored text sees as a string.
_VALIDATORS: Mapping[str, Callable[[bytes], Any]] = {
    "status": lambda p: AgentStatus.model_validate_json(p, strict=True),
    "heartbeat": lambda p: Heartbeat.model_validate_json(p, strict=True),
    "events": lambda p: CommandAck.model_validate_json(p, strict=True),
    "board_status": lambda p: BoardStatus.model_validate_json(p, strict=True),
    "run_events": lambda p: RUN_EVENTS.validate_json(p, strict=True),
}


def parse_json(payload: bytes) -> Any:
    """The payload's JSON value; raises :class:`Rejected` (``bad_json``) if it is not JSON."""
    try:
        # pydantic's parser: the same values as json.loads, in half the time. NaN and
        # Infinity are not JSON (the agent sends null for an unreadable value), and stored
        # they would break any other reader of the records.
        return pydantic_core.from_json(payload, allow_inf_nan=False)
    except (ValueError, RecursionError) as exc:
        raise Rejected("bad_json", str(exc)[:200]) from None


def validate(kind: str, payload: bytes) -> Any:
    """The message of a topic ``kind`` (not ``samples``: :func:`parse_sample_batch`), validated
    strictly; raises :class:`Rejected` (``invalid_<label>``) if it does not validate."""
    try:
        return _VALIDATORS[kind](payload)
    except ValidationError as exc:
        raise Rejected(f"invalid_{LABELS[kind]}", validation_summary(exc)) from None


def parse_sample_batch(payload: bytes) -> StorableBatch:
    """A ``SampleBatch`` payload validated (strictly) in one pass to its stored form
    (``farm.messages.SAMPLE_BATCH.decode``); raises :class:`Rejected` (``bad_json`` or
    ``invalid_sample_batch``) otherwise. The same JSON is accepted as by the model, except a
    number beyond a double's range in a float field (``1e400``), which the model reads as
    infinity."""
    try:
        return SAMPLE_BATCH.decode(payload)
    except ValidationError as exc:
        raise _refusal(payload, SAMPLE_BATCH.model, "samples", exc) from None


def parse_trace_chunk(payload: bytes) -> dict[str, Any]:
    """A ``TraceChunk`` payload validated (strictly) as the values to store
    (``farm.messages.TRACE_CHUNK.decode``); raises :class:`Rejected` (``bad_json`` or
    ``invalid_trace_chunk``) otherwise, as :func:`parse_sample_batch` does."""
    try:
        return TRACE_CHUNK.decode(payload)
    except ValidationError as exc:
        raise _refusal(payload, TraceChunk, "trace", exc) from None


def _refusal(
    payload: bytes, model: type[BaseModel], kind: str, fast_error: ValidationError
) -> Rejected:
    """Why a payload the one-pass decoder of topic ``kind`` refused is rejected: the models
    say why, as for every other kind of message (this path costs what the decoder saves, but
    only for what is not stored)."""
    try:
        pydantic_core.from_json(payload, allow_inf_nan=False)
    except (ValueError, RecursionError) as exc:
        return Rejected("bad_json", str(exc)[:200])
    try:
        model.model_validate_json(payload, strict=True)
    except ValidationError as exc:
        return Rejected(f"invalid_{LABELS[kind]}", validation_summary(exc))
    # The model would take it, but a value cannot be stored as JSON (infinity).
    return Rejected("bad_json", validation_summary(fast_error))


def validation_summary(exc: ValidationError, limit: int = 3) -> str:
    """The first few pydantic errors as ``loc: msg`` (never the input: it may be huge)."""
    parts = [
        f"{'.'.join(str(p) for p in error['loc']) or '<root>'}: {error['msg']}"
        for error in exc.errors(include_url=False, include_input=False)[:limit]
    ]
    if exc.error_count() > limit:
        parts.append(f"(+{exc.error_count() - limit} more)")
    return "; ".join(parts)[:500]


def acceptance(topic: Topic, agent: str | None, board: str | None, state: str | None) -> None:
    """Raise :class:`Rejected` unless the run exists, was dispatched to the topic's agent and
    board, and is not closed."""
    if agent is None and board is None and state is None:
        raise Rejected("unknown_run", f"run {topic.run} does not exist")
    if agent != topic.agent or board != topic.board:
        raise Rejected(
            "not_dispatched_here",
            f"run {topic.run} is dispatched to agent={agent} board={board}",
        )
    if state in keys.TERMINAL:
        raise Rejected("run_closed", f"run {topic.run} is {state}")


def check_ids(topic: Topic, agent: str, board: str | None, run: str | None) -> None:
    """Raise :class:`Rejected` unless the ids in a message are its topic's."""
    for field, value, expected in (
        ("agent", agent, topic.agent),
        ("board", board, topic.board),
        ("run", run, topic.run),
    ):
        if expected is not None and value != expected:
            raise Rejected(
                "topic_mismatch", f"{field} {value!r} in a message on {expected!r}'s topic"
            )
