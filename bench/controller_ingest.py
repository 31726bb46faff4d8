"""Benchmark (not a test): ``farm controller ingest`` (MQTT -> Redis) against the raw Mosquitto
publish -> subscribe rate of the same payloads, measured in the same run.

    python bench/controller_ingest.py [--runs 8] [--agents 4] [--batches 40] [--repeat 3]
                                      [--ingest-procs 1] [--split partition|share]
                                      [--redis redis://127.0.0.1:6379/11]

Payloads: ``--runs`` runs (one per simulated board, the models cycling kws01, vww01, ic01,
ad01; ``--agents`` agents share the boards), each ``--batches`` ``SampleBatch`` messages of
200 accuracy samples — the agent's default batch — built exactly as the agent builds them
(``farm.messages.SAMPLE_BATCH``: its ``record`` of each ``farm.sample.Sample`` and its
``encode``, as ``agent.outbox.SampleBatcher.flush`` does; records of seq, index, label, the
model's result vector with the firmware's digits, the two laps, elapsed and per-inference
latency). A publisher process (one aiomqtt
client per agent, QoS 1, ``agent.outbox.WINDOW`` publishes in flight per client, each agent's
runs interleaved batch by batch as its outbox would send them) publishes them to a private
Mosquitto (``tests/integration/farm_procs.Mosquitto``: persistence on, ``max_inflight_messages
100``).

Two paths, interleaved pass by pass (the order alternates each repetition), each with a fresh
publisher process and fresh run ids:

* **raw** (the reference): the payloads go to ``farm/v1/bench/...`` (the agent topics with
  ``agent`` replaced by ``bench``: same lengths, and outside ingest's filter) and a plain
  aiomqtt subscriber in its own process, subscribed at QoS 1, only counts the messages.
  samples/s = samples ÷ (the publisher's first publish → the subscriber's last message);
* **ingest**: the payloads go to the real agent topics, a real ``farm controller ingest``
  process (plain subscription, persistent session, manual acks after storing, Redis DB
  ``--redis``) validates and stores them; the runs' hashes were written first (state
  ``running``, dispatched to that agent and board) so every sample is accepted.
  samples/s = samples ÷ (first publish → ``accepted_samples`` in ``farm:ingest:counters``
  reaching the total, polled every 5 ms). Each pass is checked: every run's samples hash
  holds all its seqs, and no message was rejected.

Ratio = ingest ÷ raw. Also printed: CPU milliseconds per 1,000 samples of the ingest
process, the subscriber, the publisher and Mosquitto over each pass (``/proc/PID/stat``), and
Redis's (``INFO cpu``: the whole server, other users' commands included); then, in this
process with no broker, ``Ingest.handle`` called on the same payloads one after the other
(what one ingest process does with a core to itself: one message at a time, so none of the
overlap the MQTT path has) and the median time per batch of each of its steps, done the way
ingest's handlers do them: ``decode`` (``controller.ingest.parse.parse_sample_batch``: the
payload parsed and validated in one pass, to the records' stored JSON, the seqs and the
latencies), ``store`` (the one Lua script: the run's acceptance, the HSETNX of every record,
``done`` and the counters; Redis's time included), ``observe`` (the latency histogram, one
update per batch).

``--ingest-procs 2`` runs two ingest processes, for comparison: ``--split partition`` (the
default) gives each its ``--partition`` (each gets every message and handles its runs'),
``--split share`` puts them in a shared subscription group.

Before the passes, one small pass of each path is run and discarded (connections, the Lua
script's first load). Uses and FLUSHes the Redis database given (default 11).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.integration.farm_procs

import aiomqtt
import redis
import redis.asyncio as aioredis
from harness import run_bench

from agent.outbox import WINDOW
from controller import keys
from controller.ingest import Ingest
from controller.ingest.parse import parse_sample_batch
from controller.ingest.store import CLOSED_STATES, STORE_SAMPLES
from controller.settings import Settings
from farm.messages import SAMPLE_BATCH, samples_topic
from farm.models import MODELS
from farm.sample import Sample
from tests.integration.farm_procs import Mosquitto, Proc

BATCH = 200
"""Samples per message: the agent's default (``SampleBatcher.max_samples``)."""
MODEL_CYCLE = ("kws01", "vww01", "ic01", "ad01")
DEFAULT_REDIS = "redis://127.0.0.1:6379/11"
POLL_S = 0.005
HZ = os.sysconf("SC_CLK_TCK")


# --- payloads ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunSpec:
    agent: str
    board: str
    run: str
    model: str


def plan_runs(tag: str, runs: int, agents: int) -> list[RunSpec]:
    """``runs`` runs of pass ``tag``, the models cycling, the boards dealt to ``agents``."""
    out = []
    for i in range(runs):
        model = MODEL_CYCLE[i % len(MODEL_CYCLE)]
        out.append(RunSpec(f"bench-a{i % agents}", f"b{i:02d}-{model}", f"{tag}-r{i:02d}", model))
    return out


def _result_vector(rng: random.Random, model: str, label: int) -> tuple[float, ...]:
    """A result vector with the digits the firmware prints (kws 0.ddd, the others %.3f)."""
    outputs = MODELS[model].outputs
    if model == "ad01":
        return (round(rng.uniform(0.0, 40.0), 3),)
    raw = [rng.random() ** 4 for _ in range(outputs)]
    raw[label % outputs] += 1.0
    total = sum(raw)
    return tuple(int(v / total * 1000) / 1000 for v in raw)


def records_for(model: str, count: int, seed: int) -> list[dict[str, Any]]:
    """``count`` accuracy samples of ``model`` as the agent publishes them
    (``SAMPLE_BATCH.record``)."""
    rng = random.Random(seed)
    latency_us = round(MODELS[model].reference_latency_s * 1e6)
    clock = 1_000_000
    out = []
    for seq in range(count):
        label = rng.randrange(max(2, MODELS[model].outputs))
        spent = round(latency_us * (1 + rng.gauss(0, 0.02)))
        start, end = clock, clock + spent
        clock = end + 20_000
        ad = model == "ad01"
        sample = Sample(
            seq=seq,
            index=seq // 196 if ad else seq,
            segment=seq % 196 if ad else None,
            window=None,
            label=label if not ad else rng.randrange(2),
            results=_result_vector(rng, model, label),
            start_us=start,
            end_us=end,
            elapsed_us=end - start,
            latency_us=float(end - start),
        )
        out.append(SAMPLE_BATCH.record(sample))
    return out


def batch_payloads(spec: RunSpec, batches: int, seed: int) -> list[bytes]:
    """The run's ``SampleBatch`` payloads, encoded as ``SampleBatcher.flush`` encodes them."""
    records = records_for(spec.model, batches * BATCH, seed)
    return [
        SAMPLE_BATCH.encode(spec.agent, spec.board, spec.run, records[b * BATCH : (b + 1) * BATCH])
        for b in range(batches)
    ]


def topic_for(spec: RunSpec, prefix: str) -> str:
    """The run's samples topic; ``prefix`` "bench" moves it out of ingest's filter."""
    topic = samples_topic(spec.agent, spec.board, spec.run)
    return topic if prefix == "agent" else topic.replace("/agent/", f"/{prefix}/", 1)


# --- processes --------------------------------------------------------------------------------


def proc_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / HZ


def redis_cpu_s(client: redis.Redis) -> float:
    info = client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def host_port(url: str) -> tuple[str, int]:
    host, port = url.removeprefix("mqtt://").split(":")
    return host, int(port)


class Child:
    """This script in a subprocess (publisher or subscriber), talking over stdin/stdout."""

    def __init__(self, argv: list[str]) -> None:
        self.argv = [sys.executable, str(Path(__file__).resolve()), *argv]
        self.process: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        self.process = await asyncio.create_subprocess_exec(
            *self.argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE
        )
        line = await self.line(60)
        if line.strip() != "ready":
            raise RuntimeError(f"{self.argv[2]} did not start: {line!r}")

    async def line(self, within: float) -> str:
        assert self.process is not None and self.process.stdout is not None
        return (await asyncio.wait_for(self.process.stdout.readline(), within)).decode()

    def go(self) -> None:
        assert self.process is not None and self.process.stdin is not None
        self.process.stdin.write(b"go\n")

    async def result(self, within: float) -> dict[str, Any]:
        line = await self.line(within)
        if not line:
            raise RuntimeError(f"{self.argv[2]} exited without a result")
        return json.loads(line)

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    async def stop(self) -> None:
        if self.process is None or self.process.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            self.process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(self.process.wait(), 10)
        except TimeoutError:
            self.process.kill()
            await self.process.wait()


async def publisher(
    url: str, prefix: str, tag: str, runs: int, agents: int, batches: int, loops: int
) -> None:
    """``--publisher``: one client per agent, QoS 1, ``WINDOW`` in flight each; prints
    ``ready``, waits for a line on stdin, publishes every payload ``loops`` times, prints the
    first publish's and the last PUBACK's monotonic time and this process's CPU seconds."""
    by_agent: dict[str, list[list[tuple[str, bytes]]]] = {}
    for i, spec in enumerate(plan_runs(tag, runs, agents)):
        topic = topic_for(spec, prefix)
        payloads = batch_payloads(spec, batches, seed=i)
        by_agent.setdefault(spec.agent, []).append([(topic, p) for p in payloads])
    # An agent's outbox sends its boards' batches in journal order: its runs interleaved.
    ordered = {
        agent: [item for group in zip(*per_run, strict=True) for item in group] * loops
        for agent, per_run in by_agent.items()
    }
    host, port = host_port(url)
    async with contextlib.AsyncExitStack() as stack:
        clients = {}
        for agent in ordered:
            client = aiomqtt.Client(
                host,
                port,
                identifier=f"bench-pub-{tag}-{agent}",
                max_inflight_messages=WINDOW,
                timeout=30.0,
            )
            client.pending_calls_threshold = 10_000
            clients[agent] = await stack.enter_async_context(client)
        print("ready", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        cpu0 = time.process_time()
        first = time.monotonic()

        async def pump(client: aiomqtt.Client, items: list[tuple[str, bytes]]) -> None:
            slots = asyncio.Semaphore(WINDOW)

            async def send(topic: str, payload: bytes) -> None:
                try:
                    await client.publish(topic, payload, qos=1)
                finally:
                    slots.release()

            async with asyncio.TaskGroup() as group:
                for topic, payload in items:
                    await slots.acquire()
                    group.create_task(send(topic, payload))

        await asyncio.gather(*(pump(clients[a], items) for a, items in ordered.items()))
        last = time.monotonic()
        cpu = time.process_time() - cpu0
    print(json.dumps({"first": first, "last_ack": last, "cpu_s": cpu}), flush=True)


async def raw_subscriber(url: str, topic_filter: str, expected: int, limit_s: float) -> None:
    """``--subscriber``: a plain aiomqtt subscriber (QoS 1) that only counts messages."""
    host, port = host_port(url)
    messages = 0
    first = last = None
    cpu0 = 0.0
    async with aiomqtt.Client(host, port, identifier=f"bench-sub-{os.getpid()}") as client:
        await client.subscribe(topic_filter, qos=1)
        print("ready", flush=True)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(limit_s):
                async for _ in client.messages:
                    last = time.monotonic()
                    if first is None:
                        first, cpu0 = last, time.process_time()
                    messages += 1
                    if messages >= expected:
                        break
    cpu = time.process_time() - cpu0
    print(json.dumps({"messages": messages, "first": first, "last": last, "cpu_s": cpu}))


# --- passes -----------------------------------------------------------------------------------


@dataclass
class Pass:
    path: str  # raw | ingest
    samples: int
    wall_s: float
    cpu_s: dict[str, float] = field(default_factory=dict)
    checks: list[str] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.samples / self.wall_s


@dataclass
class Bench:
    args: argparse.Namespace
    broker: Mosquitto
    client: redis.Redis
    ingest: list[Proc]
    passes: int = 0

    def _tag(self) -> str:
        self.passes += 1
        return f"p{self.passes:02d}"

    def _publisher(self, prefix: str, tag: str, batches: int, loops: int = 1) -> Child:
        a = self.args
        argv = ["--publisher", self.broker.url, prefix, tag, str(a.runs), str(a.agents)]
        return Child([*argv, str(batches), str(loops)])

    def _cpu(self, ingest: bool) -> dict[str, float]:
        assert self.broker.process is not None
        out = {"mosquitto": proc_cpu_s(self.broker.process.pid)}
        if ingest:
            pids = [p.process.pid for p in self.ingest if p.process is not None]
            out["ingest"] = sum(proc_cpu_s(pid) for pid in pids)
        out["redis"] = redis_cpu_s(self.client)
        return out

    async def raw(self, batches: int, loops: int) -> Pass:
        tag = self._tag()
        total = self.args.runs * batches * loops
        sub = Child(["--subscriber", self.broker.url, "farm/v1/bench/#", str(total), "120"])
        pub = self._publisher("bench", tag, batches, loops)
        try:
            await sub.start()
            await pub.start()
            cpu0 = self._cpu(ingest=False)
            pub.go()
            got_pub = await pub.result(180)
            got_sub = await sub.result(180)
            cpu1 = self._cpu(ingest=False)
        finally:
            await pub.stop()
            await sub.stop()
        checks = []
        if got_sub["messages"] != total:
            checks.append(f"subscriber got {got_sub['messages']} of {total} messages")
        wall = got_sub["last"] - got_pub["first"]
        cpu = {k: cpu1[k] - cpu0[k] for k in cpu0}
        cpu.update(publisher=got_pub["cpu_s"], subscriber=got_sub["cpu_s"])
        return Pass("raw", total * BATCH, wall, cpu, checks)

    async def ingested(self, batches: int) -> Pass:
        tag = self._tag()
        specs = plan_runs(tag, self.args.runs, self.args.agents)
        now = time.time()
        with self.client.pipeline() as pipe:
            for spec in specs:
                pipe.hset(
                    keys.run(spec.run),
                    mapping={
                        "id": spec.run,
                        "sweep": "bench",
                        "board": spec.board,
                        "agent": spec.agent,
                        "benchmark": spec.model,
                        "mode": "accuracy",
                        "state": "running",
                        "created": now,
                    },
                )
            pipe.execute()
        total = self.args.runs * batches * BATCH

        def accepted() -> int:
            return int(self.client.hget(keys.INGEST_COUNTERS, "accepted_samples") or 0)

        base = accepted()
        pub = self._publisher("agent", tag, batches)
        try:
            await pub.start()
            cpu0 = self._cpu(ingest=True)
            pub.go()
            give_up = time.monotonic() + 180
            while accepted() < base + total:
                if time.monotonic() > give_up:
                    raise RuntimeError(f"ingest stored {accepted() - base} of {total} samples")
                await asyncio.sleep(POLL_S)
            end = time.monotonic()
            cpu1 = self._cpu(ingest=True)
            got_pub = await pub.result(60)
        finally:
            await pub.stop()
        checks = []
        for spec in specs:
            have = self.client.hlen(keys.run_samples(spec.run))
            if have != batches * BATCH:
                checks.append(f"{spec.run}: {have} of {batches * BATCH} samples stored")
        counters = self.client.hgetall(keys.INGEST_COUNTERS)
        rejected = {k: v for k, v in counters.items() if k.startswith("rejected")}
        if rejected:
            checks.append(f"rejected: {rejected}")
        for spec in specs:
            self.client.unlink(keys.run_samples(spec.run), keys.run(spec.run))
        cpu = {k: cpu1[k] - cpu0[k] for k in cpu0}
        cpu["publisher"] = got_pub["cpu_s"]
        return Pass("ingest", total, end - got_pub["first"], cpu, checks)


# --- in this process: Ingest.handle and its steps ---------------------------------------------


async def handle_only(url: str, runs: int, agents: int, batches: int) -> dict[str, Any]:
    """``Ingest.handle`` on every payload in turn, no broker; then its steps, timed apart."""
    client = redis.Redis.from_url(url, decode_responses=True)
    specs = plan_runs("inproc", runs, agents)
    for spec in specs:
        client.hset(
            keys.run(spec.run),
            mapping={
                "agent": spec.agent,
                "board": spec.board,
                "benchmark": spec.model,
                "state": "running",
            },
        )
    work = [
        (topic_for(spec, "agent"), p)
        for i, spec in enumerate(specs)
        for p in batch_payloads(spec, batches, seed=i)
    ]
    aclient = aioredis.Redis.from_url(url, decode_responses=True)
    settings = Settings.resolve(url, "mqtt://127.0.0.1:1", Path(tempfile.gettempdir()))
    ingest = Ingest(settings, redis=aclient, share=False)
    try:
        await ingest.handle(*work[0])  # loads the script
        cpu0, t0 = time.process_time(), time.perf_counter()
        for topic, payload in work[1:]:
            await ingest.handle(topic, payload)
        wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
        stored = sum(client.hlen(keys.run_samples(s.run)) for s in specs)
        for spec in specs:
            client.unlink(keys.run_samples(spec.run))
        # The steps of one batch, each timed over every payload (median ms).
        script = aclient.register_script(STORE_SAMPLES)
        steps: dict[str, list[float]] = {"decode": [], "store": [], "observe": []}

        def timed(name: str, fn: Callable[[], Any]) -> Any:
            t = time.perf_counter()
            value = fn()
            steps[name].append(time.perf_counter() - t)
            return value

        counters = "bench:scratch"  # not farm:ingest:counters: the passes poll that one
        for _, payload in work:
            batch = timed("decode", lambda p=payload: parse_sample_batch(p))
            run_keys = [
                keys.run(batch.run),
                keys.run_samples(batch.run),
                counters,
                keys.board(batch.board),
            ]
            t = time.perf_counter()
            seqs = " ".join(map(str, batch.seqs))
            args = [batch.agent, batch.board, CLOSED_STATES, seqs, batch.body, max(batch.seqs)]
            reply = await script(keys=run_keys, args=[*args, repr(time.time()), ""])
            steps["store"].append(time.perf_counter() - t)
            assert reply[0] == 1 and not reply[3] and not reply[4], "not stored as new"
            timed(
                "observe",
                lambda b=batch, m=reply[2]: ingest.metrics.observe_latencies(
                    b.board, m, b.latencies_us
                ),
            )
        for spec in specs:
            client.unlink(keys.run_samples(spec.run), keys.run(spec.run))
        client.unlink("bench:scratch")
        client.unlink(*(keys.board(spec.board) for spec in specs))
    finally:
        await aclient.aclose()
        client.close()
    n = len(work) - 1
    return {
        "samples": n * BATCH,
        "stored": stored,
        "expected": len(work) * BATCH,
        "wall_s": wall,
        "cpu_s": cpu,
        "rate": n * BATCH / wall,
        "steps_ms": {k: statistics.median(v) * 1e3 for k, v in steps.items()},
        "payload_kb": statistics.mean(len(p) for _, p in work) / 1024,
    }


# --- main -------------------------------------------------------------------------------------


async def wait_for_log(proc: Proc, text: str, within: float) -> None:
    give_up = time.monotonic() + within
    while text not in proc.output():
        if proc.process is None or proc.process.returncode is not None:
            raise RuntimeError(f"process exited:\n{proc.output()[-2000:]}")
        if time.monotonic() > give_up:
            raise RuntimeError(f"no {text!r} within {within} s:\n{proc.output()[-2000:]}")
        await asyncio.sleep(0.05)


def per_k(cpu: dict[str, float], samples: int) -> str:
    order = ("ingest", "subscriber", "publisher", "mosquitto", "redis")
    return " / ".join(f"{cpu[k] / samples * 1e6:.2f}" if k in cpu else "-" for k in order)


def report(passes: list[Pass], inproc: dict[str, Any], args: argparse.Namespace) -> None:
    n = args.runs * args.batches * BATCH
    print(
        f"\n{args.runs} runs x {args.batches} batches x {BATCH} samples = {n} samples per pass "
        f"({args.agents} publishing clients, {WINDOW} in flight each; raw pass: the payloads "
        f"{args.raw_loops} times; {args.ingest_procs} ingest process(es)"
        f"{f', split by {args.split}' if args.ingest_procs > 1 else ''}); payload "
        f"{inproc['payload_kb']:.1f} KiB per batch"
    )
    cpu_head = "CPU ms/1k samples: ingest / subscriber / publisher / mosquitto / redis"
    head = ("rep", "path", "samples/s", "wall s", "ingest÷raw", cpu_head, "checks")
    print("| " + " | ".join(head) + " |")
    print("|" + "|".join("---" for _ in head) + "|")
    for i in range(0, len(passes), 2):
        pair = {p.path: p for p in passes[i : i + 2]}
        ratio = pair["ingest"].rate / pair["raw"].rate
        for p in (pair["raw"], pair["ingest"]):
            cells = (
                str(i // 2 + 1),
                p.path,
                f"{p.rate:,.0f}",
                f"{p.wall_s:.2f}",
                f"**{ratio:.3f}**" if p.path == "ingest" else "1",
                per_k(p.cpu_s, p.samples),
                "OK" if not p.checks else "; ".join(p.checks),
            )
            print("| " + " | ".join(cells) + " |")
    ratios = [
        next(p for p in passes[i : i + 2] if p.path == "ingest").rate
        / next(p for p in passes[i : i + 2] if p.path == "raw").rate
        for i in range(0, len(passes), 2)
    ]
    raw = [p.rate for p in passes if p.path == "raw"]
    ing = [p.rate for p in passes if p.path == "ingest"]
    print(
        f"\nmedian: raw {statistics.median(raw):,.0f} samples/s, ingest "
        f"{statistics.median(ing):,.0f} samples/s, ingest÷raw {statistics.median(ratios):.3f} "
        f"(per repetition: {', '.join(f'{r:.3f}' for r in ratios)})"
    )
    steps = inproc["steps_ms"]
    print(
        f"Ingest.handle in this process, no broker: {inproc['rate']:,.0f} samples/s "
        f"({inproc['wall_s'] / (inproc['samples'] / BATCH) * 1e3:.2f} ms per batch, CPU "
        f"{inproc['cpu_s'] / inproc['wall_s'] * 100:.0f} % of the wall time; stored "
        f"{inproc['stored']} of {inproc['expected']}); its steps, median ms per batch: "
        + ", ".join(f"{k} {v:.2f}" for k, v in steps.items())
        + f" (sum {sum(steps.values()):.2f})"
    )


def split_options(split: str, index: int, count: int) -> list[str]:
    """How ingest process ``index`` of ``count`` takes its share of the messages."""
    if count == 1:
        return []
    return ["--share"] if split == "share" else ["--partition", f"{index}/{count}"]


async def amain(args: argparse.Namespace) -> int:
    load0 = os.getloadavg()
    started = time.monotonic()
    client = redis.Redis.from_url(args.redis, decode_responses=True)
    client.flushdb()
    passes: list[Pass] = []
    with tempfile.TemporaryDirectory(prefix="bench-ingest-") as name:
        tmp = Path(name)
        broker = Mosquitto(tmp / "mqtt")
        env = {"FARM_REDIS_URL": args.redis, "FARM_MQTT_URL": broker.url}
        ingest = [
            Proc(
                [
                    *("--log-level", "info", "controller", "ingest", "--client-id", f"bench-{i}"),
                    *split_options(args.split, i, args.ingest_procs),
                ],
                tmp / f"ingest{i}.log",
                env=env,
            )
            for i in range(args.ingest_procs)
        ]
        try:
            await broker.start()
            for proc in ingest:
                await proc.start()
            for proc in ingest:
                await wait_for_log(proc, "event=ingest_subscribed", 30)
            bench = Bench(args, broker, client, ingest)
            await bench.raw(2, 1)  # warm-up, discarded
            await bench.ingested(2)
            for rep in range(args.repeat):
                order = ("raw", "ingest") if rep % 2 == 0 else ("ingest", "raw")
                for path in order:
                    if path == "raw":
                        p = await bench.raw(args.batches, args.raw_loops)
                    else:
                        p = await bench.ingested(args.batches)
                    passes.append(p)
                    print(
                        f"  rep {rep + 1}/{args.repeat} {path}: {p.rate:,.0f} samples/s",
                        file=sys.stderr,
                        flush=True,
                    )
        finally:
            for proc in ingest:
                await proc.stop()
            await broker.stop()
    inproc = await handle_only(args.redis, args.runs, args.agents, args.batches)
    client.flushdb()
    load1 = os.getloadavg()
    report(passes, inproc, args)
    print(
        f"load average (1/5/15 min): before {load0[0]:.2f}/{load0[1]:.2f}/{load0[2]:.2f}, "
        f"after {load1[0]:.2f}/{load1[1]:.2f}/{load1[2]:.2f}; "
        f"{time.monotonic() - started:.0f} s"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--publisher"]:
        url, prefix, tag, runs, agents, batches, loops = argv[1:8]
        asyncio.run(publisher(url, prefix, tag, int(runs), int(agents), int(batches), int(loops)))
        return 0
    if argv[:1] == ["--subscriber"]:
        url, topic_filter, expected, limit_s = argv[1:5]
        asyncio.run(raw_subscriber(url, topic_filter, int(expected), float(limit_s)))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=8, help="runs (boards) per pass")
    parser.add_argument("--agents", type=int, default=4, help="publishing clients")
    parser.add_argument("--batches", type=int, default=40, help="200-sample batches per run")
    parser.add_argument(
        "--raw-loops",
        type=int,
        default=20,
        help="the raw pass publishes the payloads this many times (it is that much faster)",
    )
    parser.add_argument("--repeat", type=int, default=3, help="raw + ingest pass pairs")
    parser.add_argument(
        "--ingest-procs",
        type=int,
        default=1,
        help="ingest processes splitting the messages (the issue's figure: 1)",
    )
    parser.add_argument(
        "--split",
        choices=("partition", "share"),
        default="partition",
        help="how several ingest processes split the messages: --partition or --share",
    )
    parser.add_argument("--redis", default=DEFAULT_REDIS, help="Redis DB to use (FLUSHED)")
    args = parser.parse_args(argv)
    if min(args.runs, args.agents, args.batches, args.repeat) < 1 or args.agents > args.runs:
        parser.error("--runs, --agents, --batches, --repeat must be >= 1 and agents <= runs")
    return run_bench(amain(args))


if __name__ == "__main__":
    sys.exit(main())
