"""A run dispatch's deadline: fixed at dispatch from the wire-time estimate, moved later only
by samples stored, so a run whose final event is lost still ends."""

from __future__ import annotations

from controller.deadline import SLACK, RunDeadline


def test_the_deadline_is_the_estimate_with_its_slack_and_moves_only_with_new_samples() -> None:
    # 100 samples, 10 s of set-up, 1 s a sample: a 110 s estimate.
    deadline = RunDeadline.at_dispatch(0.0, 110.0, 10.0, 100, 0)
    assert deadline.at == SLACK * 110.0
    assert not deadline.passed(SLACK * 110.0) and deadline.passed(SLACK * 110.0 + 0.1)
    # Nothing new stored: polling never moves it (a stored ETA would have, for ever).
    assert not deadline.progress(500.0, 0)
    assert deadline.at == SLACK * 110.0
    # New samples late in the run give the missing ones their modelled time again.
    assert deadline.progress(200.0, 40)
    assert deadline.at == 200.0 + SLACK * 60 * 1.0
    # The same count again moves nothing; samples are finite, and so is the deadline.
    assert not deadline.progress(300.0, 40)
    assert deadline.progress(330.0, 100)
    assert deadline.at == 330.0 + SLACK * 1.0  # one sample's time for the final event


def test_a_resumed_dispatch_counts_what_was_stored_before_it() -> None:
    deadline = RunDeadline.at_dispatch(0.0, 110.0, 10.0, 100, 90)
    assert not deadline.progress(1.0, 90)
    assert deadline.progress(219.0, 95) and deadline.at == 219.0 + SLACK * 5
