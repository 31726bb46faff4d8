"""Shared physical state of a simulated board: its power rail, its power draw, its GPIO line.

The DUT sets itself active while it computes; the energy monitor integrates the draw over
each sample period and timestamps the DUT's timestamp-pin edges. All times are event-loop
clock seconds (``loop.time()``, monotonic).
"""

from __future__ import annotations

import bisect
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class PowerModel:
    """Piecewise-constant power draw of a DUT: ``idle_w`` when idle, ``active_w`` while it
    computes, nothing while its rail is off. Keeps the history of transitions so that any
    interval can be integrated exactly after the fact."""

    idle_w: float = 0.005
    active_w: float = 0.030
    # Sorted (time, watts) change points; the draw holds from each point to the next.
    _times: list[float] = field(default_factory=list)
    _watts: list[float] = field(default_factory=list)
    _powered: bool = True
    _active: bool = False

    def _record(self, t: float) -> None:
        w = 0.0 if not self._powered else (self.active_w if self._active else self.idle_w)
        if self._times and t < self._times[-1]:
            t = self._times[-1]
        if self._times and self._times[-1] == t:
            self._watts[-1] = w
        else:
            self._times.append(t)
            self._watts.append(w)

    def set_active(self, t: float, active: bool) -> None:
        """The DUT starts (True) or stops (False) computing at time ``t``."""
        self._active = active
        self._record(t)

    def set_powered(self, t: float, powered: bool) -> None:
        """The rail is switched on or off at time ``t`` (an unpowered DUT draws nothing)."""
        self._powered = powered
        if not powered:
            self._active = False
        self._record(t)

    def __post_init__(self) -> None:
        self._record(0.0)

    def energy_between(self, t0: float, t1: float) -> float:
        """Joules drawn over ``[t0, t1]`` (exact integral of the piecewise-constant draw)."""
        if t1 <= t0:
            return 0.0
        j = bisect.bisect_right(self._times, t0)
        w = self._watts[max(j - 1, 0)]
        energy, t = 0.0, t0
        while j < len(self._times) and self._times[j] < t1:
            energy += w * (self._times[j] - t)
            t, w = self._times[j], self._watts[j]
            j += 1
        return energy + w * (t1 - t)

    def forget_before(self, t: float) -> None:
        """Drop history older than ``t`` (keeping the level in force at ``t``)."""
        i = bisect.bisect_right(self._times, t) - 1
        if i > 0:
            del self._times[:i]
            del self._watts[:i]


Listener = Callable[[float, bool], None]


@dataclass
class GpioLine:
    """One digital line (the DUT's timestamp pin). Listeners get ``(time, level)`` on
    every edge; the line idles high (open drain with a pull-up)."""

    level: bool = True
    _listeners: list[Listener] = field(default_factory=list)

    def subscribe(self, listener: Listener) -> None:
        """Call ``listener(time, level)`` on every future edge."""
        self._listeners.append(listener)

    def set(self, t: float, level: bool) -> None:
        """Drive the line at time ``t``; listeners hear only real edges."""
        if level == self.level:
            return
        self.level = level
        for listener in self._listeners:
            listener(t, level)


@dataclass
class PowerRail:
    """The DUT's supply as switched by an energy monitor. Listeners get ``(time, on)``."""

    on: bool = True
    _listeners: list[Listener] = field(default_factory=list)

    def subscribe(self, listener: Listener) -> None:
        """Call ``listener(time, on)`` whenever the rail is switched."""
        self._listeners.append(listener)

    def switch(self, t: float, on: bool) -> None:
        """Switch the rail at time ``t`` (a no-op if already in that state)."""
        if on == self.on:
            return
        self.on = on
        for listener in self._listeners:
            listener(t, on)
