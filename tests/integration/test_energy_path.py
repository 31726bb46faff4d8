"""The energy path end to end: a DUT's ``infer`` through the interface board while the LPM01A
simulator measures it; the window the events bracket holds exactly the power model's energy."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

from agent.energy_monitor import window_energy
from agent.interface_client import InterfaceClient
from agent.lpm01a_client import Lpm01aClient
from farm.models import MODELS
from farm.sim.server import SimBoard
from farm.synthetic import encode_input
from tests.integration.sim_boards import energy_board, energy_clients

SETTLE_S = 5.0
#: 4-digit mantissas: each sample is within half a unit of its 4th digit, i.e. 5e-4 relative,
#: so the sum of positive samples is too.
MANTISSA_REL = 5e-4


@contextlib.asynccontextmanager
async def energy_rig(
    directory: Path, *, median_s: float, seed: int
) -> AsyncIterator[tuple[SimBoard, Lpm01aClient, InterfaceClient]]:
    """A started energy board with the agent's clients of its LPM01A and interface board."""
    board = energy_board(directory, median_s=median_s, seed=seed)
    async with energy_clients(board, 9600) as (lpm, interface):
        yield board, lpm, interface


async def test_infer_energy_window_matches_the_power_model(tmp_path: Path) -> None:
    async with energy_rig(tmp_path / "energy-1", median_s=0.01, seed=1) as (board, lpm, interface):
        assert board.monitor is not None
        # The runner's order: monitor set-up (target off), power on, acquisition, then the
        # interface's setbaud (which flushes the DUT's boot banner from the board's queue).
        await lpm.setup(1800)
        boots = board.dut.boots
        await lpm.power(True, voltage_mv=1800)
        async with asyncio.timeout(SETTLE_S):
            while not (board.dut.boots > boots and board.dut.ready.is_set()):  # noqa: ASYNC110
                await asyncio.sleep(0.01)
        await lpm.start()
        await interface.resync()

        spec = MODELS["kws01"]
        dut = interface.dut(spec)
        assert await dut.profile() == ("ULPMark for tinyML Firmware V0.0.1", "kws01")
        await dut.load(encode_input(spec, label=0, u=0.1, file_bytes=spec.input_bytes, seed=2))
        lpm.drain()  # the download period
        result = await dut.infer(20, 5)
        assert result.elapsed_us is None  # energy build: the timestamps are pin pulses
        window = await lpm.window(events=2)
        await lpm.stop()

        energy = window_energy(window, lpm.freq_hz)
        assert energy.events[1] == energy.events[0] + 1
        # The same sample-aligned interval, straight from the power model.
        t0 = board.monitor.acquisition_t0
        assert t0 is not None
        f = board.monitor.freq_hz
        start = t0 + (window.first_sample + energy.start) / f
        stop = t0 + (window.first_sample + energy.stop) / f
        expected = board.power.energy_between(start, stop)
        assert abs(energy.energy_j - expected) <= MANTISSA_REL * expected
        assert energy.energy_j > board.power.active_w * 0.9 * energy.seconds

        # The window is the 20 inferences plus the first pulse's hold, floored to the 1 ms
        # grid; scheduling delays of the simulated DUT can only lengthen it.
        truth = board.dut.records[-1]
        assert truth.phase == "infer" and truth.count == 20
        assert -0.002 <= energy.seconds - truth.total_us / 1e6 <= 0.02


async def test_consecutive_windows_number_events_without_gaps(tmp_path: Path) -> None:
    """Several ``infer`` windows in one acquisition, drained one by one as the runner does."""
    pairs = 3
    async with energy_rig(tmp_path / "energy-2", median_s=0.002, seed=2) as (_, lpm, interface):
        await lpm.setup(1800)
        await lpm.power(True, voltage_mv=1800)
        await lpm.start()
        await interface.resync()
        spec = MODELS["kws01"]
        dut = interface.dut(spec)
        await dut.load(bytes(spec.input_bytes))
        numbers: list[int] = []
        lpm.drain()
        for _ in range(pairs):
            await dut.infer(50, 0)
            window = await lpm.window(events=2)
            numbers += [n for n, _ in window.events]
            energy = window_energy(window, lpm.freq_hz)
            assert energy.seconds >= 50 * 0.002 * 0.8
        assert numbers == list(range(numbers[0], numbers[0] + 2 * pairs))
        await lpm.stop()
