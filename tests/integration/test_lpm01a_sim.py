"""The LPM01A client against the simulated PowerShield over a real pty at 3686400 baud."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from agent.errors import DeviceCommandError, DeviceTimeout
from agent.lpm01a_client import Lpm01aClient, StreamItem
from agent.serial_link import SerialLink
from farm.protocol.errors import LocalProtocolError
from farm.protocol.lpm01a import HOST_BAUD, AcquisitionCompleted, Samples, TimeStamp
from farm.sim.faults import FaultSpec
from farm.sim.server import SimBoard
from tests.integration.deadlines import assert_on_time
from tests.integration.sim_boards import energy_board

SETTLE_S = 5.0


async def settle(predicate: Callable[[], bool]) -> None:
    """Wait (bounded) for background simulator state to reach ``predicate``."""
    async with asyncio.timeout(SETTLE_S):
        # Polled: the simulators expose counters, not an event per change.
        while not predicate():  # noqa: ASYNC110
            await asyncio.sleep(0.01)


@pytest.fixture
async def board(tmp_path: Path) -> AsyncIterator[SimBoard]:
    sim = energy_board(tmp_path / "lpm", median_s=0.005, seed=1)
    await sim.start()
    await asyncio.wait_for(sim.dut.ready.wait(), SETTLE_S)
    yield sim
    await sim.stop()


@pytest.fixture
async def lpm(board: SimBoard) -> AsyncIterator[Lpm01aClient]:
    assert board.monitor_port is not None
    link = await SerialLink.open(str(board.monitor_port.path), HOST_BAUD)
    client = Lpm01aClient(link)
    yield client
    await client.close()
    await link.close()


async def test_setup_sequence_is_acked(board: SimBoard, lpm: Lpm01aClient) -> None:
    await lpm.setup(1800)
    fw = board.monitor.firmware  # type: ignore[union-attr]
    assert fw.host_control and fw.voltage_mv == 1800 and fw.freq_hz == 1000
    assert fw.output == "energy" and fw.eventsrc == ("d7", "fal") and fw.acqtime_s is None
    assert fw.lcd == ["MLPerf Tiny", "     monitor    "]
    assert not board.rail.on  # setup switches the target off
    await lpm.power(True, voltage_mv=1800)
    assert board.rail.on and fw.lcd[1] == "           1.8V "
    reply = await lpm.command("volt get")
    assert reply.value == "1800-03"
    await lpm.teardown()
    assert not fw.host_control and not board.rail.on


async def test_range_errors_carry_the_device_text(lpm: Lpm01aClient) -> None:
    with pytest.raises(DeviceCommandError, match="host control required") as info:
        await lpm.command("volt 1800m")
    assert info.value.device_text == "host control required (send htc first)"
    await lpm.command("htc")
    with pytest.raises(DeviceCommandError, match=r"out of range \[1.8; 3.3\]"):
        await lpm.command("volt 3500m")
    with pytest.raises(DeviceCommandError, match="frequency '3k' not supported"):
        await lpm.command("freq 3k")
    with pytest.raises(LocalProtocolError):
        await lpm.voltage(3500)  # refused before it is sent
    with pytest.raises(DeviceCommandError, match="no acquisition in progress"):
        await lpm.stop()
    await lpm.voltage(3300)  # the shell is still in step


async def test_lost_ack_times_out_within_the_computed_deadline(
    board: SimBoard, lpm: Lpm01aClient
) -> None:
    await lpm.command("htc")
    board.monitor.faults.arm(FaultSpec(kind="ack_lost", command="volt"))  # type: ignore[union-attr]
    started = time.monotonic()
    with pytest.raises(DeviceTimeout) as info:
        await lpm.voltage(2000)
    elapsed = time.monotonic() - started
    assert info.value.timeout == pytest.approx(lpm.timeout_for("volt 2000m"))
    assert_on_time(elapsed, info.value.timeout)
    # The command did take effect; only its ack was lost. The next one is answered.
    assert board.monitor.firmware.voltage_mv == 2000  # type: ignore[union-attr]
    reply = await lpm.command("volt get")
    assert reply.value == "2000-03"


async def test_timestamp_every_1000_samples(board: SimBoard, lpm: Lpm01aClient) -> None:
    await lpm.setup(1800)
    seen: list[StreamItem] = []
    async with lpm.stream() as stream:
        await lpm.start()
        async for item in stream:
            seen.append(item)
            if sum(isinstance(i, TimeStamp) for i in seen) == 2:
                break
    await lpm.stop()
    stamps = [i for i, item in enumerate(seen) if isinstance(item, TimeStamp)]
    samples_before = [sum(isinstance(x, Samples) for x in seen[:i]) for i in stamps]
    assert samples_before == [1000, 2000]
    assert [(s.seconds, s.millis) for s in (seen[i] for i in stamps)] == [(1, 0), (2, 0)]  # type: ignore[union-attr]
    assert all(0 <= s.buff <= 99 for s in seen if isinstance(s, TimeStamp))
    # The target is off after setup: every sample is zero energy.
    assert all(v == 0 for s in seen if isinstance(s, Samples) for v in s.values)
    window = lpm.drain()
    assert window.timestamps[:2] == ((1000, 1000), (2000, 2000))


async def test_stop_ends_with_acquisition_completed(board: SimBoard, lpm: Lpm01aClient) -> None:
    await lpm.setup(1800)
    await lpm.power(True)
    await lpm.start()
    async with lpm.stream() as stream:
        await lpm.stop()
        items = []
        async for item in stream:
            items.append(item)
            if isinstance(item, AcquisitionCompleted):
                break
    monitor = board.monitor
    assert monitor is not None and not monitor.streaming
    window = lpm.drain()
    assert len(window.samples) == monitor.samples_sent > 0
    assert isinstance(items[-1], AcquisitionCompleted)


async def test_power_cycle_reboots_the_dut(board: SimBoard, lpm: Lpm01aClient) -> None:
    await lpm.command("htc")
    boots = board.dut.boots
    await lpm.power(False)
    assert not board.rail.on
    await lpm.power(True)
    await settle(lambda: board.dut.boots == boots + 1 and board.dut.ready.is_set())
    started = time.monotonic()
    await lpm.target_reset(0.05)
    assert time.monotonic() - started >= 0.05
    await settle(lambda: board.dut.boots == boots + 2 and board.dut.ready.is_set())
    assert board.rail.on


async def test_events_follow_the_timestamp_pin(board: SimBoard, lpm: Lpm01aClient) -> None:
    """A DUT boot pulses its timestamp pin once: one event, numbered 0, placed at the
    sample whose period contains the falling edge."""
    await lpm.setup(1800)
    await lpm.start()
    edges: list[float] = []
    board.gpio.subscribe(lambda t, level: edges.append(t) if not level else None)
    await lpm.power(True)  # the DUT boots and pulses
    window = await lpm.window(events=1)
    await lpm.stop()
    monitor = board.monitor
    assert monitor is not None and monitor.acquisition_t0 is not None
    assert [n for n, _ in window.events] == [0]
    ((_, index),) = window.events
    assert len(edges) == 1
    assert index == int((edges[0] - monitor.acquisition_t0) * 1000)
