"""The DUT client against the simulated DUT over real ptys, at the three reference bauds."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import pytest

from agent import serial_link
from agent.dut_client import DirectChannel, DutClient
from agent.errors import DeviceCommandError, DeviceTimeout
from agent.serial_link import PortBusy, PortNotFound, SerialLink
from farm.models import MODELS
from farm.synthetic import encode_input, simulated_output
from farm.wire import wire_time
from tests.integration.deadlines import assert_on_time

from .conftest import BoardFactory, DirectBoard

# Full-size loads at 9600 baud take a minute for vww01 (66,900 bytes on the wire) and 7 s
# for ic01: those two run with the slow scenarios.
CASES = [
    pytest.param(
        model,
        baud,
        marks=[pytest.mark.slow] if (baud == 9600 and model in ("vww01", "ic01")) else [],
    )
    for baud in (9600, 115200, 921600)
    for model in ("kws01", "vww01", "ic01", "ad01")
]


@pytest.mark.parametrize(("model", "baud"), CASES)
async def test_full_exchange(direct_board: BoardFactory, model: str, baud: int) -> None:
    board = await direct_board(model, baud)
    client = board.client
    spec = MODELS[model]

    assert await client.name() == "unspecified"
    assert await client.profile() == ("ULPMark for tinyML Firmware V0.0.1", model)

    data = encode_input(spec, label=1, u=0.25, file_bytes=spec.input_bytes, seed=3)
    await client.load(data)

    result = await client.infer(3, 1)
    truth = board.dut.records[-1]
    assert truth.phase == "infer" and truth.count == 3
    assert result.elapsed_us == truth.window_us
    # the window is the three inferences plus the print time of the first lap line
    lap_line = len(f"m-lap-us-{result.start_us}\r\n")
    assert truth.window_us == truth.total_us + round(wire_time(lap_line, baud) * 1e6)
    expected = simulated_output(spec, data, board.dut.quality)
    assert result.results == pytest.approx(expected, abs=1e-3)
    assert await client.results() == result.results


async def test_load_at_115200_takes_at_least_the_wire_time(direct_board: BoardFactory) -> None:
    board = await direct_board("vww01", 115200)
    data = bytes(range(256)) * 108  # 27,648 bytes
    link = board.link
    before = link.bytes_in + link.bytes_out
    started = time.monotonic()
    await board.client.load(data)
    took = time.monotonic() - started
    moved = link.bytes_in + link.bytes_out - before
    assert moved > 2 * len(data)  # hex doubles the payload; commands and m-ready add more
    assert took >= wire_time(moved, 115200)


async def test_lap_counter_wrap(direct_board: BoardFactory) -> None:
    """A window across the 32-bit wrap still gives the true elapsed time (the official
    runner reports throughput 0 there)."""
    board = await direct_board("ad01", 921600, clock_start_us=2**32 - 1_500_000, median_s=0.002)
    client = board.client
    await client.load(bytes(MODELS["ad01"].input_bytes))
    # Start a 0.2 s window when the counter is 0.1 s short of the wrap.
    now = await client.timestamp()
    assert now is not None and 2**32 - now > 100_000
    await asyncio.sleep((2**32 - now - 100_000) / 1e6)
    result = await client.infer(100, 0)
    assert result.start_us is not None and result.end_us is not None
    assert result.end_us < result.start_us  # wrapped
    assert result.elapsed_us == board.dut.records[-1].window_us > 0


async def test_device_error_carries_the_device_text(direct_board: BoardFactory) -> None:
    board = await direct_board("kws01")
    with pytest.raises(DeviceCommandError, match=r"Input db has 0 elemented, expected 490"):
        await board.client.infer(1, 0)
    with pytest.raises(DeviceCommandError, match=r"Inference iterations must be >0") as info:
        await board.client.command("infer 0")
    assert info.value.device_text == "e-[Inference iterations must be >0]"


async def test_missing_port_is_named(tmp_path: Path) -> None:
    missing = str(tmp_path / "nope")
    with pytest.raises(PortNotFound, match=missing):
        await SerialLink.open(missing, 115200)


async def test_busy_port_is_named(direct_board: BoardFactory) -> None:
    board = await direct_board("kws01")
    with pytest.raises(PortBusy, match=str(board.port.path)):
        await SerialLink.open(str(board.port.path), 115200)


async def test_an_open_waits_for_this_process_own_slow_close_of_the_port(
    direct_board: BoardFactory,
) -> None:
    """A close whose fd release outlasted its wait (a busy CPU) leaves the port locked a
    little longer: the next open of it here (a run right after its health check, a retry
    right after its earlier attempt) waits for it instead of failing PortBusy."""
    board = await direct_board("kws01")
    path = str(board.port.path)
    # The state a slow close leaves: the port registered as closing, its lock still held
    # (a close cannot be made slow on demand).
    serial_link._CLOSING[path] = board.link._inbox
    opening = asyncio.create_task(SerialLink.open(path, 115200))
    await asyncio.sleep(0.3)
    assert not opening.done()  # waiting, not failed
    await board.link.close()  # the release arrives
    link = await asyncio.wait_for(opening, 5)
    assert link.is_open and path not in serial_link._CLOSING
    await link.close()
    # A lock nobody is releasing (a link still open, another process) is named at once.
    other = await SerialLink.open(path, 115200)
    try:
        with pytest.raises(PortBusy, match=path):
            await SerialLink.open(path, 115200)
    finally:
        await other.close()


async def test_nothing_answering_suggests_the_baud(tmp_path: Path) -> None:
    master, slave = os.openpty()
    try:
        link = await SerialLink.open(os.ttyname(slave), 115200)
        client = DutClient(DirectChannel(link))
        started = time.monotonic()
        with pytest.raises(DeviceTimeout, match=r"(?i)check the baud") as info:
            await client.name()
        assert_on_time(time.monotonic() - started, info.value.timeout)
        await link.close()
    finally:
        os.close(master)
        os.close(slave)


async def test_wrong_baud_gets_no_valid_reply(direct_board: BoardFactory) -> None:
    board = await direct_board("kws01", 115200)
    await board.link.close()
    link = await SerialLink.open(str(board.port.path), 9600)
    try:
        with pytest.raises(DeviceTimeout, match="baud"):
            await DutClient(DirectChannel(link)).name()
    finally:
        await link.close()


async def test_boards_run_concurrently(direct_board: BoardFactory) -> None:
    boards = [await direct_board(m, 921600, median_s=0.05) for m in ("kws01", "ic01", "ad01")]
    for b in boards:
        await b.client.load(bytes(MODELS[b.client.model.id].input_bytes))  # type: ignore[union-attr]
    spans: list[tuple[float, float]] = []

    async def timed_infer(board: DirectBoard) -> None:
        started = time.monotonic()
        await board.client.infer(10, 0)
        spans.append((started, time.monotonic()))

    await asyncio.gather(*(timed_infer(b) for b in boards))
    # Three ~0.5 s windows side by side, not one after another: every run had started before
    # the first one ended (true however loaded the machine, false for runs in turn).
    assert max(s for s, _ in spans) < min(e for _, e in spans)
