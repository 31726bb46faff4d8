"""Ingest's one-pass sample-batch parsing to the stored form
(``controller.ingest.parse.parse_sample_batch``, by ``farm.messages.SAMPLE_BATCH``: msgspec,
else pydantic-core) against the path they replace: ``pydantic_core.from_json`` plus strict
``SampleBatch`` validation, and each record stored as its own JSON values with every
null-default field stated (``json.dumps`` with sorted keys). Both must accept and reject the
same payloads for the same reasons, and store the same values, of the same JSON types (an
integer sent for a float field stays an integer, or the agent's digest would not match)."""

from __future__ import annotations

import json
import math
from typing import Any

import pydantic_core
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from controller.ingest.parse import Rejected, parse_sample_batch
from controller.ingest.store import check_splittable, split_records
from farm.messages import (
    SAMPLE_BATCH,
    SCHEMA,
    SampleBatch,
    SampleBatchSchema,
    SampleRecord,
    sample_digest,
)
from farm.storable import storable_schema

NULLS = {name for name, field in SampleRecord.model_fields.items() if field.default is None}


def reference(payload: bytes) -> tuple[str, list[dict[str, Any]] | None]:
    """The previous ingest's outcome: ``ok`` with the raw records, or the rejection reason."""
    try:
        raw = pydantic_core.from_json(payload, allow_inf_nan=False)
    except (ValueError, RecursionError):
        return "bad_json", None
    try:
        SampleBatch.model_validate_json(payload, strict=True)
    except ValidationError:
        return "invalid_sample_batch", None
    return "ok", raw["samples"]


def outcome(payload: bytes) -> tuple[str, list[dict[str, Any]] | None]:
    try:
        return "ok", parse_sample_batch(payload).records()
    except Rejected as rejected:
        return rejected.reason, None


def stored_records(samples: list[dict[str, Any]]) -> list[str]:
    """What ingest stores for a batch of ``samples``, one JSON text per record."""
    return split_records(parse_sample_batch(payload_of(samples)).body)


def single_latencies(records: list[dict[str, Any]]) -> list[Any]:
    """Each record's latency when it times one inference (what the histogram observes)."""
    return [r.get("latency_us") if (r.get("count") or 1) == 1 else None for r in records]


def typed(value: Any) -> str:
    """JSON text that tells 1 from 1.0 (``==`` does not), sorted keys."""
    return json.dumps(value, sort_keys=True)


def payload_of(samples: Any, **overrides: Any) -> bytes:
    body = {"schema": SCHEMA, "agent": "a1", "board": "b1", "run": "r1", "samples": samples}
    body.update(overrides)
    return json.dumps(body, separators=(",", ":")).encode()


def check_stored(payload: bytes) -> None:
    """Both paths agree on ``payload``, and what is stored is the payload's records with their
    nulls stated, value for value and type for type."""
    want, raw = reference(payload)
    got, records = outcome(payload)
    has_infinity = raw is not None and "Infinity" in json.dumps(raw)
    if has_infinity:
        # A number beyond a double's range (1e400): parsed as infinity, which the previous
        # path stored as the non-JSON `Infinity`; now rejected.
        assert got == "bad_json"
        return
    assert got == want, payload[:300]
    if raw is None:
        return
    assert records is not None
    expected = [{**dict.fromkeys(NULLS), **record} for record in raw]
    assert [typed(r) for r in records] == [typed(r) for r in expected]
    assert all(list(r) == sorted(r) for r in records)
    batch = parse_sample_batch(payload)
    # pydantic-core's path (what a payload msgspec refuses goes through) stores the same.
    plain = SAMPLE_BATCH.decode_plain(payload)["samples"]
    assert [typed(r) for r in plain] == [typed(r) for r in expected]
    assert batch.seqs == [r["seq"] for r in raw]
    assert batch.latencies_us == single_latencies(raw)
    stored = split_records(batch.body)
    assert len(stored) == len(raw)
    assert [typed(json.loads(s)) for s in stored] == [typed(r) for r in expected]
    # The digest of what is stored is the digest of what was sent.
    assert sample_digest(json.loads(s) for s in stored) == sample_digest(raw)


def record(seq: int = 0, **fields: Any) -> dict[str, Any]:
    return {"seq": seq, "index": 3, "label": 1, "results": [0.25, 0.75], **fields}


# -- examples -----------------------------------------------------------------------------------


def test_an_integer_stays_an_integer_and_nulls_are_stated() -> None:
    (stored,) = stored_records([record(results=[1, 0.5, 0], latency_us=250, count=1)])
    assert stored == (
        '{"count":1,"elapsed_us":null,"end_us":null,"energy_j":null,'
        '"energy_window_s":null,"index":3,"label":1,"latency_us":250,"power_events":null,'
        '"power_samples":null,"results":[1,0.5,0],"segment":null,"seq":0,"start_us":null,'
        '"subset":null,"wall_s":null,"window":null}'
    )
    # A non-null default the sender left out stays out: the digest keeps non-null values.
    assert "warmup" not in stored and "wrapped" not in stored


def test_typical_records_are_stored_as_the_previous_version_stored_them() -> None:
    """Byte for byte (so a replay across an upgrade is a duplicate by bytes, not only by
    value), for the numbers samples hold: Python and pydantic-core write floats alike except
    below 1e-4, where Python pads the exponent (1e-05 against 0.00001)."""
    records = [
        record(seq, results=[0.001, 0.387, 0.05, 1.0], latency_us=181189.0, start_us=10**6)
        for seq in range(5)
    ] + [record(9, energy_j=0.0123, energy_window_s=10.0, power_samples=[0.01, None, 0.0125])]
    stored = stored_records(records)
    previous = [
        json.dumps({**dict.fromkeys(NULLS), **r}, sort_keys=True, separators=(",", ":"))
        for r in records
    ]
    assert stored == previous


@pytest.mark.parametrize(
    ("samples", "overrides", "reason"),
    [
        ([record(seq="0")], {}, "invalid_sample_batch"),
        ([record(extra=1)], {}, "invalid_sample_batch"),
        ([record(results=[True])], {}, "invalid_sample_batch"),
        ([record(label=1.0)], {}, "invalid_sample_batch"),
        ([record(seq=-1)], {}, "invalid_sample_batch"),
        ([record(power_events=[[1, 2, 3]])], {}, "invalid_sample_batch"),
        ([record(power_samples=[0.1, "x"])], {}, "invalid_sample_batch"),
        ([{k: v for k, v in record().items() if k != "label"}], {}, "invalid_sample_batch"),
        ([], {}, "invalid_sample_batch"),
        ([record()], {"schema": "farm/v2"}, "invalid_sample_batch"),
        ([record()], {"agent": "no spaces"}, "invalid_sample_batch"),
        ([record()], {"extra": 1}, "invalid_sample_batch"),
    ],
)
def test_invalid_batches_are_rejected_as_before(
    samples: list[dict[str, Any]], overrides: dict[str, Any], reason: str
) -> None:
    payload = payload_of(samples, **overrides)
    assert reference(payload)[0] == reason
    assert outcome(payload)[0] == reason


@pytest.mark.parametrize(
    "payload",
    [
        payload_of([record(latency_us=250)]).replace(b'"latency_us":250', b'"latency_us":NaN'),
        payload_of([record(latency_us=250)]).replace(b"250", b"-Infinity"),
        b'{"schema": "farm/v1", "agent": ',
        b"\xff\xfe\x00garbage",
        b"[" * 100_000 + b"]" * 100_000,
    ],
)
def test_what_is_not_json_is_bad_json(payload: bytes) -> None:
    assert reference(payload)[0] == "bad_json"
    assert outcome(payload)[0] == "bad_json"


def test_a_number_beyond_a_double_is_rejected_not_stored_as_infinity() -> None:
    payload = payload_of([record(latency_us=250)]).replace(b"250", b"1e400")
    assert reference(payload)[0] == "ok"  # the previous path stored `Infinity` here
    assert outcome(payload)[0] == "bad_json"
    # An integer that large in a float field is a (JSON) integer, stored as sent.
    big = payload_of([record(latency_us=10**400)])
    check_stored(big)


def test_payload_key_order_and_stated_nulls_do_not_change_the_stored_bytes() -> None:
    """Two receipts of one sample are the same bytes: one as the agent sends it, one through
    the pydantic model (other key order, every field stated, 1 -> 1.0 aside)."""
    sent = record(latency_us=250.5, start_us=1, end_us=2)
    model = json.loads(SampleRecord.model_validate(sent).model_dump_json())
    shuffled = dict(reversed(list(sent.items())))
    # The fields with non-null defaults: stored only when stated.
    defaults = {
        "count": 1,
        "warmup": 0,
        "wrapped": False,
        "stream_windows": [],
        "stream_length_s": 0,
        "stream_sample_rate": 0,
        "detections_ms": [],
        "duty_starts": [],
        "duty_stops": [],
    }
    stored = [stored_records([r])[0] for r in (sent, shuffled, {**model, **defaults})]
    assert stored[0] == stored[1]
    assert json.loads(stored[2]) == {**json.loads(stored[0]), **defaults}


def test_a_payload_msgspec_refuses_but_the_model_takes_is_stored_through_pydantic_core() -> None:
    """A duplicate key: the model takes its last value; msgspec checks every one, refuses
    the first, and pydantic-core's path stores what the model took."""
    payload = payload_of([record(label=2)]).replace(b'"label":2', b'"label":"x","label":2')
    assert reference(payload)[0] == "ok"
    (stored,) = split_records(parse_sample_batch(payload).body)
    assert json.loads(stored)["label"] == 2
    check_stored(payload)


@pytest.mark.parametrize("value", ["a1\n", "a1\r", " a1", "a" * 129, "é"])
def test_an_id_is_matched_to_its_end_as_by_the_model(value: str) -> None:
    """msgspec matches a pattern with Python's ``re``, whose ``$`` also matches before a final
    newline; the model's (Rust) does not: the mirrored pattern ends in ``\\Z``."""
    payload = payload_of([record()], agent=value)
    assert reference(payload)[0] == outcome(payload)[0] == "invalid_sample_batch"


# -- any payload --------------------------------------------------------------------------------

numbers = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
)
values = st.one_of(
    numbers,
    st.none(),
    st.booleans(),
    st.text(max_size=3),
    st.lists(numbers, max_size=4),
    st.lists(st.lists(st.integers(0, 9), min_size=1, max_size=3), max_size=3),
)
fields = st.sampled_from([*SampleRecord.model_fields, "other"])
good_records = st.fixed_dictionaries(
    {
        "seq": st.integers(0, 10**6),
        "index": st.integers(0, 10**6),
        "label": st.integers(-5, 10**12),
        "results": st.lists(numbers, max_size=12),
    },
    optional={
        "segment": st.one_of(st.none(), st.integers(0, 500)),
        "window": st.one_of(st.none(), st.integers(0, 9)),
        "count": st.integers(0, 10**6),
        "warmup": st.integers(0, 9),
        "start_us": st.one_of(st.none(), st.integers(0, 2**40)),
        "latency_us": st.one_of(st.none(), numbers),
        "wrapped": st.booleans(),
        "energy_j": st.one_of(st.none(), numbers),
        "subset": st.one_of(st.none(), st.booleans()),
        "power_samples": st.one_of(st.none(), st.lists(st.one_of(st.none(), numbers))),
        "power_events": st.one_of(
            st.none(), st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 1)))
        ),
    },
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(good_records, min_size=1, max_size=5))
def test_valid_batches_store_exactly_what_was_sent(samples: list[dict[str, Any]]) -> None:
    payload = payload_of(samples)
    assert reference(payload)[0] == "ok"
    check_stored(payload)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(good_records, min_size=1, max_size=3),
    st.integers(0, 2),
    fields,
    values,
    st.booleans(),
)
def test_altered_batches_are_judged_as_before(
    samples: list[dict[str, Any]], which: int, field: str, value: Any, drop: bool
) -> None:
    altered = dict(samples[which % len(samples)])
    if drop:
        altered.pop(field, None)
    else:
        altered[field] = value
    samples[which % len(samples)] = altered
    check_stored(payload_of(samples))


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200) | st.text(max_size=60).map(str.encode))
def test_any_bytes_are_judged_as_before(payload: bytes) -> None:
    check_stored(payload)


def test_floats_keep_their_value_through_the_stored_bytes() -> None:
    for value in (5e-324, 1e-7, 1.5e-5, 0.1, 1 / 3, 1e16, 1.7976931348623157e308, -0.0):
        (stored,) = stored_records([record(latency_us=value)])
        got = json.loads(stored)["latency_us"]
        assert got == value and math.copysign(1, got) == math.copysign(1, value)


# -- a contract this cannot mirror fails loudly --------------------------------------------------


def test_a_schema_that_cannot_be_mirrored_is_refused() -> None:
    class WithDict(BaseModel):
        model_config = ConfigDict(extra="forbid")
        values: dict[str, int]

    class Stripping(BaseModel):
        model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)
        name: str

    for model in (WithDict, Stripping):
        with pytest.raises(TypeError):
            storable_schema(model.__pydantic_core_schema__)

    class TextRecord(BaseModel):
        model_config = ConfigDict(extra="forbid")
        seq: int
        note: str

    class TextBatch(BaseModel):
        samples: list[TextRecord]

    # Text of a pattern that could hold the "},{" records are split on.
    class WordRecord(BaseModel):
        model_config = ConfigDict(extra="forbid")
        seq: int
        note: str = Field("", pattern=r"^[^\n]*$")

    class WordBatch(BaseModel):
        samples: list[WordRecord]

    for batch in (TextBatch, WordBatch):
        with pytest.raises(TypeError, match="cannot be split"):
            check_splittable(SampleBatchSchema(batch).record_schema)
    # A trace digest, hex digits only, can be split around.
    check_splittable(SAMPLE_BATCH.record_schema)
