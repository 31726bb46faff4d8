"""Simulated boards for the tests that drive one in-process (``farm.sim.server.SimBoard``)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

from agent.interface_client import InterfaceClient
from agent.lpm01a_client import Lpm01aClient
from agent.serial_link import SerialLink
from farm.protocol.interface import HOST_BAUD as INTERFACE_BAUD
from farm.protocol.lpm01a import HOST_BAUD as MONITOR_BAUD
from farm.sim.config import BoardConfig, LatencyConfig
from farm.sim.server import SimBoard

#: The simulated interface board's reset (0.5 s) plus a margin.
RESET_S = 0.6


def energy_board(directory: Path, *, median_s: float, seed: int) -> SimBoard:
    """A kws01 with its energy firmware, interface board and LPM01A (not started yet)."""
    config = BoardConfig(
        id=directory.name,
        model="kws01",
        energy=True,
        firmware="energy",
        latency=LatencyConfig(median_s=median_s),
    )
    return SimBoard(config, directory=directory, seed=seed)


@contextlib.asynccontextmanager
async def energy_clients(
    board: SimBoard, dut_baud: int
) -> AsyncIterator[tuple[Lpm01aClient, InterfaceClient]]:
    """Start an energy board; yield the agent's clients of its LPM01A and interface board
    (the board's DUT side at ``dut_baud``); close them and stop the board after."""
    await board.start()
    links: list[SerialLink] = []
    lpm: Lpm01aClient | None = None
    try:
        assert board.interface_port is not None and board.monitor_port is not None
        links.append(await SerialLink.open(str(board.monitor_port.path), MONITOR_BAUD))
        links.append(await SerialLink.open(str(board.interface_port.path), INTERFACE_BAUD))
        lpm = Lpm01aClient(links[0])
        yield lpm, InterfaceClient(links[1], dut_baud=dut_baud, reset_s=RESET_S)
    finally:
        if lpm is not None:
            await lpm.close()
        for link in links:
            await link.close()
        await board.stop()
