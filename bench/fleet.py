"""An emulated fleet for load tests: many agents and boards speaking the agents' real MQTT
protocol from one asyncio process, with no boards, ports or journals behind them.

    python bench/fleet.py --broker mqtt://127.0.0.1:1883 --agents 8 --boards-per-agent 8 \\
                          [--model kws01] [--inference-s 0.01] [--prefix emu]

Each emulated agent has its own MQTT client (the agent's own, ``agent.mqtt_client``: same
client id, persistent session and last will) and publishes what ``farm agent`` publishes:
its retained status, a retained status per board (idle, health good, holding ``model``'s
performance firmware, so ``farm submit`` plans runs on it without a flash), heartbeats,
command acks, and for each run command the run's ``accepted``, ``started`` (``total``,
``seq_limit``, the attempt echoed), sample batches, ``progress`` and ``done`` with the digest
of exactly the samples sent. Every message is built by the project's own code: the
``farm.messages`` models, ``SAMPLE_BATCH.record``/``encode`` for the samples of
``farm.sample.Sample`` objects, ``agent.run_bookkeeping`` (``Tally``, ``ProgressEvents``,
``run_info``) for the digest, progress and runner info, so the bytes are the ones a real agent
would send.

What a board "runs" is paced, not computed: a sample is ready ``inference_s`` (times its
inference count) after the previous one, and batches leave as the agent's ``SampleBatcher``
lets them (``batch_delay_s`` after their first sample, or once they hold ``batch_samples``),
the emulator waking once per batch rather than once per sample so that hundreds of boards fit
one process. Records carry the official index's rows and labels (``farm.datasets``), in the
runner's order (accuracy: every row, ``limit`` cut; latency: the first ``latency_inputs``
rows in turn; performance: a calibration, then ``windows`` timed windows), result vectors that
pick the right class about ``accuracy`` of the time, and DUT µs counters that advance with the
emulated inference time.

What it does not emulate: health-check timing, flashing (a flash command succeeds at once and
the board then holds that model), energy mode and sww01 (refused as an ``input`` failure, as a
board without the wiring refuses them), windowed datasets (ad01), console sessions, broker
reconnects (a lost connection ends the emulator) and agent restarts. It is a bench and test
tool: never a stand-in for an agent in a functional test.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import random
import sys
import time
import zlib
from collections import Counter, deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import aiomqtt
from pydantic import ValidationError

from agent.config import BrokerConfig
from agent.identity import software_version
from agent.mqtt_client import make_client
from agent.one_board import script_counts
from agent.outbox import WINDOW
from agent.run_bookkeeping import ProgressEvents, Tally, event_name, run_info, run_request
from agent.runner import RunInfo, size_count
from agent.service import command_ack
from farm.catalog import BenchmarkError, get_benchmark
from farm.datasets import Row, official_rows
from farm.logs import get_logger
from farm.messages import (
    COMMANDS,
    SAMPLE_BATCH,
    Accepted,
    AckOutcome,
    AgentStatus,
    BoardState,
    BoardStatus,
    CancelCommand,
    Cancelled,
    Command,
    CommandAck,
    ConsoleCommand,
    Done,
    Failed,
    FirmwareIdentity,
    FlashCommand,
    Heartbeat,
    RefuseCommand,
    RunCommand,
    Started,
    agent_events_topic,
    agent_status_topic,
    board_status_topic,
    command_topic,
    heartbeat_topic,
    run_events_topic,
    samples_topic,
)
from farm.models import MODELS
from farm.sample import Sample
from farm.scripts import run_script

log = get_logger("bench.fleet")

#: The DUT's µs counter is 32 bits wide (``Sample.wrapped``).
COUNTER_WRAP = 1 << 32
#: Bauds a health check would try: what the controller's check-time model reads.
BAUDS = [115200]


class RunUnsupported(Exception):
    """A run the emulator cannot emulate: reported as an ``input`` failure."""


@dataclass
class FleetStats:
    """What the emulator did since it started (all agents)."""

    commands: Counter[str] = field(default_factory=Counter)
    """Commands received, by type (and ``rejected``, ``duplicate``)."""
    runs: Counter[str] = field(default_factory=Counter)
    """Runs ended, by final event (done, cancelled, error)."""
    samples: int = 0
    batches: int = 0
    messages: int = 0
    """Messages published (every kind)."""


@dataclass
class _Job:
    command: RunCommand | FlashCommand | Command
    cancelled: bool = False


@dataclass(frozen=True)
class Timed:
    """One emulated sample: the sample and the emulated time it took (its inferences)."""

    cost_s: float
    sample: Sample


class EmulatedBoard:
    """One board: its job queue and the runs it emulates, one at a time."""

    def __init__(self, agent: EmulatedAgent, board: str, seed: int) -> None:
        self.agent = agent
        self.id = board
        self.model = agent.fleet.model
        self.build = "performance"
        self.state: BoardState = "idle"
        self.run: str | None = None
        self.checked = time.time()
        self.rng = random.Random(seed)
        self.clock_us = self.rng.randrange(1_000_000, 100_000_000)
        self.queue: deque[_Job] = deque()
        self.current: _Job | None = None
        self.task: asyncio.Task[None] | None = None
        self.wake = asyncio.Event()

    def status(self) -> BoardStatus:
        """The board's retained status now."""
        return BoardStatus(
            agent=self.agent.id,
            board=self.id,
            state=self.state,
            health="good",
            model=self.model,
            build=self.build,
            run=self.run,
            images={self.model: [self.build]},
            tags={"emulated": "1"},
            started=self.agent.started,
            checked=self.checked,
            bauds=BAUDS,
        )

    async def publish_status(self) -> None:
        await self.agent.publish(
            board_status_topic(self.agent.id, self.id), self.status().dumps(), retain=True
        )

    def ahead(self) -> int:
        return len(self.queue) + (1 if self.current is not None else 0)

    def has_run(self, run: str) -> bool:
        jobs = [*self.queue, *([self.current] if self.current else [])]
        return any(isinstance(j.command, RunCommand) and j.command.run == run for j in jobs)

    async def cancel(self, run: str) -> bool:
        """Cancel a queued or running run (as ``BoardWorker.cancel``); False if not here."""
        for job in self.queue:
            if isinstance(job.command, RunCommand) and job.command.run == run:
                self.queue.remove(job)
                await self.event(job.command, Cancelled, count=0)
                self.agent.fleet.stats.runs["cancelled"] += 1
                return True
        current = self.current
        if (
            current is not None
            and isinstance(current.command, RunCommand)
            and current.command.run == run
        ):
            current.cancelled = True
            if self.task is not None:
                self.task.cancel()
            return True
        return False

    async def serve(self) -> None:
        """Execute queued jobs in order until cancelled."""
        await self.publish_status()
        while True:
            while not self.queue:
                self.wake.clear()
                await self.wake.wait()
            job = self.current = self.queue.popleft()
            self.task = asyncio.get_running_loop().create_task(self._execute(job))
            try:
                await self.task
            except asyncio.CancelledError:
                current = asyncio.current_task()
                if current is not None and current.cancelling():
                    raise
            finally:
                self.current, self.task, self.run = None, None, None
                self.state = "idle"
                await self.publish_status()

    async def _execute(self, job: _Job) -> None:
        command = job.command
        if isinstance(command, RunCommand):
            await self._run(job, command)
            return
        # A flash, a power cycle or a health check: done at once, the board answering.
        detail: dict[str, Any] = {}
        if isinstance(command, FlashCommand):
            self.model, self.build = command.model, command.build
            detail["seconds"] = 0.0
        self.checked = time.time()
        detail.update(model=self.model, build=self.build)
        await self.agent.ack(command, "done", board=self.id, detail=detail)

    async def event(self, job: RunCommand, event_type: type, **fields: Any) -> None:
        """Publish one of the run's events (as ``BoardWorker._event``)."""
        event = event_type(
            agent=self.agent.id,
            board=self.id,
            run=job.run,
            attempt=job.attempt,
            event=event_name(event_type),
            **fields,
        )
        await self.agent.publish(run_events_topic(self.agent.id, self.id, job.run), event.dumps())

    async def _run(self, job: _Job, command: RunCommand) -> None:
        stats = self.agent.fleet.stats
        self.state, self.run = "busy", command.run
        await self.publish_status()
        tally = Tally()
        try:
            plan = RunPlan(command, self.model, self.agent.fleet, self)
            await self.event(
                command,
                Started,
                model=self.model,
                build=self.build,
                total=plan.total,
                seq_limit=plan.seq_limit,
                dataset=f"emulated/{plan.rows_of}",
                firmware=FirmwareIdentity(
                    profile="ulp-mlperf", name="emulated", software=software_version()
                ),
            )
            await self._stream(command, plan, tally)
            await self.event(
                command,
                Done,
                count=tally.count,
                digest=tally.digest.hexdigest(),
                first_seq=tally.first,
                last_seq=tally.last,
                skipped=len(plan.skip),
                info=run_info(plan.info),
            )
            stats.runs["done"] += 1
        except asyncio.CancelledError:
            if not job.cancelled:
                raise
            current = asyncio.current_task()
            if current is not None:
                current.uncancel()
            await self.event(command, Cancelled, count=tally.count, last_seq=tally.last)
            stats.runs["cancelled"] += 1
        except RunUnsupported as exc:
            await self.event(command, Failed, kind="input", reason=str(exc), count=0, last_seq=None)
            stats.runs["error"] += 1

    async def _stream(self, command: RunCommand, plan: RunPlan, tally: Tally) -> None:
        """Publish the run's samples paced by their emulated time, in batches as the agent's
        ``SampleBatcher`` makes them, with progress events at most once a second."""
        fleet = self.agent.fleet
        loop = asyncio.get_running_loop()
        progress = ProgressEvents(self.agent.id, self.id, command.run, command.attempt)
        topic = samples_topic(self.agent.id, self.id, command.run)
        samples = plan.samples()
        ready_at = loop.time() + plan.setup_s
        upcoming: Timed | None = next(samples, None)
        done = len(plan.skip)
        while upcoming is not None:
            # The batch starts with the next sample and closes when it is batch_delay_s old
            # or full: sleep until then, then send every sample ready by that time.
            first_ready = ready_at + upcoming.cost_s
            closes = first_ready + fleet.batch_delay_s
            records: list[dict[str, Any]] = []
            while upcoming is not None and len(records) < fleet.batch_samples:
                if ready_at + upcoming.cost_s > closes:
                    break
                ready_at += upcoming.cost_s
                records.append(SAMPLE_BATCH.record(upcoming.sample))
                upcoming = next(samples, None)
            if (delay := ready_at - loop.time()) > 0:
                await asyncio.sleep(delay)
            payload = SAMPLE_BATCH.encode(
                self.agent.id, self.id, command.run, records, command.attempt
            )
            await self.agent.publish(topic, payload)
            for record in records:
                tally.add(record)
            done += len(records)
            fleet.stats.samples += len(records)
            fleet.stats.batches += 1
            remaining = None if plan.total is None else max(plan.total - done, 0)
            progress(done, plan.total, None if remaining is None else remaining * plan.per_s)
            if (event := progress.take()) is not None:
                await self.agent.publish(run_events_topic(self.agent.id, self.id, command.run),
                                         event.dumps())  # fmt: skip


class RunPlan:
    """What one run command makes a board do, as ``agent.runner.Runner`` would: its inputs,
    its sample count and seq limit, and the samples with their emulated times."""

    def __init__(
        self, command: RunCommand, model: str, fleet: FleetEmulator, board: EmulatedBoard
    ) -> None:
        self.command = command
        self.board = board
        self.fleet = fleet
        try:
            bench = get_benchmark(command.benchmark)
        except BenchmarkError as exc:
            raise RunUnsupported(str(exc)) from None
        if command.mode == "energy" or bench.streamed:
            raise RunUnsupported(f"board {board.id} has no interface board and energy monitor")
        if bench.dataset.window_bytes is not None:
            raise RunUnsupported(f"the emulator has no windowed datasets ({bench.dataset.id})")
        if model not in bench.firmware_models:
            raise RunUnsupported(f"the DUT runs {model}; {bench.id} needs {bench.firmware_models}")
        o = command.options
        # The agent's own reading of the options (no datasets here: the path is unused).
        self.settings = run_request(command, Path(".")).settings
        script = run_script(bench, command.mode, o.script)
        self.counts = script_counts(command.mode, script)
        self.sized = script.sized
        self.outputs = MODELS[model].outputs
        self.rows_of = bench.dataset.id
        rows = official_rows(bench.dataset.id, alt=o.alt)
        self.rows: list[Row] = rows[: script.loop] if script.loop else rows
        self.skip = frozenset(s for a, b in command.stored for s in range(a, b))
        self.info = RunInfo(warmup=self.counts[1])
        self.per_s = fleet.inference_s * sum(self.counts)
        self.setup_s = 0.0
        """Emulated time before the first sample (performance: the calibration)."""
        mode = command.mode
        if mode == "accuracy":
            self.inputs = self.rows if o.limit is None else self.rows[: o.limit]
            self.total: int | None = len(self.inputs)
            self.seq_limit: int | None = self.total
        elif mode == "latency":
            self.inputs = self.rows[: max(1, o.latency_inputs)]
            self.total = o.limit if o.limit is not None else o.min_queries
            self.seq_limit = o.limit
            self.per_s = fleet.inference_s
        else:
            windows = self.rows[: o.windows]
            self.inputs = windows if o.limit is None else windows[: o.limit]
            self.total = self.seq_limit = len(self.inputs)
            self._calibrate()

    def _calibrate(self) -> None:
        """Grow a window until it lasts ``calibration_s`` (``Runner._calibrate``), in
        emulated time; N of the timed windows from its throughput."""
        per = self.fleet.inference_s
        n, spent = 1, 0.0
        while True:
            elapsed = max(1, round(n * per * 1e6))
            self.info.calibration.append((n, elapsed))
            spent += elapsed / 1e6
            if elapsed / 1e6 >= self.settings.calibration_s or n >= 1 << 24:
                break
            n = min(n * 10, max(n + 1, math.ceil(self.settings.calibration_s / per)))
        sized = size_count(n / (elapsed / 1e6), self.settings)
        self.info.count = sized if self.sized else self.counts[0]
        self.setup_s = spent
        self.per_s = (self.info.count + self.info.warmup) * per

    def samples(self) -> Iterator[Timed]:
        """The run's samples in seq order (those ``stored`` left out), with their times."""
        mode = self.command.mode
        if mode == "accuracy":
            n, w = self.counts
            for seq, row in enumerate(self.inputs):
                if seq not in self.skip:
                    yield self._timed(seq, row, None, n, w)
        elif mode == "latency":
            yield from self._latency()
        else:
            count = self.info.count or 1
            started = 0.0
            for seq, row in enumerate(self.inputs):
                timed = self._timed(seq, row, seq, count, self.info.warmup, wall=True)
                started += timed.cost_s
                yield timed
            self.info.loop_wall_s = started

    def _latency(self) -> Iterator[Timed]:
        s = self.settings
        per_input = math.ceil(s.min_queries / len(self.inputs))
        seq, issued = 0, 0.0
        while True:
            for row in self.inputs:
                for _ in range(per_input):
                    self.info.last_issue_s = issued
                    timed = self._timed(seq, row, None, 1, 0)
                    issued += timed.cost_s
                    yield timed
                    seq += 1
                    if s.limit is not None and seq >= s.limit:
                        return
                    if seq >= s.min_queries and self.info.last_issue_s >= s.min_duration_s:
                        return

    def _timed(
        self, seq: int, row: Row, window: int | None, count: int, warmup: int, *, wall: bool = False
    ) -> Timed:
        board = self.board
        rng = board.rng
        cost = self.fleet.inference_s * (count + warmup) * rng.uniform(0.98, 1.02)
        elapsed = max(1, round(self.fleet.inference_s * count * 1e6 * rng.uniform(0.98, 1.02)))
        start = (board.clock_us + round(self.fleet.inference_s * warmup * 1e6)) % COUNTER_WRAP
        end = (start + elapsed) % COUNTER_WRAP
        board.clock_us = (board.clock_us + round(cost * 1e6) + 1_000) % COUNTER_WRAP
        sample = Sample(
            seq=seq,
            index=row.index,
            segment=None,
            window=window,
            label=row.label,
            results=self._results(row.label, rng),
            count=count,
            warmup=warmup,
            start_us=start,
            end_us=end,
            elapsed_us=elapsed,
            latency_us=elapsed / count,
            wrapped=end < start,
            wall_s=round(cost, 6) if wall else None,
        )
        return Timed(cost, sample)

    def _results(self, label: int, rng: random.Random) -> tuple[float, ...]:
        """A plausible probability vector: the top class is ``label`` about ``accuracy`` of
        the time, printed to 3 decimals as the reference firmware does."""
        top = label
        if rng.random() > self.fleet.accuracy and self.outputs > 1:
            top = rng.choice([c for c in range(self.outputs) if c != label])
        rest = 1.0 - (peak := rng.uniform(0.6, 0.99))
        values = [rest / max(1, self.outputs - 1)] * self.outputs
        values[top] = peak
        return tuple(round(v, 3) for v in values)


class EmulatedAgent:
    """One emulated ``farm agent``: its MQTT client, boards and commands."""

    def __init__(self, fleet: FleetEmulator, agent: str, boards: list[str]) -> None:
        self.fleet = fleet
        self.id = agent
        self.started = time.time()
        self.monotonic_start = time.monotonic()
        self.boards = {b: EmulatedBoard(self, b, seed=zlib.crc32(b.encode())) for b in boards}
        self.outcomes: dict[str, str] = {}
        """Command id -> what it got (the real agent's journal keeps this)."""
        self.refused: str | None = None
        self.client: aiomqtt.Client | None = None
        self.connected = asyncio.Event()

    async def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        """Publish at QoS 1 and wait for the broker's acknowledgement (so one board's messages
        arrive in the order it sent them, as the agent's journal keeps them)."""
        assert self.client is not None
        await self.client.publish(topic, payload, qos=1, retain=retain)
        self.fleet.stats.messages += 1

    def agent_status(
        self, state: Literal["online", "offline"] = "online", reason: str | None = None
    ) -> AgentStatus:
        return AgentStatus(
            agent=self.id,
            state="refused" if self.refused else state,
            software=software_version(),
            boards=list(self.boards),
            started=self.started,
            uptime_s=round(time.monotonic() - self.monotonic_start, 3),
            reason=self.refused or reason,
        )

    async def serve(self) -> None:
        """Connect, state the statuses, serve commands and boards until cancelled; then say
        ``offline`` (a clean disconnect sends no will)."""
        broker = BrokerConfig(url=self.fleet.broker_url)
        self.client = make_client(broker, self.id, window=WINDOW, started=self.started)
        async with self.client:
            await self.client.subscribe(command_topic(self.id), qos=1)
            await self.publish(
                agent_status_topic(self.id), self.agent_status().dumps(), retain=True
            )
            try:
                async with asyncio.TaskGroup() as group:
                    for board in self.boards.values():
                        group.create_task(board.serve(), name=f"board-{board.id}")
                    group.create_task(self._heartbeats())
                    self.connected.set()
                    async for message in self.client.messages:
                        payload = message.payload
                        if isinstance(payload, bytes | bytearray):
                            await self._on_command(bytes(payload))
                    raise aiomqtt.MqttError("message stream ended")
            except asyncio.CancelledError:
                offline = self.agent_status("offline", "agent stopped").dumps()
                with contextlib.suppress(aiomqtt.MqttError, TimeoutError):
                    async with asyncio.timeout(2.0):
                        await self.publish(agent_status_topic(self.id), offline, retain=True)
                raise

    async def _heartbeats(self) -> None:
        while True:
            beat = Heartbeat(
                agent=self.id,
                uptime_s=round(time.monotonic() - self.monotonic_start, 3),
                backlog=0,
                counters=dict(self.fleet.stats.commands),
            )
            assert self.client is not None
            await self.client.publish(heartbeat_topic(self.id), beat.dumps(), qos=0)
            await asyncio.sleep(self.fleet.heartbeat_s)

    async def ack(
        self,
        command: Command,
        outcome: AckOutcome,
        *,
        board: str | None = None,
        reason: str | None = None,
        detail: dict[str, Any] | None = None,
    ) -> None:
        """The command's answer on the agent's events topic."""
        if outcome in ("done", "failed"):
            self.outcomes[command.id] = outcome
        ack = command_ack(self.id, command, outcome, board=board, reason=reason, detail=detail)
        await self.publish(agent_events_topic(self.id), ack.dumps())

    async def _reject(self, reason: str, command_id: str | None, kind: str | None) -> None:
        self.fleet.stats.commands["rejected"] += 1
        ack = CommandAck(
            agent=self.id, command=command_id, type=kind, outcome="rejected", reason=reason
        )
        await self.publish(agent_events_topic(self.id), ack.dumps())

    async def _on_command(self, payload: bytes) -> None:
        stats = self.fleet.stats
        try:
            command: Command = COMMANDS.validate_json(payload)
        except ValidationError as exc:
            await self._reject(f"invalid_command: {exc.errors()[0]['msg']}", None, None)
            return
        stats.commands[command.type] += 1
        if isinstance(command, ConsoleCommand):
            return  # no console here: the session's holder times out
        if command.id in self.outcomes:
            stats.commands["duplicate"] += 1
            await self.ack(command, "duplicate", reason="already received; not executed again")
            return
        if isinstance(command, RefuseCommand):
            self.refused = command.reason
            await self.ack(command, "done")
            await self.publish(
                agent_status_topic(self.id), self.agent_status().dumps(), retain=True
            )
            return
        if isinstance(command, CancelCommand):
            for candidate in self.boards.values():
                if await candidate.cancel(command.run):
                    self.outcomes[command.id] = "accepted"
                    await self.ack(command, "done", board=candidate.id)
                    return
            await self.ack(command, "failed", reason=f"no run {command.run} here")
            return
        board = self.boards.get(command.board)
        if board is None or self.refused:
            why = "refused" if self.refused else f"unknown_board: no board {command.board!r}"
            await self._reject(why, command.id, command.type)
            return
        if isinstance(command, RunCommand) and any(
            b.has_run(command.run) for b in self.boards.values()
        ):
            stats.commands["duplicate"] += 1
            await self.ack(
                command, "duplicate", board=board.id, reason=f"run {command.run} is queued"
            )
            return
        position = board.ahead()
        self.outcomes[command.id] = "accepted"
        await self.ack(command, "accepted", board=board.id, detail={"position": position})
        if isinstance(command, RunCommand):
            await board.event(command, Accepted, command=command.id, position=position)
        board.queue.append(_Job(command))
        board.wake.set()


class FleetEmulator:
    """``agents`` emulated agents of ``boards_per_agent`` boards each, all holding ``model``
    (see the module docstring). ``async with`` it: the boards' statuses are out and every
    agent listens for commands when the block starts; everything stops when it ends."""

    def __init__(
        self,
        broker_url: str,
        *,
        agents: int = 1,
        boards_per_agent: int = 8,
        model: str = "kws01",
        inference_s: float = 0.01,
        accuracy: float = 0.9,
        prefix: str = "emu",
        batch_samples: int = 200,
        batch_delay_s: float = 0.1,
        heartbeat_s: float = 10.0,
    ) -> None:
        if model not in MODELS:
            raise ValueError(f"unknown model {model!r} (known: {', '.join(MODELS)})")
        if inference_s <= 0:
            raise ValueError("inference_s must be positive")
        self.broker_url = broker_url
        self.model = model
        self.inference_s = inference_s
        self.accuracy = accuracy
        self.batch_samples = batch_samples
        self.batch_delay_s = batch_delay_s
        self.heartbeat_s = heartbeat_s
        self.stats = FleetStats()
        self.agents = [
            EmulatedAgent(
                self,
                f"{prefix}-a{a:02d}",
                [f"{prefix}-a{a:02d}-b{b:03d}" for b in range(boards_per_agent)],
            )
            for a in range(agents)
        ]
        self._task: asyncio.Task[None] | None = None

    @property
    def boards(self) -> list[str]:
        """Every emulated board's id."""
        return [b for agent in self.agents for b in agent.boards]

    async def run(self) -> None:
        """Serve every agent until cancelled (or one's connection fails)."""
        async with asyncio.TaskGroup() as group:
            for agent in self.agents:
                group.create_task(agent.serve(), name=f"agent-{agent.id}")

    async def __aenter__(self) -> FleetEmulator:
        self._task = asyncio.get_running_loop().create_task(self.run(), name="fleet")
        connected = asyncio.ensure_future(
            asyncio.gather(*(a.connected.wait() for a in self.agents))
        )
        either: set[asyncio.Future[Any]] = {self._task, connected}
        done, _ = await asyncio.wait(either, timeout=60, return_when=asyncio.FIRST_COMPLETED)
        connected.cancel()
        if connected not in done:
            await self.__aexit__(None, None, None)
            raise RuntimeError("the emulated agents did not connect within 60 s")
        return self

    async def __aexit__(self, *exc: object) -> None:
        task, self._task = self._task, None
        if task is None:
            return
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def _serve(args: argparse.Namespace) -> int:
    fleet = FleetEmulator(
        args.broker,
        agents=args.agents,
        boards_per_agent=args.boards_per_agent,
        model=args.model,
        inference_s=args.inference_s,
        prefix=args.prefix,
    )
    async with fleet:
        print(
            f"{len(fleet.agents)} emulated agents, {len(fleet.boards)} boards of {args.model} "
            f"on {args.broker}; Ctrl-C stops",
            flush=True,
        )
        started = time.monotonic()
        while True:
            await asyncio.sleep(10)
            s = fleet.stats
            print(
                f"{time.monotonic() - started:.0f} s: runs {dict(s.runs)}, {s.samples} samples "
                f"in {s.batches} batches, {s.messages} messages",
                flush=True,
            )


def main(argv: list[str] | None = None) -> int:
    """The command line: serve an emulated fleet until interrupted."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from bench.harness import run_bench

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--broker", required=True, help="mqtt://host:port")
    parser.add_argument("--agents", type=int, default=1)
    parser.add_argument("--boards-per-agent", type=int, default=8)
    parser.add_argument("--model", default="kws01")
    parser.add_argument("--inference-s", type=float, default=0.01)
    parser.add_argument("--prefix", default="emu", help="agent and board ids start with it")
    args = parser.parse_args(argv)
    return run_bench(_serve(args))


if __name__ == "__main__":
    sys.exit(main())
