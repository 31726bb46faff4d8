"""sww01 streams for tests, as the agent publishes them: one stream of a truth entry with the
interface board's logs and the energy monitor's trace, built from the detections a DUT would
make (each wakeword ``DELAY_S`` after its onset, except those missed, plus false ones), for
the controller's real scoring (``controller.results.finish_run``) to score.

The logs are the board's: detection times in ms from ``record_detections``, the first the
DUT's sync pulse on its first frame; the processing pin's start and stop ticks (10 µs) of the
first 100 frames. The trace is the monitor's 1 ms energy samples: idle, then the whole wav
and the runner's pause before ``stop`` at ``power_mw`` between the two pulses, then idle.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any

from controller.results import RunSummary, finish_run
from farm.messages import SAMPLE_BATCH
from farm.protocol.sww import FRAME_S, STOP_DELAY_S
from farm.sample import Sample, StreamCapture
from farm.sww_truth import TruthEntry

#: The sync pulse's time on the board's detection timer.
ORIGIN_MS = 500
#: From a wakeword's onset to its detection.
DELAY_S = 0.2
#: The pin's period (one 32 ms frame) and high time, in 10 µs ticks.
PERIOD_TICKS = round(FRAME_S / 10e-6)
PROCESSING_TICKS = 1795
IDLE_MW = 5.0
IDLE_MS = 1000


def stream_record(
    entry: TruthEntry,
    *,
    missed: Collection[int] = (),
    false_at_s: Sequence[float] = (),
    power_mw: float = 20.0,
    truth_file: str = "sww_long_test.json",
    trace_s: float | None = None,
) -> dict[str, Any]:
    """The record of one stream of ``entry``: every wakeword but those ``missed`` (0-based)
    detected, false detections at ``false_at_s`` (seconds after the sync pulse). ``trace_s``:
    the trace between the pulses (default the wav and the pause, as the runner measures it);
    a shorter one keeps a test quick where the power window is not what it checks."""
    detections = [ORIGIN_MS]
    detections += [
        ORIGIN_MS + round((a + DELAY_S) * 1000)
        for k, (a, _) in enumerate(entry.windows)
        if k not in missed
    ]
    detections += [ORIGIN_MS + round(t * 1000) for t in false_at_s]
    starts = [100 + PERIOD_TICKS * k for k in range(100)]
    stream_ms = round((entry.length_s + STOP_DELAY_S if trace_s is None else trace_s) * 1000)
    samples = (
        [IDLE_MW * 1e-6] * IDLE_MS + [power_mw * 1e-6] * stream_ms + [IDLE_MW * 1e-6] * IDLE_MS
    )
    frames = round(entry.length_s / FRAME_S)
    fired = {round((d - ORIGIN_MS) / 1000 / FRAME_S) for d in detections}
    sample = Sample(
        seq=0,
        index=entry.index,
        segment=None,
        window=0,
        label=0,
        results=tuple(127.0 if k in fired else 0.0 for k in range(frames)),
        count=1,
        power_samples=tuple(samples),
        power_events=((0, IDLE_MS), (1, IDLE_MS + stream_ms)),
        stream=StreamCapture(
            truth_file=truth_file,
            wav_file=entry.wav_file,
            windows=entry.windows,
            length_s=entry.length_s,
            sample_rate=entry.sample_rate,
            detections_ms=tuple(sorted(detections)),
            duty_starts=tuple(starts),
            duty_stops=tuple(s + PROCESSING_TICKS for s in starts),
        ),
    )
    return SAMPLE_BATCH.record(sample)


def scored_stream(
    folder: Path, run: str, record: dict[str, Any], truth: str | None = None, board: str = "b-1"
) -> RunSummary:
    """``record`` scored by the controller into ``folder`` as run ``run`` of an sww01 sweep
    (``truth``: the truth file option the run was submitted with)."""
    options = "" if truth is None else f'{{"truth": "{truth}"}}'
    run_hash = {
        "id": run,
        "sweep": "sweep-1",
        "board": board,
        "agent": "agent-1",
        "benchmark": "sww01",
        "mode": "energy",
        "dataset": "",
        "options": options,
    }
    return finish_run(run_hash, [record], {}, folder)
