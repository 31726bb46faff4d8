"""The RQ job that owns one run: lease the board, dispatch the run to its agent, follow it,
check it is complete, score it and write its artifacts.

A job is synchronous (an RQ worker runs it itself, :mod:`controller.worker_pool`): it
publishes commands with paho and follows the run through what ingest stores in Redis,
polling a few times a second. Every
wait is bounded: each dispatch's deadline is fixed from the wire-time model and moved only by
samples stored (:mod:`controller.deadline`); a dispatch past it is cancelled at the agent and
dispatched again; an agent that goes offline has a grace period; samples still in flight
after ``done`` (resent after a reconnect) have a grace period too.

Each dispatch is an attempt, numbered in its run command and echoed by the agent in every
event of it: a dispatch judges only its own final event, so a late ``done`` of an earlier
attempt (one a lost worker left running on the board) can never judge or delete a later
attempt's samples.

Failures record their reason. An ``input`` failure (no such dataset, wrong firmware and no
image) or a ``device`` failure (the board hung, the agent already retried) fails the run; an
infrastructure failure (agent restarted, samples missing, lease lost) is retried up to
``MAX_ATTEMPTS`` dispatches, resuming an accuracy run from the samples already stored.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis
from rq.timeouts import JobTimeoutException

from controller import history, keys
from controller.commands import BrokerUnavailable, publish_command
from controller.deadline import RunDeadline
from controller.estimate import SETUP_ALLOWANCE_S, estimate_run_s, samples_expected
from controller.judge import close_sweep, judge, report_settings
from controller.quarantine import unavailable
from controller.retention import retire_run_detail, samples_retention_s
from controller.settings import Settings
from controller.store import (
    LEASE_TTL_S,
    Lease,
    connect,
    fail_reason,
    get_run,
    lease_holder,
    ranges,
    sample_seqs,
    samples,
    set_run,
)
from controller.traces import drop_traces, missing_chunks, with_traces
from farm.catalog import get_benchmark
from farm.logs import get_logger
from farm.messages import (
    CancelCommand,
    Done,
    RunCommand,
    RunOptions,
    command_topic,
    sample_digest,
)
from farm.trace import TraceError

log = get_logger("controller.jobs")

POLL_S = 0.25
MAX_ATTEMPTS = 3
#: An agent that went offline mid-run has this long to come back (it then reports the run
#: interrupted and the job resumes it) before the run fails. ``FARM_AGENT_GRACE_S`` sets it.
AGENT_GRACE_S = float(os.environ.get("FARM_AGENT_GRACE_S", "30"))
#: After ``done``, samples resent after a reconnect may still be on their way.
COMPLETENESS_GRACE_S = 15.0
#: How long a cancelled run may take to say ``cancelled``.
CANCEL_GRACE_S = 30.0
#: The agent's latest command acks looked at for a rejection of the run's command.
ACKS_SCANNED = 50
#: Pause before dispatching again when the broker could not take a command.
BROKER_RETRY_S = 5.0
#: The longest a run waits for a board operation (``farm board flash``...) to give it back.
OPERATION_WAIT_S = 900.0


@dataclass
class Outcome:
    """How one dispatch ended."""

    state: str  # completed | failed | cancelled | retry
    reason: str | None = None


def execute_run(run_id: str) -> str:
    """The RQ entry point: run ``run_id`` to a terminal state; return that state."""
    settings = Settings.resolve()
    return RunJob(connect(settings.redis_url), settings, run_id).execute()


def judge_sweep(sweep_id: str) -> str:
    """The RQ entry point of a finished sweep's verdict (queued by
    :func:`controller.judge.close_sweep` when ``farm submit --verdict`` asked for one):
    compare, report, store; return the verdict's one-line summary."""
    settings = Settings.resolve()
    reports, template = report_settings(settings)
    record = judge(
        connect(settings.redis_url),
        sweep_id,
        reports=reports,
        url_template=template,
        results=settings.results,
    )
    return record.summary()


#: The nightly sweep's ``farm`` arguments: the same as deploy/systemd/tinyfarm-nightly.service.
#: ``--verdict``: once it has finished, it is judged against the night before.
NIGHTLY = ("submit", "--suite", "full", "--boards", "all", "--label", "nightly", "--verdict")


def submit_nightly() -> str:
    """The RQ entry point of the nightly sweep ``rq cron`` schedules (deploy/rq-cron): ``farm
    submit`` with :data:`NIGHTLY`, fixed here so a job can choose no command of its own; its
    output (the sweep id). A failed submit fails the job (RQ's failed-job registry) with what
    ``farm submit`` said, its exit status alone being no reason."""
    done = subprocess.run(
        [sys.executable, "-m", "farm.cli", *NIGHTLY],
        timeout=600,
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        raise RuntimeError(f"farm submit exited {done.returncode}: {done.stderr.strip()[-2000:]}")
    return done.stdout


class RunJob:
    """One run's job (see the module docstring)."""

    def __init__(self, client: redis.Redis, settings: Settings, run_id: str) -> None:
        self.client = client
        self.settings = settings
        self.run_id = run_id
        self.lease: Lease | None = None
        self._stop = threading.Event()
        self._lost = threading.Event()

    # -- lifecycle ------------------------------------------------------------------------------

    def execute(self) -> str:
        """Lease, dispatch (again while retries are left), finish; always release."""
        run = get_run(self.client, self.run_id)
        if not run:
            log.error("unknown_run", run=self.run_id)
            return "unknown"
        if run["state"] in keys.TERMINAL:
            return run["state"]
        if run.get("cancel") == "1":
            return self._finish("cancelled", "cancelled before it started")
        if int(run.get("attempts") or 0) >= MAX_ATTEMPTS:
            return self._finish("failed", f"gave up after {run['attempts']} attempts")
        if (blocked := self._unavailable(run["board"])) is not None:
            return self._finish("failed", f"board {run['board']} takes no runs: {blocked}")
        self.lease = self._take_lease(run["board"])
        # Reserved or quarantined while this job waited for the board?
        if (blocked := self._unavailable(run["board"])) is not None:
            if self.lease is not None:
                self.lease.release()
            return self._finish("failed", f"board {run['board']} takes no runs: {blocked}")
        if self.lease is None:
            return self._finish("failed", f"board {run['board']} is leased by another run")
        self.client.sadd(keys.RUNS_ACTIVE, self.run_id)
        # Renewed from a thread, so scoring a large run (seconds of numpy and file writing)
        # never looks like a dead worker to the reaper.
        renewer = threading.Thread(
            target=self.lease.keep, args=(self._stop, self._lost), name="lease", daemon=True
        )
        renewer.start()
        interrupted = False
        try:
            while True:
                attempts = int(get_run(self.client, self.run_id).get("attempts") or 0) + 1
                set_run(self.client, self.run_id, attempts=attempts)
                try:
                    outcome = self._attempt(attempts)
                except BrokerUnavailable as exc:
                    outcome = Outcome("retry", str(exc))
                    time.sleep(BROKER_RETRY_S)
                if outcome.state != "retry":
                    return self._finish(outcome.state, outcome.reason)
                fail_reason(self.client, self.run_id, outcome.reason or "retry")
                if attempts >= MAX_ATTEMPTS:
                    return self._finish("failed", f"{outcome.reason} (after {attempts} attempts)")
                log.warning("run_retry", run=self.run_id, attempt=attempts, reason=outcome.reason)
        except JobTimeoutException:
            # RQ's backstop ran out (SIGALRM inside the job): the run ends here, failed, and
            # the agent stops it; otherwise RQ would retry a run the board is still running.
            self._cancel_at_agent("rq-timeout")
            return self._finish("failed", "RQ's job timeout ran out before the run ended")
        except (SystemExit, KeyboardInterrupt):
            # RQ's cold shutdown raises SystemExit in the job (the worker runs it itself): the
            # run is left as a killed worker leaves it, still active, and the board given
            # back at once, so the reaper hands the job to RQ again without waiting a TTL.
            interrupted = True
            raise
        finally:
            self._stop.set()
            renewer.join(5)
            if not interrupted:
                self.client.srem(keys.RUNS_ACTIVE, self.run_id)
            self.lease.release()

    def _take_lease(self, board: str) -> Lease | None:
        # A lease left by a worker that died expires within one TTL: wait that long. A board
        # operation (a flash, a health check) is waited out, up to the longest one's time.
        give_up = time.monotonic() + LEASE_TTL_S * 2 + 5
        operation_ends = time.monotonic() + OPERATION_WAIT_S
        while True:
            lease = Lease.acquire(self.client, board)
            if lease is not None:
                return lease
            holder = lease_holder(self.client.get(keys.lease(board)))
            if holder is not None:
                if self._unavailable(board) is not None:
                    return None
                give_up = max(give_up, min(operation_ends, time.monotonic() + LEASE_TTL_S))
            if time.monotonic() > give_up:
                return None
            time.sleep(POLL_S)

    def _unavailable(self, board: str) -> str | None:
        """Why ``board`` takes no runs now (reserved, quarantined), or None."""
        return unavailable(self.client, [board], time.time()).get(board)

    def _finish(self, state: str, reason: str | None) -> str:
        if reason is not None and state != "completed":
            fail_reason(self.client, self.run_id, reason)
        set_run(self.client, self.run_id, state=state, finished_at=time.time())
        log.info("run_finished", run=self.run_id, state=state, reason=reason)
        if state == "completed":
            # The run hash now holds the summary, the finish time and the firmware.
            history.record(self.client, get_run(self.client, self.run_id))
        retire_run_detail(self.client, self.run_id, samples_retention_s())
        sweep_id = self.client.hget(keys.run(self.run_id), "sweep")
        if sweep_id:
            close_sweep(self.client, sweep_id)
        return state

    # -- one dispatch ---------------------------------------------------------------------------

    def _attempt(self, attempt: int) -> Outcome:
        run = get_run(self.client, self.run_id)
        bench = get_benchmark(run["benchmark"])
        options = RunOptions.model_validate_json(run["options"])
        stored: list[tuple[int, int]] = []
        seqs = sample_seqs(self.client, self.run_id)
        if run["mode"] == "accuracy":
            stored = ranges(seqs)  # resume: the agent runs only the others
        elif seqs:
            self.client.delete(keys.run_samples(self.run_id))  # a timed run starts over
        kept = {s for a, b in stored for s in range(a, b)}
        drop_traces(self.client, self.run_id, kept)
        # The run's total stays: every attempt reports the same one.
        self.client.hdel(keys.run(self.run_id), "final", "eta_s")
        command = RunCommand(
            id=f"{self.run_id}-a{attempt}",
            type="run",
            board=run["board"],
            run=self.run_id,
            benchmark=run["benchmark"],
            mode=run["mode"],  # type: ignore[arg-type]
            dataset=run.get("dataset") or None,
            options=options,
            stored=stored,
            attempt=attempt,
        )
        self._publish(command_topic(run["agent"]), command.dumps())
        set_run(
            self.client,
            self.run_id,
            state="dispatched",
            command=command.id,
            dispatched_at=time.time(),
        )
        estimate = estimate_run_s(bench, run["mode"], options)  # type: ignore[arg-type]
        deadline = RunDeadline.at_dispatch(
            time.monotonic(),
            estimate,
            SETUP_ALLOWANCE_S,
            samples_expected(bench, run["mode"], options),  # type: ignore[arg-type]
            sum(b - a for a, b in stored),
        )
        self._show_deadline(deadline)
        log.info(
            "run_dispatched",
            run=self.run_id,
            board=run["board"],
            attempt=attempt,
            stored=sum((b - a for a, b in stored)),
            estimate_s=estimate,
            deadline_s=round(deadline.at - time.monotonic(), 1),
        )
        return self._follow(run, command, estimate, deadline, kept)

    def _show_deadline(self, deadline: RunDeadline) -> None:
        """The deadline in the run hash, as Unix time, for an operator."""
        set_run(
            self.client,
            self.run_id,
            deadline=round(time.time() + deadline.at - time.monotonic(), 3),
        )

    def _follow(
        self,
        run: dict[str, str],
        command: RunCommand,
        estimate: float,
        deadline: RunDeadline,
        stored: set[int],
    ) -> Outcome:
        started = time.monotonic()
        assert command.attempt is not None
        ignored: int | None = None  # the earlier attempt whose final event was seen
        offline_since: float | None = None
        cancel_sent: float | None = None
        while True:
            time.sleep(POLL_S)
            now = time.monotonic()
            if self._lost.is_set():
                return Outcome("retry", "the board's lease was lost (a worker stalled)")
            # One round trip per poll: N boards' jobs poll at once.
            with self.client.pipeline(transaction=False) as pipe:
                pipe.hgetall(keys.run(self.run_id))
                pipe.hget(keys.agent(run["agent"]), "state")
                pipe.lrange(keys.agent_acks(run["agent"]), -ACKS_SCANNED, -1)
                pipe.hlen(keys.run_samples(self.run_id))
                current, agent_state, acks, held = pipe.execute()
            if current.get("state") in keys.TERMINAL:
                return Outcome(current["state"], current.get("reason") or None)
            if current.get("final"):
                final = json.loads(current["final"])
                other = final.get("attempt")
                # An agent that does not echo attempts: its final event is this dispatch's.
                if other is None or other == command.attempt:
                    return self._on_final(current, final, stored)
                if _acked(acks, command.id, "duplicate"):
                    # The board was still running the earlier attempt, not this one: now
                    # it is free, dispatch again (resuming from what is stored).
                    return Outcome(
                        "retry",
                        f"attempt {command.attempt} reached the board while it still ran "
                        f"attempt {other}",
                    )
                if ignored != other:
                    ignored = other
                    log.info(
                        "earlier_attempt_final_ignored",
                        run=self.run_id,
                        attempt=command.attempt,
                        final_attempt=other,
                        event=final.get("event"),
                    )
            # An agent refuses a run before starting it: once it runs, no ack can say so.
            if current.get("state") == "dispatched":
                rejected = _rejection(acks, command.id)
                if rejected is not None:
                    return Outcome("failed", f"the agent rejected the run: {rejected}")
            if current.get("cancel") == "1" and cancel_sent is None:
                cancel = CancelCommand(id=f"{command.id}-cancel", type="cancel", run=self.run_id)
                self._publish(command_topic(run["agent"]), cancel.dumps())
                cancel_sent = now
            if cancel_sent is not None and now - cancel_sent > CANCEL_GRACE_S:
                return Outcome("cancelled", "cancelled (the agent did not confirm)")
            if agent_state != "online":
                offline_since = offline_since or now
                if now - offline_since > AGENT_GRACE_S:
                    return Outcome("failed", f"agent {run['agent']} went offline during the run")
            else:
                offline_since = None
            if deadline.progress(now, held):
                self._show_deadline(deadline)
            if deadline.passed(now):
                # Stop whatever the board still runs of it; the next dispatch resumes.
                cancel = CancelCommand(id=f"{command.id}-timeout", type="cancel", run=self.run_id)
                self._publish(command_topic(run["agent"]), cancel.dumps())
                waited = now - started
                return Outcome(
                    "retry",
                    f"no result within {waited:.0f} s (wire-model estimate {estimate:.0f} s)",
                )

    def _on_final(self, run: dict[str, str], final: dict[str, Any], stored: set[int]) -> Outcome:
        kind = final.get("event")
        if kind == "cancelled":
            return Outcome("cancelled", "cancelled")
        if kind == "interrupted":
            return Outcome(
                "retry", f"the agent restarted during the run (last seq {final.get('last_seq')})"
            )
        if kind == "error":
            reason = f"{final.get('kind')}: {final.get('reason')}"
            if final.get("kind") == "infrastructure":
                return Outcome("retry", reason)
            return Outcome("failed", reason)
        done = Done.model_validate(final)
        problem = self._complete(done, stored)
        if problem is not None:
            return Outcome("retry", problem)
        return self._score(run, done)

    def _complete(self, done: Done, stored: set[int]) -> str | None:
        """None when the stored samples are exactly what the agent says it sent."""
        expected = done.count + done.skipped
        give_up = time.monotonic() + COMPLETENESS_GRACE_S
        while self.client.hlen(keys.run_samples(self.run_id)) < expected:
            if time.monotonic() > give_up:
                have = self.client.hlen(keys.run_samples(self.run_id))
                return f"{expected - have} of {expected} samples never arrived"
            time.sleep(POLL_S)
        records = samples(self.client, self.run_id)
        produced = [r for seq, r in records.items() if seq not in stored]
        if sample_digest(produced) != done.digest:
            # Keep what was stored before this dispatch; this dispatch's samples are redone.
            self.client.hdel(keys.run_samples(self.run_id), *[r["seq"] for r in produced])
            return "the stored samples do not match the agent's digest"
        # A power trace sent in chunks: each chunk travels before its record, but one resent
        # after a reconnect may still be on its way. One never stored leaves the run
        # incomplete, as a sample would.
        while missing := missing_chunks(self.client, self.run_id, records.values()):
            if time.monotonic() > give_up:
                return (
                    f"{len(missing)} power trace chunk(s) never arrived (seq:chunk "
                    f"{', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''})"
                )
            time.sleep(POLL_S)
        return None

    def _score(self, run: dict[str, str], done: Done) -> Outcome:
        # numpy/scikit-learn are imported only where a run is scored.
        from controller.results import ResultsError, finish_run

        try:
            records = with_traces(
                self.client, self.run_id, samples(self.client, self.run_id).values()
            )
        except TraceError as exc:
            return Outcome("retry", f"a power trace cannot be joined back: {exc}")
        results = Path(self.settings.results)
        folder = results / run["sweep"] / run["board"] / run["benchmark"] / run["mode"]
        try:
            summary = finish_run(run, records, done.info, folder)
        except ResultsError as exc:
            return Outcome("failed", f"cannot score the run: {exc}")
        set_run(
            self.client, self.run_id, summary=json.dumps(summary.to_json()), artifacts=str(folder)
        )
        return Outcome("completed")

    # -- helpers --------------------------------------------------------------------------------

    def _cancel_at_agent(self, why: str) -> None:
        """Tell the run's agent to stop it, if the broker takes the command (best effort)."""
        run = get_run(self.client, self.run_id)
        if not run.get("agent"):
            return
        cancel = CancelCommand(id=f"{self.run_id}-{why}", type="cancel", run=self.run_id)
        try:
            self._publish(command_topic(run["agent"]), cancel.dumps())
        except BrokerUnavailable as exc:
            log.warning("cancel_not_sent", run=self.run_id, error=str(exc))

    def _publish(self, topic: str, payload: bytes) -> None:
        """Publish one command at QoS 1 (``BrokerUnavailable`` if the broker cannot take it)."""
        publish_command(self.settings, topic, payload, f"job-{self.run_id}")


def _acked(acks: list[str], command_id: str, outcome: str) -> bool:
    """Whether the agent's acks answer ``command_id`` with ``outcome``."""
    for raw in acks:
        ack = json.loads(raw)
        if ack.get("command") == command_id and ack.get("outcome") == outcome:
            return True
    return False


def _rejection(acks: list[str], command_id: str) -> str | None:
    """The reason the agent gave for rejecting ``command_id``, if its acks hold one."""
    for raw in acks:
        ack = json.loads(raw)
        if ack.get("command") == command_id and ack.get("outcome") == "rejected":
            return ack.get("reason") or "rejected"
    return None
