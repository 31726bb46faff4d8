"""Per-board inference latency model for the simulated DUT, and its ground-truth record."""

from __future__ import annotations

import math
import random
from array import array
from dataclasses import dataclass, field


@dataclass
class LatencyModel:
    """Log-normal inference time around ``median_s`` with shape ``spread`` (sigma of the
    log), plus a tail: with probability ``tail_probability`` an inference takes
    ``tail_factor`` times longer (an interrupt, a cache miss storm). Deterministic under
    ``seed``. Times are whole microseconds (the DUT's counter resolution), at least 1."""

    median_s: float
    spread: float = 0.02
    tail_probability: float = 0.0
    tail_factor: float = 3.0
    seed: int = 0
    _rng: random.Random = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.median_s <= 0:
            raise ValueError(f"median latency must be positive, got {self.median_s}")
        self._rng = random.Random(self.seed)

    def sample_us(self) -> int:
        """One inference's time in µs."""
        t = self.median_s * math.exp(self.spread * self._rng.gauss(0.0, 1.0))
        if self.tail_probability and self._rng.random() < self.tail_probability:
            t *= self.tail_factor
        return max(1, round(t * 1e6))

    def sample_window(self, count: int) -> array[int]:
        """``count`` inference times in µs."""
        return array("q", (self.sample_us() for _ in range(count)))


@dataclass(frozen=True, slots=True)
class ComputeRecord:
    """Ground truth of one simulated ``infer`` (or warmup) phase."""

    phase: str
    count: int
    times_us: array[int]
    """Every simulated inference time, in order."""
    start_lap_us: int | None = None
    """Counter value printed as the first lap (performance build)."""
    window_us: int | None = None
    """Exact counter difference between the two laps: the first lap line's print time plus
    the inferences (the reference port samples the counter, then prints it, blocking)."""

    @property
    def total_us(self) -> int:
        """Sum of the inference times."""
        return sum(self.times_us)
