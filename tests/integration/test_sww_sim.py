"""The simulated streaming-wakeword bench over real ptys: the interface board plays a
synthetic wav built from a truth file to the sww01 DUT over I2S at the real frame timing;
the DUT's detector model, its processing pin and its WW_DETECTED pulses reach the board's
logs exactly as modelled, and the LPM01A measures the stream between the two timestamps."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from agent.energy_monitor import window_energy
from agent.interface_client import InterfaceClient
from agent.lpm01a_client import Lpm01aClient
from farm.models import MODELS
from farm.protocol import sww
from farm.sim.config import BoardConfig, LatencyConfig, SwwConfig
from farm.sim.server import SimBoard
from farm.sim.sww_dut import SimSwwDut
from tests.integration.sim_boards import energy_clients

MANTISSA_REL = 5e-4
#: A 6 s wav: wakewords at 1.0-1.5 s and 3.0-3.4 s.
TRUTH = [
    {
        "wav_file": "six.wav",
        "detection_windows": [[1.0, 1.5], [3.0, 3.4]],
        "length_sec": 6.0,
        "sample_rate": 16000,
    }
]


@contextlib.asynccontextmanager
async def sww_rig(
    directory: Path, sww_config: SwwConfig
) -> AsyncIterator[tuple[SimBoard, Lpm01aClient, InterfaceClient]]:
    config = BoardConfig(
        id=directory.name,
        model="sww01",
        energy=True,
        firmware="energy",
        latency=LatencyConfig(median_s=0.016, spread=0.05),
        sww=sww_config,
    )
    board = SimBoard(config, directory=directory, seed=7)
    async with energy_clients(board, 115200) as (lpm, interface):
        yield board, lpm, interface


async def test_stream_reaches_the_board_logs_as_modelled(tmp_path: Path) -> None:
    truth = tmp_path / "six.json"
    truth.write_text(json.dumps(TRUTH))
    config = SwwConfig(truth=[str(truth)], miss=[1], false_at_s=[4.5], frames=2)
    async with sww_rig(tmp_path / "sww-1", config) as (board, lpm, interface):
        assert board.monitor is not None and board.interface is not None
        assert board.interface.files["six.wav"] == 6.0
        assert "long_wav.wav" not in board.interface.files  # only the configured truth
        await lpm.setup(3300)
        await lpm.power(True, voltage_mv=3300)
        await lpm.start()
        await interface.resync()
        dut = interface.dut(MODELS["sww01"])
        assert await dut.profile() == ("MLPerf Tiny Firmware V0.1.0", "sww01")
        assert await dut.timestamp() is None  # a pin pulse, no lap line

        assert sww.stream_stop(await dut.command("stop")).stopped is False
        assert sww.stream_started(await dut.command("start")) is True
        await interface.record_detections()
        assert await interface.play("six.wav", 6.0)
        await asyncio.sleep(sww.STOP_DELAY_S)
        stop = sww.stream_stop(await dut.channel.exchange("stop", reply_bytes=4096))
        detections = await interface.print_detections()
        starts, stops = await interface.print_dutycycle()
        window = await lpm.window(events=2)
        await lpm.stop()

        sim = board.dut
        assert isinstance(sim, SimSwwDut)
        frames = list(sim.frames)
        # 6 s at 16 kHz is 187 whole frames of 512 samples, every one processed.
        assert len(frames) == 187 == len(stop.activations)
        assert stop.damaged_rows == 0
        assert list(stop.activations) == [f.activation for f in frames]
        # The sync pulse on frame 0, two frames for the first wakeword, none for the missed
        # second one, one false detection in the frame holding 4.5 s.
        detected = [k for k, f in enumerate(frames) if f.detected]
        assert detected[0] == 0 and detected[3] == int(4.5 / sww.FRAME_S)
        assert detected[1] + 1 == detected[2]
        assert 1.0 <= detected[1] * sww.FRAME_S <= 1.5 + 0.2
        assert sim.detector.occurrences == 2
        ticks = board.interface.ticks
        assert detections == tuple(ticks(frames[k].end - 1e-6) // 100 for k in detected)
        # The duty-cycle log holds the first 100 frames' pin edges to the tick.
        assert starts == tuple(ticks(f.start) for f in frames[:100])
        assert stops == tuple(ticks(f.end) for f in frames[:100])

        # The energy window: the stream between start's and stop's timestamp pulses.
        energy = window_energy(window, lpm.freq_hz)
        assert 6.0 + sww.STOP_DELAY_S <= energy.seconds <= 6.0 + 2.0
        t0 = board.monitor.acquisition_t0
        assert t0 is not None
        f = board.monitor.freq_hz
        t_start = t0 + (window.first_sample + energy.start) / f
        t_stop = t0 + (window.first_sample + energy.stop) / f
        expected = board.power.energy_between(t_start, t_stop)
        assert abs(energy.energy_j - expected) <= MANTISSA_REL * expected
        # The window holds the whole stream: every frame's modelled processing lies between
        # the two timestamps, and the DUT only idled outside them. (The draw itself switches
        # when the simulator's task runs, which under load is later than the modelled edges,
        # so the frames' modelled busy time is not the window's active time.)
        assert t_start <= frames[0].start and frames[-1].end <= t_stop
        power = board.power
        assert power.energy_between(t0, t_start) == pytest.approx(power.idle_w * (t_start - t0))
        now = asyncio.get_running_loop().time()
        assert power.energy_between(t_stop, now) == pytest.approx(power.idle_w * (now - t_stop))
        assert expected > power.idle_w * energy.seconds * 1.5  # the frames' draw is inside


async def test_frames_are_ignored_without_a_stream(tmp_path: Path) -> None:
    truth = tmp_path / "six.json"
    truth.write_text(json.dumps(TRUTH))
    async with sww_rig(tmp_path / "sww-2", SwwConfig(truth=[str(truth)])) as (board, lpm, iface):
        await lpm.setup(3300)
        await lpm.power(True, voltage_mv=3300)
        await iface.resync()
        await iface.record_detections()
        assert not await iface.play("nothing.wav", 1.0)
        assert await iface.play("six.wav", 6.0)  # no `start`: the DUT ignores the audio
        sim = board.dut
        assert isinstance(sim, SimSwwDut)
        assert board.i2s.frames_sent == 187 and len(sim.frames) == 0
        assert await iface.print_detections() == ()
