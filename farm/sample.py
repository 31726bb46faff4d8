"""One sample of a run: what the runner yields, ``samples.jsonl`` holds, and the agent will
publish. It lives in ``farm`` because the runner (``agent``) makes it and the run folder and
the controller read it back."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

#: Keys written even when null, so every samples.jsonl line has the documented fields.
ALWAYS = ("segment", "window", "latency_us")
#: Energy traces go to results.json, not to the per-sample stream.
TRACES = ("power_samples", "power_events")


@dataclass(frozen=True, slots=True)
class Sample:
    """One parsed result: an inference (accuracy, latency) or a timed window (performance,
    energy)."""

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

    def to_record(self) -> dict[str, Any]:
        """The samples.jsonl object: null fields left out except the documented ones, the
        energy traces left out (they are in results.json)."""
        record = {
            k: v
            for k, v in asdict(self).items()
            if k not in TRACES and (v is not None or k in ALWAYS)
        }
        record["results"] = list(self.results)
        return record

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> Sample:
        """Rebuild from a samples.jsonl object (unknown keys, such as ``subset``, ignored)."""
        known = {f.name for f in fields(cls)} - set(TRACES)
        values = {k: v for k, v in record.items() if k in known}
        values["results"] = tuple(record["results"])
        return cls(**values)
