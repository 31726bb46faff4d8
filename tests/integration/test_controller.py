"""The farm end to end: `farm submit` fans runs out through Redis/RQ to real agents driving
`farm sim` boards, ingest stores what they publish, workers score it; `farm show` reports it.
Every process is real (Mosquitto, Redis, RQ worker processes, agents, simulators)."""

from __future__ import annotations

import asyncio
import csv
import io
import itertools
import json
import os
import signal
import statistics
import time
from pathlib import Path

import pytest
import redis

from controller.estimate import SETUP_ALLOWANCE_S, estimate_run_s
from controller.jobs import BROKER_RETRY_S, RunJob
from controller.queueing import fetch_job
from controller.settings import Settings
from farm.catalog import get_benchmark
from farm.messages import RunOptions
from farm.sim.config import DEFAULT_MEDIAN_S, DEFAULT_QUALITY
from farm.wire import wire_time
from tests.integration.controller_lab import REDIS_URL, ControllerLab
from tests.integration.farm_procs import Observer, alive, descendants, wait_until

#: Short windows: the numbers are exact whatever the window length.
QUICK = json.dumps({"min_window_s": 0.5, "calibration_s": 0.2})
#: ic01 boards with a fixed inference time (spread 0) and a known accuracy.
IC_BOARDS = """\
- {id: ic-1, model: ic01, quality: 0.7, latency: {median_s: 0.004, spread: 0}}
- {id: ic-2, model: ic01, quality: 0.9, latency: {median_s: 0.006, spread: 0}}
"""
#: Another agent's: one more ic01 board, and a kws01 board that gets flashed with ic01 (then
#: it runs at the simulator's ic01 defaults: 40 ms, quality 0.87, and still spread 0).
MIXED_BOARDS = """\
- {id: kws-3, model: kws01, latency: {median_s: 0.002, spread: 0}}
- {id: ic-4, model: ic01, quality: 0.8, latency: {median_s: 0.005, spread: 0}}
"""
#: Each board's ground truth for ic01 on a 10-file dataset: inference s, top-1 % (a board of
#: quality q answers round(q * n) of n files right).
IC_TRUTH = {
    "ic-1": (0.004, 70.0),
    "ic-2": (0.006, 90.0),
    "kws-3": (DEFAULT_MEDIAN_S["ic01"], round(DEFAULT_QUALITY["ic01"] * 10) * 10.0),
    "ic-4": (0.005, 80.0),
}


def interleaved_commands(transcript: Path) -> list[float]:
    """When the host sent the DUT anything while a command of its was still unanswered (every
    reply ends with ``m-ready``): two runs at once on one board would interleave so."""
    found: list[float] = []
    waiting, replied = False, ""
    for line in transcript.read_text().splitlines():
        record = json.loads(line)
        data = bytes.fromhex(record["hex"]).decode("latin-1")
        if record["dir"] == "rx":
            for char in data:
                if waiting:
                    found.append(record["t"])
                waiting = waiting or char == "%"
            replied = ""
        else:
            replied = (replied + data)[-16:]
            if replied.endswith("m-ready\r\n"):
                waiting = False
    return found


async def test_submit_ic_on_every_board_gives_the_ground_truth(lab: ControllerLab) -> None:
    await lab.add_agent("pi-a", IC_BOARDS)
    await lab.add_agent("pi-b", MIXED_BOARDS)
    await lab.start_controller(workers=4)
    await lab.boards_ready(list(IC_TRUTH))

    _, out, _ = await lab.farm(
        "submit",
        "--benchmark",
        "ic",
        "--boards",
        "all",
        "--mode",
        "accuracy,performance",
        "--options",
        QUICK,
        "--wait",
        "--json",
    )
    submitted = json.loads(out)
    assert lab.ingest is not None and "concurrency=4" in lab.ingest.output()
    # The kws board holds other firmware and has an ic01 image: it is flashed, not skipped.
    assert len(submitted["runs"]) == 8 and submitted["skipped"] == []
    _, out, _ = await lab.farm("show", submitted["sweep"], "--json")
    report = json.loads(out)
    runs = {(r["board"], r["mode"]): r for r in report["runs"]}
    assert all(r["state"] == "completed" for r in runs.values()), runs
    for board, (per_s, top1) in IC_TRUTH.items():
        # Accuracy, in percent as the official runner prints it.
        assert runs[(board, "accuracy")]["summary"]["top1"] == pytest.approx(top1), board
        # Performance: a fixed inference time. As on the reference port, each window also
        # holds the print of its first lap line (its wire time at 115200 baud), so window k's
        # throughput is N / (N * t + print_k): the median over the five must match exactly.
        summary = runs[(board, "performance")]["summary"]
        lines = (Path(summary["artifacts"]) / "samples.jsonl").read_text().splitlines()
        expected = []
        for record in map(json.loads, lines):
            printing = round(wire_time(len(f"m-lap-us-{record['start_us']}\r\n"), 115200) * 1e6)
            elapsed_us = record["count"] * round(per_s * 1e6) + printing
            assert record["elapsed_us"] == elapsed_us, board
            expected.append(record["count"] / (elapsed_us / 1e6))
        assert summary["throughput_ips"] == pytest.approx(statistics.median(expected), rel=1e-9)
        assert summary["latency_ms"] == pytest.approx(1000 / statistics.median(expected))
    for run in runs.values():
        folder = Path(run["summary"]["artifacts"])
        assert (folder / "results.txt").is_file() and (folder / "samples.jsonl").is_file()
        assert folder.parts[-3:] == (run["board"], "ic01", run["mode"])
    # The table is printed for humans too, in 80 columns off a terminal; markdown unwrapped.
    _, table, _ = await lab.farm("show", submitted["sweep"])
    assert max(len(line) for line in table.splitlines()) <= 80, table
    assert "BELOW" in table and "supplemental" in table
    _, markdown, _ = await lab.farm("show", submitted["sweep"], "--format", "markdown")
    assert "70.0% (85.0%) BELOW" in markdown and "90.0% (85.0%) ok" in markdown
    # csv: one row per run, each saying why it is not valid (a 20-row subset).
    _, text, _ = await lab.farm("show", submitted["sweep"], "--format", "csv")
    rows = list(csv.DictReader(io.StringIO(text)))
    assert sorted(r["run"] for r in rows) == sorted(r["id"] for r in report["runs"])
    for row in rows:
        assert row["valid"] == "False" and row["why_not_valid"], row

    # Never two runs at once on one board, seen by the boards themselves: every command on a
    # DUT's line waited for the reply to the one before.
    for agent, board in [("pi-a", "ic-1"), ("pi-a", "ic-2"), ("pi-b", "kws-3"), ("pi-b", "ic-4")]:
        transcript = lab.dir / f"sim-{agent}" / board / "dut.transcript.jsonl"
        text = transcript.read_text()
        assert "infer 1 0%" in text and "db load" in text  # the runs went through it
        assert interleaved_commands(transcript) == [], board
    # Each board's runs follow one another in Redis too.
    for board in IC_TRUTH:
        spans = sorted(
            (
                float(lab.redis.hget(f"farm:run:{r['id']}", "dispatched_at")),
                float(lab.redis.hget(f"farm:run:{r['id']}", "finished_at")),
            )
            for r in report["runs"]
            if r["board"] == board
        )
        assert all(a[1] <= b[0] for a, b in itertools.pairwise(spans)), spans
    # ... and the chain, not the lease, kept them apart: no worker picked up a board's next
    # job before its previous one ended (a worker waiting on a lease would show overlap).
    rq_client = redis.Redis.from_url(REDIS_URL)
    for board in IC_TRUTH:
        jobs = sorted(
            (fetch_job(f"run-{r['id']}", rq_client) for r in report["runs"] if r["board"] == board),
            key=lambda job: job.started_at,
        )
        assert all(a.ended_at <= b.started_at for a, b in itertools.pairwise(jobs)), board
    # farm status shows the boards and the queues.
    _, out, _ = await lab.farm("status", "--json")
    status = json.loads(out)
    assert set(status["boards"]) == set(IC_TRUTH)
    assert all(isinstance(q, int) for q in status["queues"].values())
    _, out, _ = await lab.farm("sweeps", "--format", "json")
    assert isinstance(json.loads(out)[0]["spec"], dict)
    assert status["boards"]["kws-3"]["model"] == "ic01"  # it was flashed


async def test_unknown_names_and_empty_matches_are_explained(lab: ControllerLab) -> None:
    await lab.add_agent("pi-a", "- {id: ic-1, model: ic01}\n")
    await lab.start_controller(workers=1)
    await lab.boards_ready(["ic-1"])
    code, _, errs = await lab.farm("submit", "--benchmark", "nope", check=False)
    assert code == 2 and "kws01" in errs
    assert " ".join(errs.split()).count("kws01 (kws)") == 1  # the valid names, once
    code, _, errs = await lab.farm("submit", "--benchmark", "ic", "--boards", "al", check=False)
    assert code == 2 and "did you mean 'all'?" in " ".join(errs.split())
    code, _, errs = await lab.farm("submit", "--benchmark", "ic", "--boards", "ic-9", check=False)
    assert code == 2 and "unknown board(s) ic-9" in errs and "ic-1" in errs
    code, _, errs = await lab.farm("submit", "--benchmark", "ic", "--mode", "energy", check=False)
    assert code == 2 and "no interface board and energy monitor" in errs
    code, _, errs = await lab.farm("status", "--redis", "redis://127.0.0.1:1/0", check=False)
    assert code == 2 and "redis://127.0.0.1:1/0" in errs and "Traceback" not in errs


async def accuracy_run_under_way(
    lab: ControllerLab, samples: int = 60, median_s: float = 0.002, stored: int = 15
) -> str:
    """One worker running a kws01 accuracy run over ``samples`` files, at least ``stored`` of
    them stored."""
    await lab.add_agent(
        "pi-a",
        f"- {{id: kws-1, model: kws01, latency: {{median_s: {median_s}}}}}\n",
        dataset_limit=samples,
    )
    await lab.start_controller(workers=1)
    await lab.boards_ready(["kws-1"])
    _, out, _ = await lab.farm("submit", "--benchmark", "kws", "--mode", "accuracy", "--json")
    run_id = json.loads(out)["runs"][0]
    await wait_until(
        lambda: lab.redis.hlen(f"farm:run:{run_id}:samples") >= stored, 60, "samples stored"
    )
    return run_id


async def ended(lab: ControllerLab, run_id: str, within: float) -> dict[str, str]:
    """Wait until the run completed or failed; its hash."""
    await wait_until(
        lambda: lab.redis.hget(f"farm:run:{run_id}", "state") in ("completed", "failed"),
        within,
        "the run ends",
    )
    return lab.redis.hgetall(f"farm:run:{run_id}")


async def followed_on(lab: ControllerLab, run_id: str) -> dict[str, str]:
    """Wait for the run to end; check it completed in its one dispatch with every sample (a
    running run holds no worker: losing one costs it nothing); its hash."""
    run = await ended(lab, run_id, 120)
    assert run["state"] == "completed", run
    assert run["attempts"] == "1" and json.loads(run["reasons"]) == [], run
    assert json.loads(run["summary"])["samples"] == 60
    done = json.loads(run["final"])
    assert (done["count"], done["skipped"]) == (60, 0)
    assert lab.redis.hlen(f"farm:run:{run_id}:samples") == 60
    return run


async def test_a_killed_supervisor_costs_a_running_run_nothing(lab: ControllerLab) -> None:
    """kill -9 of `farm controller worker` (supervisor, follower, workers) while a run goes on:
    the board goes on with it, and the next supervisor's follower takes it up where it is."""
    run_id = await accuracy_run_under_way(lab)
    await lab.workers[0].kill_tree()
    assert lab.redis.hget(f"farm:run:{run_id}", "phase") == "following"
    await lab.add_workers(1)
    await followed_on(lab, run_id)


async def test_a_pool_restarts_a_killed_worker_and_the_run_goes_on(
    lab: ControllerLab,
) -> None:
    """The worker dies, the process that forked it stays: it forks a new worker; the run,
    which no worker holds while the board runs it, goes on without a second dispatch."""
    run_id = await accuracy_run_under_way(lab)
    pool = lab.workers[0].process
    assert pool is not None
    below = descendants(pool.pid)
    assert below  # the worker (and RQ's scheduler process)
    for pid in below:
        os.kill(pid, signal.SIGKILL)
    await followed_on(lab, run_id)
    assert pool.returncode is None  # the same supervisor all along
    log = lab.workers[0].output()
    assert "event=worker_died" in log and "event=run_reaped" not in log
    await wait_until(lambda: bool(descendants(pool.pid)), 30, "a new worker")
    assert set(descendants(pool.pid)).isdisjoint(below)


async def test_a_stop_mid_run_leaves_the_run_to_the_next_supervisor(
    lab: ControllerLab,
) -> None:
    """One SIGTERM while a run goes on: the workers are idle and stop at once (nothing to
    hand back), the run stays active at its agent, and a supervisor started afterwards
    follows it to the end."""
    run_id = await accuracy_run_under_way(lab)
    pool = lab.workers[0]
    assert pool.process is not None
    below = descendants(pool.process.pid)
    assert await pool.signal(signal.SIGTERM) == 0
    log = pool.output()
    assert "event=worker_cold_shutdown" not in log and "event=worker_killed" not in log
    assert not alive(below)
    run = lab.redis.hgetall(f"farm:run:{run_id}")
    assert run["state"] not in ("completed", "failed", "cancelled"), run
    assert lab.redis.sismember("farm:runs:active", run_id)
    await lab.add_workers(1)
    await followed_on(lab, run_id)


def cancel_acked(lab: ControllerLab, command_id: str) -> bool:
    """Whether an agent acknowledged the command ``command_id`` as done."""
    for agent in lab.agents:
        for raw in lab.redis.lrange(f"farm:agent:{agent}:acks", 0, -1):
            ack = json.loads(raw)
            if ack.get("command") == command_id and ack.get("outcome") == "done":
                return True
    return False


async def test_an_agent_lost_mid_run_fails_its_run_and_the_others_finish(
    lab: ControllerLab,
) -> None:
    await lab.add_agent(
        "pi-a", "- {id: kws-1, model: kws01, latency: {median_s: 0.002}}\n", dataset_limit=60
    )
    await lab.add_agent(
        "pi-b", "- {id: kws-2, model: kws01, latency: {median_s: 0.002}}\n", dataset_limit=60
    )
    await lab.start_controller(workers=2)
    await lab.boards_ready(["kws-1", "kws-2"])
    _, out, _ = await lab.farm("submit", "--benchmark", "kws", "--mode", "accuracy", "--json")
    runs = json.loads(out)["runs"]
    by_board = {lab.redis.hget(f"farm:run:{r}", "board"): r for r in runs}
    await wait_until(
        lambda: lab.redis.hlen(f"farm:run:{by_board['kws-2']}:samples") >= 5, 60, "running"
    )
    await lab.agents["pi-b"].signal(signal.SIGKILL)
    await wait_until(
        lambda: all(
            lab.redis.hget(f"farm:run:{r}", "state") in ("completed", "failed") for r in runs
        ),
        120,
        "both runs end",
    )
    lost = lab.redis.hgetall(f"farm:run:{by_board['kws-2']}")
    assert lost["state"] == "failed" and "agent pi-b went offline" in lost["reason"], lost
    assert lab.redis.hget(f"farm:run:{by_board['kws-1']}", "state") == "completed"


async def test_cancel_a_sweep_stops_its_running_and_queued_runs(lab: ControllerLab) -> None:
    await lab.add_agent("pi-a", "- {id: kws-1, model: kws01, latency: {median_s: 0.002}}\n")
    await lab.start_controller(workers=1)
    await lab.boards_ready(["kws-1"])
    long_latency = json.dumps({"min_queries": 100000, "min_duration_s": 600})
    _, out, _ = await lab.farm(
        "submit",
        "--benchmark",
        "kws",
        "--mode",
        "latency,accuracy",
        "--options",
        long_latency,
        "--json",
    )
    submitted = json.loads(out)
    first, second = submitted["runs"]
    await wait_until(lambda: lab.redis.hlen(f"farm:run:{first}:samples") > 20, 60, "running")
    _, out, _ = await lab.farm("cancel", submitted["sweep"], "--json")
    assert sorted(json.loads(out)["cancelled"]) == sorted([first, second])
    await wait_until(
        lambda: lab.redis.hget(f"farm:sweep:{submitted['sweep']}", "state") == "finished",
        60,
        "the sweep ends",
    )
    assert lab.redis.hget(f"farm:run:{first}", "state") == "cancelled"
    assert lab.redis.hget(f"farm:run:{second}", "state") == "cancelled"
    # The agent confirmed: the board is idle and healthy again.
    await lab.boards_ready(["kws-1"])


async def test_a_run_whose_final_event_is_lost_is_dispatched_again_at_its_deadline(
    lab: ControllerLab,
) -> None:
    """The broker took the agent's `done` while ingest was down and died before ingest came
    back (killed, nothing saved since): the agent is online and idle, and no final event will
    ever come. The run's deadline, fixed at dispatch from the wire-time model and moved only
    by samples stored, runs out; the run is dispatched again, resumes from the samples stored
    and completes within a bound derived from the configuration."""
    setup_s = 5.0
    lab.extra_env["FARM_SETUP_ALLOWANCE_S"] = str(setup_s)
    await lab.add_agent(
        "pi-a", "- {id: kws-1, model: kws01, latency: {median_s: 0.002}}\n", dataset_limit=30
    )
    await lab.start_controller(workers=1)
    await lab.boards_ready(["kws-1"])
    observer = Observer(lab.broker.url)
    await observer.start()
    try:
        # The controller sizes its estimate from the limit (the agent's 30-file dataset is not
        # the full one the spec describes).
        _, out, _ = await lab.farm(
            "submit", "--benchmark", "kws", "--mode", "accuracy", "--limit", "30", "--json"
        )
        run_id = json.loads(out)["runs"][0]
        await wait_until(
            lambda: lab.redis.hlen(f"farm:run:{run_id}:samples") >= 10, 60, "samples stored"
        )
        # Ingest gone first, so nothing waits in its socket: what the broker took, it holds.
        assert lab.ingest is not None
        await lab.ingest.kill_tree()
        await wait_until(lambda: observer.event(run_id, "done"), 60, "the agent's done")
        # Once a heartbeat says nothing is left to send, the broker has acknowledged it all.
        beats = len(observer.heartbeats)
        await wait_until(
            lambda: any(h["backlog"] == 0 for h in observer.heartbeats[beats:]), 30, "no backlog"
        )
        broker = lab.broker.process
        assert broker is not None
        broker.kill()
        await broker.wait()
        await lab.broker.start()
        await lab.ingest.start()
    finally:
        await observer.stop()
    stored_before = lab.redis.hlen(f"farm:run:{run_id}:samples")
    assert stored_before < 30  # the rest went down with the broker

    # Each dispatch ends by its deadline: twice the estimate (the stored samples only ever
    # bring it closer), and the second one resumes.
    estimate = (
        estimate_run_s(get_benchmark("kws"), "accuracy", RunOptions(limit=30))
        - SETUP_ALLOWANCE_S
        + setup_s
    )
    created = float(lab.redis.hget(f"farm:run:{run_id}", "created"))
    bound = 2 * (2 * estimate) + 15  # + taking the lease, scoring, polls
    await wait_until(
        lambda: lab.redis.hget(f"farm:run:{run_id}", "state") in ("completed", "failed"),
        created + bound - time.time(),
        "the run ends",
    )
    run = lab.redis.hgetall(f"farm:run:{run_id}")
    assert run["state"] == "completed", run
    assert run["attempts"] == "2" and "no result within" in run["reasons"], run
    assert json.loads(run["summary"])["samples"] == 30
    done = json.loads(run["final"])
    assert done["attempt"] == 2 and done["skipped"] >= stored_before
    # The resumed attempt ran only what was missing; the run's total is still the run's.
    assert run["total"] == "30" and run["done"] == "30"


async def test_a_run_dispatched_while_the_broker_is_down_goes_out_when_it_returns(
    lab: ControllerLab,
) -> None:
    """The broker is stopped (as a service manager does) between the submit and the run's
    dispatch: the run waits, its attempt counted once (its agent is offline too, and a run
    sent to it now would be judged offline at once), and once both are back the same command
    goes out and the run completes in attempt 1."""
    await lab.add_agent(
        "pi-a", "- {id: kws-1, model: kws01, latency: {median_s: 0.002}}\n", dataset_limit=20
    )
    await lab.start_controller(workers=0)
    await lab.boards_ready(["kws-1"])
    _, out, _ = await lab.farm("submit", "--benchmark", "kws", "--mode", "accuracy", "--json")
    run_id = json.loads(out)["runs"][0]
    await lab.broker.stop()
    await lab.add_workers(1)
    await wait_until(
        lambda: "run_dispatch_deferred" in lab.workers[0].output(), 60, "a refused dispatch"
    )
    await asyncio.sleep(2 * BROKER_RETRY_S)  # longer than the follower waits between sends
    run = lab.redis.hgetall(f"farm:run:{run_id}")
    assert run["state"] == "dispatched" and run["attempts"] == "1", run
    assert f"broker {lab.broker.url}" in run["reason"], run
    await lab.broker.start()

    run = await ended(lab, run_id, 120)
    assert run["state"] == "completed" and run["attempts"] == "1", run
    assert json.loads(run["summary"])["samples"] == 20
    assert json.loads(run["final"])["attempt"] == 1


async def test_a_late_done_of_an_earlier_attempt_judges_nothing_and_deletes_nothing(
    lab: ControllerLab,
) -> None:
    """The run's next attempt reaches the agent while the board still runs the first one (the
    agent answers `duplicate`): what a dispatch given up while its board goes on leads to (a
    deadline passed and its cancel lost). The first attempt's `done` (all 200 samples) then
    arrives during the second: it is not the second's to judge. The run goes on from what is
    stored, no sample is deleted or stored twice, and it completes."""
    run_id = await accuracy_run_under_way(lab, samples=200, median_s=0.1, stored=10)
    await lab.workers[0].kill_tree()  # nobody follows the first attempt now
    settings = Settings(lab.redis_url, lab.broker.url, lab.dir / "results")
    client = redis.Redis.from_url(lab.redis_url, decode_responses=True)
    await asyncio.to_thread(RunJob(client, settings, run_id).dispatch)  # attempt 2
    await lab.add_workers(1)
    run = await ended(lab, run_id, 150)
    # The scenario: the second attempt reached the board while it still ran the first.
    acks = [json.loads(a) for a in lab.redis.lrange("farm:agent:pi-a:acks", 0, -1)]
    assert any(a.get("command") == f"{run_id}-a2" and a["outcome"] == "duplicate" for a in acks), (
        acks
    )
    assert run["state"] == "completed", run
    assert "digest" not in run["reasons"], run
    assert json.loads(run["summary"])["samples"] == 200
    # Every sample was stored once: none deleted and run again.
    assert lab.redis.hget("farm:ingest:counters", "accepted_samples") == "200"
    assert run["total"] == "200"
