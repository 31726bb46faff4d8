"""``farm agent``: the process on each Raspberry Pi.

It owns the boards of its config (one ``BoardWorker`` task each), takes commands from
``farm/v1/cmd/{agent}``, and publishes statuses, heartbeats, command acks, run events and
samples. Everything that must not be lost (samples, run events, acks) is journalled before it
is published and deleted once the broker acknowledged it, so runs go on while the broker is
away and a restart loses nothing: runs that were in flight are reported ``interrupted`` with
their last journalled seq.

The MQTT connection is kept by one loop with exponential backoff and jitter; each connection
runs three owned tasks (the outbox pump, the status publisher, the heartbeat) and the
command reader, and all of them end with the connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections import Counter
from typing import Any

import aiomqtt
import pydantic_core
from pydantic import ValidationError

from agent.board_worker import BoardWorker
from agent.config import AgentConfig
from agent.console import ConsoleSession
from agent.identity import software_version
from agent.journal import Journal
from agent.mqtt_client import make_client
from agent.outbox import WINDOW, Outbox
from farm.backoff import Backoff
from farm.catalog import BenchmarkError, get_benchmark
from farm.logs import get_logger
from farm.messages import (
    COMMAND_TYPES,
    COMMANDS,
    MAX_COMMAND_BYTES,
    PROTOCOL_VERSION,
    SCHEMA,
    AckOutcome,
    AgentStatus,
    BoardStatus,
    CancelCommand,
    Command,
    CommandAck,
    ConsoleCommand,
    Heartbeat,
    Interrupted,
    RefuseCommand,
    RunCommand,
    agent_events_topic,
    agent_status_topic,
    board_status_topic,
    command_topic,
    heartbeat_topic,
    run_events_topic,
)

log = get_logger("agent.service")

#: The agent's own entry among the retained statuses (board ids cannot start with "_").
AGENT_KEY = "_agent"
#: How long a stopping agent waits to say ``offline`` before it disconnects anyway.
OFFLINE_TIMEOUT_S = 2.0
#: A connection that lasted this long resets the reconnect backoff.
STABLE_S = 10.0


def command_ack(
    agent: str,
    command: Command,
    outcome: AckOutcome,
    *,
    board: str | None = None,
    reason: str | None = None,
    detail: dict[str, Any] | None = None,
) -> CommandAck:
    """Agent ``agent``'s answer to ``command``, as its events topic carries it."""
    return CommandAck(
        agent=agent,
        command=command.id,
        type=command.type,
        outcome=outcome,
        reason=reason,
        board=board,
        run=getattr(command, "run", None),
        detail=detail or {},
    )


class AgentService:
    """The agent (see the module docstring)."""

    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        self.agent = config.agent
        # This start's generation, taken from the journal by run() before anything is
        # published; it orders the agent's statuses at ingest, so it is not the wall clock.
        self.started = 0.0
        self._monotonic_start = time.monotonic()
        self.counters: Counter[str] = Counter()
        self.refused: str | None = None
        self.journal: Journal | None = None
        self.outbox: Outbox | None = None
        self.workers: dict[str, BoardWorker] = {}
        self._statuses: dict[str, bytes] = {}
        self._dirty: set[str] = set()
        self._status_changed = asyncio.Event()
        self.connected = asyncio.Event()

    # -- lifecycle ------------------------------------------------------------------------------

    async def run(self) -> None:
        """Serve until cancelled; on the way out, say ``offline`` (a clean disconnect sends
        no will) and close the journal."""
        journal_path = self.config.journal
        assert journal_path is not None  # the config sets the default
        self.journal = await Journal.open(journal_path)
        self.started = await self.journal.next_generation(time.time())
        self.outbox = Outbox(self.journal)
        try:
            await self._report_interrupted()
            # Shared by the boards: how many may be starting at once (config max_starting).
            starting = asyncio.Semaphore(self.config.max_starting or len(self.config.boards))
            for board in self.config.boards:
                self.workers[board.id] = BoardWorker(
                    board,
                    agent=self.agent,
                    outbox=self.outbox,
                    journal=self.journal,
                    datasets=self.config.datasets,
                    sim_boards=list(self.config.sim_boards),
                    max_failures=self.config.max_failures,
                    starting=starting,
                    batching=(self.config.batch_samples, self.config.batch_delay_s),
                    trace_chunk_values=self.config.trace_chunk_values,
                    on_status=self._board_status,
                    ack=self._ack,
                )
            log.info(
                "agent_started",
                agent=self.agent,
                boards=len(self.workers),
                journal=journal_path,
                backlog=self.journal.backlog_count,
            )
            async with asyncio.TaskGroup() as group:
                for worker in self.workers.values():
                    group.create_task(worker.serve(), name=f"board-{worker.id}")
                group.create_task(self._connection_loop(), name="mqtt")
        finally:
            await self.journal.close()
            log.info("agent_stopped", agent=self.agent)

    async def _report_interrupted(self) -> None:
        """Runs the journal still holds were in flight when the agent last stopped."""
        assert self.journal is not None and self.outbox is not None
        for run in await self.journal.runs_in_flight():
            event = Interrupted(
                agent=self.agent,
                board=run.board,
                run=run.run,
                attempt=_attempt(run.command),
                event="interrupted",
                last_seq=run.last_seq,
                reason="the agent restarted during the run",
            )
            await self.outbox.put(
                run_events_topic(self.agent, run.board, run.run), event.dumps(), run=run.run
            )
            await self.journal.run_finished(run.run)
            self.counters["runs_interrupted"] += 1
            log.warning("run_interrupted", run=run.run, board=run.board, last_seq=run.last_seq)

    # -- MQTT -----------------------------------------------------------------------------------

    async def _connection_loop(self) -> None:
        backoff = Backoff()
        loop = asyncio.get_running_loop()
        # One client for every connection: aiomqtt clients are reusable, and its queue of
        # received commands (already acknowledged to the broker) survives a reconnect.
        client: aiomqtt.Client | None = None
        while True:
            connected_at: float | None = None
            try:
                if client is None:
                    client = make_client(
                        self.config.broker, self.agent, window=WINDOW, started=self.started
                    )
                async with client:
                    connected_at = loop.time()
                    self.counters["connects"] += 1
                    log.info("mqtt_connected", broker=self.config.broker.url)
                    await self._connected(client)
            except Exception as exc:
                current = asyncio.current_task()
                if current is not None and current.cancelling():
                    raise asyncio.CancelledError from exc  # shutting down: stop reconnecting
                # Broker gone, credentials refused, TLS failure, a password file that
                # vanished: the boards keep running and the journal keeps their results.
                self.connected.clear()
                self.counters["disconnects"] += 1
                # Only a connection that lasted resets the backoff: one the broker drops at
                # once (a duplicate client id, say) must not reconnect in a tight loop.
                if connected_at is not None and loop.time() - connected_at >= STABLE_S:
                    backoff.reset()
                delay = backoff.next_delay()
                leaf = _leaf(exc)
                log.warning(
                    "mqtt_disconnected",
                    error=str(leaf),
                    kind=type(leaf).__name__,
                    retry_in_s=delay,
                    backlog=self.journal.backlog_count if self.journal else -1,
                )
                await asyncio.sleep(delay)

    async def _connected(self, client: aiomqtt.Client) -> None:
        assert self.outbox is not None
        await client.subscribe(command_topic(self.agent), qos=1)
        # Everything retained is stated again: the broker may have lost it, or the will
        # may have replaced the agent status.
        self._dirty = set(self._statuses)
        await client.publish(
            agent_status_topic(self.agent), self._agent_status().dumps(), qos=1, retain=True
        )
        self.connected.set()
        try:
            await self._serve_connection(client)
        except asyncio.CancelledError:
            # A clean disconnect sends no will: say offline ourselves.
            status = AgentStatus(
                agent=self.agent, state="offline", reason="agent stopped", started=self.started
            )
            with contextlib.suppress(aiomqtt.MqttError, TimeoutError):
                async with asyncio.timeout(OFFLINE_TIMEOUT_S):
                    await client.publish(
                        agent_status_topic(self.agent), status.dumps(), qos=1, retain=True
                    )
            raise
        finally:
            self.connected.clear()

    async def _serve_connection(self, client: aiomqtt.Client) -> None:
        """The connection's owned tasks and the command reader; raises ``MqttError`` when
        the connection breaks."""
        assert self.outbox is not None
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(self.outbox.pump(client), name="outbox")
                group.create_task(self._status_loop(client), name="status")
                group.create_task(self._heartbeat_loop(client), name="heartbeat")
                async for message in client.messages:
                    await self._on_command(_payload(message.payload))
                raise aiomqtt.MqttError("message stream ended")
        except* aiomqtt.MqttError as group_exc:
            raise group_exc.exceptions[0] from None

    def _agent_status(self) -> AgentStatus:
        return AgentStatus(
            agent=self.agent,
            state="refused" if self.refused else "online",
            protocol=PROTOCOL_VERSION,
            software=software_version(),
            boards=[b.id for b in self.config.boards],
            started=self.started,
            uptime_s=round(time.monotonic() - self._monotonic_start, 3),
            reason=self.refused,
        )

    def _board_status(self, status: BoardStatus) -> None:
        # This process's start: what orders a board's statuses at ingest.
        status = status.model_copy(update={"started": self.started})
        self._statuses[status.board] = status.dumps()
        self._dirty.add(status.board)
        self._status_changed.set()

    async def _status_loop(self, client: aiomqtt.Client) -> None:
        while True:
            while self._dirty:
                key = self._dirty.pop()
                topic = (
                    agent_status_topic(self.agent)
                    if key == AGENT_KEY
                    else board_status_topic(self.agent, key)
                )
                await client.publish(topic, self._statuses[key], qos=1, retain=True)
            self._status_changed.clear()
            await self._status_changed.wait()

    async def _heartbeat_loop(self, client: aiomqtt.Client) -> None:
        assert self.journal is not None and self.outbox is not None
        while True:
            beat = Heartbeat(
                agent=self.agent,
                uptime_s=round(time.monotonic() - self._monotonic_start, 3),
                backlog=self.journal.backlog_count,
                counters={**self.counters, "sent": self.outbox.sent},
            )
            await client.publish(heartbeat_topic(self.agent), beat.dumps(), qos=0)
            await asyncio.sleep(self.config.heartbeat_s)

    # -- commands -------------------------------------------------------------------------------

    async def _ack(self, ack: CommandAck) -> None:
        assert self.journal is not None and self.outbox is not None
        # A rejected command was not executed: the same id may come again, corrected.
        if ack.command is not None and ack.outcome in ("done", "failed"):
            await self.journal.record_command(ack.command, ack.outcome)
        await self.outbox.put(agent_events_topic(self.agent), ack.dumps())

    async def _reject(self, reason: str, detail: str, data: object = None) -> None:
        self.counters[f"commands_rejected_{reason}"] += 1
        command_id = data.get("id") if isinstance(data, dict) else None
        kind = data.get("type") if isinstance(data, dict) else None
        log.warning("command_rejected", reason=reason, id=command_id, detail=detail)
        await self._ack(
            CommandAck(
                agent=self.agent,
                command=command_id if isinstance(command_id, str) else None,
                type=kind if isinstance(kind, str) else None,
                outcome="rejected",
                reason=f"{reason}: {detail}",
            )
        )

    async def _on_command(self, payload: bytes) -> None:
        """Validate and dispatch one command, counted once by its answer:
        ``commands_accepted``, ``commands_duplicate``, ``commands_failed`` (a cancel of a run
        not here) or ``commands_rejected_<reason>``. Never raises (a bug rejects the command
        as ``internal`` and is logged with its traceback)."""
        try:
            await self._handle_command(payload)
        except Exception as exc:
            log.exception("command_crashed")
            await self._reject("internal", f"{type(exc).__name__}: {exc}")

    async def _handle_command(self, payload: bytes) -> None:
        assert self.journal is not None
        if len(payload) > MAX_COMMAND_BYTES:
            await self._reject("oversized", f"{len(payload)} bytes (limit {MAX_COMMAND_BYTES})")
            return
        try:
            # pydantic's parser, as ingest's: its nesting limit is fixed, where json.loads's
            # depends on how deep the call stack already is, so the same absurdly nested
            # payload would be refused or read depending on where it was decoded.
            data = pydantic_core.from_json(payload)
        except ValueError as exc:
            await self._reject("invalid_json", f"{type(exc).__name__}: {exc}"[:200])
            return
        if not isinstance(data, dict):
            await self._reject("invalid_json", "a command is a JSON object")
            return
        if data.get("schema") != SCHEMA:
            await self._reject(
                "unsupported_schema", f"schema {data.get('schema')!r}, expected {SCHEMA!r}", data
            )
            return
        if data.get("type") not in COMMAND_TYPES:
            await self._reject("unknown_command", f"type {data.get('type')!r}", data)
            return
        try:
            command: Command = COMMANDS.validate_python(data)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or '(top level)'}: {e['msg']}"
                for e in exc.errors()[:5]
            )
            await self._reject("invalid_command", problems, data)
            return
        if isinstance(command, ConsoleCommand):
            await self._console(command)
            return
        previous = await self.journal.command_outcome(command.id)
        if previous is not None:
            self.counters["commands_duplicate"] += 1
            await self._ack(
                CommandAck(
                    agent=self.agent,
                    command=command.id,
                    type=command.type,
                    outcome="duplicate",
                    reason=f"already received ({previous}); not executed again",
                )
            )
            return
        await self._dispatch(command)

    async def _dispatch(self, command: Command) -> None:
        assert self.journal is not None
        if isinstance(command, RefuseCommand):
            self.refused = command.reason
            log.error("refused_by_controller", reason=command.reason)
            self.counters["commands_accepted"] += 1
            await self.journal.record_command(command.id, "done")
            await self._ack(command_ack(self.agent, command, "done"))
            await self._publish_agent_status()
            return
        if isinstance(command, CancelCommand):
            for candidate in self.workers.values():
                if await candidate.cancel(command.run):
                    self.counters["commands_accepted"] += 1
                    await self.journal.record_command(command.id, "accepted")
                    await self._ack(command_ack(self.agent, command, "done", board=candidate.id))
                    return
            self.counters["commands_failed"] += 1
            await self._ack(
                command_ack(self.agent, command, "failed", reason=f"no run {command.run} here")
            )
            return
        worker = self.workers.get(command.board)
        if worker is None:
            await self._reject(
                "unknown_board",
                f"no board {command.board!r} on agent {self.agent}",
                command.model_dump(by_alias=True),
            )
            return
        if self.refused:
            await self._reject(
                "refused",
                f"the controller refused this agent: {self.refused}",
                command.model_dump(by_alias=True),
            )
            return
        if isinstance(command, RunCommand):
            problem = self._run_problem(command)
            if problem is not None:
                await self._reject("invalid_run", problem, command.model_dump(by_alias=True))
                return
            if any(w.has_run(command.run) for w in self.workers.values()):
                self.counters["commands_duplicate"] += 1
                await self._ack(
                    command_ack(
                        self.agent,
                        command,
                        "duplicate",
                        board=worker.id,
                        reason=f"run {command.run} is already queued or running",
                    )
                )
                return
            # Journalled from acceptance: if the agent dies before the run even starts, the
            # next start reports it interrupted and the controller sends it again.
            await self.journal.run_started(
                command.run, worker.id, command.model_dump(by_alias=True)
            )
        position = worker.ahead()
        await self.journal.record_command(command.id, "accepted")
        self.counters["commands_accepted"] += 1
        # Acks first, then the queue: a run refused at once must not report before it was
        # accepted.
        await self._ack(
            command_ack(
                self.agent, command, "accepted", board=worker.id, detail={"position": position}
            )
        )
        if isinstance(command, RunCommand):
            await worker.accepted(command, position)
        worker.submit(command)

    async def _console(self, command: ConsoleCommand) -> None:
        """A console command: answered on the session's own topic, never journalled or
        acknowledged (see ``ConsoleCommand``); an ``open`` queues the session as a board job,
        the others go to their session (a session not here: counted, dropped)."""
        assert self.outbox is not None
        self.counters["console_commands"] += 1
        worker = self.workers.get(command.board)
        if command.action != "open":
            if worker is None or not await worker.console_command(command):
                self.counters["console_unknown_session"] += 1
            return
        refusal = None
        if worker is None:
            refusal = f"no board {command.board!r} on agent {self.agent}"
        elif self.refused:
            refusal = f"the controller refused this agent: {self.refused}"
        if refusal is not None or worker is None:
            session = ConsoleSession(command, agent=self.agent, outbox=self.outbox)
            await session.close(f"refused: {refusal}")
            return
        if not worker.has_console(command.session):  # else a redelivered open
            worker.submit(command)

    def _run_problem(self, command: RunCommand) -> str | None:
        """What makes a run impossible before it is queued (the dataset's files are checked
        in full when it starts)."""
        try:
            bench = get_benchmark(command.benchmark)
            bench.script("performance" if command.mode == "latency" else command.mode)
        except BenchmarkError as exc:
            return str(exc)
        if command.stored and command.mode != "accuracy":
            return "only accuracy runs resume from stored samples (the others are timed windows)"
        root = self.config.datasets / command.dataset if command.dataset else self.config.datasets
        if bench.streamed:
            name = command.options.truth or bench.dataset.index
        else:
            name = "y_labels_alt.csv" if command.options.alt else "y_labels.csv"
        index = root / bench.dataset.id / name
        if not index.is_file():
            return f"this agent has no dataset {bench.dataset.id} ({index} is missing)"
        return None

    async def _publish_agent_status(self) -> None:
        # The status loop owns the client; the agent status is rare enough to route through it.
        self._statuses[AGENT_KEY] = self._agent_status().dumps()
        self._dirty.add(AGENT_KEY)
        self._status_changed.set()


def _leaf(exc: BaseException) -> BaseException:
    """The first real error inside (possibly nested) exception groups."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc


def _attempt(command: dict[str, Any]) -> int | None:
    """The attempt number of a journalled run command (``None`` when it had none)."""
    attempt = command.get("attempt")
    return attempt if isinstance(attempt, int) and not isinstance(attempt, bool) else None


def _payload(payload: object) -> bytes:
    if isinstance(payload, bytes | bytearray):
        return bytes(payload)
    return b"" if payload is None else str(payload).encode()


async def run_agent(config: AgentConfig) -> int:
    """Run the agent until SIGINT or SIGTERM; return the exit status."""
    service = AgentService(config)
    task = asyncio.current_task()
    assert task is not None
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, task.cancel)
    with contextlib.suppress(asyncio.CancelledError):
        await service.run()
    return 0
