"""Parsing and validating the agents' messages: strictly, with the topic's pydantic model, and
for sample batches (most of the traffic) in one pass that also yields what is stored; and the
checks that raise :class:`Rejected` (counted as ``rejected_<reason>``)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import pydantic_core
from pydantic import ValidationError
from pydantic_core import SchemaValidator, core_schema

from controller import keys
from farm.messages import (
    RUN_EVENTS,
    AgentStatus,
    BoardStatus,
    CommandAck,
    Heartbeat,
    SampleBatch,
    Topic,
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
}

#: Strict validation: a string is not an int here. The stored samples are the payload's own
#: JSON values (see :func:`parse_sample_batch`), so lax coercion would let ``"5"`` through as a seq.
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


#: Numeric constraints a float field may carry (copied to the integer alternative).
_BOUNDS = ("ge", "gt", "le", "lt")
#: Keys of a model field that :func:`_storable` mirrors (or that do not change validation).
_FIELD_KEYS = frozenset({"type", "schema", "metadata", "validation_alias", "serialization_alias"})


def _storable(schema: dict[str, Any]) -> dict[str, Any]:
    """``schema`` (a pydantic core schema of the message contract) turned into one that
    validates the same JSON but returns what :func:`encode_records` needs: plain dicts with
    sorted keys and every null-default field stated, and the payload's own numbers.

    * a model becomes a typed dict with the same fields (sorted), aliases and extra
      behaviour; a field with a null default is filled with null when missing, one with
      another default stays missing. So every stored record states its nulls
      (``farm.sample.Sample.from_record`` needs ``segment`` and ``window``) and two receipts
      of one sample compare equal whether or not their nulls were written (the digest drops
      nulls, so filling them changes no digest); but storing ``"count":1`` where the agent
      sent nothing would change the digest, which keeps non-null values;
    * a float becomes "int, else float", so an integer stays an integer: pydantic turns an
      integer 5 into 5.0 for a float field, which would change the digest the agent computed
      over what it sent (``farm.messages.sample_digest`` of the stored values must equal the
      agent's). A float must be finite: JSON has no NaN or Infinity, and a literal beyond a
      double's range (``1e400``) would be parsed as infinity and stored as ``Infinity``.

    Any other kind of node, or an option this does not know, raises ``TypeError``: a change
    of the contract that this cannot mirror exactly must fail loudly (at import), not
    validate differently from the models."""
    kind = schema["type"]
    if kind == "model":
        config = schema.get("config", {})
        fields = schema["schema"]
        if (
            fields["type"] != "model-fields"
            or set(config) - {"title", "extra_fields_behavior"}
            or schema.get("custom_init")
            or schema.get("root_model")
            or schema.get("post_init")
            or fields.get("computed_fields")
            or {"extras_schema", "extras_keys_schema"} & set(fields)
        ):
            raise TypeError(f"model {schema.get('cls')!r}: options this cannot mirror")
        converted = {}
        for name in sorted(fields["fields"]):
            field = fields["fields"][name]
            if set(field) - _FIELD_KEYS:
                raise TypeError(f"field {name!r}: options this cannot mirror")
            inner, required = field["schema"], True
            if inner["type"] == "default":
                if set(inner) - {"type", "schema", "default"}:
                    raise TypeError(f"field {name!r}: a default this cannot mirror")
                required = False
                if inner["default"] is None:
                    inner = core_schema.with_default_schema(
                        _storable(inner["schema"]), default=None
                    )
                else:
                    inner = _storable(inner["schema"])
            else:
                inner = _storable(inner)
            converted[name] = core_schema.typed_dict_field(
                inner, required=required, validation_alias=field.get("validation_alias")
            )
        return core_schema.typed_dict_schema(
            converted, extra_behavior=config.get("extra_fields_behavior", "ignore")
        )
    if kind == "float":
        if set(schema) - {"type", "strict", "allow_inf_nan", *_BOUNDS}:
            raise TypeError(f"float schema {schema!r}: options this cannot mirror")
        bounds = {k: v for k, v in schema.items() if k in _BOUNDS}
        # Left to right: an integer literal is taken by the first choice and stays an int,
        # any other number fails it (strict) and is taken by the second.
        return core_schema.union_schema(
            [
                core_schema.int_schema(strict=True, **bounds),
                core_schema.float_schema(strict=True, allow_inf_nan=False, **bounds),
            ],
            mode="left_to_right",
        )
    if kind in ("int", "bool", "str", "literal"):
        return schema
    if kind == "nullable":
        return {**schema, "schema": _storable(schema["schema"])}
    if kind == "list":
        return {**schema, "items_schema": _storable(schema["items_schema"])}
    if kind == "tuple":
        return {**schema, "items_schema": [_storable(s) for s in schema["items_schema"]]}
    raise TypeError(f"core schema {kind!r}: not mirrored for storing")


BATCH_SCHEMA = _storable(SampleBatch.__pydantic_core_schema__)
#: ``SampleBatch`` (strict) in one pass over the payload, to storable dicts: the same JSON is
#: accepted, except a number beyond a double's range in a float field (``1e400``), which the
#: model reads as infinity.
_STORABLE_BATCH = SchemaValidator(BATCH_SCHEMA)


def parse_sample_batch(payload: bytes) -> dict[str, Any]:
    """A ``SampleBatch`` payload validated (strictly) as dicts ready to store: ``schema_``,
    ``agent``, ``board``, ``run``, and ``samples``, each a record with sorted keys, every
    null-default field stated, and the payload's own numbers (an integer stays one). Raises
    :class:`Rejected` (``bad_json`` or ``invalid_sample_batch``) otherwise."""
    try:
        return _STORABLE_BATCH.validate_json(payload, strict=True)
    except ValidationError as exc:
        fast_error = exc
    # Rejected: the models say why, as for every other kind of message (this path costs
    # what the one above saves, but only for what is not stored).
    try:
        pydantic_core.from_json(payload, allow_inf_nan=False)
    except (ValueError, RecursionError) as exc:
        raise Rejected("bad_json", str(exc)[:200]) from None
    try:
        SampleBatch.model_validate_json(payload, strict=True)
    except ValidationError as exc:
        raise Rejected("invalid_sample_batch", validation_summary(exc)) from None
    # The model would take it, but a value cannot be stored as JSON (infinity).
    raise Rejected("bad_json", validation_summary(fast_error)) from None


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
