"""A power trace too long for one message: cut into chunks by the agent, joined back by the
controller bit-exact, and refused when what came back is not what was sent."""

from __future__ import annotations

import json
import math

import pytest

from controller.ingest.parse import parse_sample_batch, parse_trace_chunk
from farm.messages import (
    MAX_TRACE_CHUNKS,
    SAMPLE_BATCH,
    TRACE_CHUNK,
    SampleRecord,
    parse_topic,
    sample_digest,
    trace_topic,
)
from farm.sample import Sample
from farm.trace import TraceError, attach_trace, detach_trace

#: Doubles JSON spells in many ways, the extremes among them, and unreadable samples (NaN).
ODD = [5e-324, 0.1 + 0.2, 2.2250738585072014e-308, 1.7976931348623157e308, -0.0, 1e-7, 3]


def energy_sample(trace: list[float]) -> Sample:
    return Sample(
        seq=4,
        index=0,
        segment=None,
        window=0,
        label=0,
        results=(1.0, -2.0),
        energy_j=1.5e-3,
        energy_window_s=10.0,
        power_samples=tuple(trace),
        power_events=((1, 2), (2, len(trace) - 1)),
    )


def long_trace(n: int = 10_001) -> list[float]:
    values = [1e-6 * (1 + (i % 97) / 7) for i in range(n)]
    values[10 : 10 + len(ODD)] = ODD
    values[n // 2] = values[-1] = math.nan
    return values


def test_a_trace_that_fits_its_record_stays_in_it() -> None:
    record = SAMPLE_BATCH.record(energy_sample(long_trace(1000)))
    published, chunks = detach_trace(record, 1000)
    assert (published, chunks) == (record, [])
    assert "power_chunks" not in published


def test_a_long_trace_goes_in_chunks_and_comes_back_bit_exact() -> None:
    trace = long_trace()
    record = SAMPLE_BATCH.record(energy_sample(trace))
    published, chunks = detach_trace(record, 1000)
    assert [len(c) for c in chunks] == [1000] * 10 + [1]
    assert "power_samples" not in published
    assert (published["power_length"], published["power_chunks"]) == (10_001, 11)
    # Each chunk and the record as ingest reads them (the digest is text a record may hold).
    payloads = [TRACE_CHUNK.encode("pi", "b", "r", 4, n, c, 2) for n, c in enumerate(chunks)]
    received = [parse_trace_chunk(p) for p in payloads]
    assert [(c["seq"], c["chunk"], c["attempt"]) for c in received] == [
        (4, n, 2) for n in range(11)
    ]
    (stored,) = parse_sample_batch(SAMPLE_BATCH.encode("pi", "b", "r", [published])).records()
    joined = attach_trace(stored, [c["values"] for c in received])
    back = joined["power_samples"]
    assert len(back) == len(trace)
    for got, sent in zip(back, trace, strict=True):
        assert got is None if math.isnan(sent) else float(got).hex() == float(sent).hex()
    assert SampleRecord.model_validate(joined).power_chunks == 11


def test_the_sample_digest_vouches_for_a_trace_sent_apart() -> None:
    published, _ = detach_trace(SAMPLE_BATCH.record(energy_sample(long_trace())), 1000)
    other, _ = detach_trace(SAMPLE_BATCH.record(energy_sample(long_trace()[::-1])), 1000)
    # An inline trace is not in the digest; the digest of one sent apart is.
    assert {k: v for k, v in published.items() if k != "power_digest"} == {
        k: v for k, v in other.items() if k != "power_digest"
    }
    assert sample_digest([published]) != sample_digest([other])


def test_a_trace_that_is_not_what_was_sent_is_refused() -> None:
    published, chunks = detach_trace(SAMPLE_BATCH.record(energy_sample(long_trace())), 1000)
    changed = [list(c) for c in chunks]
    value = changed[3][17]
    assert value is not None
    changed[3][17] = value * (1 + 2**-52)  # one bit of one sample
    with pytest.raises(TraceError, match=r"seq 4: .* do not match its digest"):
        attach_trace(published, changed)
    with pytest.raises(TraceError, match=r"seq 4: .* do not match its digest"):
        attach_trace(published, [chunks[1], chunks[0], *chunks[2:]])
    with pytest.raises(TraceError, match="hold 10000 samples, the record says 10001"):
        attach_trace(published, chunks[:-1])


def test_chunk_sizes_are_bounded() -> None:
    record = SAMPLE_BATCH.record(energy_sample(long_trace(MAX_TRACE_CHUNKS + 1)))
    with pytest.raises(ValueError, match="more than the 10000 a record may name"):
        detach_trace(record, 1)
    with pytest.raises(ValueError, match="chunk_values 0"):
        detach_trace(record, 0)


def test_unreadable_power_samples_travel_as_null() -> None:
    """JSON has no NaN: a window whose monitor garbled a value must still be accepted, in its
    record or in a chunk."""
    trace = [1e-6, math.nan, 2e-6]
    payload = SAMPLE_BATCH.encode("pi", "b", "r", [SAMPLE_BATCH.record(energy_sample(trace))])
    (stored,) = parse_sample_batch(payload).records()
    assert stored["power_samples"] == [1e-6, None, 2e-6]
    chunk = TRACE_CHUNK.encode("pi", "b", "r", 0, 0, trace)
    assert json.loads(chunk)["values"] == [1e-6, None, 2e-6]


def test_the_trace_topic_is_a_run_topic() -> None:
    topic = parse_topic(trace_topic("pi1", "b1", "r1"))
    assert topic is not None and (topic.kind, topic.agent, topic.board, topic.run) == (
        "trace",
        "pi1",
        "b1",
        "r1",
    )
