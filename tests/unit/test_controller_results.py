"""``controller.results.finish_run``: a run's official numbers and files from stored sample
records, through the same ``RunFolder`` / ``farm.scoring`` code as ``farm run``.

Every expected number below is worked out by hand in the test (window times chosen so the
throughputs are exact, power traces of exactly representable values, latencies whose sorted
order is known), from the official tools' rules; the checker's patterns are written from
docs/measurement.md#official-results-lines. The equivalence tests feed the same samples to
``RunFolder.create`` + ``add_sample`` + ``finish`` (what ``farm run`` does, with a
synthesized dataset loaded from disk) and compare the files.
"""

from __future__ import annotations

import json
import random
import re
from collections import Counter
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import pytest

from agent.runner import RunInfo, RunSettings
from controller.results import SUMMARY_FILE, ResultsError, RunSummary, finish_run
from controller.sweep_view import SUMMARY_KEYS
from farm.catalog import get_benchmark
from farm.dataset_synth import synth_dataset
from farm.datasets import load_dataset, official_rows
from farm.messages import RunInfoRecord
from farm.run_output import INCOMPLETE, RunFolder
from farm.sample import Sample

# -- the official checker's patterns (docs/measurement.md#official-results-lines) --------------

PERF_MEDIAN = re.compile(r"^.* Median throughput is\s+([0-9.]+) inf\./sec\.")
TOP1 = re.compile(r"^.* Top[- ]1%?\s*[:=] ([0-9.]+)")
AUC = re.compile(r"^.* AUC\s*[:=] ([0-9.]+)")
ENERGY_MEDIAN = re.compile(r"Median energy cost is ([0-9.]+) uJ/inf")
STAMP = re.compile(r"^\d{4}\.\d{6} ")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

#: kws01 rows 1-5 (docs/measurement.md#datasets): the label is the number in the file name.
KWS_FIRST_FIVE = [
    ("tst_000000_Stop_7.bin", 7),
    ("tst_000001_Left_2.bin", 2),
    ("tst_000002_Right_6.bin", 6),
    ("tst_000003_Up_8.bin", 8),
    ("tst_000004_On_5.bin", 5),
]
KWS_RESULTS = (0.0,) * 11 + (1.0,)


def run_hash(benchmark: str, mode: str, **options: Any) -> dict[str, str]:
    """A run hash as Redis holds it (controller/keys.py RUN_FIELDS, all strings)."""
    return {
        "id": "run-1",
        "sweep": "sweep-1",
        "board": "board-1",
        "agent": "agent-1",
        "benchmark": benchmark,
        "mode": mode,
        "dataset": "",
        "options": json.dumps(options) if options else "",
        "state": "completed",
    }


def last_match(pattern: re.Pattern[str], text: str) -> str | None:
    """The checker's rule: the last matching line wins."""
    found = None
    for line in text.splitlines():
        m = pattern.search(line) if pattern is ENERGY_MEDIAN else pattern.match(line)
        if m:
            found = m.group(1)
    return found


def unstamped(text: str) -> list[str]:
    return [STAMP.sub("", line) for line in text.splitlines()]


def read_summary(folder: Path) -> dict[str, Any]:
    return json.loads((folder / SUMMARY_FILE).read_text())


def shuffled(records: list[dict], seed: int = 1) -> list[dict]:
    out = list(records)
    random.Random(seed).shuffle(out)
    return out


# -- performance -------------------------------------------------------------------------------

#: (start_us, end_us) per window, N = 1000 each. Throughput = 1000 / seconds:
#:   12.5 s -> 80.0, 12.8 s -> 78.125, 12.0 s -> 83.333..., 12.4 s -> 80.645...,
#:   12.6 s -> 79.365...; sorted 78.125 < 79.365 < 80.0 < 80.645 < 83.333: the median (3rd of
#:   5) is 80.0 inf/s, latency 1000 / 80 = 12.5 ms. Window 4 straddles the 32-bit wrap:
#:   4_294_000_000 + 12_400_000 - 2**32 = 11_432_704.
PERF_WINDOWS = [
    (1_000_000, 13_500_000),
    (20_000_000, 32_800_000),
    (40_000_000, 52_000_000),
    (4_294_000_000, 11_432_704),
    (60_000_000, 72_600_000),
]


def perf_records(windows: list[tuple[int, int]], count: int = 1000) -> list[dict]:
    records = []
    for seq, (start, end) in enumerate(windows):
        elapsed = (end - start) % (1 << 32)
        records.append(
            Sample(
                seq=seq,
                index=seq,
                segment=None,
                window=seq,
                label=KWS_FIRST_FIVE[seq][1],
                results=KWS_RESULTS,
                count=count,
                warmup=10,
                start_us=start,
                end_us=end,
                elapsed_us=elapsed,
                latency_us=elapsed / count,
                wrapped=end < start,
                wall_s=elapsed / 1e6 + 0.2,
            ).to_record()
        )
    return records


PERF_INFO = {
    "count": 1000,
    "warmup": 10,
    "calibration": [[1, 700], [10, 6_000], [100, 60_000], [834, 500_400]],
    "loop_wall_s": 64.5,
    "last_issue_s": 0.0,
}


def test_performance_median_throughput_and_files(tmp_path: Path) -> None:
    folder = tmp_path / "results" / "sweep-1" / "board-1" / "kws01" / "performance"
    records = perf_records(PERF_WINDOWS)
    summary = finish_run(run_hash("kws", "performance"), shuffled(records), PERF_INFO, folder)

    assert summary.throughput_ips == 80.0
    assert summary.latency_ms == 12.5
    assert summary.samples == 5
    assert summary.valid is True
    assert summary.top1 is summary.auc is summary.energy_uj is None
    assert summary.p50_us is summary.p90_early_stop_us is None
    assert summary.target is None and summary.target_met is None
    # The wrap is corrected and reported, not an invalidity (farm.scoring's rule).
    assert len(summary.problems) == 1 and "wrapped" in summary.problems[0]
    assert summary.artifacts == str(folder)

    results = (folder / "results.txt").read_text()
    assert last_match(PERF_MEDIAN, results) == "80.000"
    body = unstamped(results)
    # The window blocks without a prefix, as the official runner writes them.
    assert body.count("    Runtime requirements have been met.") == 5
    assert "    Throughput: 80.0 inf./sec." in body
    assert "    # Inferences : 1000" in body
    assert body[-3] == body[-1] == "ulp-mlperf: " + "-" * 57

    elements = json.loads((folder / "results.json").read_text())
    assert [e["file"] for e in elements] == [f for f, _ in KWS_FIRST_FIVE]
    assert [e["class"] for e in elements] == [str(label) for _, label in KWS_FIRST_FIVE]
    assert elements[0]["infer"]["throughput"] == 80.0
    assert elements[3]["infer"]["elapsed_time"] == 12_400_000
    assert {e["mode"] for e in elements} == {"p"}
    assert all(e["total_length"] is None for e in elements)

    lines = (folder / "samples.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == records  # sorted by seq, as stored
    log = (folder / "log.txt").read_text()
    assert "N=834: 500400 us; N per timed window: 1000" in log
    assert "scored by the controller from 5 stored samples" in log
    assert "problem: window 4: the 32-bit lap counter wrapped" in log
    assert read_summary(folder) == summary.to_json()
    assert json.loads((folder / "run.json").read_text())["run"] == "run-1"
    assert not (folder / INCOMPLETE).exists()
    assert sorted(p.name for p in folder.iterdir()) == [
        "log.txt",
        "results.json",
        "results.txt",
        "run.json",
        "samples.jsonl",
        SUMMARY_FILE,
    ]
    assert sorted(p.name for p in folder.parent.iterdir()) == ["performance"]


def test_performance_short_window_is_invalid_but_still_has_a_median(tmp_path: Path) -> None:
    # Window 2 lasts 9.6 s: 1000 / 9.6 = 104.1666...; the median stays 80.0 (sorted 78.125,
    # 79.365, 80.0, 80.645, 104.17), but no window may be shorter than 10 s.
    windows = list(PERF_WINDOWS)
    windows[2] = (40_000_000, 49_600_000)
    summary = finish_run(
        run_hash("kws", "performance"), perf_records(windows), PERF_INFO, tmp_path / "f"
    )
    assert summary.throughput_ips == 80.0
    assert summary.valid is False
    assert "window 3: 9.6 s is shorter than 10.0 s" in summary.problems


def test_performance_error_2_writes_no_median(tmp_path: Path) -> None:
    # The whole loop took 9 s of host time: ERROR 2, and the runner prints no median; the
    # summary still says what the board did (median 80.0 inf./s), marked not valid.
    info = {**PERF_INFO, "loop_wall_s": 9.0}
    summary = finish_run(
        run_hash("kws", "performance"), perf_records(PERF_WINDOWS), info, tmp_path / "f"
    )
    assert summary.throughput_ips == 80.0 and summary.latency_ms == 12.5
    assert summary.valid is False
    assert "ERROR 2 - loop exited before 10 seconds elapsed." in summary.problems
    results = (tmp_path / "f" / "results.txt").read_text()
    assert last_match(PERF_MEDIAN, results) is None
    assert unstamped(results)[-1] == "ulp-mlperf: ERROR 2 - loop exited before 10 seconds elapsed."
    elements = json.loads((tmp_path / "f" / "results.json").read_text())
    assert elements[-1] == {"error": "error 2", "mode": "p"}


def test_performance_subset_is_marked_like_farm_run(tmp_path: Path) -> None:
    # limit 3: three windows -> ERROR 1 (not exactly 5), and the subset note everywhere.
    folder = tmp_path / "f"
    summary = finish_run(
        run_hash("kws", "performance", limit=3),
        perf_records(PERF_WINDOWS[:3]),
        PERF_INFO,
        folder,
    )
    note = "subset run (--limit 3): NOT VALID FOR SUBMISSION"
    # The three windows: 80.0, 78.125 and 83.333 inf./s (12.5, 12.8 and 12.0 s for 1000).
    assert summary.valid is False and summary.throughput_ips == 80.0
    assert summary.problems[-1] == note  # the reason valid is false, also in problems
    body = unstamped((folder / "results.txt").read_text())
    assert body[-2:] == [
        "ulp-mlperf: ERROR 1 - loop_count was not exactly 5.",
        f"ulp-mlperf: {note}",
    ]
    elements = json.loads((folder / "results.json").read_text())
    assert elements[-2:] == [{"error": "error 1", "mode": "p"}, {"note": note, "mode": "p"}]
    lines = [json.loads(x) for x in (folder / "samples.jsonl").read_text().splitlines()]
    assert all(line["subset"] is True for line in lines)
    assert note in (folder / "log.txt").read_text().splitlines()[0]


def test_ic02_performance_logs_its_deviation(tmp_path: Path) -> None:
    rows = official_rows("ic01")
    records = [
        {**r, "index": i, "label": rows[i].label, "results": [0.1] * 10}
        for i, r in enumerate(perf_records(PERF_WINDOWS))
    ]
    finish_run(run_hash("ic2", "performance"), records, PERF_INFO, tmp_path / "f")
    log = (tmp_path / "f" / "log.txt").read_text()
    assert "deviation from the official script: ic02 performance: shipped script loops" in log


# -- accuracy ---------------------------------------------------------------------------------


def classifier_vector(classes: int, winner: int) -> list[float]:
    """Sums to 1 (up to rounding): 0.01 everywhere, the winner 1 - 0.01 x (classes - 1)."""
    v = [0.01] * classes
    v[winner] = 1 - 0.01 * (classes - 1)
    return v


def accuracy_records(dataset: str, correct: int, classes: int) -> list[dict]:
    """One record per official row; the first ``correct`` rows answered right, the others
    with the next class."""
    records = []
    for row in official_rows(dataset):
        winner = row.label if row.index < correct else (row.label + 1) % classes
        records.append(
            Sample(
                seq=row.index,
                index=row.index,
                segment=None,
                window=None,
                label=row.label,
                results=tuple(classifier_vector(classes, winner)),
                start_us=1000 * row.index,
                end_us=1000 * row.index + 900,
                elapsed_us=900,
                latency_us=900.0,
            ).to_record()
        )
    return records


def test_accuracy_top1_ic01(tmp_path: Path) -> None:
    # 180 of the 200 files right: top-1 = 100 x 180 / 200 = 90.0 %, ic's target 85.
    folder = tmp_path / "f"
    summary = finish_run(
        run_hash("ic", "accuracy"), shuffled(accuracy_records("ic01", 180, 10)), {}, folder
    )
    assert summary.top1 == 90.0
    assert summary.auc is None  # the ic AUC is in results.txt, not the summary
    assert summary.target == 85.0 and summary.target_met is True
    assert summary.valid is True and summary.problems == ()
    assert summary.samples == 200
    assert summary.throughput_ips is None and summary.energy_uj is None

    results = (folder / "results.txt").read_text()
    assert last_match(TOP1, results) == "90.0"
    assert last_match(AUC, results) is not None
    elements = json.loads((folder / "results.json").read_text())
    rows = official_rows("ic01")
    assert [e["file"] for e in elements] == [r.file for r in rows]
    assert elements[0] == {
        "file": "emu_s_002009.bin",
        "classes": "10",
        "class": "2",
        "bytes_to_send": None,
        "stride": None,
        "total_length": None,
        "infer": {
            "start_time": 0,
            "end_time": 900,
            "elapsed_time": 900,
            "results": classifier_vector(10, 2),
            "total_inferences": 1,
            "iterations": 1,
            "warmups": 0,
        },
        "mode": "a",
    }


@pytest.mark.parametrize(
    ("correct", "top1", "met"),
    [
        (899, 89.9, False),  # 100 x 899 / 1000 = 89.9 < 90 (kws)
        (900, 90.0, True),  # exactly the target
    ],
)
def test_accuracy_kws_target(tmp_path: Path, correct: int, top1: float, met: bool) -> None:
    summary = finish_run(
        run_hash("kws01", "accuracy"), accuracy_records("kws01", correct, 12), {}, tmp_path / "f"
    )
    assert summary.top1 == top1
    assert summary.target == 90.0 and summary.target_met is met
    assert summary.valid is True  # below target is a valid measurement that misses it


def test_accuracy_subset_is_invalid_and_marked(tmp_path: Path) -> None:
    folder = tmp_path / "f"
    records = accuracy_records("ic01", 200, 10)[:10]
    summary = finish_run(run_hash("ic", "accuracy", limit=10), records, {}, folder)
    # 10 rows, all right: 100 %; only some classes present, so sklearn refuses the AUC.
    assert summary.top1 == 100.0 and summary.valid is False
    assert any(p.startswith("AUC not computable") for p in summary.problems)
    assert summary.problems[-1] == "subset run (--limit 10): NOT VALID FOR SUBMISSION"
    body = unstamped((folder / "results.txt").read_text())
    assert body == [
        "ulp-mlperf: Top 1% = 100.0",
        "ulp-mlperf: subset run (--limit 10): NOT VALID FOR SUBMISSION",
    ]


def test_accuracy_without_every_official_row_is_invalid(tmp_path: Path) -> None:
    # A run on a partial dataset (no limit): 150 of the 200 rows, all right.
    records = accuracy_records("ic01", 200, 10)[:150]
    summary = finish_run(run_hash("ic", "accuracy"), records, {}, tmp_path / "f")
    assert summary.top1 == 100.0
    assert summary.valid is False
    assert summary.problems[0] == (
        "150 samples, the official accuracy inputs of farm/data/y_labels/ic01/y_labels.csv "
        "are 200: not valid for submission"
    )


def ad_records(alt: bool, windows: int, score_of: dict[int, float]) -> list[dict]:
    """Per file ``windows`` window scores spread around the file's score (mean = score)."""
    records: list[dict] = []
    offsets = {1: [0.0], 2: [-0.05, 0.05]}[windows]
    for row in official_rows("ad01", alt=alt):
        for seg, off in enumerate(offsets):
            records.append(
                Sample(
                    seq=len(records),
                    index=row.index,
                    segment=seg,
                    window=None,
                    label=row.label,
                    results=(score_of[row.index] + off,),
                ).to_record()
            )
    return records


def test_ad01_auc_over_per_file_means(tmp_path: Path) -> None:
    rows = official_rows("ad01")
    normal = [r.index for r in rows if r.label == 0]
    anomaly = [r.index for r in rows if r.label == 1]
    assert (len(normal), len(anomaly)) == (140, 108)  # docs/measurement.md#datasets
    # Per-file means: 130 normal files 0.1, the last 10 normal files 0.9, anomalies 0.5.
    # AUC = P(anomaly score > normal score) = 130 x 108 / (140 x 108) = 13/14 = 0.92857...,
    # printed 0.929; ad's target is 0.85.
    score = {i: 0.1 for i in normal[:130]} | {i: 0.9 for i in normal[130:]}
    score |= {i: 0.5 for i in anomaly}
    folder = tmp_path / "f"
    summary = finish_run(run_hash("ad", "accuracy"), ad_records(False, 2, score), {}, folder)
    assert summary.auc == 0.929
    assert summary.top1 is None  # ad's "Top 1%" is not top-1
    assert summary.target == 0.85 and summary.target_met is True
    assert summary.valid is True and summary.problems == ()
    assert summary.samples == 248 * 2
    results = (folder / "results.txt").read_text()
    assert last_match(AUC, results) == "0.929"
    elements = json.loads((folder / "results.json").read_text())
    assert len(elements) == 496
    # Two windows per file, read from the samples (highest window + 1).
    assert {e["total_length"] for e in elements} == {2}
    assert elements[0]["bytes_to_send"] == "2560" and elements[0]["stride"] == "512"


def test_ad01_alt_index_below_target(tmp_path: Path) -> None:
    rows = official_rows("ad01", alt=True)
    normal = [r.index for r in rows if r.label == 0]
    anomaly = [r.index for r in rows if r.label == 1]
    assert (len(normal), len(anomaly)) == (36, 36)  # y_labels_alt.csv, docs/measurement.md#datasets
    # 30 normal files 0.2, 6 normal files 0.8, anomalies 0.6:
    # AUC = 30 x 36 / (36 x 36) = 0.8333..., printed 0.833 < 0.85.
    score = {i: 0.2 for i in normal[:30]} | {i: 0.8 for i in normal[30:]}
    score |= {i: 0.6 for i in anomaly}
    folder = tmp_path / "f"
    summary = finish_run(
        run_hash("ad", "accuracy", alt=True), ad_records(True, 1, score), {}, folder
    )
    assert summary.auc == 0.833 and summary.target_met is False
    assert summary.valid is True
    elements = json.loads((folder / "results.json").read_text())
    assert [e["file"] for e in elements] == [r.file for r in rows]


# -- latency ----------------------------------------------------------------------------------


def latency_records(latencies_us: list[int]) -> list[dict]:
    records = []
    for seq, lat in enumerate(latencies_us):
        row = seq % 5
        start = 1_000_000 + 10_000 * seq
        records.append(
            Sample(
                seq=seq,
                index=row,
                segment=None,
                window=None,
                label=KWS_FIRST_FIVE[row][1],
                results=KWS_RESULTS,
                start_us=start,
                end_us=start + lat + 1000,  # the printing of the first lap is taken off
                elapsed_us=lat + 1000,
                latency_us=float(lat),
            ).to_record()
        )
    return records


def test_latency_loadgen_percentiles(tmp_path: Path) -> None:
    # 100 queries, latencies 1000, 1010, ..., 1990 µs, issued in a shuffled order, so
    # sorted[i] = 1000 + 10 i. LoadGen: value = sorted[floor(N p)]:
    #   p50 -> sorted[50] = 1500, p90 -> sorted[90] = 1900, p99 -> sorted[99] = 1990.
    # Early stopping, N = 100 (docs/measurement.md#early-stopping): t = 3, estimate
    # sorted[97] = 1970.
    latencies = [1000 + 10 * i for i in range(100)]
    random.Random(7).shuffle(latencies)
    folder = tmp_path / "f"
    info = {"count": None, "warmup": 0, "last_issue_s": 1.5}
    summary = finish_run(
        run_hash("kws", "latency", min_queries=100, min_duration_s=1.0),
        shuffled(latency_records(latencies)),
        info,
        folder,
    )
    assert (summary.p50_us, summary.p90_us, summary.p99_us) == (1500, 1900, 1990)
    assert summary.p90_early_stop_us == 1970
    assert summary.valid is True and summary.problems == ()
    assert summary.throughput_ips is None and summary.target is None

    document = json.loads((folder / "latency.json").read_text())
    assert document["supplemental"] is True
    assert document["percentiles_ns"]["90.00"] == 1_900_000
    assert document["early_stopping_p90"]["overlatency_t"] == 3
    text = (folder / "mlperf_log_summary.txt").read_text()
    assert "90.0th percentile latency (ns) : 1900000" in text
    assert "Result is : VALID" in text
    assert " * Early stopping 90.0th percentile estimate: 1970000" in text
    body = unstamped((folder / "results.txt").read_text())
    assert body[0].startswith("ulp-mlperf: Supplemental:")
    assert "ulp-mlperf: Early stopping 90.0th percentile estimate (ns): 1970000" in body


def test_latency_below_the_minimums_says_why(tmp_path: Path) -> None:
    # 50 queries (< 64: no early-stopping estimate) against the defaults 1024 queries and
    # 60 s; the last query was issued at 0.5 s. floor(50 x 0.5) = 25 -> sorted[25] = 1250.
    latencies = [1000 + 10 * i for i in range(50)]
    info = RunInfoRecord(last_issue_s=0.5)
    summary = finish_run(
        run_hash("kws", "latency"), latency_records(latencies), info, tmp_path / "f"
    )
    assert summary.p50_us == 1250 and summary.p90_early_stop_us is None
    assert summary.valid is False
    assert summary.problems == (
        "latency: 50 queries, fewer than the minimum 1024",
        "latency: the last query was issued at 0.500 s, before the minimum duration of 60.0 s",
        "latency: 50 queries; early stopping needs at least 64",
    )
    assert "Result is : INVALID" in (tmp_path / "f" / "mlperf_log_summary.txt").read_text()


# -- energy -----------------------------------------------------------------------------------

UNIT_J = 2.0**-15  # exactly representable, and so is every sum of up to 2**38 of them
IDLE_J = 2.0**-20


def energy_record(
    seq: int, k: int, *, start: int = 1000, stop: int = 12000, total: int = 12500
) -> dict:
    """A window whose samples between the last two events are k x 2**-15 J each; idle
    samples (2**-20 J) before and after, and an earlier event that must not count."""
    samples = [IDLE_J] * start + [k * UNIT_J] * (stop - start) + [IDLE_J] * (total - stop)
    events = [[7, 500], [8, start], [9, stop]]
    record = Sample(
        seq=seq,
        index=seq,
        segment=None,
        window=seq,
        label=KWS_FIRST_FIVE[seq][1],
        results=KWS_RESULTS,
        count=1000,
        warmup=10,
        wall_s=14.0,
        energy_j=(stop - start) * k * UNIT_J,
        energy_window_s=(stop - start) / 1000,
    ).to_record()
    return {**record, "power_samples": samples, "power_events": events}


def test_energy_median_per_inference(tmp_path: Path) -> None:
    # Window with factor k: 11,000 samples (11.0 s) of k x 2**-15 J between the events at
    # samples 1000 and 12000: E = 11000 k / 32768 J = k x 0.335693359375 J; per inference
    # (N = 1000) k x 335.693359375 µJ. k = 2, 5, 3, 1, 4: the median is k = 3,
    # 1007.080078125 µJ, printed %5.4f -> 1007.0801.
    ks = [2, 5, 3, 1, 4]
    records = [energy_record(seq, k) for seq, k in enumerate(ks)]
    folder = tmp_path / "f"
    summary = finish_run(run_hash("kws", "energy"), shuffled(records), {"count": 1000}, folder)
    assert summary.energy_uj == pytest.approx(3 * 335.693359375, rel=1e-12)
    assert summary.valid is True and summary.problems == ()
    assert summary.throughput_ips is None and summary.top1 is None

    results = (folder / "results.txt").read_text()
    assert last_match(ENERGY_MEDIAN, results) == "1007.0801"
    lines = results.splitlines()
    assert lines[0] == "Power Edition Output"  # energy lines carry no timestamp prefix
    # Trial 0 (k = 2): 11.0 s, E = 0.67138671875 J = 671386.719 µJ (%.3f),
    # P = 1e3 x E / 11 = 61.03515625 mW -> 61.0352, E/inf 671.38671875 -> 671.387.
    assert lines[1:7] == [
        "Energy data for trial 0",
        "  Elapsed time  : 11.0",
        "  Inferences    : 1000",
        "  Power         : 61.0352 mW.",
        "  Total Energy  : 671386.719 uJ",
        "  Energy/Inf    : 671.387 uJ/inf",
    ]
    for i in range(5):
        assert (folder / f"energy_inf_{i:03d}.png").read_bytes().startswith(PNG_SIGNATURE)
    elements = json.loads((folder / "results.json").read_text())
    assert elements[0]["power"]["timestamps"] == [["7", 500], ["8", 1000], ["9", 12000]]
    assert elements[0]["power"]["voltage"] == 1.8
    assert len(elements[0]["power"]["samples"]) == 12500
    assert "elapsed_time" not in elements[0]["infer"]
    sample_lines = [json.loads(x) for x in (folder / "samples.jsonl").read_text().splitlines()]
    assert all("power_samples" not in line for line in sample_lines)
    assert sample_lines[0]["energy_j"] == records[0]["energy_j"]


def test_energy_short_window_errors_in_log_only(tmp_path: Path) -> None:
    # Window 4 spans samples 1000..10000: 9.0 s < 10 s. Its energy is 9000 x 4 x 2**-15 J,
    # per inference 4 x 274.658203125 = 1098.6328125 µJ, still above the median (k = 3).
    records = [energy_record(seq, k) for seq, k in enumerate([2, 5, 3, 1])]
    records.append(energy_record(4, 4, stop=10000))
    folder = tmp_path / "f"
    summary = finish_run(run_hash("kws", "energy"), records, {"count": 1000}, folder)
    assert summary.energy_uj == pytest.approx(1007.080078125, rel=1e-12)
    assert summary.valid is False
    error = "ERROR: Not valid for submission.  All inference times must be at least 10 seconds."
    assert error in summary.problems
    assert "trial 4: 9.0 s is shorter than 10.0 s" in summary.problems
    assert "  Elapsed time  : 9.0  <<<< below minimum duration" in (
        (folder / "results.txt").read_text().splitlines()
    )
    assert error not in (folder / "results.txt").read_text()
    assert error in (folder / "log.txt").read_text()


def test_energy_unparsable_sample_stored_as_null_scores_nan(tmp_path: Path) -> None:
    # An unparsable monitor sample is NaN (docs/measurement.md#energy-validity); JSON written
    # by pydantic holds it as null. Inside window 1 it makes that window's energy NaN, so the
    # median is NaN (numpy's rule): printed "  nan", which the checker's [0-9.]+ cannot capture.
    records = [energy_record(seq, k) for seq, k in enumerate([2, 5, 3, 1, 4])]
    trace = list(records[1]["power_samples"])
    trace[5000] = None
    records[1] = {**records[1], "power_samples": trace}
    folder = tmp_path / "f"
    summary = finish_run(run_hash("kws", "energy"), records, {"count": 1000}, folder)
    assert summary.to_json()["energy_uj"] is None
    assert summary.valid is False
    assert "trial 1: 1 unreadable or lost sample(s): energy is NaN" in summary.problems
    assert last_match(ENERGY_MEDIAN, (folder / "results.txt").read_text()) is None


def test_ad01_performance_total_length_is_assumed_and_logged(tmp_path: Path) -> None:
    # Performance samples are each file's first window only: the window count per file is
    # not in them; results.json's total_length takes the 102,400-byte files' 196 windows
    # ((102400 - 2560) / 512 + 1 = 196, docs/measurement.md#datasets) and the log says so.
    records = [
        {**r, "index": i, "label": 0, "segment": 0, "results": [0.5]}
        for i, r in enumerate(perf_records(PERF_WINDOWS))
    ]
    folder = tmp_path / "f"
    summary = finish_run(run_hash("ad", "performance"), records, PERF_INFO, folder)
    assert summary.throughput_ips == 80.0 and summary.valid is True
    elements = json.loads((folder / "results.json").read_text())
    assert {e["total_length"] for e in elements} == {196}
    assert "ad01 windows per file: 196 (assumed: 102400-byte files" in (
        (folder / "log.txt").read_text()
    )
    finish_run(run_hash("ad", "performance"), records, PERF_INFO, folder, windows_per_file=4)
    elements = json.loads((folder / "results.json").read_text())
    assert {e["total_length"] for e in elements} == {4}


# -- the same code path as farm run ------------------------------------------------------------


def _farm_run_folder(
    tmp_path: Path, benchmark: str, mode: str, samples: list[Sample], info: RunInfo, **settings
) -> RunFolder:
    """What ``farm run`` does with the same samples: a dataset folder on disk (synthesized
    stand-in with the official index), ``RunFolder.create``, ``add_sample``, ``finish``."""
    bench = get_benchmark(benchmark)
    root = tmp_path / "datasets"
    rows = max(s.index for s in samples) + 1
    synth_dataset(root, bench.dataset_id, limit=max(rows, 5))
    dataset = load_dataset(root, bench)
    folder = RunFolder.create(
        tmp_path / "sessions", bench, mode, RunSettings(**settings), {"benchmark": bench.id}
    )
    for sample in samples:
        folder.add_sample(sample)
    folder.finish(info, dataset)
    return folder


def _ad_accuracy_samples() -> list[Sample]:
    # 200 windows: all 196 of the first file, 4 of the second (synthesized files are
    # 102,400 B = 196 windows; the controller reads 196 from the samples).
    rows = official_rows("ad01")
    out = []
    for seq in range(200):
        row, seg = divmod(seq, 196)
        out.append(Sample(seq, row, seg, None, rows[row].label, (0.001 * seq,), start_us=seq))
    return out


def _cases() -> list[tuple[str, str, list[Sample], dict, dict]]:
    perf = [Sample.from_record(r) for r in perf_records(PERF_WINDOWS)]
    energy = [_with_traces(energy_record(seq, k)) for seq, k in enumerate([2, 5, 3, 1, 4])]
    latency = [Sample.from_record(r) for r in latency_records(list(range(900, 1700, 8)))]
    ic = [Sample.from_record(r) for r in accuracy_records("ic01", 15, 10)[:20]]
    ad_perf = [
        Sample.from_record({**r, "index": i, "label": 0, "segment": 0, "results": [0.5]})
        for i, r in enumerate(perf_records(PERF_WINDOWS))
    ]
    return [
        ("kws01", "performance", perf, asdict(RunInfo(**_info(PERF_INFO))), {}),
        ("ad01", "performance", ad_perf, asdict(RunInfo(**_info(PERF_INFO))), {}),
        ("ic01", "accuracy", ic, {}, {"limit": 20}),
        ("ad01", "accuracy", _ad_accuracy_samples(), {}, {"limit": 200}),
        ("kws01", "energy", energy, {"count": 1000, "warmup": 10}, {}),
        (
            "kws01",
            "latency",
            latency,
            {"last_issue_s": 2.0},
            {"min_queries": 100, "min_duration_s": 1.0},
        ),
    ]


def _with_traces(record: dict) -> Sample:
    return replace(
        Sample.from_record(record),
        power_samples=tuple(record["power_samples"]),
        power_events=tuple((c, i) for c, i in record["power_events"]),
    )


def _info(info: dict) -> dict:
    return {**info, "calibration": [tuple(c) for c in info["calibration"]]}


@pytest.mark.parametrize(
    ("bench_id", "mode", "samples", "info", "options"),
    _cases(),
    ids=["kws-performance", "ad-performance", "ic-accuracy", "ad-accuracy", "energy", "latency"],
)
def test_same_files_as_farm_run(
    tmp_path: Path,
    bench_id: str,
    mode: str,
    samples: list[Sample],
    info: dict,
    options: dict,
) -> None:
    run_info = RunInfo(**info)
    reference = _farm_run_folder(tmp_path, bench_id, mode, samples, run_info, **options)
    records = []
    for s in samples:
        record = s.to_record()
        if s.power_samples:
            record |= {
                "power_samples": list(s.power_samples),
                "power_events": [list(e) for e in s.power_events],
            }
        records.append(record)
    stored_info = {k: v for k, v in info.items() if k in RunInfoRecord.model_fields}
    folder = tmp_path / "controller"
    summary = finish_run(
        run_hash(bench_id, mode, **options), shuffled(records), stored_info, folder
    )

    ref, got = reference.path, folder
    assert unstamped((got / "results.txt").read_text()) == unstamped(
        (ref / "results.txt").read_text()
    )
    assert (got / "results.json").read_text() == (ref / "results.json").read_text()
    assert (got / "samples.jsonl").read_text() == (ref / "samples.jsonl").read_text()
    ref_files = {p.name for p in ref.iterdir()}
    assert ref_files | {SUMMARY_FILE} == {p.name for p in got.iterdir()}
    for name in ref_files - {"results.txt", "log.txt", "run.json"}:
        assert (got / name).read_bytes() == (ref / name).read_bytes(), name
    # Everything farm run reports as a problem, the controller reports too (the controller
    # may add its own: a subset, an incomplete set).
    assert set(reference.problems) <= set(summary.problems)


# -- inputs the controller refuses, and re-runs ------------------------------------------------


def test_missing_or_repeated_seqs_are_refused_and_nothing_is_written(tmp_path: Path) -> None:
    records = perf_records(PERF_WINDOWS)
    with pytest.raises(ResultsError, match=r"1 sample\(s\) missing below the last seq 4: 2"):
        finish_run(
            run_hash("kws", "performance"), records[:2] + records[3:], PERF_INFO, tmp_path / "f"
        )
    with pytest.raises(ResultsError, match="seq stored more than once: 1"):
        finish_run(
            run_hash("kws", "performance"), [*records, records[1]], PERF_INFO, tmp_path / "f"
        )
    with pytest.raises(ResultsError, match="no samples stored"):
        finish_run(run_hash("kws", "performance"), [], PERF_INFO, tmp_path / "f")
    assert list(tmp_path.iterdir()) == []


def test_a_sample_that_does_not_fit_the_official_index_is_refused(tmp_path: Path) -> None:
    records = perf_records(PERF_WINDOWS)
    records[1] = {**records[1], "label": 3}  # row 1 is tst_000001_Left_2.bin, label 2
    with pytest.raises(ResultsError, match=r"seq 1: label 3 for row 1 \(tst_000001_Left_2.bin\)"):
        finish_run(run_hash("kws", "performance"), records, PERF_INFO, tmp_path / "f")
    records = accuracy_records("ic01", 200, 10)
    records[0] = {**records[0], "index": 200}
    with pytest.raises(ResultsError, match="dataset row 200, but the official ic01 index"):
        finish_run(run_hash("ic", "accuracy"), records, {}, tmp_path / "f")
    assert not (tmp_path / "f").exists()


def test_bad_run_hash_is_refused(tmp_path: Path) -> None:
    records = perf_records(PERF_WINDOWS)
    with pytest.raises(ResultsError, match="unknown benchmark"):
        finish_run(run_hash("nope", "performance"), records, PERF_INFO, tmp_path / "f")
    with pytest.raises(ResultsError, match="sww01 runs in energy mode only"):
        finish_run(run_hash("sww", "performance"), records, PERF_INFO, tmp_path / "f")
    with pytest.raises(ResultsError, match="unknown mode 'fast'"):
        finish_run(run_hash("kws", "fast"), records, PERF_INFO, tmp_path / "f")
    with pytest.raises(ResultsError, match="run options"):
        finish_run(run_hash("kws", "performance", limit=0), records, PERF_INFO, tmp_path / "f")
    with pytest.raises(ResultsError, match="kws01 has no alternative index"):
        finish_run(run_hash("kws", "performance", alt=True), records, PERF_INFO, tmp_path / "f")


def test_energy_events_that_cannot_delimit_a_window_are_refused(tmp_path: Path) -> None:
    records = [energy_record(seq, 1) for seq in range(5)]
    records[2] = {**records[2], "power_events": [[7, 500], [9, 12000]]}
    with pytest.raises(ResultsError, match="event counters are not consecutive"):
        finish_run(run_hash("kws", "energy"), records, {"count": 1000}, tmp_path / "f")
    assert list(tmp_path.iterdir()) == []


def test_a_second_call_replaces_the_folder(tmp_path: Path) -> None:
    folder = tmp_path / "results" / "kws01" / "performance"
    finish_run(run_hash("kws", "performance"), perf_records(PERF_WINDOWS), PERF_INFO, folder)
    (folder / "stale.txt").write_text("from the first call")
    summary = finish_run(
        run_hash("kws", "performance"), perf_records(PERF_WINDOWS), PERF_INFO, folder
    )
    results = (folder / "results.txt").read_text()
    # One run's lines only: results.txt is appended to, so a reused folder would hold two.
    assert sum(1 for line in results.splitlines() if PERF_MEDIAN.match(line)) == 1
    assert not (folder / "stale.txt").exists()
    assert [p.name for p in folder.parent.iterdir()] == ["performance"]
    assert read_summary(folder) == summary.to_json()


def test_summary_json_has_exactly_the_documented_keys(tmp_path: Path) -> None:
    summary = finish_run(
        run_hash("kws", "performance"), perf_records(PERF_WINDOWS), PERF_INFO, tmp_path / "f"
    )
    data = summary.to_json()
    assert set(data) == set(SUMMARY_KEYS)  # what `farm show --json` reports, no more, no less
    assert RunSummary.from_json(json.loads(json.dumps(data))) == summary
    # A zero median throughput has an infinite latency, which JSON cannot hold: null.
    assert RunSummary(throughput_ips=0.0, latency_ms=float("inf")).to_json()["latency_ms"] is None


def test_run_folder_at_refuses_a_used_folder(tmp_path: Path) -> None:
    bench = get_benchmark("kws")
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "results.txt").write_text("old\n")
    with pytest.raises(FileExistsError, match="never reused"):
        RunFolder.at(tmp_path / "used", bench, "performance", RunSettings())
    folder = RunFolder.at(tmp_path / "new" / "deep", bench, "performance", RunSettings(limit=2))
    assert (folder.path / INCOMPLETE).exists()
    assert Counter(p.name for p in folder.path.iterdir()) == Counter(
        [INCOMPLETE, "run.json", "samples.jsonl", "log.txt"]
    )
