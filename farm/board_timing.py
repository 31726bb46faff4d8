"""How long the agent's operations on one board may take: the figures the agent's own waits
use, and a health check's time from the wire-time model (docs/protocols.md#wire-time-model),
which the controller bounds its wait for the check's result with (``controller.estimate``).

A health check (the agent's ``BoardAccess.identify``) waits for the board's ports, then asks
the DUT who it is on each way in, in turn, until one answers:

- the DUT's own port, at each baud of the board's list (its configured and last rates first,
  then every model's reference rate), after powering the DUT if a monitor supplies it: a
  resync (drain the line until it is idle, then ``name``, again and again for up to
  :data:`IDLE_BUSY_LIMIT_S` while the DUT does not answer), then ``name``, ``profile`` and
  ``timestamp``;
- for a board wired for energy, through the interface board at its DUT-side baud: the
  monitor's set-up and power-on, the interface board's resync (drain, ``setbaud``, its reset,
  ``name``), the DUT's ``name`` (up to twice), then ``name``, ``profile`` and ``timestamp``.

:func:`check_s` adds up the longest each step may take by the agent's own timeouts (every
exchange's ``WireModel.timeout`` at its link's baud): what a check costs when every way in
stays silent, the slowest way it can end. The slower the DUT's baud, the longer.
"""

from __future__ import annotations

from collections.abc import Sequence

from farm.models import MODELS
from farm.protocol import dut, interface, lpm01a
from farm.wire import WireModel

#: An ST-LINK re-enumerates in 1-3 s after a reset or a flash; allow a slow USB hub too. The
#: agent waits this long for a board's ports before every check, flash and power cycle.
REENUMERATION_S = 10.0
#: How long a health check's resync waits for an idle DUT: nothing is outstanding, so a DUT
#: that is not answering by then is not healthy.
IDLE_BUSY_LIMIT_S = 2.0
#: The most a resync reads while it waits for the line to fall silent (a device spewing
#: noise is never idle): it gives up after this many bytes' wire time.
DRAIN_MAX_BYTES = 4096
#: How long a power-cycle command (``uhubctl``, a relay) may take before the agent kills it.
POWER_COMMAND_TIMEOUT_S = 60.0
#: How long a flash tool may take before the agent kills it, unless the board's config says
#: otherwise (agent.yaml ``firmware.timeout_s``).
FLASH_TIMEOUT_S = 180.0
#: What the check asks the DUT once the line is in step.
IDENTITY_COMMANDS = ("name", "profile", "timestamp")
#: More than any LPM01A acknowledgement with the stream data its client allows around one.
MONITOR_REPLY_BYTES = 2048
#: The supply the check's monitor commands are sized for (their text barely depends on it).
_SIZING_MV = 1800


def dut_exchange_s(command: str, wire: WireModel) -> float:
    """The agent's timeout for one DUT command on its own port (``wire``: at its baud)."""
    return wire.timeout(len(command) + 1, dut.reply_size_bound(command))


def passthrough_s(command: str, host: WireModel, dut_wire: WireModel) -> float:
    """An upper bound of the agent's timeout for ``dut COMMAND`` through the interface board:
    each hop's timeout, the host hop carrying the board's acknowledgement and the DUT's
    reply with the ``[dut]: `` prefix on each of its lines (less than twice the reply)."""
    reply = dut.reply_size_bound(command)
    ack = len(interface.PASSTHROUGH_PREFIX) + len(command) + 3 + len(interface.READY_LINE)
    host_hop = host.timeout(len("dut ") + len(command) + 1, ack + 2 * reply)
    return host_hop + dut_wire.timeout(len(command) + 1, reply)


def monitor_s(commands: Sequence[str]) -> float:
    """The longest the LPM01A's ``commands`` may take: each one's exchange at its host rate,
    plus the wait for an optional ``Error detail`` line."""
    wire = WireModel(lpm01a.HOST_BAUD)
    return sum(wire.timeout(len(c) + 2, MONITOR_REPLY_BYTES) + wire.idle_gap() for c in commands)


def direct_attempt_s(baud: int) -> float:
    """The longest a check may spend on the DUT's own port at ``baud``: the resync (its last
    round may start just before the busy limit), then the identity's commands."""
    wire = WireModel(baud)
    resync_round = wire.timeout(0, DRAIN_MAX_BYTES) + dut_exchange_s("name", wire)
    ask = sum(dut_exchange_s(c, wire) for c in IDENTITY_COMMANDS)
    return IDLE_BUSY_LIMIT_S + resync_round + ask


def energy_attempt_s(dut_baud: int) -> float:
    """The longest a check may spend through the interface board whose DUT side runs at
    ``dut_baud``: the monitor's set-up and power-on, the board's resync, the DUT's
    ``name`` (up to :data:`~farm.protocol.interface.VERIFY_ATTEMPTS` times), the identity."""
    host, dut_wire = WireModel(interface.HOST_BAUD), WireModel(dut_baud)
    setup = monitor_s([*lpm01a.setup_commands(_SIZING_MV), *lpm01a.power_on_commands(_SIZING_MV)])
    board_name = host.timeout(len("name") + 1, interface.BOARD_REPLY_BYTES)
    setbaud = (
        host.timeout(len(f"setbaud {dut_baud}") + 1, interface.BOARD_REPLY_BYTES)
        + interface.RESET_S
        + interface.VERIFY_ATTEMPTS * board_name
    )
    resync = host.timeout(0, DRAIN_MAX_BYTES) + setbaud
    resync += interface.VERIFY_ATTEMPTS * passthrough_s("name", host, dut_wire)
    ask = sum(passthrough_s(c, host, dut_wire) for c in IDENTITY_COMMANDS)
    return setup + resync + ask


def check_bauds(configured: Sequence[int | None] = ()) -> list[int]:
    """The DUT bauds a check tries on the DUT's own port, in order: ``configured`` (the
    board's configured rate, the one it answered at last), then every model's reference
    rate, each once."""
    candidates = [*configured, *sorted({m.default_baud for m in MODELS.values()})]
    return list(dict.fromkeys(b for b in candidates if b))


def check_s(bauds: Sequence[int], energy_baud: int | None = None) -> float:
    """The longest the agent's health check of a board may take by its own timeouts: the
    wait for its ports, every baud of ``bauds`` on the DUT's own port, and with
    ``energy_baud`` (a board wired for energy) the way through the interface board and the
    monitor's power-on before the direct attempts."""
    total = REENUMERATION_S + sum(direct_attempt_s(b) for b in bauds)
    if energy_baud is not None:
        total += energy_attempt_s(energy_baud)
        total += monitor_s(["htc", *lpm01a.power_on_commands(_SIZING_MV)])
    return total
