"""Scheduled health checks, as LAVA schedules them: the controller checks a board nobody asked
about, and quarantines it if the check fails.

A board is due for a check when it is idle and either has not been checked for
``FARM_HEALTH_INTERVAL_S`` (the agent reports when its last check ended: every run starts with
one, so a busy board is never due) or reports ``FARM_HEALTH_AFTER_FAILURES`` failures in a
row. Never while it runs, has a run queued (that run starts with a check anyway), is held by
an operation, reserved or quarantined, nor when its agent is offline or its health is already
bad (the agent refuses it runs; an operator's ``farm board release`` checks it).

The worker supervisor's periodic tick (:class:`controller.reaper.Reaper`) finds the due boards
and queues one :func:`scheduled_health_check` job each on the high-priority queue, guarded by
``farm:board:{board}:check`` so that several supervisors queue it once. The job sends the
check like ``farm board health-check`` does (recorded in the board's history as the
controller's); a failed check quarantines the board (sweeps skip it with the reason) and the
agent marks its health bad, which fires the ``FarmBoardHealthBad`` alert.
"""

from __future__ import annotations

import math
import os
import secrets
import time
from dataclasses import dataclass
from typing import Any

import redis

from controller import keys, quarantine
from controller.board_history import CONTROLLER
from controller.board_ops import OperationRefused, bound_s, command_for, run_operation
from controller.queueing import queue
from controller.settings import Settings
from controller.store import all_boards, board_status, connect
from farm.logs import get_logger

log = get_logger("controller.health_schedule")

#: A board unchecked this long is checked (a day, as LAVA labs often do).
DEFAULT_INTERVAL_S = 86400.0
#: A board reporting this many failures in a row is checked (the agent's own limit, 3 by
#: default, makes it bad: one earlier, the check decides).
DEFAULT_AFTER_FAILURES = 2
#: The queue of the check jobs: a check is short and must not wait behind a sweep.
CHECK_QUEUE = "farm-high"


@dataclass(frozen=True)
class HealthPolicy:
    """When a board is due (``0`` turns a rule off)."""

    interval_s: float = DEFAULT_INTERVAL_S
    after_failures: int = DEFAULT_AFTER_FAILURES

    @classmethod
    def from_env(cls) -> HealthPolicy:
        """``FARM_HEALTH_INTERVAL_S`` and ``FARM_HEALTH_AFTER_FAILURES``; ``ValueError``
        naming a bad value."""
        interval = _number("FARM_HEALTH_INTERVAL_S", DEFAULT_INTERVAL_S)
        failures = _number("FARM_HEALTH_AFTER_FAILURES", DEFAULT_AFTER_FAILURES)
        if not failures.is_integer():
            raise ValueError(f"FARM_HEALTH_AFTER_FAILURES={failures:g}: expected a whole number")
        return cls(interval, int(failures))


def _number(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if not raw:
        return float(default)
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r}: expected a number (0 turns it off)") from None
    if value < 0:
        raise ValueError(f"{name}={raw!r}: expected 0 or more")
    return value


def why_due(status: dict[str, Any], policy: HealthPolicy, now: float) -> str | None:
    """Why a board of this status needs a check now (its idleness and health only), or None."""
    if status.get("state") != "idle" or status.get("health") == "bad":
        return None
    failures = int(status.get("failures") or 0)
    if policy.after_failures and failures >= policy.after_failures:
        return f"{failures} failures in a row"
    checked = status.get("checked")
    if policy.interval_s and (checked is None or now - float(checked) >= policy.interval_s):
        if checked is None:
            return "never checked"
        return f"unchecked for {now - float(checked):.0f} s"
    return None


def due(client: redis.Redis, policy: HealthPolicy, now: float) -> dict[str, str]:
    """Every board due for a scheduled check now, and why (see the module docstring)."""
    boards = all_boards(client)
    if not boards or not (policy.interval_s or policy.after_failures):
        return {}
    online = {
        a for a in client.smembers(keys.AGENTS) if client.hget(keys.agent(a), "state") == "online"
    }
    candidates = {
        board: why
        for board, status in boards.items()
        if status.get("agent") in online and (why := why_due(status, policy, now)) is not None
    }
    if not candidates:
        return {}
    names = list(candidates)
    held = quarantine.unavailable(client, names, now)
    with client.pipeline(transaction=False) as pipe:
        for board in names:
            pipe.exists(
                keys.lease(board),
                keys.board_check(board),
                keys.board_current(board),
                keys.board_waiting(board),
            )
        found = pipe.execute()
    due_now = {}
    for board, busy in zip(names, found, strict=True):
        # Held, being checked, or a run has the board or waits for it.
        if board in held or busy:
            continue
        due_now[board] = candidates[board]
    return due_now


#: How long a queued check keeps its board from being queued again at most: the judge job's
#: timeout (the longest job ahead of it on the high-priority queue) plus a check's.
GUARD_S = 3600
#: Deletes the guard (KEYS[1]) only if it holds this job's token (ARGV[1]).
_LIFT_OWN_GUARD = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def schedule(
    client: redis.Redis, rq_client: redis.Redis, policy: HealthPolicy, now: float
) -> list[str]:
    """Queue a check job for every due board not already queued; the boards queued."""
    queued = []
    for board, why in due(client, policy, now).items():
        # Held from queueing to the job's end (the job deletes it if it is still its own): a
        # check can wait on the high-priority queue behind a judge job and high-priority runs
        # as well as run, so the guard outlasts both; a lost job's guard expires.
        token = f"check-{board}-{secrets.token_hex(4)}"
        if not client.set(keys.board_check(board), token, nx=True, ex=GUARD_S):
            continue
        # The job gives up at the check's bound itself: RQ's limit only catches a job stuck
        # elsewhere (a Redis that stopped answering).
        bound = bound_s("health-check", board_status(client, board) or {})
        queue(CHECK_QUEUE, rq_client).enqueue(
            scheduled_health_check,
            board,
            why,
            token,
            job_id=token,
            job_timeout=math.ceil(2 * bound),
            result_ttl=86400,
            failure_ttl=7 * 86400,
            description=f"scheduled health check of {board} ({why})",
        )
        queued.append(board)
        log.info("health_check_scheduled", board=board, why=why)
    return queued


def scheduled_health_check(board: str, why: str, token: str = "") -> str:
    """The RQ job: check ``board`` as the controller; quarantine it if the check fails. What
    happened, in one line. ``token``: the guard this job was queued under (it lifts only
    that one, never a later check's)."""
    settings = Settings.resolve()
    client = connect(settings.redis_url)
    try:
        return check_now(client, settings, board, why)
    finally:
        client.eval(_LIFT_OWN_GUARD, 1, keys.board_check(board), token)


def check_now(client: redis.Redis, settings: Settings, board: str, why: str) -> str:
    """One scheduled check of ``board`` (``why``: what made it due), unless the board was
    taken meanwhile (a run, an operation, a reservation); a failure quarantines it. Its
    outcome is counted (``farm_scheduled_health_checks_total``)."""
    outcome, line = _check(client, settings, board, why)
    client.hincrby(keys.SCHEDULED_CHECKS, f"{board}|{outcome}", 1)
    return line


def _check(client: redis.Redis, settings: Settings, board: str, why: str) -> tuple[str, str]:
    """(outcome, what happened in one line) of one scheduled check (see :func:`check_now`)."""
    if board in quarantine.unavailable(client, [board], time.time()):
        return "skipped", f"{board}: skipped (reserved or quarantined since it was due)"
    try:
        result = run_operation(client, settings, command_for("health-check", board), CONTROLLER)
    except OperationRefused as exc:
        log.info("health_check_skipped", board=board, reason=str(exc))
        return "skipped", f"{board}: skipped ({exc})"
    if result.ok:
        return "passed", f"{board}: passed ({why})"
    if result.outcome != "failed":
        # No verdict on the board (its agent went away, rejected the command): not its fault.
        return "no_verdict", f"{board}: no verdict ({result.outcome}: {result.reason})"
    reason = f"failed a scheduled health check ({why}): {result.reason}"
    quarantine.quarantine(client, board, reason, CONTROLLER)
    log.warning("board_quarantined", board=board, reason=reason)
    return "failed", f"{board}: quarantined: {reason}"
