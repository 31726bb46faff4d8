"""A run's events (accepted ... done): kept in the run's event list, and moving the run hash
(``dispatched`` -> ``running``, progress, the final event) without overwriting what a worker
writes meanwhile."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
from typing import Any

import redis.exceptions as redis_errors

from controller import keys
from controller.ingest.ledger import Ledger
from controller.ingest.parse import acceptance
from farm.logs import get_logger
from farm.messages import Topic

log = get_logger("controller.ingest.run_events")

#: Run events after which the agent sends nothing more for that execution of the run.
FINAL_EVENTS = frozenset({"done", "error", "cancelled", "interrupted"})
#: Attempts at an optimistic (WATCH) update of a run hash that other writers keep changing.
WATCH_ATTEMPTS = 50
#: The ``FirmwareIdentity`` fields kept in a run's ``firmware``.
FIRMWARE_FIELDS = ("image", "sha256", "profile", "name", "software")


class RunEvents:
    """The run events' handler: :meth:`store` one event through ``ledger``."""

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger

    async def store(self, topic: Topic, event: Any, text: str) -> None:
        """Append ``event`` (its payload ``text``) to the run's events and apply it to the run
        hash, if the run accepts it (:func:`controller.ingest.parse.acceptance`)."""
        assert topic.run is not None
        run_key = keys.run(topic.run)
        events_key = keys.run_events(topic.run)
        # Optimistic transaction: the state change (dispatched -> running) and the `final`
        # field must not overwrite what a worker writes meanwhile.
        async with self.ledger.redis.pipeline(transaction=True) as pipe:
            for _ in range(WATCH_ATTEMPTS):
                try:
                    await pipe.watch(run_key)
                    agent, board, state, final = await pipe.hmget(
                        run_key, ["agent", "board", "state", "final"]
                    )
                    acceptance(topic, agent, board, state)
                    updates = event_updates(event, state, final, text)
                    pipe.multi()
                    pipe.rpush(events_key, text)
                    # Newest kept; the final event also lives in the run's `final` field.
                    pipe.ltrim(events_key, -keys.EVENTS_KEPT, -1)
                    if updates:
                        pipe.hset(run_key, mapping=updates)
                    # A board reporting progress is seen, whatever its last status says.
                    pipe.hset(keys.board(topic.board), "last_seen", time.time())
                    await self.ledger.commit(pipe, {"accepted_run_event": 1})
                except redis_errors.WatchError:
                    # A busy run (samples update `done`): try again a moment later.
                    await asyncio.sleep(random.uniform(0, 0.005))
                    continue
                if updates.get("state") == "running":
                    log.info("run_started", run=topic.run, agent=topic.agent)
                return
        raise RuntimeError(f"run {topic.run} changed {WATCH_ATTEMPTS} times during an update")


def event_updates(
    event: Any, state: str | None, final: str | None, text: str
) -> dict[str, str | int | float]:
    """The run-hash fields an event sets (given the run's state and stored final event)."""
    updates: dict[str, str | int | float] = {}
    live = state in ("dispatched", "running")
    if event.event == "started" and live:
        if state == "dispatched":
            updates["state"] = "running"
        updates["started_at"] = event.time
        if event.total is not None:
            updates["total"] = event.total
        if event.eta_s is not None:
            updates["eta_s"] = event.eta_s
        # The store script refuses seqs at or beyond it; empty: no limit for this execution.
        updates["seq_limit"] = "" if event.seq_limit is None else event.seq_limit
        updates["firmware"] = firmware_field(event)
    elif event.event == "progress" and live:
        updates["progress"] = event.done
        if event.total is not None:
            updates["total"] = event.total
        if event.eta_s is not None:
            updates["eta_s"] = event.eta_s
    elif event.event in FINAL_EVENTS and (event.attempt or 0, event.time) >= _event_rank(final):
        # A later attempt's final event is kept over an earlier attempt's, whatever their
        # clocks; within an attempt the latest wins (a resent older `done` must not hide a
        # newer `interrupted`). The event text, attempt included, is what the job reads.
        updates["final"] = text
    return updates


def firmware_field(started: Any) -> str:
    """The run hash's ``firmware`` (JSON) from a ``started`` event: the firmware model and
    build the DUT reported and the event's ``FirmwareIdentity`` fields (null where an older
    agent sent none). A later attempt's ``started`` replaces it: the results are that one's."""
    firmware = started.firmware.model_dump() if started.firmware is not None else {}
    return json.dumps(
        {
            "model": started.model,
            "build": started.build,
            **{k: firmware.get(k) for k in FIRMWARE_FIELDS},
        },
        separators=(",", ":"),
    )


def _event_rank(text: str | None) -> tuple[int, float]:
    """The ``(attempt, time)`` of a stored event (JSON; attempt 0 when it has none), or
    ``(0, -inf)`` when there is none to compare with."""
    rank = (0, float("-inf"))
    if not text:
        return rank
    with contextlib.suppress(ValueError, TypeError, AttributeError):
        stored = json.loads(text)
        attempt, value = stored.get("attempt"), stored.get("time")
        if not isinstance(attempt, int) or isinstance(attempt, bool):
            attempt = 0
        if isinstance(value, int | float):
            rank = (attempt, float(value))
    return rank
