"""Following a sweep from the command line: a live table on a terminal, plain lines (one per
run state change, a sweep line with done/total and ETA) elsewhere; the whole-sweep ETA from
the wire-time estimate. Used by ``farm submit --wait`` and ``farm demo``."""

from __future__ import annotations

import json
import time
from typing import Any

from farm.cli_common import err


def follow(
    client: Any, sweep_id: str, *, quiet: bool, samples: dict[str, int] | None = None
) -> int:
    """Progress until every run of the sweep ended (1 if any failed): on a terminal a live
    table per run; elsewhere a line per run state change and a sweep line (done/total, ETA)
    every :data:`PLAIN_EVERY_S`. The ETA comes from the wire-time estimate of what is left
    (``samples``: an accuracy run's sample count per benchmark where the agents' datasets are
    known subsets)."""
    from rich.live import Live

    from controller import keys
    from controller.render import Column, Listing, table
    from controller.shards import shard_runs
    from controller.store import sweep_runs

    started = time.monotonic()

    def snapshot() -> tuple[list[dict[str, str]], float]:
        runs = [run for _, run in sweep_runs(client, sweep_id)]
        # A sharded run's time is its shards', each on its own board.
        shards = shard_runs(client, runs)
        for run in runs:
            if parts := shards.get(run["id"]):
                run["done"] = str(sum(int(p.get("done") or 0) for p in parts))
                # Each shard's agent reports the whole run's total.
                run["total"] = str(max(int(p.get("total") or 0) for p in parts) or "")
        ongoing = [part for run in runs for part in shards.get(run["id"], [run])]
        return runs, sweep_eta(ongoing, samples or {})

    def view(runs: list[dict[str, str]], eta: float) -> Any:
        done = sum(r.get("state") in keys.TERMINAL for r in runs)
        rows = [
            {
                "board": r["board"],
                "benchmark": r["benchmark"],
                "mode": r["mode"],
                "state": r["state"],
                "samples": f"{r.get('done') or 0}/{r.get('total') or '?'}",
                "eta": r.get("eta_s") or None,
            }
            for r in runs
        ]
        listing = Listing(
            f"sweep {sweep_id}: {done}/{len(runs)} runs done, about {eta:.0f} s left",
            [
                Column("board", "board"),
                Column("benchmark", "bench"),
                Column("mode", "mode"),
                Column("state", "state"),
                Column("samples", "samples"),
                Column("eta", "ETA s", rank=1),
            ],
            rows,
        )
        return table(listing, err.width)

    runs, eta = snapshot()
    if err.is_terminal:
        with Live(view(runs, eta), console=err, refresh_per_second=2, transient=quiet) as live:
            while not all(r.get("state") in keys.TERMINAL for r in runs):
                time.sleep(0.5)
                runs, eta = snapshot()
                live.update(view(runs, eta))
        err.print()
    else:
        states: dict[str, str] = {}
        last_line = 0.0
        while True:
            for r in runs:
                if states.get(r["id"]) != r.get("state"):
                    states[r["id"]] = r.get("state", "?")
                    err.print(
                        f"{time.monotonic() - started:6.1f} s  {r['id']} {r['board']} "
                        f"{r['benchmark']} {r['mode']}: {r.get('state')}",
                        highlight=False,
                        soft_wrap=True,
                    )
            finished = all(r.get("state") in keys.TERMINAL for r in runs)
            if finished or time.monotonic() - last_line >= PLAIN_EVERY_S:
                last_line = time.monotonic()
                done = sum(r.get("state") in keys.TERMINAL for r in runs)
                err.print(
                    f"{last_line - started:6.1f} s  sweep {sweep_id}: {done}/{len(runs)} runs "
                    f"done, about {eta:.0f} s left",
                    highlight=False,
                    soft_wrap=True,
                )
            if finished:
                break
            time.sleep(0.5)
            runs, eta = snapshot()
    failed = [r for r in runs if r.get("state") != "completed"]
    for run in failed:
        err.print(
            f"[red]{run['id']}[/] {run['board']} {run['benchmark']} {run['mode']}: "
            f"{run['state']}: {run.get('reason')}",
            highlight=False,
        )
    return 1 if failed else 0


#: How often a sweep line is printed when stderr is not a terminal.
PLAIN_EVERY_S = 10.0


def measured_latency_s(runs: list[dict[str, str]], board: str, benchmark: str) -> float | None:
    """Seconds per inference of ``board`` from its completed performance run in the sweep."""
    for r in runs:
        if (r["board"], r["benchmark"], r["mode"]) == (board, benchmark, "performance"):
            latency_ms = json.loads(r.get("summary") or "{}").get("latency_ms")
            return None if latency_ms is None else latency_ms / 1000
    return None


def sweep_eta(
    runs: list[dict[str, str]], samples: dict[str, int], now: float | None = None
) -> float:
    """Seconds until the sweep ends: per board, the agent's ETA of its running run (else the
    wire-time estimate, less the time it has run while no sample has told its progress)
    plus the estimates of its queued runs; the slowest board's sum."""
    from controller import keys
    from controller.estimate import SETUP_ALLOWANCE_S, estimate_run_s, samples_expected
    from controller.shards import own_range
    from farm.catalog import get_benchmark
    from farm.messages import RunOptions

    per_board: dict[str, float] = {}
    for r in runs:
        if r.get("state") in keys.TERMINAL:
            continue
        if r.get("eta_s"):
            left = float(r["eta_s"])
        else:
            bench, mode = get_benchmark(r["benchmark"]), r["mode"]
            options = RunOptions.model_validate_json(r.get("options") or "{}")
            # The allowance is for a flash the demo and most sweeps never need.
            left = estimate_run_s(bench, mode, options) - SETUP_ALLOWANCE_S  # type: ignore[arg-type]
            measured = measured_latency_s(runs, r["board"], bench.id)
            if mode == "latency" and measured is not None:
                # The board's own inference time from its performance run, not the reference
                # board's: a fast board's 1,024 queries take seconds, not ten minutes.
                count = samples_expected(bench, mode, options)  # type: ignore[arg-type]
                left = max(options.min_duration_s, count * measured)
            total = r.get("total") or samples.get(bench.id)
            if (own := own_range(r)) is not None:
                # A shard: the inputs of its own range left (the agent's dataset may end
                # before it does).
                expected = samples_expected(bench, mode, options)  # type: ignore[arg-type]
                end = min(own[1], int(total)) if total else own[1]
                left *= max(end - own[0] - int(r.get("done") or 0), 0) / max(expected, 1)
            elif total and mode == "accuracy":
                # The agent's dataset may be a subset: scale to the samples it has.
                expected = samples_expected(bench, mode, options)  # type: ignore[arg-type]
                left *= (int(total) - int(r.get("done") or 0)) / max(expected, 1)
            elif r.get("state") == "running" and r.get("dispatched_at"):
                # One sample at the very end (an sww01 stream): time is all there is to go
                # on, from this attempt's dispatch (the controller's clock, not the agent's).
                elapsed = (time.time() if now is None else now) - float(r["dispatched_at"])
                left = max(left - elapsed, 0.0)
        per_board[r["board"]] = per_board.get(r["board"], 0.0) + left
    return max(per_board.values(), default=0.0)
