"""Every simulated fault yields the documented host behaviour: the right exception, a resync
where one can help, and never a wait longer than the wire-time model's timeout."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable

import pytest

from agent.errors import DeviceReset, DeviceTimeout, GarbledReply, ResyncFailed
from agent.serial_link import LinkLost
from farm.models import MODELS
from farm.synthetic import simulated_output
from tests.integration.deadlines import assert_on_time

from .conftest import BoardFactory, DirectBoard


async def loaded(factory: BoardFactory, model: str = "kws01") -> DirectBoard:
    board = await factory(model, 115200)
    await board.client.load(bytes(MODELS[model].input_bytes))
    return board


async def fails(coro: Awaitable[object]) -> Exception:
    """Await ``coro``, which must fail; a timeout must have ended on the client's own
    computed deadline."""
    started = time.monotonic()
    try:
        await coro
    except Exception as exc:
        if isinstance(exc, DeviceTimeout):
            assert_on_time(time.monotonic() - started, exc.timeout)
        return exc
    pytest.fail("the fault did not surface as an exception")


async def test_hang_times_out_resync_fails_until_reset(direct_board: BoardFactory) -> None:
    board = await loaded(direct_board)
    board.arm(kind="hang", command="infer")
    exc = await fails(board.client.infer(10, 0))
    assert isinstance(exc, DeviceTimeout)
    assert "stopped answering" in str(exc)
    assert board.dut.faults.injected == [("hang", "infer 10 0")]
    with pytest.raises(ResyncFailed):
        await board.client.resync()
    board.dut.reset()  # power cycle
    await asyncio.wait_for(board.dut.ready.wait(), 5)
    await board.client.resync()
    assert await board.client.name() == "unspecified"


async def test_reset_mid_command_is_detected_and_recovered(direct_board: BoardFactory) -> None:
    board = await loaded(direct_board)
    boots = board.dut.boots
    board.arm(kind="reset", command="infer")
    exc = await fails(board.client.infer(5, 2))
    assert isinstance(exc, DeviceReset | DeviceTimeout)
    assert board.dut.boots == boots + 1
    await board.client.resync()
    # the reboot lost the loaded input: the firmware says so
    with pytest.raises(Exception, match="Input db has 0 elemented"):
        await board.client.infer(1, 0)


async def test_garbage_bytes_raise_garbled_reply_then_resync(direct_board: BoardFactory) -> None:
    board = await loaded(direct_board)
    board.arm(kind="garbage", command="profile", garbage_bytes=24)
    exc = await fails(board.client.profile())
    assert isinstance(exc, GarbledReply | DeviceTimeout)
    await board.client.resync()
    assert await board.client.profile() == ("ULPMark for tinyML Firmware V0.0.1", "kws01")


async def test_dropped_bytes_never_pass_silently(direct_board: BoardFactory) -> None:
    board = await loaded(direct_board, "ic01")
    board.arm(kind="drop", command="infer", drop_fraction=0.3)
    exc = await fails(board.client.infer(2, 0))
    assert isinstance(exc, GarbledReply | DeviceTimeout)
    await board.client.resync()
    result = await board.client.infer(2, 0)
    assert result.elapsed_us == board.dut.records[-1].window_us


async def test_missing_ready_times_out_at_the_model_deadline(direct_board: BoardFactory) -> None:
    board = await loaded(direct_board)
    board.arm(kind="no_ready", command="infer")
    exc = await fails(board.client.infer(20, 0))
    assert isinstance(exc, DeviceTimeout)
    assert "stopped before m-ready" in str(exc)
    # the deadline is the model's, not a constant: 20 inferences' budget plus wire time
    assert exc.timeout >= 20 * board.client.latency_s
    await board.client.resync()
    assert await board.client.name() == "unspecified"


async def test_disconnect_loses_the_link_and_the_board_comes_back(
    direct_board: BoardFactory,
) -> None:
    board = await loaded(direct_board)
    board.arm(kind="disconnect", command="name", down_s=0.5)
    with pytest.raises(LinkLost, match=str(board.port.path)):
        await board.client.name()
    await asyncio.wait_for(board.port.wait_connected(), 5)
    await asyncio.wait_for(board.dut.ready.wait(), 5)
    await board.link.reopen()
    assert await board.client.name() == "unspecified"


async def test_faults_fire_on_schedule_only(direct_board: BoardFactory) -> None:
    """``after`` lets matching commands through first; ``count`` bounds the firings."""
    board = await loaded(direct_board)
    board.arm(kind="garbage", command="name", after=2, count=1)
    assert await board.client.name() == "unspecified"
    assert await board.client.name() == "unspecified"
    with pytest.raises((GarbledReply, DeviceTimeout)):
        await board.client.name()
    await board.client.resync()
    assert await board.client.name() == "unspecified"
    assert [k for k, _ in board.dut.faults.injected] == ["garbage"]


async def test_a_board_slower_than_modelled_is_resynced_not_lost(
    direct_board: BoardFactory,
) -> None:
    """The client budgets far too little; the DUT is healthy but still computing when the
    deadline passes. Its late reply must not be taken for the next command's, and the
    resync must wait it out instead of declaring the board hung."""
    board = await direct_board("kws01", 115200, median_s=0.15)
    await board.client.load(bytes(MODELS["kws01"].input_bytes))
    board.client.latency_s = board.client.slowest_s = 0.001
    with pytest.raises(DeviceTimeout):
        await board.client.infer(5, 0)  # ~0.75 s of compute against a ~0.5 s deadline
    assert board.channel.needs_resync
    assert await board.client.name() == "unspecified"  # resyncs first, then asks
    assert not board.channel.needs_resync
    result = await board.client.infer(2, 0)
    assert result.elapsed_us == board.dut.records[-1].window_us


@pytest.mark.parametrize("seed", range(8))
async def test_one_lost_byte_never_yields_wrong_data(direct_board: BoardFactory, seed: int) -> None:
    """Losing a single byte anywhere in an infer reply either raises or changes nothing that
    matters (a lost CR): never a wrong result, count or time."""
    board = await direct_board("ic01", 115200, seed=seed)
    data = bytes(range(256)) * 12
    await board.client.load(data)
    board.arm(kind="drop", command="infer", drop_bytes=1)
    try:
        result = await board.client.infer(3, 0)
    except (GarbledReply, DeviceTimeout):
        return
    truth = board.dut.records[-1]
    assert result.elapsed_us == truth.window_us
    assert result.results == pytest.approx(
        simulated_output(MODELS["ic01"], data, board.dut.quality), abs=1e-3
    )
