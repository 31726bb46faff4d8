"""The fuzz suite's messages: malformed and forged MQTT messages for ingest (agent topics) and
for the agents (their command topics), each with the counter it must land in.

Three sources, mixed by :func:`fuzz_plan`:

* the corpus (``corpus/*.jsonl``): hand-written payloads, at least one per rejection reason;
* hypothesis strategies: junk bytes (non-UTF-8, truncated, huge, deeply nested, NaN) and
  mutations of valid messages (a field dropped, added, or set to a value of another type);
* live forgeries, built at send time from what Redis holds: a stored sample sent again with
  another value (the first value must stay), a seq at or beyond its running run's limit.

Every message is written as a template: ``{agent}``, ``{board}``, ``{closed_run}`` ... are
replaced, byte for byte, by the ids of one :class:`World` (:func:`roles`), so one template
becomes many messages aimed at real agents, boards and runs. Its fate comes from
:func:`ingest_fate` or :func:`agent_fate`: what the consumer must count it as, judged with the
same parsers the consumers use, and ``None`` for a message a consumer would accept (a forgery
only the broker's ACLs could stop: the topic's agent is who it says it is). Those are never
sent: the sweep they run alongside must not be disturbed, and every message must be counted
by reason.
"""

from __future__ import annotations

import base64
import json
import math
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydantic_core
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from controller.ingest.handlers import MAX_PAYLOAD_BYTES
from controller.ingest.parse import (
    LABELS,
    Rejected,
    check_ids,
    parse_json,
    parse_sample_batch,
    parse_trace_chunk,
    validate,
)
from farm.catalog import BenchmarkError, get_benchmark
from farm.messages import (
    COMMAND_TYPES,
    COMMANDS,
    MAX_COMMAND_BYTES,
    MAX_RUN_SAMPLES,
    PROTOCOL_VERSION,
    SCHEMA,
    CancelCommand,
    RefuseCommand,
    RunCommand,
    SampleRecord,
    command_topic,
    parse_topic,
)

CORPUS = Path(__file__).parent / "corpus"
INGEST = "ingest"


@dataclass(frozen=True)
class Fuzz:
    """One message: where it goes, and the counters it may land in (one of them, once)."""

    to: str
    """``ingest``, or the agent whose command topic it is published on."""
    topic: str
    payload: bytes
    fates: frozenset[str]


@dataclass
class World:
    """The real farm a fuzz run aims at."""

    boards: dict[str, list[str]]
    """Real agent -> its boards."""
    started: dict[str, float]
    """Real agent -> the ``started`` of its running process."""
    closed: dict[str, tuple[str, str, str]]
    """A closed run -> (agent, board, command id): the reference sweep's runs."""
    live: dict[str, tuple[str, str]] = field(default_factory=dict)
    """A run that may be in progress -> (agent, board): the fuzzed sweep's runs."""

    def run_fate(self, agent: str, board: str, run: str) -> str | None:
        """Ingest's verdict on a valid sample batch or run event (``None``: accepted)."""
        if run in self.closed:
            owner = self.closed[run][:2]
            return (
                "rejected_run_closed"
                if owner == (agent, board)
                else ("rejected_not_dispatched_here")
            )
        if run in self.live:
            return None if self.live[run] == (agent, board) else "rejected_not_dispatched_here"
        return "rejected_unknown_run"

    def owner(self, board: str) -> str | None:
        return next((a for a, boards in self.boards.items() if board in boards), None)


def roles(world: World, rng: random.Random, agent: str, n: int) -> dict[bytes, bytes]:
    """The placeholders of message ``n`` aimed at ``agent`` (a real agent), as bytes."""
    other = rng.choice([a for a in world.boards if a != agent])
    closed = [r for r, (a, _, _) in world.closed.items() if a == agent]
    closed_run = rng.choice(closed)
    _, board, command = world.closed[closed_run]
    live = [r for r, (a, _) in world.live.items() if a == agent] or [f"fz-live-{n}"]
    live_run = rng.choice(live)
    values = {
        "agent": agent,
        "board": board,
        "other_agent": other,
        "other_board": rng.choice(world.boards[other]),
        "closed_run": closed_run,
        "closed_command": command,
        "live_run": live_run,
        "live_board": world.live[live_run][1] if live_run in world.live else board,
        "unknown_run": f"fz-run-{n}",
        "fresh": f"fz-cmd-{n}",
        "fake_agent": f"fz-ghost-{n % 7}",
        "fake_board": f"fz-board-{n % 7}",
    }
    return {b"{%s}" % k.encode(): v.encode() for k, v in values.items()}


def fill(template: bytes, values: dict[bytes, bytes]) -> bytes:
    """``template`` with every placeholder replaced."""
    for key, value in values.items():
        template = template.replace(key, value)
    return template


# -- fates ------------------------------------------------------------------------------------


def ingest_fate(world: World, topic_name: str, payload: bytes) -> str | None:
    """The counter ingest must increment for this message, in the order ingest judges it
    (``controller.ingest.handlers``); ``None`` if ingest would accept it, or if it would make
    ingest refuse a real agent (an unreadable ``online`` status of another protocol)."""
    topic = parse_topic(topic_name)
    if topic is None:
        return "rejected_bad_topic"
    if topic.kind == "console":
        return None  # a console session's output: for its console, never stored or counted
    if not payload and topic.kind in ("status", "board_status"):
        return f"cleared_{LABELS[topic.kind]}"
    if len(payload) > MAX_PAYLOAD_BYTES:
        return "rejected_too_large"
    try:
        if topic.kind == "samples":
            batch = parse_sample_batch(payload)
            check_ids(topic, batch.agent, batch.board, batch.run)
            if max(batch.seqs) >= MAX_RUN_SAMPLES:
                return "rejected_seq_out_of_range"
            assert topic.board is not None and topic.run is not None
            fate = world.run_fate(topic.agent, topic.board, topic.run)
            if fate is None and batch.attempt not in (None, 1):
                # The fuzzed sweep's runs are at their first attempt.
                return "rejected_wrong_attempt"
            return fate
        if topic.kind == "trace":
            chunk = parse_trace_chunk(payload)
            check_ids(topic, chunk["agent"], chunk["board"], chunk["run"])
            assert topic.board is not None and topic.run is not None
            fate = world.run_fate(topic.agent, topic.board, topic.run)
            if fate is None and chunk["attempt"] not in (None, 1):
                return "rejected_wrong_attempt"
            return fate
        raw = parse_json(payload)
        try:
            message = validate(topic.kind, payload)
        except Rejected:
            if topic.kind == "status" and topic.agent in world.boards and _refusable(raw):
                return None
            raise
        check_ids(
            topic,
            message.agent,
            getattr(message, "board", None) if topic.board is not None else None,
            getattr(message, "run", None) if topic.run is not None else None,
        )
    except Rejected as rejected:
        return f"rejected_{rejected.reason}"
    if topic.kind == "run_events":
        assert topic.board is not None and topic.run is not None
        return world.run_fate(topic.agent, topic.board, topic.run)
    if topic.kind in ("status", "board_status"):
        if message.started is None:
            return "rejected_missing_generation"
        if topic.kind == "status":
            stored = world.started.get(topic.agent)
            return "rejected_stale_agent_status" if stored and message.started < stored else None
        assert topic.board is not None
        owner = world.owner(topic.board)
        if owner == topic.agent and message.started < world.started[owner]:
            return "rejected_stale_board_status"
        return "rejected_board_conflict" if owner and owner != topic.agent else None
    return None


def _refusable(raw: Any) -> bool:
    """Whether ingest would refuse the agent of this unreadable status (see
    ``controller.ingest.agents.Agents.refuse_unreadable``)."""
    return (
        isinstance(raw, dict)
        and raw.get("state") == "online"
        and isinstance(raw.get("protocol"), int)
        and raw.get("protocol") != PROTOCOL_VERSION
    )


def agent_fate(world: World, agent: str, payload: bytes) -> str | None:
    """The counter ``agent`` must increment for this command (``agent.service``'s order);
    ``None`` for a command it would carry out (a run, flash, check or refuse with a new id, a
    cancel of a real run)."""
    if len(payload) > MAX_COMMAND_BYTES:
        return "commands_rejected_oversized"
    try:
        data = pydantic_core.from_json(payload)
    except ValueError:
        return "commands_rejected_invalid_json"
    if not isinstance(data, dict):
        return "commands_rejected_invalid_json"
    if data.get("schema") != SCHEMA:
        return "commands_rejected_unsupported_schema"
    if data.get("type") not in COMMAND_TYPES:
        return "commands_rejected_unknown_command"
    try:
        command = COMMANDS.validate_python(data)
    except ValidationError:
        return "commands_rejected_invalid_command"
    recorded = {c for a, _, c in world.closed.values() if a == agent}
    if command.id in recorded:
        return "commands_duplicate"
    if isinstance(command, CancelCommand):
        known = command.run in world.closed or command.run in world.live
        return None if known else "commands_failed"
    if isinstance(command, RefuseCommand):
        return None
    if command.board not in world.boards[agent]:
        return "commands_rejected_unknown_board"
    if isinstance(command, RunCommand):
        try:
            get_benchmark(command.benchmark)
        except BenchmarkError:
            return "commands_rejected_invalid_run"
        if command.stored and command.mode != "accuracy":
            return "commands_rejected_invalid_run"
    return None


# -- templates ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Template:
    """A message with placeholders (see :func:`roles`); ``to`` is ``ingest`` or ``agent``."""

    to: str
    topic: str
    payload: bytes


def corpus() -> list[tuple[Template, str]]:
    """The hand-written corpus, each entry with the fate it was written for."""
    entries = []
    for path in sorted(CORPUS.glob("*.jsonl")):
        for line in path.read_text().splitlines():
            if not line.strip() or line.startswith("#"):
                continue
            entry = json.loads(line)
            if "b64" in entry:
                payload = base64.b64decode(entry["b64"])
            elif "pad" in entry:
                payload = b" " * entry["pad"]
            elif "nest" in entry:
                payload = b"[" * entry["nest"] + b"]" * entry["nest"]
            else:
                payload = json.dumps(entry["json"], separators=(",", ":")).encode()
            topic = entry.get("topic", "farm/v1/cmd/{agent}")
            entries.append((Template(entry["to"], topic, payload), entry["fate"]))
    return entries


def instantiate(world: World, template: Template, rng: random.Random, n: int) -> Fuzz | None:
    """Message ``n`` from ``template``, aimed at a real agent; ``None`` if it would be
    accepted (see :func:`ingest_fate`, :func:`agent_fate`)."""
    agent = rng.choice(sorted(world.boards))
    values = roles(world, rng, agent, n)
    topic = fill(template.topic.encode(), values).decode()
    payload = fill(template.payload, values)
    if template.to == INGEST:
        fate = ingest_fate(world, topic, payload)
        return None if fate is None else Fuzz(INGEST, topic, payload, frozenset({fate}))
    fate = agent_fate(world, agent, payload)
    return None if fate is None else Fuzz(agent, command_topic(agent), payload, frozenset({fate}))


_RECORD = {"seq": 0, "index": 3, "label": 1, "results": [0.25, 0.75], "latency_us": 250.5}
_IDS = {"agent": "{agent}", "board": "{board}"}
_CHUNK = {"schema": SCHEMA, **_IDS, "seq": 0, "chunk": 1, "values": [1.5e-6, None, 2.5e-6]}
#: Valid messages (once their placeholders are filled) that the mutations start from.
BASES: dict[str, list[tuple[str, dict[str, Any]]]] = {
    INGEST: [
        (
            "farm/v1/agent/{agent}/board/{board}/run/{closed_run}/samples",
            {"schema": SCHEMA, **_IDS, "run": "{closed_run}", "samples": [_RECORD]},
        ),
        (
            "farm/v1/agent/{other_agent}/board/{board}/run/{live_run}/samples",
            {**_IDS, "agent": "{other_agent}", "run": "{live_run}", "samples": [_RECORD]},
        ),
        (
            "farm/v1/agent/{agent}/board/{board}/run/{closed_run}/trace",
            {**_CHUNK, "run": "{closed_run}"},
        ),
        (
            "farm/v1/agent/{agent}/board/{board}/run/{unknown_run}/events",
            {**_IDS, "run": "{unknown_run}", "event": "done", "count": 1, "digest": "0" * 64},
        ),
        (
            "farm/v1/agent/{agent}/board/{other_board}/run/{live_run}/events",
            {
                **_IDS,
                "board": "{other_board}",
                "run": "{live_run}",
                "event": "error",
                "kind": "device",
                "reason": "forged",
                "attempt": 1,
            },
        ),
        ("farm/v1/agent/{agent}/status", {"agent": "{agent}", "state": "offline"}),
        (
            "farm/v1/agent/{fake_agent}/board/{board}/status",
            {
                **_IDS,
                "agent": "{fake_agent}",
                "state": "idle",
                "health": "good",
                "started": 1e12,
            },
        ),
        (
            "farm/v1/agent/{agent}/board/{board}/status",
            {**_IDS, "state": "offline", "health": "bad", "started": 1.0},
        ),
        ("farm/v1/agent/{fake_agent}/heartbeat", {"agent": "{fake_agent}", "uptime_s": 1.0}),
        ("farm/v1/agent/{agent}/events", {"agent": "{agent}", "command": "{fresh}"}),
    ],
    "agent": [
        (
            "",
            {
                "schema": SCHEMA,
                "id": "{closed_command}",
                "type": "run",
                "board": "{board}",
                "run": "{closed_run}",
                "benchmark": "ic01",
                "mode": "accuracy",
            },
        ),
        ("", {"schema": SCHEMA, "id": "{fresh}", "type": "cancel", "run": "{unknown_run}"}),
        (
            "",
            {"schema": SCHEMA, "id": "{fresh}", "type": "health-check", "board": "{other_board}"},
        ),
        (
            "",
            {
                "schema": SCHEMA,
                "id": "{fresh}",
                "type": "run",
                "board": "{board}",
                "run": "{unknown_run}",
                "benchmark": "nope01",
                "mode": "performance",
            },
        ),
    ],
}
#: The bases as templates: structurally valid forgeries.
FORGED = {
    to: [
        Template(to, topic or "farm/v1/cmd/{agent}", json.dumps(body).encode())
        for topic, body in bases
    ]
    for to, bases in BASES.items()
}
_FIELDS = sorted(
    {"schema", "id", "type", "board", "run", "event", "state", "started", "samples", "seq"}
    | {"chunk", "values"}
    | set(SampleRecord.model_fields)
)

_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(),  # NaN and infinities included: not JSON, written as such
    st.text(max_size=20),
    st.sampled_from(["{agent}", "{board}", "{other_board}", "{live_run}", "farm/v1", "online"]),
)
json_values = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=12,
)
junk = st.one_of(
    st.binary(max_size=300),
    st.binary(min_size=1, max_size=100).map(lambda b: b"\xff\xfe" + b),  # not UTF-8
    st.integers(1, 20_000).map(lambda n: b"[" * n + b"]" * n),  # nested past any parser
    st.integers(1, 2_000).map(lambda n: b'{"a":' * n + b"1" + b"}" * n),
    st.integers(10_000, 100_000).map(lambda n: b'{"pad":"' + b"x" * n + b'"}'),  # huge
    json_values.map(lambda v: json.dumps(v).encode()),
)


@st.composite
def mutated(draw: st.DrawFn, to: str) -> Template:
    """A base message (:data:`BASES`) as it is, or with one mutation: a field dropped, added,
    or set to another value (of any type), a seq out of range, the JSON cut short, or the
    payload replaced by junk."""
    topic, body = draw(st.sampled_from(BASES[to]))
    body = json.loads(json.dumps(body))
    target = body["samples"][0] if "samples" in body and draw(st.booleans()) else body
    # "keep": the forgery as it is, structurally valid, judged by what it aims at.
    how = draw(st.sampled_from(["keep", "drop", "set", "set", "seq", "cut", "junk"]))
    if how == "drop" and target:
        target.pop(draw(st.sampled_from(sorted(target))))
    elif how == "set":
        target[draw(st.sampled_from(_FIELDS))] = draw(json_values)
    elif how == "seq" and "samples" in body:
        body["samples"][0]["seq"] = draw(
            st.one_of(st.integers(max_value=-1), st.integers(min_value=MAX_RUN_SAMPLES))
        )
    payload = json.dumps(body, separators=(",", ":")).encode()
    if how == "cut":
        payload = payload[: draw(st.integers(0, len(payload) - 1))]
    elif how == "junk":
        payload = draw(junk)
    return Template(to, topic or "farm/v1/cmd/{agent}", payload)


#: Topic levels of any printable text. Not control characters, surrogates or non-characters:
#: Mosquitto takes a topic holding one for a malformed packet and drops the publisher's
#: connection, so such a message reaches no consumer (nothing for them to count).
_topic_text = st.text(
    alphabet=st.characters(
        whitelist_categories=["L", "N", "P", "S", "Zs"], blacklist_characters="+#"
    ),
    max_size=40,
)
#: Topics under ingest's subscription that name no agent topic (or a real one, by chance).
odd_topics = st.one_of(
    _topic_text.map(lambda t: f"farm/v1/agent/{t}"),
    st.lists(_topic_text, max_size=8).map(lambda ts: "farm/v1/agent/{agent}/" + "/".join(ts)),
)


def templates(to: str) -> st.SearchStrategy[Template]:
    """What hypothesis draws for one consumer."""
    shapes = mutated(to)
    if to == INGEST:
        odd = st.builds(Template, st.just(INGEST), odd_topics, junk | st.just(b"{}"))
        # One in six: hypothesis's one_of would not weigh a strategy listed twice.
        shapes = st.integers(0, 5).flatmap(lambda i: odd if i == 0 else mutated(to))
    return shapes


def drawn(strategy: st.SearchStrategy[Any], count: int, at: int) -> list[Any]:
    """``count`` values of ``strategy`` (fewer if hypothesis runs out of distinct ones), the
    same ones for the same ``at``.

    Hypothesis is the generator here, not the test runner: ``@given`` wants to own the test
    function and call it once per example, while this suite needs one live farm (processes,
    a sweep in progress) for thousands of messages, published from an asyncio loop. So a
    throwaway ``@given`` function collects the examples up front, synchronously, seeded,
    with only the generate phase (no shrinking: nothing fails in here), and the live test
    publishes them. ``strategy.example()`` would do it one at a time, unseeded and slower."""
    found: list[Any] = []

    @seed(at)
    @settings(
        max_examples=count,
        database=None,
        deadline=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(strategy)
    def collect(value: Any) -> None:
        found.append(value)

    collect()
    return found


# -- live forgeries ---------------------------------------------------------------------------


def live_forgery(world: World, redis: Any, rng: random.Random) -> Fuzz | None:
    """A forgery for a run of the sweep in progress, from the run's own agent and board,
    judged by what Redis holds now: a seq already stored, sent again with another label
    (``conflicting_samples``: the first value stays), or a seq at or beyond the run's limit;
    either may find the run closed by the time ingest reads it. ``None`` if no run is far
    enough along."""
    runs = list(world.live)
    rng.shuffle(runs)
    for run in runs:
        agent, board, state, limit = redis.hmget(
            f"farm:run:{run}", ["agent", "board", "state", "seq_limit"]
        )
        if state not in ("dispatched", "running"):
            continue
        topic = f"farm/v1/agent/{agent}/board/{board}/run/{run}/samples"
        closed = "rejected_run_closed"
        if rng.random() < 0.5 and limit and limit.isdigit():
            record = {**_RECORD, "seq": int(limit) + rng.randrange(1000)}
            fates = {"rejected_seq_out_of_range", closed}
        else:
            stored = redis.hrandfield(f"farm:run:{run}:samples", 1, withvalues=True)
            if not stored:
                continue
            record = json.loads(stored[1])
            record["label"] += 1
            fates = {"conflicting_samples", closed}
        body = {"schema": SCHEMA, "agent": agent, "board": board, "run": run, "samples": [record]}
        payload = json.dumps(body, separators=(",", ":")).encode()
        return Fuzz(INGEST, topic, payload, frozenset(fates))
    return None


AGENT_SHARE = 0.3
"""The share of the messages sent to the agents (the rest to ingest)."""


@dataclass(frozen=True)
class Pools:
    """The templates of one fuzz run: the corpus and what hypothesis drew."""

    count: int
    at: int
    corpus: list[Template]
    drawn: dict[str, list[Template]]


def draw_pools(count: int, at: int) -> Pools:
    """Everything ``count`` messages are made of (hypothesis's share drawn now: seconds per
    thousand, better spent before the farm starts)."""
    entries = [t for t, _ in corpus()]
    agent_count = math.ceil((count - len(entries)) * AGENT_SHARE)
    return Pools(
        count,
        at,
        entries,
        {
            "agent": drawn(templates("agent"), agent_count, at),
            INGEST: drawn(templates(INGEST), count - len(entries) - agent_count, at + 1),
        },
    )


def fuzz_plan(world: World, pools: Pools) -> Iterator[Fuzz | None]:
    """``pools.count`` messages: the whole corpus first (shuffled), then hypothesis's,
    interleaved for both consumers; ``None`` where a live forgery goes (built at send time,
    one in twenty of ingest's)."""
    rng = random.Random(pools.at)
    entries = list(pools.corpus)
    rng.shuffle(entries)
    count = pools.count
    agent_share = AGENT_SHARE
    pools_by_consumer = pools.drawn
    n = 0
    sent = 0

    def made(template: Template) -> Fuzz | None:
        nonlocal n
        n += 1
        return instantiate(world, template, rng, n)

    for template in entries:
        message = made(template)
        assert message is not None, template  # written to be rejected, whatever the roles
        sent += 1
        yield message
    while sent < count:
        to = "agent" if rng.random() < agent_share else INGEST
        if to == INGEST and rng.random() < 0.05:
            sent += 1
            yield None
            continue
        # One in six a base as it is (hypothesis draws each distinct template once: its
        # unmutated bases would be a handful among thousands), aimed anew each time.
        pool = FORGED[to] if rng.random() < 1 / 6 else pools_by_consumer[to]
        # A drawn template may aim at what would be accepted for these roles: another go.
        for _ in range(20):
            message = made(rng.choice(pool))
            if message is not None:
                sent += 1
                yield message
                break
