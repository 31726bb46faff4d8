"""``farm run`` end to end: simulated boards on real ptys, the real runner, the real output
files; no mocks. Every printed number is checked against what the simulator's ground truth
implies:

- performance: each window's DUT time is the simulated DUT's own record
  (``ComputeRecord.window_us``), throughput ``N / elapsed``, the median the 3rd sorted value;
- accuracy: top-1 / AUC as the board's configured quality implies on the synthesized files
  (``farm.synthetic``: the stratified difficulties ``u``), AD on per-file mean scores;
- latency: LoadGen percentiles of the simulator's own inference times;
- energy: the power model's energy over the event-bracketed, sample-aligned interval.

The official checker's patterns are written here from docs/measurement.md#official-results-lines
(match from the line start, a mandatory space before the keyword, ``[0-9.]+`` captures, the last
matching line wins).

Most runs call ``run_one_board`` in the test's event loop with the simulator in the same loop
(direct access to the ground truth); a few go through ``python -m farm.cli run`` as a
subprocess against an in-process simulator, for exit codes and printed output. Windows and
datasets are shortened through the test-only settings; one run honours the official 10 s
windows. Nothing here asserts on host wall-clock time: simulated DUT times are exact.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import re
import signal
import sys
import zlib
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from agent.energy_monitor import MonitorTarget
from agent.one_board import RunInputError, RunRequest, run_one_board
from agent.runner import RunSettings
from farm import scoring
from farm.catalog import DATASETS, get_benchmark
from farm.dataset_synth import difficulties, synth_dataset
from farm.datasets import Row, official_index, official_rows
from farm.models import MODELS, format_results
from farm.run_output import INCOMPLETE, RunFolder
from farm.sim.config import BoardConfig, LatencyConfig, SimConfig
from farm.sim.latency import ComputeRecord
from farm.sim.server import SimBoard, SimFarm
from farm.sim.transcript import read_transcript
from farm.synthetic import AD_BLOCK, ad_score, decode_input, encode_input, simulated_output
from tests.integration.farm_procs import farm_command

# -- the official checker's patterns (docs/measurement.md#official-results-lines, as regexes) --

#: perf: from the line start, anything, a SPACE, "Median throughput is", whitespace, number,
#: space, "inf./sec.".
PERF_MEDIAN = re.compile(r"^.* Median throughput is\s+([0-9.]+) inf\./sec\.")
#: top-1 (kws, vww, ic, ic2): anything, SPACE, "Top", "-" or space, "1", optional "%",
#: optional whitespace, ":" or "=", space, number.
TOP1 = re.compile(r"^.* Top[- ]1%?\s*[:=] ([0-9.]+)")
#: auc (ad): anything, SPACE, "AUC", optional whitespace, ":" or "=", space, number.
AUC = re.compile(r"^.* AUC\s*[:=] ([0-9.]+)")
#: energy (non-sww): searched anywhere.
ENERGY_MEDIAN = re.compile(r"Median energy cost is ([0-9.]+) uJ/inf")

#: The official line prefix: ``MMDD.HHMMSS ulp-mlperf: ``.
PREFIX = re.compile(r"^\d{4}\.\d{6} ulp-mlperf: ")
SUBSET_NOTE = "NOT VALID FOR SUBMISSION"

#: Every samples.jsonl line has these (farm/run_output.py docstring).
SAMPLE_FIELDS = {"seq", "index", "segment", "window", "label", "latency_us", "results"}
#: results.json truth-row fields and infer fields (docs/measurement.md#official-results-json).
TRUTH_FIELDS = {"file", "classes", "class", "bytes_to_send", "stride", "total_length"}
INFER_FIELDS = {
    "start_time",
    "end_time",
    "elapsed_time",
    "results",
    "total_inferences",
    "iterations",
    "warmups",
}
MODE_LETTER = {"performance": "p", "accuracy": "a", "energy": "e", "latency": "l"}

#: 4-digit LPM01A mantissas: every sample within 5e-4 relative, so their sum is too.
MANTISSA_REL = 5e-4
#: Upper bound for one in-process run (a hang fails the test instead of the suite).
RUN_TIMEOUT_S = 240.0
#: Short windows for every run but the official one (test-only settings).
SHORT = {"min_window_s": 0.3, "max_window_s": 1.0, "calibration_s": 0.05}
#: Faster than the reference 115200 for the large vww/ic inputs (the link must match the
#: board's baud); ad01's reference baud is already 921600.
FAST_BAUD = 921600


def checker_capture(pattern: re.Pattern[str], text: str, *, search: bool = False) -> str | None:
    """What the checker reads: the capture of the LAST matching line (``match`` from the
    line start, or ``search`` anywhere for the energy rule)."""
    found = None
    for line in text.splitlines():
        m = pattern.search(line) if search else pattern.match(line)
        if m:
            found = m.group(1)
    return found


def bodies(text: str) -> list[str]:
    """results.txt lines without the official prefix: as in the official runner's file, a
    performance window's block carries none and every other line must."""
    out = []
    for line in text.splitlines():
        m = PREFIX.match(line)
        if line.startswith(("Performance results for window ", "    ")):
            assert m is None, f"window line with a prefix: {line!r}"
            out.append(line)
            continue
        assert m, f"line without the official prefix: {line!r}"
        out.append(line[m.end() :])
    return out


# -- simulated boards --------------------------------------------------------------------------


def board(
    board_id: str,
    model: str,
    *,
    baud: int | None = None,
    median_s: float | None = None,
    quality: float | None = None,
    spread: float = 0.02,
    tail_probability: float = 0.0,
    energy: bool = False,
) -> BoardConfig:
    """One simulated board's config."""
    return BoardConfig(
        id=board_id,
        model=model,
        baud=baud,
        quality=quality,
        energy=energy,
        firmware="energy" if energy else "performance",
        latency=LatencyConfig(median_s=median_s, spread=spread, tail_probability=tail_probability),
    )


@dataclass
class Sim:
    """Simulated boards running in the test's event loop."""

    farm: SimFarm
    stopped: bool = False

    def __getitem__(self, board_id: str) -> SimBoard:
        return self.farm.boards[board_id]

    async def stop(self) -> None:
        """Stop every board (flushes transcripts); idempotent."""
        if not self.stopped:
            self.stopped = True
            await self.farm.stop()


SimFactory = Callable[..., Awaitable[Sim]]


@pytest.fixture
async def sim(tmp_path: Path) -> AsyncIterator[SimFactory]:
    """Start simulated boards on demand; all are stopped at the end of the test."""
    started: list[Sim] = []

    async def start(*boards: BoardConfig, transcripts: bool = False) -> Sim:
        farm = SimFarm(
            SimConfig(seed=3, boards=list(boards)),
            tmp_path / f"sim{len(started)}",
            transcripts=transcripts,
        )
        await farm.start()
        s = Sim(farm)
        started.append(s)
        for b in farm.boards.values():
            if not b.config.energy:
                await asyncio.wait_for(b.dut.ready.wait(), 5)
        return s

    yield start
    for s in started:
        await s.stop()


def request(
    b: SimBoard,
    benchmark: str,
    mode: str,
    dataset: Path,
    out: Path,
    settings: RunSettings | None = None,
) -> RunRequest:
    """A run request on a simulated board's ports, at the board's baud."""
    if mode == "energy":
        assert b.interface_port is not None and b.monitor_port is not None
        return RunRequest(
            benchmark=benchmark,
            mode=mode,  # type: ignore[arg-type]
            dataset=dataset,
            out=out,
            interface=str(b.interface_port.path),
            monitor=MonitorTarget("lpm01a", str(b.monitor_port.path)),
            settings=settings or RunSettings(),
        )
    return RunRequest(
        benchmark=benchmark,
        mode=mode,  # type: ignore[arg-type]
        dataset=dataset,
        out=out,
        port=str(b.dut_port.path),
        baud=b.config.dut_baud,
        settings=settings or RunSettings(),
    )


async def run(req: RunRequest, **kwargs: object) -> RunFolder:
    async with asyncio.timeout(RUN_TIMEOUT_S):
        return await run_one_board(req, **kwargs)  # type: ignore[arg-type]


def infer_records(b: SimBoard) -> list[ComputeRecord]:
    """The simulator's ground truth of every timed ``infer`` phase, in order."""
    return [r for r in b.dut.records if r.phase == "infer"]


# -- datasets ----------------------------------------------------------------------------------


def write_subset(root: Path, dataset_id: str, per_class: int) -> list[Row]:
    """A stand-in dataset of the first ``per_class`` official rows of every class (official
    lines, official order), with synthetic inputs whose difficulties are the product's
    stratified spread over exactly these files (``farm.dataset_synth.difficulties``), as
    ``farm dataset synth`` would give a dataset of these rows."""
    spec = DATASETS[dataset_id]
    model = get_benchmark(dataset_id).model
    lines = official_index(dataset_id).splitlines(keepends=True)
    seen: Counter[int] = Counter()
    chosen: list[Row] = []
    for row in official_rows(dataset_id):
        if seen[row.label] < per_class:
            seen[row.label] += 1
            chosen.append(row)
    u = difficulties(spec, [chosen])
    folder = root / dataset_id
    folder.mkdir(parents=True, exist_ok=True)
    for row in chosen:
        data = encode_input(
            model,
            row.label,
            u[row.file],
            file_bytes=spec.synth_file_bytes,
            seed=zlib.crc32(row.file.encode()),
        )
        (folder / row.file).write_bytes(data)
    (folder / "y_labels.csv").write_text("".join(lines[row.line - 1] for row in chosen))
    return chosen


def write_ad01_two_windows(root: Path, per_class: int) -> dict[str, tuple[int, float, float]]:
    """ad01 files of two windows each (3,072 B: 2,560-byte windows, 512-byte stride) whose
    windows score differently: window 0 carries difficulty ``u - d``, window 1 ``u + d``
    (``u`` the product's stratified per-class spread). The simulated score is linear in
    ``u``, so each file's MEAN score is the score of ``u``: the AUC over files is the board's
    configured AUC, the AUC over windows is not. Returns ``file -> (label, u0, u1)``."""
    spec = DATASETS["ad01"]
    model = MODELS["ad01"]
    lines = official_index("ad01").splitlines(keepends=True)
    seen: Counter[int] = Counter()
    chosen: list[Row] = []
    for row in official_rows("ad01"):
        if seen[row.label] < per_class:
            seen[row.label] += 1
            chosen.append(row)
    u = difficulties(spec, [chosen])
    folder = root / "ad01"
    folder.mkdir(parents=True, exist_ok=True)
    truth: dict[str, tuple[int, float, float]] = {}
    for row in chosen:
        d = 0.9 * min(u[row.file], 1 - u[row.file])
        u0, u1 = u[row.file] - d, u[row.file] + d
        seed = zlib.crc32(row.file.encode())
        first = encode_input(model, row.label, u0, file_bytes=AD_BLOCK, seed=seed)
        rest = encode_input(model, row.label, u1, file_bytes=5 * AD_BLOCK, seed=seed + 1)
        (folder / row.file).write_bytes(first + rest)
        truth[row.file] = (row.label, u0, u1)
    (folder / "y_labels.csv").write_text("".join(lines[row.line - 1] for row in chosen))
    return truth


def printed_vector(model: str, values: list[float]) -> list[float]:
    """The result vector as the DUT prints it and the host parses it (empty fields
    ignored, docs/protocols.md#dut-results-lines)."""
    text = format_results(MODELS[model].result_format, values)
    return [float(f) for f in text.split(",") if f]


# -- output files ------------------------------------------------------------------------------


def read_samples(folder: Path, *, subset: bool) -> list[dict]:
    """samples.jsonl: complete JSON on every line, with the documented fields."""
    records = []
    for line in (folder / "samples.jsonl").read_text().splitlines():
        record = json.loads(line)
        assert record.keys() >= SAMPLE_FIELDS, record.keys()
        assert isinstance(record["results"], list) and record["results"]
        assert record.get("subset", False) is subset
        records.append(record)
    return records


def check_results_json(
    folder: Path, mode: str, dataset_id: str, *, windows_per_file: int | None = None
) -> list[dict]:
    """results.json element fields per docs/measurement.md#official-results-json; returns the
    inference elements."""
    elements = json.loads((folder / "results.json").read_text())
    assert isinstance(elements, list)
    inference = [e for e in elements if "infer" in e]
    for e in elements:
        assert e["mode"] == MODE_LETTER[mode]
    for e in inference:
        assert e.keys() >= TRUTH_FIELDS
        for key in ("file", "classes", "class"):
            assert isinstance(e[key], str)
        if dataset_id == "ad01":
            assert e["bytes_to_send"].strip() == "2560" and e["stride"].strip() == "512"
            assert e["total_length"] == windows_per_file
        else:
            assert e["bytes_to_send"] is None and e["stride"] is None
            assert e["total_length"] is None
        infer = e["infer"]
        expected = set(INFER_FIELDS)
        if mode == "performance":
            expected.add("throughput")
        if mode == "energy":
            expected.discard("elapsed_time")
            assert "elapsed_time" not in infer
            power = e["power"]
            assert set(power) == {"samples", "timestamps", "extracted_power", "voltage"}
            assert power["extracted_power"] is None
            assert power["voltage"] == pytest.approx(1.8)
            assert all(isinstance(v, float) for v in power["samples"])
            assert all(isinstance(n, str) and isinstance(i, int) for n, i in power["timestamps"])
        assert set(infer) == expected, set(infer) ^ expected
        assert infer["total_inferences"] == 1
        assert all(isinstance(v, float) for v in infer["results"])
    return inference


def run_folders(out: Path) -> list[Path]:
    return sorted(p for p in out.iterdir() if p.is_dir()) if out.exists() else []


# -- performance -------------------------------------------------------------------------------

#: model -> (warmups of the official script, board baud, median inference s)
PERF_CASES = {
    "kws01": (10, None, 0.002),
    "vww01": (5, FAST_BAUD, None),
    "ic01": (5, FAST_BAUD, None),
    "ic02": (5, FAST_BAUD, None),
    "ad01": (10, None, None),
}

WINDOW_BLOCK = re.compile(
    r"Performance results for window (\d)\n"
    r"    # Inferences : (\d+)\n"
    r"    Runtime: ([0-9.]+) sec\.\n"
    r"    Throughput: ([0-9.e+-]+) inf\./sec\.\n"
    r"(    Runtime requirements have been met\.\n)?"
)


def check_performance(
    folder: Path, b: SimBoard, model: str, warmups: int, settings: RunSettings
) -> tuple[list[float], str]:
    """Windows against the simulator's records; returns the throughputs and results.txt."""
    text = (folder / "results.txt").read_text()
    body = "\n".join(bodies(text)) + "\n"
    blocks = WINDOW_BLOCK.findall(body)
    assert [int(b_[0]) for b_ in blocks] == [1, 2, 3, 4, 5]

    samples = read_samples(folder, subset=False)
    assert [s["seq"] for s in samples] == [0, 1, 2, 3, 4]
    assert [s["window"] for s in samples] == [0, 1, 2, 3, 4]
    assert [s["index"] for s in samples] == [0, 1, 2, 3, 4]  # rows 1-5
    assert [s["segment"] for s in samples] == ([0] * 5 if model == "ad01" else [None] * 5)

    # The last five infer phases are the windows (the calibration's come before them), each
    # after a warmup phase of the script's W.
    records = infer_records(b)[-5:]
    phases = b.dut.records
    count = samples[0]["count"]
    throughputs = []
    for i, (s, rec, block) in enumerate(zip(samples, records, blocks, strict=True)):
        assert rec.count == s["count"] == count == int(block[1])
        assert s["warmup"] == warmups
        before = phases[next(j for j, r in enumerate(phases) if r is rec) - 1]
        assert before.phase == "warmup" and before.count == warmups
        assert rec.start_lap_us is not None and rec.window_us is not None
        assert s["start_us"] == rec.start_lap_us % (1 << 32)
        # The DUT-timed window is exactly the simulator's: the first lap's print time plus
        # the inferences.
        assert s["elapsed_us"] == rec.window_us
        assert s["latency_us"] == pytest.approx(rec.window_us / count)
        elapsed_s = rec.window_us / 1e6
        throughput = count / (rec.window_us / 1e6)
        assert block[2] == str(elapsed_s), f"window {i + 1}"  # Python's str(float)
        assert float(block[3]) == throughput, f"window {i + 1}"
        # N was sized so that the window lasts between the minimum and the limit (DUT time).
        assert settings.min_window_s <= elapsed_s < settings.max_window_s
        # Printed only above 10 s (strictly), which a short window is not.
        assert block[4] == ""
        throughputs.append(throughput)
    elements = check_results_json(
        folder, "performance", get_benchmark(model).dataset_id, windows_per_file=196
    )
    assert [e["infer"]["throughput"] for e in elements] == throughputs
    assert [e["infer"]["elapsed_time"] for e in elements] == [r.window_us for r in records]
    assert [e["infer"]["iterations"] for e in elements] == [count] * 5
    for e, rec in zip(elements, records, strict=True):
        assert rec.start_lap_us is not None and rec.window_us is not None
        assert e["infer"]["start_time"] == rec.start_lap_us % (1 << 32)
        assert e["infer"]["end_time"] == (rec.start_lap_us + rec.window_us) % (1 << 32)
    assert [e["infer"]["warmups"] for e in elements] == [warmups] * 5
    return throughputs, text


@pytest.mark.parametrize("model", list(PERF_CASES))
async def test_performance_windows_equal_the_simulated_dut(
    sim: SimFactory, tmp_path: Path, model: str
) -> None:
    warmups, baud, median_s = PERF_CASES[model]
    s = await sim(board("b", model, baud=baud, median_s=median_s))
    dataset_id = get_benchmark(model).dataset_id
    synth_dataset(tmp_path / "ds", dataset_id, limit=5)
    settings = RunSettings(**SHORT)
    folder = await run(
        request(s["b"], model, "performance", tmp_path / "ds", tmp_path / "runs", settings)
    )

    assert not (folder.path / INCOMPLETE).exists()
    throughputs, text = check_performance(folder.path, s["b"], model, warmups, settings)
    result = folder.result
    assert isinstance(result, scoring.PerformanceResult)
    # The host-clock loop holds the five DUT windows (simulated in real time).
    assert result.loop_seconds >= sum(r.window_us or 0 for r in infer_records(s["b"])[-5:]) / 1e6
    elements = json.loads((folder.path / "results.json").read_text())
    if result.loop_seconds < 10.0:
        # Short windows, a loop under 10 s (host clock): ERROR 2 and no median line.
        assert bodies(text)[-1] == "ERROR 2 - loop exited before 10 seconds elapsed."
        assert checker_capture(PERF_MEDIAN, text) is None
        assert elements[-1] == {"error": "error 2", "mode": "p"}
    else:
        # Large inputs over a slow link can take the loop past 10 s: the median is printed.
        assert "ERROR" not in text
        assert checker_capture(PERF_MEDIAN, text) == f"{sorted(throughputs)[2]:.3f}"
        assert all("error" not in e for e in elements)
    # Whichever branch the host clock took, the windows the run recorded give the median
    # the official rule defines: the 3rd of the 5 sorted throughputs.
    windows = [
        scoring.perf_window(
            e["infer"]["iterations"], e["infer"]["start_time"], e["infer"]["end_time"]
        )
        for e in elements
        if "infer" in e
    ]
    rescored = scoring.score_performance(windows, loop_seconds=10.0)
    assert rescored.median_throughput == sorted(throughputs)[2]
    log = (folder.path / "log.txt").read_text()
    assert f"benchmark {model}, mode performance" in log
    assert "calibration windows: N=1:" in log
    assert f"N per timed window: {elements[0]['infer']['iterations']}" in log
    if model == "ic02":
        assert "deviation from the official script" in log and "loop 5" in log


async def test_performance_official_10s_windows_through_the_cli(
    sim: SimFactory, tmp_path: Path
) -> None:
    """One real run at the official settings: N sized from a calibration so that every
    window lasts 10-30 s of DUT time; the median line is what the checker reads."""
    s = await sim(board("kws-fast", "kws01", median_s=0.002))
    synth_dataset(tmp_path / "ds", "kws01", limit=5)
    out = tmp_path / "runs"
    code, stdout, stderr = await farm_cli(
        "run",
        "--benchmark",
        "kws",
        "--mode",
        "performance",
        "--dataset",
        str(tmp_path / "ds"),
        "--sim-board",
        f"{s.farm.boards_json}:kws-fast",
        "--out",
        str(out),
        limit_s=300,
    )
    assert code == 0, stderr
    [folder] = run_folders(out)
    text = (folder / "results.txt").read_text()
    body = "\n".join(bodies(text)) + "\n"
    blocks = WINDOW_BLOCK.findall(body)
    assert len(blocks) == 5
    records = infer_records(s["kws-fast"])[-5:]
    throughputs = []
    for block, rec in zip(blocks, records, strict=True):
        n = int(block[1])
        assert rec.count == n
        assert rec.window_us is not None
        # ~6,250 inferences of ~2 ms: comfortably inside 10-30 s.
        assert 10.0 < rec.window_us / 1e6 < 30.0
        assert block[2] == str(rec.window_us / 1e6)
        assert float(block[3]) == n / (rec.window_us / 1e6)
        assert block[4], "every window: 'Runtime requirements have been met.'"
        throughputs.append(n / (rec.window_us / 1e6))
    assert body.count("Runtime requirements have been met.") == 5
    assert "ERROR" not in text
    median = checker_capture(PERF_MEDIAN, text)
    assert median == f"{sorted(throughputs)[2]:.3f}"
    # The line as the official runner writes it: value right-aligned in 10, between rules.
    lines = bodies(text)
    assert lines[-3:] == [
        "-" * 57,
        f"Median throughput is {sorted(throughputs)[2]:>10.3f} inf./sec.",
        "-" * 57,
    ]
    # Printed by the command too.
    assert checker_capture(PERF_MEDIAN, stdout) == median
    assert f"run folder: {folder}" in stdout.replace("\n", "")
    assert not (folder / INCOMPLETE).exists()


# -- accuracy ----------------------------------------------------------------------------------


def expected_classification(
    folder: Path, rows: list[Row], model: str, quality: float
) -> tuple[str, str, int]:
    """(top-1 text, AUC text, correct files) the board's quality implies on these files."""
    labels, vectors, correct_by_u = [], [], 0
    for row in rows:
        data = (folder / row.file).read_bytes()
        decoded = decode_input(data)
        assert decoded is not None and decoded[0] == row.label
        correct_by_u += decoded[1] < quality  # the simulated DUT is right iff u < quality
        raw = printed_vector(model, simulated_output(MODELS[model], data, quality))
        vectors.append([v / sum(raw) for v in raw])  # the runner's normalisation
        labels.append(row.label)
    predicted = [int(np.argmax(v)) for v in vectors]
    correct = sum(p == y for p, y in zip(predicted, labels, strict=True))
    assert correct == correct_by_u
    scores = np.array(vectors)
    if scores.shape[1] == 2:
        auc = roc_auc_score(labels, scores[:, 1])
    else:
        auc = roc_auc_score(labels, scores, multi_class="ovr")
    return f"{100 * correct / len(rows):.1f}", f"{auc:.3f}", correct


#: model -> (board quality, rows per class, board baud)
ACCURACY_CASES = {
    "vww01": (0.82, 2, FAST_BAUD),  # 4 files: u = .125 .375 .625 .875 -> 3 right
    "ic01": (0.72, 1, FAST_BAUD),  # 10 files, one per class -> 7 right
    "ic02": (0.92, 1, FAST_BAUD),  # -> 9 right
}


@pytest.mark.parametrize("model", list(ACCURACY_CASES))
async def test_accuracy_equals_the_configured_quality(
    sim: SimFactory, tmp_path: Path, model: str
) -> None:
    quality, per_class, baud = ACCURACY_CASES[model]
    bench = get_benchmark(model)
    rows = write_subset(tmp_path / "ds", bench.dataset_id, per_class)
    s = await sim(board("b", model, baud=baud, quality=quality))
    folder = await run(request(s["b"], model, "accuracy", tmp_path / "ds", tmp_path / "runs"))

    top1, auc, correct = expected_classification(
        tmp_path / "ds" / bench.dataset_id, rows, model, quality
    )
    n = len(rows)
    # The stratified difficulties make the board exactly round(quality * n) of n right.
    assert correct == round(quality * n)
    text = (folder.path / "results.txt").read_text()
    assert checker_capture(TOP1, text) == top1
    assert checker_capture(AUC, text) == auc
    assert bodies(text) == [f"Top 1% = {top1}", f"AUC = {auc}"]  # a full run: no subset note

    samples = read_samples(folder.path, subset=False)
    assert [s_["seq"] for s_ in samples] == list(range(n))
    # A subset's rows keep their numbers in the official index.
    assert [s_["index"] for s_ in samples] == [r.index for r in rows]
    assert [s_["label"] for s_ in samples] == [r.label for r in rows]
    assert all(s_["window"] is None and s_["segment"] is None for s_ in samples)
    # One `infer 1 0` per file, no warmup.
    records = infer_records(s["b"])
    assert len(records) == n and all(r.count == 1 for r in records)
    assert [s_["latency_us"] for s_ in samples] == [pytest.approx(r.window_us) for r in records]
    elements = check_results_json(folder.path, "accuracy", bench.dataset_id)
    assert [e["file"] for e in elements] == [r.file for r in rows]
    assert [e["class"] for e in elements] == [str(r.label) for r in rows]
    for e, row in zip(elements, rows, strict=True):
        data = (tmp_path / "ds" / bench.dataset_id / row.file).read_bytes()
        # Raw, not normalised.
        assert e["infer"]["results"] == printed_vector(
            model, simulated_output(MODELS[model], data, quality)
        )
        assert (e["infer"]["iterations"], e["infer"]["warmups"]) == (1, 0)


async def test_accuracy_kws01_subset_with_limit(sim: SimFactory, tmp_path: Path) -> None:
    """``farm dataset synth --limit 20`` then ``--limit 16``: the first 16 files, every
    output marked as a subset."""
    quality = 0.85
    synth_dataset(tmp_path / "ds", "kws01", limit=20)
    s = await sim(board("b", "kws01", quality=quality, median_s=0.002))
    settings = RunSettings(limit=16)
    folder = await run(
        request(s["b"], "kws01", "accuracy", tmp_path / "ds", tmp_path / "runs", settings)
    )
    rows = official_rows("kws01")[:16]
    assert len({r.label for r in rows}) == 12  # every class present: the OvR AUC exists
    top1, auc, _ = expected_classification(tmp_path / "ds" / "kws01", rows, "kws01", quality)
    text = (folder.path / "results.txt").read_text()
    assert checker_capture(TOP1, text) == top1
    assert checker_capture(AUC, text) == auc
    lines = bodies(text)
    assert lines[:2] == [f"Top 1% = {top1}", f"AUC = {auc}"]
    assert SUBSET_NOTE in lines[-1] and "--limit 16" in lines[-1]
    assert SUBSET_NOTE in (folder.path / "log.txt").read_text()
    samples = read_samples(folder.path, subset=True)
    assert len(samples) == 16 == len(infer_records(s["b"]))
    elements = json.loads((folder.path / "results.json").read_text())
    assert SUBSET_NOTE in elements[-1]["note"]
    assert check_results_json(folder.path, "accuracy", "kws01")[-1]["file"] == rows[-1].file


def top1_quirk(scores: list[float], labels: list[int]) -> float:
    """The official runner's AD "Top 1%" (docs/measurement.md#anomaly-detection), written from
    the text."""
    s = np.array(scores)
    y = np.array(labels)
    best = 0.0
    for threshold in np.amin(s) + np.arange(0.0, 1.0, 0.01) * (np.amax(s) - np.amin(s)):
        predicted = s > threshold
        tp = int(np.sum(predicted & (y == 1)))
        fp = int(np.sum(predicted & (y == 0)))
        fn = int(np.sum(~predicted & (y == 1)))
        precision = tp / (tp + fp + 1e-8)
        recall = tp / (tp + fn + 1e-8)
        best = max(best, 100 * (precision + recall) / 2)
    return best


async def test_accuracy_ad01_auc_over_per_file_means(sim: SimFactory, tmp_path: Path) -> None:
    quality = 0.87
    truth = write_ad01_two_windows(tmp_path / "ds", per_class=5)
    s = await sim(board("b", "ad01", quality=quality))
    folder = await run(request(s["b"], "ad01", "accuracy", tmp_path / "ds", tmp_path / "runs"))

    files = list(truth)
    labels = [truth[f][0] for f in files]
    # Every window scored as the DUT prints it (3 decimals), averaged per file.
    window_scores = [
        [printed_vector("ad01", [ad_score(label, u, quality)])[0] for u in (u0, u1)]
        for label, u0, u1 in truth.values()
    ]
    means = [float(np.mean(w)) for w in window_scores]
    auc = f"{roc_auc_score(labels, means):.3f}"
    # ... which is the AUC of the files' difficulties, near the configured AUC.
    u_of = {f: (u0 + u1) / 2 for f, (_, u0, u1) in truth.items()}
    pairs = [
        (ad_score(1, u_of[a], quality) > ad_score(0, u_of[n], quality))
        for a in files
        if truth[a][0] == 1
        for n in files
        if truth[n][0] == 0
    ]
    assert auc == f"{sum(pairs) / len(pairs):.3f}"
    assert abs(float(auc) - quality) <= 0.02
    # The test tells the two apart: the AUC over windows is a different number.
    window_auc = roc_auc_score(
        [label for label in labels for _ in range(2)], [v for w in window_scores for v in w]
    )
    assert f"{window_auc:.3f}" != auc

    text = (folder.path / "results.txt").read_text()
    assert checker_capture(AUC, text) == auc
    assert checker_capture(TOP1, text) == f"{top1_quirk(means, labels):.1f}"
    assert bodies(text) == [f"Top 1% = {checker_capture(TOP1, text)}", f"AUC = {auc}"]

    samples = read_samples(folder.path, subset=False)
    official = {row.file: row.index for row in official_rows("ad01")}
    assert [(s_["index"], s_["segment"]) for s_ in samples] == [
        (official[f], seg) for f in files for seg in (0, 1)
    ]
    assert [s_["results"] for s_ in samples] == [[v] for w in window_scores for v in w]
    assert len(infer_records(s["b"])) == 2 * len(files)
    elements = check_results_json(folder.path, "accuracy", "ad01", windows_per_file=2)
    assert [e["file"] for e in elements] == [f for f in files for _ in range(2)]


async def test_accuracy_cancelled_midway_then_resumed(sim: SimFactory, tmp_path: Path) -> None:
    """Ctrl-C (task cancelled) leaves a consistent folder marked INCOMPLETE; a run from
    ``start_seq`` continues without redoing the samples already done."""
    quality = 0.85
    n, cut = 20, 6
    synth_dataset(tmp_path / "ds", "kws01", limit=n)
    s = await sim(board("b", "kws01", quality=quality, median_s=0.002))
    b = s["b"]

    folders: list[RunFolder] = []

    def on_start(folder: RunFolder, total: int | None) -> None:
        assert total == n
        folders.append(folder)

    def progress(done: int, total: int | None, eta: float | None) -> None:
        if done == cut:
            task.cancel()

    req = request(b, "kws01", "accuracy", tmp_path / "ds", tmp_path / "first")
    task = asyncio.create_task(run_one_board(req, progress=progress, on_start=on_start))
    with pytest.raises(asyncio.CancelledError):
        async with asyncio.timeout(RUN_TIMEOUT_S):
            await task
    [first] = folders
    assert (first.path / INCOMPLETE).read_text().startswith("run incomplete: CancelledError")
    assert "run incomplete" in (first.path / "log.txt").read_text().splitlines()[-1]
    assert not (first.path / "results.txt").exists()
    assert not (first.path / "results.json").exists()
    done = read_samples(first.path, subset=False)  # every line complete JSON
    assert [d["seq"] for d in done] == list(range(cut))
    assert len(infer_records(b)) == cut

    # Resume the same folder on the same board (whatever the cancelled download left on
    # the link): only the missing samples are run, and the scores cover all of them.
    req = request(b, "kws01", "accuracy", tmp_path / "ds", tmp_path / "unused")
    req.resume = first.path
    second = await run(req)
    assert second.path == first.path
    every = read_samples(first.path, subset=False)
    assert [r["seq"] for r in every] == list(range(n))
    assert [r["index"] for r in every[cut:]] == list(range(cut, n))
    assert every[:cut] == done  # the first part is kept as it was
    assert len(infer_records(b)) == n  # nothing done twice
    assert not (first.path / INCOMPLETE).exists()
    assert "resumed at seq 6" in (first.path / "log.txt").read_text()

    # The finished folder scores the whole run, with the board's configured accuracy.
    rows = official_rows("kws01")[:n]
    top1, auc, _ = expected_classification(tmp_path / "ds" / "kws01", rows, "kws01", quality)
    text = (first.path / "results.txt").read_text()
    assert f"Top 1% = {top1}" in text and f"AUC = {auc}" in text
    assert len(json.loads((first.path / "results.json").read_text())) == n


async def test_only_incomplete_accuracy_runs_resume(sim: SimFactory, tmp_path: Path) -> None:
    synth_dataset(tmp_path / "ds", "kws01", limit=5)
    s = await sim(board("b", "kws01", median_s=0.002))
    req = request(s["b"], "kws01", "performance", tmp_path / "ds", tmp_path / "o")
    req.resume = tmp_path
    with pytest.raises(RunInputError, match="only accuracy runs can be resumed"):
        await run_one_board(req)
    req = request(s["b"], "kws01", "accuracy", tmp_path / "ds", tmp_path / "o")
    req.resume = tmp_path  # no INCOMPLETE marker there
    with pytest.raises(RunInputError, match="not an incomplete run folder"):
        await run_one_board(req)


# -- latency -----------------------------------------------------------------------------------

#: model -> (baud, median s, min queries)
LATENCY_CASES = {
    "kws01": (None, 0.002, 100),
    "vww01": (FAST_BAUD, None, 64),
    "ic01": (FAST_BAUD, None, 64),
    "ic02": (FAST_BAUD, None, 64),
    "ad01": (None, None, 100),
}


@pytest.mark.parametrize("model", list(LATENCY_CASES))
async def test_latency_percentiles_from_the_simulated_inference_times(
    sim: SimFactory, tmp_path: Path, model: str
) -> None:
    baud, median_s, min_queries = LATENCY_CASES[model]
    s = await sim(
        board("b", model, baud=baud, median_s=median_s, spread=0.1, tail_probability=0.05)
    )
    b = s["b"]
    dataset_id = get_benchmark(model).dataset_id
    synth_dataset(tmp_path / "ds", dataset_id, limit=5)
    settings = RunSettings(min_queries=min_queries, min_duration_s=0.5, latency_inputs=2)
    folder = await run(request(b, model, "latency", tmp_path / "ds", tmp_path / "runs", settings))

    samples = read_samples(folder.path, subset=False)
    records = infer_records(b)
    n = len(samples)
    assert n == len(records) >= min_queries
    # Each query's latency is exactly the simulated inference time: the runner took the
    # first lap line's print time out of the DUT's window.
    for sample, rec in zip(samples, records, strict=True):
        assert rec.count == 1
        assert sample["latency_us"] == rec.times_us[0]
        assert sample["elapsed_us"] == rec.window_us > rec.times_us[0]
        assert sample["window"] is None
        assert sample["segment"] == (0 if model == "ad01" else None)
    # Two inputs in rotation, ceil(min_queries / 2) queries per download.
    per_input = math.ceil(min_queries / 2)
    assert [sm["index"] for sm in samples] == [(j // per_input) % 2 for j in range(n)]

    # LoadGen's definitions (farm.scoring) over the simulator's own times.
    ns = sorted(r.times_us[0] * 1000 for r in records)
    percentiles = {p: ns[math.floor(n * p)] for p in scoring.PERCENTILES}
    for p, v in percentiles.items():
        assert scoring.loadgen_percentile(ns, p) == v
    estimate = scoring.early_stopping(n, 0.9, ns).estimate_ns
    assert estimate is not None
    if n == 100:  # docs/measurement.md#early-stopping: N = 100 -> t = 3, the estimate is sorted[97]
        assert estimate == ns[97]
    mean = sum(ns) // n

    text = (folder.path / "results.txt").read_text()
    lines = bodies(text)
    assert lines[0] == scoring.SUPPLEMENTAL_NOTE
    assert lines[1] == f"Latency queries: {n} (VALID)"
    assert lines[2] == f"Early stopping 90.0th percentile estimate (ns): {estimate}"
    for p, v in percentiles.items():
        assert f"{scoring.percentile_label(p)} percentile latency (ns): {v}" in lines
    assert f"Mean latency (ns): {mean}" in lines

    summary = (folder.path / "mlperf_log_summary.txt").read_text()
    assert summary.startswith("# Supplemental")
    assert "Scenario : SingleStream" in summary and "Result is : VALID" in summary
    assert f"90.0th percentile latency (ns) : {percentiles[0.9]}" in summary
    assert f"Early stopping 90.0th percentile estimate: {estimate}" in summary
    assert f"Min latency (ns)                : {ns[0]}" in summary
    assert f"Max latency (ns)                : {ns[-1]}" in summary
    for p, v in percentiles.items():
        assert f"{scoring.percentile_label(p)} percentile latency (ns)   : {v}" in summary

    data = json.loads((folder.path / "latency.json").read_text())
    assert data["supplemental"] is True and data["count"] == n
    assert data["percentiles_ns"] == {
        scoring.percentile_label(p): v for p, v in percentiles.items()
    }
    assert data["early_stopping_p90"]["estimate_ns"] == estimate
    assert (data["min_ns"], data["max_ns"], data["mean_ns"]) == (ns[0], ns[-1], mean)

    elements = check_results_json(
        folder.path, "latency", dataset_id, windows_per_file=196 if model == "ad01" else None
    )
    assert len(elements) == n


async def test_latency_run_ended_by_the_minimum_duration_is_valid(
    sim: SimFactory, tmp_path: Path
) -> None:
    """LoadGen takes the minimum duration at the issue time of the last query
    (docs/measurement.md#latency-queries): when the duration, not the query count, ends the run
    (64 queries of ~30 ms at 115200 baud take ~2 s), the last query must be issued at or after
    it, so the run is VALID."""
    s = await sim(board("b", "kws01", median_s=0.002))
    synth_dataset(tmp_path / "ds", "kws01", limit=5)
    settings = RunSettings(min_queries=64, min_duration_s=3.0, latency_inputs=1)
    folder = await run(
        request(s["b"], "kws01", "latency", tmp_path / "ds", tmp_path / "runs", settings)
    )
    data = json.loads((folder.path / "latency.json").read_text())
    assert data["final_query_issued_s"] >= 3.0
    assert data["min_duration_met"] and data["min_queries_met"] and data["valid"]
    assert f"Latency queries: {data['count']} (VALID)" in bodies(
        (folder.path / "results.txt").read_text()
    )
    summary = (folder.path / "mlperf_log_summary.txt").read_text()
    assert "Result is : VALID" in summary and "Min duration satisfied : Yes" in summary


# -- energy ------------------------------------------------------------------------------------


def falling_edges(b: SimBoard) -> list[float]:
    """Record the DUT timestamp pin's falling edges (the LPM01A's ``eventsrc d7 fal``)."""
    edges: list[float] = []
    b.gpio.subscribe(lambda t, level: None if level else edges.append(t))
    return edges


async def check_energy_run(
    sim: SimFactory, tmp_path: Path, model: str, median_s: float, settings: RunSettings
) -> tuple[RunFolder, SimBoard, str]:
    s = await sim(board("e", model, median_s=median_s, energy=True))
    b = s["e"]
    assert b.monitor is not None
    edges = falling_edges(b)
    t0s: set[float | None] = set()

    def progress(done: int, total: int | None, eta: float | None) -> None:
        t0s.add(b.monitor.acquisition_t0 if b.monitor else None)

    dataset_id = get_benchmark(model).dataset_id
    synth_dataset(tmp_path / "ds", dataset_id, limit=5)
    folder = await run(
        request(b, model, "energy", tmp_path / "ds", tmp_path / "runs", settings),
        progress=progress,
    )
    [t0] = t0s  # one acquisition for the whole run
    assert t0 is not None
    f = b.monitor.freq_hz
    assert f == 1000
    # Event n of the acquisition is its n-th falling edge; the monitor places it before the
    # sample whose period contains it.
    events = [int((t - t0) * f) for t in edges if t >= t0]

    windows = len(folder.samples)
    elements = check_results_json(
        folder.path, "energy", dataset_id, windows_per_file=196 if model == "ad01" else None
    )
    records = infer_records(b)[-windows:]
    expected_per_inf = []
    for sample, element, rec in zip(folder.samples, elements, records, strict=True):
        (n0, i0), (n1, i1) = sample.power_events[-2:]
        assert n1 == n0 + 1
        k0, k1 = events[n0], events[n1]
        assert i1 - i0 == k1 - k0
        truth = b.power.energy_between(t0 + k0 / f, t0 + k1 / f)
        assert sample.energy_j is not None
        assert abs(sample.energy_j - truth) <= MANTISSA_REL * truth
        assert rec.count == sample.count
        # The window holds the inferences, drawn at the active level.
        assert truth > b.power.active_w * 0.9 * rec.total_us / 1e6
        assert element["power"]["samples"] == list(sample.power_samples)
        assert element["power"]["timestamps"] == [[str(n), i] for n, i in sample.power_events]
        assert element["infer"]["iterations"] == rec.count
        expected_per_inf.append(truth / rec.count)

    text = (folder.path / "results.txt").read_text()
    trials = re.findall(
        r"Energy data for trial (\d+)\n"
        r"  Elapsed time  : ([0-9.]+)(  <<<< below minimum duration)?\n"
        r"  Inferences    : (\d+)\n"
        r"  Power         : ([0-9.]+) mW\.\n"
        r"  Total Energy  : ([0-9.]+) uJ\n"
        r"  Energy/Inf    : ([0-9.]+) uJ/inf\n",
        text,
    )
    assert [int(t[0]) for t in trials] == list(range(windows))
    for t, sample, per_inf in zip(trials, folder.samples, expected_per_inf, strict=True):
        (_, i0), (_, i1) = sample.power_events[-2:]
        assert float(t[1]) == pytest.approx((i1 - i0) / 1000)
        assert t[2], "a short window is tagged"
        assert int(t[3]) == sample.count
        assert float(t[5]) == pytest.approx(per_inf * sample.count * 1e6, rel=MANTISSA_REL)
        assert float(t[6]) == pytest.approx(per_inf * 1e6, rel=MANTISSA_REL)
    # The median as printed from the measured windows, and equal to the power model's.
    measured = sorted(sample.energy_j / sample.count for sample in folder.samples)
    median = checker_capture(ENERGY_MEDIAN, text, search=True)
    assert median == f"{1e6 * float(np.median(measured)):5.4f}"
    assert float(median) == pytest.approx(1e6 * float(np.median(expected_per_inf)), rel=1e-3)
    assert text.startswith("Power Edition Output\n")
    # The official runner's ERROR lines go to log.txt only.
    assert "ERROR" not in text
    log = (folder.path / "log.txt").read_text()
    assert "All inference times must be at least 10 seconds." in log
    for i in range(windows):
        png = folder.path / f"energy_inf_{i:03d}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    return folder, b, text


async def test_energy_kws01_equals_the_power_model(sim: SimFactory, tmp_path: Path) -> None:
    settings = RunSettings(min_window_s=0.5, max_window_s=2.0, calibration_s=0.2)
    folder, _, text = await check_energy_run(sim, tmp_path, "kws01", 0.005, settings)
    assert len(folder.samples) == 5
    assert not (folder.path / INCOMPLETE).exists()
    samples = read_samples(folder.path, subset=False)
    assert [s["window"] for s in samples] == [0, 1, 2, 3, 4]
    assert all(s["latency_us"] is None and s.get("elapsed_us") is None for s in samples)
    assert all(s["energy_j"] > 0 for s in samples)
    assert "Energy mode must include exactly" not in (folder.path / "log.txt").read_text()
    assert text.rstrip().endswith("-" * 57)


@pytest.mark.slow
async def test_energy_ad01_equals_the_power_model(sim: SimFactory, tmp_path: Path) -> None:
    """ad01's 2,560-byte windows at the energy build's 9600 baud: ~9 s per download."""
    settings = RunSettings(min_window_s=0.5, max_window_s=2.0, calibration_s=0.2)
    folder, _, _ = await check_energy_run(sim, tmp_path, "ad01", 0.001, settings)
    assert len(folder.samples) == 5
    assert [s["segment"] for s in read_samples(folder.path, subset=False)] == [0] * 5


async def test_energy_ad01_subset_with_limit(sim: SimFactory, tmp_path: Path) -> None:
    """``--limit 1`` in energy mode (ad01's 2,560-byte downloads take ~9 s at 9600 baud):
    one window, the note in every output, and the official runner's window-count ERROR in
    log.txt only."""
    settings = RunSettings(min_window_s=0.5, max_window_s=2.0, calibration_s=0.2, limit=1)
    folder, _, text = await check_energy_run(sim, tmp_path, "ad01", 0.001, settings)
    assert len(folder.samples) == 1
    samples = read_samples(folder.path, subset=True)
    assert [s["segment"] for s in samples] == [0]
    assert text.splitlines()[-1] == "subset run (--limit 1): NOT VALID FOR SUBMISSION"
    elements = json.loads((folder.path / "results.json").read_text())
    assert SUBSET_NOTE in elements[-1]["note"]
    log = (folder.path / "log.txt").read_text()
    assert "Energy mode must include exactly 5 measurements." in log
    assert any("exactly 5 measurements" in p for p in folder.problems)  # farm run warns


# -- bad input ---------------------------------------------------------------------------------


async def farm_cli(*args: str, limit_s: float = 60) -> tuple[int, str, str]:
    """``python -m farm.cli ARGS`` as a subprocess, while this event loop keeps the
    simulated boards running."""
    return await farm_command(args, {"NO_COLOR": "1", "TERM": "dumb"}, limit_s)


def received(sim_dir: Path, board_id: str) -> bytes:
    """Every byte the board's DUT port received from the host (its transcript)."""
    path = sim_dir / board_id / "dut.transcript.jsonl"
    return b"".join(r.data for r in read_transcript(path) if r.dir == "rx")


def break_size(root: Path) -> None:
    path = root / "kws01" / official_rows("kws01")[3].file
    path.write_bytes(path.read_bytes()[:-1])


#: case -> (benchmark, mode, dataset setup, message fragment)
BAD_INPUT: dict[str, tuple[str, str, Callable[[Path], object] | None, str]] = {
    "unknown benchmark": ("kws99", "accuracy", None, "unknown benchmark 'kws99'"),
    "unknown mode": ("kws01", "turbo", None, "unknown mode 'turbo'"),
    "sww01": ("sww01", "accuracy", None, "sww01 runs in energy mode only"),
    "dataset missing": ("kws01", "accuracy", lambda root: None, "does not exist"),
    "wrong file size": ("kws01", "accuracy", break_size, "are not 490 B"),
    "missing file": (
        "kws01",
        "accuracy",
        lambda root: (root / "kws01" / official_rows("kws01")[2].file).unlink(),
        "are missing",
    ),
    "other model on the DUT": ("vww", "accuracy", None, "reports model 'kws01'"),
}


@pytest.mark.parametrize("case", list(BAD_INPUT))
async def test_bad_input_exits_2_before_anything_is_sent(
    sim: SimFactory, tmp_path: Path, case: str
) -> None:
    benchmark, mode, setup, message = BAD_INPUT[case]
    root = tmp_path / "ds"
    if case == "dataset missing":
        root = tmp_path / "no-such-folder"
    else:
        synth_dataset(root, "kws01", limit=5)
        synth_dataset(root, "vww01", limit=5)
        if setup is not None:
            setup(root)
    s = await sim(board("sim-kws", "kws01"), transcripts=True)
    out = tmp_path / "runs"
    code, stdout, stderr = await farm_cli(
        "run",
        "--benchmark",
        benchmark,
        "--mode",
        mode,
        "--dataset",
        str(root),
        "--sim-board",
        f"{s.farm.boards_json}:sim-kws",
        "--out",
        str(out),
    )
    assert code == 2, (stdout, stderr)
    assert "error:" in stderr and message in " ".join(stderr.split()), stderr
    assert "Traceback" not in stderr
    if case != "other model on the DUT":  # found only by asking the DUT, under the bar
        assert "━" not in stderr, stderr  # checked before a progress bar is drawn
    assert run_folders(out) == []  # no run folder is created
    b = s["sim-kws"]
    await s.stop()
    assert not b.dut.records  # no inference ran
    sent = received(s.farm.out, "sim-kws")
    if case == "other model on the DUT":
        # The model check talks to the DUT (profile), but no input is ever downloaded.
        assert b"profile%" in sent
        assert b"db " not in sent
    else:
        assert sent == b""  # the port was never even written to


async def test_a_port_not_found_exits_2(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    synth_dataset(root, "kws01", limit=5)
    code, stdout, stderr = await farm_cli(
        "run",
        *("--benchmark", "kws", "--mode", "performance", "--dataset", str(root)),
        *("--port", str(tmp_path / "ttyNOPE"), "--out", str(tmp_path / "runs")),
    )
    assert code == 2, (stdout, stderr)
    assert "no such serial port" in " ".join(stderr.split()) and "Traceback" not in stderr


async def test_bad_input_in_process_raises_run_input_error(sim: SimFactory, tmp_path: Path) -> None:
    """The library call: RunInputError from the model check, and the board untouched."""
    synth_dataset(tmp_path / "ds", "vww01", limit=5)
    s = await sim(board("k", "kws01"), transcripts=True)
    b = s["k"]
    req = request(b, "vww01", "accuracy", tmp_path / "ds", tmp_path / "runs")
    req.baud = 115200
    with pytest.raises(RunInputError, match=r"reports model 'kws01'.*vww01"):
        await run(req)
    assert run_folders(tmp_path / "runs") == []
    await s.stop()
    assert not b.dut.records
    assert b"db " not in received(s.farm.out, "k")


# -- the command line --------------------------------------------------------------------------


async def test_cli_accuracy_prints_the_results(sim: SimFactory, tmp_path: Path) -> None:
    quality = 0.91
    synth_dataset(tmp_path / "ds", "kws01", limit=20)
    s = await sim(board("sim-01-kws01", "kws01", quality=quality, median_s=0.002))
    out = tmp_path / "runs"
    code, stdout, stderr = await farm_cli(
        "run",
        "--benchmark",
        "kws",
        "--mode",
        "accuracy",
        "--dataset",
        str(tmp_path / "ds"),
        "--sim-board",
        f"{s.farm.boards_json}:sim-01-kws01",
        "--limit",
        "20",
        "--out",
        str(out),
    )
    assert code == 0, stderr
    top1, auc, correct = expected_classification(
        tmp_path / "ds" / "kws01", official_rows("kws01")[:20], "kws01", quality
    )
    assert correct == round(quality * 20)  # u spread over the 20 synthesized files
    assert (top1, checker_capture(TOP1, stdout), checker_capture(AUC, stdout)) == (
        "90.0",
        top1,
        auc,
    )
    assert "subset run (--limit 20): NOT VALID FOR SUBMISSION" in stdout
    [folder] = run_folders(out)
    assert f"run folder: {folder}" in stdout.replace("\n", "")
    assert checker_capture(TOP1, (folder / "results.txt").read_text()) == top1
    assert len(read_samples(folder, subset=True)) == 20


async def test_cli_ctrl_c_leaves_an_incomplete_folder(sim: SimFactory, tmp_path: Path) -> None:
    synth_dataset(tmp_path / "ds", "kws01", limit=20)
    s = await sim(board("sim-kws", "kws01", median_s=0.002))
    out = tmp_path / "runs"
    env = {**os.environ, "COLUMNS": "300", "NO_COLOR": "1", "TERM": "dumb"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "farm.cli",
        "run",
        "--benchmark",
        "kws",
        "--mode",
        "accuracy",
        "--dataset",
        str(tmp_path / "ds"),
        "--sim-board",
        f"{s.farm.boards_json}:sim-kws",
        "--out",
        str(out),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    try:
        async with asyncio.timeout(60):
            while True:
                folders = run_folders(out)
                lines = (
                    (folders[0] / "samples.jsonl").read_text().count("\n")
                    if folders and (folders[0] / "samples.jsonl").exists()
                    else 0
                )
                if lines >= 3:
                    break
                await asyncio.sleep(0.02)
            proc.send_signal(signal.SIGINT)
            _, err = await proc.communicate()
    finally:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
    assert proc.returncode == 130, err.decode()
    assert "interrupted" in err.decode()
    [folder] = run_folders(out)
    assert (folder / INCOMPLETE).read_text().startswith("run incomplete:")
    assert "run incomplete" in (folder / "log.txt").read_text()
    samples = read_samples(folder, subset=False)  # complete JSON lines only
    assert 3 <= len(samples) < 20
    assert [sm["seq"] for sm in samples] == list(range(len(samples)))
    assert not (folder / "results.txt").exists()


async def test_a_dataset_too_small_for_the_mode_is_refused_before_the_board(
    sim: SimFactory, tmp_path: Path
) -> None:
    """Performance loops over five rows: a three-row index is bad input (exit 2 in the
    CLI) unless --limit says a subset is meant; either way nothing reaches the DUT first."""
    synth_dataset(tmp_path / "ds", "kws01", limit=3)
    s = await sim(board("b", "kws01", median_s=0.002))
    req = request(s["b"], "kws01", "performance", tmp_path / "ds", tmp_path / "o")
    with pytest.raises(RunInputError, match="only 3"):
        await run_one_board(req)
    assert not (tmp_path / "o").exists()
    assert infer_records(s["b"]) == []
    limited = request(
        s["b"],
        "kws01",
        "performance",
        tmp_path / "ds",
        tmp_path / "o",
        RunSettings(limit=3, min_window_s=0.3, max_window_s=1.0, calibration_s=0.05),
    )
    folder = await run(limited)
    text = (folder.path / "results.txt").read_text()
    assert "ERROR 1 - loop_count was not exactly 5." in text
    assert "NOT VALID FOR SUBMISSION" in text


async def test_resume_refuses_another_runs_folder(sim: SimFactory, tmp_path: Path) -> None:
    synth_dataset(tmp_path / "ds", "kws01", limit=8)
    s = await sim(board("b", "kws01", median_s=0.002))
    first = request(
        s["b"], "kws01", "accuracy", tmp_path / "ds", tmp_path / "o", RunSettings(limit=4)
    )
    task = asyncio.create_task(run_one_board(first))
    async with asyncio.timeout(RUN_TIMEOUT_S):
        while not list((tmp_path / "o").glob("*/samples.jsonl")):  # noqa: ASYNC110
            await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    [folder] = list((tmp_path / "o").iterdir())
    other = request(s["b"], "kws01", "accuracy", tmp_path / "ds", tmp_path / "o")  # no --limit
    other.resume = folder
    with pytest.raises(RunInputError, match=r"it is another run.*limit 4 there, None now"):
        await run_one_board(other)
