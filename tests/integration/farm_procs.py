"""Real processes for the agent's end-to-end tests: a Mosquitto of the test's own (its own
port, config and persistence, so it can be stopped and restarted mid-run), `farm sim`, the
`farm agent` process, and an MQTT observer that records everything the agent publishes the
way the controller's ingest will (persistent session, QoS 1)."""

from __future__ import annotations

import abc
import asyncio
import contextlib
import json
import os
import signal
import socket
import sys
import textwrap
import urllib.request
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiomqtt
import redis

from farm.messages import SCHEMA, Topic, command_topic, parse_topic


def free_port() -> int:
    """A TCP port nobody listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def wait_until(predicate: Callable[[], object], within: float, what: str) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail the test naming ``what``."""
    loop = asyncio.get_running_loop()
    give_up = loop.time() + within
    while True:
        value = predicate()
        if value:
            return value
        if loop.time() > give_up:
            raise AssertionError(f"timed out after {within} s waiting for {what}")
        await asyncio.sleep(0.05)


async def farm_command(
    args: list[str] | tuple[str, ...], env: dict[str, str], within: float
) -> tuple[int, str, str]:
    """Run a client command (``python -m farm.cli ARGS``) with ``env`` over the environment,
    wide enough that rich does not wrap a table; (status, stdout, stderr)."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "farm.cli",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, **env, "COLUMNS": "300"},
    )
    try:
        async with asyncio.timeout(within):
            out, errs = await process.communicate()
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    return process.returncode or 0, out.decode(), errs.decode()


def boards_idle_and_healthy(client: Any, boards: list[str]) -> bool:
    """Whether ingest has stored every board's status, and each says idle with good health
    (``client``: a redis-py client decoding responses)."""
    for board in boards:
        raw = client.hget(f"farm:board:{board}", "status")
        if not raw:
            return False
        status = json.loads(raw)
        if status["state"] != "idle" or status["health"] != "good":
            return False
    return True


class Mosquitto:
    """A mosquitto on its own port with persistence (sessions and queued QoS 1 messages
    survive a restart, as in a real deployment; ``persistence=False``: they do not) and
    raised queue limits (docs/architecture.md#platform-notes)."""

    def __init__(self, directory: Path, *, extra: str = "", persistence: bool = True) -> None:
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"mqtt://127.0.0.1:{self.port}"
        self.conf = self.dir / "mosquitto.conf"
        # Settings per listener, so a test can add one with its own authentication.
        self.conf.write_text(
            "per_listener_settings true\n"
            f"listener {self.port} 127.0.0.1\n"
            "allow_anonymous true\n"
            f"persistence {'true' if persistence else 'false'}\n"
            f"persistence_location {self.dir}/\n"
            "max_queued_messages 1000000\n"
            "max_inflight_messages 100\n"
            "user root\n"
            f"log_dest file {self.dir}/mosquitto.log\n" + extra
        )
        self.process: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        """Start (or restart) the broker and wait until it accepts connections."""
        self.process = await asyncio.create_subprocess_exec("mosquitto", "-c", str(self.conf))
        for _ in range(100):
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port)):
                return
            await asyncio.sleep(0.05)
        raise RuntimeError(f"mosquitto did not start on {self.port}: see {self.dir}")

    async def stop(self) -> None:
        """Stop it the way a service manager does (SIGTERM: it saves its persistence)."""
        if self.process is None:
            return
        self.process.terminate()
        await asyncio.wait_for(self.process.wait(), 10)
        self.process = None


class PrivateRedis:
    """A redis-server of the test's own on a free port, its append-only file fsynced at every
    write in ``directory`` (so a SIGKILL loses nothing acknowledged), to stop, kill and
    restart without touching the shared one."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        """Start (or restart: it loads its append-only file) and wait until it answers."""
        self.process = await asyncio.create_subprocess_exec(
            "redis-server",
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(self.dir),
            "--appendonly",
            "yes",
            "--appendfsync",
            "always",
            "--save",
            "",
            stdout=asyncio.subprocess.DEVNULL,
        )
        client = redis.Redis.from_url(self.url, socket_connect_timeout=1)
        try:
            await wait_until(lambda: _pings(client), 10, f"redis-server on {self.port}")
        finally:
            client.close()

    async def stop(self) -> None:
        """Stop it the way a service manager does (SIGTERM)."""
        if self.process is not None:
            self.process.terminate()
            await asyncio.wait_for(self.process.wait(), 10)
            self.process = None

    async def kill(self) -> None:
        """SIGKILL it, as a crash or the OOM killer would."""
        if self.process is not None:
            self.process.kill()
            await asyncio.wait_for(self.process.wait(), 10)
            self.process = None


def _pings(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False


def host_port(url: str) -> tuple[str, int]:
    """The host and port of an ``mqtt://HOST:PORT`` URL."""
    host, port = url.removeprefix("mqtt://").split(":")
    return host, int(port)


class AgentTopics(abc.ABC):
    """A subscription to every agent topic in the background (reconnecting, with a session
    the broker keeps): each agent message goes to :meth:`_record`, its topic parsed."""

    def __init__(self, url: str, identifier: str) -> None:
        self.host, self.port = host_port(url)
        self.identifier = identifier
        self.connected = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Connect (and keep reconnecting) in the background."""
        self._task = asyncio.get_running_loop().create_task(self._run())
        await asyncio.wait_for(self.connected.wait(), 10)

    async def stop(self) -> None:
        """Disconnect."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:
            try:
                async with aiomqtt.Client(
                    self.host, self.port, identifier=self.identifier, clean_session=False
                ) as client:
                    await client.subscribe("farm/v1/agent/#", qos=1)
                    self.connected.set()
                    async for message in client.messages:
                        meaning = parse_topic(str(message.topic))
                        if meaning is not None:
                            self._record(meaning, json.loads(message.payload))  # type: ignore[arg-type]
            except aiomqtt.MqttError:
                self.connected.clear()
                await asyncio.sleep(0.2)

    @abc.abstractmethod
    def _record(self, meaning: Topic, data: Any) -> None:
        """Keep one agent message (its parsed topic and JSON payload)."""


class Observer(AgentTopics):
    """Subscribes to every agent topic and keeps what arrived, keyed as ingest keys it."""

    def __init__(self, url: str) -> None:
        super().__init__(url, f"test-observer-{uuid.uuid4().hex[:8]}")
        self.samples: dict[str, dict[int, list[dict]]] = defaultdict(lambda: defaultdict(list))
        self.batch_attempts: dict[str, set[int | None]] = defaultdict(set)
        """The ``attempt`` of each run's sample batches (``None``: a batch without one)."""
        self.events: dict[str, list[dict]] = defaultdict(list)
        self.acks: list[dict] = []
        self.agent_status: dict[str, dict] = {}
        self.board_status: dict[tuple[str, str], dict] = {}
        self.heartbeats: list[dict] = []
        self.status_history: list[dict] = []

    def _record(self, meaning: Topic, data: Any) -> None:
        if meaning.kind == "samples":
            self.batch_attempts[meaning.run].add(data.get("attempt"))  # type: ignore[index]
            for record in data["samples"]:
                self.samples[meaning.run][record["seq"]].append(record)  # type: ignore[index]
        elif meaning.kind == "run_events":
            self.events[meaning.run].append(data)  # type: ignore[index]
        elif meaning.kind == "events":
            self.acks.append(data)
        elif meaning.kind == "status":
            self.agent_status[meaning.agent] = data
            self.status_history.append(data)
        elif meaning.kind == "board_status":
            self.board_status[(meaning.agent, meaning.board)] = data  # type: ignore[index]
        elif meaning.kind == "heartbeat":
            self.heartbeats.append(data)

    # -- queries ---------------------------------------------------------------------------------

    def event(self, run: str, kind: str) -> dict | None:
        """The last event of ``kind`` of ``run``."""
        found = [e for e in self.events.get(run, []) if e["event"] == kind]
        return found[-1] if found else None

    def finished(self, run: str) -> dict | None:
        """The run's final event (done, error or cancelled), if any."""
        for kind in ("done", "error", "cancelled"):
            found = self.event(run, kind)
            if found:
                return found
        return None

    def ack(self, command: str, outcome: str | None = None) -> dict | None:
        """The last ack of ``command`` (with ``outcome``, if given)."""
        found = [
            a
            for a in self.acks
            if a.get("command") == command and (outcome is None or a["outcome"] == outcome)
        ]
        return found[-1] if found else None

    def unique_samples(self, run: str) -> dict[int, dict]:
        """One record per seq; fails if two receipts of a seq differ (a real duplicate
        would be identical)."""
        unique: dict[int, dict] = {}
        for seq, receipts in self.samples.get(run, {}).items():
            assert all(r == receipts[0] for r in receipts), f"seq {seq} arrived with two values"
            unique[seq] = receipts[0]
        return unique


async def send(url: str, agent: str, command: dict | bytes) -> None:
    """Publish a command (a dict gets the schema added) to an agent, as the controller."""
    host, port = url.removeprefix("mqtt://").split(":")
    if isinstance(command, dict):
        payload = json.dumps({"schema": SCHEMA, **command}).encode()
    else:
        payload = command
    async with aiomqtt.Client(host, int(port)) as client:
        await client.publish(command_topic(agent), payload, qos=1)


async def publish_retained(url: str, messages: list[tuple[str, bytes]]) -> None:
    """Publish ``messages`` (topic, payload) retained at QoS 1, one after the other, as
    anyone on the broker could."""
    async with aiomqtt.Client(*host_port(url)) as client:
        for topic, payload in messages:
            await client.publish(topic, payload, qos=1, retain=True)


def descendants(pid: int) -> list[int]:
    """Every process below ``pid``, from /proc."""
    children: dict[int, list[int]] = defaultdict(list)
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            children[int(fields[1])].append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


@contextlib.contextmanager
def flushed_redis(url: str) -> Iterator[redis.Redis]:
    """A client of a test's own Redis database, emptied before and after the test."""
    client = redis.Redis.from_url(url)
    client.flushdb()
    try:
        yield client
    finally:
        client.flushdb()
        client.close()


def processes_named(word: str) -> list[int]:
    """Running processes (not zombies) whose command line has ``word`` as one argument."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        with contextlib.suppress(OSError):
            if word.encode() in cmdline.read_bytes().split(b"\0"):
                found.append(int(cmdline.parent.name))
    return alive(found)


def alive(pids: list[int]) -> list[int]:
    """Those of ``pids`` that are still running (a zombie has exited: only its parent, or
    init for an orphan, has yet to collect its status)."""
    found = []
    for pid in pids:
        with contextlib.suppress(OSError):
            if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
                found.append(pid)
    return found


class Proc:
    """A `farm ...` subprocess with its output in a log file."""

    def __init__(self, args: list[str], log: Path, *, env: dict[str, str] | None = None) -> None:
        self.args = args
        self.log = log
        self.env = env or {}
        self.process: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        """Start it (``python -m farm.cli ...``)."""
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **self.env}
        with self.log.open("ab") as out:
            self.process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "farm.cli",
                *self.args,
                stdout=out,
                stderr=out,
                env=env,
                # Its own process group: whatever it leaves behind can be killed with it.
                start_new_session=True,
            )

    async def signal(self, sig: int, within: float = 30) -> int:
        """Send ``sig`` and wait for the exit status; past ``within`` seconds, kill the
        process and everything below it, then raise ``TimeoutError``."""
        assert self.process is not None
        process = self.process
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(sig)
        try:
            code = await asyncio.wait_for(process.wait(), within)
        except TimeoutError:
            await self.kill_tree()
            raise
        self._kill_group(process.pid)
        self.process = None
        return code

    async def kill_tree(self) -> None:
        """SIGKILL the process and every descendant, as a crashing host would (an RQ
        work-horse moves to its own process group, so killing the group is not enough)."""
        assert self.process is not None
        for pid in [*descendants(self.process.pid), self.process.pid]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        await asyncio.wait_for(self.process.wait(), 30)
        self._kill_group(self.process.pid)
        self.process = None

    @staticmethod
    def _kill_group(pgid: int) -> None:
        """SIGKILL whatever is left in the process's group (a child it did not wait for)."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)

    async def stop(self) -> None:
        """Teardown: SIGTERM, if still running; a process that does not exit in 30 s is
        killed with everything below it (a test's own assertions judge how it stopped)."""
        if self.process is None:
            return
        if self.process.returncode is not None:
            self._kill_group(self.process.pid)
            self.process = None
            return
        with contextlib.suppress(TimeoutError):
            await self.signal(signal.SIGTERM)

    def output(self) -> str:
        """Everything it printed."""
        return self.log.read_text(errors="replace") if self.log.exists() else ""


AGENT = "lab1"
FAST = {"median_s": 0.002}


@dataclass
class Lab:
    """Simulated boards, their agent and a broker, started for one test."""

    dir: Path
    broker: Mosquitto
    sim: Proc
    agent: Proc
    observer: Observer

    async def run(self, run: str, board: str, benchmark: str, mode: str, **fields: object) -> str:
        """Send a run command; return its command id."""
        command_id = f"cmd-{run}"
        await send(
            self.broker.url,
            AGENT,
            {
                "type": "run",
                "id": command_id,
                "board": board,
                "run": run,
                "benchmark": benchmark,
                "mode": mode,
                **fields,
            },
        )
        return command_id

    async def finished(self, run: str, within: float = 60) -> dict:
        """Wait for the run's final event."""
        try:
            return await wait_until(lambda: self.observer.finished(run), within, f"run {run}")
        except AssertionError:
            raise AssertionError(
                f"run {run} did not finish; agent log:\n{self.agent.output()[-4000:]}"
            ) from None

    def board(self, board: str) -> dict:
        """The board's retained status as last received."""
        return self.observer.board_status[(AGENT, board)]

    async def idle(self, board: str, within: float = 30) -> dict:
        """Wait until the board is idle and checked."""
        return await wait_until(
            lambda: (
                (s := self.observer.board_status.get((AGENT, board)))
                and s["state"] == "idle"
                and s["health"] != "unknown"
                and s
            ),
            within,
            f"board {board} idle",
        )

    async def start_agent(self) -> None:
        """Start (or restart) the agent process."""
        await self.agent.start()


async def start_sim(
    out: Path,
    boards: str,
    *,
    seed: int,
    agent: str,
    broker: str,
    dataset_limit: int | str | None,
    extra: tuple[str, ...] = (),
) -> Proc:
    """`farm sim` for ``boards`` (a YAML list) and agent ``agent``, its boards in ``out``
    (its config and log beside it: ``out``.yaml, ``out``.log), once its agent.yaml is written.
    ``dataset_limit`` is ``--dataset-limit``: N, or per dataset (``ic01=10,...``; a dataset
    not named is written whole, in the official order); None writes every dataset whole."""
    config = out.with_name(f"{out.name}.yaml")
    config.write_text(f"seed: {seed}\nboards:\n" + textwrap.indent(textwrap.dedent(boards), "  "))
    args = ["sim", "--out", str(out), "--config", str(config), "--agent-id", agent]
    args += ["--broker", broker, *extra]
    if dataset_limit is not None:
        args += ["--dataset-limit", str(dataset_limit)]
    sim = Proc(args, out.with_name(f"{out.name}.log"))
    await sim.start()
    try:
        await wait_until(lambda: (out / "agent.yaml").exists(), 60, f"agent.yaml ({sim.log})")
    except BaseException:
        await sim.stop()
        raise
    return sim


def agent_proc(sim_out: Path, log: Path) -> Proc:
    """`farm agent` (not started yet) with the agent.yaml `farm sim` wrote in ``sim_out``."""
    return Proc(["--log-level", "info", "agent", "--config", str(sim_out / "agent.yaml")], log)


async def start_lab(
    tmp_path: Path,
    boards: str,
    *,
    dataset_limit: int = 20,
    broker_extra: str = "",
    agent_config: Callable[[Path], None] | None = None,
    online: bool = True,
) -> Lab:
    """Broker, `farm sim` with ``boards`` (YAML), the agent, the observer.
    ``agent_config`` may rewrite the generated agent.yaml before the agent starts."""
    broker = Mosquitto(tmp_path / "mqtt", extra=broker_extra)
    await broker.start()
    out = tmp_path / "sim"
    sim = await start_sim(
        out, boards, seed=3, agent=AGENT, broker=broker.url, dataset_limit=dataset_limit
    )
    if agent_config is not None:
        agent_config(out / "agent.yaml")
    observer = Observer(broker.url)
    await observer.start()
    agent = agent_proc(out, tmp_path / "agent.log")
    lab = Lab(tmp_path, broker, sim, agent, observer)
    await lab.start_agent()
    if not online:
        return lab
    await wait_until(
        lambda: observer.agent_status.get(AGENT, {}).get("state") == "online", 30, "agent online"
    )
    return lab


async def stop_lab(lab: Lab) -> None:
    """Stop everything the lab started."""
    await lab.agent.stop()
    await lab.observer.stop()
    await lab.sim.stop()
    await lab.broker.stop()


def fetch(url: str) -> str:
    """The body of a GET of ``url`` (10 s at most)."""
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.read().decode()
