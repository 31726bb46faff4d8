"""Streaming wakeword (sww01): detections against the truth windows, the duty cycle and the
throughput it gives, and what the submission checker reads from results.txt
(docs/measurement.md#streaming-wakeword).

One stream gives everything: the interface board's detection log (ms, the first one the
DUT's sync pulse) scored against the truth file's windows, its log of the DUT's processing
pin (10 µs ticks) for duty cycle and throughput, and in energy mode the monitor's window
between the DUT's ``start`` and ``stop`` pulses for the power.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise

from farm.scoring._numeric import ieee_div, np_sum
from farm.scoring.energy import EnergyResult
from farm.scoring.targets import DEFAULT_VERSION, accuracy_target

#: The official scoring adds this to a window's end, twice (its README says once): a
#: detection up to 2 s after the wakeword ends still counts.
SUPPRESSION_S = 1.0
#: Of false positives closer than this to an earlier one only the first counts.
DEBOUNCE_MS = 1000
#: The board's timer ticks 10 µs; the runner multiplies by ``10e-6`` (which is 1e-5).
TICK_S = 10e-6
#: Frame periods may vary this much (max - min over mean) before the runner warns.
PERIOD_SPREAD = 0.02


class SwwScoreError(ValueError):
    """The logs cannot be scored (where the official runner raises or crashes)."""


@dataclass(frozen=True, slots=True)
class DetectionStats:
    """True positives, false negatives and false positives of one stream."""

    true_positives: tuple[float, ...]
    """Start (s) of every window detected."""
    false_negatives: tuple[float, ...]
    """Start (s) of every window missed."""
    false_positives: tuple[float, ...]
    """Seconds (after the sync pulse) of every false detection left after the debounce."""


def detection_stats(
    detections_ms: Sequence[int], windows: Sequence[tuple[float, float]]
) -> DetectionStats:
    """Score a detection log as the official runner does.

    The first detection is the DUT's sync pulse: the time origin, dropped. For each window
    ``[a, b]`` in the truth file's order, every remaining detection ``d`` (seconds after the
    origin, ``ms / 1000``) with ``a <= d <= (b + 1.0) + 1.0`` is removed, and the window is a
    true positive if there was one, else a false negative. Left to right, each remaining
    detection then removes the later ones within ``(d, d + 1000 ms]``; what is left are the
    false positives. A window therefore counts once however many frames detected it, and a
    detection can only count for the first window that claims it.
    """
    if not detections_ms:
        raise SwwScoreError(
            "no detections captured: there should be at least one, the DUT's sync pulse on "
            "its first frame (did the stream start?)"
        )
    origin = detections_ms[0]
    remaining = [int(d) - origin for d in detections_ms[1:]]
    hits: list[float] = []
    misses: list[float] = []
    for start, stop in windows:
        end = (stop + SUPPRESSION_S) + SUPPRESSION_S
        inside = [d for d in remaining if start <= d / 1000 <= end]
        if inside:
            hits.append(start)
            remaining = [d for d in remaining if not start <= d / 1000 <= end]
        else:
            misses.append(start)
    i = 0
    while i < len(remaining):
        current = remaining[i]
        # Strictly later: a repeated timestamp survives, as in the runner's numpy test.
        remaining = [d for d in remaining if not current < d <= current + DEBOUNCE_MS]
        i += 1
    return DetectionStats(tuple(hits), tuple(misses), tuple(d / 1000 for d in remaining))


@dataclass(frozen=True, slots=True)
class DutyCycle:
    """The DUT's processing duty cycle from the board's pin log (the first 100 frames)."""

    duty_cycle: float
    """Mean on time over mean period."""
    period_s: float
    """Mean of the differences of consecutive start times."""
    processing_s: float
    """Mean of stop - start over the pairs."""
    start_times_s: tuple[float, ...]
    stop_times_s: tuple[float, ...]
    warnings: tuple[str, ...]
    """Unequal start and stop counts (the longer list is cut), periods varying more than 2 %."""

    @property
    def throughput(self) -> float:
        """Estimated throughput, inf./s: one over the mean processing time (not over the
        period: the DUT could process frames back to back)."""
        return ieee_div(1.0, self.processing_s)


def duty_cycle(starts: Sequence[int], stops: Sequence[int]) -> DutyCycle:
    """The duty cycle as the official runner computes it from the start and stop ticks."""
    start_s = [t * TICK_S for t in starts]
    stop_s = [t * TICK_S for t in stops]
    warnings: list[str] = []
    if len(start_s) != len(stop_s):
        warnings.append(
            f"Number of start times ({len(start_s)}) and number of stop times ({len(stop_s)}) "
            "should be equal"
        )
        n = min(len(start_s), len(stop_s))
        start_s, stop_s = start_s[:n], stop_s[:n]
    if len(start_s) < 2:
        raise SwwScoreError(
            f"{len(start_s)} duty-cycle start time(s) (with a stop): a period needs two "
            "(did the DUT process any frames?)"
        )
    on = [b - a for a, b in zip(start_s, stop_s, strict=True)]
    periods = [b - a for a, b in pairwise(start_s)]
    period = np_sum(periods) / len(periods)
    if ieee_div(max(periods) - min(periods), period) > PERIOD_SPREAD:
        warnings.append(
            f"Frame period variation exceeds 2%: min {min(periods) * 1e3:.3f} ms, "
            f"max {max(periods) * 1e3:.3f} ms"
        )
    processing = np_sum(on) / len(on)
    return DutyCycle(
        duty_cycle=ieee_div(processing, period),
        period_s=period,
        processing_s=processing,
        start_times_s=tuple(start_s),
        stop_times_s=tuple(stop_s),
        warnings=tuple(warnings),
    )


def general5(value: float) -> str:
    """A value as the runner prints it, ``{value:1.5}``: general format, 5 significant digits
    (``55.742``, ``0.56085``, ``1e+05``, ``5e-05``)."""
    return f"{value:1.5}"


def result_lines(stats: DetectionStats, duty: DutyCycle) -> list[str]:
    """The runner's sww lines of results.txt, after the energy block in energy mode."""
    return [
        f"Accuracy: {len(stats.true_positives)} True positives, "
        f"{len(stats.false_negatives)} False negatives, "
        f"{len(stats.false_positives)} False positives",
        f"Average duty cycle: {general5(duty.duty_cycle)}",
        f"Average period: {general5(duty.period_s)} s",
        f"Estimated throughput: {general5(duty.throughput)} inf./sec.",
    ]


# -- what the submission checker reads -----------------------------------------------------

_THROUGHPUT = re.compile(r"Estimated throughput:\s*([\d\.]+) inf\./sec\.")
_ACCURACY = re.compile(
    r"Accuracy: (\d+) True positives, (\d+) False negatives, (\d+) False positives"
)
_DUTY = re.compile(r"Average duty cycle:\s*([\d\.]+)")
_POWER = re.compile(r"Power\s+: ([\d\.]+) mW")


@dataclass(frozen=True, slots=True)
class CheckerReading:
    """What the checker captures from an sww results.txt (the last matching line of each
    kind), and whether it accepts it."""

    throughput: float | None
    true_positives: int | None
    false_negatives: int | None
    false_positives: int | None
    duty_cycle: float | None
    power_mw: float | None
    required_windows: int

    @property
    def f1(self) -> float | None:
        """The checker's accuracy for sww: ``2 TP / (2 TP + FP + FN)``."""
        tp, fn, fp = self.true_positives, self.false_negatives, self.false_positives
        if tp is None or fn is None or fp is None or 2 * tp + fp + fn == 0:
            return None
        return 2 * tp / (2 * tp + fp + fn)

    @property
    def has_accuracy(self) -> bool:
        """The accuracy line exists and TP + FN equals the long file's windows."""
        tp, fn = self.true_positives, self.false_negatives
        return tp is not None and fn is not None and tp + fn == self.required_windows

    @property
    def valid(self) -> bool:
        """The checker's ``is_valid``: throughput, accuracy (TP + FN = 50) and duty cycle."""
        return self.throughput is not None and self.has_accuracy and self.duty_cycle is not None


def checker_reading(lines: Sequence[str], version: str = DEFAULT_VERSION) -> CheckerReading:
    """Apply the checker's sww patterns to results.txt's lines (searched anywhere in a line;
    the last match wins). A number the runner printed in exponent form is read as far as
    ``[\\d.]+`` goes: ``5e-05`` as 5 for a duty cycle, and not at all for a throughput
    (its pattern needs `` inf./sec.`` right after the digits)."""
    throughput = duty = power = None
    counts: tuple[int, int, int] | None = None
    for line in lines:
        if m := _THROUGHPUT.search(line):
            throughput = float(m.group(1))
        if m := _ACCURACY.search(line):
            counts = (int(m.group(1)), int(m.group(2)), int(m.group(3)))
        if m := _DUTY.search(line):
            duty = float(m.group(1))
        if m := _POWER.search(line):
            power = float(m.group(1))
    target = accuracy_target("sww", version)
    assert target.required_windows is not None
    tp, fn, fp = counts if counts is not None else (None, None, None)
    return CheckerReading(throughput, tp, fn, fp, duty, power, target.required_windows)


@dataclass(frozen=True, slots=True)
class SwwResult:
    """One sww01 stream scored: detections, duty cycle, the energy window (energy mode)."""

    wav_file: str | None
    """``None``: not known (a controller scoring a truth file it does not have)."""
    length_s: float
    stats: DetectionStats
    duty: DutyCycle
    energy: EnergyResult | None
    version: str = DEFAULT_VERSION

    def lines(self) -> list[str]:
        """results.txt as the runner writes it for sww: the energy block first (energy
        mode), then the accuracy, duty-cycle, period and throughput lines."""
        head = self.energy.lines() if self.energy is not None else []
        return [*head, *result_lines(self.stats, self.duty)]

    def log_lines(self) -> list[str]:
        """What the runner prints only to its log: the file, the missed windows and the
        false positives, the duty-cycle warnings."""
        fn = ", ".join(f"{t:.3f}" for t in self.stats.false_negatives) or "none"
        fp = ", ".join(f"{t:.3f}" for t in self.stats.false_positives) or "none"
        name = self.wav_file or "(wav name not known here)"
        return [
            f"== File {name} ({self.length_s:2.1f} s) ==",
            f"    False negatives (window starts, s): {fn}",
            f"    False positives (s after the sync pulse): {fp}",
            f"Duty cycle = {self.duty.duty_cycle:.3f}, Period = {self.duty.period_s * 1e3:.3} ms",
            *(f"Warning: {w}" for w in self.duty.warnings),
        ]

    @property
    def reading(self) -> CheckerReading:
        """What the checker reads from :meth:`lines`."""
        return checker_reading(self.lines(), self.version)

    @property
    def power_mw(self) -> float | None:
        """Mean power over the stream (energy mode), as printed and read."""
        return self.reading.power_mw

    @property
    def target_met(self) -> bool:
        """The closed division's limits (v1.3 on): at most 8 false positives and 8 false
        negatives, as the checker reads them."""
        r = self.reading
        target = accuracy_target("sww", self.version)
        assert target.max_false_positives is not None and target.max_false_negatives is not None
        return (
            r.false_positives is not None
            and r.false_negatives is not None
            and r.false_positives <= target.max_false_positives
            and r.false_negatives <= target.max_false_negatives
        )

    @property
    def problems(self) -> tuple[str, ...]:
        """Why the checker would not take the result (TP + FN other than 50, an unreadable
        number, an energy ERROR line, a NaN), one reason each."""
        r = self.reading
        out: list[str] = []
        if not r.has_accuracy:
            found = len(self.stats.true_positives) + len(self.stats.false_negatives)
            out.append(
                f"the checker needs TP + FN = {r.required_windows} (the long file's wakewords); "
                f"this stream has {found}: not valid for submission"
            )
        if r.throughput is None:
            out.append(
                f"the checker cannot read the throughput {general5(self.duty.throughput)} "
                "(printed in exponent form)"
            )
        if self.energy is not None:
            out.extend(p for p in self.energy.problems)
            if r.power_mw is None:
                out.append("the checker reads no power from results.txt")
        return tuple(out)

    @property
    def notes(self) -> tuple[str, ...]:
        """What the checker misreads without refusing it: a duty cycle printed in exponent
        form (below 1e-4) is read as its mantissa."""
        printed = general5(self.duty.duty_cycle)
        read = self.reading.duty_cycle
        if read is None or math.isnan(self.duty.duty_cycle) or read == float(printed):
            return ()
        return (f"the checker reads the duty cycle {printed} as {read} (exponent form)",)

    @property
    def valid(self) -> bool:
        """The checker accepts it (and in energy mode the power window too)."""
        return not self.problems
