"""The MQTT contract: topics, command validation, sample digests, and the agent's pure
helpers that build on it (health model, reconnect backoff)."""

from __future__ import annotations

import json
import random

import pytest
from pydantic import ValidationError

from agent.health import BoardHealth
from farm.backoff import Backoff
from farm.messages import (
    COMMANDS,
    RUN_EVENTS,
    SAMPLE_BATCH,
    Accepted,
    AgentStatus,
    BoardStatus,
    Cancelled,
    CommandAck,
    Done,
    Failed,
    Heartbeat,
    Interrupted,
    LogEvent,
    ProgressEvent,
    RunCommand,
    SampleBatch,
    SampleDigest,
    SampleRecord,
    Started,
    Topic,
    canonical,
    parse_topic,
    run_events_topic,
    sample_digest,
    samples_topic,
)
from farm.sample import Sample


def test_topics_round_trip_through_the_parser() -> None:
    assert parse_topic(samples_topic("pi1", "b1", "r1")) == Topic("samples", "pi1", "b1", "r1")
    assert parse_topic(run_events_topic("pi1", "b1", "r1")) == Topic(
        "run_events", "pi1", "b1", "r1"
    )
    assert parse_topic("farm/v1/agent/pi1/status") == Topic("status", "pi1")
    assert parse_topic("farm/v1/agent/pi1/board/b1/status") == Topic("board_status", "pi1", "b1")
    for foreign in (
        "farm/v2/agent/pi1/status",
        "farm/v1/agent/pi1/board/b1",
        "other",
        "farm/v1/agent/pi1/x",
    ):
        assert parse_topic(foreign) is None


def test_commands_validate_strictly() -> None:
    run = COMMANDS.validate_python(
        {
            "schema": "farm/v1",
            "type": "run",
            "id": "c1",
            "board": "b1",
            "run": "r1",
            "benchmark": "kws01",
            "mode": "accuracy",
            "stored": [[0, 10], [20, 25]],
        }
    )
    assert isinstance(run, RunCommand) and run.options.min_queries == 1024
    assert run.stored == [(0, 10), (20, 25)]
    bad = [
        {
            "type": "run",
            "id": "c1",
            "board": "b1",
            "run": "r1",
            "benchmark": "kws01",
            "mode": "fast",
        },
        {
            "type": "run",
            "id": "c1",
            "board": "b/1",
            "run": "r1",
            "benchmark": "kws01",
            "mode": "accuracy",
        },
        {"type": "cancel", "id": "c1", "run": "r1", "extra": 1},
        {"type": "flash", "id": "", "board": "b1", "model": "kws01"},
    ]
    for payload in bad:
        with pytest.raises(ValidationError):
            COMMANDS.validate_python({"schema": "farm/v1", **payload})


def test_run_events_and_status_serialise_with_the_schema_field() -> None:
    status = AgentStatus(agent="pi1", state="offline", reason="connection lost")
    data = json.loads(status.dumps())
    assert data["schema"] == "farm/v1" and data["state"] == "offline" and data["uptime_s"] is None
    event = RUN_EVENTS.validate_python(
        {
            "schema": "farm/v1",
            "agent": "a",
            "board": "b",
            "run": "r",
            "event": "done",
            "count": 3,
            "digest": "x",
        }
    )
    assert event.event == "done" and event.skipped == 0


def test_sample_digest_is_order_free_and_sensitive_to_every_value() -> None:
    records = [
        Sample(
            seq=i, index=i, segment=None, window=None, label=i % 3, results=(0.1 * i, 0.9)
        ).to_record()
        for i in range(5)
    ]
    shuffled = records[:]
    random.Random(1).shuffle(shuffled)
    assert sample_digest(records) == sample_digest(shuffled)
    # Incremental (the agent) equals batch (the controller), also after a JSON round trip.
    incremental = SampleDigest()
    for r in records:
        incremental.update(r)
    assert incremental.hexdigest() == sample_digest(json.loads(json.dumps(records)))
    changed = [dict(r) for r in records]
    changed[2]["results"] = [0.2000001, 0.9]
    assert sample_digest(changed) != sample_digest(records)
    # Energy traces and the subset marker are not part of a sample's identity.
    traced = [{**r, "power_samples": [1.0], "subset": True} for r in records]
    assert sample_digest(traced) == sample_digest(records)
    assert canonical({"b": 1, "a": None, "c": [1.5]}) == b'{"b":1,"c":[1.5]}'


def test_one_sample_batch_schema_builds_encodes_and_decodes_both_ends() -> None:
    """What the agent builds and encodes (``SAMPLE_BATCH.record``/``encode``) is a valid
    ``SampleBatch``, in the wire format of a hand-written compact JSON batch, and ingest's
    decode gives back the same values (an integer stays an integer, the nulls stated)."""
    plain = Sample(
        seq=0, index=7, segment=None, window=None, label=2, results=(0.25, 1), elapsed_us=250
    )
    energy = Sample(
        seq=1,
        index=8,
        segment=None,
        window=0,
        label=1,
        results=(0.5,),
        energy_j=0.0123,
        power_samples=(0.01, 0.0125),
        power_events=((0, 1), (2, 0)),
    )
    records = [SAMPLE_BATCH.record(plain), SAMPLE_BATCH.record(energy)]
    assert "power_samples" not in records[0]
    assert records[1]["power_samples"] == [0.01, 0.0125]
    assert records[1]["power_events"] == [[0, 1], [2, 0]]
    payload = SAMPLE_BATCH.encode("pi1", "b1", "r1", records)
    body = {"schema": "farm/v1", "agent": "pi1", "board": "b1", "run": "r1", "samples": records}
    assert payload == json.dumps(body, separators=(",", ":")).encode()
    batch = SampleBatch.model_validate_json(payload, strict=True)
    assert [s.seq for s in batch.samples] == [0, 1]
    decoded = SAMPLE_BATCH.decode(payload)
    assert (decoded.agent, decoded.board, decoded.run) == ("pi1", "b1", "r1")
    assert decoded.seqs == [0, 1]
    nulls = {k for k, f in SampleRecord.model_fields.items() if f.default is None}
    for got, sent in zip(decoded.records(), records, strict=True):
        # As JSON text, which tells 1 from 1.0 (``==`` does not) and a tuple from nothing.
        assert json.dumps(got) == json.dumps({**dict.fromkeys(nulls), **sent}, sort_keys=True)
    with pytest.raises(ValidationError):
        SAMPLE_BATCH.decode(payload.replace(b'"label":2', b'"label":"2"'))


def test_health_follows_lava() -> None:
    health = BoardHealth(max_failures=3)
    assert health.health == "unknown"
    health.passed()
    assert (health.health, health.reason) == ("good", None)
    health.failed("timeout")
    health.failed("timeout")
    assert health.health == "unknown" and not health.refuses_runs
    health.failed("timeout")
    assert health.health == "bad" and health.refuses_runs and health.reason == "timeout"
    health.passed()
    assert health.health == "good" and health.failures == 0
    health.check_failed("no answer")
    assert health.refuses_runs


def test_backoff_grows_to_its_cap_with_jitter_and_resets() -> None:
    backoff = Backoff(base_s=0.5, cap_s=8.0)
    rng = random.Random(4)
    delays = [backoff.next_delay(rng) for _ in range(8)]
    ceilings = [min(8.0, 0.5 * 2**n) for n in range(8)]
    assert all(c / 2 <= d <= c for d, c in zip(delays, ceilings, strict=True))
    assert len(set(delays)) == len(delays)  # jittered
    backoff.reset()
    assert backoff.next_delay(rng) <= 0.5


def test_run_commands_cannot_ask_for_the_impossible() -> None:
    base = {
        "schema": "farm/v1",
        "type": "run",
        "id": "c",
        "board": "b",
        "run": "r",
        "benchmark": "kws01",
        "mode": "accuracy",
    }
    hostile = [
        {"stored": [[5, 2]]},  # reversed
        {"stored": [[-1, 2]]},
        {"stored": [[0, 10**15]]},  # would build a set of 10**15 seqs
        {"stored": [[0, 600_000], [600_000, 1_000_000], [0, 10]]},  # more than a run has
        {"options": {"min_duration_s": float("inf")}},  # a run that never ends
        {"options": {"calibration_s": float("nan")}},
        {"options": {"min_queries": 10**9}},
        {"dataset": "../etc"},
        {"dataset": "x" * 300},
    ]
    for extra in hostile:
        with pytest.raises(ValidationError):
            COMMANDS.validate_python({**base, **extra})
    ok = COMMANDS.validate_python({**base, "stored": [[0, 48_608]], "dataset": "full-set"})
    assert ok.stored == [(0, 48_608)]


def test_every_message_reads_back_what_it_wrote() -> None:
    common = {"agent": "a", "board": "b", "run": "r"}
    events = [
        Accepted(event="accepted", command="c", **common),
        Started(
            event="started", model="kws01", build="performance", total=None, dataset="d", **common
        ),
        ProgressEvent(event="progress", done=1, total=None, **common),
        LogEvent(event="log", message="m", **common),
        Failed(event="error", kind="device", reason="x", **common),
        Done(event="done", count=0, digest="d", **common),
        Cancelled(event="cancelled", **common),
        Interrupted(event="interrupted", last_seq=None, reason="restart", **common),
    ]
    for event in events:
        assert RUN_EVENTS.validate_json(event.dumps()) == event
    others = [
        (AgentStatus, AgentStatus(agent="a", state="online")),
        (BoardStatus, BoardStatus(agent="a", board="b", state="idle", health="unknown")),
        (Heartbeat, Heartbeat(agent="a", uptime_s=1.0, backlog=0)),
        (CommandAck, CommandAck(agent="a", command=None, outcome="rejected", reason="x")),
    ]
    for kind, message in others:
        assert kind.model_validate_json(message.dumps()) == message
