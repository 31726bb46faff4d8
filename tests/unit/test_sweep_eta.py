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


def test_a_sharded_runs_time_is_its_slowest_shards_share() -> None:
    """Four shards of a 1,000-input kws01 accuracy run, each on its own board: the sweep
    waits for the shard with the most inputs left, not for the whole run on one board."""
    options = RunOptions()
    whole = estimate_run_s(get_benchmark("kws01"), "accuracy", options) - SETUP_ALLOWANCE_S
    shards = [
        {
            "board": f"k{k}",
            "benchmark": "kws01",
            "mode": "accuracy",
            "state": "running",
            "shard_range": f"[{250 * k}, {250 * (k + 1)}]",
            "total": "1000",  # each shard's agent reports the whole run's total
            "done": str(done),
        }
        for k, done in enumerate([200, 50, 250, 0])
    ]
    assert sweep_eta(shards, {}) == pytest.approx(whole * 250 / 1000)
    # An agent holding 300 inputs: shard 1 has 50 of its own (250..300), the rest none.
    small = [{**s, "total": "300", "done": "0"} for s in shards]
    assert sweep_eta(small, {}) == pytest.approx(whole * 250 / 1000)
    small[0]["done"] = "250"
    assert sweep_eta(small, {}) == pytest.approx(whole * 50 / 1000)
