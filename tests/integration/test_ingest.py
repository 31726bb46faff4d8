"""`farm controller ingest` against a real Mosquitto (private, one per module) and a real Redis
(database 14 of the local server, flushed around every test; one test runs a Redis of its own
to stop and restart it). Messages are published the way an agent publishes them."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
import pytest_asyncio
import redis.asyncio as aioredis

from controller import keys
from controller.ingest import Ingest
from controller.ingest.ordering import Partition, order_key
from controller.settings import Settings
from farm.messages import (
    COMMANDS,
    PROTOCOL_VERSION,
    SAMPLE_BATCH,
    Accepted,
    AgentStatus,
    BoardStatus,
    CommandAck,
    Done,
    Heartbeat,
    Interrupted,
    ProgressEvent,
    RefuseCommand,
    SampleBatch,
    SampleDigest,
    SampleRecord,
    Started,
    agent_events_topic,
    agent_status_topic,
    board_status_topic,
    command_topic,
    heartbeat_topic,
    run_events_topic,
    sample_digest,
    samples_topic,
)
from farm.sample import Sample
from tests.integration.farm_procs import Mosquitto, PrivateRedis

pytestmark = pytest.mark.asyncio(loop_scope="module")

REDIS_URL = "redis://127.0.0.1:6379/14"
AGENT, BOARD = "lab1", "b1"


# -- fixtures and helpers ---------------------------------------------------------------------


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def broker(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Mosquitto]:
    mosquitto = Mosquitto(tmp_path_factory.mktemp("ingest-mqtt"))
    await mosquitto.start()
    yield mosquitto
    await mosquitto.stop()


@pytest_asyncio.fixture(loop_scope="module")
async def db() -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(REDIS_URL, decode_responses=True)
    await client.flushdb()
    yield client
    await client.flushdb()
    await client.aclose()


@contextlib.asynccontextmanager
async def serving(
    broker: Mosquitto,
    *,
    redis_url: str = REDIS_URL,
    group: str | None = None,
    client_id: str | None = None,
    share: bool | None = None,
    forget: bool = True,
    broker_url: str | None = None,
    make: Callable[..., Ingest] = Ingest,
    partition: Partition | None = None,
) -> AsyncIterator[Ingest]:
    """An Ingest task, subscribed; cancelled at the end (and its broker session removed, so
    it does not collect the later tests' messages, unless ``forget`` is false).
    ``share``: Ingest's default unless given; ``broker_url``: where ingest connects (a
    :class:`Tap` in front of ``broker``); ``make``: the class (or a factory taking Ingest's
    arguments)."""
    settings = Settings(redis_url, broker_url or broker.url, Path("/nonexistent"))
    client_id = client_id or f"test-ingest-{uuid.uuid4().hex[:8]}"
    group = group or f"g{uuid.uuid4().hex[:8]}"
    options: dict[str, Any] = {} if share is None else {"share": share}
    if partition is not None:
        options["partition"] = partition
    ingest = make(settings, group=group, client_id=client_id, **options)
    task = asyncio.get_running_loop().create_task(ingest.run())
    try:
        await asyncio.wait_for(ingest.subscribed.wait(), 10)
        yield ingest
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        if forget:
            async with aiomqtt.Client("127.0.0.1", broker.port, identifier=client_id):
                pass  # a clean session under the same id replaces the persistent one


@pytest_asyncio.fixture(loop_scope="module")
async def ingest(broker: Mosquitto, db: aioredis.Redis) -> AsyncIterator[Ingest]:
    async with serving(broker) as running:
        yield running


@pytest_asyncio.fixture(loop_scope="module")
async def pub(broker: Mosquitto) -> AsyncIterator[aiomqtt.Client]:
    async with aiomqtt.Client("127.0.0.1", broker.port) as client:
        client.pending_calls_threshold = 10_000
        yield client


async def eventually(
    check: Callable[[], Awaitable[object] | object], what: str, within: float = 10
) -> Any:
    """Poll ``check`` (sync or async) until it returns something truthy."""
    loop = asyncio.get_running_loop()
    give_up = loop.time() + within
    while True:
        value = check()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if loop.time() > give_up:
            raise AssertionError(f"timed out after {within} s waiting for {what}")
        await asyncio.sleep(0.02)


async def counted(ingest: Ingest, **expected: int) -> None:
    """Wait until the ingest's own counters reach ``expected``."""
    try:
        await eventually(
            lambda: all(ingest.counters[k] >= v for k, v in expected.items()), f"{expected}"
        )
    except AssertionError as exc:
        raise AssertionError(f"{exc}; counters: {dict(ingest.counters)}") from None
    for name, value in expected.items():
        assert ingest.counters[name] == value, (name, dict(ingest.counters))


async def dispatch(
    db: aioredis.Redis,
    run: str,
    *,
    agent: str = AGENT,
    board: str = BOARD,
    state: str = "dispatched",
) -> None:
    """A run hash as a worker leaves it after dispatching."""
    await db.hset(
        keys.run(run),
        mapping={
            "id": run,
            "agent": agent,
            "board": board,
            "benchmark": "kws",
            "mode": "accuracy",
            "state": state,
            "attempts": 1,
        },
    )


def samples(count: int, start: int = 0) -> list[Sample]:
    """Accuracy-like samples; integer results and latencies on purpose (pydantic would turn
    them into floats, and the digest must be over what the agent sent)."""
    return [
        Sample(
            seq=seq,
            index=seq * 3,
            segment=None,
            window=None,
            label=seq % 12,
            results=(1, 0) if seq % 5 == 0 else (0.125 * (seq % 8), 1 - 0.125 * (seq % 8)),
            latency_us=250 if seq % 7 == 0 else 250.5 + seq,
            start_us=1000 * seq,
            end_us=1000 * seq + 250,
            elapsed_us=250,
        )
        for seq in range(start, start + count)
    ]


def agent_records(items: list[Sample]) -> list[dict[str, Any]]:
    """What the agent publishes per sample (``BoardWorker``: ``SAMPLE_BATCH.record``)."""
    return [SAMPLE_BATCH.record(sample) for sample in items]


def agent_batch(
    run: str, records: list[dict[str, Any]], *, agent: str = AGENT, attempt: int | None = None
) -> bytes:
    """A batch encoded as the agent's ``SampleBatcher`` encodes it (``SAMPLE_BATCH.encode``)."""
    return SAMPLE_BATCH.encode(agent, BOARD, run, records, attempt)


async def publish_all(client: aiomqtt.Client, messages: list[tuple[str, bytes]]) -> None:
    """Publish at QoS 1, a few dozen in flight."""
    for start in range(0, len(messages), 50):
        chunk = messages[start : start + 50]
        await asyncio.gather(*(client.publish(t, p, qos=1) for t, p in chunk))


# -- samples ------------------------------------------------------------------------------------


async def test_samples_are_stored_once_whatever_is_replayed(
    ingest: Ingest, db: aioredis.Redis, pub: aiomqtt.Client
) -> None:
    run = "run-idem"
    await dispatch(db, run)
    records = agent_records(samples(200))
    topic = samples_topic(AGENT, BOARD, run)
    before = time.time()
    await pub.publish(topic, agent_batch(run, records), qos=1)
    await counted(ingest, accepted_samples=200, accepted_sample_batch=1)
    # A board streaming samples is seen now, whatever its last status's age.
    assert float(await db.hget(keys.board(BOARD), "last_seen")) >= before
    stored = await db.hgetall(keys.run_samples(run))
    assert len(stored) == 200
    assert await db.hget(keys.run(run), "done") == "200"
    assert json.loads(stored["7"])["latency_us"] == 250  # an int stays an int

    # The journal's replay (byte-identical), and the same samples re-sent through the pydantic
    # model (nulls written out, other batch boundaries): nothing changes.
    model_batch = SampleBatch(
        agent=AGENT,
        board=BOARD,
        run=run,
        samples=[SampleRecord.model_validate(r) for r in records[150:]],
    )
    await publish_all(
        pub,
        [(topic, agent_batch(run, records))] * 2
        + [(topic, agent_batch(run, records[:10]))] * 3
        + [(topic, model_batch.dumps())],
    )
    # 200 * 2 + 10 * 3 re-sends, and the model's 50 (its 1.0 equals the 1 stored).
    await counted(ingest, accepted_samples=200, duplicate_samples=400 + 30 + 50)
    assert await db.hgetall(keys.run_samples(run)) == stored
    assert await db.hget(keys.run(run), "done") == "200"

    # A different value for a stored seq: the first is kept, the conflict counted.
    changed = dict(records[5], results=[0.5, 0.5])
    await pub.publish(topic, agent_batch(run, [changed, records[6]]), qos=1)
    await counted(ingest, conflicting_samples=1, duplicate_samples=481)
    assert await db.hgetall(keys.run_samples(run)) == stored

    counters = await db.hgetall(keys.INGEST_COUNTERS)
    assert counters["accepted_samples"] == "200"
    assert counters["duplicate_samples"] == "481"
    assert counters["conflicting_samples"] == "1"
    assert "rejected_internal" not in counters


async def test_stored_samples_give_the_agents_digest(
    ingest: Ingest, db: aioredis.Redis, pub: aiomqtt.Client
) -> None:
    run = "run-digest"
    await dispatch(db, run)
    accuracy = samples(150)
    # A null: a value the monitor sent unreadable.
    trace = tuple(None if i == 99 else 0.01 + (i % 17) / 1000 for i in range(5000))
    energy = [
        Sample(
            seq=150 + w,
            index=0,
            segment=None,
            window=w,
            label=0,
            results=(),
            count=40,
            wall_s=None,
            energy_j=0.0123 + w / 1000,
            energy_window_s=10.0,
            power_samples=trace,
            power_events=((0, 1), (4999, 0)),
        )
        for w in range(5)
    ]
    # The agent's tally: the digest over its records in production order.
    digest = SampleDigest()
    for sample in accuracy + energy:
        digest.update(SAMPLE_BATCH.record(sample))
    records = agent_records(accuracy + energy)
    # Batches as the agent cuts them: at most 64 samples, an energy window alone.
    batches = [records[i : i + 64] for i in range(0, 150, 64)] + [[r] for r in records[150:]]
    random.Random(1).shuffle(batches)  # order-free
    topic = samples_topic(AGENT, BOARD, run)
    await publish_all(pub, [(topic, agent_batch(run, batch)) for batch in batches])
    await counted(ingest, accepted_samples=155)

    stored = {int(k): json.loads(v) for k, v in (await db.hgetall(keys.run_samples(run))).items()}
    assert sample_digest(stored.values()) == digest.hexdigest()
    for window in energy:
        record = stored[window.seq]
        assert record["power_samples"] == list(window.power_samples)
        assert record["power_events"] == [list(e) for e in window.power_events]
    # Every stored record reads back as the sample it was.
    for sample in accuracy:
        assert Sample.from_record(stored[sample.seq]) == sample


async def test_rejections_are_counted_and_ingest_keeps_serving(
    ingest: Ingest, db: aioredis.Redis, pub: aiomqtt.Client
) -> None:
    await dispatch(db, "run-ok")
    await dispatch(db, "run-lab2", agent="lab2")
    await dispatch(db, "run-b2", board="b2")
    await dispatch(db, "run-done", state="completed")
    good = agent_records(samples(3))

    def topic(run: str) -> str:
        return samples_topic(AGENT, BOARD, run)

    cases: list[tuple[str, bytes, str]] = [
        (topic("run-none"), agent_batch("run-none", good), "unknown_run"),
        (topic("run-lab2"), agent_batch("run-lab2", good), "not_dispatched_here"),
        (topic("run-b2"), agent_batch("run-b2", good), "not_dispatched_here"),
        (topic("run-done"), agent_batch("run-done", good), "run_closed"),
        (topic("run-ok"), b'{"schema": "farm/v1", "agent": ', "bad_json"),
        (topic("run-ok"), b"\xff\xfe\x00garbage", "bad_json"),
        (topic("run-ok"), b"[" * 100_000 + b"]" * 100_000, "bad_json"),
        (
            topic("run-ok"),
            agent_batch("run-ok", good).replace(b'"latency_us":250', b'"latency_us":NaN'),
            "bad_json",
        ),
        (
            topic("run-ok"),
            agent_batch("run-ok", good).replace(b'"farm/v1"', b'"farm/v2"'),
            "invalid_sample_batch",
        ),
        (topic("run-ok"), agent_batch("run-ok", [dict(good[0], seq="0")]), "invalid_sample_batch"),
        (topic("run-ok"), agent_batch("run-ok", [dict(good[0], extra=1)]), "invalid_sample_batch"),
        (topic("run-ok"), agent_batch("run-ok", []), "invalid_sample_batch"),
        (topic("run-ok"), b"null", "invalid_sample_batch"),
        (topic("run-ok"), agent_batch("run-ok", [dict(good[0], seq=10**9)]), "seq_out_of_range"),
        (topic("run-ok"), agent_batch("run-other", good), "topic_mismatch"),
        (topic("run-ok"), agent_batch("run-ok", good, agent="lab9"), "topic_mismatch"),
        (topic("run-ok"), b" " * (8 * 1024 * 1024 + 1), "too_large"),
        ("farm/v1/agent/lab1/board/b1/run/run-ok/other", agent_batch("run-ok", good), "bad_topic"),
        ("farm/v1/agent/lab1/whatever", b"{}", "bad_topic"),
        (heartbeat_topic(AGENT), b'{"schema": "farm/v1", "agent": "lab1"}', "invalid_heartbeat"),
        (run_events_topic(AGENT, BOARD, "run-ok"), b'{"event": "nope"}', "invalid_run_event"),
    ]
    expected: dict[str, int] = {}
    for _, _, reason in cases:
        expected[f"rejected_{reason}"] = expected.get(f"rejected_{reason}", 0) + 1
    # Noise on real topics: random bytes and JSON of every shape. Whatever each is rejected
    # for, none may stop ingest.
    rng = random.Random(5)
    noise = [
        (
            rng.choice([topic("run-ok"), agent_status_topic("x"), agent_events_topic(AGENT)]),
            rng.choice(
                [
                    rng.randbytes(rng.randrange(1, 300)),
                    json.dumps(rng.choice([[], {}, 1, "s", {"schema": "farm/v1"}])).encode(),
                ]
            ),
        )
        for _ in range(100)
    ]
    await publish_all(pub, [(t, p) for t, p, _ in cases] + noise)
    await pub.publish(topic("run-ok"), agent_batch("run-ok", good), qos=1)
    await eventually(lambda: ingest.counters["accepted_samples"] == 3, "the valid batch")
    # Messages of other runs and agents are handled alongside, and may finish later.
    total = len(cases) + len(noise) + 1
    await eventually(lambda: ingest.counters["handled"] >= total, "every message handled")
    assert await db.hlen(keys.run_samples("run-ok")) == 3
    for name, value in expected.items():
        if name in ("rejected_bad_json", "rejected_invalid_sample_batch"):
            assert ingest.counters[name] >= value, name  # the noise adds to these
        else:
            assert ingest.counters[name] == value, (name, dict(ingest.counters))
    assert ingest.counters["rejected_internal"] == 0
    assert ingest.counters["handled"] == total
    stored_counters = await db.hgetall(keys.INGEST_COUNTERS)
    for name, value in ingest.counters.items():
        if name.startswith(("rejected_", "accepted_")):
            assert stored_counters[name] == str(value), name
    for run in ("run-none", "run-lab2", "run-b2", "run-done"):
        assert await db.hlen(keys.run_samples(run)) == 0
    assert not await db.exists(keys.run("run-none"))


async def test_seqs_at_or_beyond_the_runs_limit_are_refused_and_counted(
    ingest: Ingest, db: aioredis.Redis, pub: aiomqtt.Client
) -> None:
    """The agent's ``started`` says every seq of the run is below ``seq_limit``: a batch with
    a seq beyond it is refused whole (one bad batch would make the run's stored samples
    disagree with the agent's ``done`` forever); a run without a limit takes any seq."""
    run, open_run = "run-limited", "run-unlimited"
    for name in (run, open_run):
        await dispatch(db, name)
    for name, limit in ((run, 10), (open_run, None)):
        ids = {"agent": AGENT, "board": BOARD, "run": name}
        started = Started(
            event="started",
            model="kws01",
            build="performance",
            total=limit,
            seq_limit=limit,
            dataset="/data",
            **ids,
        )
        await pub.publish(run_events_topic(AGENT, BOARD, name), started.dumps(), qos=1)
    await counted(ingest, accepted_run_event=2)
    records = agent_records(samples(15))
    await pub.publish(samples_topic(AGENT, BOARD, run), agent_batch(run, records[5:]), qos=1)
    await counted(ingest, rejected_seq_out_of_range=1)
    assert await db.hlen(keys.run_samples(run)) == 0
    assert await db.hget(keys.INGEST_COUNTERS, "rejected_seq_out_of_range") == "1"
    await publish_all(
        pub,
        [
            (samples_topic(AGENT, BOARD, run), agent_batch(run, records[:10])),
            (samples_topic(AGENT, BOARD, open_run), agent_batch(open_run, records)),
        ],
    )
    await counted(ingest, accepted_samples=25, rejected_seq_out_of_range=1)
    assert sorted(map(int, await db.hkeys(keys.run_samples(run)))) == list(range(10))
    assert await db.hget(keys.run(run), "done") == "10"
    assert await db.hlen(keys.run_samples(open_run)) == 15


async def test_samples_of_another_attempt_than_the_runs_are_refused_where_they_differ(
    ingest: Ingest, db: aioredis.Redis, pub: aiomqtt.Client
) -> None:
    """A timed run starts over at each dispatch: a batch of an earlier attempt (resent after a
    reconnect, or from the attempt a lost worker left running) would mix its timings with the
    current attempt's, so only the current attempt's samples are stored. An accuracy run keeps
    an earlier attempt's (the same inputs give the same predictions: the retry resumes after
    them). No run takes samples of an attempt it never dispatched."""
    timed, accuracy = "run-timed-a2", "run-accuracy-a2"
    for name in (timed, accuracy):
        await dispatch(db, name)
    await db.hset(keys.run(timed), mapping={"mode": "performance", "attempts": 2})
    await db.hset(keys.run(accuracy), "attempts", 2)
    records = agent_records(samples(6))
    await publish_all(
        pub,
        [
            (samples_topic(AGENT, BOARD, timed), agent_batch(timed, records[:2], attempt=1)),
            (samples_topic(AGENT, BOARD, timed), agent_batch(timed, records[2:4], attempt=3)),
            (samples_topic(AGENT, BOARD, accuracy), agent_batch(accuracy, records[:2], attempt=3)),
        ],
    )
    await counted(ingest, rejected_wrong_attempt=3)
    assert await db.hlen(keys.run_samples(timed)) == 0
    assert await db.hlen(keys.run_samples(accuracy)) == 0

    await publish_all(
        pub,
        [
            (samples_topic(AGENT, BOARD, timed), agent_batch(timed, records[:3], attempt=2)),
            (samples_topic(AGENT, BOARD, accuracy), agent_batch(accuracy, records[:3], attempt=1)),
            (samples_topic(AGENT, BOARD, accuracy), agent_batch(accuracy, records[3:], attempt=2)),
            # An agent that does not number its batches (a command without an attempt).
            (samples_topic(AGENT, BOARD, timed), agent_batch(timed, records[3:])),
        ],
    )
    await counted(ingest, accepted_samples=12, rejected_wrong_attempt=3)
    assert await db.hlen(keys.run_samples(timed)) == 6
    assert await db.hlen(keys.run_samples(accuracy)) == 6
    assert await db.hget(keys.INGEST_COUNTERS, "rejected_wrong_attempt") == "3"


# -- several messages at once ------------------------------------------------------------------


class Tap:
    """A TCP relay between ingest and the broker that records, in wire order, the packet ids
    of the QoS 1 PUBLISHes the broker sends and of the PUBACKs ingest sends back (MQTT 3.1.1
    framing), forwarding every byte unchanged."""

    def __init__(self, broker: Mosquitto) -> None:
        self.broker = broker
        self.publishes: list[tuple[int, str]] = []
        """(packet id, topic) of each QoS 1 PUBLISH, as the broker sent them."""
        self.pubacks: list[int] = []
        """Packet id of each PUBACK, as ingest sent them."""
        self.url = ""
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> Tap:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        self.url = f"mqtt://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.broker.port)
        try:
            await asyncio.gather(
                self._pipe(reader, up_writer, self._from_ingest),
                self._pipe(up_reader, writer, self._from_broker),
            )
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            for w in (writer, up_writer):
                w.close()

    @staticmethod
    async def _pipe(
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        packet: Callable[[int, int, bytes], None],
    ) -> None:
        buffer = bytearray()
        while data := await reader.read(65536):
            buffer += data
            while True:  # every complete packet in the buffer
                length, multiplier, i = 0, 1, 1
                while i < len(buffer) and i <= 4:
                    length += (buffer[i] & 0x7F) * multiplier
                    multiplier *= 128
                    i += 1
                    if not buffer[i - 1] & 0x80:
                        break
                else:
                    break
                if len(buffer) < i + length:
                    break
                packet(buffer[0] >> 4, buffer[0] & 0x0F, bytes(buffer[i : i + length]))
                del buffer[: i + length]
            writer.write(data)
            await writer.drain()
        writer.close()

    def _from_broker(self, kind: int, flags: int, body: bytes) -> None:
        if kind == 3 and (flags >> 1) & 3 == 1:
            size = int.from_bytes(body[:2], "big")
            pid = int.from_bytes(body[2 + size : 4 + size], "big")
            self.publishes.append((pid, body[2 : 2 + size].decode()))

    def _from_ingest(self, kind: int, flags: int, body: bytes) -> None:
        if kind == 4:
            self.pubacks.append(int.from_bytes(body[:2], "big"))


class GatedIngest(Ingest):
    """The real Ingest, except that handling a payload listed in :attr:`gates` first waits
    for its event: a message made slow on purpose, so that the ones behind it finish first."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.gates: dict[bytes, asyncio.Event] = {}
        self.waiting: set[bytes] = set()

    async def handle(self, topic_name: str, payload: bytes, *, retained: bool = False) -> None:
        gate = self.gates.get(payload)
        if gate is not None:
            self.waiting.add(payload)
            await gate.wait()
            self.waiting.discard(payload)
        await super().handle(topic_name, payload, retained=retained)


async def test_messages_overlap_but_acks_and_each_runs_order_do_not(
    broker: Mosquitto, db: aioredis.Redis, pub: aiomqtt.Client
) -> None:
    """A slow message of run A: the other runs' messages behind it are stored meanwhile (they
    overlap), A's next message is not (a run's messages keep their order), and no PUBACK
    leaves before A's, which goes first (PUBACKs in the order of the PUBLISHes)."""
    for run in ("run-a", "run-b", "run-c"):
        await dispatch(db, run)
    records = agent_records(samples(100))
    a_first = agent_batch("run-a", records[:50])
    # Seq 5 again with another value: whichever of A's messages is handled first keeps it.
    a_second = agent_batch("run-a", [dict(records[5], results=[0.5, 0.5]), *records[50:]])
    others = [
        (samples_topic(AGENT, BOARD, run), agent_batch(run, records[i : i + 20]))
        for i in range(0, 100, 20)
        for run in ("run-b", "run-c")
    ]
    a_topic = samples_topic(AGENT, BOARD, "run-a")
    async with Tap(broker) as tap, serving(broker, broker_url=tap.url, make=GatedIngest) as ing:
        assert isinstance(ing, GatedIngest)
        gate = ing.gates[a_first] = asyncio.Event()
        await pub.publish(a_topic, a_first, qos=1)
        await eventually(lambda: a_first in ing.waiting, "A's first message in hand")
        await publish_all(pub, [(a_topic, a_second), *others])
        await counted(ing, accepted_samples=200, accepted_sample_batch=10)
        for run in ("run-b", "run-c"):
            assert await db.hlen(keys.run_samples(run)) == 100
        assert await db.hlen(keys.run_samples("run-a")) == 0  # A's second one waits
        await asyncio.sleep(0.3)  # the PUBACKs of what is stored would be on the wire by now
        assert tap.pubacks == []
        assert len(tap.publishes) == 12

        gate.set()
        await counted(ing, accepted_samples=300, accepted_sample_batch=12, conflicting_samples=1)
        await eventually(lambda: len(tap.pubacks) == 12, "every PUBACK")
        assert tap.pubacks == [pid for pid, _ in tap.publishes]
        assert tap.publishes[0][1] == a_topic
    stored = await db.hgetall(keys.run_samples("run-a"))
    assert len(stored) == 100
    assert json.loads(stored["5"])["results"] == records[5]["results"]  # the first one's
    assert await db.hget(keys.run("run-a"), "done") == "100"


async def test_duplicates_and_conflicts_are_told_apart_across_runs_at_once(
    ingest: Ingest, db: aioredis.Redis, pub: aiomqtt.Client
) -> None:
    """Four runs' batches interleaved (handled concurrently): replays (byte-equal), the same
    samples through the model (equal JSON, other bytes: 1.0 for 1) and changed values, each
    counted once as what it is, and the first value of every seq kept."""
    runs = [f"run-mix{i}" for i in range(4)]
    for run in runs:
        await dispatch(db, run)
    records = agent_records(samples(120))
    model = [json.loads(SampleRecord.model_validate(r).model_dump_json()) for r in records[100:]]
    assert any(isinstance(r["latency_us"], float) for r in model)
    changed = [dict(r, label=r["label"] + 1) for r in records[:3]]

    def batches(run: str) -> list[bytes]:
        return [
            agent_batch(run, records[:60]),
            agent_batch(run, records[40:100]),  # 20 replayed
            agent_batch(run, records[100:]),
            agent_batch(run, model),  # 20 equal by value, not by bytes
            agent_batch(run, [*changed, records[3]]),  # 3 conflicts, 1 replayed
        ]

    # Interleaved run by run, as an agent's outbox sends its boards' batches.
    messages = [
        (samples_topic(AGENT, BOARD, run), batch)
        for group in zip(*(batches(run) for run in runs), strict=True)
        for run, batch in zip(runs, group, strict=True)
    ]
    await publish_all(pub, messages)
    await counted(
        ingest,
        accepted_samples=4 * 120,
        accepted_sample_batch=4 * 5,
        duplicate_samples=4 * (20 + 20 + 1),
        conflicting_samples=4 * 3,
    )
    counters = await db.hgetall(keys.INGEST_COUNTERS)
    assert counters["accepted_samples"] == str(4 * 120)
    assert counters["duplicate_samples"] == str(4 * 41)
    assert counters["conflicting_samples"] == str(4 * 3)
    for run in runs:
        stored = await db.hgetall(keys.run_samples(run))
        assert len(stored) == 120
        assert await db.hget(keys.run(run), "done") == "120"
        assert [json.loads(stored[str(s)])["label"] for s in range(3)] == [
            r["label"] for r in records[:3]
        ]
        assert sample_digest(json.loads(v) for v in stored.values()) == sample_digest(records)


async def test_repeated_seqs_within_a_batch_of_thousands_keep_their_first_value(
    ingest: Ingest, db: aioredis.Redis, pub: aiomqtt.Client
) -> None:
    """The store script reads and writes a batch 1,000 records at a time: a seq repeated in
    one batch, in the same or a later thousand, is a duplicate or a conflict of its first
    value, as a seq stored by an earlier batch is."""
    run = "run-big"
    await dispatch(db, run)
    records = agent_records(samples(2400))
    repeats = [
        records[5],  # byte-equal, in the third thousand: a duplicate
        dict(records[1200], label=records[1200]["label"] + 1),  # a conflict across thousands
        dict(records[7], label=records[7]["label"] + 1),  # a conflict
    ]
    batch = [*records[:10], repeats[2], *records[10:], repeats[0], repeats[1]]
    await publish_all(
        pub,
        [
            (samples_topic(AGENT, BOARD, run), agent_batch(run, batch)),
            (samples_topic(AGENT, BOARD, run), agent_batch(run, records[:1500])),  # replayed
        ],
    )
    await counted(
        ingest,
        accepted_samples=2400,
        accepted_sample_batch=2,
        duplicate_samples=1 + 1500,
        conflicting_samples=2,
    )
    stored = await db.hgetall(keys.run_samples(run))
    assert len(stored) == 2400
    assert await db.hget(keys.run(run), "done") == "2400"
    assert sample_digest(json.loads(v) for v in stored.values()) == sample_digest(records)
    counters = await db.hgetall(keys.INGEST_COUNTERS)
    assert counters["duplicate_samples"] == "1501"
    assert counters["conflicting_samples"] == "2"


# -- run events ---------------------------------------------------------------------------------


async def test_run_events_move_the_run_and_keep_the_final_one(
    ingest: Ingest, db: aioredis.Redis, pub: aiomqtt.Client
) -> None:
    run = "run-ev"
    await dispatch(db, run)
    await dispatch(db, "run-queued", state="queued")
    await dispatch(db, "run-elsewhere", board="b2")
    topic = run_events_topic(AGENT, BOARD, run)
    ids = {"agent": AGENT, "board": BOARD, "run": run}

    started = Started(
        event="started",
        model="kws01",
        build="performance",
        total=300,
        eta_s=12.5,
        dataset="/data",
        **ids,
    )
    await publish_all(
        pub,
        [
            (topic, Accepted(event="accepted", command="cmd-1", **ids).dumps()),
            (topic, started.dumps()),
            (topic, ProgressEvent(event="progress", done=10, total=300, eta_s=11.0, **ids).dumps()),
        ],
    )
    await counted(ingest, accepted_run_event=3)
    fields = await db.hgetall(keys.run(run))
    assert fields["state"] == "running"
    assert fields["total"] == "300"
    assert float(fields["started_at"]) == started.time
    assert fields["progress"] == "10"
    assert fields["eta_s"] == "11.0"

    done = Done(event="done", count=300, digest="d" * 64, first_seq=0, last_seq=299, **ids)
    await pub.publish(topic, done.dumps(), qos=1)
    await counted(ingest, accepted_run_event=4)
    # Completion is the worker's decision (it checks the stored samples against `done`).
    assert await db.hget(keys.run(run), "state") == "running"
    assert json.loads(await db.hget(keys.run(run), "final")) == json.loads(done.dumps())

    # After it: an older `interrupted` (a resend) and more progress than the list keeps.
    older = Interrupted(
        event="interrupted", last_seq=20, reason="restart", time=done.time - 5, **ids
    )
    progress = [
        (topic, ProgressEvent(event="progress", done=i, total=300, **ids).dumps())
        for i in range(keys.EVENTS_KEPT + 10)
    ]
    await publish_all(pub, [(topic, older.dumps()), *progress])
    await counted(ingest, accepted_run_event=4 + 1 + keys.EVENTS_KEPT + 10)
    events = [json.loads(e) for e in await db.lrange(keys.run_events(run), 0, -1)]
    assert len(events) == keys.EVENTS_KEPT
    assert {e["event"] for e in events} == {"progress"}  # `done` is trimmed from the list ...
    final = json.loads(await db.hget(keys.run(run), "final"))
    assert final["event"] == "done" and final["digest"] == "d" * 64  # ... and kept here

    # A started event for a run that is not dispatched changes nothing but the event list;
    # events for a run on another board are rejected.
    queued, elsewhere = (
        Started(
            event="started",
            model="kws01",
            build="performance",
            total=5,
            dataset="x",
            agent=AGENT,
            board=BOARD,
            run=run,
        )
        for run in ("run-queued", "run-elsewhere")
    )
    await publish_all(
        pub,
        [
            (run_events_topic(AGENT, BOARD, "run-queued"), queued.dumps()),
            (run_events_topic(AGENT, BOARD, "run-elsewhere"), elsewhere.dumps()),
        ],
    )
    await counted(ingest, rejected_not_dispatched_here=1)
    await eventually(lambda: db.llen(keys.run_events("run-queued")), "queued run's event")
    assert await db.hget(keys.run("run-queued"), "state") == "queued"
    assert not await db.exists(keys.run_events("run-elsewhere"))
    assert await db.hget(keys.run("run-elsewhere"), "state") == "dispatched"


# -- agents and boards --------------------------------------------------------------------------


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _string(value: bytes) -> bytes:
    return len(value).to_bytes(2, "big") + value


class RawAgent:
    """An MQTT 3.1.1 connection made by hand with a last will, so the test can drop it without
    DISCONNECT, as a dying agent does: the broker then publishes the will."""

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self.writer = writer

    @classmethod
    async def connect(cls, port: int, agent: str, started: float) -> RawAgent:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        will = AgentStatus(
            agent=agent, state="offline", reason="connection lost", started=started
        ).dumps()
        # Clean session, will flag, will QoS 1, will retain.
        flags = 0x02 | 0x04 | 0x08 | 0x20
        body = (
            _string(b"MQTT")
            + bytes([4, flags])
            + (60).to_bytes(2, "big")
            + _string(f"raw-{agent}".encode())
            + _string(agent_status_topic(agent).encode())
            + _string(will)
        )
        writer.write(bytes([0x10]) + _varint(len(body)) + body)
        connack = await asyncio.wait_for(reader.readexactly(4), 5)
        assert connack[0] == 0x20 and connack[3] == 0, connack
        return cls(writer)

    async def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        """QoS 0 (no acknowledgement to wait for)."""
        body = _string(topic.encode()) + payload
        self.writer.write(bytes([0x30 | int(retain)]) + _varint(len(body)) + body)
        await self.writer.drain()

    def die(self) -> None:
        self.writer.transport.abort()


async def test_agent_and_board_liveness(
    ingest: Ingest, db: aioredis.Redis, pub: aiomqtt.Client, broker: Mosquitto
) -> None:
    agent = await RawAgent.connect(broker.port, "lab7", 1000.0)
    online = AgentStatus(
        agent="lab7", state="online", software="0.1.0", boards=["b7"], started=1000.0
    )
    await agent.publish(agent_status_topic("lab7"), online.dumps(), retain=True)
    board = BoardStatus(
        agent="lab7", board="b7", state="idle", health="good", model="kws01", started=1000.0
    )
    await publish_all(
        pub,
        [
            (board_status_topic("lab7", "b7"), board.dumps()),
            (heartbeat_topic("lab7"), Heartbeat(agent="lab7", uptime_s=5.0, backlog=3).dumps()),
            (
                agent_events_topic("lab7"),
                CommandAck(
                    agent="lab7",
                    command="c1",
                    type="run",
                    outcome="rejected",
                    reason="unknown board",
                ).dumps(),
            ),
        ],
    )
    await counted(
        ingest,
        accepted_agent_status=1,
        accepted_board_status=1,
        accepted_heartbeat=1,
        accepted_command_ack=1,
    )
    status = await db.hgetall(keys.agent("lab7"))
    assert status["state"] == "online"
    assert status["protocol"] == str(PROTOCOL_VERSION)
    assert status["software"] == "0.1.0"
    assert json.loads(status["status"])["boards"] == ["b7"]
    assert json.loads(status["heartbeat"])["backlog"] == 3
    assert float(status["last_seen"]) > online.time - 1
    assert await db.sismember(keys.AGENTS, "lab7")
    stored_board = await db.hgetall(keys.board("b7"))
    assert stored_board["agent"] == "lab7"
    assert json.loads(stored_board["status"])["model"] == "kws01"
    assert await db.sismember(keys.BOARDS, "b7")
    acks = [json.loads(a) for a in await db.lrange(keys.agent_acks("lab7"), 0, -1)]
    assert [(a["command"], a["outcome"]) for a in acks] == [("c1", "rejected")]

    # Its will marks it offline.
    agent.die()
    await eventually(
        lambda: _equals(db.hget(keys.agent("lab7"), "state"), "offline"), "lab7 offline"
    )

    # Clear the retained statuses (a cleared status is not an error).
    for topic in (agent_status_topic("lab7"), board_status_topic("lab7", "b7")):
        await pub.publish(topic, b"", qos=1, retain=True)
    await counted(ingest, cleared_agent_status=1, cleared_board_status=1)


async def test_a_status_without_the_agents_start_is_refused(
    ingest: Ingest, db: aioredis.Redis, pub: aiomqtt.Client
) -> None:
    """The agent's start (``started``) orders its statuses: one without it (a forged
    ``offline``) cannot be placed, so it is refused and counted, never stored."""
    online = AgentStatus(agent="lab4", state="online", boards=["b4"], started=300.0)
    board = BoardStatus(agent="lab4", board="b4", state="busy", health="good", started=300.0)
    await publish_all(
        pub,
        [
            (agent_status_topic("lab4"), online.dumps()),
            (board_status_topic("lab4", "b4"), board.dumps()),
        ],
    )
    await counted(ingest, accepted_agent_status=1, accepted_board_status=1)
    forged = AgentStatus(agent="lab4", state="offline", reason="forged", time=online.time + 60)
    forged_board = BoardStatus(agent="lab4", board="b4", state="offline", health="bad")
    await publish_all(
        pub,
        [
            (agent_status_topic("lab4"), forged.dumps()),
            (board_status_topic("lab4", "b4"), forged_board.dumps()),
        ],
    )
    await counted(
        ingest, accepted_agent_status=1, accepted_board_status=1, rejected_missing_generation=2
    )
    assert await db.hget(keys.agent("lab4"), "state") == "online"
    assert json.loads(await db.hget(keys.board("b4"), "status"))["state"] == "busy"
    assert await db.hget(keys.INGEST_COUNTERS, "rejected_missing_generation") == "2"


async def test_a_board_stays_with_its_first_agent_until_released(
    ingest: Ingest, db: aioredis.Redis, pub: aiomqtt.Client
) -> None:
    """A board belongs to the first agent that reports it. Another agent's status for it is
    refused (``board_conflict``) whether the owner is online or not and whatever its clock
    says; the owner's later starts keep it; it moves when the owner's own config drops it, or
    when an operator deletes the board's hash."""

    def board(agent: str, started: float, **fields: Any) -> tuple[str, bytes]:
        status = BoardStatus(
            agent=agent, board="b6", state="idle", health="good", started=started, **fields
        )
        return board_status_topic(agent, "b6"), status.dumps()

    def agent_status(
        agent: str, state: str, started: float, boards: list[str]
    ) -> tuple[str, bytes]:
        status = AgentStatus(agent=agent, state=state, boards=boards, started=started)  # type: ignore[arg-type]
        return agent_status_topic(agent), status.dumps()

    async def send(*messages: tuple[str, bytes]) -> None:
        for topic, payload in messages:  # one by one: their order matters here
            await pub.publish(topic, payload, qos=1)

    async def owner() -> str | None:
        return await db.hget(keys.board("b6"), "agent")

    await send(agent_status("lab6", "online", 100.0, ["b6"]), board("lab6", 100.0))
    await counted(ingest, accepted_agent_status=1, accepted_board_status=1)
    assert await owner() == "lab6"

    # lab6 online, then offline: lab8's claims fail, even one from the far future.
    await send(board("lab8", 5.0))
    await send(agent_status("lab6", "offline", 100.0, []))
    await send(board("lab8", 9e9, time=9e9))
    await counted(
        ingest, accepted_agent_status=2, accepted_board_status=1, rejected_board_conflict=2
    )
    assert await owner() == "lab6"

    # lab6 restarts and reports the board again; a status of its earlier start is stale.
    await send(agent_status("lab6", "online", 200.0, ["b6"]), board("lab6", 200.0, model="m2"))
    await send(board("lab6", 100.0, model="old"))
    await counted(
        ingest,
        accepted_agent_status=3,
        accepted_board_status=2,
        rejected_board_conflict=2,
        rejected_stale_board_status=1,
    )
    assert json.loads(await db.hget(keys.board("b6"), "status"))["model"] == "m2"

    # lab6's config drops the board: lab8 may have it.
    await send(agent_status("lab6", "online", 300.0, []), board("lab8", 5.0))
    await counted(ingest, accepted_agent_status=4, accepted_board_status=3)
    assert await owner() == "lab8"

    # An operator releases it (deletes the board's hash): the next agent to report it has it.
    await send(board("lab9", 1.0))
    await counted(ingest, rejected_board_conflict=3)
    await db.delete(keys.board("b6"))
    await send(board("lab9", 1.0))
    await counted(ingest, accepted_board_status=4, rejected_board_conflict=3)
    assert await owner() == "lab9"


async def _equals(value: Awaitable[object], expected: object) -> bool:
    return await value == expected


async def test_an_earlier_agent_starts_statuses_do_not_overwrite_the_running_one(
    ingest: Ingest, db: aioredis.Redis, pub: aiomqtt.Client
) -> None:
    # The running agent (started at t=200) is online; its previous run's "offline" (started
    # at t=100), replayed late from a persistent session, changes nothing. Its own will
    # (same start) does.
    online = AgentStatus(agent="lab5", state="online", started=200.0, time=250.0)
    stale = AgentStatus(agent="lab5", state="offline", started=100.0, time=180.0)
    will = AgentStatus(agent="lab5", state="offline", reason="connection lost", started=200.0)
    await pub.publish(agent_status_topic("lab5"), online.dumps(), qos=1)
    await counted(ingest, accepted_agent_status=1)
    await pub.publish(agent_status_topic("lab5"), stale.dumps(), qos=1)
    await counted(ingest, accepted_agent_status=1, rejected_stale_agent_status=1)
    assert await db.hget(keys.agent("lab5"), "state") == "online"
    await pub.publish(agent_status_topic("lab5"), will.dumps(), qos=1)
    await counted(ingest, accepted_agent_status=2, rejected_stale_agent_status=1)
    assert await db.hget(keys.agent("lab5"), "state") == "offline"


async def test_an_agent_of_another_protocol_is_refused(
    ingest: Ingest, db: aioredis.Redis, pub: aiomqtt.Client, broker: Mosquitto
) -> None:
    received: list[bytes] = []
    async with aiomqtt.Client("127.0.0.1", broker.port) as listener:
        for agent in ("old1", "new2", "ok3"):
            await listener.subscribe(command_topic(agent), qos=1)

        async def listen() -> None:
            async for message in listener.messages:
                received.append(bytes(message.payload))  # type: ignore[arg-type]

        task = asyncio.get_running_loop().create_task(listen())
        try:
            old = AgentStatus(agent="old1", state="online", protocol=99, started=1.0)
            await pub.publish(agent_status_topic("old1"), old.dumps(), qos=1)
            await eventually(lambda: received, "a refuse command")
            command = COMMANDS.validate_json(received[0])
            assert isinstance(command, RefuseCommand)
            assert command.reason == f"agent protocol 99, controller speaks {PROTOCOL_VERSION}"
            assert await db.hget(keys.agent("old1"), "protocol") == "99"

            # Once per agent start: its status again (same `started`) gets no second refuse;
            # a compatible agent gets none at all.
            ok = AgentStatus(agent="ok3", state="online", started=1.0)
            await publish_all(
                pub,
                [
                    (agent_status_topic("old1"), old.dumps()),
                    (agent_status_topic("ok3"), ok.dumps()),
                ],
            )
            await counted(ingest, accepted_agent_status=3, refused_agents=1)

            # A newer agent whose status this version cannot even validate is refused too.
            newer = {
                "schema": "farm/v2",
                "agent": "new2",
                "state": "online",
                "protocol": 3,
                "started": 7.0,
                "capabilities": ["x"],
            }
            await pub.publish(agent_status_topic("new2"), json.dumps(newer).encode(), qos=1)
            await counted(ingest, refused_agents=2, rejected_invalid_agent_status=1)
            await eventually(lambda: len(received) == 2, "the second refuse")
            second = COMMANDS.validate_json(received[1])
            assert isinstance(second, RefuseCommand)
            assert "agent protocol 3" in second.reason
            await asyncio.sleep(0.2)
            assert len(received) == 2
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


# -- scaling out and riding out outages ---------------------------------------------------------


async def test_two_ingest_processes_split_a_shared_subscription(
    broker: Mosquitto, db: aioredis.Redis, pub: aiomqtt.Client
) -> None:
    run = "run-shared"
    await dispatch(db, run)
    records = agent_records(samples(2000))
    topic = samples_topic(AGENT, BOARD, run)
    group = f"g{uuid.uuid4().hex[:8]}"
    async with (
        serving(broker, group=group, share=True) as first,
        serving(broker, group=group, share=True) as second,
    ):
        await publish_all(
            pub, [(topic, agent_batch(run, records[i : i + 20])) for i in range(0, 2000, 20)]
        )
        both = (first, second)
        await eventually(
            lambda: sum(i.counters["accepted_samples"] for i in both) == 2000, "2000 samples"
        )
        await asyncio.sleep(0.2)  # nothing more arrives
        assert all(i.counters["accepted_samples"] > 0 for i in both)  # both took a share
        assert sum(i.counters["accepted_sample_batch"] for i in both) == 100
        assert all(i.counters["duplicate_samples"] == 0 for i in both)
    assert await db.hlen(keys.run_samples(run)) == 2000
    assert await db.hget(keys.INGEST_COUNTERS, "accepted_samples") == "2000"


async def test_by_default_each_ingest_has_a_plain_subscription_of_its_own(
    broker: Mosquitto, db: aioredis.Redis, pub: aiomqtt.Client
) -> None:
    """No shared subscription unless asked: two ingest processes left with the defaults (and
    the same group name) each receive every message, retained statuses included, instead of
    splitting them (a departed one's session would keep its share queued for days)."""
    agent = f"ret-{uuid.uuid4().hex[:6]}"
    online = AgentStatus(agent=agent, state="online", boards=["rb1"], started=10.0)
    await pub.publish(agent_status_topic(agent), online.dumps(), qos=1, retain=True)
    run = "run-plain"
    await dispatch(db, run)
    records = agent_records(samples(100))
    topic = samples_topic(AGENT, BOARD, run)
    try:
        async with (
            serving(broker, group="farm-ingest") as first,
            serving(broker, group="farm-ingest") as second,
        ):
            await publish_all(
                pub, [(topic, agent_batch(run, records[i : i + 10])) for i in range(0, 100, 10)]
            )
            for running in (first, second):
                await eventually(
                    lambda r=running: r.counters["accepted_sample_batch"] == 10, "every batch"
                )
                assert running.counters["accepted_agent_status"] == 1
        assert await db.hget(keys.agent(agent), "state") == "online"
    finally:
        await pub.publish(agent_status_topic(agent), b"", qos=1, retain=True)


async def test_a_shared_subscription_splits_samples_but_every_ingest_gets_every_status(
    broker: Mosquitto, db: aioredis.Redis, pub: aiomqtt.Client
) -> None:
    """With ``share``, statuses still come through a plain subscription: a shared one is sent
    no retained messages (MQTT 5; brokers differ), so an agent online before ingest started
    would never be known."""
    group = f"g{uuid.uuid4().hex[:8]}"
    run = "run-split"
    await dispatch(db, run)
    records = agent_records(samples(400))
    topic = samples_topic(AGENT, BOARD, run)
    agents = [f"st-{uuid.uuid4().hex[:6]}" for _ in range(6)]
    async with (
        serving(broker, group=group, share=True) as first,
        serving(broker, group=group, share=True) as second,
    ):
        statuses = [
            (agent_status_topic(a), AgentStatus(agent=a, state="online", started=1.0).dumps())
            for a in agents
        ]
        batches = [(topic, agent_batch(run, records[i : i + 10])) for i in range(0, 400, 10)]
        await publish_all(pub, statuses + batches)
        both = (first, second)
        await eventually(
            lambda: sum(i.counters["accepted_sample_batch"] for i in both) == 40, "40 batches"
        )
        for running in both:
            await counted(running, accepted_agent_status=len(agents))
            assert 0 < running.counters["accepted_sample_batch"] < 40  # split
    assert await db.hlen(keys.run_samples(run)) == 400


async def test_partitioned_ingest_processes_each_handle_whole_runs_and_the_statuses_once(
    broker: Mosquitto, db: aioredis.Redis, pub: aiomqtt.Client
) -> None:
    """``partition`` 0/2 and 1/2: each process gets every message (retained statuses
    included) and handles only its keys' (each run whole, the statuses together), the others
    acknowledged unread; more messages than the broker keeps unacknowledged (100), so a
    skipped message that held back the acknowledgements would stall the stream."""
    runs = [f"run-part{i}" for i in range(6)]
    for run in runs:
        await dispatch(db, run)
    records = agent_records(samples(400))
    agents = [f"pt-{uuid.uuid4().hex[:6]}" for _ in range(3)]
    retained = AgentStatus(agent=agents[0], state="online", started=1.0)
    await pub.publish(agent_status_topic(agents[0]), retained.dumps(), qos=1, retain=True)
    parts = (Partition(0, 2), Partition(1, 2))
    try:
        async with (
            serving(broker, partition=parts[0]) as first,
            serving(broker, partition=parts[1]) as second,
        ):
            statuses = [
                (agent_status_topic(a), AgentStatus(agent=a, state="online", started=1.0).dumps())
                for a in agents[1:]
            ]
            batches = [
                (samples_topic(AGENT, BOARD, run), agent_batch(run, records[i : i + 10]))
                for i in range(0, 400, 10)
                for run in runs
            ]
            await publish_all(pub, statuses + batches)
            both = (first, second)
            await eventually(
                lambda: sum(i.counters["accepted_sample_batch"] for i in both) == 240,
                "240 batches",
            )
            owned = [[run for run in runs if part.owns(f"run:{run}")] for part in parts]
            assert owned[0] and owned[1]  # these run ids do land on both
            for running, mine in zip(both, owned, strict=True):
                await counted(running, accepted_sample_batch=40 * len(mine))
                assert running.counters["accepted_samples"] == 400 * len(mine)
            keeper, other = (
                both if parts[0].owns(order_key(agent_status_topic("x"))) else both[::-1]
            )
            await counted(keeper, accepted_agent_status=len(agents))
            assert other.counters["accepted_agent_status"] == 0
            await eventually(
                lambda: (
                    other.counters["partition_skipped"]
                    == 40 * len(owned[both.index(keeper)]) + len(agents)
                ),
                "the other process's messages acknowledged unread",
            )
        for run in runs:
            assert await db.hlen(keys.run_samples(run)) == 400
        for agent in agents:
            assert await db.hget(keys.agent(agent), "state") == "online"
    finally:
        await pub.publish(agent_status_topic(agents[0]), b"", qos=1, retain=True)


async def test_a_redis_outage_loses_nothing_even_if_ingest_stops_during_it(
    broker: Mosquitto, pub: aiomqtt.Client, tmp_path: Path
) -> None:
    server = PrivateRedis(tmp_path)
    await server.start()
    db = aioredis.Redis.from_url(server.url, decode_responses=True)
    client_id, group = f"test-ingest-{uuid.uuid4().hex[:8]}", f"g{uuid.uuid4().hex[:8]}"
    run = "run-outage"
    records = agent_records(samples(60))
    topic = samples_topic(AGENT, BOARD, run)
    try:
        await dispatch(db, run)
        async with serving(
            broker, redis_url=server.url, client_id=client_id, group=group, forget=False
        ) as first:
            await pub.publish(topic, agent_batch(run, records[:20]), qos=1)
            await counted(first, accepted_samples=20)
            await server.stop()
            # Received while Redis is down: retried, not acknowledged ...
            await pub.publish(topic, agent_batch(run, records[20:40]), qos=1)
            await eventually(lambda: first.counters["redis_retries"] >= 2, "retries")
            assert first.counters["accepted_samples"] == 20
        # ... and this ingest stops before Redis returns. The broker keeps the message (and
        # the next one) for the session, and hands them to the next process with this id.
        await pub.publish(topic, agent_batch(run, records[40:]), qos=1)
        await server.start()
        async with serving(broker, redis_url=server.url, client_id=client_id, group=group) as nxt:
            await counted(nxt, accepted_samples=40)
            assert nxt.counters["rejected_internal"] == 0
        await db.aclose()  # its connection died with the server
        db = aioredis.Redis.from_url(server.url, decode_responses=True)
        assert await db.hlen(keys.run_samples(run)) == 60
        assert await db.hget(keys.run(run), "done") == "60"
    finally:
        await db.aclose()
        await server.stop()


async def test_messages_in_hand_during_a_redis_outage_are_acked_only_once_stored(
    broker: Mosquitto, pub: aiomqtt.Client, tmp_path: Path
) -> None:
    """Several runs' messages arrive while Redis is down: handled concurrently, retried, none
    acknowledged; once Redis is back every one is stored, and only then acknowledged, in the
    order received."""
    server = PrivateRedis(tmp_path)
    await server.start()
    db = aioredis.Redis.from_url(server.url, decode_responses=True)
    runs = [f"run-out{i}" for i in range(3)]
    records = agent_records(samples(40))
    try:
        for run in runs:
            await dispatch(db, run)
        async with (
            Tap(broker) as tap,
            serving(broker, redis_url=server.url, broker_url=tap.url) as running,
        ):
            await server.stop()
            await publish_all(
                pub,
                [
                    (samples_topic(AGENT, BOARD, run), agent_batch(run, records[i : i + 20]))
                    for i in (0, 20)
                    for run in runs
                ],
            )
            await eventually(lambda: len(tap.publishes) == 6, "the six messages delivered")
            await eventually(lambda: running.counters["redis_retries"] >= 6, "retries")
            assert tap.pubacks == []
            await server.start()
            await counted(running, accepted_samples=120, accepted_sample_batch=6)
            await eventually(lambda: len(tap.pubacks) == 6, "the PUBACKs")
            assert tap.pubacks == [pid for pid, _ in tap.publishes]
            assert running.counters["rejected_internal"] == 0
        await db.aclose()  # its connection died with the server
        db = aioredis.Redis.from_url(server.url, decode_responses=True)
        for run in runs:
            assert await db.hlen(keys.run_samples(run)) == 40
    finally:
        await db.aclose()
        await server.stop()


@pytest.mark.parametrize("share", [False, True], ids=["plain", "shared"])
async def test_ingest_reconnects_after_a_broker_restart(
    tmp_path: Path, db: aioredis.Redis, share: bool
) -> None:
    own = Mosquitto(tmp_path / "mqtt")
    await own.start()
    try:
        run = "run-restart"
        await dispatch(db, run)
        records = agent_records(samples(40))
        topic = samples_topic(AGENT, BOARD, run)
        async with serving(own, share=share) as running:
            await own.stop()
            await eventually(lambda: not running.subscribed.is_set(), "the disconnect")
            await own.start()
            if not share:
                # Published before ingest is back: the restored session queues it. Mosquitto
                # 2.0.11 does not restore a shared subscription from its persistence, so with
                # one a message published in this gap reaches nobody (see the report).
                async with aiomqtt.Client("127.0.0.1", own.port) as client:
                    await client.publish(topic, agent_batch(run, records[:20]), qos=1)
            await eventually(running.subscribed.is_set, "the reconnect")
            async with aiomqtt.Client("127.0.0.1", own.port) as client:
                if share:
                    await client.publish(topic, agent_batch(run, records[:20]), qos=1)
                await client.publish(topic, agent_batch(run, records[20:]), qos=1)
            await counted(running, accepted_samples=40)
        assert await db.hlen(keys.run_samples(run)) == 40
    finally:
        await own.stop()
