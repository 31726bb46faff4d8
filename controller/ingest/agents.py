"""Agents and boards: their statuses (retained, replayed, possibly stale), heartbeats and
command acks into Redis, and an agent of another protocol version refused.

**Which status counts.** An agent's statuses, and its boards', carry ``started``: the agent
process's start generation, kept in its journal, which grows with every start of that agent
whatever its clock says. It alone orders them:
a status of an earlier start than the stored one is stale; within one start the latest to
arrive wins (the broker keeps a topic's messages in order, and the retained copy sent at
subscription is the newest). A status without it cannot be placed and is refused
(``missing_generation``). The ``time`` a status carries orders nothing: it is whatever the
sender's clock says.

**Who owns a board.** The first agent to report a board owns it. Another agent's status for
it is refused (``board_conflict``), whether the owner is online or not, until the owner's own
config drops it (an ``online`` status of the owner whose ``boards`` leave it out) or an
operator releases it by deleting the board's hash (docs/operations.md#board-ownership)."""

from __future__ import annotations

import contextlib
import json
import re
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import aiomqtt

from controller import keys
from controller.ingest.ledger import Ledger
from controller.ingest.parse import Rejected
from farm.logs import get_logger
from farm.messages import (
    ID_PATTERN,
    PROTOCOL_VERSION,
    AgentStatus,
    BoardStatus,
    RefuseCommand,
    Topic,
    command_topic,
)

log = get_logger("controller.ingest.agents")

_ID = re.compile(ID_PATTERN)

#: Publishes a command (topic, payload) at QoS 1; false when there is no broker connection to
#: publish on (yet).
Publish = Callable[[str, bytes], Awaitable[bool]]


class Agents:
    """The handler of the agent-level topics and board statuses, writing through ``ledger``;
    ``publish`` sends an incompatible agent its refuse command."""

    def __init__(self, ledger: Ledger, publish: Publish) -> None:
        self.ledger = ledger
        self.publish = publish
        self._refused: dict[str, str] = {}
        """Agent -> the connection (its ``started``) already refused: one refuse each."""

    async def status(self, topic: Topic, status: AgentStatus, text: str, retained: bool) -> None:
        """An agent's status (``text``, the payload, is stored as it came)."""
        redis = self.ledger.redis
        if status.started is None:
            raise Rejected("missing_generation", f"agent {topic.agent}: status without started")
        stored = await redis.hget(keys.agent(topic.agent), "status")
        if status.started < _started(stored):
            # A status of an earlier run of the agent (a retained one, or one a persistent
            # session kept) must not overwrite the running agent's: e.g. its old "offline".
            raise Rejected("stale_agent_status", f"agent {topic.agent}: status of an earlier start")
        pipe = redis.pipeline(transaction=False)
        pipe.hset(
            keys.agent(topic.agent),
            mapping={
                "state": status.state,
                "protocol": status.protocol,
                "software": status.software or "",
                "status": text,
                "last_seen": _seen(status.time, retained),
            },
        )
        pipe.sadd(keys.AGENTS, topic.agent)
        await self.ledger.commit(pipe, {"accepted_agent_status": 1})
        if status.state != "online":
            log.info("agent_state", agent=topic.agent, state=status.state)
            return
        if status.protocol != PROTOCOL_VERSION:
            await self._refuse(topic.agent, status.protocol, repr(status.started or status.time))
        else:
            self._refused.pop(topic.agent, None)

    async def refuse_unreadable(self, topic: Topic, raw: Any) -> None:
        """An agent of another protocol version may well send a status this version cannot
        validate: refuse it all the same if it says it is online under another protocol."""
        if not isinstance(raw, dict) or raw.get("state") != "online":
            return
        protocol = raw.get("protocol")
        if not isinstance(protocol, int) or isinstance(protocol, bool):
            return
        if protocol != PROTOCOL_VERSION and _ID.match(topic.agent):
            await self._refuse(topic.agent, protocol, repr(raw.get("started") or raw.get("time")))

    async def _refuse(self, agent: str, protocol: int, connection: str) -> None:
        """Tell an incompatible agent so (once per agent process start)."""
        if self._refused.get(agent) == connection:
            return
        reason = f"agent protocol {protocol}, controller speaks {PROTOCOL_VERSION}"
        command = RefuseCommand(id=f"refuse-{uuid.uuid4().hex}", type="refuse", reason=reason)
        try:
            if not await self.publish(command_topic(agent), command.dumps()):
                return
        except aiomqtt.MqttError as exc:
            # Not marked: the agent's next online status tries again.
            log.warning("refuse_failed", agent=agent, error=str(exc))
            return
        self._refused[agent] = connection
        await self.ledger.commit(None, {"refused_agents": 1})
        log.warning("agent_refused", agent=agent, reason=reason, command=command.id)

    async def heartbeat(self, topic: Topic, text: str) -> None:
        """An agent's heartbeat: it was seen now."""
        pipe = self.ledger.redis.pipeline(transaction=False)
        pipe.hset(keys.agent(topic.agent), mapping={"last_seen": time.time(), "heartbeat": text})
        pipe.sadd(keys.AGENTS, topic.agent)
        await self.ledger.commit(pipe, {"accepted_heartbeat": 1})

    async def board_status(
        self, topic: Topic, status: BoardStatus, text: str, retained: bool
    ) -> None:
        """A board's status, unless it is of an earlier start of its agent or the board
        belongs to another agent (see the module docstring)."""
        assert topic.board is not None
        if status.started is None:
            raise Rejected("missing_generation", f"board {topic.board}: status without started")
        redis = self.ledger.redis
        board_key = keys.board(topic.board)
        owner, stored = await redis.hmget(board_key, ["agent", "status"])
        if owner == topic.agent and status.started < _started(stored):
            raise Rejected("stale_board_status", f"board {topic.board}: of an earlier start")
        if owner and owner != topic.agent:
            owner_status = await redis.hget(keys.agent(owner), "status")
            if not _gave_up(owner_status, topic.board):
                raise Rejected("board_conflict", f"board {topic.board} belongs to agent {owner}")
            log.info("board_moved", board=topic.board, from_agent=owner, to_agent=topic.agent)
        pipe = redis.pipeline(transaction=False)
        pipe.hset(
            board_key,
            mapping={
                "agent": topic.agent,
                "status": text,
                "last_seen": _seen(status.time, retained),
            },
        )
        pipe.sadd(keys.BOARDS, topic.board)
        await self.ledger.commit(pipe, {"accepted_board_status": 1})

    async def command_ack(self, topic: Topic, text: str) -> None:
        """An agent's answer to a command: the newest ones kept."""
        acks_key = keys.agent_acks(topic.agent)
        pipe = self.ledger.redis.pipeline(transaction=False)
        pipe.rpush(acks_key, text)
        pipe.ltrim(acks_key, -keys.ACKS_KEPT, -1)
        await self.ledger.commit(pipe, {"accepted_command_ack": 1})


def _started(stored: str | None) -> float:
    """The ``started`` of a stored status (JSON), or -inf when there is none to compare with."""
    if stored:
        with contextlib.suppress(ValueError, AttributeError):
            value = json.loads(stored).get("started")
            if isinstance(value, int | float):
                return float(value)
    return float("-inf")


def _gave_up(owner_status: str | None, board: str) -> bool:
    """Whether the owner's stored status says its config no longer has ``board``: only an
    ``online`` status lists the agent's boards (its will and ``offline`` list none)."""
    if not owner_status:
        return False
    with contextlib.suppress(ValueError, AttributeError):
        status = json.loads(owner_status)
        boards = status.get("boards")
        return status.get("state") == "online" and isinstance(boards, list) and board not in boards
    return False


def _seen(message_time: float, retained: bool) -> float:
    """When the agent was last seen: now, except for a retained message replayed at
    subscription (its own time, so a restarted ingest does not make every agent look freshly
    seen)."""
    now = time.time()
    return min(now, message_time) if retained else now
