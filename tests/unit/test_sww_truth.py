"""sww01 truth files (docs/measurement.md#sww-truth) and the simulator's audio built from
them (docs/protocols.md#sww-simulator): the official files, validation with file and entry in
every message, the synthetic wav's tone where the windows are, and the detector model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from farm.protocol.sww import FRAME_BYTES, FRAME_S
from farm.sim.audio import DETECTED, Detector, SyntheticWav, voice_level
from farm.sww_truth import (
    OFFICIAL_TRUTH,
    TruthEntry,
    TruthError,
    dataset_truth,
    load_truth,
    official_truth,
    parse_truth,
)


def test_the_official_files() -> None:
    long = official_truth()
    (entry,) = long.entries
    assert (entry.wav_file, entry.length_s, entry.sample_rate) == ("long_wav.wav", 1200.0, 16000)
    assert len(entry.windows) == 50
    assert entry.windows[0] == (9.457699148021609, 10.105324148021609)
    assert entry.windows[-1] == (570.0, 570.593)
    assert long.official
    counts = {name: len(official_truth(name).entries[0].windows) for name in OFFICIAL_TRUTH}
    assert counts == {"sww_long_test.json": 50, "sww_med_test.json": 8, "sww_short_test.json": 3}
    assert entry.truth() == {
        "wav_file": "long_wav.wav",
        "detection_windows": [list(w) for w in entry.windows],
        "length_sec": 1200.0,
        "sample_rate": 16000,
    }


def test_a_copy_that_differs_is_not_official() -> None:
    doc = [{**official_truth().entries[0].truth()}]
    doc[0]["detection_windows"] = doc[0]["detection_windows"][:49]
    assert not parse_truth(json.dumps(doc), "sww_long_test.json").official
    assert not parse_truth(json.dumps(doc), "mine.json").official


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{", "t.json:1: not JSON"),
        ("[]", "t.json: expected a non-empty JSON list"),
        ('[{"wav_file": "a.wav"}]', "t.json: entry 0: missing detection_windows, length_sec"),
        (
            '[{"wav_file": "d/a.wav", "detection_windows": [], "length_sec": 1}]',
            "entry 0: wav_file 'd/a.wav' is not a plain file name",
        ),
        (
            '[{"wav_file": "a.wav", "detection_windows": [[2, 1]], "length_sec": 5}]',
            "entry 0: detection_windows[0]: [2.0, 1.0] is not inside [0, 5.0] in order",
        ),
        (
            '[{"wav_file": "a.wav", "detection_windows": [[1, 6]], "length_sec": 5}]',
            "detection_windows[0]: [1.0, 6.0] is not inside",
        ),
        (
            '[{"wav_file": "a.wav", "detection_windows": [[1]], "length_sec": 5}]',
            "detection_windows[0]: expected [start, end], got [1]",
        ),
        (
            '[{"wav_file": "a.wav", "detection_windows": [], "length_sec": 0}]',
            "entry 0: length_sec must be positive",
        ),
        (
            '[{"wav_file": "a.wav", "detection_windows": [], "length_sec": 7200.5}]',
            "entry 0: length_sec must be positive and at most 7200, got 7200.5",
        ),
        (
            '[{"wav_file": "a.wav", "detection_windows": [], "length_sec": 1, "sample_rate": 0}]',
            "entry 0: sample_rate must be a positive integer",
        ),
        (
            '[{"wav_file": "a.wav", "detection_windows": [], "length_sec": 1},'
            ' {"wav_file": "a.wav", "detection_windows": [], "length_sec": 2}]',
            "entry 1: a.wav is listed twice",
        ),
    ],
)
def test_bad_truth_files_are_refused_with_where(text: str, message: str) -> None:
    with pytest.raises(TruthError) as info:
        parse_truth(text, "t.json")
    assert message in str(info.value)


def test_dataset_truth_says_where_it_looked(tmp_path: Path) -> None:
    with pytest.raises(TruthError, match="does not exist"):
        dataset_truth(tmp_path / "none")
    with pytest.raises(TruthError, match=r"no sww01 folder in .*farm dataset synth"):
        dataset_truth(tmp_path)
    (tmp_path / "sww01").mkdir()
    with pytest.raises(TruthError, match=r"sww_long_test\.json: no such truth file"):
        dataset_truth(tmp_path)
    with pytest.raises(TruthError, match="not a plain file name"):
        dataset_truth(tmp_path, "../x.json")
    (tmp_path / "sww01" / "t.json").write_text(
        '[{"wav_file": "a.wav", "detection_windows": [[1, 2]], "length_sec": 3}]'
    )
    truth = dataset_truth(tmp_path, "t.json")
    assert truth.entries == (TruthEntry(0, "a.wav", ((1.0, 2.0),), 3.0, 16000),)
    assert load_truth(tmp_path / "sww01" / "t.json") == truth
    assert truth.folder == tmp_path / "sww01" and truth.rows == truth.entries


# --- the simulator's audio ------------------------------------------------------------------


def wav(windows: list[tuple[float, float]], length: float = 2.0) -> SyntheticWav:
    return SyntheticWav(TruthEntry(0, "a.wav", tuple(windows), length, 16000))


def test_synthetic_wav_has_the_tone_where_the_windows_are() -> None:
    w = wav([(0.5, 0.7)])
    assert w.frames == 62 and w.frame_s == FRAME_S  # 2 s: 62 whole frames of 512 samples
    assert w.frame(0) == bytes(FRAME_BYTES)
    loud = [k for k in range(w.frames) if voice_level(w.frame(k)) > 500]
    # the window covers frames 15 (0.48-0.512 s) to 21 (0.672-0.704 s)
    assert loud[0] in (15, 16) and loud[-1] in (20, 21)
    assert all(loud[i] + 1 == loud[i + 1] for i in range(len(loud) - 1))


def test_detector_misses_adds_and_delays() -> None:
    w = wav([(0.3, 0.5), (1.0, 1.2), (1.6, 1.8)], length=3.0)
    d = Detector(FRAME_S, miss=frozenset({1}), false_at_s=(2.5,), delay_s=0.2, frames=2)
    hits = [k for k in range(w.frames) if d.activation(w.frame(k)) == DETECTED]
    assert d.occurrences == 3
    onsets = [
        k
        for k in range(1, w.frames)
        if voice_level(w.frame(k)) > 500 >= voice_level(w.frame(k - 1))
    ]
    delay = round(0.2 / FRAME_S)
    expected = [onsets[0] + delay, onsets[0] + delay + 1, onsets[2] + delay, onsets[2] + delay + 1]
    assert hits == sorted([*expected, int(2.5 / FRAME_S)])
    d.reset()
    assert d.occurrences == 0
