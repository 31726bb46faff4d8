"""A sample survives the samples.jsonl round trip (what --resume relies on)."""

from __future__ import annotations

import json
from dataclasses import replace

from farm.sample import Sample


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
