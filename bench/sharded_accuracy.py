"""Benchmark (not a test): one accuracy run on one board against the same run sharded across
K boards (``farm submit --shard``).

    python bench/sharded_accuracy.py [--boards 8] [--rows 400] [--latency 0.002]
                                     [--redis redis://127.0.0.1:6379/5]

The farm (``bench/controller_memory.Farm``; every part real): a private Mosquitto, Redis
database ``--redis`` (FLUSHED), one ``farm sim`` with ``--boards`` kws01 boards (inference
``--latency`` s, spread 0; datasets of ``--rows`` rows) and the ``farm agent`` serving them,
one ``farm controller ingest`` and one ``farm controller worker --processes 2``.

Two sweeps, one after the other: ``farm submit --benchmark kws --mode accuracy --limit ROWS``
on the first board alone (the reference, measured in the same run), then the same on every
board with ``--shard``. Each one's time is from the start of its ``farm submit`` to the
run's ``finished_at`` (Redis): everything a user waits for, the health check, the port
opening and the scoring included. The figure is sharded ÷ single, beside the ideal 1 / K.
Both runs must complete with the same accuracy, or it is printed as a PROBLEM.
"""

from __future__ import annotations

import argparse
import json
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

from controller_memory import Farm, boards_yaml, measured_in_temp_dir, wait_until
from harness import loadavg, run_bench


async def timed_run(farm: Farm, *args: str) -> dict[str, Any]:
    """Submit one accuracy sweep and wait for its one run; its hash and seconds taken."""
    t0 = time.time()
    out = await farm.farm("submit", "--benchmark", "kws", "--mode", "accuracy", "--json", *args)
    run_id = json.loads(out)["runs"][0]

    def ended() -> bool:
        return farm.client.hget(f"farm:run:{run_id}", "state") in ("completed", "failed")

    await wait_until(ended, 900, f"run {run_id}")
    run = farm.client.hgetall(f"farm:run:{run_id}")
    return {"run": run, "s": float(run["finished_at"]) - t0}


async def measure(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    boards = [f"k{i:02d}" for i in range(args.boards)]
    farm = await Farm.start(tmp, args.redis)
    try:
        await farm.add_boards(
            "sh", boards_yaml((b, "kws01", args.latency) for b in boards), dataset_limit=args.rows
        )
        await farm.start_ingest()
        await farm.add_workers(2)
        await farm.boards_ready(boards, 120)
        limit = ("--limit", str(args.rows))
        load0 = loadavg()
        single = await timed_run(farm, "--boards", boards[0], *limit)
        sharded = await timed_run(farm, "--boards", ",".join(boards), "--shard", *limit)
        shards = [
            farm.client.hgetall(f"farm:run:{s}") for s in json.loads(sharded["run"]["shards"])
        ]
        load1 = loadavg()
    except BaseException:
        print(textwrap.indent(farm.logs(), "    "), file=sys.stderr)
        raise
    finally:
        await farm.stop()
    return {"single": single, "sharded": sharded, "shards": shards, "load": (load0, load1)}


def report(result: dict[str, Any], args: argparse.Namespace) -> None:
    single, sharded = result["single"], result["sharded"]
    print(f"kws01 accuracy, {args.rows} inputs, inference {args.latency} s (spread 0)")
    print(f"  one board:            {single['s']:7.1f} s")
    print(f"  sharded, {args.boards} boards:   {sharded['s']:7.1f} s")
    for shard in result["shards"]:
        took = float(shard["finished_at"]) - float(shard["dispatched_at"])
        done = json.loads(shard.get("final") or "{}")
        print(f"    {shard['id']} on {shard['board']}: {done.get('count')} inputs, {took:.1f} s")
    print(
        f"sharded / single = {sharded['s'] / single['s']:.3f} (ideal 1/{args.boards} = "
        f"{1 / args.boards:.3f})"
    )
    for name, part in (("single", single), ("sharded", sharded)):
        if part["run"]["state"] != "completed":
            print(f"  PROBLEM: the {name} run {part['run']['state']}: {part['run'].get('reason')}")
    one = json.loads(single["run"].get("summary") or "{}").get("top1")
    many = json.loads(sharded["run"].get("summary") or "{}").get("top1")
    print(f"top-1: one board {one}, sharded {many}")
    if one != many:
        print("  PROBLEM: the sharded run's accuracy differs")
    load0, load1 = result["load"]
    print(f"load average (1/5/15 min): before {load0}, after {load1}")


async def amain(args: argparse.Namespace) -> int:
    return await measured_in_temp_dir("bench-sharded-", measure, report, args)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--boards", type=int, default=8, help="kws01 boards (K)")
    parser.add_argument("--rows", type=int, default=400, help="inputs of the accuracy run")
    parser.add_argument("--latency", type=float, default=0.002, help="simulated inference s")
    parser.add_argument(
        "--redis", default="redis://127.0.0.1:6379/5", help="Redis DB to use (FLUSHED)"
    )
    args = parser.parse_args(argv)
    return run_bench(amain(args))


if __name__ == "__main__":
    sys.exit(main())
