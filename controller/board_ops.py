"""One operation on one board through its agent (health check, flash, power cycle), from a
synchronous controller process: ``farm board ...`` or a scheduled health check's job.

The operation holds the board's lease for its whole length (token ``op:<operation>:<who>:``),
so no run is dispatched to the board meanwhile and a run job waits it out
(:mod:`controller.jobs`); it is sent on the agent's command topic like a run, and its answer is
the agent's command ack as ingest stores it (``farm:agent:{agent}:acks``): ``accepted``, then
``done`` or ``failed`` with the agent's reason and detail. Each is bounded by a timeout sized
for the operation (a flash and a health check of a board that does not answer take longer
than a power cycle's command), and recorded in the board's history.
"""

from __future__ import annotations

import json
import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import redis

from controller import board_history, keys
from controller.board_history import Operation
from controller.commands import BrokerUnavailable, publish_command
from controller.reservations import get as get_reservation
from controller.settings import Settings
from controller.store import Lease, board_status, get_run, lease_holder
from farm.logs import get_logger
from farm.messages import (
    FlashCommand,
    HealthCheckCommand,
    PowerCycleCommand,
    command_topic,
)

log = get_logger("controller.board_ops")

BoardCommand = FlashCommand | PowerCycleCommand | HealthCheckCommand

#: How long each operation may take at the agent, by command type: a health check that finds
#: no answer tries every baud and both builds (a minute and more), a power cycle's command
#: may take a minute before the check, a flash tool three (the agent's default flash timeout)
#: before the ports come back and the check.
TIMEOUTS_S = {"health-check": 120.0, "power-cycle": 200.0, "flash": 330.0}
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

    def to_json(self) -> dict[str, Any]:
        """For ``--json`` output."""
        return {
            "ok": self.ok,
            "outcome": self.outcome,
            "reason": self.reason,
            "detail": self.detail,
            "seconds": round(self.seconds, 3),
        }


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
        log.info("operation_sent", board=board, op=command.type, who=who, command=command.id)
        result = _wait(client, agent, command, timeout_s or TIMEOUTS_S[command.type], started)
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
    log.info(
        "operation_finished",
        board=board,
        op=command.type,
        who=who,
        outcome=result.outcome,
        reason=result.reason,
    )
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
                    outcome == "done", outcome, ack.get("reason"), ack.get("detail") or {}, elapsed
                )
        if elapsed > timeout_s:
            return OperationResult(
                False,
                "timeout",
                f"no result from agent {agent} within {timeout_s:.0f} s (it may still be at it)",
                seconds=elapsed,
            )
        time.sleep(POLL_S)
