"""Chaos: one fault injected into a running sweep (tests/chaos/sweep.py), which must still end
with every run completed, 0 samples lost or duplicated and the numbers of the undisturbed
sweep, the runs the fault hit recovering within a bound computed from the configuration.
Run them with ``python -m pytest -m chaos``; the default suite keeps the killed ingest.

Each bound is the recovery the configuration promises (named constants of the code it
comes from) plus ``LATE_S`` (tests/integration/deadlines.py: how late a timer may fire on a
loaded machine) and, where a process is restarted, ``START_S`` (sweep.py)."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Callable

import pytest
import redis
from rq.job import Job

from controller import keys
from controller.jobs import POLL_S
from controller.reaper import INTERVAL_S
from controller.store import LEASE_TTL_S
from controller.worker_pool import TICK_S
from farm.messages import (
    AgentStatus,
    BoardStatus,
    agent_status_topic,
    board_status_topic,
)
from farm.protocol.dut import SILENT_PHASE_LIMIT_S
from farm.sim.faults import FaultSpec
from tests.chaos.conftest import FarmFactory
from tests.chaos.sweep import (
    AGENTS,
    MODES,
    START_S,
    RunResult,
    board_faulted_sweep,
    deadline_s,
    dispatched_again,
    fault_mid_sweep,
    reconnect_by,
    stored_more,
)
from tests.integration.deadlines import LATE_S
from tests.integration.farm_procs import publish_retained

Reference = dict[tuple[str, str], RunResult]
Record = Callable[[float, float], None]

#: The agent's default batching delay (agent/config.py ``batch_delay_s``): a sample stored
#: after a reconnect waits at most this for its batch to go out.
BATCH_DELAY_S = 0.1
#: How long the broker is down in the outage scenarios.
OUTAGE_S = 10.0
#: Both ingest and the agent reconnect to the broker with ``Backoff()``: 0.5 s doubling,
#: capped at 30 s (farm/backoff.py, controller/ingest/service.py, agent/service.py).
BROKER_BACKOFF = (0.5, 30.0)
#: Ingest retries a message while Redis is away with ``Backoff(0.1, 5.0)``
#: (controller/ingest/service.py ``_process``).
REDIS_BACKOFF = (0.1, 5.0)
PI_A = [board for board, _ in AGENTS["pi-a"]]


async def test_a_killed_ingest_restarted_mid_sweep_changes_nothing(
    farm: FarmFactory, undisturbed: Reference, record_recovery: Record
) -> None:
    """kill -9 of ingest, restarted at once as its service manager would: the broker kept
    its session and what the agents published meanwhile, and hands it over."""
    lab = await farm()

    assert lab.ingest is not None
    ingest = lab.ingest

    async def kill(runs: list[str]) -> None:
        await ingest.kill_tree()

    took = await fault_mid_sweep(
        lab, undisturbed, inject=kill, repair=ingest.start, recovered=stored_more, bound_s=60
    )
    # Ingest starts and subscribes at its first attempt; the broker delivers its session's
    # queue at once; the next batch waits at most a batching delay; a poll sees it stored.
    bound = START_S + BATCH_DELAY_S + POLL_S + LATE_S
    record_recovery(bound, took)
    assert took <= bound


@pytest.mark.chaos
async def test_a_killed_agent_restarted_mid_sweep_resumes_its_runs(
    farm: FarmFactory, undisturbed: Reference, record_recovery: Record
) -> None:
    """kill -9 of an agent (both its boards running), restarted at once: it reports its runs
    interrupted and their jobs dispatch them again, resuming from the samples stored, well
    within the controller's grace for an offline agent."""
    lab = await farm()

    agent = lab.agents["pi-a"]

    async def kill(runs: list[str]) -> None:
        await agent.signal(signal.SIGKILL)

    took = await fault_mid_sweep(
        lab,
        undisturbed,
        inject=kill,
        repair=agent.start,
        recovered=dispatched_again,
        bound_s=60,
        boards=PI_A,
    )
    # The agent starts and publishes its journal's runs as interrupted; the job sees the
    # final event at its next poll and dispatches again at once.
    bound = START_S + 2 * POLL_S + LATE_S
    record_recovery(bound, took)
    assert took <= bound


@pytest.mark.chaos
async def test_a_killed_worker_is_replaced_and_its_run_handed_back(
    farm: FarmFactory, undisturbed: Reference, record_recovery: Record
) -> None:
    """kill -9 of the RQ worker running a run (its board goes on with it): the supervisor
    forks a new worker and its reaper hands the run back once the board's lease expired."""
    lab = await farm()

    async def kill_its_worker(runs: list[str]) -> list[str]:
        rq_client = redis.Redis.from_url(lab.redis_url)
        job = Job.fetch(lab.redis.hget(keys.run(runs[0]), "job"), connection=rq_client)
        pid = int(rq_client.hget(f"rq:worker:{job.worker_name}", "pid"))
        rq_client.close()
        os.kill(pid, signal.SIGKILL)
        return runs[:1]

    bound = LEASE_TTL_S + 2 * INTERVAL_S + TICK_S + POLL_S + LATE_S
    took = await fault_mid_sweep(
        lab, undisturbed, inject=kill_its_worker, recovered=dispatched_again, bound_s=bound
    )
    # The lease lapses at most one TTL after the worker's last renewal; the reaper looks
    # every INTERVAL_S (and leaves a job started less than a TTL ago, which this one was
    # not); the supervisor's tick forks the new worker, which takes the requeued job and
    # dispatches it.
    record_recovery(bound, took)
    assert took <= bound


@pytest.mark.chaos
async def test_a_killed_worker_supervisor_restarted_loses_no_run(
    farm: FarmFactory, undisturbed: Reference, record_recovery: Record
) -> None:
    """kill -9 of `farm controller worker`, restarted: its workers get the parent-death
    signal, SIGTERM, and shut down warm, following their runs to the end; the new
    supervisor's workers (renamed after one clash with the old names still registered) take
    the boards' next runs."""
    lab = await farm()
    supervisor = lab.workers[0]

    async def kill(runs: list[str]) -> None:
        await supervisor.signal(signal.SIGKILL)

    # An orphaned worker follows its run to the end, at the latest its deadline (SLACK x the
    # estimate, controller/deadline.py); a run it lost would be handed back by the new
    # supervisor's reaper once the lease lapsed (shorter: START_S + LEASE_TTL_S + 2 x
    # INTERVAL_S).
    deadline = max(deadline_s(mode) for mode in MODES)
    bound = max(deadline, START_S + LEASE_TTL_S + 2 * INTERVAL_S) + POLL_S + LATE_S
    took = await fault_mid_sweep(
        lab,
        undisturbed,
        inject=kill,
        repair=supervisor.start,
        recovered=dispatched_again,
        bound_s=bound,
    )
    record_recovery(bound, took)
    assert took <= bound
    assert "event=worker_pool_started" in supervisor.output()


def broker_back_by() -> float:
    """Both clients reconnect after the outage (:func:`reconnect_by`), the agent's journal
    sends what it kept at once, the next batch within a batching delay, a poll sees it."""
    return reconnect_by(OUTAGE_S, *BROKER_BACKOFF) + BATCH_DELAY_S + POLL_S + LATE_S


@pytest.mark.chaos
async def test_a_broker_stopped_for_10_s_with_persistence_loses_nothing(
    farm: FarmFactory, undisturbed: Reference, record_recovery: Record
) -> None:
    lab = await farm()

    async def outage(runs: list[str]) -> None:
        await lab.broker.stop()
        await asyncio.sleep(OUTAGE_S)

    bound = broker_back_by()
    took = await fault_mid_sweep(
        lab,
        undisturbed,
        inject=outage,
        repair=lab.broker.start,
        recovered=stored_more,
        bound_s=bound,
    )
    record_recovery(bound, took)
    assert took <= bound


@pytest.mark.chaos
async def test_a_broker_stopped_for_10_s_without_persistence_loses_nothing(
    farm: FarmFactory, undisturbed: Reference, record_recovery: Record
) -> None:
    """The broker forgets every session and queued message: what it held for ingest is
    gone. A run missing samples is dispatched again when the agent's done says so, one whose
    final event was lost at its deadline; each resumes from what is stored."""
    lab = await farm(persistence=False)

    async def outage(runs: list[str]) -> None:
        await lab.broker.stop()
        await asyncio.sleep(OUTAGE_S)

    # Progress resumes as with persistence, unless the rest of a run was lost with the
    # broker: then its dispatch is given up at its deadline (controller/deadline.py: SLACK x
    # the estimate, moved only by samples stored) and dispatched again.
    deadline = max(deadline_s(mode) for mode in MODES)
    bound = max(broker_back_by(), deadline + POLL_S + LATE_S)
    took = await fault_mid_sweep(
        lab,
        undisturbed,
        inject=outage,
        repair=lab.broker.start,
        recovered=lambda a, b: stored_more(a, b) or dispatched_again(a, b),
        bound_s=bound,
    )
    record_recovery(bound, took)
    assert took <= bound


@pytest.mark.chaos
async def test_a_redis_killed_and_restarted_loses_nothing(
    farm: FarmFactory, undisturbed: Reference, record_recovery: Record
) -> None:
    """Redis (append-only file, fsync always) SIGKILLed and started again at once: ingest
    holds its messages unacknowledged and retries, the jobs and the reaper ride it out."""
    lab = await farm(private_redis=True)
    server = lab.redis_server
    assert server is not None
    outage: list[float] = []

    async def kill(runs: list[str]) -> None:
        outage.append(time.monotonic())
        await server.kill()

    async def restart() -> None:
        await server.start()
        outage.append(time.monotonic() - outage.pop())

    took = await fault_mid_sweep(
        lab, undisturbed, inject=kill, repair=restart, recovered=stored_more, bound_s=60
    )
    # Ingest's retry pending when Redis answers again comes at most one backoff step later.
    bound = reconnect_by(outage[0], *REDIS_BACKOFF) + BATCH_DELAY_S + POLL_S + LATE_S
    record_recovery(bound, took)
    assert took <= bound


@pytest.mark.chaos
async def test_forged_statuses_for_a_running_board_change_nothing(
    farm: FarmFactory, undisturbed: Reference, record_recovery: Record
) -> None:
    """Mid-run, someone publishes (retained) that the board's agent and the board are
    offline, without the agent's start, and another agent claims the board from the far
    future: ingest refuses all three and the run never notices."""
    lab = await farm()
    board = PI_A[0]

    async def forge(runs: list[str]) -> None:
        await publish_retained(
            lab.broker.url,
            [
                (
                    agent_status_topic("pi-a"),
                    AgentStatus(agent="pi-a", state="offline", reason="forged").dumps(),
                ),
                (
                    board_status_topic("pi-a", board),
                    BoardStatus(agent="pi-a", board=board, state="offline", health="bad").dumps(),
                ),
                (
                    board_status_topic("pi-x", board),
                    BoardStatus(
                        agent="pi-x", board=board, state="idle", health="good", started=9e9
                    ).dumps(),
                ),
            ],
        )

    took = await fault_mid_sweep(
        lab, undisturbed, inject=forge, recovered=stored_more, bound_s=30, boards=[board]
    )
    # Nothing to recover from: the run's next batch is stored as if nothing happened.
    bound = BATCH_DELAY_S + POLL_S + LATE_S
    record_recovery(bound, took)
    counters = lab.redis.hgetall(keys.INGEST_COUNTERS)
    assert int(counters.get("rejected_missing_generation", 0)) >= 2, counters
    assert int(counters.get("rejected_board_conflict", 0)) >= 1, counters
    assert lab.redis.hget(keys.board(board), "agent") == "pi-a"
    assert took <= bound


#: A DUT that stops answering is given up by the host's own timers: the command's wire-model
#: timeout and a resync each end within the silent-phase limit (farm/protocol/dut.py), then
#: the agent power-cycles or reopens the board (a ``disconnect`` keeps the port away
#: ``down_s``, the fault's default 2 s) and runs the command again.
DUT_RECOVERY_S = 2 * SILENT_PHASE_LIMIT_S + FaultSpec(kind="disconnect").down_s


@pytest.mark.chaos
@pytest.mark.parametrize("kind", ["garbage", "drop", "reset", "no_ready", "disconnect", "hang"])
async def test_a_board_fault_mid_run_is_recovered(
    kind: str, farm: FarmFactory, undisturbed: Reference, record_recovery: Record
) -> None:
    """kws-1's DUT misbehaves once, on its 21st inference of the sweep (inside a run): the
    agent recovers the board and the run goes on, with the reference's numbers (the boards'
    inference time is fixed, so the inferences run again take what they took the first
    time). The recovery is the longest the board's runs went without storing a sample."""
    board = PI_A[0]
    lab = await farm(faults={board: f"[{{kind: {kind}, command: infer, after: 20}}]"})
    took, _ = await board_faulted_sweep(lab, undisturbed, board)
    bound = DUT_RECOVERY_S + START_S + LATE_S  # + the board's power cycle and health check
    record_recovery(bound, took)
    assert took <= bound
    # It fired inside a run, and the agent's runner recovered the step.
    assert "event=step_failed" in lab.agents["pi-a"].output()


@pytest.mark.chaos
async def test_a_board_that_hangs_for_good_fails_its_runs_with_the_reason(
    farm: FarmFactory, undisturbed: Reference
) -> None:
    """kws-1's DUT hangs on every inference from its 21st on, power cycles included: its
    runs from then on fail, each saying why; every other run is the reference's."""
    board = PI_A[0]
    lab = await farm(faults={board: "[{kind: hang, command: infer, after: 20, count: null}]"})
    _, got = await board_faulted_sweep(
        lab, undisturbed, board, may_fail={(board, mode): "did not answer" for mode in MODES}
    )
    assert any(run.state == "failed" for (b, _), run in got.items() if b == board), got
