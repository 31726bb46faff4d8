"""A sweep under fire: a real farm (Mosquitto, Redis, `farm sim` boards, agents, ingest, RQ
workers) runs an accuracy and performance sweep while malformed and forged messages
(tests/fuzz/fuzzing.py) are published, as fast as the broker takes them, to ingest's topics
and the agents' command topics. Nothing may crash, every message must be counted by the
reason it was written for, and the sweep's stored samples must be exactly those of an
undisturbed sweep of the same seeded boards run just before: not one forged, lost or
duplicated.

The default suite fuzzes 500 messages; ``python -m pytest -m fuzz`` fuzzes 10,000."""

from __future__ import annotations

import asyncio
import json
import os
import random
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from controller import keys
from farm.messages import sample_digest
from tests.fuzz.fuzzing import INGEST, Fuzz, Pools, World, draw_pools, fuzz_plan, live_forgery
from tests.integration.controller_lab import ControllerLab, start_controller_lab
from tests.integration.farm_procs import host_port, wait_until

#: Short windows, as in the controller's end-to-end tests.
QUICK = json.dumps({"min_window_s": 0.5, "calibration_s": 0.2})
#: Fields of a stored sample that are clock readings: they differ from one sweep to the next.
TIMING = frozenset({"start_us", "end_us", "elapsed_us", "latency_us", "wall_s"})
#: QoS 1 publishes in flight at once.
WINDOW = 100
#: How long a sweep may take, fuzzed, on a loaded 2-core machine.
SWEEP_S = 900


#: ic01 boards with a fixed inference time and a known accuracy: (quality, seconds).
BOARDS = {"ic-1": (0.7, 0.004), "ic-2": (0.9, 0.006), "ic-3": (0.8, 0.005), "ic-4": (0.6, 0.003)}


def sim_boards(boards: list[str]) -> str:
    """The `farm sim` config of ``boards`` (of :data:`BOARDS`)."""
    return "".join(
        f"- {{id: {b}, model: ic01, quality: {BOARDS[b][0]}, "
        f"latency: {{median_s: {BOARDS[b][1]}, spread: 0}}}}\n"
        for b in boards
    )


async def sweep(lab: ControllerLab, *, wait: bool) -> tuple[str, list[str]]:
    """Submit ic01 on every board, accuracy and performance; the sweep and its runs."""
    args = ["submit", "--benchmark", "ic", "--boards", "all", "--mode", "accuracy,performance"]
    _, out, _ = await lab.farm(*args, "--options", QUICK, "--json", *(["--wait"] if wait else []))
    submitted = json.loads(out)
    assert submitted["skipped"] == [], submitted
    return submitted["sweep"], submitted["runs"]


def runs_of(lab: ControllerLab, runs: list[str]) -> dict[str, dict[str, str]]:
    return {run: lab.redis.hgetall(keys.run(run)) for run in runs}


def stored(lab: ControllerLab, run: str) -> dict[int, dict[str, Any]]:
    return {int(k): json.loads(v) for k, v in lab.redis.hgetall(keys.run_samples(run)).items()}


def untimed(samples: dict[int, dict[str, Any]]) -> dict[int, dict[str, Any]]:
    return {seq: {k: v for k, v in s.items() if k not in TIMING} for seq, s in samples.items()}


def fate_counters(counters: dict[str, str]) -> Counter[str]:
    """Ingest's counters a rejected (or otherwise unused) message lands in."""
    return Counter(
        {
            name: int(value)
            for name, value in counters.items()
            if name.startswith(("rejected_", "cleared_")) or name == "conflicting_samples"
        }
    )


def agent_fates(lab: ControllerLab, agent: str) -> Counter[str]:
    """The agent's counters of commands it did not carry out, from its last heartbeat."""
    beat = lab.redis.hget(keys.agent(agent), "heartbeat")
    counters = json.loads(beat)["counters"] if beat else {}
    return Counter(
        {
            name: value
            for name, value in counters.items()
            if name.startswith("commands_") and name != "commands_accepted"
        }
    )


def check_counts(got: Counter[str], sent: list[Fuzz], who: str) -> None:
    """``got`` (counter increases) account for every message in ``sent``: the total exactly,
    each counter between the messages written only for it and those that may land in it."""
    assert sum(got.values()) == len(sent), (who, len(sent), dict(got))
    exact = Counter(next(iter(m.fates)) for m in sent if len(m.fates) == 1)
    either = Counter(m.fates for m in sent if len(m.fates) > 1)
    for name in set(got) | set(exact) | {f for fates in either for f in fates}:
        high = exact[name] + sum(n for fates, n in either.items() if name in fates)
        assert exact[name] <= got[name] <= high, (who, name, got[name], exact[name], high)


async def publish(lab: ControllerLab, world: World, pools: Pools) -> tuple[list[Fuzz], int]:
    """Publish the plan at QoS 1, :data:`WINDOW` messages in flight; what was sent, and how
    many live forgeries found no run far enough along (none sent for those)."""
    host, port = host_port(lab.broker.url)
    rng = random.Random(pools.at)
    sent: list[Fuzz] = []
    skipped = 0
    slots = asyncio.Semaphore(WINDOW)
    async with aiomqtt.Client(host, port, identifier="fuzzer") as client, asyncio.TaskGroup() as tg:
        client.pending_calls_threshold = 10 * WINDOW

        async def one(message: Fuzz) -> None:
            try:
                await client.publish(message.topic, message.payload, qos=1, timeout=60)
            finally:
                slots.release()

        for planned in fuzz_plan(world, pools):
            message = planned or live_forgery(world, lab.redis, rng)
            if message is None:
                skipped += 1
                continue
            await slots.acquire()
            sent.append(message)
            tg.create_task(one(message))
    return sent, skipped


async def fuzz_a_sweep(tmp_path: Path, ids: dict[str, list[str]], count: int) -> dict[str, Any]:
    """Run the scenario (see the module docstring); the figures measured."""
    pools = draw_pools(count, at=count)
    lab = await start_controller_lab(tmp_path)
    try:
        for agent, boards in ids.items():
            await lab.add_agent(agent, sim_boards(boards))
        await lab.start_controller(workers=2)
        await lab.boards_ready([b for bs in ids.values() for b in bs])

        # The reference: the same sweep, undisturbed. Its runs, closed, are targets too.
        _, reference_runs = await sweep(lab, wait=True)
        reference = runs_of(lab, reference_runs)
        assert all(r["state"] == "completed" for r in reference.values()), reference
        # An undisturbed sweep is refused nothing: whatever is counted below is the fuzz's.
        assert not fate_counters(lab.redis.hgetall(keys.INGEST_COUNTERS))
        world = World(
            boards=ids,
            started={
                a: json.loads(lab.redis.hget(keys.agent(a), "status"))["started"] for a in ids
            },
            closed={run: (r["agent"], r["board"], r["command"]) for run, r in reference.items()},
        )
        _, runs = await sweep(lab, wait=False)
        world.live = {
            run: (world.owner(r["board"]) or "", r["board"])
            for run, r in runs_of(lab, runs).items()
        }
        # Live forgeries need a run with samples stored (to send one again, altered).
        await wait_until(
            lambda: any(lab.redis.hlen(keys.run_samples(run)) for run in runs),
            120,
            "a run of the fuzzed sweep storing samples",
        )
        began = time.monotonic()
        sent, skipped = await publish(lab, world, pools)
        assert len(sent) + skipped == count and skipped < count // 100, skipped
        duration = time.monotonic() - began
        in_progress = sum(r.get("state") != "completed" for r in runs_of(lab, runs).values())
        # The fuzz hit a live sweep: some run was still going when the last message left.
        assert in_progress > 0, "the sweep ended before the fuzz did: nothing was under fire"

        await wait_until(
            lambda: all(r["state"] in keys.TERMINAL for r in runs_of(lab, runs).values()),
            SWEEP_S,
            "the fuzzed sweep's runs to end",
        )
        to_ingest = [m for m in sent if m.to == INGEST]
        await wait_until(
            lambda: (
                sum(fate_counters(lab.redis.hgetall(keys.INGEST_COUNTERS)).values())
                >= len(to_ingest)
            ),
            120,
            f"ingest to count {len(to_ingest)} messages",
        )
        by_agent = {a: [m for m in sent if m.to == a] for a in ids}
        for agent, messages in by_agent.items():
            # Read from the agent's heartbeat (every 10 s).
            await wait_until(
                lambda a=agent, m=messages: sum(agent_fates(lab, a).values()) >= len(m),
                60,
                f"agent {agent} to count {len(messages)} commands",
            )
        await asyncio.sleep(1)  # nothing more comes

        got = fate_counters(lab.redis.hgetall(keys.INGEST_COUNTERS))
        check_counts(got, to_ingest, INGEST)
        assert "rejected_internal" not in got
        agents_got = {agent: agent_fates(lab, agent) for agent in ids}
        for agent, messages in by_agent.items():
            check_counts(agents_got[agent], messages, agent)
        for proc in [lab.ingest, *lab.agents.values()]:
            assert proc is not None and proc.process is not None
            assert proc.process.returncode is None, proc.output()[-3000:]
            assert "Traceback" not in proc.output(), proc.output()[-3000:]

        # Every run completed, with exactly the samples of its undisturbed twin.
        fuzzed = runs_of(lab, runs)
        assert all(r["state"] == "completed" for r in fuzzed.values()), lab.logs()
        twins = {(r["board"], r["mode"]): run for run, r in reference.items()}
        for run, r in fuzzed.items():
            samples = stored(lab, run)
            assert untimed(samples) == untimed(stored(lab, twins[(r["board"], r["mode"])])), run
            final = json.loads(r["final"])
            assert final["event"] == "done" and final["count"] == len(samples), final
            assert final["digest"] == sample_digest(samples.values()), run
        return {
            "messages": len(sent),
            "live_forgeries_skipped": skipped,
            "to_ingest": len(to_ingest),
            "to_agents": {a: len(m) for a, m in by_agent.items()},
            "publish_s": round(duration, 1),
            "rate_per_s": round(len(sent) / duration),
            "runs_in_progress_when_done": in_progress,
            "ingest": dict(sorted(got.items())),
            "agents": {a: dict(sorted(c.items())) for a, c in agents_got.items()},
        }
    finally:
        await lab.stop()


def report(figures: dict[str, Any]) -> None:
    """Append the figures to the file ``FARM_FUZZ_REPORT`` names, if any (for bench/README.md)."""
    path = os.environ.get("FARM_FUZZ_REPORT")
    if path:
        with open(path, "a") as out:
            out.write(json.dumps(figures) + "\n")


async def test_a_sweep_fuzzed_with_500_messages_counts_each_and_stores_no_forgery(
    tmp_path: Path,
) -> None:
    report(await fuzz_a_sweep(tmp_path, {"pi-a": ["ic-1"], "pi-b": ["ic-3"]}, 500))


@pytest.mark.fuzz
async def test_a_sweep_fuzzed_with_10000_messages_counts_each_and_stores_no_forgery(
    tmp_path: Path,
) -> None:
    ids = {"pi-a": ["ic-1", "ic-2"], "pi-b": ["ic-3", "ic-4"]}
    report(await fuzz_a_sweep(tmp_path, ids, 10_000))
