"""Benchmark (not a test): one agent under load, and the ceiling of what it can publish.

    python bench/agent_load.py [--only fleet|ceiling] [--boards 8] [--duration 20]
                               [--samples 50000] [--median-s 0.002] [--baud B]
                               [--agent-batch N] [--floor-queries 50] [--profile-agent FILE]

**fleet**: a private Mosquitto, ``farm sim`` with N boards (cycling kws01, vww01, ic01, ad01;
performance firmware; every board's simulated median inference ``--median-s``), the real
``farm agent`` process serving them (the ``agent.yaml`` ``farm sim`` writes), and an observer
subscribed to ``farm/v1/agent/#`` in this process. After the boards are idle and healthy the
agent's idle RSS and CPU are taken; then one latency-mode run is sent to every board at once
(``min_queries``, ``min_duration_s = --duration``, ``latency_inputs: 1`` so each run downloads
its input once and then only issues ``infer 1 0``). Once a second the agent's CPU time
(``/proc/PID/stat`` utime + stime, all threads) and RSS (``/proc/PID/status`` VmRSS) are read,
and the simulator's, Mosquitto's and this process's CPU for context. Figures are taken over
the *steady window*: from 1 s after the last board's first sample reached the observer to
0.5 s before the first board's last one, when every board is producing.

* samples/s: samples received by the observer in the steady window ÷ its length;
* reference: the **wire + compute limit** of the boards together: per board, 1 ÷ the mean over
  its received samples of ``(len("infer 1 0%") + the exact reply bytes) × 10 / baud +
  latency_us`` (the reply rebuilt from the sample: the firmware's fixed lines, both
  ``m-lap-us`` lines, the ``m-results`` line; ``latency_us`` is the DUT-timed inference
  without the lap print, which is inside the reply's wire time), summed over the boards.
  Ratio = samples/s ÷ that limit (1 would be a host and simulator that cost nothing);
* floors (context, not the reference): before the agent starts, ``--floor-queries`` raw-fd
  ``infer 1 0`` exchanges on the first board of each model, one board at a time
  (``bench/serial_link.py``'s blocking floor), then on every board at once (one thread each):
  what the simulated boards cost per query with a host that costs nothing, alone and sharing
  the one ``farm sim`` process; fleet ÷ floor (all at once) is what the agent adds;
* agent CPU % of one core (and ÷ boards) and µs per sample (user and system parts); its
  reference: the CPU the floor's thread spent per query (``getrusage(RUSAGE_THREAD)``: a write
  and a blocking read per reply chunk, no parsing, no asyncio), alone and all at once, and the
  agent's µs per sample ÷ it; wake-ups (voluntary context switches) per sample of the agent's
  threads and per query of the floor's; RSS: idle, steady mean and peak, and (steady mean −
  idle) ÷ boards;
* check: each run's ``done`` count equals the unique seqs received, they are 0..count-1, and
  the digest matches (OK / MISMATCH).

**ceiling**: in this process, no serial: ``agent.journal.Journal`` (a temp file) +
``agent.outbox.Outbox`` + ``SampleBatcher``, publishing through ``agent.mqtt_client.make_client``
to a private Mosquitto; K synthetic kws01 sample records (``SAMPLE_BATCH.record(Sample(...))``,
12 results, lap and latency fields) are fed through the batcher as fast as it takes them, with
``outbox.pump(client)`` as a task. A subscriber in a separate process (so it does not share
this event loop) counts the samples received. samples/s = K ÷ (first enqueue → last sample
received). Variants, in this order: **raw** (the reference: plain QoS 1 ``client.publish``
of the same one-record ``SampleBatch`` payload, the same window of ``outbox.WINDOW`` publishes
in flight, one message per sample, no journal, no batcher), **batching off**
(``max_samples=1``) and **batching on** (``max_samples=200, max_delay_s=0.1``, the agent's
default). Also: this process's CPU (all threads) per sample, the subscriber's CPU, and the
journal worker thread's busy time in enqueue / pending / ack / compact (the ``_Store`` methods
timed on the worker thread: bench-only instrumentation).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import inspect
import json
import os
import random
import resource
import statistics
import sys
import tempfile
import textwrap
import threading
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.integration.farm_procs

import aiomqtt
from harness import run_bench
from serial_link import _SPEEDS, commands_for, floor_run, open_raw

from agent.config import BrokerConfig
from agent.journal import Journal
from agent.mqtt_client import make_client
from agent.outbox import PUBACK_TIMEOUT_S, WINDOW, Outbox, SampleBatcher
from farm.messages import (
    SAMPLE_BATCH,
    SCHEMA,
    Topic,
    command_topic,
    sample_digest,
    samples_topic,
)
from farm.models import MODELS, format_results
from farm.protocol.dut import encode_command
from farm.protocol.dut_firmware import format_lap
from farm.sample import Sample
from farm.wire import wire_time
from tests.integration.farm_procs import AgentTopics, Mosquitto, host_port, wait_until

AGENT = "bench"
FLEET_MODELS = ("kws01", "vww01", "ic01", "ad01")
CLK_TCK = os.sysconf("SC_CLK_TCK")
SAMPLES_FILTER = "farm/v1/agent/+/board/+/run/+/samples"

#: What one latency query moves besides its laps and results (``DutFirmware._infer``).
INFER_COMMAND_BYTES = len(encode_command("infer 1 0"))
INFER_FIXED_REPLY = (
    b"m-warmup-start-0\r\nm-warmup-done\r\nm-infer-start-1\r\nm-infer-done\r\nm-ready\r\n"
)


# --- processes --------------------------------------------------------------------------------


def proc_cpu_s(pid: int, *, system: bool = False) -> float:
    """User + system CPU seconds of a process (all its threads) from ``/proc/PID/stat``
    (``system``: the system part alone)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    stime = int(fields[12])  # utime, stime: fields 14, 15
    return (stime if system else int(fields[11]) + stime) / CLK_TCK


def proc_wakeups(pid: int) -> int:
    """Voluntary context switches of every thread of a process (``/proc/PID/task/*/status``):
    how often its threads slept and were woken (a blocking wait each)."""
    total = 0
    for status in Path(f"/proc/{pid}/task").glob("*/status"):
        with contextlib.suppress(OSError), open(status) as f:
            for line in f:
                if line.startswith("voluntary_ctxt_switches:"):
                    total += int(line.split()[1])
    return total


def proc_rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


class Child:
    """A subprocess this bench started: stopped by its own pid, output in a log file."""

    def __init__(self, name: str, argv: list[str], log: Path | None) -> None:
        self.name, self.argv, self.log = name, argv, log
        self.process: asyncio.subprocess.Process | None = None

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    async def start(self, *, stdout_pipe: bool = False) -> None:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        if stdout_pipe:
            self.process = await asyncio.create_subprocess_exec(
                *self.argv, stdout=asyncio.subprocess.PIPE, env=env
            )
            return
        assert self.log is not None
        with self.log.open("ab") as out:
            self.process = await asyncio.create_subprocess_exec(
                *self.argv, stdout=out, stderr=out, env=env
            )

    async def stop(self, grace_s: float = 15.0) -> None:
        """SIGTERM, then SIGKILL if it does not exit within ``grace_s``."""
        process, self.process = self.process, None
        if process is None or process.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            process.terminate()
        try:
            await asyncio.wait_for(asyncio.shield(process.wait()), grace_s)
        except (TimeoutError, asyncio.CancelledError):
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log and self.log.exists() else ""


# --- fleet ------------------------------------------------------------------------------------


class FleetObserver(AgentTopics):
    """Everything the agent publishes, kept as the controller's ingest would key it, with the
    arrival time of every samples message."""

    def __init__(self, url: str) -> None:
        super().__init__(url, "bench-observer")
        self.receipts: list[tuple[float, str, int]] = []
        """(monotonic arrival, run, samples in the message)."""
        self.records: dict[str, dict[int, dict]] = defaultdict(dict)
        self.first_at: dict[str, float] = {}
        self.last_at: dict[str, float] = {}
        self.duplicates: dict[str, int] = defaultdict(int)
        self.events: dict[str, list[dict]] = defaultdict(list)
        self.board_status: dict[str, dict] = {}
        self.agent_state: str | None = None
        self.max_backlog = 0

    def _record(self, meaning: Topic, data: Any) -> None:
        if meaning.kind == "samples":
            now = time.monotonic()
            run = meaning.run
            assert run is not None
            kept = self.records[run]
            for record in data["samples"]:
                if record["seq"] in kept:
                    self.duplicates[run] += 1
                kept[record["seq"]] = record
            self.receipts.append((now, run, len(data["samples"])))
            self.first_at.setdefault(run, now)
            self.last_at[run] = now
        elif meaning.kind == "run_events":
            self.events[meaning.run].append(data)  # type: ignore[index]
        elif meaning.kind == "board_status":
            self.board_status[meaning.board] = data  # type: ignore[index]
        elif meaning.kind == "status":
            self.agent_state = data["state"]
        elif meaning.kind == "heartbeat":
            self.max_backlog = max(self.max_backlog, data["backlog"])

    def final(self, run: str) -> dict | None:
        for event in reversed(self.events.get(run, [])):
            if event["event"] in ("done", "error", "cancelled"):
                return event
        return None


@dataclass
class Tick:
    """One once-a-second reading."""

    t: float
    agent_cpu: float
    agent_sys: float
    agent_wakeups: int
    agent_rss: float
    sim_cpu: float
    broker_cpu: float
    own_cpu: float


@dataclass
class BoardRow:
    board: str
    model: str
    baud: int
    run: str
    samples: int = 0
    steady: int = 0
    ideal_s: float = 0.0
    """Mean wire + compute time of one query over the board's samples."""
    mean_latency_us: float = 0.0
    check: str = "?"
    floor_s: float | None = None
    """Raw-fd floor: seconds per query on a board of this model, one board at a time."""
    floor_all_s: float | None = None
    """Raw-fd floor of this board with every board queried at once."""
    floor_cpu_s: float | None = None
    """CPU seconds the raw-fd floor's thread spent per query, one board at a time."""
    floor_all_cpu_s: float | None = None
    """The same with every board queried at once."""
    floor_all_sys_s: float | None = None
    """The system part of ``floor_all_cpu_s``."""
    floor_all_wakeups: float | None = None
    """The floor thread's voluntary context switches per query, every board at once."""


@dataclass
class FleetResult:
    boards: list[BoardRow]
    window_s: float
    steady_samples: int
    agent_cpu_pct: float
    agent_sys_pct: float
    """The system (kernel) part of ``agent_cpu_pct``."""
    agent_wakeups_s: float
    """The agent's voluntary context switches per second, all threads."""
    sim_cpu_pct: float
    broker_cpu_pct: float
    own_cpu_pct: float
    idle_cpu_pct: float
    idle_rss: float
    steady_rss: float
    peak_rss: float
    duplicates: int
    max_backlog: int
    messages: int
    agent_log_lines: list[str] = field(default_factory=list)
    median_s: float | None = None
    batch: int | None = None

    @property
    def rate(self) -> float:
        return self.steady_samples / self.window_s

    @property
    def limit(self) -> float:
        return sum(1 / b.ideal_s for b in self.boards)

    @property
    def floor_rate(self) -> float | None:
        if any(b.floor_s is None for b in self.boards):
            return None
        return sum(1 / b.floor_s for b in self.boards if b.floor_s)

    @property
    def floor_all_rate(self) -> float | None:
        if any(b.floor_all_s is None for b in self.boards):
            return None
        return sum(1 / b.floor_all_s for b in self.boards if b.floor_all_s)

    @property
    def agent_cpu_us(self) -> float:
        """The agent's CPU (all threads) per sample published, µs."""
        return 1e4 * self.agent_cpu_pct / max(self.rate, 1e-9)

    @property
    def agent_sys_us(self) -> float:
        """The system part of :attr:`agent_cpu_us`."""
        return 1e4 * self.agent_sys_pct / max(self.rate, 1e-9)

    @property
    def floor_cpu_us(self) -> float | None:
        """The raw-fd floor's CPU per query, µs, mean over the boards (one at a time)."""
        cpu = [b.floor_cpu_s for b in self.boards]
        return None if None in cpu else 1e6 * statistics.fmean(c or 0.0 for c in cpu)

    @property
    def floor_all_cpu_us(self) -> float | None:
        """The same with every board queried at once (as the agent serves them)."""
        cpu = [b.floor_all_cpu_s for b in self.boards]
        return None if None in cpu else 1e6 * statistics.fmean(c or 0.0 for c in cpu)

    @property
    def floor_all_wakeups(self) -> float | None:
        """The floor's wake-ups per query, every board at once, mean over the boards."""
        counts = [b.floor_all_wakeups for b in self.boards]
        return None if None in counts else statistics.fmean(c or 0.0 for c in counts)

    @property
    def floor_all_sys_us(self) -> float | None:
        """The system part of :attr:`floor_all_cpu_us`."""
        cpu = [b.floor_all_sys_s for b in self.boards]
        return None if None in cpu else 1e6 * statistics.fmean(c or 0.0 for c in cpu)


def reply_bytes(model: str, record: dict) -> int:
    """Bytes the firmware printed for this latency query (``DutFirmware._infer``)."""
    results = format_results(MODELS[model].result_format, record["results"])
    return (
        len(INFER_FIXED_REPLY)
        + len(format_lap(record["start_us"]))
        + len(format_lap(record["end_us"]))
        + len(f"m-results-[{results}]\r\n")
    )


def fleet_boards(count: int) -> list[tuple[str, str]]:
    """(board id, model), cycling the four models: 8 boards = 2 of each."""
    seen: dict[str, int] = defaultdict(int)
    boards = []
    for i in range(count):
        model = FLEET_MODELS[i % len(FLEET_MODELS)]
        seen[model] += 1
        boards.append((f"{model}-{seen[model]}", model))
    return boards


#: What :func:`floor_queries` measures per query: wall seconds, CPU seconds, their system
#: part, wake-ups (voluntary context switches).
Floor = tuple[float, float, float, float]


def floor_queries(
    path: str, model: str, baud: int, queries: int, barrier: threading.Barrier | None = None
) -> Floor:
    """Seconds per ``infer 1 0`` over a blocking raw fd (``bench/serial_link.py``'s floor),
    and per query the CPU seconds this thread spent (all, and the system part) and its
    voluntary context switches (wake-ups): download one input, then time
    ``queries`` exchanges. What the simulated board costs per query with a host that costs
    nothing, and what the least a host can do per query costs it in CPU: a write, and a
    blocking read per chunk of the reply, with no parsing. With ``barrier``, the timed part
    starts when every board sharing it has its input."""
    fd = open_raw(Path(path), baud)
    try:
        data = bytes(i % 251 for i in range(MODELS[model].input_bytes))
        floor_run(fd, commands_for(data)[:-1])
        if barrier is not None:
            barrier.wait(timeout=120)
        started, before = time.perf_counter(), resource.getrusage(resource.RUSAGE_THREAD)
        _, _, last = floor_run(fd, [encode_command("infer 1 0")] * queries)
        spent, after = time.perf_counter() - started, resource.getrusage(resource.RUSAGE_THREAD)
    finally:
        os.close(fd)
    if b"m-results-[" not in last[-1] or b"Input db" in last[-1]:
        raise RuntimeError(f"floor: bad infer reply from {path}: {last[-1]!r}")
    system = after.ru_stime - before.ru_stime
    cpu = after.ru_utime - before.ru_utime + system
    wakeups = after.ru_nvcsw - before.ru_nvcsw
    return spent / queries, cpu / queries, system / queries, wakeups / queries


def floor_all(entries: list[dict], queries: int) -> dict[str, Floor]:
    """:func:`floor_queries` on every board at once (one thread each): the simulator serving
    all its boards together, still with a host that costs nothing."""
    barrier = threading.Barrier(len(entries))

    def one(entry: dict) -> Floor:
        dut = entry["dut"]
        return floor_queries(dut["path"], entry["model"], dut["baud"], queries, barrier)

    with ThreadPoolExecutor(len(entries)) as pool:
        return dict(zip([e["id"] for e in entries], pool.map(one, entries), strict=True))


async def fleet(args: argparse.Namespace, tmp: Path) -> FleetResult:
    broker = Mosquitto(tmp / "mqtt-fleet")
    out = tmp / "sim"
    boards = fleet_boards(args.boards)
    lines = ["seed: 3", "boards:"]
    for board, model in boards:
        extra = f", latency: {{median_s: {args.median_s}}}" if args.median_s else ""
        extra += f", baud: {args.baud}" if args.baud else ""
        lines.append(f"  - {{id: {board}, model: {model}{extra}}}")
    (tmp / "boards.yaml").write_text("\n".join(lines) + "\n")
    python = [sys.executable, "-m", "farm.cli"]
    sim = Child(
        "farm sim",
        [
            *python,
            "sim",
            "--out",
            str(out),
            "--config",
            str(tmp / "boards.yaml"),
            "--agent-id",
            AGENT,
            "--broker",
            broker.url,
            "--dataset-limit",
            "5",
        ],
        tmp / "sim.log",
    )
    agent: Child | None = None
    observer = FleetObserver(broker.url)
    try:
        await broker.start()
        await sim.start()
        await wait_until(lambda: (out / "agent.yaml").exists(), 120, f"agent.yaml ({sim.log})")
        config = out / "agent.yaml"
        if args.agent_batch is not None:
            config = out / "agent-bench.yaml"
            text = (out / "agent.yaml").read_text()
            config.write_text(text + f"batch_samples: {args.agent_batch}\n")
        described = json.loads((out / "boards.json").read_text())["boards"]
        bauds = {b["id"]: b["dut"]["baud"] for b in described}
        floors: dict[str, Floor] = {}
        floors_all: dict[str, Floor] = {}
        if args.floor_queries:
            for entry in described:  # the first board of each model, one at a time
                model, baud = entry["model"], entry["dut"]["baud"]
                if model in floors or baud not in _SPEEDS:
                    continue
                path = entry["dut"]["path"]
                q = args.floor_queries
                floors[model] = await asyncio.to_thread(floor_queries, path, model, baud, q)
            if all(e["dut"]["baud"] in _SPEEDS for e in described):
                floors_all = await asyncio.to_thread(floor_all, described, args.floor_queries)
            print(f"  fleet: raw-fd floors measured ({', '.join(floors)})", file=sys.stderr)
        await observer.start()
        agent_argv = [*python, "agent", "--config", str(config)]
        if args.profile_agent is not None:
            # The profile is written when the agent exits cleanly (SIGTERM is handled).
            profile = ["-c", PROFILE_AGENT, str(args.profile_agent.resolve())]
            agent_argv = [sys.executable, *profile, *agent_argv[2:]]
        agent = Child("farm agent", agent_argv, tmp / "agent.log")
        await agent.start()
        status = observer.board_status

        def all_ready() -> bool:
            return observer.agent_state == "online" and all(
                (s := status.get(b)) is not None and s["state"] == "idle" and s["health"] == "good"
                for b, _ in boards
            )

        await wait_until(all_ready, 60, "agent online and every board idle and healthy")
        print(f"  fleet: {len(boards)} boards idle and healthy", file=sys.stderr, flush=True)
        # Idle: imports done, boards checked, nothing running.
        await asyncio.sleep(2.0)
        t0, c0 = time.monotonic(), proc_cpu_s(agent.pid)
        idle_rss = []
        for _ in range(6):
            idle_rss.append(proc_rss_mib(agent.pid))
            await asyncio.sleep(0.5)
        idle_cpu_pct = 100 * (proc_cpu_s(agent.pid) - c0) / (time.monotonic() - t0)

        ticks: list[Tick] = []
        assert broker.process is not None
        pids = (agent.pid, sim.pid, broker.process.pid)

        async def sample_ticks() -> None:
            while True:
                a, s, b = pids
                ticks.append(
                    Tick(
                        time.monotonic(),
                        proc_cpu_s(a),
                        proc_cpu_s(a, system=True),
                        proc_wakeups(a),
                        proc_rss_mib(a),
                        proc_cpu_s(s),
                        proc_cpu_s(b),
                        time.process_time(),
                    )
                )
                await asyncio.sleep(1.0)

        sampler = asyncio.get_running_loop().create_task(sample_ticks())
        runs = {board: f"load-{board}" for board, _ in boards}
        options = {
            "min_queries": args.min_queries,
            "min_duration_s": args.duration,
            "latency_inputs": 1,
        }
        host, port = host_port(broker.url)
        async with aiomqtt.Client(host, port, identifier="bench-controller") as client:
            for board, model in boards:
                command = {
                    "schema": SCHEMA,
                    "type": "run",
                    "id": f"cmd-{runs[board]}",
                    "board": board,
                    "run": runs[board],
                    "benchmark": model,
                    "mode": "latency",
                    "options": options,
                }
                await client.publish(command_topic(AGENT), json.dumps(command), qos=1)
        print(f"  fleet: {len(boards)} latency runs sent", file=sys.stderr, flush=True)
        try:
            await wait_until(
                lambda: all(observer.final(r) for r in runs.values()),
                args.duration + 120,
                "every run's final event",
            )
            # The done event may overtake the last samples batch on the way: give it time.
            with contextlib.suppress(AssertionError):
                await wait_until(
                    lambda: all(
                        len(observer.records[r]) >= (observer.final(r) or {}).get("count", 0)
                        for r in runs.values()
                    ),
                    10,
                    "the last samples",
                )
        finally:
            sampler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sampler
        result = _fleet_result(
            args, boards, bauds, runs, observer, ticks, idle_rss, idle_cpu_pct, agent
        )
        for row in result.boards:
            row.floor_s, row.floor_cpu_s, _, _ = floors.get(row.model, (None,) * 4)
            (row.floor_all_s, row.floor_all_cpu_s, row.floor_all_sys_s, row.floor_all_wakeups) = (
                floors_all.get(row.board, (None,) * 4)
            )
        return result
    finally:
        if agent is not None:
            await agent.stop()
        await observer.stop()
        await sim.stop()
        await broker.stop()


def _fleet_result(
    args: argparse.Namespace,
    boards: list[tuple[str, str]],
    bauds: dict[str, int],
    runs: dict[str, str],
    observer: FleetObserver,
    ticks: list[Tick],
    idle_rss: list[float],
    idle_cpu_pct: float,
    agent: Child,
) -> FleetResult:
    missing = [r for r in runs.values() if r not in observer.first_at]
    if missing:
        raise RuntimeError(f"no samples from {missing}; agent log:\n{agent.output()[-3000:]}")
    start = max(observer.first_at[r] for r in runs.values()) + 1.0
    end = min(observer.last_at[r] for r in runs.values()) - 0.5
    if end - start < 2.0:
        raise RuntimeError(f"steady window of {end - start:.1f} s: raise --duration")
    rows = []
    for board, model in boards:
        run = runs[board]
        row = BoardRow(board, model, bauds[board], run)
        records = observer.records[run]
        row.samples = len(records)
        row.steady = sum(n for t, r, n in observer.receipts if r == run and start <= t <= end)
        ideal = [
            wire_time(INFER_COMMAND_BYTES + reply_bytes(model, rec), row.baud)
            + rec["latency_us"] / 1e6
            for rec in records.values()
        ]
        row.ideal_s = statistics.fmean(ideal)
        row.mean_latency_us = statistics.fmean(rec["latency_us"] for rec in records.values())
        final = observer.final(run) or {}
        problems = []
        if final.get("event") != "done":
            problems.append(f"final event {final.get('event')!r}: {final.get('reason')}")
        else:
            if final["count"] != len(records):
                problems.append(f"done count {final['count']} != {len(records)} unique")
            if sorted(records) != list(range(len(records))):
                problems.append("seqs are not 0..n-1")
            if final["digest"] != sample_digest(records.values()):
                problems.append("digest differs")
        row.check = "OK" if not problems else "MISMATCH: " + "; ".join(problems)
        rows.append(row)
    inside = [k for k in ticks if start <= k.t <= end]
    if len(inside) < 2:
        raise RuntimeError("fewer than two CPU readings in the steady window")
    a, b = inside[0], inside[-1]
    span = b.t - a.t

    def pct(name: str) -> float:
        return 100 * (getattr(b, name) - getattr(a, name)) / span

    problems = [
        line
        for line in agent.output().splitlines()
        if "level=WARNING" in line or "level=ERROR" in line or "Traceback" in line
    ]
    return FleetResult(
        boards=rows,
        window_s=end - start,
        steady_samples=sum(r.steady for r in rows),
        agent_cpu_pct=pct("agent_cpu"),
        agent_sys_pct=pct("agent_sys"),
        agent_wakeups_s=(b.agent_wakeups - a.agent_wakeups) / span,
        sim_cpu_pct=pct("sim_cpu"),
        broker_cpu_pct=pct("broker_cpu"),
        own_cpu_pct=pct("own_cpu"),
        idle_cpu_pct=idle_cpu_pct,
        idle_rss=statistics.fmean(idle_rss),
        steady_rss=statistics.fmean(k.agent_rss for k in inside),
        peak_rss=max(k.agent_rss for k in ticks),
        duplicates=sum(observer.duplicates.values()),
        max_backlog=observer.max_backlog,
        messages=sum(1 for _ in observer.receipts),
        agent_log_lines=problems,
        median_s=args.median_s or None,
        batch=args.agent_batch,
    )


def report_fleet(res: FleetResult) -> None:
    n = len(res.boards)
    median = f"{res.median_s * 1e3:g} ms" if res.median_s else "the simulator's defaults"
    batch = res.batch if res.batch is not None else "200 (default)"
    print(
        f"\n## fleet: {n} boards, latency mode, simulated median inference {median}, "
        f"agent batch_samples {batch}"
    )
    print(
        f"steady window {res.window_s:.1f} s (every board producing); reference = the boards' "
        "wire + compute limit: per board 1 / mean(('infer 1 0%' + exact reply bytes) x 10 / "
        "baud + latency_us), summed; floors = raw-fd infer 1 0, one board of the model alone / "
        "every board at once"
    )
    head = (
        "board",
        "model",
        "baud",
        "samples",
        "steady samples/s",
        "limit samples/s",
        "ratio",
        "ms/query",
        "limit ms/query",
        "floor alone ms/query",
        "floor all ms/query",
        "mean latency_us",
        "done check",
    )
    print("| " + " | ".join(head) + " |")
    print("|" + "|".join("---" for _ in head) + "|")
    for r in res.boards:
        rate = r.steady / res.window_s
        cells = (
            r.board,
            r.model,
            str(r.baud),
            str(r.samples),
            f"{rate:.1f}",
            f"{1 / r.ideal_s:.1f}",
            f"{rate * r.ideal_s:.3f}",
            f"{1e3 / rate:.2f}" if rate else "-",
            f"{1e3 * r.ideal_s:.2f}",
            f"{1e3 * r.floor_s:.2f}" if r.floor_s else "-",
            f"{1e3 * r.floor_all_s:.2f}" if r.floor_all_s else "-",
            f"{r.mean_latency_us:.0f}",
            r.check,
        )
        print("| " + " | ".join(cells) + " |")
    print(
        f"fleet: {res.rate:.1f} samples/s published (observer, steady) vs limit "
        f"{res.limit:.1f} samples/s: ratio {res.rate / res.limit:.3f}; "
        f"{res.messages} samples messages in all, {res.duplicates} duplicate samples"
    )
    if res.floor_rate:
        print(
            f"raw-fd floor (no agent), summed: one board at a time {res.floor_rate:.1f} "
            f"samples/s (fleet ÷ it {res.rate / res.floor_rate:.3f})"
            + (
                f", all boards at once {res.floor_all_rate:.1f} samples/s (fleet ÷ it "
                f"{res.rate / res.floor_all_rate:.3f})"
                if res.floor_all_rate
                else ""
            )
        )
    print(
        f"agent CPU: {res.agent_cpu_pct:.1f} % of one core ({res.agent_cpu_pct / n:.2f} % per "
        f"board; idle {res.idle_cpu_pct:.2f} %); {res.agent_cpu_us:.0f} µs CPU per sample "
        f"(user {res.agent_cpu_us - res.agent_sys_us:.0f}, system {res.agent_sys_us:.0f}); "
        f"{res.agent_wakeups_s / max(res.rate, 1e-9):.2f} wake-ups per sample (voluntary "
        "context switches, all threads)"
    )
    if res.floor_cpu_us:
        print(
            f"raw-fd floor CPU per query (its thread; reference): one board at a time "
            f"{res.floor_cpu_us:.0f} µs (agent CPU per sample ÷ it "
            f"{res.agent_cpu_us / res.floor_cpu_us:.2f})"
            + (
                f", all boards at once {res.floor_all_cpu_us:.0f} µs (system "
                f"{res.floor_all_sys_us or 0:.0f}; {res.floor_all_wakeups or 0:.2f} wake-ups; "
                f"÷ it {res.agent_cpu_us / res.floor_all_cpu_us:.2f})"
                if res.floor_all_cpu_us
                else ""
            )
        )
    print(
        f"agent RSS: idle {res.idle_rss:.1f} MiB, steady mean {res.steady_rss:.1f} MiB, peak "
        f"{res.peak_rss:.1f} MiB; (steady - idle) / {n} = "
        f"{(res.steady_rss - res.idle_rss) / n:.2f} MiB per board"
    )
    print(
        f"others (steady window, % of one core): farm sim {res.sim_cpu_pct:.1f}, mosquitto "
        f"{res.broker_cpu_pct:.1f}, this bench (observer) {res.own_cpu_pct:.1f}; "
        f"max heartbeat backlog {res.max_backlog}"
    )
    if res.agent_log_lines:
        print(f"agent log: {len(res.agent_log_lines)} warning/error line(s), first:")
        for line in res.agent_log_lines[:5]:
            print(f"  {line[:300]}")
    else:
        print("agent log: no warning or error")


# --- ceiling ----------------------------------------------------------------------------------


BOARD, RUN = "kws01-1", "ceiling"


def synthetic_records(count: int) -> list[dict[str, Any]]:
    """kws01 latency samples as the runner makes them: 12 results, laps, latency."""
    rng = random.Random(1)
    records = []
    clock = 1_000_000
    for seq in range(count):
        raw = [rng.random() ** 4 for _ in range(12)]
        total = sum(raw)
        results = tuple(int(v / total * 1000) / 1000 for v in raw)
        latency = round(181_000 * (1 + rng.gauss(0, 0.02)))
        start, end = clock, clock + latency + 1_563
        clock = end + 17_000
        sample = Sample(
            seq=seq,
            index=seq % 20,
            segment=None,
            window=None,
            label=seq % 12,
            results=results,
            start_us=start,
            end_us=end,
            elapsed_us=end - start,
            latency_us=float(latency),
        )
        records.append(SAMPLE_BATCH.record(sample))
    return records


def one_record_payload(record: dict[str, Any]) -> bytes:
    """What ``SampleBatcher.flush`` encodes for a batch of one."""
    return SAMPLE_BATCH.encode(AGENT, BOARD, RUN, [record])


@dataclass
class CeilingRow:
    name: str
    samples: int
    messages: int
    wall_s: float
    """First enqueue (or publish) to the last sample received by the subscriber."""
    feed_s: float
    """First enqueue to the last one returning (batcher closed)."""
    cpu_s: float
    """This process's CPU (event loop and journal thread) from the first enqueue until every
    message was acknowledged."""
    cpu_span_s: float
    sub: dict[str, Any]
    journal: dict[str, float] = field(default_factory=dict)
    """Journal worker-thread seconds per ``_Store`` call kind."""
    calls: dict[str, int] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.samples / self.wall_s


class Counter:
    """The subscriber process: counts samples on the samples topics until it has K."""

    def __init__(self, url: str, expected: int, timeout: float) -> None:
        argv = [
            sys.executable,
            str(Path(__file__).resolve()),
            "--count-subscriber",
            url,
            str(expected),
            str(timeout),
        ]
        self.child = Child("subscriber", argv, None)
        self.timeout = timeout

    async def start(self) -> None:
        await self.child.start(stdout_pipe=True)
        assert self.child.process is not None and self.child.process.stdout is not None
        line = await asyncio.wait_for(self.child.process.stdout.readline(), 30)
        if line.strip() != b"ready":
            raise RuntimeError(f"subscriber did not start: {line!r}")

    async def result(self) -> dict[str, Any]:
        assert self.child.process is not None and self.child.process.stdout is not None
        line = await asyncio.wait_for(self.child.process.stdout.readline(), self.timeout + 10)
        return json.loads(line)


async def count_subscriber(url: str, expected: int, limit_s: float) -> None:
    """``--count-subscriber``: subscribe to every samples topic at QoS 1, count the samples
    (``"seq":`` occurrences), print the arrival of the first and last (monotonic clock,
    comparable across processes) and this process's CPU between the two."""
    host, port = host_port(url)
    total = messages = 0
    first = last = cpu_first = None
    async with aiomqtt.Client(host, port, identifier=f"bench-counter-{os.getpid()}") as client:
        await client.subscribe(SAMPLES_FILTER, qos=1)
        print("ready", flush=True)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(limit_s):
                async for message in client.messages:
                    last = time.monotonic()
                    if first is None:
                        first, cpu_first = last, time.process_time()
                    total += bytes(message.payload).count(b'"seq":')  # type: ignore[arg-type]
                    messages += 1
                    if total >= expected:
                        break
    cpu_s = time.process_time() - (cpu_first or 0.0)
    report = {"samples": total, "messages": messages, "first": first, "last": last, "cpu_s": cpu_s}
    print(json.dumps(report), flush=True)


def agent_client(url: str, name: str) -> aiomqtt.Client:
    """The agent's client (``make_client``: persistent session, will, window of ``WINDOW``)."""
    extra: dict[str, Any] = {}
    if "started" in inspect.signature(make_client).parameters:  # newer agents stamp the will
        extra["started"] = time.time()
    return make_client(BrokerConfig(url=url), name, window=WINDOW, **extra)


#: ``--profile-agent``: ``python -c PROFILE_AGENT FILE module args...`` runs ``module`` as
#: ``python -m`` would under cProfile timed by the thread's CPU clock, not the wall clock: a
#: write that wakes the simulator or the broker lets the woken process run first, and a wall
#: clock would charge the agent's write for that time.
PROFILE_AGENT = """
import cProfile, runpy, sys, time
out, module = sys.argv[1], sys.argv[2]
sys.argv = [module, *sys.argv[3:]]
profiler = cProfile.Profile(time.thread_time)
profiler.enable()
try:
    runpy.run_module(module, run_name="__main__", alter_sys=True)
finally:
    profiler.disable()
    profiler.dump_stats(out)
"""


def time_journal(journal: Journal) -> tuple[dict[str, float], dict[str, int]]:
    """Accumulate the worker thread's time in each ``_Store`` call and count the calls
    (bench instrumentation)."""
    busy: dict[str, float] = defaultdict(float)
    calls: dict[str, int] = defaultdict(int)
    store = journal._store
    for name in ("enqueue", "pending", "ack", "compact"):
        method = getattr(store, name)

        def timed(*a: Any, _method: Any = method, _name: str = name, **k: Any) -> Any:
            started = time.perf_counter()
            try:
                return _method(*a, **k)
            finally:
                busy[_name] += time.perf_counter() - started
                calls[_name] += 1

        setattr(store, name, timed)
    return busy, calls


async def ceiling_raw(url: str, records: list[dict[str, Any]], limit_s: float) -> CeilingRow:
    counter = Counter(url, len(records), limit_s)
    await counter.start()
    try:
        client = agent_client(url, f"{AGENT}-raw")
        topic = samples_topic(AGENT, BOARD, RUN)
        slots = asyncio.Semaphore(WINDOW)
        acked = 0

        async def send(payload: bytes) -> None:
            nonlocal acked
            try:
                await client.publish(topic, payload, qos=1, timeout=PUBACK_TIMEOUT_S)
            finally:
                slots.release()
            acked += 1

        async with client:
            cpu0, t0 = time.process_time(), time.monotonic()
            async with asyncio.TaskGroup() as group:
                for record in records:
                    payload = one_record_payload(record)
                    await slots.acquire()
                    group.create_task(send(payload))
            t_fed = time.monotonic()
            sub = await counter.result()
            cpu1, t1 = time.process_time(), time.monotonic()
    finally:
        await counter.child.stop()
    return CeilingRow(
        "raw aiomqtt (reference)",
        sub["samples"],
        acked,
        sub["last"] - t0,
        t_fed - t0,
        cpu1 - cpu0,
        t1 - t0,
        sub,
    )


async def ceiling_journal(
    url: str,
    records: list[dict[str, Any]],
    limit_s: float,
    tmp: Path,
    name: str,
    max_samples: int,
    max_delay_s: float,
) -> CeilingRow:
    journal = await Journal.open(tmp / f"journal-{max_samples}.sqlite")
    busy, calls = time_journal(journal)
    outbox = Outbox(journal)
    counter = Counter(url, len(records), limit_s)
    await counter.start()
    try:
        client = agent_client(url, f"{AGENT}-{max_samples}")
        async with client:
            pump = asyncio.get_running_loop().create_task(outbox.pump(client))
            try:
                await journal.run_started(RUN, BOARD, {"bench": name})
                batcher = SampleBatcher(
                    outbox, AGENT, BOARD, RUN, max_samples=max_samples, max_delay_s=max_delay_s
                )
                cpu0, t0 = time.process_time(), time.monotonic()
                for record in records:
                    await batcher.add(record)
                await batcher.close()
                t_fed = time.monotonic()
                sub = await counter.result()
                await wait_until(lambda: journal.backlog_count == 0 or pump.done(), 60, "acks")
                cpu1, t1 = time.process_time(), time.monotonic()
                if pump.done():
                    pump.result()  # raises what stopped it
            finally:
                pump.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await pump
        await journal.run_finished(RUN)
    finally:
        await counter.child.stop()
        await journal.close()
    return CeilingRow(
        name,
        sub["samples"],
        outbox.sent,
        sub["last"] - t0,
        t_fed - t0,
        cpu1 - cpu0,
        t1 - t0,
        sub,
        dict(busy),
        dict(calls),
    )


async def ceiling(args: argparse.Namespace, tmp: Path) -> list[CeilingRow]:
    records = synthetic_records(args.samples)
    size = len(one_record_payload(records[0]))
    print(
        f"  ceiling: {len(records)} records, {size} B as a one-record payload",
        file=sys.stderr,
        flush=True,
    )
    broker = Mosquitto(tmp / "mqtt-ceiling")
    timeout = 300.0
    rows = []
    try:
        await broker.start()
        rows.append(await ceiling_raw(broker.url, records, timeout))
        print(f"  ceiling: raw {rows[-1].rate:.0f} samples/s", file=sys.stderr, flush=True)
        for name, n, delay in (
            ("batching off (max_samples=1)", 1, 0.1),
            ("batching on (max_samples=200, 0.1 s)", 200, 0.1),
        ):
            rows.append(await ceiling_journal(broker.url, records, timeout, tmp, name, n, delay))
            print(f"  ceiling: {name} {rows[-1].rate:.0f} samples/s", file=sys.stderr, flush=True)
    finally:
        await broker.stop()
    for row in rows:
        if row.samples != len(records):
            raise RuntimeError(f"{row.name}: the subscriber counted {row.samples} samples")
    return rows


def report_ceiling(rows: list[CeilingRow]) -> None:
    raw = rows[0]
    print(
        f"\n## ceiling: {raw.samples} kws01 sample records, publisher in one process "
        f"(window {WINDOW} QoS 1 publishes in flight), subscriber in another; reference = raw"
    )
    head = (
        "variant",
        "samples",
        "messages",
        "wall s",
        "samples/s",
        "÷ raw",
        "feed s",
        "publisher CPU %",
        "CPU µs/sample",
        "subscriber CPU %",
        "journal s (enqueue/pending/ack/compact)",
        "journal % of wall",
    )
    print("| " + " | ".join(head) + " |")
    print("|" + "|".join("---" for _ in head) + "|")
    for r in rows:
        j = r.journal
        parts = "/".join(f"{j.get(k, 0.0):.2f}" for k in ("enqueue", "pending", "ack", "compact"))
        journal_s = sum(j.values())
        sub_span = (r.sub["last"] - r.sub["first"]) or 1e-9
        cells = (
            r.name,
            str(r.samples),
            str(r.messages),
            f"{r.wall_s:.2f}",
            f"{r.rate:.0f}",
            f"{r.rate / raw.rate:.3f}",
            f"{r.feed_s:.2f}",
            f"{100 * r.cpu_s / r.cpu_span_s:.0f}",
            f"{1e6 * r.cpu_s / r.samples:.0f}",
            f"{100 * r.sub['cpu_s'] / sub_span:.0f}",
            parts if j else "-",
            f"{100 * journal_s / r.wall_s:.0f}" if j else "-",
        )
        print("| " + " | ".join(cells) + " |")
    print(
        "publisher CPU: this process (event loop + journal thread) from the first enqueue to the "
        "last PUBACK; subscriber CPU: its process between its first and last receipt"
    )
    for r in rows[1:]:
        kinds = ("enqueue", "pending", "ack", "compact")
        counts = {k: r.calls.get(k, 0) for k in kinds}
        per_call = ", ".join(
            f"{k} {counts[k]} x {1e6 * r.journal.get(k, 0.0) / max(counts[k], 1):.0f} µs"
            for k in kinds
        )
        print(f"journal thread, {r.name}: {per_call}")


# --- main -------------------------------------------------------------------------------------


async def amain(args: argparse.Namespace) -> int:
    load0 = os.getloadavg()
    fleet_res = None
    ceiling_rows = None
    with tempfile.TemporaryDirectory(prefix="bench-agent-load-") as name:
        tmp = Path(name)
        # Each part's report is printed as soon as it ends (a later failure keeps it).
        if args.only in (None, "fleet"):
            started = time.monotonic()
            fleet_res = await fleet(args, tmp)
            print(f"  fleet: {time.monotonic() - started:.0f} s", file=sys.stderr, flush=True)
            report_fleet(fleet_res)
        if args.only in (None, "ceiling"):
            started = time.monotonic()
            ceiling_rows = await ceiling(args, tmp)
            print(f"  ceiling: {time.monotonic() - started:.0f} s", file=sys.stderr, flush=True)
            report_ceiling(ceiling_rows)
    print("\n## summary")
    if fleet_res is not None:
        n = len(fleet_res.boards)
        floor, floor_all = fleet_res.floor_rate, fleet_res.floor_all_rate
        print(
            f"fleet ({n} boards): {fleet_res.rate:.0f} samples/s = "
            f"{fleet_res.rate / fleet_res.limit:.3f} x wire+compute limit "
            f"({fleet_res.limit:.0f}/s)"
            + (f", {fleet_res.rate / floor:.3f} x raw-fd floor ({floor:.0f}/s)" if floor else "")
            + (
                f", {fleet_res.rate / floor_all:.3f} x raw-fd floor all at once ({floor_all:.0f}/s)"
                if floor_all
                else ""
            )
            + f"; agent CPU {fleet_res.agent_cpu_pct:.1f} % of a core "
            f"({fleet_res.agent_cpu_pct / n:.2f} %/board), {fleet_res.agent_cpu_us:.0f} µs per "
            "sample"
            + (
                f" = {fleet_res.agent_cpu_us / fleet_res.floor_all_cpu_us:.2f} x the raw-fd "
                f"floor's CPU per query all at once ({fleet_res.floor_all_cpu_us:.0f} µs)"
                if fleet_res.floor_all_cpu_us
                else ""
            )
            + f"; RSS {fleet_res.steady_rss:.1f} MiB "
            f"(+{(fleet_res.steady_rss - fleet_res.idle_rss) / n:.2f} MiB/board over idle "
            f"{fleet_res.idle_rss:.1f}); checks "
            + ("all OK" if all(b.check == "OK" for b in fleet_res.boards) else "MISMATCH")
        )
    if ceiling_rows is not None:
        raw = ceiling_rows[0]
        for r in ceiling_rows:
            print(f"ceiling {r.name}: {r.rate:.0f} samples/s = {r.rate / raw.rate:.3f} x raw")
    load1 = os.getloadavg()
    print(
        f"load average (1/5/15 min): before {load0[0]:.2f}/{load0[1]:.2f}/{load0[2]:.2f}, "
        f"after {load1[0]:.2f}/{load1[1]:.2f}/{load1[2]:.2f}"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--count-subscriber"]:
        url, expected, timeout = argv[1], int(argv[2]), float(argv[3])
        asyncio.run(count_subscriber(url, expected, timeout))
        return 0
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=textwrap.dedent(__doc__.split("\n\n", 2)[1]),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--only", choices=("fleet", "ceiling"), help="run one part only")
    parser.add_argument("--boards", type=int, default=8, help="fleet: simulated boards")
    parser.add_argument(
        "--duration",
        type=float,
        default=20.0,
        metavar="S",
        help="fleet: min_duration_s of each latency run",
    )
    parser.add_argument("--min-queries", type=int, default=100, help="fleet: min_queries")
    parser.add_argument(
        "--median-s",
        type=float,
        default=0.002,
        metavar="S",
        help="fleet: simulated median inference (0: simulator defaults)",
    )
    parser.add_argument("--baud", type=int, help="fleet: every DUT's baud (default: the model's)")
    parser.add_argument(
        "--agent-batch",
        type=int,
        metavar="N",
        help="fleet: the agent's batch_samples (default: its default)",
    )
    parser.add_argument(
        "--floor-queries",
        type=int,
        default=50,
        metavar="M",
        help="fleet: raw-fd infer 1 0 queries per model before the agent starts (0: skip)",
    )
    parser.add_argument(
        "--profile-agent",
        type=Path,
        metavar="FILE",
        help="fleet: run the agent under cProfile timed by its event-loop thread's CPU clock, "
        "stats to FILE (inflates its CPU figures)",
    )
    parser.add_argument(
        "--samples",
        type=int,
        default=50_000,
        metavar="K",
        help="ceiling: sample records per variant",
    )
    args = parser.parse_args(argv)
    if args.boards < 1 or args.samples < 1:
        parser.error("--boards and --samples must be positive")
    return run_bench(amain(args))


if __name__ == "__main__":
    sys.exit(main())
