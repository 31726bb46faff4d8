"""Run commands and run events carry the dispatch's attempt number; ingest keeps a later
attempt's final event over an earlier one's, whatever their clocks say."""

from __future__ import annotations

import json

from controller.ingest.run_events import event_updates
from farm.messages import COMMANDS, RUN_EVENTS, Done, RunCommand

IDS = {"agent": "pi-a", "board": "b-1", "run": "r-1"}


def done(attempt: int | None, time: float) -> Done:
    return Done(event="done", count=1, digest="d", attempt=attempt, time=time, **IDS)


def test_the_attempt_is_optional_and_left_out_when_unset() -> None:
    """Messages without an attempt stay valid (older agents and controllers), and a message
    whose attempt is unset does not state it (an older receiver refuses unknown fields)."""
    command = RunCommand(
        id="c", type="run", board="b-1", run="r-1", benchmark="kws", mode="accuracy"
    )
    assert "attempt" not in json.loads(command.dumps())
    again = COMMANDS.validate_json(command.model_copy(update={"attempt": 2}).dumps())
    assert isinstance(again, RunCommand) and again.attempt == 2
    assert "attempt" not in json.loads(done(None, 1.0).dumps())
    assert RUN_EVENTS.validate_json(done(3, 1.0).dumps()).attempt == 3


def test_a_later_attempts_final_event_is_kept_over_an_earlier_ones() -> None:
    later = done(2, 100.0).dumps().decode()
    # The first attempt's done, sent later by its clock, arrives after the second's.
    late = done(1, 200.0)
    assert event_updates(late, "running", later, late.dumps().decode()) == {}
    # The second attempt's final event replaces the first's, whatever the clocks.
    earlier = done(1, 300.0).dumps().decode()
    assert event_updates(done(2, 100.0), "dispatched", earlier, later) == {"final": later}
    # Within one attempt the latest wins; an event without an attempt ranks as attempt 0.
    assert event_updates(done(None, 400.0), "running", earlier, "x") == {}
    assert event_updates(done(1, 301.0), "running", earlier, "y") == {"final": "y"}
