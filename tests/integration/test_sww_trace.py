"""An sww01 stream of the official long truth file (1,200 s: a 1.2 M-sample power trace and
37,500 frames of activations) from the agent's journal to the scored run, every part real: the
agent's journal, outbox and sample batcher, a private Mosquitto, ``farm controller ingest``
on Redis (``FARM_TEST_CONTROLLER_REDIS``, flushed), and the controller's run job and scoring.

The record is built directly (no 20-minute stream); the trace travels in chunks
(``farm.trace``), each message under ingest's payload limit, and comes back bit-identical.
A duplicated chunk is counted and ignored; a missing one leaves the run incomplete, and the
run job dispatches it again instead of scoring it."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import math
import random
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
import redis

from agent.journal import Journal
from agent.outbox import Outbox, SampleBatcher
from controller import keys
from controller.follower import Follower
from controller.ingest import Ingest
from controller.ingest.handlers import MAX_PAYLOAD_BYTES
from controller.jobs import POLL_S, RunJob
from controller.results import finish_run, stored_samples
from controller.settings import Settings
from controller.store import samples
from controller.traces import missing_chunks, with_traces
from farm import scoring
from farm.messages import (
    COMMANDS,
    SAMPLE_BATCH,
    TRACE_CHUNK,
    Accepted,
    AgentStatus,
    Done,
    RunCommand,
    RunInfoRecord,
    Started,
    agent_status_topic,
    command_topic,
    run_events_topic,
    sample_digest,
    samples_topic,
    trace_topic,
)
from farm.sample import Sample
from farm.sww_truth import LONG_TRUTH, official_truth
from farm.trace import detach_trace
from tests.integration.controller_lab import REDIS_URL
from tests.integration.farm_procs import Mosquitto
from tests.unit.test_sww_results import stream_sample as scored_stream

AGENT, BOARD = "pi-sww", "sww-1"
#: The official long file's entry: what the stream played.
ENTRY = official_truth(LONG_TRUTH).entries[0]
#: A 1,200 s stream's frames (32 ms each) and its 1 kHz power trace, a little beyond the wav.
FRAMES = 37_500
TRACE = 1_200_000


def stream_sample(trace: int = TRACE, frames: int = FRAMES, seed: int = 3) -> Sample:
    """The stream's one sample as the runner yields it: the board's logs of the controller's
    sww01 scoring tests, a 1,200 s stream's activations, and a power trace of full-precision
    doubles (two unreadable, NaN, outside the window between the last two events; the edge
    values of a double inside it)."""
    rng = random.Random(seed)
    power = [rng.uniform(2e-6, 9e-6) for _ in range(trace)]
    power[7] = power[-2] = math.nan
    start, stop = 500, trace - 100
    power[start + 1 : start + 4] = [5e-324, 0.1 + 0.2, 2.2250738585072014e-308]
    return dataclasses.replace(
        scored_stream(),
        results=tuple(float(rng.randint(-128, 127)) for _ in range(frames)),
        wall_s=ENTRY.length_s + 12.5,
        energy_j=math.fsum(power[start:stop]),
        energy_window_s=(stop - start) / 1000,
        power_samples=tuple(power),
        power_events=((1, start), (2, stop)),
    )


def same_trace(got: list[float | None], sent: tuple[float, ...]) -> bool:
    """Bit-identical floats, null standing for NaN (JSON has none)."""
    return len(got) == len(sent) and all(
        (g is None and math.isnan(s)) or (g is not None and g.hex() == s.hex())
        for g, s in zip(got, sent, strict=True)
    )


def run_hash(run: str, **fields: Any) -> dict[str, Any]:
    """An sww01 run as the controller stores it (options: the official long truth file)."""
    return {
        "id": run,
        "sweep": "sw-trace",
        "agent": AGENT,
        "board": BOARD,
        "benchmark": "sww01",
        "mode": "energy",
        "options": "{}",
        "dataset": "",
        "state": "queued",
        "attempts": 0,
        **fields,
    }


@pytest.fixture
async def broker(tmp_path: Path) -> AsyncIterator[Mosquitto]:
    mosquitto = Mosquitto(tmp_path / "mqtt")
    await mosquitto.start()
    yield mosquitto
    await mosquitto.stop()


@pytest.fixture
async def db() -> AsyncIterator[redis.Redis]:
    client = redis.Redis.from_url(REDIS_URL, decode_responses=True)
    client.flushdb()
    yield client
    client.flushdb()
    client.close()


@pytest.fixture
async def ingest(broker: Mosquitto, db: redis.Redis, tmp_path: Path) -> AsyncIterator[Ingest]:
    settings = Settings(REDIS_URL, broker.url, tmp_path / "results")
    running = Ingest(settings, client_id=f"test-ingest-{uuid.uuid4().hex[:8]}")
    task = asyncio.get_running_loop().create_task(running.run())
    await asyncio.wait_for(running.subscribed.wait(), 10)
    yield running
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def eventually(check: Callable[[], object], what: str, within: float = 60) -> None:
    give_up = time.monotonic() + within
    while not check():
        if time.monotonic() > give_up:
            raise AssertionError(f"timed out after {within} s waiting for {what}")
        await asyncio.sleep(0.05)


async def pump(broker: Mosquitto, journal: Journal) -> None:
    """Publish the journal's backlog as the agent's outbox does, until the broker has it all."""
    outbox = Outbox(journal)
    async with aiomqtt.Client("127.0.0.1", broker.port, identifier=AGENT) as client:
        task = asyncio.get_running_loop().create_task(outbox.pump(client))
        try:
            await eventually(lambda: journal.backlog_count == 0, "the journal sent")
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def test_the_official_long_stream_fits_through_ingest_and_comes_back_exact(
    broker: Mosquitto, db: redis.Redis, ingest: Ingest, tmp_path: Path
) -> None:
    run = "sw-trace-r000"
    db.hset(keys.run(run), mapping=run_hash(run, state="running", attempts=1, seq_limit=1))
    sample = stream_sample()
    # The agent: the record and its chunks journalled by the run's sample batcher.
    journal = await Journal.open(tmp_path / "journal.sqlite")
    batcher = SampleBatcher(Outbox(journal), AGENT, BOARD, run, attempt=1)
    record, chunks = detach_trace(SAMPLE_BATCH.record(sample))
    agent_digest = sample_digest([record])
    await batcher.add(record, chunks)
    await batcher.close()
    # The agent restarts before the broker took any of it: its journal still holds it all.
    await journal.close()
    journal = await Journal.open(tmp_path / "journal.sqlite")
    try:
        entries = await journal.pending(limit=1000)
        assert [e.topic for e in entries] == [trace_topic(AGENT, BOARD, run)] * 19 + [
            samples_topic(AGENT, BOARD, run)
        ]
        sizes = [len(e.payload) for e in entries]
        assert max(sizes) < MAX_PAYLOAD_BYTES / 4, sizes
        await pump(broker, journal)
    finally:
        await journal.close()
    await eventually(
        lambda: (
            ingest.counters["accepted_samples"] == 1
            and ingest.counters["accepted_trace_chunk"] == 19
        ),
        f"the stream stored ({dict(ingest.counters)})",
    )
    assert not any(k.startswith("rejected_") for k in ingest.counters), dict(ingest.counters)

    # The controller: the stored record vouched for by the agent's digest, its trace whole.
    stored = list(samples(db, run).values())
    assert sample_digest(stored) == agent_digest
    assert (stored[0]["power_samples"], stored[0]["power_chunks"]) == (None, 19)
    assert missing_chunks(db, run, stored) == []
    (joined,) = with_traces(db, run, stored)
    assert same_trace(joined["power_samples"], sample.power_samples)
    assert joined["results"] == list(sample.results)
    (scored,) = stored_samples([joined], official_truth(LONG_TRUTH))
    window = scoring.energy_window(scored.power_samples, scored.power_events, 1)
    sent = scoring.energy_window(sample.power_samples, sample.power_events, 1)
    assert (window.energy_j, window.elapsed_s) == (sent.energy_j, sent.elapsed_s)
    assert not math.isnan(window.energy_j)

    # The official files: results.json holds the whole trace and the activations.
    folder = tmp_path / "results" / "sww-1" / "sww01" / "energy"
    summary = finish_run(db.hgetall(keys.run(run)), [joined], RunInfoRecord(), folder)
    assert summary.valid, summary.problems
    assert summary.power_mw == pytest.approx(
        sent.energy_j / sent.elapsed_s * 1e3, rel=1e-4
    )  # as printed in results.txt
    (element,) = json.loads((folder / "results.json").read_text())
    assert same_trace(
        [None if math.isnan(v) else v for v in element["power"]["samples"]], sample.power_samples
    )
    assert element["activations"] == [int(v) for v in sample.results]
    assert (folder / "energy_inf_000.png").stat().st_size > 0


async def test_trace_chunks_are_stored_once_and_refused_where_samples_would_be(
    broker: Mosquitto, db: redis.Redis, ingest: Ingest
) -> None:
    run = "sw-trace-r001"
    # The run's second dispatch: a timed run takes only its current attempt's messages.
    db.hset(keys.run(run), mapping=run_hash(run, state="running", attempts=2, seq_limit=1))
    topic = trace_topic(AGENT, BOARD, run)

    def chunk(
        values: list[float | None],
        *,
        agent: str = AGENT,
        of: str = run,
        seq: int = 0,
        number: int = 0,
        attempt: int = 2,
    ) -> bytes:
        return TRACE_CHUNK.encode(agent, BOARD, of, seq, number, values, attempt)

    first = chunk([1.5e-6, None, 2])
    messages = [
        (topic, first),
        (topic, first),  # a resend
        (topic, chunk([1.5e-6, None, 2.0])),  # the same values, spelled otherwise
        (topic, chunk([9.9e-6, None, 2])),  # other values: the first stay
        (topic, chunk([1.0], seq=1)),  # at the run's seq limit
        (topic, chunk([1.0], attempt=1)),  # the earlier dispatch's
        (topic, chunk([1.0], attempt=3)),  # a dispatch that has not happened
        (trace_topic(AGENT, BOARD, "sw-nope"), chunk([1.0], of="sw-nope")),
        (trace_topic("pi-other", BOARD, run), chunk([1.0], agent="pi-other")),
        (topic, chunk([1.0], number=-1)),
        (topic, chunk([1.0], of="sw-trace-r002")),
    ]
    async with aiomqtt.Client("127.0.0.1", broker.port) as client:
        for name, payload in messages:
            await client.publish(name, payload, qos=1)
    expected = {
        "accepted_trace_chunk": 4,
        "duplicate_trace_chunks": 2,
        "conflicting_trace_chunks": 1,
        "rejected_seq_out_of_range": 1,
        "rejected_wrong_attempt": 2,
        "rejected_unknown_run": 1,
        "rejected_not_dispatched_here": 1,
        "rejected_invalid_trace_chunk": 1,
        "rejected_topic_mismatch": 1,
    }
    await eventually(
        lambda: all(ingest.counters[k] >= v for k, v in expected.items()),
        f"{expected} (counted: {dict(ingest.counters)})",
    )
    assert {k: ingest.counters[k] for k in expected} == expected
    assert db.hgetall(keys.run_trace(run)) == {"0:0": "[1.5e-6,null,2]"}
    # Redis has the totals of every ingest process.
    assert db.hget(keys.INGEST_COUNTERS, "duplicate_trace_chunks") == "2"


async def agent_stand_in(
    broker: Mosquitto, streams: dict[int, Sample], chunk_values: int, drop: dict[int, int]
) -> None:
    """An agent that runs each run command by publishing what the real agent publishes for
    the attempt's stream (``streams[attempt]``: its journal's messages, encoded by the same
    code), leaving out chunk ``drop[attempt]`` of an attempt and sending that attempt's first
    chunk twice."""
    async with aiomqtt.Client("127.0.0.1", broker.port, identifier=AGENT) as client:
        await client.subscribe(command_topic(AGENT), qos=1)
        status = AgentStatus(agent=AGENT, state="online", started=time.time(), boards=[BOARD])
        await client.publish(agent_status_topic(AGENT), status.dumps(), qos=1, retain=True)
        async for message in client.messages:
            command = COMMANDS.validate_json(bytes(message.payload))
            if not isinstance(command, RunCommand):
                continue
            ids = {"agent": AGENT, "board": BOARD, "run": command.run, "attempt": command.attempt}
            events = run_events_topic(AGENT, BOARD, command.run)
            trace = trace_topic(AGENT, BOARD, command.run)
            assert command.attempt is not None
            record, chunks = detach_trace(
                SAMPLE_BATCH.record(streams[command.attempt]), chunk_values
            )
            await client.publish(
                events, Accepted(event="accepted", command=command.id, **ids).dumps(), qos=1
            )
            started = Started(
                event="started", model="sww01", build="energy", total=1, seq_limit=1,
                dataset="sww01", **ids,
            )  # fmt: skip
            await client.publish(events, started.dumps(), qos=1)
            sent = [n for n in range(len(chunks)) if n != drop.get(command.attempt)]
            for n in [sent[0], *sent]:
                payload = TRACE_CHUNK.encode(
                    AGENT, BOARD, command.run, 0, n, chunks[n], command.attempt
                )
                await client.publish(trace, payload, qos=1)
            batch = SAMPLE_BATCH.encode(AGENT, BOARD, command.run, [record], command.attempt)
            await client.publish(samples_topic(AGENT, BOARD, command.run), batch, qos=1)
            done = Done(
                event="done",
                count=1,
                digest=sample_digest([record]),
                first_seq=0,
                last_seq=0,
                info=RunInfoRecord(count=1, loop_wall_s=ENTRY.length_s + 12.5),
                **ids,
            )
            await client.publish(events, done.dumps(), qos=1)


def run_to_end(settings: Settings, run: str) -> str:
    """What the controller does with a run, in this thread: its dispatch job, the follower's
    ticks and its score job, until it ends; its state."""
    client = redis.Redis.from_url(REDIS_URL, decode_responses=True)
    job = RunJob(client, settings, run)
    job.execute()
    follower = Follower(REDIS_URL, settings)
    while (state := client.hget(keys.run(run), "state")) not in keys.TERMINAL:
        follower.follow_all(time.time())
        if client.hget(keys.run(run), "phase") == "scoring":
            job.score()
        time.sleep(POLL_S)
    return str(state)


async def test_a_missing_chunk_leaves_the_run_incomplete_until_a_dispatch_sends_it(
    broker: Mosquitto, db: redis.Redis, ingest: Ingest, tmp_path: Path
) -> None:
    run = "sw-trace-r003"
    # Each dispatch measures its own trace.
    first, sample = stream_sample(trace=30_000, seed=1), stream_sample(trace=30_000, seed=2)
    db.hset(keys.run(run), mapping=run_hash(run))
    agent = asyncio.get_running_loop().create_task(
        agent_stand_in(broker, {1: first, 2: sample}, chunk_values=4_096, drop={1: 2})
    )
    try:
        await eventually(lambda: db.hget(keys.agent(AGENT), "state") == "online", "agent online")
        settings = Settings(REDIS_URL, broker.url, tmp_path / "results")
        state = await asyncio.wait_for(asyncio.to_thread(run_to_end, settings, run), 120)
    finally:
        agent.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await agent
    final = db.hgetall(keys.run(run))
    assert (state, final["attempts"]) == ("completed", "2"), final
    # The first dispatch was not scored: its trace lacked a chunk. The second's is, whole
    # (none of the first's chunks stands in for one of its own).
    assert json.loads(final["reasons"]) == ["1 power trace chunk(s) never arrived (seq:chunk 0:2)"]
    # Each dispatch sent its first chunk twice: counted, and ignored.
    assert ingest.counters["duplicate_trace_chunks"] == 2
    assert ingest.counters["conflicting_trace_chunks"] == 0
    summary = json.loads(final["summary"])
    window = scoring.energy_window(sample.power_samples, sample.power_events, 1)
    assert summary["power_mw"] == pytest.approx(window.energy_j / window.elapsed_s * 1e3, 1e-4)
    (element,) = json.loads((Path(summary["artifacts"]) / "results.json").read_text())
    assert same_trace(
        [None if math.isnan(v) else v for v in element["power"]["samples"]], sample.power_samples
    )
