"""What client commands show: a sweep's results (``farm show``) and cancellation.

``farm show SWEEP --json`` prints::

    {"sweep": {"id", "label", "created", "state", "spec", "total", "skipped": [...],
               "verdict": one line | null, "report_url": str | null},
     "runs": [{"id", "board", "agent", "benchmark", "mode", "state", "reason", "attempts",
               "summary": {"throughput_ips", "latency_ms", "top1", "auc", "energy_uj",
                           "p50_us", "p90_us", "p99_us", "p90_early_stop_us", "samples",
                           "valid", "artifacts", "target", "target_met",
                           "problems": [why the run is not valid],
                           "firmware": {...} | null} | null,
               "firmware": {"model", "build", "image", "sha256", "profile", "name",
                            "software"} | null,
               "shards": [board, ...] | null}],
     "boards": {board: {"board_name", "processor", "accelerator", "software"}}}

``top1`` is in percent and ``auc`` a fraction, as the official runner prints them (and as
the checker compares them with their targets). Every summary number is null where it does
not apply (``top1`` outside classifier accuracy
runs, ``energy_uj`` outside energy runs...); ``summary`` is null until the run completed.
A run's ``firmware`` is what produced it, from the agent's ``started`` event (null before
the run started, or from an agent that sends none): the firmware ``model`` and ``build`` the
DUT reported, the ``image`` file the agent's config names for them and its ``sha256``, the
DUT's ``profile`` and ``name`` answers and the agent's ``software`` version. A sharded
accuracy run (``farm submit --shard``: :mod:`controller.shards`) lists the boards its shards
ran on in ``shards``; its ``board`` is the first of them.
"""

from __future__ import annotations

import json
from typing import Any

import redis

from controller import keys
from controller.render import Column, Listing, number
from controller.store import board_status, run_firmware, set_run, sweep_runs

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
    "true_positives",
    "false_negatives",
    "false_positives",
    "f1",
    "duty_cycle",
    "power_mw",
    "samples",
    "valid",
    "artifacts",
    "target",
    "target_met",
    "problems",
    "firmware",
)
#: The firmware columns of ``farm show --format csv`` and the firmware table.
FIRMWARE_COLUMNS = ("image", "sha256", "profile", "name", "software")


def sweep_report(client: redis.Redis, sweep_id: str) -> dict[str, Any] | None:
    """The sweep and its runs (see the module docstring), or None if there is no such sweep."""
    sweep = client.hgetall(keys.sweep(sweep_id))
    if not sweep:
        return None
    runs = []
    boards: dict[str, dict[str, Any]] = {}
    for run_id, run in sweep_runs(client, sweep_id):
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
                "firmware": run_firmware(run),
                "shards": json.loads(run["boards"]) if run.get("boards") else None,
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
            "verdict": sweep.get("verdict") or None,
            "report_url": client.hget(keys.sweep_verdict(sweep_id), "report_url") or None,
        },
        "runs": runs,
        "boards": boards,
    }


#: Benchmarks in the order of the MLPerf Tiny results page.
PAGE_ORDER = ("vww01", "ic01", "kws01", "ad01", "sww01")
LEGEND = [
    "latency: ms per inference, 1000 / median throughput (performance mode); accuracy: top-1 "
    "(AUC for ad01) against the closed-division target in parentheses; energy: median µJ per "
    "inference (energy mode). sww01, one energy stream: latency 1000 / estimated throughput; "
    "accuracy F1 with its false negatives and false positives (closed division: 8 of each at "
    "most) and its mean power in mW.",
    "* supplemental, not an MLPerf Tiny result: latency mode's per-inference percentiles in µs "
    "(p50, p90, p99: LoadGen SingleStream) and ES p90, LoadGen's early-stopping estimate of "
    "p90 (an upper bound at 99% confidence).",
]


def run_listing(report: dict[str, Any]) -> Listing:
    """One row per run, with its numbers and why it is not valid (``farm show --format
    csv``)."""
    rows = []
    for run in report["runs"]:
        summary = run["summary"] or {}
        why = list(summary.get("problems") or [])
        if run["state"] != "completed":
            why.insert(0, f"{run['state']}" + (f": {run['reason']}" if run.get("reason") else ""))
        rows.append(
            {
                "run": run["id"],
                "board": run["board"],
                "benchmark": run["benchmark"],
                "mode": run["mode"],
                "state": run["state"],
                **{k: summary.get(k) for k in SUMMARY_KEYS if k not in ("problems", "artifacts")},
                "why_not_valid": "; ".join(why) if summary.get("valid") is not True else "",
                "artifacts": summary.get("artifacts"),
                **{f"firmware_{k}": (run.get("firmware") or {}).get(k) for k in FIRMWARE_COLUMNS},
            }
        )
    keys_ = ["run", "board", "benchmark", "mode", "state", *SUMMARY_KEYS]
    keys_ = [k for k in keys_ if k not in ("problems", "artifacts", "firmware")]
    firmware = [f"firmware_{k}" for k in FIRMWARE_COLUMNS]
    columns = [Column(k, k) for k in (*keys_, "why_not_valid", "artifacts", *firmware)]
    sweep = report["sweep"]
    return Listing(f"sweep {sweep['id']} runs", columns, rows)


def _quality(acc: dict[str, Any]) -> str | None:
    if not acc:
        return None
    met = "" if acc.get("target_met") is None else (" ok" if acc["target_met"] else " BELOW")
    target = acc.get("target")
    if acc.get("f1") is not None:  # sww01: one stream gives its accuracy and its power
        errors = f"FN {acc['false_negatives']} FP {acc['false_positives']} (<= {_num(target, 'g')})"
        return f"F1 {acc['f1']:.3f}, {errors}{met}; {_num(acc.get('power_mw'), '.3f')} mW"
    if acc.get("top1") is not None:  # percent, as the official runner prints it
        return f"{acc['top1']:.1f}% ({_num(target, '.1f')}%){met}"
    if acc.get("auc") is not None:
        return f"AUC {acc['auc']:.3f} ({_num(target, '.2f')}){met}"
    return None


def _num(value: Any, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def results_listings(report: dict[str, Any]) -> list[Listing]:
    """The MLPerf Tiny results page: one row per system and benchmark (latency, accuracy or
    AUC, energy, the supplemental percentiles, why a result is not valid), then the systems
    (processor, accelerator, software), with the legend."""
    sweep = report["sweep"]
    found: dict[tuple[str, str], dict[str, dict[str, Any]]] = {}
    for run in report["runs"]:
        found.setdefault((run["board"], run["benchmark"]), {})[run["mode"]] = run
    order = {b: i for i, b in enumerate(PAGE_ORDER)}
    rows = []
    for (board, benchmark), modes in sorted(
        found.items(), key=lambda kv: (kv[0][0], order.get(kv[0][1], 99), kv[0][1])
    ):
        perf, acc, energy, lat = (
            (modes.get(m) or {}).get("summary") or {}
            for m in ("performance", "accuracy", "energy", "latency")
        )
        notes = [
            f"{m}: {r['state']}" + (f" ({r['reason']})" if r.get("reason") else "")
            for m, r in modes.items()
            if r["state"] != "completed"
        ]
        notes += [
            f"{m} not valid: {'; '.join((r.get('summary') or {}).get('problems') or ['?'])}"
            for m, r in modes.items()
            if (r.get("summary") or {}).get("valid") is False
        ]
        rows.append(
            {
                "system": board,
                "benchmark": benchmark,
                "latency_ms": perf.get("latency_ms") or energy.get("latency_ms"),
                "quality": _quality(acc or (energy if energy.get("f1") is not None else {})),
                "energy_uj": energy.get("energy_uj"),
                "p50_us": lat.get("p50_us"),
                "p90_us": lat.get("p90_us"),
                "p99_us": lat.get("p99_us"),
                "p90_early_stop_us": lat.get("p90_early_stop_us"),
                "notes": notes,
            }
        )
    results = Listing(
        f"sweep {sweep['id']} {sweep['label']} ({sweep['state']})",
        [
            Column("system", "system"),
            Column("benchmark", "bench"),
            Column("latency_ms", "latency ms", number(".3f"), justify="right"),
            Column("quality", "accuracy (target)", rank=0),
            Column("energy_uj", "energy µJ", number(".1f"), justify="right"),
            Column("p50_us", "p50 µs*", number(".0f"), rank=2, justify="right"),
            Column("p90_us", "p90 µs*", number(".0f"), rank=1, justify="right"),
            Column("p99_us", "p99 µs*", number(".0f"), rank=2, justify="right"),
            Column("p90_early_stop_us", "ES p90 µs*", number(".0f"), rank=1, justify="right"),
            Column("notes", "not valid because", lambda v: "; ".join(v) or "-", rank=3),
        ],
        rows,
        notes=_verdict_note(sweep),
    )
    systems = Listing(
        "systems",
        [
            Column("system", "system"),
            Column("board_name", "board"),
            Column("processor", "processor"),
            Column("accelerator", "accelerator", rank=1),
            Column("software", "software"),
        ],
        [{"system": b, **info} for b, info in sorted(report["boards"].items())],
        notes=LEGEND,
    )
    return [results, systems, firmware_listing(report)]


def _verdict_note(sweep: dict[str, Any]) -> list[str]:
    """The verdict's line (``farm submit --verdict``), with its report's link."""
    if not sweep.get("verdict"):
        return []
    link = f"; report: {sweep['report_url']}" if sweep.get("report_url") else ""
    return [f"verdict: {sweep['verdict']}{link}"]


def firmware_listing(report: dict[str, Any]) -> Listing:
    """What produced each run: the image (file name and the first 12 hex digits of its
    SHA-256), the DUT's profile and name, the agent's version; one row per run that
    started."""
    rows = []
    for run in report["runs"]:
        fw = run.get("firmware")
        if not fw:
            continue
        rows.append(
            {
                "system": run["board"],
                "benchmark": run["benchmark"],
                "mode": run["mode"],
                "image": fw.get("image"),
                "sha256": (fw.get("sha256") or "")[:12] or None,
                "profile": fw.get("profile"),
                "name": fw.get("name"),
                "software": fw.get("software"),
            }
        )
    return Listing(
        "firmware",
        [
            Column("system", "system"),
            Column("benchmark", "bench"),
            Column("mode", "mode"),
            Column("image", "image"),
            Column("sha256", "sha256"),
            Column("profile", "profile", rank=1),
            Column("name", "DUT name", rank=2),
            Column("software", "agent", rank=1),
        ],
        rows,
    )


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
        state, shards = client.hmget(keys.run(run_id), ["state", "shards"])
        if state in keys.TERMINAL:
            continue
        # A sharded run ends when its shards do: they are cancelled, and the first to
        # confirm ends it cancelled (controller.shards).
        for target in json.loads(shards) if shards else [run_id]:
            if client.hget(keys.run(target), "state") not in keys.TERMINAL:
                set_run(client, target, cancel="1")
        cancelled.append(run_id)
    return cancelled
