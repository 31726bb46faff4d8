"""Benchmark (not a test): a sweep's makespan on 16 simulated boards against its lower bound.

    python bench/sweep_makespan.py [--latencies 0.004 0.012 0.024 0.04] [--rows 10]
                                   [--modes performance,accuracy,latency] [--options JSON]
                                   [--timeout 180] [--workdir DIR]
                                   [--redis redis://127.0.0.1:6379/11]

The farm (``bench/controller_memory.Farm``; every part real): a private Mosquitto, Redis
database ``--redis`` (FLUSHED), one ``farm sim`` with 16 boards — four of each model (kws01,
vww01, ic01, ad01), board i's simulated inference ``--latencies[i // 4]`` (spread 0, so the
simulator's compute is exactly that), datasets of ``--rows`` rows — and the ``farm agent``
serving them, one ``farm controller ingest`` and one ``farm controller worker --processes 16``
(an RQ worker per board).

The sweep: ``farm submit --benchmark kws,ic --mode performance,accuracy,latency --boards all
--options OPTIONS``: six runs per board, 96 in all — two models, three modes; the kws01 and
ic01 boards flash once (to the other model), the vww01 and ad01 boards twice (``--modes``
changes the modes). OPTIONS shorten the runs (default: 5 performance windows of
``min_window_s`` 2 s after a 0.25 s calibration; latency mode ``min_queries`` 50,
``min_duration_s`` 5, ``latency_inputs`` 5).

**Makespan** = from the start of the ``farm submit`` command to the last run's
``finished_at`` (Redis). Every run should complete, once (one attempt), and no board may run
two at once: anything else is printed as a PROBLEM. The bench waits ``--timeout`` s for the
sweep, then reports the runs that ended (a stalled board chain is flagged INCOMPLETE).
``--workdir`` keeps the farm's logs there and leaves the Redis database unflushed for a
post-mortem.

**Lower bound** = the busiest board's total wire + compute time: per board, over its runs,
the serial bytes the run's work needs both ways × 10 / baud (``farm.wire.wire_time``, 8N1) plus
the simulated inferences × the inference time of the model the board then runs (its
configured latency for its own model; a flashed other model runs at the simulator's default
for that model, ``farm.sim.config.DEFAULT_MEDIAN_S``). The bytes are rebuilt from each
run's stored samples with the reference firmware's own state machine
(``farm.protocol.dut_firmware.DutFirmware``): every download (``db load N`` and the 31-byte
``db`` chunks ``DutClient`` sends, with the firmware's replies), every ``infer N W`` command
and its exact reply (the lap lines from the sample's ``start_us``/``end_us``, the result line
from its results). Per mode: performance = one download + the calibration windows (``infer
n 0``, from the ``done`` event's runner info) + per window a download and ``infer N W``;
accuracy = per sample a download and ``infer 1 0``; latency = a download whenever the input
changes + ``infer 1 0`` per query. Compute = Σ (N + W) × latency. Not in the bound: run
set-up (health check, port opening), the flashes (the simulator's 0.2 s write + 0.3 s
re-enumeration each; shown apart), and everything the host and controller add.

Also printed: each board's finish ÷ its own bound; for the board that finished last, where its
time went (submit to first dispatch; for each run: dispatch → the agent's ``accepted`` →
``started`` → ``done`` (agent clock = this host's) → the job's ``finished_at``; finished →
the next dispatch); makespan ÷ the busiest board's agent time (Σ accepted → done: what the
controller adds around the runs); and the CPU our processes used over the sweep.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import statistics
import sys
import tempfile
import textwrap
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from controller_memory import DEFAULT_REDIS, Farm, boards_yaml, leftovers, wait_until
from harness import loadavg, run_bench
from serial_link import commands_for

from farm.catalog import get_benchmark
from farm.models import MODELS
from farm.protocol.dut_firmware import Compute, DutFirmware, Lap, Write, format_lap
from farm.sim.config import DEFAULT_MEDIAN_S
from farm.wire import wire_time

MODEL_CYCLE = ("kws01", "vww01", "ic01", "ad01")
BENCHMARKS = "kws,ic"
MODES = "performance,accuracy,latency"
DEFAULT_OPTIONS = {
    "min_window_s": 2.0,
    "calibration_s": 0.25,
    "min_queries": 50,
    "min_duration_s": 5.0,
}
#: The simulator's flash: image write + USB re-enumeration (farm.sim.control defaults).
FLASH_S = 0.2 + 0.3
HZ = os.sysconf("SC_CLK_TCK")


# --- the lower bound --------------------------------------------------------------------------


@dataclass
class Wire:
    sent: int = 0
    received: int = 0
    inferences: int = 0

    def add(self, other: Wire) -> None:
        self.sent += other.sent
        self.received += other.received
        self.inferences += other.inferences


def firmware(model: str, results: tuple[float, ...]) -> DutFirmware:
    fw = DutFirmware(MODELS[model], "performance", lambda _tensor: results)
    fw.parser_enabled = True
    return fw


def download(model: str) -> Wire:
    """``db load N`` + the 31-byte chunks, and the firmware's replies."""
    fw = firmware(model, (0.0,) * MODELS[model].outputs)
    out = Wire()
    for command in commands_for(bytes(MODELS[model].input_bytes))[:-1]:
        out.sent += len(command)
        out.received += sum(len(a.data) for a in fw.receive(command) if isinstance(a, Write))
    return out


def infer(model: str, count: int, warmup: int, record: dict[str, Any]) -> Wire:
    """``infer N W`` and its exact reply, laps and results taken from ``record``."""
    fw = firmware(model, tuple(record["results"]))
    command = f"infer {count} {warmup}%".encode()
    out = Wire(sent=len(command))
    laps = iter((record.get("start_us") or 0, record.get("end_us") or 0))
    for action in fw.receive(command):
        if isinstance(action, Write):
            out.received += len(action.data)
        elif isinstance(action, Lap):
            out.received += len(format_lap(next(laps)))
        elif isinstance(action, Compute):
            out.inferences += action.count
    return out


def run_work(model: str, mode: str, records: list[dict[str, Any]], info: dict[str, Any]) -> Wire:
    """The serial work a run needed (see the module docstring)."""
    records = sorted(records, key=lambda r: r["seq"])
    load = download(model)
    total = Wire()
    if mode == "performance":
        total.add(load)
        for n, _elapsed in info.get("calibration", []):
            total.add(infer(model, n, 0, records[0]))  # laps and results as the first window's
        for r in records:
            total.add(load)
            total.add(infer(model, r["count"], r["warmup"], r))
    elif mode == "accuracy":
        for r in records:
            total.add(load)
            total.add(infer(model, 1, 0, r))
    elif mode == "latency":
        held = None
        for r in records:
            if r["index"] != held:
                total.add(load)
                held = r["index"]
            total.add(infer(model, 1, 0, r))
    else:
        raise ValueError(f"no lower bound for {mode} mode")
    return total


# --- the sweep --------------------------------------------------------------------------------


@dataclass
class RunTimes:
    id: str
    board: str
    benchmark: str
    mode: str
    state: str
    attempts: int
    dispatched: float
    finished: float
    accepted: float | None
    started: float | None
    done: float | None
    flashes: int
    bound_s: float
    wire_s: float
    wire: Wire
    reasons: list[str]


@dataclass
class Stuck:
    """A run that had not ended when the bench stopped waiting, or ended undispatched."""

    id: str
    board: str
    benchmark: str
    mode: str
    state: str
    rq_status: str
    reasons: list[str]


@dataclass
class Board:
    id: str
    model: str
    latency_s: float
    runs: list[RunTimes] = field(default_factory=list)

    def latency(self, model: str) -> float:
        """The simulated inference time when running ``model``: the configured one for the
        board's own model; a flashed other model runs at that model's simulator default
        (``farm.sim.server.SimBoard.settings_for``; the spread stays 0)."""
        return self.latency_s if model == self.model else DEFAULT_MEDIAN_S[model]

    @property
    def bound_s(self) -> float:
        return sum(r.bound_s for r in self.runs)

    @property
    def flashes(self) -> int:
        return sum(r.flashes for r in self.runs)

    @property
    def end(self) -> float:
        return max(r.finished for r in self.runs)


def collect(
    farm: Farm, run_ids: list[str], boards: dict[str, Board]
) -> tuple[list[RunTimes], list[Stuck]]:
    out, stuck = [], []
    for run_id in run_ids:
        run = farm.client.hgetall(f"farm:run:{run_id}")
        board = boards[run["board"]]
        reasons = json.loads(run.get("reasons") or "[]")
        if run["state"] not in ("completed", "failed", "cancelled") or "dispatched_at" not in run:
            status = farm.client.hget(f"rq:job:{run.get('job')}", "status") or "?"
            what = (run_id, run["board"], run["benchmark"], run["mode"], run["state"])
            stuck.append(Stuck(*what, status, reasons))
            continue
        records = [json.loads(v) for v in farm.client.hvals(f"farm:run:{run_id}:samples")]
        final = json.loads(run.get("final") or "{}")
        events = [json.loads(e) for e in farm.client.lrange(f"farm:run:{run_id}:events", 0, -1)]
        last = {e["event"]: e["time"] for e in events}  # the last attempt's
        flashes = sum(
            1 for e in events if e["event"] == "log" and "flashing" in e.get("message", "")
        )
        bench = get_benchmark(run["benchmark"])
        work = run_work(bench.model.id, run["mode"], records, final.get("info", {}))
        baud = bench.baud("accuracy")  # latency mode runs the performance firmware too
        wire_s = wire_time(work.sent + work.received, baud)
        bound = wire_s + work.inferences * round(board.latency(bench.model.id) * 1e6) / 1e6
        times = RunTimes(
            run_id, run["board"], run["benchmark"], run["mode"], run["state"],
            int(run.get("attempts") or 0), float(run["dispatched_at"]),
            float(run["finished_at"]), last.get("accepted"), last.get("started"),
            final.get("time") if final.get("event") == "done" else None, flashes, bound,
            wire_s, work, reasons,
        )  # fmt: skip
        board.runs.append(times)
        out.append(times)
    for board in boards.values():
        board.runs.sort(key=lambda r: r.dispatched)
    return out, stuck


def proc_cpu_s(pid: int, *, children: bool = False) -> float:
    """User + system CPU s of a process (with ``children``: plus its reaped children's)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    ticks = int(fields[11]) + int(fields[12])
    if children:
        ticks += int(fields[13]) + int(fields[14])
    return ticks / HZ


def cpu_snapshot(farm: Farm) -> dict[str, float]:
    def pids(procs: list[Any]) -> list[int]:
        return [p.process.pid for p in procs if p.process is not None]

    assert farm.broker.process is not None
    groups = {
        "sim": pids(farm.sims),
        "agent": pids(farm.agents),
        "ingest": pids([farm.ingest] if farm.ingest else []),
        # The supervisor and its RQ workers (which run the jobs themselves).
        "workers": pids(farm.workers) + farm.rq_workers(),
        "mosquitto": [farm.broker.process.pid],
    }
    return {
        name: sum(proc_cpu_s(pid, children=name == "workers") for pid in ids)
        for name, ids in groups.items()
    }


async def sweep(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    latencies = args.latencies
    boards = {}
    for i in range(16):
        model = MODEL_CYCLE[i % 4]
        board_id = f"s{i:02d}-{model[:-2]}"
        boards[board_id] = Board(board_id, model, latencies[i // 4 % len(latencies)])
    options = {**DEFAULT_OPTIONS, **json.loads(args.options or "{}")}
    farm = await Farm.start(tmp, args.redis)
    try:
        config = boards_yaml((b.id, b.model, b.latency_s) for b in boards.values())
        await farm.add_boards("mk", config, dataset_limit=args.rows)
        await farm.start_ingest()
        await farm.add_workers(16)
        await farm.boards_ready(list(boards), 120)
        await wait_until(lambda: farm.workers_registered() >= 16, 120, "16 RQ workers")
        await asyncio.sleep(2)
        load0 = loadavg()
        cpu0 = cpu_snapshot(farm)
        t0 = time.time()
        out = await farm.farm(
            "submit", "--benchmark", BENCHMARKS, "--mode", args.modes, "--boards", "all",
            "--options", json.dumps(options), "--label", "makespan", "--json",
        )  # fmt: skip
        submitted_s = time.time() - t0
        submitted = json.loads(out)
        sweep_id, run_ids = submitted["sweep"], submitted["runs"]
        print(f"  sweep {sweep_id}: {len(run_ids)} runs", file=sys.stderr, flush=True)

        def finished() -> bool:
            return farm.client.hget(f"farm:sweep:{sweep_id}", "state") == "finished"

        try:
            await wait_until(finished, args.timeout, "the sweep to finish")
        except RuntimeError as exc:
            print(f"  {exc}: reporting what ended", file=sys.stderr, flush=True)
        cpu1 = cpu_snapshot(farm)
        wall = time.time() - t0
        load1 = loadavg()
        runs, stuck = collect(farm, run_ids, boards)
    except BaseException:
        print(textwrap.indent(farm.logs(), "    "), file=sys.stderr)
        raise
    finally:
        # With --workdir, Redis is kept for a post-mortem too (flushed at the next start).
        await farm.stop(flush=args.workdir is None)
    return {
        "sweep": sweep_id,
        "t0": t0,
        "submitted_s": submitted_s,
        "boards": boards,
        "runs": runs,
        "stuck": stuck,
        "modes": args.modes,
        "timeout": args.timeout,
        "skipped": submitted["skipped"],
        "options": options,
        "cpu": {k: cpu1[k] - cpu0[k] for k in cpu0},
        "wall": wall,
        "load": (load0, load1),
    }


# --- report -----------------------------------------------------------------------------------


def problems(result: dict[str, Any]) -> list[str]:
    found = []
    for r in result["runs"]:
        if r.state != "completed" or r.attempts != 1:
            found.append(
                f"{r.id} ({r.board} {r.benchmark} {r.mode}): {r.state}, {r.attempts} tries"
            )
    for board in result["boards"].values():
        spans = [(r.dispatched, r.finished) for r in board.runs]
        if any(a[1] > b[0] for a, b in itertools.pairwise(spans)):
            found.append(f"{board.id}: two runs at once")
    for r in result["runs"]:
        reaped = [x for x in r.reasons if "lease expired" in x]
        if reaped and r.state == "completed":
            found.append(f"{r.id} ({r.board} {r.benchmark} {r.mode}): reaped ({reaped[0]!r})")
    for r in result["stuck"]:
        found.append(
            f"{r.id} ({r.board} {r.benchmark} {r.mode}): {r.state}, never dispatched, "
            f"RQ job {r.rq_status}; reasons {r.reasons}"
        )
    if result["skipped"]:
        found.append(f"skipped: {result['skipped']}")
    return found


def timeline(board: Board, t0: float) -> dict[str, float]:
    """Where the board's time went, from the submit to its last run's end (s)."""
    parts: dict[str, float] = defaultdict(float)
    previous = t0
    for r in board.runs:
        key = "submit → first dispatch" if previous == t0 else "finished → next dispatch"
        parts[key] += r.dispatched - previous
        if r.accepted and r.started and r.done:
            parts["dispatch → agent accepted"] += r.accepted - r.dispatched
            parts["accepted → started (health check, flash)"] += r.started - r.accepted
            parts["started → done: wire + compute bound"] += r.bound_s
            parts["started → done: above the bound"] += r.done - r.started - r.bound_s
            parts["done → finished (job: notice, verify, score, write)"] += r.finished - r.done
        previous = r.finished
    return dict(parts)


def report(result: dict[str, Any]) -> None:
    boards: dict[str, Board] = result["boards"]
    t0 = result["t0"]
    stuck_boards = {r.board for r in result["stuck"]}
    makespan = max(b.end for b in boards.values()) - t0
    busiest = max(boards.values(), key=lambda b: b.bound_s)
    last = max(boards.values(), key=lambda b: b.end)
    if stuck_boards:
        print(
            f"\nINCOMPLETE: {len(result['stuck'])} runs on {', '.join(sorted(stuck_boards))} "
            f"never ran (failed undispatched, or not run within {result['timeout']:.0f} s); the "
            "figures below cover the runs that did"
        )
    print(
        f"\nsweep: --benchmark {BENCHMARKS} --mode {result['modes']} --boards all --options "
        f"{json.dumps(result['options'])}; {len(result['runs'])} runs on {len(boards)} boards"
    )
    head = ("board", "own model inference s", "runs", "flashes", "wire s", "compute s", "bound s",
            "finished at s", "finished ÷ bound")  # fmt: skip
    print("| " + " | ".join(head) + " |")
    print("|" + "|".join("---" for _ in head) + "|")
    for b in sorted(boards.values(), key=lambda b: b.id):
        wire_s = sum(r.wire_s for r in b.runs)
        mark = " (busiest)" if b is busiest else ""
        cells = (
            b.id
            + mark
            + (" (last)" if b is last else "")
            + (" (INCOMPLETE)" if b.id in stuck_boards else ""),
            f"{b.latency_s:g}",
            str(len(b.runs)),
            str(b.flashes),
            f"{wire_s:.1f}",
            f"{b.bound_s - wire_s:.1f}",
            f"{b.bound_s:.1f}",
            f"{b.end - t0:.1f}",
            f"{(b.end - t0) / b.bound_s:.3f}",
        )
        print("| " + " | ".join(cells) + " |")
    bound = busiest.bound_s
    print(
        f"\nmakespan {makespan:.1f} s (submit command {result['submitted_s']:.1f} s of it); "
        f"lower bound {bound:.1f} s (board {busiest.id}); **makespan ÷ bound = "
        f"{makespan / bound:.3f}**; with the busiest board's flashes "
        f"({busiest.flashes} x {FLASH_S:g} s) in the bound: "
        f"{makespan / (bound + busiest.flashes * FLASH_S):.3f}"
    )
    # The agent's own time per board (accepted -> done of each run's last attempt): what the
    # makespan would be if the controller cost nothing between and around the runs.
    agent_busy = {
        b.id: sum(r.done - r.accepted for r in b.runs if r.done and r.accepted)
        for b in boards.values()
    }
    top = max(agent_busy, key=lambda k: agent_busy[k])
    print(
        f"context: the busiest board's agent time (Σ accepted → done) {agent_busy[top]:.1f} s "
        f"({top}); makespan ÷ that = {makespan / agent_busy[top]:.3f} (what the controller adds "
        "around the runs)"
    )
    print(f"\nwhere board {last.id}'s {last.end - t0:.1f} s went (the last to finish):")
    for name, seconds in timeline(last, t0).items():
        print(f"  {name:55s} {seconds:6.1f} s")
    per_run = defaultdict(list)
    for r in result["runs"]:
        if r.done and r.started:
            per_run[r.mode].append((r.done - r.started) / r.bound_s)
    print(
        "runner time (started → done) ÷ the run's bound, median by mode: "
        + ", ".join(f"{m} {statistics.median(v):.3f}" for m, v in sorted(per_run.items()))
    )
    gaps = [
        b.dispatched - a.finished
        for board in boards.values()
        for a, b in itertools.pairwise(board.runs)
    ]
    tails = [r.finished - r.done for r in result["runs"] if r.done]
    heads = [r.accepted - r.dispatched for r in result["runs"] if r.accepted]
    print(
        f"all boards, median (max) s: finished → next dispatch {statistics.median(gaps):.2f} "
        f"({max(gaps):.2f}); dispatch → accepted {statistics.median(heads):.2f} "
        f"({max(heads):.2f}); done → finished {statistics.median(tails):.2f} ({max(tails):.2f})"
    )
    by_mode = defaultdict(list)
    for r in result["runs"]:
        if r.done:
            by_mode[r.mode].append(r.finished - r.done)
    print(
        "done → finished, median by mode: "
        + ", ".join(f"{m} {statistics.median(v):.2f} s" for m, v in sorted(by_mode.items()))
    )
    cpu = result["cpu"]
    print(
        f"CPU over the sweep ({result['wall']:.0f} s), cores: "
        + ", ".join(f"{k} {v / result['wall']:.2f}" for k, v in cpu.items())
        + f"; total {sum(cpu.values()) / result['wall']:.2f} of 2"
    )
    found = problems(result)
    ok = "every run completed in one attempt, never two at once on a board"
    print("checks: " + (ok if not found else ""))
    for p in found:
        print(f"  PROBLEM: {p}")
    load0, load1 = result["load"]
    print(f"load average (1/5/15 min): at submit {load0}, at the end {load1}")


async def amain(args: argparse.Namespace) -> int:
    started = time.monotonic()
    if args.workdir:
        args.workdir.mkdir(parents=True, exist_ok=True)
        result = await sweep(args, args.workdir)
    else:
        with tempfile.TemporaryDirectory(prefix="bench-makespan-") as name:
            result = await sweep(args, Path(name))
    report(result)
    print(f"{time.monotonic() - started:.0f} s; processes left behind: {leftovers() or 'none'}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--latencies", type=float, nargs="+", default=[0.004, 0.012, 0.024, 0.04],
        help="simulated inference s: boards 0-3 get the first, 4-7 the second, ...",
    )  # fmt: skip
    parser.add_argument("--rows", type=int, default=10, help="dataset rows (accuracy runs)")
    parser.add_argument("--modes", default=MODES, help="the sweep's --mode")
    parser.add_argument("--options", help="run options JSON, over the defaults")
    parser.add_argument(
        "--timeout", type=float, default=180, help="stop waiting for the sweep after S s"
    )
    parser.add_argument(
        "--workdir", type=Path, help="keep the farm's logs and results here (default: a temp dir)"
    )
    parser.add_argument("--redis", default=DEFAULT_REDIS, help="Redis DB to use (FLUSHED)")
    args = parser.parse_args(argv)
    return run_bench(amain(args))


if __name__ == "__main__":
    sys.exit(main())
