"""The controller's sww01 scoring (docs/measurement.md#streaming-wakeword): a stream's sample
record as the agent publishes it (numbers only), scored through the same RunFolder and
farm.scoring code as ``farm run``, named from the official truth file, with the summary
numbers as the checker reads them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from agent.runner import RunInfo, RunSettings
from controller.results import ResultsError, finish_run
from controller.sweep_view import SUMMARY_KEYS
from farm.catalog import get_benchmark
from farm.messages import SAMPLE_BATCH
from farm.run_output import RunFolder
from farm.sample import Sample, StreamCapture
from farm.sww_truth import official_truth

LONG = official_truth().entries[0]
MISSED = {0, 10, 20}
#: 2.5 s after windows 5 and 30 end: outside every window's [start, end + 2.0 s] (the next
#: one starts at least 3.5 s later), more than 1 s apart.
FALSE = [LONG.windows[5][1] + 2.5, LONG.windows[30][1] + 2.5]
ORIGIN_MS = 500


def stream_sample(windows: tuple[tuple[float, float], ...] = LONG.windows) -> Sample:
    detections = [ORIGIN_MS]
    for k, (a, _) in enumerate(windows):
        if k not in MISSED:
            detections.append(ORIGIN_MS + round((a + 0.2) * 1000))
    detections += [ORIGIN_MS + round(t * 1000) for t in FALSE]
    starts = [100 + 3200 * k for k in range(100)]
    return Sample(
        seq=0,
        index=0,
        segment=None,
        window=0,
        label=0,
        results=(3.0, 127.0, -5.0),
        count=1,
        energy_j=0.24,
        energy_window_s=12.0,
        # 12 s of 2e-5 J per ms between start's and stop's events: 20 mW.
        power_samples=(2e-5,) * 12000,
        power_events=((0, 0), (1, 12000)),
        stream=StreamCapture(
            truth_file="sww_long_test.json",
            wav_file="long_wav.wav",
            windows=windows,
            length_s=LONG.length_s,
            sample_rate=16000,
            detections_ms=tuple(sorted(detections)),
            duty_starts=tuple(starts),
            duty_stops=tuple(s + 1795 for s in starts),
        ),
    )


def run_hash(**options: Any) -> dict[str, str]:
    return {
        "id": "run-1",
        "sweep": "sweep-1",
        "board": "board-1",
        "agent": "agent-1",
        "benchmark": "sww",
        "mode": "energy",
        "dataset": "",
        "options": json.dumps(options) if options else "",
        "state": "completed",
    }


def published(sample: Sample) -> dict[str, Any]:
    """The record as ingest stores it: the agent's record, validated and decoded."""
    payload = SAMPLE_BATCH.encode("agent-1", "board-1", "run-1", [SAMPLE_BATCH.record(sample)])
    (record,) = SAMPLE_BATCH.decode(payload).records()
    return record


def test_the_record_carries_the_stream_as_numbers() -> None:
    record = published(stream_sample())
    assert "stream" not in record
    assert record["detections_ms"][0] == ORIGIN_MS and len(record["duty_starts"]) == 100
    assert record["stream_length_s"] == 1200.0 and record["stream_sample_rate"] == 16000
    assert tuple(record["stream_windows"][0]) == LONG.windows[0]


def test_controller_scores_the_official_long_file(tmp_path: Path) -> None:
    summary = finish_run(run_hash(), [published(stream_sample())], {}, tmp_path / "f")
    assert (summary.true_positives, summary.false_negatives, summary.false_positives) == (
        47,
        3,
        2,
    )
    assert summary.f1 == 2 * 47 / (2 * 47 + 2 + 3)
    assert summary.throughput_ips == 55.71 and summary.latency_ms == 1000 / 55.71
    assert summary.duty_cycle == 0.56094 and summary.power_mw == 20.0
    assert summary.energy_uj is None and summary.top1 is None
    assert (summary.target, summary.target_met) == (8, True)
    assert summary.valid and summary.problems == ()
    assert set(summary.to_json()) == set(SUMMARY_KEYS)
    text = (tmp_path / "f" / "results.txt").read_text()
    assert "Accuracy: 47 True positives, 3 False negatives, 2 False positives" in text
    (element,) = json.loads((tmp_path / "f" / "results.json").read_text())
    assert element["infer"]["wav_file"] == "long_wav.wav"
    assert element["infer"]["detection_windows"] == [list(w) for w in LONG.windows]
    assert element["activations"] == [3, 127, -5]
    assert (tmp_path / "f" / "energy_inf_000.png").is_file()
    log = (tmp_path / "f" / "log.txt").read_text()
    assert "against the truth file sww_long_test.json (official)" in log


def test_farm_run_writes_the_same_files(tmp_path: Path) -> None:
    finish_run(run_hash(), [published(stream_sample())], {}, tmp_path / "c")
    folder = RunFolder.create(tmp_path / "runs", get_benchmark("sww"), "energy", RunSettings())
    folder.add_sample(stream_sample())
    folder.finish(RunInfo(), official_truth())
    assert (folder.path / "results.txt").read_text() == (tmp_path / "c" / "results.txt").read_text()
    assert json.loads((folder.path / "results.json").read_text()) == json.loads(
        (tmp_path / "c" / "results.json").read_text()
    )


def test_another_truth_file_is_scored_but_not_valid(tmp_path: Path) -> None:
    summary = finish_run(
        run_hash(truth="mine.json"), [published(stream_sample())], {}, tmp_path / "f"
    )
    assert summary.true_positives == 47 and not summary.valid
    assert summary.problems[0].startswith("truth file mine.json is not an official one")
    (element,) = json.loads((tmp_path / "f" / "results.json").read_text())
    assert element["infer"]["wav_file"] is None  # the controller does not have that file


def test_windows_other_than_the_official_ones_are_not_valid(tmp_path: Path) -> None:
    moved = tuple((a + 0.5, b + 0.5) for a, b in LONG.windows)
    summary = finish_run(run_hash(), [published(stream_sample(moved))], {}, tmp_path / "f")
    assert not summary.valid
    assert "truth windows differ from sww_long_test.json's entry" in summary.problems[0]


def test_a_run_without_its_stream_cannot_be_scored(tmp_path: Path) -> None:
    plain = published(stream_sample())
    for key in ("stream_windows", "detections_ms", "duty_starts", "duty_stops"):
        plain.pop(key)
    plain.pop("stream_length_s")
    with pytest.raises(ResultsError, match="an sww01 run is one stream"):
        finish_run(run_hash(), [plain], {}, tmp_path / "f")
    two = [published(stream_sample()), {**published(stream_sample()), "seq": 1}]
    with pytest.raises(ResultsError, match="2 sample"):
        finish_run(run_hash(), two, {}, tmp_path / "g")
    assert not (tmp_path / "f").exists() and not (tmp_path / "g").exists()
