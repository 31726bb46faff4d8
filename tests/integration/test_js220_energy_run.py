"""An energy run measured by a JS220, end to end: ``farm run``'s runner drives a simulated
kws01 energy DUT through its simulated interface board on real ptys, while the fake
joulescope module (the one mock: the JS220 is USB-only) streams 1 MS/s current, voltage and
GPI0 from the same board's power model and timestamp pin. Every window's energy, the official
results lines and the median equal the power model's energy over the window the two rising
edges bracket."""

from __future__ import annotations

import asyncio
import re
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest

from agent.energy_monitor import MonitorTarget
from agent.js220_client import PARAMETERS
from agent.one_board import RunRequest, run_one_board
from agent.runner import RunSettings
from farm.catalog import get_benchmark
from farm.dataset_synth import synth_dataset
from farm.run_output import INCOMPLETE
from farm.sim.server import SimBoard
from tests import fake_joulescope
from tests.fake_joulescope import FakeDevice, Live
from tests.integration.sim_boards import energy_board

SERIAL = "000415"
#: The DUT's own supply (a JS220 supplies nothing).
VOLTS = 3.3
RUN_TIMEOUT_S = 180.0
#: float32 current and voltage: each raw sample's i*v is within ~1e-7 of the model's.
REL = 1e-6
ENERGY_MEDIAN = re.compile(r"Median energy cost is ([0-9.]+) uJ/inf")


@pytest.fixture
async def board(tmp_path: Path) -> AsyncIterator[SimBoard]:
    sim = energy_board(tmp_path / "js220", median_s=0.005, seed=5)
    await sim.start()
    try:
        # No LPM01A switches this DUT's supply: it boots on its own.
        await asyncio.wait_for(sim.dut.ready.wait(), 5)
        yield sim
    finally:
        await sim.stop()


async def test_energy_run_through_a_js220_equals_the_power_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, board: SimBoard
) -> None:
    live = Live(board.power, board.gpio, voltage_v=VOLTS, lag_s=0.3)
    rising: list[float] = []
    board.gpio.subscribe(lambda t, level: rising.append(t) if level else None)
    device = FakeDevice(SERIAL, live)
    fake_joulescope.install(monkeypatch, device, FakeDevice("000777", live))
    bench = get_benchmark("kws01")
    synth_dataset(tmp_path / "ds", bench.dataset_id, limit=5)
    assert board.interface_port is not None
    request = RunRequest(
        benchmark="kws01",
        mode="energy",
        dataset=tmp_path / "ds",
        out=tmp_path / "runs",
        interface=str(board.interface_port.path),
        monitor=MonitorTarget("js220", SERIAL),
        settings=RunSettings(min_window_s=0.5, max_window_s=2.0, calibration_s=0.2),
    )
    async with asyncio.timeout(RUN_TIMEOUT_S):
        folder = await run_one_board(request)

    assert not (folder.path / INCOMPLETE).exists()
    assert device.parameters == dict(PARAMETERS)
    assert not device.is_open and not [
        t for t in threading.enumerate() if t.name.startswith("js220-reader")
    ]
    assert device.stream_buffer is None  # closed
    # Event n of the acquisition is its n-th rising edge (the first sample cannot be one).
    edges = [k for k in (live.sample_of(t) for t in rising) if k >= 1]
    assert len(folder.samples) == 5
    per_inference = []
    for sample in folder.samples:
        (n0, i0), (n1, i1) = sample.power_events[-2:]
        assert n1 == n0 + 1
        a, b = edges[n0], edges[n1]
        # The raw samples after the first edge up to and including the second.
        truth = board.power.energy_between(live.time_of(a + 1), live.time_of(b + 1))
        assert sample.energy_j == pytest.approx(truth, rel=REL)
        assert truth > board.power.active_w * 0.9 * sample.count * 0.005 * 0.5
        # One short bin per event: less than one sample more than the window's ms.
        assert 0 <= (i1 - i0) - (b - a) / 1000 < 1
        assert sample.energy_window_s == (i1 - i0) / 1000
        assert not any(v != v for v in sample.power_samples)  # nothing lost
        per_inference.append(truth / sample.count)

    text = (folder.path / "results.txt").read_text()
    trials = re.findall(r"  Energy/Inf    : ([0-9.]+) uJ/inf", text)
    assert [float(t) for t in trials] == pytest.approx(
        [1e6 * e for e in per_inference], rel=REL, abs=5e-4
    )
    [median] = ENERGY_MEDIAN.findall(text)
    assert float(median) == pytest.approx(1e6 * float(np.median(per_inference)), abs=2e-4)
