"""The chaos suite's sweep: 4 simulated boards on 2 agents, an accuracy, a performance and a
latency run on each, every process real (tests/integration/controller_lab.py). A scenario
injects one fault while runs are under way with samples stored, lets the sweep run to its end
and compares every run with an undisturbed sweep: same state, every seq 0..total-1 stored
once, the same per-sample records and scores.

What two undisturbed sweeps do not share, and is therefore never compared: where and when
(the results folder; a sample's ``start_us``/``end_us``, the DUT's counter since its boot,
and ``wall_s``, the host's clock), nothing else. The boards are seeded and a sample's timing
is the simulated DUT's own, so performance and latency figures repeat exactly, given two
settings of the boards: a fixed inference time (spread 0; a board that redoes inferences
after a fault would otherwise have drawn its later times from a shifted random stream) and a
counter started at 10**9 µs (a performance window holds the print of its first lap line,
whose length is the counter's digit count, which then stays 10 for the whole sweep)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from controller import keys
from controller.deadline import SLACK
from controller.estimate import SETUP_ALLOWANCE_S, estimate_run_s
from controller.jobs import MAX_ATTEMPTS
from farm.catalog import get_benchmark
from farm.messages import RunOptions
from tests.integration.controller_lab import REDIS_URL, ControllerLab, start_controller_lab
from tests.integration.farm_procs import wait_until

#: Which boards each agent drives: (id, inference s).
AGENTS: dict[str, list[tuple[str, float]]] = {
    "pi-a": [("kws-1", 0.003), ("kws-2", 0.004)],
    "pi-b": [("kws-3", 0.003), ("kws-4", 0.005)],
}
BOARDS = [board for boards in AGENTS.values() for board, _ in boards]
MODES = ("accuracy", "performance", "latency")
#: Samples per accuracy and latency run (each agent's dataset holds this many files).
SAMPLES = 40
#: Short windows and latency phase: the sweep takes about a minute on a loaded 2-core box.
OPTIONS = {"min_window_s": 0.5, "calibration_s": 0.2, "min_duration_s": 1.0, "latency_inputs": 2}
#: ``FARM_SETUP_ALLOWANCE_S`` of the lab's controller: its boards never need a flash, so a
#: dispatch whose final event is lost is given up within seconds, not minutes.
SETUP_S = 5.0
#: ``FARM_AGENT_GRACE_S`` of the lab's controller (the default): an agent restarted by its
#: service manager is back well within it.
AGENT_GRACE_S = 30.0
#: The boards' µs counter at boot (see the module's docstring).
CLOCK_START_US = 10**9
#: Samples a run must have stored before a fault is injected into it.
STORED_BEFORE_FAULT = 8


def board_yaml(board: str, median_s: float, faults: str = "") -> str:
    """One board of a `farm sim` config (``faults``: a YAML flow list, or none)."""
    extra = f", faults: {faults}" if faults else ""
    return (
        f"- {{id: {board}, model: kws01, latency: {{median_s: {median_s}, spread: 0}}, "
        f"clock_start_us: {CLOCK_START_US}{extra}}}\n"
    )


def agent_of(board: str) -> str:
    """The agent that drives ``board``."""
    return next(agent for agent, boards in AGENTS.items() if board in dict(boards))


async def start_farm(
    directory: Path,
    *,
    faults: dict[str, str] | None = None,
    redis_url: str = REDIS_URL,
    persistence: bool = True,
) -> ControllerLab:
    """The whole farm, boards idle and healthy: broker (``persistence``: whether it keeps
    sessions and queued messages across a restart), Redis at ``redis_url`` (flushed if it is
    the shared database), both agents with their `farm sim` (``faults``: board id -> its
    fault list), ingest and one worker supervisor with a worker per board."""
    lab = await start_controller_lab(directory, redis_url=redis_url, persistence=persistence)
    lab.extra_env.update(FARM_SETUP_ALLOWANCE_S=str(SETUP_S), FARM_AGENT_GRACE_S=str(AGENT_GRACE_S))
    try:
        for agent, boards in AGENTS.items():
            config = "".join(board_yaml(b, s, (faults or {}).get(b, "")) for b, s in boards)
            await lab.add_agent(agent, config, dataset_limit=SAMPLES)
        await lab.start_controller(workers=len(BOARDS))
        await lab.boards_ready(BOARDS)
    except BaseException:
        await lab.stop()
        raise
    return lab


def estimate_s(mode: str) -> float:
    """The controller's wire-model estimate of one of the sweep's runs, with the lab's set-up
    allowance (what its deadline is fixed from: controller/deadline.py)."""
    options = RunOptions.model_validate({**OPTIONS, "limit": SAMPLES})
    estimate = estimate_run_s(get_benchmark("kws"), mode, options)  # type: ignore[arg-type]
    return estimate - SETUP_ALLOWANCE_S + SETUP_S


def deadline_s(mode: str) -> float:
    """How long after its dispatch a run of ``mode`` is given up without progress: the
    controller's own rule (``SLACK`` x the estimate, controller/deadline.py)."""
    return SLACK * estimate_s(mode)


def sweep_bound_s() -> float:
    """How long the sweep may take at worst by the controller's own rules: a board runs its
    three runs one after another, each dispatched at most ``MAX_ATTEMPTS`` times and each
    dispatch given up at its deadline, plus a minute for process starts and scoring on a
    loaded machine."""
    return sum(MAX_ATTEMPTS * deadline_s(mode) for mode in MODES) + 60


@dataclass
class Sweep:
    """A submitted sweep."""

    id: str
    runs: list[str]
    submitted: float = field(default_factory=time.monotonic)


async def submit(lab: ControllerLab) -> Sweep:
    """Queue the sweep on every board."""
    _, out, _ = await lab.farm(
        "submit",
        "--benchmark",
        "kws",
        "--boards",
        "all",
        "--mode",
        ",".join(MODES),
        "--limit",
        str(SAMPLES),
        "--options",
        json.dumps(OPTIONS),
        "--json",
    )
    submitted = json.loads(out)
    assert len(submitted["runs"]) == len(BOARDS) * len(MODES), submitted
    return Sweep(submitted["sweep"], submitted["runs"])


@dataclass(frozen=True)
class RunState:
    """What a run's hash says at one moment."""

    board: str
    mode: str
    state: str
    attempts: int
    done: int


def snapshot(lab: ControllerLab, sweep: Sweep) -> dict[str, RunState]:
    """Every run of the sweep, now (one pipelined read)."""
    pipe = lab.redis.pipeline(transaction=False)
    for run in sweep.runs:
        pipe.hmget(keys.run(run), "board", "mode", "state", "attempts", "done")
    found = {}
    for run, (board, mode, state, attempts, done) in zip(sweep.runs, pipe.execute(), strict=True):
        found[run] = RunState(board, mode, state or "", int(attempts or 0), int(done or 0))
    return found


def under_way(states: dict[str, RunState], boards: list[str] | None = None) -> list[str]:
    """The runs (of ``boards``, if given) running with samples stored and some to come."""
    return [
        run
        for run, s in states.items()
        if s.state == "running"
        and STORED_BEFORE_FAULT <= s.done < SAMPLES - 5
        and s.mode != "performance"
        and (boards is None or s.board in boards)
    ]


async def runs_under_way(
    lab: ControllerLab, sweep: Sweep, boards: list[str] | None = None
) -> list[str]:
    """Wait until some run (on ``boards``) is under way (:func:`under_way`); those runs."""
    return await wait_until(
        lambda: under_way(snapshot(lab, sweep), boards), sweep_bound_s(), "a run under way"
    )


async def sweep_ended(lab: ControllerLab, sweep: Sweep) -> dict[str, RunState]:
    """Wait until every run of the sweep completed, failed or was cancelled, within
    :func:`sweep_bound_s` of its submission."""
    left = sweep.submitted + sweep_bound_s() - time.monotonic()
    try:
        await wait_until(
            lambda: all(s.state in keys.TERMINAL for s in snapshot(lab, sweep).values()),
            max(left, 1.0),
            "every run of the sweep ends",
        )
    except AssertionError:
        raise AssertionError(f"{snapshot(lab, sweep)}\n{lab.logs()}") from None
    return snapshot(lab, sweep)


Recovered = Callable[[RunState, RunState], bool]


def stored_more(before: RunState, now: RunState) -> bool:
    """The run stored a sample since ``before``, or ended."""
    return now.done > before.done or now.state in keys.TERMINAL


def dispatched_again(before: RunState, now: RunState) -> bool:
    """The run was dispatched again since ``before``, or ended."""
    return now.attempts > before.attempts or now.state in keys.TERMINAL


async def recovery_s(
    lab: ControllerLab,
    sweep: Sweep,
    runs: list[str],
    before: dict[str, RunState],
    since: float,
    recovered: Recovered,
    bound: float,
) -> float:
    """Seconds from ``since`` (``time.monotonic()`` at the fault) until every run of ``runs``
    ``recovered`` compared with ``before``; waits up to twice ``bound`` so that a miss is
    measured, not only detected."""

    def done() -> bool:
        now = snapshot(lab, sweep)
        return all(recovered(before[run], now[run]) for run in runs)

    await wait_until(done, max(2 * bound - (time.monotonic() - since), 1.0), "recovery")
    return time.monotonic() - since


@dataclass
class RunResult:
    """A finished run as the controller stored it."""

    state: str
    reason: str
    reasons: list[str]
    attempts: int
    total: int
    seqs: list[int]
    samples: dict[int, dict[str, Any]]
    summary: dict[str, Any]
    scored: list[dict[str, Any]]
    """The records of the run's samples.jsonl (what was scored)."""


def results(lab: ControllerLab, sweep: Sweep) -> dict[tuple[str, str], RunResult]:
    """Every run of the sweep by (board, mode), read the way the controller stores it."""
    found = {}
    for run_id in sweep.runs:
        run = lab.redis.hgetall(keys.run(run_id))
        raw = lab.redis.hgetall(keys.run_samples(run_id))
        samples = {int(seq): json.loads(value) for seq, value in raw.items()}
        summary = json.loads(run.get("summary") or "{}")
        scored = []
        if summary.get("artifacts"):
            lines = (Path(summary["artifacts"]) / "samples.jsonl").read_text().splitlines()
            scored = [json.loads(line) for line in lines]
        found[(run["board"], run["mode"])] = RunResult(
            state=run["state"],
            reason=run.get("reason", ""),
            reasons=json.loads(run.get("reasons") or "[]"),
            attempts=int(run.get("attempts") or 0),
            total=int(run.get("total") or 0),
            seqs=sorted(samples),
            samples=samples,
            summary=summary,
            scored=scored,
        )
    return found


#: Fields that say where or when, not what was measured (see the module's docstring).
UNCOMPARED = frozenset({"artifacts", "start_us", "end_us", "wall_s"})


def comparable(record: dict[str, Any]) -> dict[str, Any]:
    """A run summary or sample record without :data:`UNCOMPARED`."""
    return {k: v for k, v in record.items() if k not in UNCOMPARED}


def assert_like_reference(
    got: dict[tuple[str, str], RunResult],
    reference: dict[tuple[str, str], RunResult],
    *,
    may_fail: dict[tuple[str, str], str] | None = None,
) -> None:
    """Every run completed with exactly its samples, 0 lost and 0 duplicated, and the
    reference's per-sample records and scores; a run of ``may_fail`` may instead have failed
    with a reason containing the text given."""
    assert got.keys() == reference.keys()
    for key, run in got.items():
        expected = reference[key]
        if run.state == "failed" and may_fail and key in may_fail:
            assert may_fail[key] in run.reason, (key, run.reason)
            continue
        assert run.state == "completed", (key, run.state, run.reasons)
        # 0 lost, nothing beyond the end: the seqs are exactly 0..total-1 ...
        assert run.total == expected.total > 0, key
        assert run.seqs == list(range(run.total)), (key, run.seqs)
        # ... and 0 duplicated in what was scored (Redis stores a seq once by construction).
        assert sorted(r["seq"] for r in run.scored) == run.seqs, key
        assert _records(run.samples.values()) == _records(expected.samples.values()), key
        assert _records(run.scored) == _records(expected.scored), key
        assert comparable(run.summary) == comparable(expected.summary), key


def _records(records: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(map(comparable, records), key=lambda r: r["seq"])


async def run_sweep(lab: ControllerLab) -> dict[tuple[str, str], RunResult]:
    """Submit the sweep, wait for its end, its results (the undisturbed reference)."""
    sweep = await submit(lab)
    await sweep_ended(lab, sweep)
    return results(lab, sweep)


async def reference_sweep(directory: Path) -> dict[tuple[str, str], RunResult]:
    """The undisturbed sweep on a farm of its own."""
    lab = await start_farm(directory)
    try:
        return await run_sweep(lab)
    finally:
        await lab.stop()


def reference(directory: Path) -> dict[tuple[str, str], RunResult]:
    """:func:`reference_sweep` from synchronous code (a session fixture)."""
    return asyncio.run(reference_sweep(directory))


class StallWatch:
    """Polls the sweep in the background and keeps, per run, the longest time between two
    successive increases of its stored samples: how long a fault inside a board stopped it
    (the fault fires inside the simulator, at a moment the test does not see)."""

    def __init__(self, lab: ControllerLab, sweep: Sweep) -> None:
        self.lab = lab
        self.sweep = sweep
        self.longest: dict[str, float] = {}
        self._last: dict[str, tuple[int, float]] = {}
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start polling (every 0.1 s)."""
        self._task = asyncio.get_running_loop().create_task(self._poll())

    async def stop(self) -> None:
        """Stop polling."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def board(self, board: str) -> float:
        """The longest stall of any run of ``board``."""
        states = snapshot(self.lab, self.sweep)
        return max(
            (self.longest.get(run, 0.0) for run, s in states.items() if s.board == board),
            default=0.0,
        )

    async def _poll(self) -> None:
        while True:
            now = time.monotonic()
            for run, state in snapshot(self.lab, self.sweep).items():
                done, since = self._last.get(run, (0, now))
                if state.done > done:
                    if done > 0:
                        self.longest[run] = max(self.longest.get(run, 0.0), now - since)
                    self._last[run] = (state.done, now)
                elif run not in self._last:
                    self._last[run] = (done, now)
            await asyncio.sleep(0.1)


#: A farm process (agent, ingest, worker supervisor) starting on a loaded 2-core box: the
#: interpreter and its imports, then its first connections (measured 2-6 s; the bounds that
#: include a restart carry this allowance, the rest of each bound comes from the
#: configuration).
START_S = 20.0


def reconnect_by(outage_s: float, base_s: float, cap_s: float) -> float:
    """The latest a client retrying with ``farm.backoff.Backoff(base_s, cap_s)`` reconnects,
    counted from the start of an outage of ``outage_s``: the n-th delay is drawn in
    [c_n / 2, c_n], c_n = min(cap, base * 2**n), so the retry pending when the server comes
    back is at most c_n away, n at most the first index whose shortest delays add up to the
    outage."""
    elapsed, n = 0.0, 0
    while True:
        ceiling = min(cap_s, base_s * 2**n)
        elapsed += ceiling / 2
        if elapsed >= outage_s:
            return outage_s + ceiling
        n += 1


#: Injects a fault into the farm while ``runs`` are under way; returns the runs the fault
#: hit, or None: all of ``runs``.
Inject = Callable[[list[str]], Awaitable[list[str] | None]]
#: Repairs it, where a service manager or an operator would (restarts what was killed).
Repair = Callable[[], Awaitable[None]]


async def fault_mid_sweep(
    lab: ControllerLab,
    reference: dict[tuple[str, str], RunResult],
    *,
    inject: Inject,
    recovered: Recovered,
    bound_s: float,
    repair: Repair | None = None,
    boards: list[str] | None = None,
) -> float:
    """Submit the sweep, wait until runs (on ``boards``) are under way, ``inject`` the fault,
    ``repair`` it, measure the recovery of the runs it hit (``recovered``: compared with
    their state once the fault took effect, just before the repair), let the sweep end; check
    it is the reference's run for run. The recovery in seconds from the fault (waited for up
    to twice ``bound_s``; the caller checks the bound)."""
    sweep = await submit(lab)
    runs = await runs_under_way(lab, sweep, boards)
    before = snapshot(lab, sweep)
    since = time.monotonic()
    hit = await inject(runs) or runs
    # Once the fault took effect, unless it took Redis (then nothing is stored meanwhile).
    with contextlib.suppress(redis.RedisError):
        before = snapshot(lab, sweep)
    if repair is not None:
        await repair()
    took = await recovery_s(lab, sweep, hit, before, since, recovered, bound_s)
    await sweep_ended(lab, sweep)
    assert_like_reference(results(lab, sweep), reference)
    return took


async def board_faulted_sweep(
    lab: ControllerLab,
    reference: dict[tuple[str, str], RunResult],
    board: str,
    *,
    may_fail: dict[tuple[str, str], str] | None = None,
) -> tuple[float, dict[tuple[str, str], RunResult]]:
    """Run the sweep on a farm whose ``board`` has a fault armed; check it against the
    reference (``may_fail``: see :func:`assert_like_reference`). The longest ``board``'s
    runs went without storing a sample (:class:`StallWatch`), and the results."""
    sweep = await submit(lab)
    watch = StallWatch(lab, sweep)
    watch.start()
    try:
        await sweep_ended(lab, sweep)
    finally:
        await watch.stop()
    got = results(lab, sweep)
    assert_like_reference(got, reference, may_fail=may_fail)
    return watch.board(board), got
