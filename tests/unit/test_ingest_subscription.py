"""Ingest's subscription: one plain filter unless a shared one is asked for, and statuses never
in a shared subscription (a shared subscription is sent no retained messages)."""

from __future__ import annotations

from typing import Any

import pytest
import typer.main
from paho.mqtt.client import topic_matches_sub

from controller.ingest.service import subscription
from farm.cli import app
from farm.messages import (
    agent_events_topic,
    agent_status_topic,
    board_status_topic,
    heartbeat_topic,
    run_events_topic,
    samples_topic,
)

STATUSES = [agent_status_topic("pi-1"), board_status_topic("pi-1", "b-1")]
OTHERS = [
    heartbeat_topic("pi-1"),
    agent_events_topic("pi-1"),
    samples_topic("pi-1", "b-1", "r-1"),
    run_events_topic("pi-1", "b-1", "r-1"),
]


def test_by_default_one_plain_subscription_takes_every_agent_topic() -> None:
    assert subscription("farm-ingest", False) == ("farm/v1/agent/#",)


def test_shared_takes_every_topic_once_and_statuses_only_plainly() -> None:
    filters = subscription("farm-ingest", True)
    # A shared filter matches what its part after "$share/<group>/" matches.
    bare = [f.split("/", 2)[2] if f.startswith("$share/") else f for f in filters]
    for topic in STATUSES + OTHERS:
        matched = [f for f, b in zip(filters, bare, strict=True) if topic_matches_sub(b, topic)]
        assert len(matched) == 1, (topic, matched)
        assert matched[0].startswith("$share/farm-ingest/") == (topic in OTHERS), topic


def test_a_share_group_must_be_a_plain_name() -> None:
    for group in ("", "a/b", "a+", "#"):
        with pytest.raises(ValueError):
            subscription(group, True)


def test_the_cli_defaults_to_a_plain_subscription_and_takes_both_flags() -> None:
    command: Any = typer.main.get_command(app)
    ingest = command.commands["controller"].commands["ingest"]
    for args, expected in (([], False), (["--share"], True), (["--no-share"], False)):
        with ingest.make_context("ingest", list(args)) as context:
            assert context.params["share"] is expected, args
