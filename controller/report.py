"""What client commands show: a sweep's results (``farm show``) and cancellation.

``farm show SWEEP --json`` prints::

    {"sweep": {"id", "label", "created", "state", "spec", "total", "skipped": [...]},
     "runs": [{"id", "board", "agent", "benchmark", "mode", "state", "reason", "attempts",
               "summary": {"throughput_ips", "latency_ms", "top1", "auc", "energy_uj",
                           "p50_us", "p90_us", "p99_us", "p90_early_stop_us", "samples",
                           "valid", "artifacts", "target", "target_met"} | null}],
     "boards": {board: {"board_name", "processor", "accelerator", "software"}}}

``top1`` is in percent and ``auc`` a fraction, as the official runner prints them (and as
the checker compares them with their targets). Every summary number is null where it does
not apply (``top1`` outside classifier accuracy
runs, ``energy_uj`` outside energy runs...); ``summary`` is null until the run completed.
"""

from __future__ import annotations

import json
from typing import Any

import redis
from rich.table import Table

from controller import keys
from controller.store import board_status, get_run, set_run

SUMMARY_KEYS = (
    "throughput_ips",
    "latency_ms",
    "top1",
    "auc",
    "energy_uj",
    "p50_us",
    "p90_us",
    "p99_us",
    "p90_early_stop_us",
    "samples",
    "valid",
    "artifacts",
    "target",
    "target_met",
)


def sweep_report(client: redis.Redis, sweep_id: str) -> dict[str, Any] | None:
    """The sweep and its runs (see the module docstring), or None if there is no such sweep."""
    sweep = client.hgetall(keys.sweep(sweep_id))
    if not sweep:
        return None
    runs = []
    boards: dict[str, dict[str, Any]] = {}
    for run_id in client.lrange(keys.sweep_runs(sweep_id), 0, -1):
        run = get_run(client, run_id)
        summary = json.loads(run["summary"]) if run.get("summary") else None
        runs.append(
            {
                "id": run_id,
                "board": run["board"],
                "agent": run.get("agent"),
                "benchmark": run["benchmark"],
                "mode": run["mode"],
                "state": run["state"],
                "reason": run.get("reason") or None,
                "attempts": int(run.get("attempts") or 0),
                "summary": None if summary is None else {k: summary.get(k) for k in SUMMARY_KEYS},
            }
        )
        if run["board"] not in boards:
            system = (board_status(client, run["board"]) or {}).get("system", {})
            boards[run["board"]] = {
                "board_name": system.get("board_name"),
                "processor": system.get("processor_name"),
                "accelerator": system.get("accelerator"),
                "software": system.get("inference_framework") or system.get("software_libraries"),
            }
    skipped = [json.loads(s) for s in client.lrange(keys.sweep_skipped(sweep_id), 0, -1)]
    return {
        "sweep": {
            "id": sweep_id,
            "label": sweep.get("label", ""),
            "created": float(sweep.get("created") or 0),
            "state": sweep.get("state"),
            "spec": json.loads(sweep.get("spec") or "{}"),
            "total": int(sweep.get("total") or 0),
            "skipped": skipped,
        },
        "runs": runs,
        "boards": boards,
    }


def _num(value: Any, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def render(report: dict[str, Any]) -> Table:
    """One row per board and benchmark: latency (ms = 1000 / median throughput), accuracy or
    AUC against its target, energy per inference, and the supplemental percentiles."""
    sweep = report["sweep"]
    table = Table(title=f"sweep {sweep['id']} {sweep['label']} ({sweep['state']})")
    for column in (
        "board",
        "processor",
        "accelerator",
        "software",
        "benchmark",
        "latency ms",
        "accuracy / AUC (target)",
        "energy µJ",
        "p50 µs*",
        "p90 µs*",
        "p99 µs*",
        "ES p90 µs*",
        "notes",
    ):
        table.add_column(column, overflow="fold")
    rows: dict[tuple[str, str], dict[str, dict[str, Any]]] = {}
    for run in report["runs"]:
        rows.setdefault((run["board"], run["benchmark"]), {})[run["mode"]] = run
    for (board, benchmark), modes in sorted(rows.items()):
        info = report["boards"].get(board, {})

        perf, acc, energy, lat = (
            (modes.get(m) or {}).get("summary") or {}
            for m in ("performance", "accuracy", "energy", "latency")
        )
        quality = "-"
        if acc:
            met = (
                "" if acc.get("target_met") is None else (" ok" if acc["target_met"] else " BELOW")
            )
            target = acc.get("target")
            if acc.get("top1") is not None:  # percent, as the official runner prints it
                quality = f"{acc['top1']:.1f}% ({_num(target, '.1f')}%){met}"
            else:
                quality = f"AUC {_num(acc.get('auc'), '.3f')} ({_num(target, '.2f')}){met}"
        notes = [
            f"{m}: {r['state']}" + (f" ({r['reason']})" if r.get("reason") else "")
            for m, r in modes.items()
            if r["state"] != "completed"
        ]
        notes += [
            f"{m}: not valid"
            for m, r in modes.items()
            if (r.get("summary") or {}).get("valid") is False
        ]
        table.add_row(
            board,
            info.get("processor") or "-",
            info.get("accelerator") or "-",
            info.get("software") or "-",
            benchmark,
            _num(perf.get("latency_ms"), ".3f"),
            quality,
            _num(energy.get("energy_uj"), ".1f"),
            _num(lat.get("p50_us"), ".0f"),
            _num(lat.get("p90_us"), ".0f"),
            _num(lat.get("p99_us"), ".0f"),
            _num(lat.get("p90_early_stop_us"), ".0f"),
            "; ".join(notes),
        )
    table.caption = (
        "* supplemental: per-inference latency percentiles (LoadGen rules), "
        "not an MLPerf Tiny result"
    )
    return table


def cancel(client: redis.Redis, target: str) -> list[str] | None:
    """Ask for every unfinished run of a sweep (or one run) to be cancelled; return their
    ids, or None if ``target`` is neither a sweep nor a run."""
    if client.exists(keys.sweep(target)):
        run_ids = client.lrange(keys.sweep_runs(target), 0, -1)
    elif client.exists(keys.run(target)):
        run_ids = [target]
    else:
        return None
    cancelled = []
    for run_id in run_ids:
        if client.hget(keys.run(run_id), "state") not in keys.TERMINAL:
            set_run(client, run_id, cancel="1")
            cancelled.append(run_id)
    return cancelled
