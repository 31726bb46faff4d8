"""Simulated boards for the tests that drive one in-process (``farm.sim.server.SimBoard``)."""

from __future__ import annotations

from pathlib import Path

from farm.sim.config import BoardConfig, LatencyConfig
from farm.sim.server import SimBoard


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
