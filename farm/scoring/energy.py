"""Energy mode: energy per inference between the last two GPIO events, and the median the
checker reads (docs/measurement.md#energy-mode)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise

from farm.scoring._numeric import ieee_div, np_median, np_sum

SAMPLE_RATE_HZ = 1000
REQUIRED_WINDOWS = 5
#: sww records the whole wav as one window.
SWW_REQUIRED_WINDOWS = 1
MIN_WINDOW_S = 10.0
BELOW_MIN_DURATION = "  <<<< below minimum duration"
ERROR_DURATION = (
    "ERROR: Not valid for submission.  All inference times must be at least 10 seconds."
)
ERROR_COUNT = "ERROR: Not valid for submission.  Energy mode must include exactly {n} measurements."
RULE = "-" * 57


class EnergyEventError(ValueError):
    """The events of a window cannot delimit it (where the official runner stops)."""


@dataclass(frozen=True, slots=True)
class EnergyWindow:
    """One energy window: the samples between its last two events."""

    trial: int
    """0-based, as in the runner's "Energy data for trial N"."""
    inferences: int
    sample_count: int
    idx_start: int
    idx_stop: int
    elapsed_s: float
    """``idx_stop/1000 - idx_start/1000`` (the runner subtracts the two times, so 10886
    samples can print as 10.886000000000001)."""
    energy_j: float
    """``np.sum(samples[idx_start:idx_stop])`` (half-open, pairwise summation)."""
    nan_samples: int
    """Unreadable (LPM01A) or lost (JS220) samples inside the window; any makes the energy
    and the median NaN."""

    @property
    def energy_per_inference_j(self) -> float:
        """Window energy divided by the commanded N (warmups excluded)."""
        return ieee_div(self.energy_j, self.inferences)

    @property
    def power_mw(self) -> float:
        """Mean power over the window, ``1e3 x E / t``."""
        return ieee_div(1e3 * self.energy_j, self.elapsed_s)

    @property
    def below_min_duration(self) -> bool:
        """Shorter than 10 s (the runner tags the line and logs an ERROR)."""
        return not self.elapsed_s >= MIN_WINDOW_S

    def lines(self) -> list[str]:
        """The runner's per-trial block, exactly as it prints it to results.txt."""
        warning = "" if self.elapsed_s >= MIN_WINDOW_S else BELOW_MIN_DURATION
        return [
            f"Energy data for trial {self.trial}",
            f"  Elapsed time  : {self.elapsed_s}{warning}",
            f"  Inferences    : {self.inferences}",
            f"  Power         : {self.power_mw:5.4f} mW.",
            f"  Total Energy  : {self.energy_j * 1e6:.3f} uJ",
            f"  Energy/Inf    : {self.energy_per_inference_j * 1e6:.3f} uJ/inf",
        ]


def energy_window(
    samples: Sequence[float],
    events: Sequence[tuple[int | str, int]],
    inferences: int,
    *,
    trial: int = 0,
    sample_rate_hz: int = SAMPLE_RATE_HZ,
) -> EnergyWindow:
    """Score one window from the monitor's samples (energy in J per 1 ms, NaN where
    unparsable) and its events ``(counter, samples received when it fired)``.

    Event counters must be consecutive and at least two events must exist, else
    :class:`EnergyEventError` (the runner raises or crashes there). Only the last two events
    count: earlier pin activity is ignored.
    """
    counters = [int(c) for c, _ in events]
    if any(b - a != 1 for a, b in pairwise(counters)):
        raise EnergyEventError(f"trial {trial}: event counters are not consecutive: {counters}")
    if len(events) < 2:
        raise EnergyEventError(f"trial {trial}: {len(events)} event(s); two are needed")
    idx_start, idx_stop = int(events[-2][1]), int(events[-1][1])
    window = [float(s) for s in samples[idx_start:idx_stop]]
    return EnergyWindow(
        trial=trial,
        inferences=inferences,
        sample_count=len(samples),
        idx_start=idx_start,
        idx_stop=idx_stop,
        elapsed_s=idx_stop / sample_rate_hz - idx_start / sample_rate_hz,
        energy_j=np_sum(window),
        nan_samples=sum(1 for s in window if math.isnan(s)),
    )


@dataclass(frozen=True, slots=True)
class EnergyResult:
    """The energy-mode verdict over all windows."""

    windows: tuple[EnergyWindow, ...]
    required_windows: int
    median_energy_per_inference_j: float
    """numpy median of the per-window energy per inference (NaN if any window is NaN)."""

    @property
    def median_uj(self) -> float:
        """The reported value, ``1e6 x median`` uJ/inf."""
        return 1e6 * self.median_energy_per_inference_j

    @property
    def median_text(self) -> str:
        """As printed, ``%5.4f`` (``  nan`` when a sample was unparsable: the checker's
        ``[0-9.]+`` then captures nothing)."""
        return f"{self.median_uj:5.4f}"

    @property
    def median_line(self) -> str:
        """The line the checker searches for."""
        return f"Median energy cost is {self.median_text} uJ/inf."

    @property
    def error_lines(self) -> list[str]:
        """The runner's ERROR lines; it prints them to stdout/log.txt only, not results.txt."""
        out: list[str] = []
        if any(w.elapsed_s < MIN_WINDOW_S for w in self.windows):
            out.append(ERROR_DURATION)
        if len(self.windows) != self.required_windows:
            out.append(ERROR_COUNT.format(n=self.required_windows))
        return out

    def lines(self) -> list[str]:
        """results.txt as the runner writes it in energy mode (no timestamp prefixes)."""
        out = ["Power Edition Output"]
        for w in self.windows:
            out.extend(w.lines())
        out.extend([RULE, self.median_line, RULE])
        return out

    @property
    def valid(self) -> bool:
        """No ERROR line and a number the checker can capture."""
        return not self.error_lines and not math.isnan(self.median_energy_per_inference_j)

    @property
    def problems(self) -> tuple[str, ...]:
        """Why the result is not valid, one reason per line."""
        out = list(self.error_lines)
        out.extend(
            f"trial {w.trial}: {w.elapsed_s} s is shorter than {MIN_WINDOW_S} s"
            for w in self.windows
            if w.below_min_duration
        )
        out.extend(
            f"trial {w.trial}: {w.nan_samples} unreadable or lost sample(s): energy is NaN"
            for w in self.windows
            if w.nan_samples
        )
        return tuple(out)


def score_energy(
    windows: Sequence[EnergyWindow], *, required_windows: int = REQUIRED_WINDOWS
) -> EnergyResult:
    """The median energy per inference over the windows (5, or 1 for sww)."""
    return EnergyResult(
        windows=tuple(windows),
        required_windows=required_windows,
        median_energy_per_inference_j=np_median([w.energy_per_inference_j for w in windows]),
    )
