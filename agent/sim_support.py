"""The agent layer's part of ``farm sim`` (the ``tinyfarm.sim_agent`` entry point; the
contract is :mod:`farm.sim_agent`): check ``--agent-id`` and ``--broker``, write the agent
config that serves the simulated boards, and ``--check``'s probe.

The config needs only pydantic, so it works without the agent extra; the probe needs it.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import Any

from pydantic import ValidationError

from agent.config import (
    ID_PATTERN,
    AgentConfig,
    BaudConfig,
    BoardConfig,
    BrokerConfig,
    DeviceConfig,
    FirmwareConfig,
    Match,
    MonitorConfig,
    PowerCycleConfig,
    SystemDescription,
    dump_agent_config,
)
from farm.models import ENERGY_BAUD, MODELS
from farm.sim_agent import ProbeOutcome, SimAgentSetup


def check_options(agent_id: str, broker: str) -> None:
    """Raise ``ValueError`` naming the option if the agent id or the broker URL is invalid."""
    if not re.fullmatch(ID_PATTERN, agent_id):
        raise ValueError(
            f"--agent-id {agent_id!r}: letters, digits, '_', '.', '-' (an MQTT topic level)"
        )
    try:
        BrokerConfig(url=broker)
    except ValidationError as exc:
        reasons = "; ".join(str(e["msg"]).removeprefix("Value error, ") for e in exc.errors())
        raise ValueError(f"--broker: {reasons}") from None


def agent_config(setup: SimAgentSetup) -> AgentConfig:
    """An agent config serving every board of a running ``farm sim``: devices matched by the
    serial numbers of its boards.json, flashing and power cycles through its control
    socket."""
    boards = []
    for entry in setup.boards:
        wired = entry.interface_serial is not None and entry.monitor_serial is not None
        board = BoardConfig(
            id=entry.id,
            dut=DeviceConfig(match=Match(serial=entry.dut_serial)),
            interface=DeviceConfig(match=Match(serial=entry.interface_serial)) if wired else None,
            monitor=MonitorConfig(match=Match(serial=entry.monitor_serial)) if wired else None,
            firmware=FirmwareConfig(
                images={m: dict(builds) for m, builds in entry.images.items()},
                flash=setup.flash,
            ),
            power_cycle=PowerCycleConfig(method="monitor")
            if wired
            else PowerCycleConfig(method="command", command=setup.power_cycle),
            tags={"sim": "true", "model": entry.model},
            system=SystemDescription(
                status="rdi",
                board_name=f"tinyfarm simulated board ({entry.model})",
                processor_name="simulated DUT (farm.sim, on the host CPU)",
                accelerator="none",
                inference_framework="farm.sim synthetic model",
            ),
        )
        energy_baud = MODELS[entry.model].energy_baud
        if entry.baud is not None or (wired and energy_baud != ENERGY_BAUD):
            # The configured model's performance build runs at ``baud`` (a config's `baud`);
            # an energy build that does not talk at the usual 9600 (sww01) must be known.
            board.baud = BaudConfig(
                performance=entry.baud, energy=energy_baud if energy_baud != ENERGY_BAUD else None
            )
        boards.append(board)
    return AgentConfig(
        agent=setup.agent_id,
        broker=BrokerConfig(url=setup.broker),
        datasets=setup.datasets,
        journal=setup.journal,
        sim_boards=[setup.boards_json],
        boards=boards,
    )


def config_yaml(setup: SimAgentSetup, header: str) -> str:
    """:func:`agent_config` as YAML under a ``header`` comment."""
    return dump_agent_config(agent_config(setup), header)


def prober() -> Callable[[dict[str, Any]], Awaitable[ProbeOutcome]]:
    """The probe of one ``boards.json`` entry (raises ``ImportError`` without the agent
    extra: it talks to the boards over serial)."""
    from agent.probe import probe

    return probe
