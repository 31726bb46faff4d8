"""Performance mode: per-window throughput from the DUT's laps, the median the checker reads,
and the validity rules (docs/measurement.md#performance-mode)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from farm.scoring._numeric import np_median

#: The DUT's ``m-lap-us-`` counter is 32 bits wide (equal to ``farm.protocol.dut.LAP_MODULUS``;
#: kept here so that importing the scorer does not pull in the protocol layer).
LAP_MODULUS = 1 << 32
REQUIRED_WINDOWS = 5
#: ERROR 2 if the host wall clock of the whole loop (downloads + infers) is below this.
MIN_LOOP_S = 10.0
#: The runner prints "Runtime requirements have been met." only above this (strictly); we
#: require at least this much of every window ourselves.
MIN_WINDOW_S = 10.0
#: On a direct DUT link each reply line must arrive within 30 s, so a timed window must be
#: shorter or the official runner aborts.
SILENT_PHASE_LIMIT_S = 30.0

ERROR_1 = "ERROR 1 - loop_count was not exactly 5."
ERROR_2 = "ERROR 2 - loop exited before 10 seconds elapsed."
RULE = "-" * 57


def runner_throughput(inferences: int, elapsed_us: int | None) -> float:
    """Throughput exactly as the official runner computes it: ``N / (elapsed_us / 1e6)``,
    and 0 when the elapsed time is missing or not positive."""
    if elapsed_us is None or elapsed_us <= 0:
        return 0.0
    elapsed_s = elapsed_us / 1_000_000
    return inferences / elapsed_s


def wrap_corrected_elapsed_us(start_us: int, end_us: int) -> tuple[int, bool]:
    """``(elapsed_us, wrapped)`` between two laps of the 32-bit DUT counter.

    The official runner subtracts directly, so a wrap inside the window (every ~71.6 min)
    gives a negative elapsed and throughput 0. A window is far shorter than the wrap period,
    so adding one period back is exact; ``wrapped`` says that we did, so it can be reported.
    """
    if start_us < 0 or end_us < 0:
        raise ValueError(f"laps must be unsigned, got start={start_us} end={end_us}")
    elapsed = end_us - start_us
    if elapsed >= 0:
        return elapsed, False
    if start_us >= LAP_MODULUS or end_us >= LAP_MODULUS:
        raise ValueError(
            f"end lap {end_us} precedes start lap {start_us} but they are not 32-bit values: "
            "not a counter wrap"
        )
    return elapsed + LAP_MODULUS, True


@dataclass(frozen=True, slots=True)
class PerfWindow:
    """One timed window (``infer N W``) of performance mode."""

    inferences: int
    """N as commanded (never counted from replies)."""
    start_us: int | None
    end_us: int | None
    runner_elapsed_us: int | None
    """``end - start`` as the official runner computes it (negative after a wrap)."""
    elapsed_us: int | None
    """DUT-timed window length, corrected for one 32-bit wrap; None when laps are missing."""
    wrapped: bool
    """The lap counter wrapped inside the window (reported, never a silent 0)."""

    @property
    def laps_missing(self) -> bool:
        """Fewer than two laps: the runner records no elapsed time and throughput 0."""
        return self.elapsed_us is None

    @property
    def throughput(self) -> float:
        """Inferences per second from the corrected elapsed time (0 if it is not positive)."""
        return runner_throughput(self.inferences, self.elapsed_us)

    @property
    def runner_throughput(self) -> float:
        """What the official runner records for this window (0 after a wrap)."""
        return runner_throughput(self.inferences, self.runner_elapsed_us)

    @property
    def elapsed_s(self) -> float | None:
        """Corrected window length in seconds."""
        return None if self.elapsed_us is None else self.elapsed_us / 1_000_000

    @property
    def runtime_met(self) -> bool:
        """The runner's "Runtime requirements have been met." rule: elapsed > 10 s, strictly."""
        return self.elapsed_s is not None and self.elapsed_s > MIN_WINDOW_S

    @property
    def min_duration_met(self) -> bool:
        """Our per-window rule: at least 10 s (the official runner does not enforce one)."""
        return self.elapsed_s is not None and self.elapsed_s >= MIN_WINDOW_S

    @property
    def within_silent_limit(self) -> bool:
        """Shorter than the 30 s a direct link allows between two reply lines."""
        return self.elapsed_s is not None and self.elapsed_s < SILENT_PHASE_LIMIT_S


def perf_window(inferences: int, start_us: int | None, end_us: int | None) -> PerfWindow:
    """A window from its start and end laps (None where the DUT printed none)."""
    if inferences < 0:
        raise ValueError(f"inferences must be >= 0, got {inferences}")
    if start_us is None or end_us is None:
        return PerfWindow(inferences, start_us, end_us, None, None, False)
    elapsed, wrapped = wrap_corrected_elapsed_us(start_us, end_us)
    return PerfWindow(inferences, start_us, end_us, end_us - start_us, elapsed, wrapped)


def perf_window_from_laps(inferences: int, laps: Sequence[int]) -> PerfWindow:
    """A window from every ``m-lap-us-`` value of one ``infer`` reply, as the runner reads
    them: the first is the start, the last the end (extra laps in between are ignored)."""
    if len(laps) < 2:
        return perf_window(inferences, laps[0] if laps else None, None)
    return perf_window(inferences, laps[0], laps[-1])


def perf_window_from_elapsed(inferences: int, elapsed_us: int) -> PerfWindow:
    """A window from an elapsed time that is already wrap-corrected (e.g.
    ``farm.protocol.dut.elapsed_us``); no wrap can be detected or reported this way."""
    if inferences < 0:
        raise ValueError(f"inferences must be >= 0, got {inferences}")
    return PerfWindow(inferences, None, None, elapsed_us, elapsed_us, False)


@dataclass(frozen=True, slots=True)
class PerformanceResult:
    """The performance-mode verdict over all windows of one loop."""

    windows: tuple[PerfWindow, ...]
    loop_count: int
    loop_seconds: float
    """Host wall clock of the whole loop (5 downloads + 5 infers)."""
    direct_link: bool
    """The DUT is on a direct serial link, where the 30 s silent-phase limit applies."""
    error: int | None
    """The official runner's error: 1 (loop count != 5) wins over 2 (loop < 10 s)."""
    median_throughput: float | None
    """numpy median of the corrected window throughputs; None when an official error
    suppresses the median line."""
    runner_median_throughput: float | None
    """The median the official runner would print (wrapped windows count as 0)."""

    @property
    def measured_median(self) -> float | None:
        """The median window throughput even where an official error suppresses the printed
        one (a subset, short test windows): what the board did, for a report that also says
        the run is not valid."""
        if self.median_throughput is not None:
            return self.median_throughput
        return np_median([w.throughput for w in self.windows]) if self.windows else None

    @property
    def median_text(self) -> str | None:
        """The median as printed, ``%10.3f``."""
        m = self.median_throughput
        return None if m is None else f"{m:>10.3f}"

    @property
    def median_line(self) -> str | None:
        """The results.txt line body after the ``MMDD.HHMMSS ulp-mlperf: `` prefix."""
        text = self.median_text
        return None if text is None else f"Median throughput is {text} inf./sec."

    @property
    def error_line(self) -> str | None:
        """The official ERROR line body, if any (only one: ERROR 1 wins)."""
        return {1: ERROR_1, 2: ERROR_2}.get(self.error) if self.error else None

    @property
    def latency_ms(self) -> float | None:
        """The published latency: the final report's ``1000 / median throughput`` (a mean
        time per inference of the median window, not a percentile)."""
        m = self.median_throughput
        if m is None:
            return None
        return math.inf if m == 0 else 1000 / m

    @property
    def wrapped(self) -> bool:
        """Any window's lap counter wrapped (the official runner would record 0 there)."""
        return any(w.wrapped for w in self.windows)

    def lines(self) -> list[str]:
        """The results.txt line bodies the runner writes after the loop, each to be prefixed
        with ``MMDD.HHMMSS ulp-mlperf: ``: the ERROR line, or the median between two rules."""
        if self.error_line is not None:
            return [self.error_line]
        assert self.median_line is not None
        return [RULE, self.median_line, RULE]

    @property
    def problems(self) -> tuple[str, ...]:
        """Everything that makes the result invalid or differ from the official runner's."""
        out: list[str] = []
        if self.error_line is not None:
            out.append(self.error_line)
        for i, w in enumerate(self.windows, start=1):
            if w.laps_missing:
                out.append(f"window {i}: missing m-lap-us timestamps; throughput recorded as 0")
                continue
            if w.wrapped:
                out.append(
                    f"window {i}: the 32-bit lap counter wrapped ({w.start_us} -> {w.end_us}); "
                    f"corrected elapsed {w.elapsed_us} us, the official runner would record "
                    "throughput 0"
                )
            assert w.elapsed_us is not None
            if w.elapsed_us <= 0:
                out.append(f"window {i}: elapsed {w.elapsed_us} us; throughput recorded as 0")
            elif not w.min_duration_met:
                out.append(f"window {i}: {w.elapsed_s} s is shorter than {MIN_WINDOW_S} s")
            if self.direct_link and not w.within_silent_limit:
                out.append(
                    f"window {i}: {w.elapsed_s} s reaches the {SILENT_PHASE_LIMIT_S} s silent-"
                    "phase limit of a direct link; the official runner would abort"
                )
        return tuple(out)

    @property
    def valid(self) -> bool:
        """No official error, and every window lasts 10 s or more (and under 30 s on a direct
        link). A corrected wrap alone does not invalidate."""
        if self.error is not None:
            return False
        for w in self.windows:
            if not w.min_duration_met:
                return False
            if self.direct_link and not w.within_silent_limit:
                return False
        return True


def score_performance(
    windows: Sequence[PerfWindow],
    *,
    loop_seconds: float,
    loop_count: int | None = None,
    direct_link: bool = True,
) -> PerformanceResult:
    """Score one performance loop as the official runner does, plus our stricter checks.

    ``loop_count`` is the script's loop count (default: the number of windows); the runner
    raises ERROR 1 when it is not 5 and ERROR 2 when ``loop_seconds`` < 10.0, and writes no
    median when either applies.
    """
    count = len(windows) if loop_count is None else loop_count
    error: int | None = None
    if count != REQUIRED_WINDOWS:
        error = 1
    elif loop_seconds < MIN_LOOP_S:
        error = 2
    median = runner_median = None
    if error is None:
        median = np_median([w.throughput for w in windows])
        runner_median = np_median([w.runner_throughput for w in windows])
    return PerformanceResult(
        windows=tuple(windows),
        loop_count=count,
        loop_seconds=loop_seconds,
        direct_link=direct_link,
        error=error,
        median_throughput=median,
        runner_median_throughput=runner_median,
    )
