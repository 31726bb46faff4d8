"""An energy run measured by a JS220, end to end: a simulated kws01 energy DUT and its
simulated interface board on real ptys, while the fake joulescope module (the one mock: the
JS220 is USB-only) streams 1 MS/s current, voltage and GPI0 from the same board's power model
and timestamp pin. Through ``farm run``'s runner and through the agent service (MQTT, the
board worker's health check and run), every window's energy equals the power model's energy
over the window the two rising edges bracket, and so do the official results lines."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from agent.config import AgentConfig, BoardConfig, DeviceConfig, Match, MonitorConfig
from agent.energy_monitor import MonitorTarget
from agent.js220_client import PARAMETERS
from agent.one_board import RunRequest, run_one_board
from agent.runner import RunSettings
from agent.service import AgentService
from farm.catalog import get_benchmark
from farm.dataset_synth import synth_dataset
from farm.run_output import INCOMPLETE
from farm.sim.config import BoardConfig as SimBoardConfig
from farm.sim.config import LatencyConfig, SimConfig
from farm.sim.server import SimBoard, SimFarm
from tests import fake_joulescope
from tests.fake_joulescope import FakeDevice, Live
from tests.integration.farm_procs import AGENT, Mosquitto, Observer, send, wait_until

SERIAL = "000415"
#: The DUT's own supply (a JS220 supplies nothing).
VOLTS = 3.3
RUN_TIMEOUT_S = 180.0
#: float32 current and voltage: each raw sample's i*v is within ~1e-7 of the model's.
REL = 1e-6
#: results.txt prints µJ/inf with 3 decimals: half a unit of the last place, plus the float
#: error of the expected value (a window whose exact value was 150.4825 printed 150.482, off by
#: 5e-4 + 8.5e-11, and failed a bound of exactly 5e-4).
PRINTED = 5e-4 + 1e-9
ENERGY_MEDIAN = re.compile(r"Median energy cost is ([0-9.]+) uJ/inf")


@pytest.fixture
async def sim(tmp_path: Path) -> AsyncIterator[SimFarm]:
    """One kws01 energy board (DUT and interface board; its LPM01A stays unused)."""
    board = SimBoardConfig(
        id="kws-j",
        model="kws01",
        energy=True,
        firmware="energy",
        latency=LatencyConfig(median_s=0.005),
    )
    farm = SimFarm(SimConfig(seed=5, boards=[board]), tmp_path / "sim")
    await farm.start()
    try:
        # No LPM01A switches this DUT's supply: it boots on its own.
        await asyncio.wait_for(farm.boards["kws-j"].dut.ready.wait(), 5)
        yield farm
    finally:
        await farm.stop()


@pytest.fixture
def js220(monkeypatch: pytest.MonkeyPatch, sim: SimFarm) -> Iterator[tuple[FakeDevice, Live]]:
    """The fake joulescope with our JS220 on the board, and another JS220 elsewhere."""
    board = sim.boards["kws-j"]
    live = Live(board.power, board.gpio, voltage_v=VOLTS, lag_s=0.3)
    device = FakeDevice(SERIAL, live)
    fake_joulescope.install(monkeypatch, device, FakeDevice("000777", live))
    yield device, live
    assert not [t for t in threading.enumerate() if t.name.startswith("js220-reader")]


def rising_edges(board: SimBoard) -> list[float]:
    """Record the times of the timestamp pin's rising edges (the JS220's events)."""
    times: list[float] = []
    board.gpio.subscribe(lambda t, level: times.append(t) if level else None)
    return times


def window_truths(
    board: SimBoard, live: Live, rising: list[float], windows: list[dict[str, Any]]
) -> list[float]:
    """Check each window against the power model; return the true energy per inference."""
    # Event n of the acquisition is its n-th rising edge (the first sample cannot be one).
    edges = [k for k in (live.sample_of(t) for t in rising) if k >= 1]
    per_inference = []
    for w in windows:
        (n0, i0), (n1, i1) = w["power_events"][-2:]
        assert n1 == n0 + 1
        a, b = edges[n0], edges[n1]
        # The raw samples after the first edge up to and including the second.
        truth = board.power.energy_between(live.time_of(a + 1), live.time_of(b + 1))
        assert w["energy_j"] == pytest.approx(truth, rel=REL)
        assert truth > board.power.active_w * 0.9 * w["count"] * 0.005 * 0.5
        # One short bin per event: less than one sample more than the window's ms.
        assert 0 <= (i1 - i0) - (b - a) / 1000 < 1
        assert w["energy_window_s"] == (i1 - i0) / 1000
        assert all(v is not None and v == v for v in w["power_samples"])  # nothing lost
        per_inference.append(truth / w["count"])
    return per_inference


async def test_farm_run_through_a_js220_equals_the_power_model(
    tmp_path: Path, sim: SimFarm, js220: tuple[FakeDevice, Live]
) -> None:
    device, live = js220
    board = sim.boards["kws-j"]
    rising = rising_edges(board)
    synth_dataset(tmp_path / "ds", get_benchmark("kws01").dataset_id, limit=5)
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
    assert not device.is_open and device.stream_buffer is None  # closed
    assert len(folder.samples) == 5
    windows = [
        {
            "power_events": s.power_events,
            "power_samples": s.power_samples,
            "energy_j": s.energy_j,
            "energy_window_s": s.energy_window_s,
            "count": s.count,
        }
        for s in folder.samples
    ]
    per_inference = window_truths(board, live, rising, windows)
    text = (folder.path / "results.txt").read_text()
    trials = re.findall(r"  Energy/Inf    : ([0-9.]+) uJ/inf", text)
    assert [float(t) for t in trials] == pytest.approx(
        [1e6 * e for e in per_inference], rel=REL, abs=PRINTED
    )
    [median] = ENERGY_MEDIAN.findall(text)
    assert float(median) == pytest.approx(1e6 * float(np.median(per_inference)), abs=2e-4)


async def test_the_agent_runs_energy_through_its_js220(
    tmp_path: Path, sim: SimFarm, js220: tuple[FakeDevice, Live]
) -> None:
    """The agent service in this process (the fake module and the simulator are here), with
    a real Mosquitto: the board's health check reaches the energy DUT without any monitor
    powering it, and its energy run opens the JS220 by the serial agent.yaml names."""
    device, live = js220
    board = sim.boards["kws-j"]
    rising = rising_edges(board)
    entry = json.loads(sim.boards_json.read_text())["boards"][0]
    synth_dataset(tmp_path / "ds", get_benchmark("kws01").dataset_id, limit=5)
    broker = Mosquitto(tmp_path / "mqtt")
    await broker.start()
    config = AgentConfig(
        agent=AGENT,
        broker={"url": broker.url},
        datasets=tmp_path / "ds",
        journal=tmp_path / "agent.sqlite",
        sim_boards=[sim.boards_json],
        boards=[
            BoardConfig(
                id="kws-j",
                dut=DeviceConfig(match=Match(serial=entry["dut"]["usb"]["serial"])),
                interface=DeviceConfig(match=Match(serial=entry["interface"]["usb"]["serial"])),
                monitor=MonitorConfig(kind="js220", match=Match(serial=SERIAL)),
            )
        ],
    )
    observer = Observer(broker.url)
    service = asyncio.create_task(AgentService(config).run())
    try:
        await observer.start()
        status = await wait_until(
            lambda: (
                (s := observer.board_status.get((AGENT, "kws-j")))
                and s["state"] == "idle"
                and s["health"] != "unknown"
                and s
            ),
            30,
            "board kws-j idle",
        )
        assert (status["model"], status["build"], status["health"]) == ("kws01", "energy", "good")
        await send(
            broker.url,
            AGENT,
            {
                "type": "run",
                "id": "cmd-e",
                "board": "kws-j",
                "run": "r-e",
                "benchmark": "kws01",
                "mode": "energy",
                "options": {"limit": 2, "min_window_s": 0.5, "calibration_s": 0.2},
            },
        )
        done = await wait_until(lambda: observer.finished("r-e"), 120, "run r-e")
        assert done["event"] == "done", done
        windows = observer.unique_samples("r-e")
        assert sorted(windows) == [0, 1]
        window_truths(board, live, rising, [windows[0], windows[1]])
        assert device.parameters == dict(PARAMETERS)
        assert not device.is_open
    finally:
        service.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await service
        await observer.stop()
        await broker.stop()
