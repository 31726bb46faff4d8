"""Which messages ingest keeps in order when it handles several at once, and how several
ingest processes split them."""

from __future__ import annotations

from pathlib import Path

import pytest

from controller.ingest import Ingest
from controller.ingest.ordering import Partition, order_key
from controller.settings import Settings
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


def test_partitions_give_every_key_to_exactly_one_process() -> None:
    """Whatever the count, each key (a run, an agent, the statuses) is one process's."""
    topics = [samples_topic("pi-a", "b-1", f"r-{i}") for i in range(50)]
    topics += [heartbeat_topic(f"pi-{i}") for i in range(20)] + [agent_status_topic("pi-a")]
    for count in (1, 2, 3, 5):
        parts = [Partition.parse(f"{i}/{count}") for i in range(count)]
        for topic in topics:
            assert sum(p.owns(order_key(topic)) for p in parts) == 1
        if count > 1:
            assert all(any(p.owns(order_key(t)) for t in topics) for p in parts)
    assert str(Partition.parse("1/4")) == "1/4"


@pytest.mark.parametrize("text", ["2/2", "0/0", "1", "a/2", "-1/2", "0/2/3", ""])
def test_a_partition_that_cannot_be_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="partition"):
        Partition.parse(text)


def test_a_partition_and_a_shared_subscription_exclude_each_other() -> None:
    settings = Settings("redis://127.0.0.1:1", "mqtt://127.0.0.1:1", Path("/nonexistent"))
    with pytest.raises(ValueError, match="not both"):
        Ingest(settings, share=True, partition=Partition(0, 2))
    Ingest(settings, share=True, partition=Partition(0, 1))  # one part: everything
