"""Benchmark (not a test): one sweep over an emulated fleet through the real controller.

    python bench/fleet_sweep.py [--counts 16 64] [--agents-of 8] [--mode accuracy]
                                [--limit 200] [--inference-s 0.05] [--batch-delay 0.1]
                                [--workers 4] [--within 900]
                                [--redis redis://127.0.0.1:6379/5]

For each N in ``--counts``: a private Mosquitto (``tests/integration/farm_procs.Mosquitto``),
Redis database ``--redis`` (FLUSHED at the start of each N, then left as the sweep left it),
``farm controller ingest`` and ``farm controller worker --processes W`` (``--workers``: a
running board holds no worker, the follower in the supervisor follows every run), and
:class:`bench.fleet.FleetEmulator` with N boards on N / ``--agents-of`` agents. Once the
boards are idle and healthy in Redis and the W RQ workers registered and idle 3 s, the
controller is read once (the idle reference: the worker pool's PSS ÷ W, per idle worker).
Then ``farm submit`` of one sweep, kws01 ``--mode`` with ``--limit`` samples, over all N
boards (its wall time is the submit figure), and the controller is read every second until
every run has ended.

Reported per N:

* runs completed / failed / cancelled, and runs retried (``attempts`` > 1);
* lost samples: for every run, the seqs stored in Redis must be exactly 0..total-1 (the
  count of runs where they are not, and of seqs missing);
* controller PSS (``/proc/PID/smaps_rollup``): ingest + worker supervisor + RQ workers + their
  children, the peak over the sweep; per board, and ÷ the idle pool's PSS per worker;
* ``farm submit`` seconds, and per 100 runs; the sweep's makespan ÷ one run's emulated time;
* the emulator's own CPU per sample (this process), so a reader can tell it was not the
  bottleneck.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import statistics
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench.fleet, tests.integration

import redis

from bench.fleet import FleetEmulator
from bench.harness import loadavg, mem_kib
from tests.integration.farm_procs import (
    Mosquitto,
    Proc,
    boards_idle_and_healthy,
    descendants,
    farm_command,
    wait_until,
)

DEFAULT_REDIS = "redis://127.0.0.1:6379/5"
TERMINAL = ("completed", "failed", "cancelled")


def cpu_s() -> float:
    """This process's user + system CPU seconds (the emulator runs in it)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


@dataclass
class Controller:
    """Broker, ingest and one worker pool on Redis ``redis_url``; :meth:`stop` ends them."""

    dir: Path
    redis_url: str
    broker: Mosquitto
    client: redis.Redis
    ingest: Proc | None = None
    workers: Proc | None = None

    @classmethod
    async def start(cls, directory: Path, redis_url: str, processes: int) -> Controller:
        client = redis.Redis.from_url(redis_url, decode_responses=True)
        client.flushdb()
        broker = Mosquitto(directory / "mqtt")
        await broker.start()
        self = cls(directory, redis_url, broker, client)
        self.ingest = Proc(
            ["--log-level", "info", "controller", "ingest"], directory / "ingest.log", env=self.env
        )
        await self.ingest.start()
        self.workers = Proc(
            ["--log-level", "info", "controller", "worker", "--processes", str(processes),
             "--name", "fleet"],
            directory / "worker.log",
            env=self.env,
        )  # fmt: skip
        await self.workers.start()
        return self

    @property
    def env(self) -> dict[str, str]:
        return {
            "FARM_REDIS_URL": self.redis_url,
            "FARM_MQTT_URL": self.broker.url,
            "FARM_RESULTS_DIR": str(self.dir / "results"),
        }

    def pids(self) -> dict[str, list[int]]:
        """The controller's processes: ingest, the supervisor, and below it the RQ workers
        and their children (RQ's scheduler)."""
        assert self.ingest and self.ingest.process and self.workers and self.workers.process
        return {
            "ingest": [self.ingest.process.pid],
            "supervisor": [self.workers.process.pid],
            "workers": descendants(self.workers.process.pid),
        }

    def pss_kib(self) -> dict[str, int]:
        """PSS of ingest, the supervisor and everything below it, in KiB."""
        return {part: sum(mem_kib(p)["pss"] for p in pids) for part, pids in self.pids().items()}

    def workers_registered(self) -> int:
        return sum(
            1 for k in self.client.smembers("rq:workers") if k.startswith("rq:worker:fleet-")
        )

    async def farm(self, *args: str) -> str:
        code, out, errs = await farm_command(args, self.env, 600)
        if code:
            raise RuntimeError(f"farm {' '.join(args)} exited {code}: {errs!r}")
        return out

    def logs(self, tail: int = 3000) -> str:
        parts = []
        for log in sorted(self.dir.glob("*.log")):
            parts.append(f"--- {log.name}\n{log.read_text(errors='replace')[-tail:]}")
        return "\n".join(parts)

    async def stop(self) -> None:
        """Stop the workers, ingest and the broker; the Redis data stays (for a look)."""
        for proc in (self.workers, self.ingest):
            if proc is not None:
                await proc.stop()
        await self.broker.stop()
        self.client.close()


@dataclass
class SweepFigures:
    """What one sweep over N emulated boards measured."""

    n: int
    agents: int
    processes: int
    states: Counter[str]
    retried: int
    lost_runs: int
    """Runs whose stored seqs are not exactly 0..total-1."""
    lost_seqs: int
    extra_seqs: int
    samples: int
    """Samples stored over every run."""
    idle_pool_pss_per_worker_kib: float
    idle_ingest_pss_kib: int
    peak_pss_kib: dict[str, int]
    """Per part (ingest, supervisor, workers) at the moment the sum peaked."""
    submit_s: float
    sweep_s: float
    run_s: float
    """One run's emulated time (its samples × inference time)."""
    emulator_cpu_s: float
    load: str
    reasons: list[str] = field(default_factory=list)

    @property
    def peak_total_kib(self) -> int:
        return sum(self.peak_pss_kib.values())


async def sweep(
    directory: Path,
    redis_url: str,
    *,
    agents: int,
    boards_per_agent: int,
    processes: int,
    mode: str = "accuracy",
    limit: int = 200,
    inference_s: float = 0.05,
    batch_delay_s: float = 0.1,
    options: dict[str, Any] | None = None,
    within_s: float = 600,
) -> SweepFigures:
    """One sweep of kws01 ``mode`` (``limit`` samples a run) over ``agents`` ×
    ``boards_per_agent`` emulated boards through ingest and ``processes`` RQ workers."""
    n = agents * boards_per_agent
    controller = await Controller.start(directory, redis_url, processes)
    try:
        fleet = FleetEmulator(
            controller.broker.url,
            agents=agents,
            boards_per_agent=boards_per_agent,
            inference_s=inference_s,
            batch_delay_s=batch_delay_s,
        )
        async with fleet:
            boards = fleet.boards
            await wait_until(
                lambda: boards_idle_and_healthy(controller.client, boards),
                60 + n,
                f"{n} emulated boards idle and healthy",
            )
            await wait_until(
                lambda: controller.workers_registered() >= processes,
                120 + processes,
                f"{processes} RQ workers registered",
            )
            await asyncio.sleep(3)
            idle = controller.pss_kib()
            idle_per_worker = (idle["supervisor"] + idle["workers"]) / processes
            args = ["submit", "--benchmark", "kws", "--mode", mode, "--boards", ",".join(boards),
                    "--limit", str(limit), "--label", f"fleet-{n}", "--json"]  # fmt: skip
            if options:
                args += ["--options", json.dumps(options)]
            cpu0 = cpu_s()
            t0 = time.monotonic()
            submitted = json.loads(await controller.farm(*args))
            submit_s = time.monotonic() - t0
            runs: list[str] = submitted["runs"]
            peak: dict[str, int] = {}

            def ended() -> bool:
                reading = controller.pss_kib()
                if sum(reading.values()) > sum(peak.values()):
                    peak.clear()
                    peak.update(reading)
                with controller.client.pipeline() as pipe:
                    for run in runs:
                        pipe.hget(f"farm:run:{run}", "state")
                    return all(state in TERMINAL for state in pipe.execute())

            while not ended():
                if time.monotonic() - t0 > within_s:
                    raise RuntimeError(f"the sweep did not end within {within_s:.0f} s")
                await asyncio.sleep(1.0)
            sweep_s = time.monotonic() - t0
            emulator_cpu = cpu_s() - cpu0
        figures = _check_runs(controller.client, runs)
        return SweepFigures(
            n=n,
            agents=agents,
            processes=processes,
            idle_pool_pss_per_worker_kib=idle_per_worker,
            idle_ingest_pss_kib=idle["ingest"],
            peak_pss_kib=peak,
            submit_s=submit_s,
            sweep_s=sweep_s,
            run_s=limit * inference_s,
            emulator_cpu_s=emulator_cpu,
            load=loadavg(),
            **figures,
        )
    except BaseException:
        print(controller.logs(), file=sys.stderr)
        raise
    finally:
        await controller.stop()


def _check_runs(client: redis.Redis, runs: list[str]) -> dict[str, Any]:
    """States, retries and lost samples of ``runs`` as Redis holds them."""
    states: Counter[str] = Counter()
    retried = lost_runs = lost = extra = samples = 0
    reasons: list[str] = []
    for run in runs:
        info = client.hgetall(f"farm:run:{run}")
        states[info.get("state", "?")] += 1
        if int(info.get("attempts") or 0) > 1:
            retried += 1
        if info.get("state") != "completed":
            reasons.append(f"{run}: {info.get('state')}: {info.get('reason')}")
        seqs = {int(s) for s in client.hkeys(f"farm:run:{run}:samples")}
        total = int(info.get("total") or 0)
        expected = set(range(total))
        samples += len(seqs)
        if seqs != expected or total == 0:
            lost_runs += 1
            lost += len(expected - seqs)
            extra += len(seqs - expected)
    return {
        "states": states,
        "retried": retried,
        "lost_runs": lost_runs,
        "lost_seqs": lost,
        "extra_seqs": extra,
        "samples": samples,
        "reasons": reasons,
    }


def report(all_figures: list[SweepFigures], args: argparse.Namespace) -> None:
    mib = 1024
    print(
        f"\nkws01 {args.mode}, {args.limit} samples a run, emulated inference "
        f"{args.inference_s:g} s (one run: {args.limit * args.inference_s:g} s), batch delay "
        f"{args.batch_delay:g} s; "
        f"{args.agents_of} boards per emulated agent; worker pool --processes {args.workers}"
    )
    head = ("N", "runs", "retried", "runs with lost samples (seqs)", "samples stored",
            "controller peak PSS MiB (ingest / supervisor / workers)", "PSS/board MiB",
            "÷ idle worker PSS", "total ÷ 1 GiB", "submit s", "submit s per 100 runs", "makespan s",
            "makespan ÷ one run", "emulator CPU µs/sample", "load avg")  # fmt: skip
    print("| " + " | ".join(head) + " |")
    print("|" + "|".join("---" for _ in head) + "|")
    for f in all_figures:
        peak = f.peak_pss_kib
        per_board = f.peak_total_kib / f.n / mib
        idle = f.idle_pool_pss_per_worker_kib / mib
        cells = (
            str(f.n),
            ", ".join(f"{v} {k}" for k, v in sorted(f.states.items())),
            str(f.retried),
            f"**{f.lost_runs}** ({f.lost_seqs} missing, {f.extra_seqs} extra)",
            str(f.samples),
            f"**{f.peak_total_kib / mib:.0f}** ({peak.get('ingest', 0) / mib:.0f} / "
            f"{peak.get('supervisor', 0) / mib:.0f} / {peak.get('workers', 0) / mib:.0f})",
            f"{per_board:.1f}",
            f"{per_board / idle:.2f}",
            f"{f.peak_total_kib / mib / 1024:.2f}",
            f"{f.submit_s:.2f}",
            f"{f.submit_s / f.n * 100:.2f}",
            f"{f.sweep_s:.1f}",
            f"{f.sweep_s / f.run_s:.2f}",
            f"{f.emulator_cpu_s / max(f.samples, 1) * 1e6:.0f}",
            f.load,
        )
        print("| " + " | ".join(cells) + " |")
    for f in all_figures:
        print(
            f"N={f.n}: idle pool PSS per worker {f.idle_pool_pss_per_worker_kib / mib:.1f} MiB, "
            f"idle ingest {f.idle_ingest_pss_kib / mib:.1f} MiB; "
            + ("; ".join(f.reasons[:5]) if f.reasons else "every run completed")
        )


async def amain(args: argparse.Namespace) -> int:
    load0 = loadavg()
    started = time.monotonic()
    results: list[SweepFigures] = []
    for n in sorted(args.counts):
        agents = max(1, n // args.agents_of)
        with tempfile.TemporaryDirectory(prefix="bench-fleet-") as name:
            figures = await sweep(
                Path(name),
                args.redis,
                agents=agents,
                boards_per_agent=n // agents,
                processes=args.workers,
                mode=args.mode,
                limit=args.limit,
                inference_s=args.inference_s,
                batch_delay_s=args.batch_delay,
                within_s=args.within,
            )
        results.append(figures)
        print(
            f"  N={n}: {dict(figures.states)}, {figures.lost_runs} runs lost samples, "
            f"peak PSS {figures.peak_total_kib / 1024:.0f} MiB; "
            f"{time.monotonic() - started:.0f} s",
            file=sys.stderr,
            flush=True,
        )
    left = descendants(os.getpid())
    report(results, args)
    median_submit = statistics.median(f.submit_s / f.n * 100 for f in results)
    print(
        f"submit: median {median_submit:.2f} s per 100 runs; load average (1/5/15 min): "
        f"before {load0}, after {loadavg()}; {time.monotonic() - started:.0f} s; "
        f"processes left behind: {left or 'none'}"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    from bench.harness import run_bench

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--counts", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--agents-of", type=int, default=8, help="boards per emulated agent")
    parser.add_argument("--mode", default="accuracy", choices=["accuracy", "latency"])
    parser.add_argument("--limit", type=int, default=200, help="samples a run")
    parser.add_argument("--inference-s", type=float, default=0.05)
    parser.add_argument(
        "--batch-delay",
        type=float,
        default=0.1,
        help="the agents' batch_delay_s (agent.yaml): how long a sample batch may wait",
    )
    parser.add_argument("--workers", type=int, default=4, help="RQ workers of the controller")
    parser.add_argument("--within", type=float, default=900, help="seconds a sweep may take")
    parser.add_argument("--redis", default=DEFAULT_REDIS, help="Redis DB to use (FLUSHED)")
    args = parser.parse_args(argv)
    if min(args.counts) < 1 or any(n % min(n, args.agents_of) for n in args.counts):
        parser.error("--counts must be positive multiples of --agents-of")
    return run_bench(amain(args))


if __name__ == "__main__":
    sys.exit(main())
