"""Every operation on a board, kept in Redis: who did what, when, and how it ended.

A capped list per board (``farm:board:{board}:ops``, newest first, :data:`keys.OPS_KEPT`):
operations from ``farm board`` (health checks, flashes, power cycles, releases, reservations,
console sessions) and the controller's own (scheduled health checks, quarantines, reservations
that expired or whose holder disappeared). ``farm status --board`` shows it.
"""

from __future__ import annotations

import getpass
import json
import os
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import redis

from controller import keys

#: Who the controller's own operations are recorded as.
CONTROLLER = "controller"

Result = Literal["ok", "failed"]


@dataclass(frozen=True)
class Operation:
    """One entry of a board's history."""

    op: str
    """``health-check``, ``flash``, ``power-cycle``, ``release``, ``reserve``, ``unreserve``,
    ``quarantine``, ``console``."""
    who: str
    result: Result
    reason: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)
    time: float = field(default_factory=time.time)

    def to_json(self) -> str:
        """The entry as stored."""
        return json.dumps(asdict(self), separators=(",", ":"))


def user() -> str:
    """Who runs this command: ``FARM_USER`` (a lab account shared by several people can set
    it), else the login name."""
    return os.environ.get("FARM_USER") or getpass.getuser()


def record(client: redis.Redis, board: str, operation: Operation) -> None:
    """Add ``operation`` to ``board``'s history (the oldest beyond the cap dropped)."""
    with client.pipeline(transaction=False) as pipe:
        pipe.lpush(keys.board_ops(board), operation.to_json())
        pipe.ltrim(keys.board_ops(board), 0, keys.OPS_KEPT - 1)
        pipe.execute()


def recent(client: redis.Redis, board: str, count: int = keys.OPS_KEPT) -> list[dict[str, Any]]:
    """``board``'s newest ``count`` operations, newest first."""
    return [json.loads(raw) for raw in client.lrange(keys.board_ops(board), 0, count - 1)]


def latest(client: redis.Redis, boards: list[str]) -> dict[str, dict[str, Any]]:
    """Each board's latest operation (boards without one left out), in one round trip."""
    with client.pipeline(transaction=False) as pipe:
        for board in boards:
            pipe.lindex(keys.board_ops(board), 0)
        found = pipe.execute()
    return {board: json.loads(raw) for board, raw in zip(boards, found, strict=True) if raw}
