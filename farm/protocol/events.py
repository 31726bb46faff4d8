"""The base of every event a host-side protocol parser yields.

Each protocol (:mod:`farm.protocol.dut`, :mod:`farm.protocol.interface`,
:mod:`farm.protocol.lpm01a`) classifies every line its device sends into one immutable event;
their event types all derive from :class:`Event`, through one base per protocol
(``DutEvent``, ``InterfaceEvent``, ``Lpm01aEvent``), so that code handling any of them (logs,
transcripts, tests) can rely on the raw line being there.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Event:
    """One line from a device, classified. ``line`` is the line as framed by
    :class:`~farm.protocol.lines.LineFramer` (no LF, CR and NUL removed); subclasses add what
    it means."""

    line: bytes
