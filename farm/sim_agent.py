"""What ``farm sim`` hands the agent layer, and what it asks of it.

``farm sim`` serves simulated boards; the agent config that serves them (``OUT/agent.yaml``)
and ``--check``'s scripted exchange are the agent's. The core imports no agent code, and the
agent imports no simulator code: the agent layer offers its part through the
``tinyfarm.sim_agent`` entry point (``agent.sim_support``, a module with the functions of
:class:`SimAgentSupport`), and gets the boards described by the plain values below.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Protocol

SUPPORT_GROUP = "tinyfarm.sim_agent"


@dataclass(frozen=True, slots=True)
class SimBoardSetup:
    """One simulated board as an agent config needs it."""

    id: str
    model: str
    dut_serial: str
    interface_serial: str | None
    """With ``monitor_serial``: both for a board wired for energy, neither otherwise."""
    monitor_serial: str | None
    images: Mapping[str, Mapping[str, Path]]
    """Firmware image per model and build (``performance``, ``energy``)."""
    baud: int | None
    """The configured model's performance baud, when the simulator config sets one."""


@dataclass(frozen=True, slots=True)
class SimAgentSetup:
    """An agent serving every board of one running ``farm sim``."""

    agent_id: str
    broker: str
    datasets: Path
    journal: Path
    boards_json: Path
    flash: str
    """The flash command (through the simulator's control socket)."""
    power_cycle: str
    """The power-cycle command of the boards without an energy monitor."""
    boards: tuple[SimBoardSetup, ...]


class ProbeOutcome(Protocol):
    """What ``--check`` shows of one board's scripted exchange."""

    @property
    def board(self) -> str: ...
    @property
    def ok(self) -> bool: ...
    @property
    def model(self) -> str: ...
    @property
    def load_s(self) -> float: ...
    @property
    def elapsed_us(self) -> int | None: ...
    @property
    def energy_uj(self) -> float | None: ...
    @property
    def results(self) -> tuple[float, ...]: ...
    @property
    def error(self) -> str: ...


class SimAgentSupport(Protocol):
    """The agent layer's part of ``farm sim``."""

    def check_options(self, agent_id: str, broker: str) -> None:
        """Raise ``ValueError`` (naming the option) if the agent id or broker URL is invalid."""

    def config_yaml(self, setup: SimAgentSetup, header: str) -> str:
        """The agent config serving ``setup``'s boards, as YAML under a ``header`` comment."""

    def prober(self) -> Callable[[dict[str, Any]], Awaitable[ProbeOutcome]]:
        """The probe of one ``boards.json`` entry; ``ImportError`` without the agent extra."""


def load_support() -> SimAgentSupport:
    """The agent layer's part of ``farm sim``; ``ImportError`` if it is not installed."""
    for plugin in entry_points(group=SUPPORT_GROUP):
        support: SimAgentSupport = plugin.load()
        return support
    raise ImportError(f"no {SUPPORT_GROUP} entry point: the agent layer is not installed")
