"""The JS220's 1 ms bins: the vectorised binner gives exactly what the official runner's
per-sample loop gives, however the samples are chunked; lost samples are NaN in place."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest

from agent.js220_bins import Binner, Segment


def per_sample(
    current: list[float], voltage: list[float], gpi0: list[int], stride: int
) -> list[float | str]:
    """The official runner's read loop, one raw sample at a time: add ``i*v/1e6``; a 0->1
    GPI0 step closes the open bin early and is followed by the event."""
    out: list[float | str] = []
    acc, count, last, event, pending = 0.0, 0, None, 0, False
    for i, v, g in zip(current, voltage, gpi0, strict=True):
        acc += i * v / 1e6
        count += 1
        level = int(g > 0)
        if last is not None and last == 0 and level == 1:
            pending = True
        last = level
        if count >= stride or (pending and count > 0):
            out.append(acc)
            if pending:
                out.append(f"event {event:02}")
                event += 1
            acc, count, pending = 0.0, 0, False
    return out


def flatten(segments: list[Segment]) -> list[float | str]:
    out: list[float | str] = []
    for segment in segments:
        out.extend(segment.bins)
        if segment.event is not None:
            out.append(f"event {segment.event:02}")
    return out


@pytest.mark.parametrize("seed", range(6))
def test_chunked_binning_matches_the_runner_loop(seed: int) -> None:
    rng = random.Random(seed)
    n = 30_000
    current = [rng.choice([0.0005, 0.012, 0.0301]) for _ in range(n)]
    voltage = [rng.choice([1.8, 3.3]) for _ in range(n)]
    # Runs of GPI0 levels, some a single sample long, one edge on a bin boundary.
    gpi0: list[int] = []
    level = rng.randint(0, 1)
    while len(gpi0) < n:
        gpi0 += [level] * rng.choice([1, 2, 999, 1000, 1733, 4000])
        level ^= 1
    gpi0 = gpi0[:n]
    gpi0[2998], gpi0[2999] = 0, 1
    stride = 1000
    expected = per_sample(current, voltage, gpi0, stride)

    binner = Binner(1_000_000, 1000)
    got: list[float | str] = []
    start = 0
    while start < n:
        stop = min(n, start + rng.choice([1, 7, 1000, 2_345, 9_973]))
        got += flatten(binner.feed(current[start:stop], voltage[start:stop], gpi0[start:stop]))
        start = stop
    assert [x for x in got if isinstance(x, str)] == [x for x in expected if isinstance(x, str)]
    assert [isinstance(x, str) for x in got] == [isinstance(x, str) for x in expected]
    for g, e in zip(got, expected, strict=True):
        if not isinstance(g, str):
            assert g == pytest.approx(e, rel=1e-12, abs=1e-18)


def test_an_edge_that_completes_a_bin_adds_no_short_bin() -> None:
    binner = Binner(1_000_000, 1000)
    gpi0 = [0] * 999 + [1] * 1001
    segments = binner.feed(np.full(2000, 0.001), np.full(2000, 2.0), gpi0)
    # Samples 0..999 (the edge is sample 999) fill bin 0 and the event follows it;
    # samples 1000..1999 fill bin 1.
    assert [len(s.bins) for s in segments] == [1, 1]
    assert segments[0].event == 0 and segments[1].event is None
    assert segments[0].bins[0] == pytest.approx(1000 * 0.001 * 2.0 / 1e6, rel=1e-13)


def test_the_first_sample_is_never_an_edge() -> None:
    binner = Binner(1_000_000, 1000)
    assert all(s.event is None for s in binner.feed([0.001] * 10, [1.0] * 10, [1] * 10))
    binner = Binner(1_000_000, 1000)
    assert binner.feed([0.001] * 2, [1.0] * 2, [0, 1])[0].event == 0


def test_lost_samples_are_nan_in_place_and_hide_the_level() -> None:
    binner = Binner(1_000_000, 1000)
    first = binner.feed([0.001] * 1500, [1.0] * 1500, [0] * 1500)
    assert [len(s.bins) for s in first] == [1]  # 500 samples still open
    lost = binner.lose(2_700)
    # The open bin (500 good + 500 lost), 2 lost bins; 200 lost samples stay open.
    assert len(lost.bins) == 3 and all(math.isnan(v) for v in lost.bins)
    # After the gap the level is unknown: a high first sample is not an edge.
    after = binner.feed([0.001] * 1800, [1.0] * 1800, [1] * 1800)
    assert [s.event for s in after] == [None]
    # 200 lost + 800 good samples, then 1000 good ones.
    assert math.isnan(after[0].bins[0])
    assert after[0].bins[1:] == [pytest.approx(0.001 * 1000 / 1e6, rel=1e-13)]
    assert binner.lose(0).bins == []
