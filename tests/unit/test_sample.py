"""A sample survives the samples.jsonl round trip (what --resume relies on)."""

from __future__ import annotations

import json
from dataclasses import replace

from farm.sample import Sample, StreamCapture


def test_record_round_trip_keeps_every_field_but_the_traces() -> None:
    sample = Sample(
        seq=3, index=7, segment=12, window=None, label=1, results=(0.25, 0.75),
        count=1, warmup=0, start_us=4294967000, end_us=500, elapsed_us=796,
        latency_us=796.0, wrapped=True, wall_s=0.01, energy_j=None,
        power_samples=(1e-5,), power_events=((0, 1),),
    )  # fmt: skip
    record = json.loads(json.dumps(sample.to_record()))
    assert record["window"] is None and "energy_j" not in record
    assert "power_samples" not in record and record["results"] == [0.25, 0.75]
    back = Sample.from_record({**record, "subset": True})
    assert back == replace(sample, power_samples=(), power_events=())


def test_a_stream_sample_record_holds_the_capture_and_round_trips() -> None:
    capture = StreamCapture(
        truth_file="sww_long_test.json", wav_file="a.wav", windows=((1.5, 2.0), (7.0, 7.25)),
        length_s=10.0, sample_rate=16000, detections_ms=(12, 1800), duty_starts=(1, 5),
        duty_stops=(3, 7),
    )  # fmt: skip
    sample = Sample(
        seq=0, index=0, segment=None, window=0, label=0, results=(3.0, -1.0), count=1,
        wall_s=10.6, energy_j=0.02, energy_window_s=10.5, power_samples=(1e-6,),
        stream=capture,
    )  # fmt: skip
    record = sample.to_record()
    assert list(record) == [
        "seq", "index", "segment", "window", "label", "results", "count", "warmup",
        "latency_us", "wrapped", "wall_s", "energy_j", "energy_window_s", "stream",
    ]  # fmt: skip
    assert json.loads(json.dumps(record["stream"])) == {
        "truth_file": "sww_long_test.json", "wav_file": "a.wav",
        "windows": [[1.5, 2.0], [7.0, 7.25]], "length_s": 10.0, "sample_rate": 16000,
        "detections_ms": [12, 1800], "duty_starts": [1, 5], "duty_stops": [3, 7],
    }  # fmt: skip
    back = Sample.from_record(json.loads(json.dumps(record)))
    assert back == replace(sample, power_samples=())
