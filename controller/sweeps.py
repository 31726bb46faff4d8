"""A sweep: benchmarks × modes × boards, expanded into runs and queued as RQ jobs.

Runs for one board wait their turn (:mod:`controller.board_queue`), so a board never runs
two at once and no job is queued for a busy board; the board lease is the second guard. Runs
on a board are ordered so it is flashed as rarely as possible: first everything its current
firmware can run, then one group per other firmware.
Boards that cannot run a benchmark or mode are listed with the reason, never dropped silently;
so are boards out of scheduling (reserved by someone, quarantined after a failed check).
sww01 has one run, its energy stream, which gives its accuracy, throughput and power: a sweep
asking sww01 for any of performance, accuracy or energy runs that stream once.
"""

from __future__ import annotations

import difflib
import json
import time
from dataclasses import dataclass, field
from typing import Any

import redis

from controller import board_queue, keys
from controller.estimate import samples_expected
from controller.quarantine import unavailable
from controller.shards import split
from controller.store import all_boards, new_id, rq_connection
from controller.verdicts import VerdictRequest
from farm.catalog import BENCHMARKS, Benchmark, BenchmarkError, get_benchmark
from farm.messages import Mode, RunOptions
from farm.scripts import TestScript

MODES: tuple[Mode, ...] = ("performance", "accuracy", "energy", "latency")
DEFAULT_MODES: tuple[Mode, ...] = ("performance", "accuracy")
#: The suite a nightly sweep runs: every benchmark of the catalogue (ic02 included) in every
#: mode a board can run it in.
SUITE_BENCHMARKS = tuple(BENCHMARKS)
#: The modes sww01's one energy stream stands for.
STREAM_MODES: tuple[Mode, ...] = ("performance", "accuracy", "energy")
QUEUES = {"high": "farm-high", "normal": "farm", "low": "farm-low"}
#: Worker queue order: a high-priority run is taken before any normal one.
QUEUE_ORDER = (QUEUES["high"], QUEUES["normal"], QUEUES["low"])
#: An RQ job lost with its worker is run again this many times (it resumes from the samples
#: already stored where the mode allows) before the run fails.
JOB_RETRIES = 2


class SweepError(ValueError):
    """The sweep cannot be planned (unknown board or benchmark, nothing matches): the
    message says why and lists what is valid."""


@dataclass
class SweepSpec:
    """What ``farm submit`` asked for."""

    benchmarks: list[str]
    boards: list[str] | None = None
    """Board ids, or ``None`` for every board."""
    tags: dict[str, str] = field(default_factory=dict)
    modes: list[Mode] = field(default_factory=lambda: list(DEFAULT_MODES))
    dataset: str | None = None
    label: str = ""
    priority: str = "normal"
    options: RunOptions = field(default_factory=RunOptions)
    flash: bool = True
    """Let agents flash boards that hold other firmware (off: each board runs only what it
    holds, as ``farm demo`` does)."""
    verdict: VerdictRequest | None = None
    """Judge the sweep against its baseline when it has finished (``farm submit --verdict``:
    :mod:`controller.judge`)."""
    scripts: tuple[TestScript, ...] = ()
    """Users' test scripts, one per mode at most (``farm submit --script``)."""
    shard: bool = False
    """Split each benchmark's accuracy run across the boards that will run the same
    firmware, merged into one run (``farm submit --shard``: :mod:`controller.shards`)."""

    def to_json(self) -> dict[str, Any]:
        """The spec as stored with the sweep."""
        return {
            "benchmarks": self.benchmarks,
            "boards": self.boards,
            "tags": self.tags,
            "modes": list(self.modes),
            "dataset": self.dataset,
            "label": self.label,
            "priority": self.priority,
            "options": self.options.model_dump(),
            "flash": self.flash,
            "verdict": None if self.verdict is None else self.verdict.to_json(),
            "scripts": [{"mode": s.mode, "file": s.name, "sha256": s.sha256} for s in self.scripts],
            "shard": self.shard,
        }


@dataclass(frozen=True)
class PlannedRun:
    """One run of a sweep."""

    board: str
    agent: str
    benchmark: str
    mode: Mode
    flash: bool
    """The board needs other firmware first (the agent flashes it)."""


@dataclass(frozen=True)
class Skipped:
    """A board × benchmark × mode the sweep cannot run, and why."""

    board: str
    benchmark: str
    mode: str
    reason: str


def skipped_groups(skipped: list[Skipped], shown: int = 4) -> list[str]:
    """The skipped runs one line per reason, in the order first met: how many, their
    benchmarks with the modes each was skipped in, the boards (the first ``shown``, then how
    many more). A full suite over a farm that does not flash says once per board that it
    holds another model, and once that sww01 has no latency mode, not once per board,
    benchmark and mode (``--json`` and the sweep's record keep every one)."""
    groups: dict[str, list[Skipped]] = {}
    for s in skipped:
        groups.setdefault(s.reason, []).append(s)
    lines = []
    for reason, runs in groups.items():
        # Benchmarks skipped in the same modes share one entry, so no benchmark is listed
        # beside a mode it was not skipped in.
        modes_of: dict[str, list[str]] = {}
        for s in runs:
            modes_of.setdefault(s.benchmark, [])
            if s.mode not in modes_of[s.benchmark]:
                modes_of[s.benchmark].append(s.mode)
        by_modes: dict[tuple[str, ...], list[str]] = {}
        for bench, modes in modes_of.items():
            ordered = tuple(sorted(modes, key=lambda m: MODES.index(m) if m in MODES else 99))
            by_modes.setdefault(ordered, []).append(bench)
        what = "; ".join(f"{', '.join(b)}: {', '.join(m)}" for m, b in by_modes.items())
        boards = list(dict.fromkeys(s.board for s in runs))
        names = ", ".join(boards[:shown])
        if len(boards) > shown:
            names += f" and {len(boards) - shown} more boards"
        count = f"{len(runs)} run{'s' if len(runs) > 1 else ''}"
        lines.append(f"{count} ({what}) on {names}: {reason}")
    return lines


def expand_benchmarks(names: list[str], suite: bool) -> list[Benchmark]:
    """The benchmarks named (ids or aliases), or the full suite."""
    chosen = list(SUITE_BENCHMARKS) if suite else names
    found: list[Benchmark] = []
    for name in chosen:
        try:
            bench = get_benchmark(name)
        except BenchmarkError as exc:
            # The message already lists the valid names.
            raise SweepError(str(exc)) from None
        if bench not in found:
            found.append(bench)
    if not found:
        raise SweepError("no benchmark given (--benchmark NAME[,NAME] or --suite full)")
    return found


def unknown_boards(unknown: list[str], names: list[str]) -> str:
    """The error for board ids no agent reported: the known ones (``names``, which may hold
    other words a command accepts, such as ``all``) and the closest match of each."""
    boards = sorted(n for n in names if n != "all")
    known = ", ".join(boards) or "none: is an agent running and connected?"
    hints = [
        f"{b!r}: did you mean {close[0]!r}?"
        for b in unknown
        if (close := difflib.get_close_matches(b, names, n=1, cutoff=0.6))
    ]
    return f"unknown board(s) {', '.join(unknown)} (known: {known})" + (
        f"; {'; '.join(hints)}" if hints else ""
    )


def plan(
    spec: SweepSpec,
    boards: dict[str, dict[str, Any]],
    online: set[str],
    held: dict[str, str] | None = None,
) -> tuple[list[PlannedRun], list[Skipped]]:
    """Expand a spec over the known boards (``boards``: id -> retained status; ``online``:
    agents online now; ``held``: boards out of scheduling, reserved or quarantined, and why)."""
    benches = [get_benchmark(b) for b in spec.benchmarks]
    _check_scripts(spec, benches)
    if spec.options.truth is not None and not any(b.streamed for b in benches):
        raise SweepError("--truth names an sww01 truth file: the sweep has no sww01 run")
    if spec.boards is not None:
        unknown = [b for b in spec.boards if b not in boards]
        if unknown:
            raise SweepError(unknown_boards(unknown, ["all", *boards]))
        selected = {b: boards[b] for b in spec.boards}
    else:
        selected = dict(boards)
    selected = {
        b: s
        for b, s in selected.items()
        if all(s.get("tags", {}).get(k) == v for k, v in spec.tags.items())
    }
    if not selected:
        why = "no board has those tags" if spec.tags else "no board is known"
        raise SweepError(f"no board matches ({why}); boards: {', '.join(sorted(boards)) or 'none'}")
    runs: list[PlannedRun] = []
    skipped: list[Skipped] = []
    for board_id in sorted(selected):
        status = selected[board_id]
        candidates: list[PlannedRun] = []
        for bench in benches:
            modes, refused = bench_modes(bench, spec.modes)
            skipped.extend(Skipped(board_id, bench.id, m, why) for m, why in refused)
            for mode in modes:
                reason = (held or {}).get(board_id) or _cannot(
                    status, bench, mode, online, spec.flash
                )
                if reason is not None:
                    skipped.append(Skipped(board_id, bench.id, mode, reason))
                    continue
                candidates.append(
                    PlannedRun(
                        board_id, status["agent"], bench.id, mode, _needs_flash(status, bench, mode)
                    )
                )
        runs.extend(_order(candidates, status))
    return runs, skipped


def _check_scripts(spec: SweepSpec, benches: list[Benchmark]) -> None:
    """Refuse a test script the sweep would not use: two for one mode, one for a mode the
    sweep does not run or naming none of its benchmarks."""
    seen: set[str] = set()
    # What the sweep runs: sww01 streams in energy mode whichever mode stands for it.
    runs = {m for b in benches for m in bench_modes(b, spec.modes)[0]}
    for script in spec.scripts:
        if script.mode in seen:
            raise SweepError(f"two test scripts for {script.mode} mode")
        seen.add(script.mode)
        if script.mode not in runs:
            raise SweepError(f"{script.path}: the sweep runs no {script.mode} mode")
        if not any(b.id in script.entries for b in benches):
            raise SweepError(
                f"{script.path} names none of the sweep's benchmarks "
                f"({', '.join(b.id for b in benches)})"
            )


def bench_modes(bench: Benchmark, modes: list[Mode]) -> tuple[list[Mode], list[tuple[Mode, str]]]:
    """The modes ``bench`` runs in a sweep asking for ``modes``, and the ones it cannot run
    with the reason. sww01 runs its energy stream once for any of performance, accuracy and
    energy (the stream gives all three); the others run every mode asked."""
    if not bench.streamed:
        return list(modes), []
    runs: list[Mode] = ["energy"] if any(m in STREAM_MODES for m in modes) else []
    refused = [
        (
            m,
            f"{bench.id} has no {m} mode: its energy stream gives its accuracy, throughput "
            "and power",
        )
        for m in modes
        if m not in STREAM_MODES
    ]
    return runs, refused


def _build(mode: str) -> str:
    return "energy" if mode == "energy" else "performance"


def _needs_flash(status: dict[str, Any], bench: Benchmark, mode: str) -> bool:
    return not (
        status.get("model") in bench.firmware_models and status.get("build") == _build(mode)
    )


def _cannot(
    status: dict[str, Any], bench: Benchmark, mode: str, online: set[str], flash: bool
) -> str | None:
    if status.get("agent") not in online:
        return f"agent {status.get('agent')} is offline"
    if status.get("health") == "bad":
        return f"health bad: {status.get('health_reason') or 'see farm status'}"
    if mode == "energy" and not status.get("energy"):
        return "no interface board and energy monitor for energy mode"
    if not _needs_flash(status, bench, mode):
        return None
    if not flash:
        return f"holds {status.get('model')} ({status.get('build')}); flashing is off"
    images = status.get("images", {})
    if any(_build(mode) in images.get(m, []) for m in bench.firmware_models):
        return None
    have = (
        f"{status.get('model')} ({status.get('build')})"
        if status.get("model")
        else "unknown firmware"
    )
    return (
        f"holds {have} and has no {_build(mode)} image for "
        f"{' or '.join(bench.firmware_models)} to flash"
    )


def _order(runs: list[PlannedRun], status: dict[str, Any]) -> list[PlannedRun]:
    """Current firmware first, then one group per firmware (model, build): one flash each."""
    groups: dict[tuple[str, str], list[PlannedRun]] = {}
    for run in runs:
        firmware = (get_benchmark(run.benchmark).firmware_models[0], _build(run.mode))
        if not run.flash:
            firmware = ("", "")  # what the board holds now: first
        groups.setdefault(firmware, []).append(run)
    return [run for key in sorted(groups) for run in groups[key]]


def shard_groups(runs: list[PlannedRun], boards: dict[str, dict[str, Any]]) -> dict[int, list[int]]:
    """The accuracy runs to shard, as lists of plan indices keyed by their first: one list
    per benchmark and firmware model the boards will run (their images' digests are checked
    when the shards are merged), where two boards or more would run it."""
    found: dict[tuple[str, str], list[int]] = {}
    for i, run in enumerate(runs):
        bench = get_benchmark(run.benchmark)
        if run.mode != "accuracy" or bench.streamed:
            continue
        model = bench.firmware_models[0] if run.flash else boards[run.board].get("model")
        found.setdefault((bench.id, str(model)), []).append(i)
    return {members[0]: members for members in found.values() if len(members) > 1}


def submit(client: redis.Redis, spec: SweepSpec) -> tuple[str, list[str], list[Skipped]]:
    """Plan the sweep, store it and its runs, and queue the jobs; return the sweep id, its
    run ids and what was skipped. Raises :class:`SweepError` when nothing can run."""
    boards = all_boards(client)
    online = {
        a for a in client.smembers(keys.AGENTS) if client.hget(keys.agent(a), "state") == "online"
    }
    runs, skipped = plan(spec, boards, online, unavailable(client, list(boards), time.time()))
    if not runs:
        reasons = "; ".join(f"{s.board} {s.benchmark} {s.mode}: {s.reason}" for s in skipped[:10])
        raise SweepError(f"nothing to run: {reasons}")
    sweep_id = new_id("sw")
    now = time.time()
    groups = shard_groups(runs, boards) if spec.shard else {}
    # A sharded run's other boards' runs become its shards: the sweep lists the first.
    absorbed = {i for members in groups.values() for i in members[1:]}
    listed = [i for i in range(len(runs)) if i not in absorbed]
    run_ids = [f"{sweep_id}-r{n:03d}" for n in range(len(listed))]
    ids_by_plan = dict(zip(listed, run_ids, strict=True))
    # The run each planned run's board waits for: its own, or a shard in its place.
    waits_for = dict(ids_by_plan)
    shard_rows: list[tuple[str, PlannedRun, dict[str, str]]] = []
    parents: dict[str, dict[str, str]] = {}
    for first, members in groups.items():
        parent = ids_by_plan[first]
        bench = get_benchmark(runs[first].benchmark)
        total = samples_expected(bench, "accuracy", run_options(spec, bench.id, "accuracy"))
        shard_ids = [f"{parent}-s{k}" for k in range(len(members))]
        parents[parent] = {
            "shards": json.dumps(shard_ids),
            "boards": json.dumps([runs[i].board for i in members]),
            "state": "running",
            "job": "",
        }
        for shard_id, i, own in zip(shard_ids, members, split(total, len(members)), strict=True):
            waits_for[i] = shard_id
            extra = {"shard_of": parent, "shard_range": json.dumps(list(own))}
            shard_rows.append((shard_id, runs[i], extra))
    with client.pipeline() as pipe:
        pipe.hset(
            keys.sweep(sweep_id),
            mapping={
                "id": sweep_id,
                "spec": json.dumps(spec.to_json()),
                "label": spec.label,
                "created": now,
                "total": len(run_ids),
                "state": "running",
            },
        )
        pipe.zadd(keys.SWEEPS, {sweep_id: now})
        pipe.rpush(keys.sweep_runs(sweep_id), *run_ids)
        for s in skipped:
            pipe.rpush(keys.sweep_skipped(sweep_id), json.dumps(s.__dict__))
        rows = [(run_id, runs[i], parents.get(run_id, {})) for i, run_id in ids_by_plan.items()]
        for run_id, run, extra in [*rows, *shard_rows]:
            pipe.hset(
                keys.run(run_id),
                mapping={
                    "id": run_id,
                    "sweep": sweep_id,
                    "board": run.board,
                    "agent": run.agent,
                    "benchmark": run.benchmark,
                    "mode": run.mode,
                    "dataset": spec.dataset or "",
                    "options": run_options(spec, run.benchmark, run.mode).model_dump_json(),
                    "label": spec.label,
                    "state": "queued",
                    "attempts": 0,
                    "reasons": "[]",
                    "created": now,
                    "job": f"run-{run_id}",
                    "queue": QUEUES[spec.priority],
                    **extra,
                },
            )
        pipe.execute()
    # Each board's runs wait their turn in plan order; a free board's first run is queued
    # now, the next one when it ends (controller.board_queue). A sharded run waits for no
    # board: its shards do.
    by_board: dict[str, list[str]] = {}
    for i, run in enumerate(runs):
        by_board.setdefault(run.board, []).append(waits_for[i])
    with client.pipeline(transaction=False) as pipe:
        for board, ids in by_board.items():
            board_queue.wait(pipe, board, ids)
        pipe.execute()
    board_queue.start_boards(client, rq_connection(client), list(by_board))
    return sweep_id, run_ids, skipped


def run_options(spec: SweepSpec, benchmark: str, mode: str) -> RunOptions:
    """The sweep's options as one ``mode`` run of ``benchmark`` takes them: a truth file is
    sww01's alone, so a mixed sweep (``--suite full --truth ...``) sends it to its sww01 runs
    only; a test script of the mode that names the benchmark goes with the run."""
    options = spec.options
    if options.truth is not None and not get_benchmark(benchmark).streamed:
        options = options.model_copy(update={"truth": None})
    for script in spec.scripts:
        options = script.apply(options, benchmark, mode)
    return options
