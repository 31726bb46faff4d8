"""A run dispatch's deadline: fixed at dispatch from the wire-time estimate, moved later only
by samples stored, so a run whose final event is lost still ends."""

from __future__ import annotations

from controller.deadline import SLACK, RunDeadline
from controller.estimate import (
    SETUP_ALLOWANCE_S,
    TRACE_BYTES_PER_S,
    UPLOAD_BYTES_PER_S,
    estimate_run_s,
    samples_expected,
)
from farm.catalog import get_benchmark
from farm.messages import RunOptions
from farm.protocol import sww


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


def test_an_sww01_dispatch_waits_out_the_whole_official_stream() -> None:
    """The official script streams the 1,200 s wav: the board plays it for its length (plus
    the runner's margin), then the trace's 1.2 M samples travel; a dispatch is not given up
    before all of it could have happened at the reference pace, twice over."""
    bench = get_benchmark("sww01")
    options = RunOptions()  # the official long truth file
    estimate = estimate_run_s(bench, "energy", options)
    upload = (1200 + sww.PLAY_MARGIN_S) * TRACE_BYTES_PER_S / UPLOAD_BYTES_PER_S
    assert upload > 25  # 29 MB at 1 MB/s
    stream = 1200 + sww.PLAY_MARGIN_S + sww.STOP_DELAY_S + upload
    assert SETUP_ALLOWANCE_S + stream < estimate < SETUP_ALLOWANCE_S + stream + 60
    deadline = RunDeadline.at_dispatch(
        0.0, estimate, SETUP_ALLOWANCE_S, samples_expected(bench, "energy", options), 0
    )
    assert deadline.at == SLACK * estimate
    # The short official file's run is shorter by the difference of the wavs.
    short = estimate_run_s(bench, "energy", RunOptions(truth="sww_short_test.json"))
    assert estimate - short > 1000
