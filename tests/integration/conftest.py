"""Fixtures: simulated DUTs on real ptys, opened by the agent's real serial client; a
controller lab (``lab``, which a test module may define otherwise); ``client``, the lab's
Redis database alone, flushed (for tests that store sweeps themselves)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

from agent.dut_client import DirectChannel, DutClient
from agent.serial_link import SerialLink
from farm.models import MODELS
from farm.sim.dut import DutCounter, SimDut
from farm.sim.faults import FaultPlan, FaultSpec
from farm.sim.latency import LatencyModel
from farm.sim.pty_port import PtyPort
from tests.integration.controller_lab import REDIS_URL, ControllerLab, start_controller_lab


@dataclass
class DirectBoard:
    """A simulated DUT on a pty, and a client connected to it."""

    port: PtyPort
    dut: SimDut
    link: SerialLink
    client: DutClient

    @property
    def channel(self) -> DirectChannel:
        assert isinstance(self.client.channel, DirectChannel)
        return self.client.channel

    def arm(self, **spec: object) -> None:
        """Make the DUT misbehave on a coming command."""
        self.dut.faults.arm(FaultSpec.model_validate(spec))


BoardFactory = Callable[..., Awaitable[DirectBoard]]


@pytest.fixture
async def direct_board(tmp_path: Path) -> AsyncIterator[BoardFactory]:
    """Start simulated DUTs on demand; everything is closed at the end of the test."""
    started: list[DirectBoard] = []

    async def make(
        model: str = "kws01",
        baud: int = 115200,
        *,
        median_s: float = 0.002,
        clock_start_us: int = 0,
        faults: list[FaultSpec] | None = None,
        seed: int = 7,
    ) -> DirectBoard:
        port = PtyPort(tmp_path / f"dut{len(started)}", baud)
        await port.start()
        dut = SimDut(
            board=f"b{len(started)}",
            model=MODELS[model],
            build="performance",
            uart=port,
            latency=LatencyModel(median_s, spread=0.1, seed=seed),
            counter=DutCounter(clock_start_us),
            faults=FaultPlan(faults or [], seed=seed),
        )
        await dut.start()
        await asyncio.wait_for(dut.ready.wait(), 5)
        link = await SerialLink.open(str(port.path), baud)
        # The client knows the board's latency, as it would after a calibration.
        # A short busy limit keeps the hang tests quick (production waits out the 30 s
        # silent-phase limit before declaring a board hung).
        channel = DirectChannel(link, busy_limit_s=1.0)
        client = DutClient(channel, MODELS[model], latency_s=median_s)
        board = DirectBoard(port, dut, link, client)
        started.append(board)
        return board

    yield make
    for board in started:
        await board.link.close()
        await board.dut.stop()
        await board.port.close()


@pytest.fixture
async def lab(tmp_path: Path) -> AsyncIterator[ControllerLab]:
    """A broker and a flushed Redis database (:func:`start_controller_lab`), everything the test
    added to it stopped at the end."""
    farm = await start_controller_lab(tmp_path)
    try:
        yield farm
    finally:
        await farm.stop()


@pytest.fixture
def client() -> Iterator[redis.Redis]:
    """A client of the controller lab's Redis database (``REDIS_URL``), flushed before and
    after the test."""
    db = redis.Redis.from_url(REDIS_URL, decode_responses=True)
    db.flushdb()
    yield db
    db.flushdb()
