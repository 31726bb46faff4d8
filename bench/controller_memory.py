"""Benchmark (not a test): the controller's memory per concurrently running board.

    python bench/controller_memory.py [--counts 8 32 64] [--median-s 1.0]
                                      [--redis redis://127.0.0.1:6379/11]

A whole simulated farm, every part real: a private Mosquitto
(``tests/integration/farm_procs.Mosquitto``), Redis database ``--redis`` (FLUSHED), one
``farm sim`` with max(counts) kws01 boards (simulated inference ``--median-s``, spread 0:
one query a second keeps the simulator and agent light), the ``farm agent`` serving them (the
agent.yaml ``farm sim`` writes), and one ``farm controller ingest``.

For each N in ``--counts`` (ascending), one ``farm controller worker --processes N`` (the
previous N's is stopped first): a supervisor that imports the job and scoring code, freezes it
and forks N RQ workers — one per concurrently running board. Once they have registered and
idled 3 s, the pool is read once: the idle reference (its PSS ÷ N, and a bare RQ worker's
RSS). Then ``farm submit --benchmark kws --mode latency --boards <8 boards> --options
{"min_queries": 1, "min_duration_s": 3600, "latency_inputs": 1}``, eight boards at a time
(``--step``), each group once the previous one runs (one agent starting 64 runs at once on
this 2-core VM missed its health checks' deadlines): N runs that stay in flight together. Once
all N are ``running`` in Redis and N workers are busy with them, the controller's processes
are read five times, 1 s apart (each read checks the N runs still run and N workers are busy;
the workers are RQ ``SimpleWorker`` instances, which run a job in their own process):

* ingest; the supervisor; the RQ workers (its children); their children (RQ's scheduler
  process, forked by the one worker holding the scheduler lock);
* RSS (``VmRSS``: counts every page shared by the forked processes once per process), PSS
  (shared pages divided among the processes sharing them: what the processes cost together,
  the figure to compare with the aim) and USS (private pages), from
  ``/proc/PID/smaps_rollup``;
* and their CPU over the five reads (``/proc/PID/stat``), per second of wall time.

Per running board = the sum over those processes ÷ N (median of the five reads); ratio =
that PSS ÷ the idle pool's PSS per worker. Then ``farm cancel`` ends the sweep (reads go on until
every run is cancelled and its worker idle: "peak" is the highest sum seen, cancel included).
numpy and scikit-learn are in the supervisor's shared pages (``--preload-scoring``, the
default), so scoring imports nothing in a worker.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import statistics
import sys
import tempfile
import textwrap
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.integration.farm_procs

import redis
from harness import loadavg, mem_kib, run_bench

from tests.integration.farm_procs import (
    Mosquitto,
    Proc,
    boards_idle_and_healthy,
    descendants,
    farm_command,
    wait_until,
)

DEFAULT_REDIS = "redis://127.0.0.1:6379/11"
T = TypeVar("T")
HZ = os.sysconf("SC_CLK_TCK")


# --- /proc ------------------------------------------------------------------------------------


def process_table() -> dict[int, tuple[int, int]]:
    """pid -> (parent pid, process group) of every process, from /proc."""
    table = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            table[int(stat.parent.name)] = (int(fields[1]), int(fields[2]))
    return table


def worker_children(pids: Iterable[int]) -> list[int]:
    """The children of the RQ workers ``pids`` (RQ's scheduler process)."""
    wanted = set(pids)
    return [pid for pid, (ppid, _) in process_table().items() if ppid in wanted]


def proc_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process (all its threads); 0 if it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / HZ


# --- the farm ---------------------------------------------------------------------------------


def boards_yaml(boards: Iterable[tuple[str, str, float]]) -> str:
    """A ``farm sim --config`` file: (id, model, median inference s), spread 0."""
    lines = ["seed: 1", "boards:"]
    for board, model, median_s in boards:
        lines.append(
            f"  - {{id: {board}, model: {model}, latency: {{median_s: {median_s}, spread: 0}}}}"
        )
    return "\n".join(lines) + "\n"


async def end(proc: Proc, grace_s: float) -> None:
    """SIGTERM, then after ``grace_s`` SIGKILL the process and all its descendants (an RQ
    worker's warm shutdown would wait for its job)."""
    process = proc.process
    if process is None or process.returncode is not None:
        return
    below = descendants(process.pid)
    with contextlib.suppress(ProcessLookupError):
        process.send_signal(signal.SIGTERM)
    try:
        await asyncio.wait_for(process.wait(), grace_s)
    except TimeoutError:
        for pid in [*descendants(process.pid), *below, process.pid]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        await process.wait()
    for pid in below:  # a worker that outlived its supervisor
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


@dataclass
class Farm:
    """Broker, Redis, simulated boards and their agents, ingest, RQ workers; :meth:`stop`
    ends everything it started."""

    dir: Path
    redis_url: str
    broker: Mosquitto
    client: redis.Redis
    sims: list[Proc] = field(default_factory=list)
    agents: list[Proc] = field(default_factory=list)
    ingest: Proc | None = None
    workers: list[Proc] = field(default_factory=list)

    @classmethod
    async def start(cls, directory: Path, redis_url: str) -> Farm:
        client = redis.Redis.from_url(redis_url, decode_responses=True)
        client.flushdb()
        broker = Mosquitto(directory / "mqtt")
        await broker.start()
        return cls(directory, redis_url, broker, client)

    @property
    def env(self) -> dict[str, str]:
        return {
            "FARM_REDIS_URL": self.redis_url,
            "FARM_MQTT_URL": self.broker.url,
            "FARM_RESULTS_DIR": str(self.dir / "results"),
        }

    async def add_boards(self, agent: str, config: str, *, dataset_limit: int = 10) -> Path:
        """``farm sim --config`` with ``config`` (YAML) and its ``farm agent``."""
        cfg = self.dir / f"{agent}.yaml"
        cfg.write_text(config)
        out = self.dir / f"sim-{agent}"
        args = ["sim", "--out", str(out), "--config", str(cfg), "--agent-id", agent]
        args += ["--broker", self.broker.url, "--dataset-limit", str(dataset_limit)]
        sim = Proc(args, self.dir / f"sim-{agent}.log")
        self.sims.append(sim)
        await sim.start()
        await wait_until(lambda: (out / "agent.yaml").exists(), 120, f"{agent}'s agent.yaml")
        agent_proc = Proc(
            ["--log-level", "info", "agent", "--config", str(out / "agent.yaml")],
            self.dir / f"agent-{agent}.log",
        )
        self.agents.append(agent_proc)
        await agent_proc.start()
        return out

    async def start_ingest(self) -> None:
        self.ingest = Proc(
            ["--log-level", "info", "controller", "ingest"], self.dir / "ingest.log", env=self.env
        )
        await self.ingest.start()

    async def add_workers(self, count: int) -> Proc:
        """One more ``farm controller worker`` forking ``count`` RQ workers."""
        i = len(self.workers)
        worker = Proc(
            ["--log-level", "info", "controller", "worker", "--processes", str(count),
             "--name", f"bench-w{i}"],
            self.dir / f"worker{i}.log",
            env=self.env,
        )  # fmt: skip
        self.workers.append(worker)
        await worker.start()
        return worker

    async def stop_workers(self) -> None:
        """Stop every ``farm controller worker`` (their runs must have ended)."""
        await asyncio.gather(*(end(w, 20) for w in self.workers))
        self.workers.clear()

    def busy_workers(self) -> int:
        """RQ workers of the newest ``farm controller worker`` running a job."""
        prefix = f"rq:worker:bench-w{len(self.workers) - 1}-"
        names = [k for k in self.client.smembers("rq:workers") if k.startswith(prefix)]
        with self.client.pipeline() as pipe:
            for name in names:
                pipe.hget(name, "state")
            return sum(1 for state in pipe.execute() if state == "busy")

    def rq_workers(self) -> list[int]:
        """The RQ worker processes: the children of the ``farm controller worker`` processes."""
        pools = {w.process.pid for w in self.workers if w.process is not None}
        return [pid for pid, (ppid, _) in process_table().items() if ppid in pools]

    def workers_registered(self) -> int:
        """RQ workers of the newest ``farm controller worker`` that registered with Redis
        (they are then waiting for jobs); a stopped one's may linger in the set a while."""
        prefix = f"rq:worker:bench-w{len(self.workers) - 1}-"
        return sum(1 for key in self.client.smembers("rq:workers") if key.startswith(prefix))

    async def boards_ready(self, boards: list[str], within: float) -> None:
        await wait_until(
            lambda: boards_idle_and_healthy(self.client, boards),
            within,
            f"{len(boards)} boards idle and healthy",
        )

    async def farm(self, *args: str) -> str:
        """A client command (``farm ARGS``); its stdout, or an error with its stderr."""
        code, out, errs = await farm_command(args, self.env, 300)
        if code:
            raise RuntimeError(f"farm {' '.join(args)} exited {code}: {errs!r}")
        return out

    def run_states(self, runs: Iterable[str]) -> dict[str, str]:
        with self.client.pipeline() as pipe:
            runs = list(runs)
            for run in runs:
                pipe.hget(f"farm:run:{run}", "state")
            return dict(zip(runs, pipe.execute(), strict=True))

    def logs(self, tail: int = 1500) -> str:
        parts = []
        for log in sorted(self.dir.glob("*.log")):
            parts.append(f"--- {log.name}\n{log.read_text(errors='replace')[-tail:]}")
        return "\n".join(parts)

    async def stop(self, *, flush: bool = True) -> None:
        """Stop everything, newest first; whatever does not stop in time is killed. The
        Redis database is flushed unless ``flush`` is false (kept for a post-mortem)."""
        ingest = [self.ingest] if self.ingest else []
        await asyncio.gather(*(end(w, 10) for w in self.workers))
        for proc in [*ingest, *self.agents, *self.sims]:
            await end(proc, 20)
        await self.broker.stop()
        if flush:
            self.client.flushdb()
        self.client.close()


async def measured_in_temp_dir(
    prefix: str,
    measure: Callable[[argparse.Namespace, Path], Awaitable[T]],
    report: Callable[[T, argparse.Namespace], None],
    args: argparse.Namespace,
) -> int:
    """``measure(args, dir)`` in a fresh temporary directory, then ``report`` its result and
    print the bench's time and any process it left behind; exit status 0."""
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix=prefix) as name:
        result = await measure(args, Path(name))
    report(result, args)
    print(f"{time.monotonic() - started:.0f} s; processes left behind: {leftovers() or 'none'}")
    return 0


def leftovers() -> list[int]:
    """Processes this script started that are still alive (there should be none)."""
    return descendants(os.getpid())


# --- memory -----------------------------------------------------------------------------------


@dataclass
class Reading:
    """One read of the controller's processes (KiB)."""

    ingest: dict[str, int]
    supervisors: list[dict[str, int]]
    parents: list[dict[str, int]]
    others: list[dict[str, int]]
    """Other children of the workers (RQ's scheduler process)."""

    def total(self, kind: str) -> int:
        procs = [self.ingest, *self.supervisors, *self.parents, *self.others]
        return sum(p[kind] for p in procs)


def read_controller(farm: Farm) -> Reading:
    assert farm.ingest is not None and farm.ingest.process is not None
    pids = farm.rq_workers()
    others = worker_children(pids)
    return Reading(
        mem_kib(farm.ingest.process.pid),
        [mem_kib(w.process.pid) for w in farm.workers if w.process is not None],
        [mem_kib(pid) for pid in pids],
        [mem_kib(pid) for pid in others],
    )


@dataclass
class Phase:
    n: int
    idle_worker_rss: float
    """KiB, median over the idle RQ workers."""
    idle_pss: float
    """KiB, the idle pool's PSS (supervisor, workers, scheduler child) ÷ N."""
    readings: list[Reading]
    cpu: dict[str, float]
    """CPU seconds per second of wall time over the reads: ingest, supervisor, workers."""
    peak: dict[str, int]
    states: dict[str, int]
    load: str
    setup_s: float
    wait_s: float

    def per_board_mib(self, kind: str) -> float:
        return statistics.median(r.total(kind) for r in self.readings) / self.n / 1024

    def part_mib(self, part: str, kind: str) -> float:
        """Median over the reads of the mean of one kind of process."""
        values = []
        for r in self.readings:
            procs = {
                "ingest": [r.ingest],
                "supervisor": r.supervisors,
                "parent": r.parents,
            }[part]
            values.append(statistics.mean(p[kind] for p in procs))
        return statistics.median(values) / 1024


def controller_cpu(farm: Farm) -> dict[str, float]:
    """CPU seconds so far of ingest, the supervisors and the RQ workers."""
    assert farm.ingest is not None and farm.ingest.process is not None
    pids = farm.rq_workers()
    return {
        "ingest": proc_cpu_s(farm.ingest.process.pid),
        "supervisor": sum(proc_cpu_s(w.process.pid) for w in farm.workers if w.process),
        "parents": sum(proc_cpu_s(pid) for pid in pids),
    }


async def phase(farm: Farm, n: int, boards: list[str], args: argparse.Namespace) -> Phase:
    """N workers, one latency run on each of N boards, the controller's memory while they run."""
    t0 = time.monotonic()
    await farm.stop_workers()
    await farm.add_workers(n)
    await wait_until(lambda: farm.workers_registered() >= n, 300, f"{n} RQ workers registered")
    await asyncio.sleep(3)
    idle_reading = read_controller(farm)
    idle = statistics.median(p["rss"] for p in idle_reading.parents)
    idle_pss = (idle_reading.total("pss") - idle_reading.ingest["pss"]) / n
    setup_s = time.monotonic() - t0
    # Long enough for any start-up skew; the runs are cancelled after the reads.
    options = json.dumps({"min_queries": 1, "min_duration_s": 3600, "latency_inputs": 1})
    t1 = time.monotonic()
    runs: list[str] = []
    sweeps: list[str] = []

    def running(expected: int) -> bool:
        states = farm.run_states(runs)
        ended = {r: s for r, s in states.items() if s in ("completed", "failed", "cancelled")}
        if ended:
            reasons = {r: farm.client.hget(f"farm:run:{r}", "reason") for r in ended}
            raise RuntimeError(f"runs ended before the reads: {reasons}")
        busy = farm.busy_workers()
        return all(s == "running" for s in states.values()) and busy == expected

    # Started a group at a time: one agent starting 64 runs at once on 2 busy cores misses
    # its health checks' wire-model deadlines; all N are in flight together all the same.
    for first in range(0, n, args.step):
        group = boards[first : min(n, first + args.step)]
        out = await farm.farm(
            "submit", "--benchmark", "kws", "--mode", "latency", "--boards", ",".join(group),
            "--options", options, "--label", f"memory-{n}", "--json",
        )  # fmt: skip
        submitted = json.loads(out)
        sweeps.append(submitted["sweep"])
        runs += submitted["runs"]
        count = len(runs)
        await wait_until(lambda c=count: running(c), 120 + 2 * count, f"{count} runs running")

    def all_running() -> bool:
        return running(n)

    wait_s = time.monotonic() - t1
    readings = []
    cpu0, c0 = controller_cpu(farm), time.monotonic()
    for _ in range(5):
        if not all_running():
            raise RuntimeError(f"a run ended during the reads: {farm.run_states(runs)}")
        readings.append(read_controller(farm))
        await asyncio.sleep(1.0)
    cpu1, c1 = controller_cpu(farm), time.monotonic()
    # Horses alive at both ends (the same N) make the difference meaningful.
    cpu = {k: (cpu1[k] - cpu0[k]) / (c1 - c0) for k in cpu0}
    load = loadavg()
    peak = {k: max(r.total(k) for r in readings) for k in ("rss", "pss", "uss")}
    for sweep in sweeps:
        await farm.farm("cancel", sweep, "--json")

    def ended() -> bool:
        reading = read_controller(farm)
        for k in peak:
            peak[k] = max(peak[k], reading.total(k))
        states = farm.run_states(runs).values()
        return all(s in ("completed", "failed", "cancelled") for s in states) and not (
            farm.busy_workers()
        )

    await wait_until(ended, 120 + n, "the runs to end after the cancel")
    states: dict[str, int] = {}
    for s in farm.run_states(runs).values():
        states[s] = states.get(s, 0) + 1
    return Phase(n, idle, idle_pss, readings, cpu, peak, states, load, setup_s, wait_s)


def report(phases: list[Phase], args: argparse.Namespace) -> None:
    print(
        f"\nkws01 latency runs (latency_inputs 1, cancelled after the reads), boards' "
        f"inference {args.median_s:g} s; MiB; the aim: <= 40 MiB per running board"
    )
    head = ("N", "PSS/board", "÷ idle pool PSS/worker", "USS/board", "RSS/board (sum)",
            "idle pool PSS/worker", "idle RQ worker RSS", "supervisor RSS / PSS",
            "RQ worker RSS / PSS / USS (mean)", "ingest PSS",
            "peak PSS/board", "runs", "load avg")  # fmt: skip
    print("| " + " | ".join(head) + " |")
    print("|" + "|".join("---" for _ in head) + "|")
    for p in phases:
        pss = p.per_board_mib("pss")
        idle_pss = p.idle_pss / 1024
        cells = (
            str(p.n),
            f"**{pss:.1f}**",
            f"{pss / idle_pss:.2f}",
            f"{p.per_board_mib('uss'):.1f}",
            f"{p.per_board_mib('rss'):.1f}",
            f"{idle_pss:.1f}",
            f"{p.idle_worker_rss / 1024:.1f}",
            f"{p.part_mib('supervisor', 'rss'):.1f} / {p.part_mib('supervisor', 'pss'):.1f}",
            f"{p.part_mib('parent', 'rss'):.1f} / {p.part_mib('parent', 'pss'):.1f} / "
            f"{p.part_mib('parent', 'uss'):.1f}",
            f"{p.part_mib('ingest', 'pss'):.1f}",
            f"{p.peak['pss'] / p.n / 1024:.1f}",
            ", ".join(f"{v} {k}" for k, v in sorted(p.states.items())),
            p.load,
        )
        print("| " + " | ".join(cells) + " |")
    for p in phases:
        others = statistics.median(len(r.others) for r in p.readings)
        cpu = p.cpu
        print(
            f"N={p.n}: workers up and idle after {p.setup_s:.0f} s; all N runs running "
            f"{p.wait_s:.0f} s after the first submit; other worker children (RQ scheduler): "
            f"{others:g}; controller CPU while the N runs were followed (cores): ingest "
            f"{cpu['ingest']:.3f}, supervisor {cpu['supervisor']:.3f}, RQ workers "
            f"{cpu['parents']:.3f} "
            f"({cpu['parents'] / p.n * 1000:.1f} ms/s each)"
        )


async def amain(args: argparse.Namespace) -> int:
    load0 = loadavg()
    started = time.monotonic()
    total = max(args.counts)
    boards = [f"m{i:02d}-kws" for i in range(total)]
    phases: list[Phase] = []
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as name:
        farm = await Farm.start(Path(name), args.redis)
        try:
            await farm.add_boards(
                "mem", boards_yaml((b, "kws01", args.median_s) for b in boards), dataset_limit=5
            )
            await farm.start_ingest()
            await farm.boards_ready(boards, 60 + total)
            print(f"  farm up: {time.monotonic() - started:.0f} s", file=sys.stderr, flush=True)
            for n in sorted(args.counts):
                phases.append(await phase(farm, n, boards, args))
                p = phases[-1]
                print(
                    f"  N={n}: {p.per_board_mib('pss'):.1f} MiB PSS per running board "
                    f"({p.per_board_mib('rss'):.1f} MiB RSS summed); "
                    f"{time.monotonic() - started:.0f} s",
                    file=sys.stderr,
                    flush=True,
                )
        except BaseException:
            print(textwrap.indent(farm.logs(), "    "), file=sys.stderr)
            raise
        finally:
            await farm.stop()
    left = leftovers()
    report(phases, args)
    print(
        f"load average (1/5/15 min): before {load0}, after {loadavg()}; "
        f"{time.monotonic() - started:.0f} s; processes left behind: {left or 'none'}"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--counts", type=int, nargs="+", default=[8, 32, 64])
    parser.add_argument("--median-s", type=float, default=1.0, help="simulated inference")
    parser.add_argument(
        "--step", type=int, default=8, help="runs submitted (and started) at a time"
    )
    parser.add_argument("--redis", default=DEFAULT_REDIS, help="Redis DB to use (FLUSHED)")
    args = parser.parse_args(argv)
    if min(args.counts) < 1:
        parser.error("--counts must be positive")
    return run_bench(amain(args))


if __name__ == "__main__":
    sys.exit(main())
