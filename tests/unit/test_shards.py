"""How a sharded accuracy run is cut and checked: the shards' ranges, what each one's run
command marks as stored, which runs a sweep shards, and firmware that cannot be merged."""

from __future__ import annotations

import json

from controller.shards import excluded, firmware_mismatch, split, union
from controller.sweeps import SweepSpec, plan, shard_groups


def test_shards_cover_every_seq_once_in_ranges_within_one_of_each_other() -> None:
    assert split(1000, 8) == [
        (0, 125),
        (125, 250),
        (250, 375),
        (375, 500),
        (500, 625),
        (625, 750),
        (750, 875),
        (875, 1000),
    ]
    assert split(10, 3) == [(0, 3), (3, 6), (6, 10)]
    assert split(2, 3) == [(0, 0), (0, 1), (1, 2)]  # more boards than inputs: one runs none
    for total, count in [(1000, 8), (200, 7), (5, 5), (3, 4)]:
        ranges = split(total, count)
        seqs = [s for a, b in ranges for s in range(a, b)]
        assert seqs == list(range(total))
        sizes = [b - a for a, b in ranges]
        assert max(sizes) - min(sizes) <= 1


def test_a_shard_marks_the_other_shards_seqs_and_its_own_stored_ones_as_stored() -> None:
    assert excluded((0, 3), 10) == [(3, 10)]
    assert excluded((3, 6), 10) == [(0, 3), (6, 10)]
    assert excluded((6, 10), 10) == [(0, 6)]
    assert excluded((0, 10), 10) == []
    # A resumed shard: seqs 3 and 4 of its own were stored by its earlier attempt.
    assert union([(3, 5)], excluded((3, 6), 10)) == [(0, 5), (6, 10)]
    assert union([(4, 5)], excluded((3, 6), 10)) == [(0, 3), (4, 5), (6, 10)]
    assert union([], []) == []


def test_a_sweep_shards_accuracy_runs_by_benchmark_and_firmware_and_leaves_the_rest() -> None:
    boards = {
        "k1": {"agent": "pi", "model": "kws01", "build": "performance"},
        "k2": {"agent": "pi", "model": "kws01", "build": "performance"},
        "k3": {"agent": "pi", "model": "kws01", "build": "energy"},  # flashed for its runs
        "v1": {"agent": "pi", "model": "vww01", "build": "performance"},
    }
    spec = SweepSpec(benchmarks=["kws01", "vww01"], modes=["performance", "accuracy"])
    for board, status in boards.items():
        # v1 has no kws01 image: it runs vww01 alone.
        status["images"] = {
            "vww01": ["performance"],
            **({} if board == "v1" else {"kws01": ["performance"]}),
        }  # type: ignore[assignment]
    runs, skipped = plan(spec, boards, {"pi"})
    assert {(s.board, s.benchmark) for s in skipped} == {("v1", "kws01")}
    groups = shard_groups(runs, boards)
    described = {
        (runs[first].benchmark, tuple(runs[i].board for i in members))
        for first, members in groups.items()
    }
    # kws01: k1 and k2 hold it; k3 will be flashed with the same model and joins them.
    # vww01: the kws boards would be flashed with vww01, v1 holds it: one group of four.
    assert described == {
        ("kws01", ("k1", "k2", "k3")),
        ("vww01", ("k1", "k2", "k3", "v1")),
    }
    assert all(runs[i].mode == "accuracy" for members in groups.values() for i in members)
    assert json.loads(json.dumps(spec.to_json()))["shard"] is False


def test_shards_that_ran_other_firmware_cannot_be_merged() -> None:
    firmware = {"model": "kws01", "build": "performance", "sha256": "a" * 64, "software": "1"}
    same = {
        "r-s0": {"board": "k1", "firmware": json.dumps(firmware)},
        "r-s1": {"board": "k2", "firmware": json.dumps({**firmware, "software": "2"})},
    }
    assert firmware_mismatch(same) is None  # the agent's own version does not matter
    renamed = {**same, "r-s1": {"board": "k2", "firmware": json.dumps({**firmware, "image": "x"})}}
    assert firmware_mismatch(renamed) is None  # nor the file name the agent's config gives
    other = {
        **same,
        "r-s2": {"board": "k3", "firmware": json.dumps({**firmware, "sha256": "b" * 64})},
    }
    why = firmware_mismatch(other)
    assert why is not None
    assert why.startswith("shard r-s2 on k3 ran other firmware than shard r-s0 (sha256 'bbb")
