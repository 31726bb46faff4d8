"""Quarantine: a board that failed a health check the controller scheduled is out of service
until an operator takes it back (``farm board release``, which checks it again first).

Kept in Redis (``farm:board:{board}:quarantine``: reason, since, by) apart from the health the
agent reports: an agent restart may find the board answering again, but a board that failed
unattended stays out until someone has looked at it, as LAVA keeps a device's bad health.
:func:`unavailable` is what sweeps and run jobs ask: quarantined or reserved, and why.
"""

from __future__ import annotations

import time
from typing import Any

import redis

from controller import board_history, keys, reservations
from controller.board_history import Operation


def quarantine(client: redis.Redis, board: str, reason: str, who: str) -> None:
    """Take ``board`` out of service for ``reason``, recorded in its history."""
    client.hset(
        keys.board_quarantine(board), mapping={"reason": reason, "since": time.time(), "by": who}
    )
    board_history.record(client, board, Operation("quarantine", who, "ok", reason=reason))


def get(client: redis.Redis, board: str) -> dict[str, Any] | None:
    """``board``'s quarantine (reason, since, by), or None."""
    raw = client.hgetall(keys.board_quarantine(board))
    if not raw:
        return None
    return {
        "reason": raw.get("reason", ""),
        "since": float(raw.get("since") or 0),
        "by": raw.get("by"),
    }


def lift(client: redis.Redis, board: str) -> bool:
    """Put ``board`` back into service; False if it was not quarantined."""
    return bool(client.delete(keys.board_quarantine(board)))


def describe(entry: dict[str, Any], board: str) -> str:
    """The reason a quarantined board is skipped, with the way out."""
    return f"quarantined: {entry['reason']} (farm board release {board})"


def unavailable(client: redis.Redis, boards: list[str], now: float) -> dict[str, str]:
    """Why each of ``boards`` takes no runs now (quarantined, reserved); boards that do are
    left out."""
    with client.pipeline(transaction=False) as pipe:
        for board in boards:
            pipe.hgetall(keys.board_quarantine(board))
        found = pipe.execute()
    why: dict[str, str] = {
        board: describe({"reason": raw.get("reason", "")}, board)
        for board, raw in zip(boards, found, strict=True)
        if raw
    }
    for board, reservation in reservations.current(client, boards, now).items():
        why.setdefault(board, reservation.describe())
    return why
