"""Benchmark (not a test): many real simulated boards given their runs at once, and how many
runs needed more than one attempt.

    python bench/burst_submit.py [--agents 7] [--boards-per-agent 29] [--mode accuracy]
                                 [--limit 20] [--median-s 0.002] [--workers 4]
                                 [--redis redis://127.0.0.1:6379/5]

The farm (``bench/controller_memory.Farm``; every part real): a private Mosquitto, Redis
database ``--redis`` (FLUSHED), ``--agents`` ``farm sim`` processes of ``--boards-per-agent``
kws01 boards each (inference ``--median-s``, spread 0), each with its ``farm agent``, one
``farm controller ingest`` and one ``farm controller worker --processes W``.

Once every board is idle and healthy, one ``farm submit --benchmark kws --mode MODE
--boards all --limit L``: every board's run is dispatched at once, so each agent starts all
its boards' runs together (health check, port opening, run). The figure is the count of
runs that needed more than one attempt or failed, with the reasons recorded for their failed
attempts; the reference in the same run is the total number of runs. Also printed: the
makespan from the submit to the last run's end, and the load average.
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

from controller_memory import Farm, boards_yaml, measured_in_temp_dir, wait_until
from harness import loadavg, run_bench


async def burst(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    farm = await Farm.start(tmp, args.redis)
    boards: list[str] = []
    try:
        for a in range(args.agents):
            ids = [f"a{a}b{b:02d}" for b in range(args.boards_per_agent)]
            boards += ids
            config = boards_yaml((i, "kws01", args.median_s) for i in ids)
            await farm.add_boards(f"agent{a}", config, dataset_limit=max(args.limit, 10))
        await farm.start_ingest()
        await farm.add_workers(args.workers)
        await farm.boards_ready(boards, 600)
        load0 = loadavg()
        t0 = time.time()
        out = await farm.farm(
            "submit", "--benchmark", "kws", "--mode", args.mode, "--boards", "all",
            "--limit", str(args.limit), "--json",
        )  # fmt: skip
        submitted_s = time.time() - t0
        run_ids = json.loads(out)["runs"]

        def ended() -> bool:
            states = farm.run_states(run_ids).values()
            return all(s in ("completed", "failed", "cancelled") for s in states)

        await wait_until(ended, args.timeout, "every run to end")
        load1 = loadavg()
        runs = []
        with farm.client.pipeline() as pipe:
            for run_id in run_ids:
                pipe.hgetall(f"farm:run:{run_id}")
            runs = pipe.execute()
    except BaseException:
        print(textwrap.indent(farm.logs(), "    "), file=sys.stderr)
        raise
    finally:
        await farm.stop()
    return {"runs": runs, "t0": t0, "submitted_s": submitted_s, "load": (load0, load1)}


def report(result: dict[str, Any], args: argparse.Namespace) -> None:
    runs = result["runs"]
    retried = [r for r in runs if int(r.get("attempts") or 0) > 1 or r["state"] != "completed"]
    reasons: collections.Counter[str] = collections.Counter()
    for run in retried:
        for reason in json.loads(run.get("reasons") or "[]"):
            # The kind of failure, without the numbers that make each one unique.
            reasons[" ".join(w for w in reason.split()[:8] if not any(c.isdigit() for c in w))] += 1
    finished = max(float(r.get("finished_at") or 0) for r in runs)
    print(
        f"{len(runs)} runs ({args.agents} agents x {args.boards_per_agent} boards, kws01 "
        f"{args.mode}, --limit {args.limit}, inference {args.median_s} s), submitted at once "
        f"in {result['submitted_s']:.2f} s"
    )
    states = collections.Counter(r["state"] for r in runs)
    print(f"  states: {dict(states)}")
    print(f"  runs that needed more than one attempt or failed: {len(retried)} of {len(runs)}")
    for reason, count in reasons.most_common():
        print(f"    {count:4d} x {reason}")
    print(f"  makespan {finished - result['t0']:.1f} s")
    load0, load1 = result["load"]
    print(f"load average (1/5/15 min): at submit {load0}, at the end {load1}")


async def amain(args: argparse.Namespace) -> int:
    return await measured_in_temp_dir("bench-burst-", burst, report, args)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--agents", type=int, default=7)
    parser.add_argument("--boards-per-agent", type=int, default=29)
    parser.add_argument("--mode", default="accuracy", choices=["accuracy", "latency"])
    parser.add_argument("--limit", type=int, default=20, help="samples per run")
    parser.add_argument("--median-s", type=float, default=0.002, help="simulated inference s")
    parser.add_argument("--workers", type=int, default=4, help="RQ worker processes")
    parser.add_argument("--timeout", type=float, default=900, help="give up after S s")
    parser.add_argument(
        "--redis", default="redis://127.0.0.1:6379/5", help="Redis DB to use (FLUSHED)"
    )
    args = parser.parse_args(argv)
    return run_bench(amain(args))


if __name__ == "__main__":
    sys.exit(main())
