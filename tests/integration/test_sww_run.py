"""sww01 through the real runner (``farm run``'s ``run_one_board``) on simulated boards on real
ptys: one energy-mode stream gives the true positives, false negatives and false positives
the board's detector was configured for, the duty cycle and throughput of its modelled
processing, and the power the LPM01A measured, in the official runner's results lines.

The truth file is a 20 s wav with 5 wakewords; the DUT misses three (1, 2 and 4) and detects
two wakewords that are not there (at 4.0 s and 12.0 s): TP = 5 - 3 = 2, FN = 3, FP = 2."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

import numpy as np
import pytest

from agent.energy_monitor import MonitorTarget
from agent.one_board import RunInputError, RunRequest, run_one_board
from agent.runner import RunSettings
from farm.catalog import get_benchmark
from farm.protocol.sww import FRAME_S, STOP_DELAY_S
from farm.run_output import INCOMPLETE, RunFolder
from farm.sim.config import BoardConfig, LatencyConfig, SimConfig, SwwConfig
from farm.sim.server import SimFarm
from farm.sim.sww_dut import SimSwwDut
from tests.integration.farm_procs import farm_command

RUN_TIMEOUT_S = 120.0
MANTISSA_REL = 5e-4
WINDOWS = [[1.0, 1.5], [5.0, 5.4], [9.0, 9.6], [13.0, 13.5], [17.0, 17.3]]
TRUTH = [
    {
        "wav_file": "test20.wav",
        "detection_windows": WINDOWS,
        "length_sec": 20.0,
        "sample_rate": 16000,
    }
]
MISS = [1, 2, 4]
FALSE_AT_S = [4.0, 12.0]

# The checker's sww patterns (docs/measurement.md#sww-results), searched anywhere in a line.
ACCURACY = re.compile(
    r"Accuracy: (\d+) True positives, (\d+) False negatives, (\d+) False positives"
)
THROUGHPUT = re.compile(r"Estimated throughput:\s*([\d.]+) inf\./sec\.")
DUTY = re.compile(r"Average duty cycle:\s*([\d.]+)")
POWER = re.compile(r"Power\s+: ([\d.]+) mW")


def last(pattern: re.Pattern[str], text: str) -> re.Match[str] | None:
    found = None
    for line in text.splitlines():
        found = pattern.search(line) or found
    return found


@pytest.fixture
async def sww_farm(tmp_path: Path) -> SimFarm:
    truth = tmp_path / "ds" / "sww01" / "test20.json"
    truth.parent.mkdir(parents=True)
    truth.write_text(json.dumps(TRUTH))
    config = BoardConfig(
        id="s",
        model="sww01",
        energy=True,
        firmware="energy",
        latency=LatencyConfig(median_s=0.018, spread=0.05),
        sww=SwwConfig(truth=[str(truth)], miss=MISS, false_at_s=FALSE_AT_S),
    )
    farm = SimFarm(SimConfig(seed=11, boards=[config]), tmp_path / "sim")
    await farm.start()
    yield farm
    await farm.stop()


def request(farm: SimFarm, tmp_path: Path, **kwargs: object) -> RunRequest:
    b = farm.boards["s"]
    assert b.interface_port is not None and b.monitor_port is not None
    return RunRequest(
        benchmark="sww",
        mode="energy",
        dataset=tmp_path / "ds",
        out=tmp_path / "runs",
        interface=str(b.interface_port.path),
        monitor=MonitorTarget("lpm01a", str(b.monitor_port.path)),
        settings=RunSettings(),
        **kwargs,  # type: ignore[arg-type]
    )


async def test_miss_three_add_two_through_the_runner(sww_farm: SimFarm, tmp_path: Path) -> None:
    async with asyncio.timeout(RUN_TIMEOUT_S):
        folder = await run_one_board(request(sww_farm, tmp_path, truth="test20.json"))
    assert isinstance(folder, RunFolder) and not (folder.path / INCOMPLETE).exists()
    text = (folder.path / "results.txt").read_text()

    # Exactly the configured detector: TP = truth - 3, FN = 3, FP = 2.
    accuracy = last(ACCURACY, text)
    assert accuracy is not None
    assert accuracy.groups() == (str(len(WINDOWS) - 3), "3", "2")
    assert "Accuracy: 2 True positives, 3 False negatives, 2 False positives" in text.splitlines()

    b = sww_farm.boards["s"]
    dut = b.dut
    assert isinstance(dut, SimSwwDut)
    frames = list(dut.frames)
    # 20 s: 625 frames of 32 ms, all processed; the activations are the DUT's, in order.
    assert len(frames) == 625
    (sample,) = folder.samples
    assert [int(v) for v in sample.results] == [f.activation for f in frames]
    assert sample.stream is not None
    assert sample.stream.truth_file == "test20.json" and sample.stream.wav_file == "test20.wav"

    # The duty cycle from the ground truth: the first 100 frames' pin edges in 10 µs ticks.
    assert b.interface is not None
    ticks = b.interface.ticks
    starts = np.array([ticks(f.start) for f in frames[:100]]) * 10e-6
    stops = np.array([ticks(f.end) for f in frames[:100]]) * 10e-6
    on, period = np.mean(stops - starts), np.mean(np.diff(starts))
    assert sample.stream.duty_starts == tuple(ticks(f.start) for f in frames[:100])
    assert text.splitlines()[-3:] == [
        f"Average duty cycle: {on / period:1.5}",
        f"Average period: {period:1.5} s",
        f"Estimated throughput: {1.0 / on:1.5} inf./sec.",
    ]
    assert float(last(DUTY, text).group(1)) == pytest.approx(0.018 / FRAME_S, rel=0.05)  # type: ignore[union-attr]
    assert float(last(THROUGHPUT, text).group(1)) == pytest.approx(1 / 0.018, rel=0.05)  # type: ignore[union-attr]

    # The power window: start's pulse to stop's, the whole wav plus the pause; the power is
    # the power model's over that window.
    (n0, i0), (n1, i1) = sample.power_events[-2:]
    assert n1 == n0 + 1
    seconds = (i1 - i0) / 1000
    assert 20.0 + STOP_DELAY_S <= seconds <= 20.0 + 3.0
    assert b.monitor is not None and b.monitor.acquisition_t0 is not None
    t0 = b.monitor.acquisition_t0
    edges = sorted(f for f in (t0 + i0 / 1000, t0 + i1 / 1000))
    model_mw = 1e3 * b.power.energy_between(*edges) / seconds
    power = last(POWER, text)
    assert power is not None
    assert float(power.group(1)) == pytest.approx(model_mw, rel=MANTISSA_REL)
    lines = text.splitlines()
    assert lines[:4] == [
        "Power Edition Output",
        "Energy data for trial 0",
        f"  Elapsed time  : {i1 / 1000 - i0 / 1000}",
        "  Inferences    : 1",
    ]

    # results.json: one element, the runner's sww shape.
    (element,) = json.loads((folder.path / "results.json").read_text())
    assert element["mode"] == "e"
    assert element["infer"]["wav_file"] == "test20.wav"
    assert element["infer"]["detection_windows"] == WINDOWS
    assert element["infer"]["detections"] == list(sample.stream.detections_ms)
    assert (element["infer"]["iterations"], element["infer"]["warmups"]) == (1, 0)
    assert element["dutycycle"]["period"] == period
    assert element["activations"] == [f.activation for f in frames]
    assert element["power"]["voltage"] == get_benchmark("sww").supply_voltage == 3.3
    png = folder.path / "energy_inf_000.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # Not the official long file: TP + FN = 5, the checker wants 50.
    assert any("TP + FN = 50" in p for p in folder.problems)
    assert "ERROR" not in text


async def test_refused_before_anything_is_sent(sww_farm: SimFarm, tmp_path: Path) -> None:
    with pytest.raises(RunInputError, match="no such truth file"):
        await run_one_board(request(sww_farm, tmp_path))  # the long file is not there
    with pytest.raises(RunInputError, match="--limit does not apply to sww01"):
        req = request(sww_farm, tmp_path, truth="test20.json")
        req.settings.limit = 1
        await run_one_board(req)
    with pytest.raises(RunInputError, match="sww01 runs in energy mode only"):
        req = request(sww_farm, tmp_path, truth="test20.json")
        req.mode = "accuracy"
        await run_one_board(req)
    assert not (tmp_path / "runs").exists()
    assert sww_farm.boards["s"].i2s.frames_sent == 0


async def test_cli_refuses_sww_in_accuracy_mode(tmp_path: Path) -> None:
    args = ["run", "--benchmark", "sww", "--mode", "accuracy", "--dataset", str(tmp_path)]
    status, _, err = await farm_command([*args, "--port", "x"], {}, 60)
    assert status == 2
    assert "sww01 runs in energy mode only" in " ".join(err.split())
