"""Seeded fault injection for simulated boards.

Each fault is switchable per board and fires on a schedule: on commands whose verb matches
``command`` (any command if empty), after skipping the first ``after`` such commands, with
``probability``, at most ``count`` times. Every injected fault is logged and kept in
``FaultPlan.injected`` so a test can tell what happened.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from farm.logs import get_logger

log = get_logger("farm.sim.faults")

FaultKind = Literal[
    "hang",  # stop responding until power-cycled or reset
    "reset",  # reboot in the middle of the command (boot banner again)
    "garbage",  # noise bytes, including >= 0x80, mixed into the reply
    "drop",  # bytes of the reply lost on the wire
    "no_ready",  # the reply's m-ready line never comes
    "disconnect",  # the USB serial port vanishes, then comes back after ``down_s``
    "ack_lost",  # energy monitor: the ack line of a command is lost
]


#: What each simulated device can actually do; anything else is refused at config time
#: instead of being logged as injected while nothing happens.
SUPPORTED: dict[str, frozenset[str]] = {
    "dut": frozenset({"hang", "reset", "garbage", "drop", "no_ready", "disconnect"}),
    "interface": frozenset({"hang", "reset"}),
    "monitor": frozenset({"hang", "ack_lost"}),
}


class FaultSpec(BaseModel):
    """One fault and its schedule."""

    model_config = ConfigDict(extra="forbid")

    kind: FaultKind
    device: Literal["dut", "interface", "monitor"] | None = None
    """Which device of the board misbehaves; default: the monitor for ``ack_lost``, else
    the DUT."""
    command: str = ""
    """Command verb that can trigger it (``infer``, ``db``, ``name``...); empty: any.
    (Not called ``on``: YAML 1.1 reads a bare ``on`` key as the boolean true.)"""
    after: int = Field(0, ge=0)
    """Matching commands to let through before the fault may fire."""
    probability: float = Field(1.0, ge=0.0, le=1.0)
    count: int | None = Field(1, ge=1)
    """How many times it may fire; ``None``: without limit."""
    down_s: float = Field(2.0, ge=0.0)
    """``disconnect``: how long the port stays away."""
    garbage_bytes: int = Field(16, ge=1)
    """``garbage``: how many noise bytes to inject."""
    drop_fraction: float = Field(0.2, gt=0.0, le=1.0)
    """``drop``: the share of the reply's bytes that is lost."""
    drop_bytes: int | None = Field(None, ge=1)
    """``drop``: lose exactly this many bytes of the reply instead (at random places)."""

    @model_validator(mode="after")
    def _supported_here(self) -> FaultSpec:
        allowed = SUPPORTED[self.target]
        if self.kind not in allowed:
            raise ValueError(
                f"the {self.target} simulator cannot inject {self.kind!r} "
                f"(it supports {', '.join(sorted(allowed))})"
            )
        return self

    @property
    def target(self) -> str:
        """The device this fault applies to."""
        return self.device or ("monitor" if self.kind == "ack_lost" else "dut")


@dataclass
class _Armed:
    spec: FaultSpec
    seen: int = 0
    fired: int = 0


@dataclass
class FaultPlan:
    """The faults of one device, with their own seeded random stream."""

    specs: list[FaultSpec] = field(default_factory=list)
    seed: int = 0
    board: str = ""
    injected: list[tuple[str, str]] = field(default_factory=list)
    """(kind, command) of every fault that fired, in order."""

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)
        self._armed = [_Armed(s) for s in self.specs]

    def arm(self, spec: FaultSpec) -> None:
        """Add a fault at run time (tests use this to fire one on the next command)."""
        self._armed.append(_Armed(spec))

    def draw(self, command: str) -> set[str]:
        """Decide which faults fire for ``command``; record and log them."""
        verb = command.split(" ", 1)[0]
        fired: set[str] = set()
        for armed in self._armed:
            spec = armed.spec
            if spec.command and spec.command != verb:
                continue
            if spec.count is not None and armed.fired >= spec.count:
                continue
            armed.seen += 1
            if armed.seen <= spec.after or self._rng.random() >= spec.probability:
                continue
            armed.fired += 1
            fired.add(spec.kind)
            self.injected.append((spec.kind, command))
            log.info("fault_injected", board=self.board, kind=spec.kind, command=command)
        return fired

    def spec(self, kind: str) -> FaultSpec:
        """The spec of an armed fault of ``kind`` (for its parameters)."""
        return next(a.spec for a in self._armed if a.spec.kind == kind)

    @property
    def rng(self) -> random.Random:
        """The plan's random stream (noise bytes, drop positions)."""
        return self._rng

    def garble(self, data: bytes, kind: str) -> bytes:
        """Apply a byte-level fault to outgoing ``data``."""
        if kind == "garbage":
            n = self.spec("garbage").garbage_bytes
            noise = bytes(self._rng.choice((0x00, 0xFF, 0x80, 0xC3, 0x7F, 0xA5)) for _ in range(n))
            at = self._rng.randrange(len(data) + 1)
            return data[:at] + noise + data[at:]
        if kind == "drop":
            spec = self.spec("drop")
            if spec.drop_bytes is not None:
                lost = set(self._rng.sample(range(len(data)), min(spec.drop_bytes, len(data))))
                return bytes(b for i, b in enumerate(data) if i not in lost)
            return bytes(b for b in data if self._rng.random() >= spec.drop_fraction)
        return data
