"""When a dispatched run must have ended: a deadline fixed at dispatch from the wire-time
estimate (:mod:`controller.estimate`) times :data:`SLACK`, and moved later only by real
progress, new samples stored.

The agent's ETA never moves it: the last ETA stays stored when a run's final event is lost
(a broker that died with it in flight), so a deadline stretched by it would keep the run
waiting, and the board's next runs queued, for ever. Samples are finite, so a deadline moved
only by them is bounded too.
"""

from __future__ import annotations

from dataclasses import dataclass

#: The estimate is the reference board's time; a run gets twice that before it is given up.
SLACK = 2.0


@dataclass
class RunDeadline:
    """One dispatch's deadline, on the ``time.monotonic()`` clock."""

    at: float
    """When the dispatch is given up unless its final event arrived."""
    sample_s: float
    """The model's time per sample (the estimate without its set-up allowance)."""
    expected: int
    """Samples the run should have."""
    stored: int
    """Samples stored when last looked."""

    @classmethod
    def at_dispatch(
        cls, now: float, estimate_s: float, setup_s: float, expected: int, stored: int
    ) -> RunDeadline:
        """The deadline of a dispatch at ``now`` of a run estimated at ``estimate_s`` (of
        which ``setup_s`` is set-up) for ``expected`` samples, ``stored`` of them held."""
        sample_s = max(estimate_s - setup_s, 0.0) / max(expected, 1)
        return cls(now + SLACK * estimate_s, sample_s, expected, stored)

    def progress(self, now: float, stored: int) -> bool:
        """``stored`` samples are held at ``now``: if that is more than before, the samples
        still missing get their modelled time again (at least one sample's, for the final
        event). Whether the deadline moved."""
        if stored <= self.stored:
            return False
        self.stored = stored
        left = max(self.expected - stored, 1)
        later = now + SLACK * left * self.sample_s
        moved = later > self.at
        self.at = max(self.at, later)
        return moved

    def passed(self, now: float) -> bool:
        """Whether ``now`` is past the deadline."""
        return now > self.at
