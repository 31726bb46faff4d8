"""The RQ jobs of one run, and the transitions its life goes through.

A run holds no worker while its board runs it. Its **dispatch job** (:func:`execute_run`,
queued when the board's turn comes to it: :mod:`controller.board_queue`) leases the board,
sends the run command and returns; the **follower** (:mod:`controller.follower`, one loop in
the worker supervisor for every running run) watches what ingest stores, and when the run's
final event of that attempt arrives it queues the run's **score job** (:func:`score_run`),
which verifies the stored samples against the agent's digest, scores them and writes the
artifacts. Whoever ends the run (:meth:`RunJob.finish`) gives the board back and its turn to
the board's next run.

Every wait is bounded: each dispatch's deadline is fixed from the wire-time model and moved
only by samples stored (:mod:`controller.deadline`); a dispatch past it is cancelled at the
agent and dispatched again; an agent that goes offline has a grace period; samples still in
flight after ``done`` (resent after a reconnect) have a grace period too.

Each dispatch is an attempt, numbered in its run command and echoed by the agent in every
event of it: only its own final event ends an attempt, so a late ``done`` of an earlier
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
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import redis

from controller import history, keys, shards
from controller.board_queue import pass_turn, queue_job
from controller.commands import BrokerUnavailable, publish_command
from controller.deadline import SLACK, RunDeadline
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
    rq_connection,
    sample_seqs,
    samples,
    set_run,
)
from controller.traces import drop_traces, missing_chunks, with_traces
from farm.catalog import get_benchmark
from farm.logs import get_logger
from farm.messages import (
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
    """The dispatch job's RQ entry point: dispatch ``run_id``; return its state."""
    settings = Settings.resolve()
    return RunJob(connect(settings.redis_url), settings, run_id).execute()


def score_run(run_id: str) -> str:
    """The score job's RQ entry point: verify and score ``run_id``; return its state."""
    settings = Settings.resolve()
    return RunJob(connect(settings.redis_url), settings, run_id).score()


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
    """One run's jobs and transitions (see the module docstring): :meth:`execute` is the
    dispatch job, :meth:`score` the score job; the follower calls :meth:`dispatch`,
    :meth:`retry` and :meth:`finish`."""

    def __init__(self, client: redis.Redis, settings: Settings, run_id: str) -> None:
        self.client = client
        self.settings = settings
        self.run_id = run_id

    # -- the dispatch job -----------------------------------------------------------------------

    def execute(self) -> str:
        """Lease the board and dispatch the run's next attempt; return the run's state
        (``dispatched`` once the follower has it)."""
        run = get_run(self.client, self.run_id)
        if not run:
            log.error("unknown_run", run=self.run_id)
            return "unknown"
        if run["state"] in keys.TERMINAL:
            self._pass_turn(run)
            return run["state"]
        if run.get("phase") in ("following", "scoring"):
            return run["state"]  # dispatched already (RQ ran this job again): followed
        if run.get("cancel") == "1":
            return self.finish("cancelled", "cancelled before it started")
        if int(run.get("attempts") or 0) >= MAX_ATTEMPTS:
            return self.finish("failed", f"gave up after {run['attempts']} attempts")
        if (blocked := self._unavailable(run["board"])) is not None:
            return self.finish("failed", f"board {run['board']} takes no runs: {blocked}")
        lease = self._take_lease(run["board"])
        # Reserved or quarantined while this job waited for the board?
        if (blocked := self._unavailable(run["board"])) is not None:
            if lease is not None:
                lease.release()
            return self.finish("failed", f"board {run['board']} takes no runs: {blocked}")
        if lease is None:
            return self.finish("failed", f"board {run['board']} is leased by another run")
        set_run(self.client, self.run_id, lease=lease.token, phase="dispatching")
        self.client.sadd(keys.RUNS_ACTIVE, self.run_id)
        stop, lost = threading.Event(), threading.Event()
        # Renewed from a thread while this job has the run (the follower renews it after).
        renewer = threading.Thread(target=lease.keep, args=(stop, lost), name="lease", daemon=True)
        renewer.start()
        try:
            return self.dispatch()
        finally:
            stop.set()
            renewer.join(5)

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

    # -- transitions ----------------------------------------------------------------------------

    def dispatch(self, *, resend: bool = False) -> str:
        """Send the run's next attempt to its agent and hand the run to the follower.

        The run is marked dispatched, with its attempt counted, before the command is
        published: a publish the broker seemed to refuse may still have reached the agent,
        whose samples, events and final event are then the run's. When the broker cannot take
        the command, the follower sends the same command again (``resend``: the same attempt,
        command id, stored seqs and samples) every ``BROKER_RETRY_S`` once the agent is
        online; an agent that did get it answers ``duplicate``. However long the broker stays
        away, the attempt counts once. The broker and the agent are waited for as long as the
        run's deadline would allow the run itself; then the run fails."""
        run = get_run(self.client, self.run_id)
        before = json.loads(run.get("follow") or "{}")
        bench = get_benchmark(run["benchmark"])
        options = RunOptions.model_validate_json(run["options"])
        estimate = estimate_run_s(bench, run["mode"], options)  # type: ignore[arg-type]
        expected = samples_expected(bench, run["mode"], options)  # type: ignore[arg-type]
        others: list[tuple[int, int]] = []
        if (own := shards.own_range(run)) is not None:
            # A shard: the other shards' seqs are "stored" too, so the agent runs only its
            # own, and the model's time is its share of the run's.
            others = shards.excluded(own, expected)
            share = (own[1] - own[0]) / max(expected, 1)
            estimate = SETUP_ALLOWANCE_S + max(estimate - SETUP_ALLOWANCE_S, 0.0) * share
            expected = own[1] - own[0]
        if resend:
            # What the refused dispatch sent: samples stored since are that attempt's own.
            attempt = int(before["attempt"])
            stored = [(a, b) for a, b in before["kept"]]
        else:
            attempt = int(run.get("attempts") or 0) + 1
            stored = self._resume_from(run)
            # The run's total stays: every attempt reports the same one.
            self.client.hdel(keys.run(self.run_id), "final", "eta_s")
        kept = sum(b - a for a, b in stored)
        command = RunCommand(
            id=f"{self.run_id}-a{attempt}",
            type="run",
            board=run["board"],
            run=self.run_id,
            benchmark=run["benchmark"],
            mode=run["mode"],  # type: ignore[arg-type]
            dataset=run.get("dataset") or None,
            options=options,
            stored=shards.union(stored, others),
            attempt=attempt,
        )
        now = time.time()
        deadline = RunDeadline.at_dispatch(now, estimate, SETUP_ALLOWANCE_S, expected, kept)
        follow: dict[str, Any] = {
            "attempt": attempt,
            "command": command.id,
            "estimate": estimate,
            "dispatched": now,
            "kept": stored,
            "others": sum(b - a for a, b in others),
            "deadline": asdict(deadline),
        }
        set_run(
            self.client,
            self.run_id,
            attempts=attempt,
            state="dispatched",
            command=command.id,
            dispatched_at=now,
            deadline=round(deadline.at, 3),
            phase="following",
            follow=follow,
        )
        try:
            self._publish(command_topic(run["agent"]), command.dumps())
        except BrokerUnavailable as exc:
            return self._refused(before, follow, SLACK * estimate, str(exc))
        log.info(
            "run_dispatched",
            run=self.run_id,
            board=run["board"],
            attempt=attempt,
            stored=kept,
            estimate_s=estimate,
            deadline_s=round(deadline.at - now, 1),
        )
        return "dispatched"

    def _resume_from(self, run: dict[str, str]) -> list[tuple[int, int]]:
        """The seqs a new attempt keeps (an accuracy run resumes: the agent runs only the
        others); a timed run starts over, its samples and traces dropped."""
        seqs = sample_seqs(self.client, self.run_id)
        stored: list[tuple[int, int]] = []
        if run["mode"] == "accuracy":
            stored = ranges(seqs)
        elif seqs:
            self.client.delete(keys.run_samples(self.run_id))
        drop_traces(self.client, self.run_id, {s for a, b in stored for s in range(a, b)})
        return stored

    def _refused(
        self, before: dict[str, Any], follow: dict[str, Any], patience_s: float, why: str
    ) -> str:
        """The broker refused the command of ``follow``'s dispatch (``before``: the follow of
        the dispatch before it): send it again ``BROKER_RETRY_S`` later, or fail the run once
        the broker has refused it for ``patience_s``; the run's state."""
        fail_reason(self.client, self.run_id, why)
        now = time.time()
        since = before.get("refused_since", now) if "retry_at" in before else now
        if now - since > patience_s:
            return self.finish(
                "failed",
                f"the broker refused the run's command for {now - since:.0f} s "
                f"(the run's own deadline would be {patience_s:.0f} s): {why}",
            )
        follow.update(retry_at=now + BROKER_RETRY_S, refused_since=since, patience=patience_s)
        set_run(self.client, self.run_id, follow=follow)
        log.warning("run_dispatch_deferred", run=self.run_id, attempt=follow["attempt"], reason=why)
        return "dispatched"

    def retry(self, reason: str) -> str:
        """The current attempt failed for a reason another may not meet: dispatch again,
        unless ``MAX_ATTEMPTS`` were made; the run's state."""
        fail_reason(self.client, self.run_id, reason)
        run = get_run(self.client, self.run_id)
        attempts = int(run.get("attempts") or 0)
        if attempts >= MAX_ATTEMPTS:
            return self.finish("failed", f"{reason} (after {attempts} attempts)")
        log.warning("run_retry", run=self.run_id, attempt=attempts, reason=reason)
        if not (run.get("lease") and Lease(self.client, run["board"], run["lease"]).hold()):
            # Someone took the board meanwhile (an operation): wait for it as a dispatch does.
            return self.requeue(None)
        return self.dispatch()

    def requeue(self, reason: str | None) -> str:
        """Give the run back to a dispatch job, which waits for the board (its lease was
        lost); the run's state."""
        if reason is not None:
            fail_reason(self.client, self.run_id, reason)
        run = get_run(self.client, self.run_id)
        if run.get("lease"):
            Lease(self.client, run["board"], run["lease"]).release()
        set_run(self.client, self.run_id, state="queued")
        self.client.hdel(keys.run(self.run_id), "phase", "follow", "lease")
        self.client.srem(keys.RUNS_ACTIVE, self.run_id)
        log.warning("run_requeued", run=self.run_id, reason=reason)
        queue_job(rq_connection(self.client), self.client, self.run_id, "dispatch")
        return "queued"

    def finish(self, state: str, reason: str | None) -> str:
        """End the run in ``state`` (its artifacts already written for ``completed``): give
        the board back and its turn to the next run; the state the run ended in (an earlier
        end stands)."""
        run = get_run(self.client, self.run_id)
        if run.get("state") in keys.TERMINAL:
            # Ended elsewhere (the reaper fails a run whose job is lost for good): what
            # its end owes its board and its sharded run is owed still.
            self._end_parent(run, run["state"])
            self._pass_turn(run)
            return run["state"]
        if reason is not None and state != "completed":
            fail_reason(self.client, self.run_id, reason)
        set_run(self.client, self.run_id, state=state, finished_at=time.time())
        log.info("run_finished", run=self.run_id, state=state, reason=reason)
        run = get_run(self.client, self.run_id)
        if state == "completed":
            # The run hash now holds the summary, the finish time and the firmware.
            history.record(self.client, run)
        self._end_parent(run, state)
        # A verified shard's samples wait for the merge; its parent's end retires them.
        if not (run.get("shard_of") and state == "completed"):
            retire_run_detail(self.client, self.run_id, samples_retention_s())
        for shard_id in json.loads(run.get("shards") or "[]"):
            retire_run_detail(self.client, shard_id, samples_retention_s())
        self._pass_turn(run)
        if run.get("sweep") and not run.get("shard_of"):
            close_sweep(self.client, run["sweep"])
        return state

    def _end_parent(self, run: dict[str, str], state: str) -> None:
        """A shard that ended other than completed ends its sharded run the same way and
        cancels the other shards (once: a parent that ended already is left as it is)."""
        shard_of = run.get("shard_of") if state != "completed" else None
        if shard_of and (why := shards.shard_ended(self.client, run, state)) is not None:
            RunJob(self.client, self.settings, shard_of).finish(state, why)

    def _pass_turn(self, run: dict[str, str]) -> None:
        pass_turn(self.client, rq_connection(self.client), self.run_id, run)

    # -- the score job --------------------------------------------------------------------------

    def score(self) -> str:
        """Verify the stored samples against the agent's ``done`` and score them (or dispatch
        again when they do not match); the run's state."""
        run = get_run(self.client, self.run_id)
        if not run:
            log.error("unknown_run", run=self.run_id)
            return "unknown"
        if run.get("state") in keys.TERMINAL:
            self._pass_turn(run)
            return run["state"]
        if run.get("phase") != "scoring" or not run.get("lease"):
            log.warning("score_not_due", run=self.run_id, phase=run.get("phase"))
            return run.get("state", "unknown")
        lease = Lease(self.client, run["board"], run["lease"])
        # The follower let go of the lease when it queued this job: held again here (it may
        # have lapsed while the job waited), so the reaper knows a worker has the run.
        if not lease.hold():
            log.info("score_without_lease", run=self.run_id, board=run["board"])
        stop, lost = threading.Event(), threading.Event()
        renewer = threading.Thread(target=lease.keep, args=(stop, lost), name="lease", daemon=True)
        renewer.start()
        try:
            follow = json.loads(run.get("follow") or "{}")
            kept = {s for a, b in follow.get("kept", []) for s in range(a, b)}
            done = Done.model_validate(json.loads(run["final"]))
            problem = self._complete(done, kept, follow.get("others", 0))
            if problem is not None:
                return self.retry(problem)
            if run.get("shard_of"):
                outcome = self._score_shard(run, done)
            else:
                outcome = self._score(run, done)
        finally:
            stop.set()
            renewer.join(5)
        if outcome.state == "retry":
            return self.retry(outcome.reason or "retry")
        return self.finish(outcome.state, outcome.reason)

    def _complete(self, done: Done, stored: set[int], others: int) -> str | None:
        """None when the stored samples are exactly what the agent says it sent (``stored``:
        the seqs held before this dispatch; ``others``: a shard's seqs that belong to the
        other shards, which the agent counts as skipped)."""
        expected = done.count + done.skipped - others
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

    def _folder(self, run: dict[str, str]) -> Path:
        """Where a run's artifacts go: ``results/<sweep>/<board>/<benchmark>/<mode>``."""
        where = (run["sweep"], run["board"], run["benchmark"], run["mode"])
        return Path(self.settings.results).joinpath(*where)

    def _score(self, run: dict[str, str], done: Done) -> Outcome:
        # numpy/scikit-learn are imported only where a run is scored.
        from controller.results import ResultsError, finish_run

        try:
            records = with_traces(
                self.client, self.run_id, samples(self.client, self.run_id).values()
            )
        except TraceError as exc:
            return Outcome("retry", f"a power trace cannot be joined back: {exc}")
        folder = self._folder(run)
        try:
            summary = finish_run(run, records, done.info, folder)
        except ResultsError as exc:
            return Outcome("failed", f"cannot score the run: {exc}")
        set_run(
            self.client, self.run_id, summary=json.dumps(summary.to_json()), artifacts=str(folder)
        )
        return Outcome("completed")

    def _score_shard(self, run: dict[str, str], done: Done) -> Outcome:
        """A shard's samples are verified: the shard is complete, and the last one verified
        merges every shard's samples and scores them as the parent run."""
        parent_id = run["shard_of"]
        if shards.shard_verified(self.client, self.run_id, parent_id):
            parent = RunJob(self.client, self.settings, parent_id)
            state, reason = parent.merge(done)
            parent.finish(state, reason)
        return Outcome("completed")

    def merge(self, done: Done) -> tuple[str, str | None]:
        """Score this sharded run from its shards' samples (``done``: the last shard's final
        event, whose runner info an accuracy run's files take nothing from but the count);
        the state it ends in and why."""
        from controller.results import ResultsError, finish_run

        run = get_run(self.client, self.run_id)
        if run.get("state") in keys.TERMINAL:
            return run["state"], None
        shard_runs, records = shards.merged_records(self.client, run)
        if (mismatch := shards.firmware_mismatch(shard_runs)) is not None:
            return "failed", f"cannot merge the shards: {mismatch}"
        firmware = next(iter(shard_runs.values())).get("firmware")
        if firmware:
            set_run(self.client, self.run_id, firmware=firmware)
            run["firmware"] = firmware
        folder = self._folder(run)
        try:
            summary = finish_run(run, records, done.info, folder)
        except ResultsError as exc:
            return "failed", f"cannot score the run: {exc}"
        set_run(
            self.client,
            self.run_id,
            summary=json.dumps(summary.to_json()),
            artifacts=str(folder),
            done=len(records),
            total=len(records),
        )
        log.info("shards_merged", run=self.run_id, shards=len(shard_runs), samples=len(records))
        return "completed", None

    # -- helpers --------------------------------------------------------------------------------

    def _publish(self, topic: str, payload: bytes) -> None:
        """Publish one command at QoS 1 (``BrokerUnavailable`` if the broker cannot take it)."""
        publish_command(self.settings, topic, payload, f"job-{self.run_id}")
