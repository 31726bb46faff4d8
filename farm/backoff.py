"""Exponential backoff with jitter, shared by every process that reconnects to something
(the agent to its broker, ingest to its broker and to Redis)."""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass
class Backoff:
    """The n-th retry waits between half and all of ``min(cap, base * 2**n)``, so a lab's
    processes do not reconnect in lock step after a broker or Redis restart, and none retries
    in a tight loop."""

    base_s: float = 0.5
    cap_s: float = 30.0
    attempt: int = 0

    def next_delay(self, rng: random.Random | None = None) -> float:
        """The delay before the next attempt."""
        ceiling = min(self.cap_s, self.base_s * 2**self.attempt)
        # The exponent stops growing once the cap is reached (no huge floats after a long
        # outage).
        if ceiling < self.cap_s:
            self.attempt += 1
        return (rng or random).uniform(ceiling / 2, ceiling)

    def reset(self) -> None:
        """The last attempt succeeded."""
        self.attempt = 0
