"""The sweep line's ETA: a run that tells no progress until its one sample (an sww01 stream)
counts down with the time it has run, instead of standing at its whole estimate."""

from __future__ import annotations

import pytest

from controller.estimate import SETUP_ALLOWANCE_S, estimate_run_s
from controller.progress import sweep_eta
from farm.catalog import get_benchmark
from farm.messages import RunOptions


def run(state: str, **fields: str) -> dict[str, str]:
    return {"board": "e-sww", "benchmark": "sww01", "mode": "energy", "state": state, **fields}


def test_a_stream_counts_down_with_its_running_time() -> None:
    whole = estimate_run_s(get_benchmark("sww01"), "energy", RunOptions()) - SETUP_ALLOWANCE_S
    assert sweep_eta([run("queued")], {}) == pytest.approx(whole)
    started = run("running", dispatched_at="1000.0", done="0", total="1")
    assert sweep_eta([started], {}, now=1600.0) == pytest.approx(whole - 600)
    # Past its estimate it does not go negative; an agent's own ETA wins.
    assert sweep_eta([started], {}, now=1000.0 + whole + 50) == 0.0
    assert sweep_eta([{**started, "eta_s": "42"}], {}, now=1600.0) == 42.0
    # Dispatched again and not running yet: the whole estimate again, not the old attempt's.
    assert sweep_eta([{**started, "state": "dispatched"}], {}, now=1600.0) == pytest.approx(whole)
