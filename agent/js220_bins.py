"""The JS220's energy samples: its 1 MS/s current and voltage integrated into 1 ms bins, and
the rising edges of GPI0 (the DUT's timestamp pin) as events, bin for bin as the official
runner computes them (docs/measurement.md#energy-per-inference).

Each raw sample adds ``i * v / raw_rate`` joules to the open bin; every ``raw_rate /
bin_rate`` raw samples close it. A raw sample where GPI0 goes from 0 to 1 is added to the
open bin, which then closes early (a short bin) and the event follows it: each event adds
one short bin, so a window's bin count exceeds its length in ms by less than one per event.
The first raw sample of an acquisition (or after lost data) cannot be an edge: the level
before it is unknown.

Lost raw samples (a failed fetch, an overrun ring buffer) keep their place on the 1 ms grid
as NaN: every bin they touch is NaN, so a window whose events bracket lost data scores NaN
instead of a silently smaller energy. An edge among lost samples is lost with them.

Vectorised with numpy: a per-sample Python loop cannot keep up with 1 MS/s on a Pi.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt


@dataclass(frozen=True, slots=True)
class Segment:
    """Closed bins (joules each, in order) and the event that follows them, if any."""

    bins: list[float]
    event: int | None = None


class Binner:
    """Turns raw sample chunks into bins and events; keeps the open bin between chunks."""

    def __init__(self, raw_rate_hz: int = 1_000_000, bin_rate_hz: int = 1000) -> None:
        self.raw_rate_hz = raw_rate_hz
        self.stride = max(1, raw_rate_hz // bin_rate_hz)
        """Raw samples per full bin."""
        self._open_j = 0.0
        self._open_count = 0
        self._level: int | None = None
        """GPI0 at the last raw sample; ``None`` before the first one and after lost data."""
        self._next_event = 0

    def feed(
        self,
        current: npt.ArrayLike,
        voltage: npt.ArrayLike,
        gpi0: npt.ArrayLike,
    ) -> list[Segment]:
        """Add consecutive raw samples (A, V, GPI0 level); return the bins they close, with
        an event after each rising edge's short bin."""
        joules = np.asarray(current, dtype=np.float64) * np.asarray(voltage, dtype=np.float64)
        joules /= self.raw_rate_hz
        level = (np.asarray(gpi0) > 0).astype(np.int8)
        if len(joules) == 0:
            return []
        before = np.empty_like(level)
        before[0] = 1 if self._level is None else self._level  # unknown: no edge
        before[1:] = level[:-1]
        edges = np.flatnonzero((before == 0) & (level == 1))
        self._level = int(level[-1])
        segments: list[Segment] = []
        start = 0
        for edge in edges.tolist():
            bins = self._integrate(joules[start : edge + 1], close=True)
            segments.append(Segment(bins, self._next_event))
            self._next_event += 1
            start = edge + 1
        if start < len(joules):
            segments.append(Segment(self._integrate(joules[start:], close=False)))
        return segments

    def lose(self, count: int) -> Segment:
        """``count`` raw samples are missing: the bins they touch are NaN."""
        if count <= 0:
            return Segment([])
        self._level = None
        total = self._open_count + count
        full = total // self.stride
        self._open_count = total % self.stride
        # What is still open after them holds lost samples too (when anything is).
        self._open_j = float("nan") if self._open_count else 0.0
        return Segment([float("nan")] * full)

    def _integrate(self, joules: npt.NDArray[np.float64], *, close: bool) -> list[float]:
        """Bins closed by ``joules`` (raw samples following the open bin); with ``close``
        the bin still open after them closes too (an edge's short bin)."""
        offset = self._open_count + np.arange(len(joules))
        sums = np.bincount(offset // self.stride, weights=joules)
        sums[0] += self._open_j
        total = self._open_count + len(joules)
        full = total // self.stride
        bins: list[float] = sums[:full].tolist()
        rest = total % self.stride
        if close:
            if rest:
                bins.append(float(sums[full]))
            self._open_j, self._open_count = 0.0, 0
        else:
            self._open_j = float(sums[full]) if rest else 0.0
            self._open_count = rest
        return bins
