"""Follows every dispatched run from one loop, so a running board costs no RQ worker.

A run's dispatch job (:mod:`controller.jobs`) sends the run command and hands the run over
(``phase`` ``following``, the dispatch's attempt, command and deadline in ``follow``). Every
``POLL_S`` the follower reads all followed runs in two pipelined round trips, renews their
board leases and judges each one as the run job used to while it sat on a worker:

* its attempt's final event: ``done`` queues the score job; ``cancelled``, ``error`` and
  ``interrupted`` end the run or dispatch it again;
* an earlier attempt's final event is ignored, unless the agent answered this attempt's
  command ``duplicate`` (the board still ran the earlier one): then it is dispatched again;
* an agent rejection, a cancel request (sent to the agent once, confirmed within
  ``CANCEL_GRACE_S``), an agent offline longer than ``AGENT_GRACE_S``;
* the deadline, moved only by samples stored (:mod:`controller.deadline`): past it the run is
  stopped at the agent and dispatched again.

It runs in the worker supervisor (:mod:`controller.worker_pool`). Several supervisors may run
on one Redis: one of them leads (a short lease of its own) and the others wait; what a
follower knows beyond Redis (when an agent went offline, when a cancel was sent) is only a
grace period, so a new leader starts those over, never shortening them.
"""

from __future__ import annotations

import json
import secrets
import time
from dataclasses import asdict, dataclass
from typing import Any

import redis

from controller import keys
from controller.board_queue import queue_job
from controller.commands import BrokerUnavailable, publish_command
from controller.deadline import RunDeadline
from controller.ingest.throttle import Throttle
from controller.jobs import (
    ACKS_SCANNED,
    AGENT_GRACE_S,
    CANCEL_GRACE_S,
    RunJob,
)
from controller.settings import Settings
from controller.store import HOLD, LEASE_TTL_S, explain, rq_connection, set_run
from farm.logs import get_logger
from farm.messages import CancelCommand, command_topic

log = get_logger("controller.follower")

#: The leading follower renews its own lease every tick; another takes over this long after
#: the leader's last tick.
LEADER_TTL_S = 3.0
#: The run fields the follower reads.
FIELDS = ("state", "phase", "follow", "final", "cancel", "agent", "board", "lease")


@dataclass
class _Watch:
    """What the follower remembers of one attempt between ticks."""

    attempt: int
    offline_since: float | None = None
    cancel_sent: float | None = None
    ignored: int | None = None


class Follower:
    """The follower of one supervisor; :meth:`tick` every ``POLL_S``."""

    def __init__(self, url: str, settings: Settings | None = None) -> None:
        self.url = url
        self.client = redis.Redis.from_url(url, decode_responses=True)
        self.rq_client = rq_connection(self.client)
        self.settings = settings or Settings.resolve()
        self.token = secrets.token_hex(8)
        self.watches: dict[str, _Watch] = {}
        self._throttle = Throttle(60.0)

    def tick(self) -> None:
        """Follow every followed run once, if this follower leads; a Redis hiccup is logged
        (the next tick tries again)."""
        try:
            if not self.client.eval(HOLD, 1, keys.FOLLOWER, self.token, int(LEADER_TTL_S * 1000)):
                self.watches.clear()
                return
            self.follow_all(time.time())
        except redis.RedisError as exc:
            if (skipped := self._throttle.allow("redis_error")) is not None:
                log.warning("follower_redis_error", error=explain(self.url, exc), skipped=skipped)
        except Exception:  # a bug here must not take the workers' supervisor down
            if (skipped := self._throttle.allow("failed")) is not None:
                log.exception("follower_failed", skipped=skipped)

    def follow_all(self, now: float) -> None:
        """Judge every followed run at ``now`` (Unix time)."""
        run_ids = sorted(self.client.smembers(keys.RUNS_ACTIVE))
        with self.client.pipeline(transaction=False) as pipe:
            for run_id in run_ids:
                pipe.hmget(keys.run(run_id), FIELDS)
            rows = pipe.execute()
        runs = {
            run_id: dict(zip(FIELDS, row, strict=True))
            for run_id, row in zip(run_ids, rows, strict=True)
            if row[1] == "following" and row[2]
        }
        for gone in self.watches.keys() - runs.keys():
            del self.watches[gone]
        if not runs:
            return
        agents = sorted({run["agent"] for run in runs.values() if run["agent"]})
        # An agent's acks matter only until it starts the run, or while an earlier attempt's
        # final event stands.
        asked = sorted(
            {
                run["agent"]
                for run in runs.values()
                if run["agent"] and (run["state"] == "dispatched" or run["final"])
            }
        )
        with self.client.pipeline(transaction=False) as pipe:
            for agent in agents:
                pipe.hget(keys.agent(agent), "state")
            for agent in asked:
                pipe.lrange(keys.agent_acks(agent), -ACKS_SCANNED, -1)
            for run_id, run in runs.items():
                pipe.hlen(keys.run_samples(run_id))
                if run["lease"]:
                    pipe.eval(
                        HOLD, 1, keys.lease(run["board"]), run["lease"], int(LEASE_TTL_S * 1000)
                    )
                else:
                    pipe.eval("return 0", 0)  # no lease to hold: lost
            found = pipe.execute()
        states = dict(zip(agents, found[: len(agents)], strict=True))
        acks = dict(zip(asked, found[len(agents) : len(agents) + len(asked)], strict=True))
        rest = iter(found[len(agents) + len(asked) :])
        moved: dict[str, dict[str, Any]] = {}
        for run_id, run in runs.items():
            held, leased = next(rest), next(rest)
            try:
                self._judge(
                    run_id,
                    run,
                    states.get(run["agent"]),
                    acks.get(run["agent"], []),
                    held,
                    bool(leased),
                    now,
                    moved,
                )
            except BrokerUnavailable as exc:
                log.warning("follower_broker_unavailable", run=run_id, error=str(exc))
        # Deadlines moved by samples stored: one round trip for all of them.
        with self.client.pipeline(transaction=False) as pipe:
            for run_id, fields in moved.items():
                pipe.hset(keys.run(run_id), mapping=fields)
            pipe.execute()

    def _judge(
        self,
        run_id: str,
        run: dict[str, Any],
        agent_state: str | None,
        acks: list[str],
        held: int,
        leased: bool,
        now: float,
        moved: dict[str, dict[str, Any]],
    ) -> None:
        job = RunJob(self.client, self.settings, run_id)
        follow = json.loads(run["follow"])
        attempt = int(follow["attempt"])
        watch = self.watches.get(run_id)
        if watch is None or watch.attempt != attempt:
            watch = self.watches[run_id] = _Watch(attempt)
        if run["state"] in keys.TERMINAL:
            job.finish(run["state"], None)  # ended, but its turn not passed on yet
            return
        if not leased:
            # The board was taken while nobody renewed its lease (the follower was away
            # longer than a TTL): the run stops and goes back to its dispatch job, which
            # waits for the board.
            if "command" in follow:
                self._cancel(run_id, run, f"{follow['command']}-lost")
            job.requeue("the board's lease was lost while the run was followed")
            return
        if "retry_at" in follow:  # the broker refused the last dispatch
            self._refused(job, run_id, run, follow, agent_state, now)
            return
        command = follow["command"]
        if run["final"]:
            final = json.loads(run["final"])
            other = final.get("attempt")
            # An agent that does not echo attempts: its final event is this dispatch's.
            if other is None or other == attempt:
                self._on_final(job, run_id, final)
                return
            if _acked(acks, command, "duplicate"):
                # The board was still running the earlier attempt, not this one: now it is
                # free, dispatch again (resuming from what is stored).
                job.retry(f"attempt {attempt} reached the board while it still ran attempt {other}")
                return
            if watch.ignored != other:
                watch.ignored = other
                log.info(
                    "earlier_attempt_final_ignored",
                    run=run_id,
                    attempt=attempt,
                    final_attempt=other,
                    final_event=final.get("event"),
                )
        # An agent refuses a run before starting it: once it runs, no ack can say so.
        if run["state"] == "dispatched":
            rejected = _rejection(acks, command)
            if rejected is not None:
                job.finish("failed", f"the agent rejected the run: {rejected}")
                return
        if run["cancel"] == "1" and watch.cancel_sent is None:
            self._cancel(run_id, run, f"{command}-cancel")
            watch.cancel_sent = now
        if watch.cancel_sent is not None and now - watch.cancel_sent > CANCEL_GRACE_S:
            job.finish("cancelled", "cancelled (the agent did not confirm)")
            return
        if agent_state != "online":
            watch.offline_since = watch.offline_since or now
            if now - watch.offline_since > AGENT_GRACE_S:
                job.finish("failed", f"agent {run['agent']} went offline during the run")
                return
        else:
            watch.offline_since = None
        deadline = RunDeadline(**follow["deadline"])
        if deadline.progress(now, held):
            follow["deadline"] = asdict(deadline)
            moved[run_id] = {"follow": json.dumps(follow), "deadline": round(deadline.at, 3)}
        if deadline.passed(now):
            # Stop whatever the board still runs of it; the next dispatch resumes.
            self._cancel(run_id, run, f"{command}-timeout")
            waited = now - follow["dispatched"]
            job.retry(
                f"no result within {waited:.0f} s (wire-model estimate {follow['estimate']:.0f} s)"
            )

    def _refused(
        self,
        job: RunJob,
        run_id: str,
        run: dict[str, Any],
        follow: dict[str, Any],
        agent_state: str | None,
        now: float,
    ) -> None:
        """A run whose command the broker refused (it may have reached the agent all the
        same): judged by its final event if one came, else sent again, cancelled or failed."""
        final = json.loads(run["final"]) if run["final"] else None
        if final is not None and final.get("attempt") in (None, follow["attempt"]):
            self._on_final(job, run_id, final)  # it did reach the agent
        elif run["cancel"] == "1":
            self._cancel_at_most(run_id, run, f"{follow['command']}-cancel")
            job.finish("cancelled", "cancelled while the broker refused its command")
        elif now < follow["retry_at"]:
            pass
        elif agent_state == "online":
            # Not before: an agent still reconnecting after the broker came back would get
            # the run only to be judged offline during it.
            job.dispatch(resend=True)
        elif now - follow["refused_since"] > follow["patience"]:
            self._cancel_at_most(run_id, run, f"{follow['command']}-cancel")
            job.finish(
                "failed",
                f"agent {run['agent']} was not back online within "
                f"{follow['patience']:.0f} s of the broker refusing the run's command",
            )

    def _on_final(self, job: RunJob, run_id: str, final: dict[str, Any]) -> None:
        kind = final.get("event")
        if kind == "cancelled":
            job.finish("cancelled", "cancelled")
        elif kind == "interrupted":
            job.retry(f"the agent restarted during the run (last seq {final.get('last_seq')})")
        elif kind == "error":
            reason = f"{final.get('kind')}: {final.get('reason')}"
            if final.get("kind") == "infrastructure":
                job.retry(reason)
            else:
                job.finish("failed", reason)
        else:
            # The score job renews the lease from now on (the reaper then knows a worker
            # has the run, and hands it back if that worker dies).
            set_run(self.client, run_id, phase="scoring")
            queue_job(self.rq_client, self.client, run_id, "score")

    def _cancel_at_most(self, run_id: str, run: dict[str, Any], command_id: str) -> None:
        """Cancel at the agent a run whose command may never have reached it: the broker
        refusing this too is no reason to keep the run (the run's end does not wait for it)."""
        try:
            self._cancel(run_id, run, command_id)
        except BrokerUnavailable as exc:
            log.warning("cancel_not_sent", run=run_id, error=str(exc))

    def _cancel(self, run_id: str, run: dict[str, Any], command_id: str) -> None:
        cancel = CancelCommand(id=command_id, type="cancel", run=run_id)
        publish_command(self.settings, command_topic(run["agent"]), cancel.dumps(), "follower")


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
