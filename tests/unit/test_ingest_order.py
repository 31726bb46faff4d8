"""Which messages ingest keeps in order when it handles several at once."""

from __future__ import annotations

from controller.ingest.ordering import order_key
from farm.messages import (
    agent_status_topic,
    board_status_topic,
    heartbeat_topic,
    run_events_topic,
    samples_topic,
)


def test_what_keeps_its_order_when_messages_overlap() -> None:
    """A run's samples and events stay in order; so do all statuses together (a board moving
    from a dead agent to another is judged against the old agent's state); heartbeats and
    command acks only per agent."""
    samples, events = samples_topic("pi-a", "b-1", "r-1"), run_events_topic("pi-a", "b-1", "r-1")
    assert order_key(samples) == order_key(events) == "run:r-1"
    assert (
        order_key(agent_status_topic("pi-a"))
        == order_key(agent_status_topic("pi-b"))
        == order_key(board_status_topic("pi-b", "b-1"))
    )
    assert order_key(heartbeat_topic("pi-a")) != order_key(heartbeat_topic("pi-b"))
