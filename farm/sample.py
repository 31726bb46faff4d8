"""One sample of a run: what the runner yields, ``samples.jsonl`` holds, and the agent will
publish. It lives in ``farm`` because the runner (``agent``) makes it and the run folder and
the controller read it back."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

#: Keys written even when null, so every samples.jsonl line has the documented fields.
ALWAYS = ("segment", "window", "latency_us")
#: Energy traces go to results.json, not to the per-sample stream.
TRACES = ("power_samples", "power_events")


@dataclass(frozen=True, slots=True)
class StreamCapture:
    """sww01: the wav one stream played (its truth entry) and what the interface board
    logged while it played."""

    truth_file: str
    """The truth file the entry comes from (``sww_long_test.json``)."""
    wav_file: str | None
    """The wav's name; ``None`` where the controller scored a truth file it does not have
    (the numbers travel with the sample, the names do not)."""
    windows: tuple[tuple[float, float], ...]
    """The entry's wakeword windows, seconds into the wav."""
    length_s: float
    sample_rate: int
    detections_ms: tuple[int, ...]
    """The board's detection log: ms since ``record_detections`` (the first is the DUT's
    sync pulse on its first frame)."""
    duty_starts: tuple[int, ...]
    """Rising edges of the DUT's processing pin, 10 µs ticks (the first 100)."""
    duty_stops: tuple[int, ...]
    """Falling edges of the DUT's processing pin, 10 µs ticks (the first 100)."""

    def to_record(self) -> dict[str, Any]:
        """The ``stream`` object of :meth:`Sample.to_record`."""
        return {name: getattr(self, name) for name in _STREAM_FIELDS}

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> StreamCapture:
        """Rebuild from :meth:`Sample.to_record`'s ``stream`` object (lists become tuples)."""
        return cls(
            truth_file=record["truth_file"],
            wav_file=record["wav_file"],
            windows=tuple((float(a), float(b)) for a, b in record["windows"]),
            length_s=float(record["length_s"]),
            sample_rate=int(record["sample_rate"]),
            detections_ms=tuple(record["detections_ms"]),
            duty_starts=tuple(record["duty_starts"]),
            duty_stops=tuple(record["duty_stops"]),
        )


@dataclass(frozen=True, slots=True)
class Sample:
    """One parsed result: an inference (accuracy, latency), a timed window (performance,
    energy) or one stream (sww01: ``results`` holds the DUT's per-frame activations and
    ``stream`` the board's logs)."""

    seq: int
    index: int
    segment: int | None
    window: int | None
    label: int
    results: tuple[float, ...]
    count: int = 1
    """Inferences the DUT ran for this sample (N of ``infer N W``)."""
    warmup: int = 0
    start_us: int | None = None
    end_us: int | None = None
    elapsed_us: int | None = None
    """DUT µs between the two laps (32-bit wrap handled); ``None`` on the energy build."""
    latency_us: float | None = None
    """Per-inference DUT-timed latency: ``elapsed_us / count``; in latency mode minus the
    print time of the first lap line, which the reference port's window includes."""
    wrapped: bool = False
    """The µs counter wrapped inside the window (the official runner would report 0)."""
    wall_s: float | None = None
    """Host wall-clock seconds of the window's ``infer`` (performance)."""
    energy_j: float | None = None
    energy_window_s: float | None = None
    power_samples: tuple[float, ...] = ()
    power_events: tuple[tuple[int, int], ...] = ()
    stream: StreamCapture | None = None

    def to_record(self) -> dict[str, Any]:
        """The samples.jsonl object: null fields left out except the documented ones, the
        energy traces left out (they are in results.json)."""
        # Field by field rather than dataclasses.asdict, which deep-copies every value
        # (~70 µs a kws01 sample, on the agent's path for each one); every value here is
        # immutable but the results, which become a list.
        record: dict[str, Any] = {}
        for name in _RECORD_FIELDS:
            value = getattr(self, name)
            if value is not None or name in ALWAYS:
                record[name] = value
        record["results"] = list(self.results)
        if self.stream is not None:
            record["stream"] = self.stream.to_record()
        return record

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> Sample:
        """Rebuild from a samples.jsonl object (unknown keys, such as ``subset``, ignored)."""
        known = {f.name for f in fields(cls)} - set(TRACES)
        values = {k: v for k, v in record.items() if k in known}
        values["results"] = tuple(record["results"])
        if record.get("stream") is not None:
            values["stream"] = StreamCapture.from_record(record["stream"])
        return cls(**values)


_STREAM_FIELDS = tuple(f.name for f in fields(StreamCapture))
#: What a record holds, in declaration order (the stream is converted on its own).
_RECORD_FIELDS = tuple(f.name for f in fields(Sample) if f.name not in (*TRACES, "stream"))
