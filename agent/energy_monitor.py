"""The energy monitor as an energy run sees it, whichever device it is (the LPM01A over its
serial port, the Joulescope JS220 over USB): configure it, start an acquisition, take one
window of energy samples and timestamp-pin events per ``infer``, stop it.

A window holds the samples (joules per 1 ms bin, NaN where the monitor lost or garbled
data) and the events (``(event number, samples before the event)``) since the previous
drain; :func:`window_energy` scores it as the official runner does
(docs/measurement.md#energy-per-inference).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

from agent.config import MonitorKind
from farm.protocol.lpm01a import EnergyWindow

__all__ = [
    "EnergyMonitor",
    "EnergyResult",
    "EnergyWindow",
    "MonitorTarget",
    "open_monitor",
    "window_energy",
]

#: ``farm run --monitor`` for a JS220: ``js220`` (the only one connected) or ``js220:SERIAL``.
JS220_PREFIX = "js220"


@dataclass(frozen=True, slots=True)
class MonitorTarget:
    """Which monitor an energy run opens."""

    kind: MonitorKind
    address: str | None = None
    """LPM01A: its serial port (required); JS220: its USB serial number, ``None`` for the only
    one connected."""

    @classmethod
    def parse(cls, text: str) -> MonitorTarget:
        """``farm run --monitor``: ``js220``, ``js220:SERIAL``, or the LPM01A's port."""
        kind, _, serial = text.partition(":")
        if kind.casefold() == JS220_PREFIX:
            return cls("js220", serial or None)
        return cls("lpm01a", text)

    def describe(self) -> str:
        """For messages: ``lpm01a /dev/ttyACM2``, ``js220 000415``, ``js220 (the only one)``."""
        return f"{self.kind} {self.address or '(the only one)'}"


class EnergyMonitor(Protocol):
    """What an energy run needs from a monitor (:class:`agent.lpm01a_client.Lpm01aClient`,
    :class:`agent.js220_client.Js220Client`)."""

    @property
    def freq_hz(self) -> int:
        """Energy samples per second in a window (1000: one per 1 ms)."""
        ...

    async def configure(self, voltage_mv: int) -> None:
        """The runner's monitor set-up; a monitor that supplies the DUT (the LPM01A) powers it
        at ``voltage_mv``, one that only measures (the JS220) ignores it."""
        ...

    async def start(self) -> None:
        """Start an acquisition; the first window starts empty."""
        ...

    def drain(self) -> EnergyWindow:
        """Everything captured since the previous drain (or ``start``)."""
        ...

    async def window(self, events: int = 2, timeout_s: float | None = None) -> EnergyWindow:
        """Wait until at least ``events`` events were captured, then drain."""
        ...

    async def stop(self) -> None:
        """Stop the acquisition."""
        ...

    async def teardown(self) -> None:
        """End the session as the runner does (stop if acquiring; the LPM01A also switches
        the DUT off and releases host control)."""
        ...

    async def close(self) -> None:
        """Release the device and end the client's reader. Idempotent."""
        ...


@dataclass(frozen=True, slots=True)
class EnergyResult:
    """One energy window as the official runner computes it
    (docs/measurement.md#energy-per-inference): the samples between the last two events,
    half-open."""

    energy_j: float
    seconds: float
    start: int
    """Index in the window's samples of the first sample counted (the second-to-last event)."""
    stop: int
    """Index of the first sample not counted (the last event)."""
    first_sample: int
    """The window's first sample's index in the acquisition."""
    events: tuple[int, int]
    """Numbers of the two events."""

    @property
    def power_w(self) -> float:
        """Mean power over the window."""
        return self.energy_j / self.seconds if self.seconds > 0 else math.nan


def window_energy(window: EnergyWindow, freq_hz: int = 1000) -> EnergyResult:
    """Energy between the window's last two events: ``sum(samples[i_start:i_stop])`` over
    ``(i_stop - i_start) / freq_hz`` seconds. Raises ValueError with fewer than two events."""
    if len(window.events) < 2:
        raise ValueError(f"an energy window needs two events, got {len(window.events)}")
    (n0, i0), (n1, i1) = window.events[-2:]
    energy = math.fsum(window.samples[i0:i1])
    return EnergyResult(energy, (i1 - i0) / freq_hz, i0, i1, window.first_sample, (n0, n1))


async def open_monitor(target: MonitorTarget) -> EnergyMonitor:
    """Open the monitor ``target`` names; its :meth:`~EnergyMonitor.close` releases it."""
    # Imported here: an LPM01A agent needs neither numpy nor the joulescope package, and the
    # clients import this module.
    if target.kind == "js220":
        from agent.js220_client import Js220Client

        return await Js220Client.open(target.address)
    from agent.lpm01a_client import Lpm01aClient
    from farm.protocol.lpm01a import HOST_BAUD

    if target.address is None:
        raise ValueError("an LPM01A monitor needs its serial port")
    return await Lpm01aClient.open(target.address, baud=HOST_BAUD)
