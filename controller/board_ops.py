"""One operation on one board through its agent (health check, flash, power cycle), from a
synchronous controller process: ``farm board ...`` or a scheduled health check's job.

The operation holds the board's lease for its whole length (token ``op:<operation>:<who>:``),
so no run is dispatched to the board meanwhile and a run job waits it out
(:mod:`controller.jobs`); it is sent on the agent's command topic like a run, and its answer is
the agent's command ack as ingest stores it (``farm:agent:{agent}:acks``): ``accepted``, then
``done`` or ``failed`` with the agent's reason and detail. The wait for it is bounded
(:func:`bound_s`), and the operation recorded in the board's history.

**The bounds.** A health check's is the wire-time model's (:func:`controller.estimate.
health_check_s`: every exchange the agent's check may make at the bauds the board's status
lists, each by the agent's own timeout) times the slack the controller gives every modelled
time (:data:`controller.deadline.SLACK`), so a slow-baud board gets a longer one. A flash
and a power cycle run a tool whose time the model cannot know: the flash tool's limit
(``FARM_FLASH_TIMEOUT_S``, the agent's default ``firmware.timeout_s`` unless a lab gives its
tool longer) or the power-cycle command's (:data:`farm.board_timing.POWER_COMMAND_TIMEOUT_S`),
then the wait for the board's ports before and after it and the check, with the same slack.
"""

from __future__ import annotations

import json
import os
import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import redis

from controller import board_history, keys
from controller.board_history import Operation
from controller.commands import BrokerUnavailable, publish_command
from controller.deadline import SLACK
from controller.estimate import health_check_s
from controller.reservations import get as get_reservation
from controller.retention import env_seconds
from controller.settings import Settings
from controller.store import Lease, board_status, get_run, lease_holder
from farm.board_timing import FLASH_TIMEOUT_S, POWER_COMMAND_TIMEOUT_S, REENUMERATION_S
from farm.logs import get_logger
from farm.messages import (
    FlashCommand,
    HealthCheckCommand,
    PowerCycleCommand,
    command_topic,
)

log = get_logger("controller.board_ops")

BoardCommand = FlashCommand | PowerCycleCommand | HealthCheckCommand

#: The longest ``FARM_FLASH_TIMEOUT_S`` may say (an hour: a flash tool that takes longer
#: is stuck).
MAX_FLASH_TIMEOUT_S = 3600.0
#: How often the agent's acks are read.
POLL_S = 0.25
#: The agent's newest acks looked at for the operation's answer.
ACKS_SCANNED = 200


class OperationRefused(Exception):
    """The operation was not sent: the board is busy or reserved by someone else, its agent
    is offline, the broker unreachable (the message says which)."""


@dataclass(frozen=True)
class OperationResult:
    """How an operation ended: the agent's final ack (``done`` or ``failed``) or a timeout."""

    ok: bool
    outcome: str
    """``done``, ``failed``, ``rejected``, ``duplicate`` or ``timeout``."""
    reason: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    bound_s: float = 0.0
    """How long the controller would have waited for the result (:func:`bound_s`, or the
    caller's ``--timeout``)."""

    def to_json(self) -> dict[str, Any]:
        """For ``--json`` output."""
        return {
            "ok": self.ok,
            "outcome": self.outcome,
            "reason": self.reason,
            "detail": self.detail,
            "seconds": round(self.seconds, 3),
            "bound_s": round(self.bound_s, 3),
        }


def flash_timeout_s() -> float:
    """``FARM_FLASH_TIMEOUT_S``: how long the agents' flash tools may take (default: the
    agent's own default, :data:`farm.board_timing.FLASH_TIMEOUT_S`); ``ValueError`` naming a
    bad value."""
    value = env_seconds("FARM_FLASH_TIMEOUT_S", round(FLASH_TIMEOUT_S), os.environ)
    if not 0 < value <= MAX_FLASH_TIMEOUT_S:
        raise ValueError(f"FARM_FLASH_TIMEOUT_S={value}: expected more than 0 and up to 3600")
    return value


def bound_s(kind: str, status: dict[str, Any]) -> float:
    """How long the controller waits for the result of operation ``kind`` on a board of
    ``status`` (see the module docstring)."""
    check = SLACK * health_check_s(status)
    if kind == "health-check":
        return check
    tool = flash_timeout_s() if kind == "flash" else POWER_COMMAND_TIMEOUT_S
    # The ports are waited for before the tool and after it, then the board is checked.
    return tool + SLACK * 2 * REENUMERATION_S + check


def command_for(kind: str, board: str, **fields: Any) -> BoardCommand:
    """The command of operation ``kind`` on ``board`` (a fresh id)."""
    command_id = f"op-{board}-{time.strftime('%Y%m%d%H%M%S')}-{secrets.token_hex(3)}"
    if kind == "flash":
        return FlashCommand(id=command_id, type="flash", board=board, **fields)
    if kind == "power-cycle":
        return PowerCycleCommand(id=command_id, type="power-cycle", board=board)
    return HealthCheckCommand(id=command_id, type="health-check", board=board)


def busy_reason(client: redis.Redis, board: str) -> str | None:
    """What holds ``board``'s lease now: an operation (``flash by alice``) or a run (``run
    R``); None when it is free."""
    token = client.get(keys.lease(board))
    if token is None:
        return None
    holder = lease_holder(token)
    if holder is not None:
        return holder
    for run_id in client.smembers(keys.RUNS_ACTIVE):
        if get_run(client, run_id).get("board") == board:
            return f"run {run_id} (farm cancel {run_id} stops it)"
    return "a run"


def agent_of(client: redis.Redis, board: str) -> str:
    """The agent that owns ``board`` and is online (``OperationRefused`` if it is not)."""
    status = board_status(client, board)
    agent = (status or {}).get("agent")
    if not agent:
        raise OperationRefused(f"board {board} has no agent")
    state = client.hget(keys.agent(agent), "state")
    if state != "online":
        raise OperationRefused(f"board {board}'s agent {agent} is {state or 'unknown'}")
    return agent


def run_operation(
    client: redis.Redis,
    settings: Settings,
    command: BoardCommand,
    who: str,
    *,
    timeout_s: float | None = None,
    lease_wait_s: float = 0.0,
    force: bool = False,
) -> OperationResult:
    """Send ``command`` to the board's agent and wait for its result; record it in the
    board's history. Waits up to ``lease_wait_s`` for a busy board; ``force`` ignores
    another person's reservation. ``OperationRefused`` when it could not be sent."""
    board = command.board
    reservation = get_reservation(client, board)
    if reservation is not None and reservation.holder != who and not force:
        raise OperationRefused(
            f"board {board} is {reservation.describe()}; ask them, or use --force"
        )
    agent = agent_of(client, board)
    oplog = log.bind(board=board, op=command.type, who=who)
    bound = timeout_s or bound_s(command.type, board_status(client, board) or {})
    lease = take_lease(client, board, f"op:{command.type}:{who}:", lease_wait_s)
    stop, lost = threading.Event(), threading.Event()
    keeper = threading.Thread(target=lease.keep, args=(stop, lost), daemon=True)
    keeper.start()
    started = time.monotonic()
    try:
        try:
            publish_command(
                settings, command_topic(agent), command.dumps(), f"op-{command.type}-{board}"
            )
        except BrokerUnavailable as exc:
            raise OperationRefused(str(exc)) from None
        oplog.info("operation_sent", command=command.id, bound_s=round(bound, 1))
        result = _wait(client, agent, command, bound, started)
    finally:
        stop.set()
        keeper.join(5)
        lease.release()
    board_history.record(
        client,
        board,
        Operation(
            command.type,
            who,
            "ok" if result.ok else "failed",
            reason=result.reason,
            detail={**result.detail, "seconds": round(result.seconds, 3)},
        ),
    )
    oplog.info("operation_finished", outcome=result.outcome, reason=result.reason)
    return result


def take_lease(client: redis.Redis, board: str, holder: str, wait_s: float) -> Lease:
    """``board``'s lease for an operation (``holder``: ``op:<operation>:<who>:``), waiting up
    to ``wait_s`` for a busy board; ``OperationRefused`` saying what holds it."""
    give_up = time.monotonic() + wait_s
    while True:
        lease = Lease.acquire(client, board, holder=holder)
        if lease is not None:
            return lease
        if time.monotonic() >= give_up:
            raise OperationRefused(f"board {board} is busy: {busy_reason(client, board)}")
        time.sleep(POLL_S)


def _wait(
    client: redis.Redis, agent: str, command: BoardCommand, timeout_s: float, started: float
) -> OperationResult:
    """The agent's final answer to ``command`` (its acks as ingest stored them)."""
    while True:
        elapsed = time.monotonic() - started
        for raw in client.lrange(keys.agent_acks(agent), -ACKS_SCANNED, -1):
            ack = json.loads(raw)
            if ack.get("command") != command.id:
                continue
            outcome = ack.get("outcome")
            if outcome in ("done", "failed", "rejected", "duplicate"):
                return OperationResult(
                    outcome == "done",
                    outcome,
                    ack.get("reason"),
                    ack.get("detail") or {},
                    elapsed,
                    timeout_s,
                )
        if elapsed > timeout_s:
            return OperationResult(
                False,
                "timeout",
                f"no result from agent {agent} within {timeout_s:.0f} s (it may still be at it)",
                seconds=elapsed,
                bound_s=timeout_s,
            )
        time.sleep(POLL_S)
