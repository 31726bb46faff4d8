"""What ``farm submit --suite full`` expands to: every benchmark of the catalogue, ic02 included,
on the boards that hold it or can be flashed to it, the rest listed with the reason."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from controller.demo import MODELS, DemoFarm
from controller.settings import Settings
from controller.sweeps import (
    MODES,
    SUITE_BENCHMARKS,
    Skipped,
    SweepError,
    SweepSpec,
    expand_benchmarks,
    plan,
    run_options,
    skipped_groups,
)
from farm.catalog import BENCHMARKS
from farm.messages import RunOptions


def test_the_full_suite_is_every_benchmark_of_the_catalogue() -> None:
    assert [b.id for b in expand_benchmarks([], suite=True)] == list(BENCHMARKS)
    assert "ic02" in SUITE_BENCHMARKS and "ic02" in MODELS


def test_an_ic02_board_gets_the_suites_ic02_runs_and_the_others_say_why_not() -> None:
    boards = {
        "b-ic2": {"agent": "pi-a", "model": "ic02", "build": "performance"},
        "b-kws": {
            "agent": "pi-a",
            "model": "kws01",
            "build": "performance",
            "images": {"kws01": ["performance"]},
        },
    }
    spec = SweepSpec(benchmarks=list(SUITE_BENCHMARKS), modes=list(MODES))
    runs, skipped = plan(spec, boards, {"pi-a"})
    assert {(r.board, r.benchmark, r.mode) for r in runs} == {
        ("b-ic2", "ic02", "performance"),
        ("b-ic2", "ic02", "accuracy"),
        ("b-ic2", "ic02", "latency"),
        ("b-kws", "kws01", "performance"),
        ("b-kws", "kws01", "accuracy"),
        ("b-kws", "kws01", "latency"),
    }
    reasons = {(s.board, s.benchmark, s.mode): s.reason for s in skipped}
    assert reasons[("b-kws", "ic02", "accuracy")] == (
        "holds kws01 (performance) and has no performance image for ic02 to flash"
    )
    assert reasons[("b-ic2", "ic02", "energy")] == (
        "no interface board and energy monitor for energy mode"
    )


def test_the_demos_boards_include_ic02_and_energy_goes_to_small_inputs(
    tmp_path: Path,
) -> None:
    def models(boards: int) -> list[str]:
        """The boards' models, energy-wired ones marked with a +."""
        farm = DemoFarm(Settings("redis://x", "mqtt://x", tmp_path), boards=boards, out=tmp_path)
        config = yaml.safe_load(farm._sim_config().read_text())
        return [b["model"] + ("+" if b.get("energy") else "") for b in config["boards"]]

    # Every model keeps a board that runs performance, accuracy and latency; energy goes to
    # second boards of small-input models (a vww01 energy run is minutes of UART transfer).
    eight = ["kws01", "vww01", "ic01", "ad01", "ic02", "kws01+", "vww01", "ic01+"]
    assert models(8) == eight
    assert models(4) == ["kws01", "vww01", "ic01+", "ad01+"]


def test_a_truth_file_goes_to_the_sww01_runs_of_a_mixed_sweep_only() -> None:
    boards = {
        "b-kws": {"agent": "pi-a", "model": "kws01", "build": "performance"},
        "b-sww": {"agent": "pi-a", "model": "sww01", "build": "energy", "energy": True},
    }
    spec = SweepSpec(
        benchmarks=list(SUITE_BENCHMARKS),
        modes=list(MODES),
        options=RunOptions(truth="sww_short_test.json"),
        flash=False,
    )
    runs, _ = plan(spec, boards, {"pi-a"})
    truths = {(r.benchmark, r.mode): run_options(spec, r.benchmark, r.mode).truth for r in runs}
    assert truths[("sww01", "energy")] == "sww_short_test.json"
    assert truths[("kws01", "accuracy")] is None and truths[("kws01", "performance")] is None
    # A truth file in a sweep without sww01 names nothing: refused, not sent to every run.
    with pytest.raises(SweepError, match="no sww01 run"):
        plan(dataclasses.replace(spec, benchmarks=["kws01"]), boards, {"pi-a"})


def test_skipped_runs_are_told_once_per_reason() -> None:
    no_latency = "sww01 has no latency mode"
    held = "holds ad01; flashing is off"
    skipped = (
        [Skipped(f"b{i}", "sww01", "latency", no_latency) for i in range(6)]
        + [Skipped("b1", "kws01", m, held) for m in ("energy", "accuracy")]
        + [Skipped("b1", "vww01", m, held) for m in ("accuracy", "energy")]
        + [Skipped("b1", "ad01", "accuracy", held)]
    )
    assert skipped_groups(skipped) == [
        f"6 runs (sww01: latency) on b0, b1, b2, b3 and 2 more boards: {no_latency}",
        # ad01 was skipped in accuracy only: it is not listed beside energy.
        # Met in either order, the same modes are one entry, in the modes' own order.
        f"5 runs (kws01, vww01: accuracy, energy; ad01: accuracy) on b1: {held}",
    ]
